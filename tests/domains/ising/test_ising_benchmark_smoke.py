"""The thermodynamic-maps benchmark's --smoke run (L = 8, seconds, a temporary folder): every stage runs end to
end and writes its table, and the committed results are not touched."""
from __future__ import annotations

import json

from benchmarks import ising_thermo_maps as bench


def test_smoke_run_writes_rows_to_a_temporary_folder(tmp_path, monkeypatch, capsys, one_thread) -> None:
    committed = bench.RESULTS_DIR / f"{bench.NAME}.json"
    before = committed.read_text() if committed.is_file() else None
    monkeypatch.setattr(bench.tempfile, "TemporaryDirectory", lambda prefix: _Keep(tmp_path))
    bench.main(["--smoke"])
    rows = json.loads((tmp_path / "results" / f"{bench.NAME}.json").read_text())["rows"]
    names = [r["model"] for r in rows]
    assert names[0].startswith("Wolff MC") and "thermo_2T" in names and "unit_2T" in names
    assert any(n.startswith("nearest-T data") for n in names) and names[-1].startswith("published")
    assert (tmp_path / "results" / f"{bench.NAME}.png").is_file()
    assert (committed.read_text() if committed.is_file() else None) == before


class _Keep:
    """A TemporaryDirectory stand-in that hands out pytest's tmp_path (removed by pytest)."""

    def __init__(self, path) -> None:
        self.path = path

    def __enter__(self) -> str:
        return str(self.path)

    def __exit__(self, *exc) -> None:
        return None
