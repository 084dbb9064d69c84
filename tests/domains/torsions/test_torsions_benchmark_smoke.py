"""The ala2_temperatures benchmark's --smoke run (committed 4-temperature subset, seconds, a temporary folder):
both settings train, generate and score every row, and the committed results are not touched."""
from __future__ import annotations

import json

from benchmarks import ala2_temperatures as bench
from tests.domains.ising.test_ising_benchmark_smoke import _Keep  # a TemporaryDirectory that hands out tmp_path


def test_smoke_run_writes_rows_to_a_temporary_folder(tmp_path, monkeypatch, one_thread) -> None:
    committed = bench.RESULTS_DIR / f"{bench.NAME}.json"
    before = committed.read_text() if committed.is_file() else None
    monkeypatch.setattr(bench.tempfile, "TemporaryDirectory", lambda prefix: _Keep(tmp_path))
    bench.main(["--smoke"])
    out = json.loads((tmp_path / "results" / f"{bench.NAME}.json").read_text())
    methods = {(r["setting"], r["method"]) for r in out["per_temperature"]}
    for setting in ("interpolation", "extrapolation"):
        assert {(setting, m) for m in ("reference", "nearest", "mbar", "torus", "euclidean")} <= methods
    mbar = [r for r in out["per_temperature"] if r["method"] == "mbar"]
    assert all(0 < r["ess"] <= 3 * 600 for r in mbar)  # at most the pooled training frames of the subset
    assert any(r["method"].startswith("noise floor") for r in out["rows"])
    assert (tmp_path / "results" / f"{bench.NAME}.png").is_file() and (tmp_path / "results" / f"{bench.NAME}_fes.png").is_file()
    assert (committed.read_text() if committed.is_file() else None) == before
