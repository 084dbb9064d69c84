"""`sciddpm sample EXPORT --temperature LO:HI:STEP --n N`: N configurations per temperature in one .npz lattice file
and a PNG of the observables vs T (model, short Wolff MC, Kaufman exact); one-line errors for bad temperatures."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sciddpm.cli import main, temperature_grid
from sciddpm.domains.ising.adapter import IsingDomain
from sciddpm.domains.ising.data import load_lattices
from sciddpm.testing import export_and_load

TINY = {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "norm_groups": 4}


def test_temperature_grid() -> None:
    assert temperature_grid("1.0:4.0:0.05").numel() == 61
    assert temperature_grid("1:2:0.5").tolist() == [1.0, 1.5, 2.0]
    assert temperature_grid("2.5,1.5").tolist() == [2.5, 1.5]
    for bad, match in (("0:1:0.5", "> 0"), ("2:1:0.1", "LO <= HI"), ("1:2:0", "STEP > 0"), ("a:b", "LO:HI:STEP"),
                       ("1,-2", "> 0"), ("1:2:1e-9", "LO:HI:STEP")):
        with pytest.raises(ValueError, match=match) as err:
            temperature_grid(bad)
        assert "\n" not in str(err.value)


def test_sample_per_temperature_writes_lattices_and_plot(tmp_path: Path, capsys) -> None:
    domain = IsingDomain({"plot_mc_frames": 16})
    domain.train_dataset(domain.options)
    export_and_load(domain, TINY, tmp_path / "export")
    out = tmp_path / "samples.npz"
    assert main(["sample", str(tmp_path / "export"), "--temperature", "1.0:4.0:1.0", "--n", "3", "--steps", "2",
                 "--output", str(out)]) == 0
    spins, temperature, extra = load_lattices(out)
    assert spins.shape == (12, 8, 8) and np.unique(temperature).tolist() == [1.0, 2.0, 3.0, 4.0]
    assert (np.bincount(np.searchsorted([1.0, 2.0, 3.0, 4.0], temperature)) == 3).all()
    assert extra["x"].shape == (12, 8, 8) and out.with_suffix(".png").stat().st_size > 0
    assert "[ddpm sampling] step 2/2" in capsys.readouterr().err  # progress lines (one reporter per temperature)
    for bad in (["--temperature", "0:1:0.5"], ["--temperature", "1", "--condition", "temperature=2"]):
        assert main(["sample", str(tmp_path / "export"), "--n", "2", "--steps", "2", "--output",
                     str(tmp_path / "bad.npz"), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("sciddpm: error: ") and "\n" not in err and "temperature" in err
    assert not (tmp_path / "bad.npz").exists()
