"""The timeseries domain: its plant-CSV reader's one-line errors, the Domain contract (check_domain), the detector's
streaming = batch equality and the ``sciddpm detect`` command on the bundled BATADAL excerpt."""
from __future__ import annotations

import csv
import io
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sciddpm.cli import main
from sciddpm.domains.timeseries.adapter import DEFAULT_PATH, TimeSeriesDomain
from sciddpm.domains.timeseries.backbone import TFDPMNet
from sciddpm.domains.timeseries.data import Normaliser, read_plant_csv, window_starts
from sciddpm.domains.timeseries.detect import Detector, causal_mean, crps_ensemble, history_windows
from sciddpm.domains.timeseries.report import build_detector
from sciddpm.schedules import CosineSchedule
from sciddpm.testing import check_domain, export_and_load
from sciddpm.training import config_from_dict, fit

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = {"dim": 16, "heads": 2, "layers": 1}
HEADER = "DATETIME,L_T1,S_PU1,ATT_FLAG\n"


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plant.csv"
    path.write_text(text)
    return path


def _excerpt_rows(tmp_path: Path, start: int, stop: int) -> Path:
    """Rows start..stop−1 of the bundled excerpt (a slice of BATADAL's dataset04 with an attack in it)."""
    lines = DEFAULT_PATH.read_text().splitlines(keepends=True)
    path = tmp_path / "readings.csv"
    path.write_text("".join([lines[0]] + lines[1 + start:1 + stop]))
    return path


def test_reader_recognises_columns_binary_states_missing_values_and_segments(tmp_path):
    table = read_plant_csv(_csv(tmp_path, HEADER + "01/01/17 00,1.5,1,0\n01/01/17 01,,0,0\n01/01/17 05,2.5,1,1\n"))
    assert table.columns == ["L_T1", "S_PU1"] and table.labels.tolist() == [0, 0, 1]
    assert np.isnan(table.values[1, 0]) and table.hours[1] - table.hours[0] == 1.0
    assert table.segments() == [(0, 2), (2, 3)]
    norm = Normaliser.fit(table.values, table.columns)
    assert norm.binary.tolist() == [False, True] and norm.mean[0] == pytest.approx(2.0)
    assert window_starts(5, [(0, 3), (3, 5)], 2).tolist() == [0, 1, 3]
    assert window_starts(5, [(0, 5)], 2, exclude=np.array([0, 0, 1, 0, 0])).tolist() == [0, 3]


@pytest.mark.parametrize("text, message", [
    (HEADER + "01/01/17 00,1.5,abc,0\n", r"plant.csv line 2 column 'S_PU1': non-numeric value 'abc'"),
    (HEADER + "01/01/17 01,1.5,1,0\n01/01/17 00,1.5,1,0\n", r"line 3: timestamp '01/01/17 00' goes backwards"),
    (HEADER + "01/01/17 00,1.5,1\n", r"line 2: 3 cells but the header has 4"),
    (HEADER + "yesterday,1.5,1,0\n", r"line 2: time 'yesterday' does not match"),
    (HEADER + "01/01/17 00,1.5,1,2\n", r"label '2' is not 0 or 1"),
    ("L_T1,S_PU1\n1,2\n", r"no time column 'DATETIME'"),
])
def test_reader_errors_are_one_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as err:
        read_plant_csv(_csv(tmp_path, text))
    assert len(str(err.value).splitlines()) == 1


def test_a_missing_trained_column_and_a_constant_sensor(tmp_path, caplog):
    path = _csv(tmp_path, HEADER + "01/01/17 00,1.5,1,0\n")
    with pytest.raises(ValueError, match=r"plant.csv: column 'F_PU3' that the model was trained on is missing"):
        read_plant_csv(path, columns=["L_T1", "F_PU3"])
    with pytest.raises(ValueError, match=r"column 'F_PU3' that the model was trained on is missing"):
        read_plant_csv(path).select(["F_PU3"])
    with caplog.at_level(logging.WARNING):
        norm = Normaliser.fit(np.array([[1.0, 3.0], [2.0, 3.0]]), ["L_T1", "F_PU3"], "plant.csv")
    assert "sensor F_PU3 is constant (3)" in caplog.text and norm.scale.tolist() == [0.5, 1.0]
    assert norm.apply(np.array([[1.5, 5.0]])).tolist() == [[0.0, 2.0]]  # a constant sensor moving by 2: 2 units


def test_backbone_masks_missing_history_and_its_graph():
    net = TFDPMNet(5, horizon=2, history=6, dim=8, heads=2, layers=1, graph=[[0, 1, 0, 0, 0]] + [[0] * 5] * 4,
                   schedule=CosineSchedule(1000)).eval()
    x, t = torch.randn(3, 2, 5), torch.full((3,), 400.0, dtype=torch.float64)
    hist, mask = torch.randn(3, 6, 5), torch.ones(3, 6, 5)
    mask[:, 2, 1] = 0
    out = net(x, t, hist, mask)
    hist2 = hist.clone()
    hist2[:, 2, 1] = float("nan")  # a masked NaN never reaches the output
    assert torch.equal(net(x, t, hist2, mask), out) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"history has shape \(3, 5, 5\), expected \(B, 6, 5\)"):
        net(x, t, hist[:, :5], mask[:, :5])


def test_crps_and_smoothing_exact():
    samples = torch.tensor([[[0.0]], [[2.0]]], dtype=torch.float64)  # two samples 0 and 2, observation 1
    assert crps_ensemble(samples, torch.tensor([[1.0]], dtype=torch.float64)).item() == pytest.approx(1.0 - 0.5)
    assert crps_ensemble(samples[:1], torch.tensor([[3.0]], dtype=torch.float64)).item() == 3.0  # S=1: |error|
    out = causal_mean(np.array([np.nan, 1.0, 3.0, np.nan, 5.0]), 2)
    assert np.isnan(out[0]) and out[1:].tolist() == [1.0, 2.0, 3.0, 5.0]
    rows, hist, mask = history_windows(np.arange(12.0).reshape(6, 2), np.array([0, 1, 2, 3, 7, 8.0]), 2, 1.0)
    assert rows.tolist() == [2, 3] and hist[1, :, 0].tolist() == [2.0, 4.0]


def test_timeseries_domain_keeps_the_contract(tmp_path):
    history = np.tile(np.linspace(0, 1, 24)[:, None], (1, 43)) + 2.0
    report = check_domain(TimeSeriesDomain(), backbone=SMALL, conditions=[{}, {"history": history}], tmp_dir=tmp_path)
    checks = report["checks"]
    assert checks["sample_space"]["shapes"] == [(4, 3, 43), (4, 3, 43)]
    assert checks["data_batch"]["network_keywords"] == ["history", "history_mask"]
    assert set(checks["outputs"]["metrics"]) == {"mae", "rmse", "spread"}
    with pytest.raises(ValueError, match=r"condition 'history' has shape \(2, 43\)"):
        _trained_domain().sample_space(2, conditions={"history": np.zeros((2, 43))})


def _trained_domain() -> TimeSeriesDomain:
    domain = TimeSeriesDomain()
    domain.train_dataset(domain.options)
    return domain


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A small model trained briefly by the engine on the excerpt's attack-free rows (its export folder)."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("ts") / "run"
    cfg = config_from_dict({"domain": "timeseries", "backbone": SMALL, "max_steps": 150, "batch_size": 32,
                            "lr": 3e-3, "ema_decay": 0.9, "checkpoint_every": 1000, "log_every": 50})
    fit(cfg, run, progress=False)
    return run / "export"


def test_detect_command_batch_equals_stdin_stream(export, tmp_path, monkeypatch, capsys):
    readings = _excerpt_rows(tmp_path, 640, 760)  # dataset04 rows around its first labelled attack
    fast = ["--samples", "2", "--steps", "2"]
    assert main(["detect", str(readings), "--model", str(export), "--calibrate", str(DEFAULT_PATH),
                 "--quantile", "0.99", "--output", str(tmp_path / "batch.csv"), *fast]) == 0
    assert (tmp_path / "batch.png").stat().st_size > 0 and (export / "detector.json").is_file()
    monkeypatch.setattr(sys, "stdin", io.StringIO(readings.read_text()))
    assert main(["detect", "-", "--model", str(export), "--output", str(tmp_path / "stream.csv"), *fast]) == 0
    batch = list(csv.DictReader((tmp_path / "batch.csv").read_text().splitlines()))
    stream = list(csv.DictReader((tmp_path / "stream.csv").read_text().splitlines()))
    assert len(batch) == len(stream) == 120
    assert [r["status"] for r in batch[:24]] == ["warmup"] * 24 and batch[24]["status"] == "ok"
    for a, b in zip(batch, stream):
        assert a["time"] == b["time"] and a["alarm"] == b["alarm"] and a["top1"] == b["top1"]
        assert (a["score"] == b["score"] == "") or float(a["score"]) == pytest.approx(float(b["score"]), rel=1e-4)
    assert '"seconds_per_row"' in capsys.readouterr().err


def test_detect_refuses_bad_readings_and_an_uncalibrated_export(export, tmp_path, capsys):
    lines = DEFAULT_PATH.read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.csv"
    bad.write_text(lines[0].replace(" L_T3,", " L_T9,") + "".join(lines[1:40]))
    assert main(["detect", str(bad), "--model", str(export), "--samples", "1", "--steps", "1"]) == 2
    assert "column 'L_T3' that the model was trained on is missing" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    export_and_load(_trained_domain(), SMALL, fresh)
    assert main(["detect", str(DEFAULT_PATH), "--model", str(fresh)]) == 2
    assert "detector.json not found: calibrate the detector first" in capsys.readouterr().err


def test_constant_sensor_that_moves_is_the_top_sensor(export, tmp_path):
    """F_PU3 never runs in the training rows (constant 0): switching it on must dominate the score and the alarm."""
    from sciddpm.export import load

    model = load(export)
    detector = build_detector(model, export, {"samples": 2, "steps": 2})
    table = model.domain.read(_excerpt_rows(tmp_path, 300, 360), model.domain.options["columns"])
    j = table.columns.index("F_PU3")
    table.values[40:, j] = 30.0
    result = detector.score(table)
    assert np.isnan(result["score"][:24]).all() and np.isfinite(result["score"][24:]).all()
    assert np.argmax(np.nan_to_num(result["sensor"][45], nan=-1)) == j
    assert result["alarm"][40 + detector.settings.smooth:].all()  # once the smoothing window is full of it


@pytest.mark.slow
def test_batadal_benchmark_smoke_run(tmp_path, monkeypatch):
    """benchmarks/batadal.py --smoke: the whole pipeline (training, calibration, baselines, table) on the excerpt,
    written to its temporary folder (kept here as tmp_path), never over the committed results."""
    import json
    from types import SimpleNamespace

    import benchmarks.batadal as bench

    committed = bench.RESULTS_DIR / "batadal.json"
    before = committed.read_text() if committed.is_file() else None
    monkeypatch.setattr(bench.tempfile, "TemporaryDirectory",
                        lambda prefix: SimpleNamespace(name=str(tmp_path), cleanup=lambda: None))
    bench.main(["--smoke"])
    out = json.loads((tmp_path / "batadal.json").read_text())
    names = [r["detector"] for r in out["rows"]]
    assert any(n.startswith("diffusion forecaster") for n in names) and "PCA Q/SPE" in names
    assert sum(n.startswith("published:") for n in names) == 6
    measured = [r for r in out["rows"] if not r["detector"].startswith("published:")]
    assert all(0.0 <= r["S"] <= 1.0 for r in measured)  # BATADAL's S of every measured detector is a score
    assert (tmp_path / "batadal_test.png").stat().st_size > 0
    assert (committed.read_text() if committed.is_file() else None) == before


def test_imputation_mode_keeps_observed_sensors_and_samples_the_rest(export):
    """Second mode: the next row with sensor L_T1 unobserved is imputed given the other sensors and the history."""
    from sciddpm.domains.timeseries.detect import impute
    from sciddpm.export import load

    model = load(export)
    future, history, mask = model.domain.val_dataset(model.domain.options)[:5]
    known_mask = torch.ones_like(future, dtype=torch.bool)
    known_mask[:, :, 0] = False
    out = impute(model, history, mask, future, known_mask, samples=3, steps=10)
    assert out.shape == (3, 5, 3, 43) and torch.isfinite(out).all()
    assert torch.equal(out[:, known_mask], future[known_mask].expand(3, -1))  # observed entries kept exactly
    assert out[:, :, :, 0].std(0).min() > 0  # the unobserved sensor is sampled, not copied
