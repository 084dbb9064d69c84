"""The ``sciddpm`` command: sample/evaluate outputs and one-line errors that leave no files behind."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sciddpm.cli import main
from sciddpm.training import TrainConfig, fit

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "batadal_subset.csv"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 4-step tabular run: enough for a checkpoint and an export."""
    out = tmp_path_factory.mktemp("cli") / "run"
    fit(TrainConfig(domain="tabular", max_steps=4, checkpoint_every=4, batch_size=16, backbone={"hidden": 16}), out, progress=False)
    return out


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sciddpm: error: "), err
    return err[0]


def test_sample_and_evaluate(run, tmp_path, capsys):
    assert main(["sample", str(run / "export"), "--n", "20", "--steps", "10", "--output", str(tmp_path / "s.csv")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "s.png"]
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert len(lines) == 21 and lines[0].startswith("L_T1,")
    assert main(["evaluate", str(run / "checkpoints" / "step=4.ckpt"), "--n", "20", "--steps", "10",
                 "--output", str(tmp_path / "m.json")]) == 0
    assert set(json.loads((tmp_path / "m.json").read_text())["metrics"]) == {"mean_abs_error", "std_abs_error",
                                                                          "sliced_w2_heldout"}


def test_truncated_checkpoint(run, tmp_path, capsys):
    ckpt = tmp_path / "cut.ckpt"
    data = (run / "checkpoints" / "step=4.ckpt").read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    msg = _error(capsys, ["sample", str(ckpt), "--n", "5", "--steps", "5", "--output", str(out / "s.csv")])
    assert "corrupt checkpoint" in msg and "cut.ckpt" in msg
    assert not out.exists()


@pytest.mark.parametrize("where", ["payload", "header", "truncate"])
def test_tampered_safetensors(run, tmp_path, capsys, where):
    export = tmp_path / "export"
    shutil.copytree(run / "export", export)
    weights = export / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if where == "payload":
        data[-3] ^= 0xFF
    elif where == "header":
        data[12] = ord("{")
        cfg = json.loads((export / "config.json").read_text())
        del cfg["weights_sha256"]  # without the checksum the safetensors parser itself must refuse it
        (export / "config.json").write_text(json.dumps(cfg))
    else:
        data = data[:-100]
    weights.write_bytes(bytes(data))
    msg = _error(capsys, ["sample", str(export), "--n", "5", "--steps", "5", "--output", str(tmp_path / "s.csv")])
    assert "corrupt weights file" in msg and "model.safetensors" in msg
    assert not list(tmp_path.glob("*s.*"))


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("domain: tabular\nbatch_sise: 8\n")
    msg = _error(capsys, ["train", "--config", str(cfg), "--output", str(tmp_path / "run")])
    assert "unknown config key 'batch_sise'" in msg and "bad.yaml" in msg
    assert not (tmp_path / "run").exists()


def test_missing_data_path_and_nan(tmp_path, capsys):
    msg = _error(capsys, ["train", "--domain", "tabular", "--data-path", str(tmp_path / "nope.csv"),
                          "--output", str(tmp_path / "run")])
    assert "not found" in msg and "nope.csv" in msg
    bad = tmp_path / "nan.csv"
    lines = DATA.read_text().splitlines()
    lines[5] = "nan," + lines[5].split(",", 1)[1]
    bad.write_text("\n".join(lines) + "\n")
    msg = _error(capsys, ["train", "--domain", "tabular", "--data-path", str(bad), "--output", str(tmp_path / "run")])
    assert "NaN" in msg and "nan.csv" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.csv"]


def test_misspelt_domain_console_exit_code(tmp_path):
    """The real command (own process): one stderr line listing the known domains, exit 2, nothing written."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "sciddpm.cli", "train", "--domain", "tabulr", "--output",
                          str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert res.returncode == 2
    from sciddpm.domain import known_domains

    assert res.stderr.strip() == (f"sciddpm: error: unknown domain 'tabulr'; known domains: {', '.join(known_domains())}"
                                  " (or give package.module:Class)")
    assert {"images", "molecules", "tabular"} <= set(known_domains())  # the project's own entry points
    assert list(tmp_path.iterdir()) == []


def test_demo_trains_samples_and_writes_files(tmp_path, capsys):
    """`sciddpm demo` (short): trains the default domain, writes samples/PNGs/metrics, then the oracle demo,
    whose PF-ODE log-likelihood must equal the exact one within 1%."""
    assert main(["demo", "--domain", "tabular", "--output", str(tmp_path), "--max-steps", "8", "--n", "200"]) == 0
    run = tmp_path / "tabular"
    for name in ("samples.csv", "samples.png", "loss.png", "metrics.json", "export/model.safetensors"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_steps"] == 8 and set(metrics["metrics"]) >= {"mean_abs_error", "sliced_w2_heldout"}
    core = json.loads((tmp_path / "core" / "demo.json").read_text())
    ll = core["likelihood"]
    assert abs(ll["pf_ode_exact_trace"] - ll["exact_log_q0"]) < 0.01 * abs(ll["exact_log_q0"])
    assert (tmp_path / "core" / "demo.png").is_file()


def test_demo_rejects_a_misspelt_domain(tmp_path, capsys):
    """A misspelt demo domain is a one-line error and writes nothing."""
    err = _error(capsys, ["demo", "--output", str(tmp_path / "d"), "--domain", "molecuels"])
    assert "unknown domain 'molecuels'" in err and not (tmp_path / "d").exists()


def test_estimate_variance_then_analytic_sampling(run, tmp_path, capsys):
    """`estimate-variance` saves a Γ table in the export (checksum still valid); `sample --variance analytic`
    uses it; without a table, analytic sampling is a one-line error."""
    export = tmp_path / "export"
    shutil.copytree(run / "export", export)
    err = _error(capsys, ["sample", str(export), "--n", "8", "--steps", "5", "--variance", "analytic",
                          "--output", str(tmp_path / "a.csv")])
    assert "no Gamma table" in err and not (tmp_path / "a.csv").exists()
    assert main(["estimate-variance", str(export), "--batches", "2", "--batch-size", "16", "--num-times", "20"]) == 0
    from sciddpm.export import load

    model = load(export)
    assert model.variances["gamma"].shape == (20,) and (model.variances["gamma_stderr"] > 0).all()
    assert main(["sample", str(export), "--n", "8", "--steps", "5", "--variance", "analytic",
                 "--output", str(tmp_path / "a.csv")]) == 0
    assert len((tmp_path / "a.csv").read_text().splitlines()) == 9


def test_make_demo_is_molecules(tmp_path, capsys):
    """`make demo` names its domain (molecules) in the Makefile, not the core: a tiny run writes SDF/XYZ, the PNG
    and EDM's metrics."""
    assert "DEMO_DOMAIN ?= molecules" in (ROOT / "Makefile").read_text()
    assert main(["demo", "--domain", "molecules", "--output", str(tmp_path), "--max-steps", "2", "--n-samples", "3",
                 "--n", "50"]) == 0
    run = tmp_path / "molecules"
    for name in ("samples.sdf", "samples.xyz", "samples.png", "metrics.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert {"atom_stability", "mol_stability", "validity", "uniqueness"} <= set(metrics)
