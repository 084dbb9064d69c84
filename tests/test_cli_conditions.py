"""`--condition KEY=VALUE` values (numbers, lists, @files) and the one-line errors of conditions and guidance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sciddpm.cli import main, parse_assignments, parse_value


def test_numbers_and_lists():
    assert parse_value("3", "--condition", "y") == 3 and isinstance(parse_value("3", "--condition", "y"), int)
    assert parse_value("-2.5e-1", "--condition", "y") == -0.25
    ints = parse_value("1,2, 3", "--condition", "y")
    assert ints.dtype == torch.int64 and ints.tolist() == [1, 2, 3]
    floats = parse_value("1,2.5", "--condition", "y")
    assert floats.dtype == torch.float32 and floats.tolist() == [1.0, 2.5]
    with pytest.raises(ValueError, match=r"^--condition y=7,: VALUE must be a number"):
        parse_value("7,", "--condition", "y")
    for bad in ("abc", "nan", "inf", "1,x"):
        with pytest.raises(ValueError, match=rf"^--condition y={bad}: VALUE must be a number"):
            parse_value(bad, "--condition", "y")
    assert parse_value("-1,1", "--sampler-option", "clip_x0", arrays=False) == (-1, 1)
    assert parse_value("true", "--sampler-option", "x", arrays=False) is True


def test_array_files(tmp_path: Path):
    pts = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    np.save(tmp_path / "a.npy", pts)
    np.savez(tmp_path / "one.npz", anything=pts)
    np.savez(tmp_path / "two.npz", points=pts, other=pts[:1])
    np.savetxt(tmp_path / "a.txt", pts)
    (tmp_path / "a.csv").write_text("x,y,z\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in pts) + "\n")
    expected = torch.from_numpy(pts).to(torch.float32)
    for name in ("a.npy", "one.npz", "two.npz", "a.txt", "a.csv"):
        got = parse_value(f"@{tmp_path / name}", "--condition", "points")
        assert got.dtype == torch.float32 and torch.equal(got, expected), name
    np.save(tmp_path / "labels.npy", np.array([0, 1, 1]))
    assert parse_value(f"@{tmp_path / 'labels.npy'}", "--condition", "y").dtype == torch.int64
    with pytest.raises(ValueError, match=r"holds arrays \['points', 'other'\], none named 'y'"):
        parse_value(f"@{tmp_path / 'two.npz'}", "--condition", "y")
    with pytest.raises(ValueError, match=r"file not found"):
        parse_value(f"@{tmp_path / 'missing.npy'}", "--condition", "y")
    with pytest.raises(ValueError, match=r"must end in \.npy, \.npz, \.txt or \.csv"):
        parse_value(f"@{tmp_path / 'a.json'}", "--condition", "y")
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match=r"NaN or infinite"):
        parse_value(f"@{tmp_path / 'nan.npy'}", "--condition", "y")
    with pytest.raises(ValueError, match=r"files are not accepted here"):
        parse_value(f"@{tmp_path / 'a.npy'}", "--sampler-option", "eta", arrays=False)


def test_assignments():
    assert parse_assignments(["y=1", "t = 2.5"], "--condition") == {"y": 1, "t": 2.5}
    for bad, msg in ((["y"], "expects KEY=VALUE, got 'y'"), (["=1"], "expects KEY=VALUE"),
                     (["y=1", "y=2"], "--condition y is given twice")):
        with pytest.raises(ValueError, match=msg):
            parse_assignments(bad, "--condition")


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    from sciddpm.config import TrainConfig
    from sciddpm.training import fit

    out = tmp_path_factory.mktemp("cond") / "run"
    fit(TrainConfig(domain="tabular", max_steps=2, checkpoint_every=2, batch_size=16, backbone={"hidden": 8}), out,
        progress=False)
    return out / "export"


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sciddpm: error: "), err
    return err[0]


def test_condition_and_guidance_errors_on_an_unconditional_model(export, tmp_path, capsys):
    """The tabular example is unconditional: any condition is refused by name, and so is classifier-free
    guidance; nothing is written."""
    out = tmp_path / "s.csv"
    err = _error(capsys, ["sample", str(export), "--condition", "y=1", "--output", str(out)])
    assert err == "sciddpm: error: unknown condition 'y' for domain 'tabular'; valid conditions: none"
    err = _error(capsys, ["evaluate", str(export), "--guidance-scale", "2", "--n", "4", "--output", str(out)])
    assert err == ("sciddpm: error: classifier-free guidance needs a model with an unconditional mode (the domain's "
                   "null_condition); this model has none")
    err = _error(capsys, ["sample", str(export), "--condition", "y=abc", "--output", str(out)])
    assert err == "sciddpm: error: --condition y=abc: VALUE must be a number, a comma-separated list of numbers or @file"
    assert list(tmp_path.iterdir()) == []
