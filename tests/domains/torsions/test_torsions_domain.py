"""The torsions domain keeps the Domain contract (``check_domain``) on the torus (thermodynamic and unit prior)
and as the Euclidean scaled-angle ablation; the network is 2π-periodic; temperatures travel in the space; the
CLI samples per temperature (``--temperature 300,320,340``)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sciddpm.cli import main
from sciddpm.domains.torsions.adapter import TorsionsDomain
from sciddpm.domains.torsions.data import load_angles
from sciddpm.schedules import LinearSchedule, VESchedule
from sciddpm.testing import check_domain, export_and_load

TINY = {"hidden": 16, "blocks": 1, "fourier": 2, "emb": 8}


@pytest.mark.parametrize("options", [{"prior": "thermo"}, {"prior": "unit"}, {"geometry": "euclidean"}])
def test_torsions_keep_the_contract(options: dict) -> None:
    domain = TorsionsDomain(options)
    if options.get("geometry") == "euclidean":
        domain.default_schedule = {"type": "linear", "num_steps": 1000}
    report = check_domain(domain, backbone=TINY, conditions=[{"temperature": 300.0},
                                                             {"temperature": [280.0, 320.0, 400.0, 600.0]}, {}])
    checks = report["checks"]
    assert checks["sample_space"]["shapes"] == [(4, 2)] * 3
    assert checks["data_batch"]["network_keywords"] == ["temperature"]
    assert checks["export_load"]["max_abs_difference"] <= 1e-6
    assert {"population_alphaL", "dg_alphaL_C7eq"} <= set(checks["outputs"]["metrics"])


def test_network_is_periodic_and_reads_temperature() -> None:
    domain = TorsionsDomain()
    domain.train_dataset(domain.options)
    net = domain.build_backbone(TINY, VESchedule(0.01, 2 * math.pi))
    x, t = torch.rand(6, 2) * 6 - 3, torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    temp = torch.full((6,), 1.0, dtype=torch.float64)
    shift = torch.tensor([2 * math.pi, -4 * math.pi])
    torch.testing.assert_close(net(x + shift, t, temperature=temp), net(x, t, temperature=temp), atol=2e-4, rtol=0)
    assert (net(x, t, temperature=temp) - net(x, t, temperature=2 * temp)).abs().max() > 1e-4
    with pytest.raises(ValueError, match="VE schedule"):
        domain.build_backbone(TINY, LinearSchedule(1000))


def test_temperature_sets_the_noise_variance_and_is_refused_when_bad() -> None:
    """prior thermo: the space's noise has variance T / 300 K (the core's with_temperature); unit: 1."""
    for prior, expected in (("thermo", torch.tensor([0.5, 2.0])), ("unit", torch.ones(2))):
        domain = TorsionsDomain({"prior": prior})
        domain.train_dataset(domain.options)
        space = domain.sample_space(2, conditions={"temperature": [150.0, 600.0]})
        big = space.with_noise_variance(None) if prior == "unit" else space
        x = torch.stack([big.noise(torch.Generator().manual_seed(i), torch.float64) for i in range(4000)])
        torch.testing.assert_close(x.pow(2).mean((0, 2)), expected.double(), rtol=0.06, atol=0)
        assert torch.equal(space.condition["temperature"], torch.tensor([0.5, 2.0], dtype=torch.float64))
    for bad in (0.0, -5.0, [300.0, 310.0, 320.0], float("nan")):
        with pytest.raises(ValueError) as err:
            domain.sample_space(2, conditions={"temperature": bad})
        assert "\n" not in str(err.value) and "temperature" in str(err.value)
    with pytest.raises(ValueError, match="no frames at temperature 500.0") as err:
        TorsionsDomain({"temperatures": [500.0]}).train_dataset({"temperatures": [500.0]})
    assert "\n" not in str(err.value)


def test_cli_samples_per_temperature(tmp_path: Path, capsys) -> None:
    """`sciddpm sample EXPORT --temperature 300,320,340` → one .npz (and .csv) of φ/ψ/T, three temperatures."""
    domain = TorsionsDomain()
    domain.train_dataset(domain.options)
    export_and_load(domain, TINY, tmp_path / "export")
    for suffix in (".npz", ".csv"):
        out = tmp_path / f"samples{suffix}"
        assert main(["sample", str(tmp_path / "export"), "--temperature", "300,320,340", "--n", "4", "--steps", "3",
                     "--sampler", "ddim", "--output", str(out)]) == 0
        got = load_angles(out)
        assert got.phi.shape == (12,) and np.unique(got.temperature).tolist() == [300.0, 320.0, 340.0]
        assert np.all((got.phi >= -180) & (got.phi < 180))
    assert out.with_suffix(".png").stat().st_size > 0
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "export"), "--n", "2", "--steps", "2", "--output", str(tmp_path / "x.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sciddpm: error: ") and "\n" not in err and ".npz" in err
