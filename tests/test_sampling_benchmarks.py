"""The --smoke paths of issue 14's benchmark scripts (each writes into tmp_path, never over committed results)."""
from __future__ import annotations

import json
import math

from benchmarks import core_samplers, sampler_overhead, sde_off_mode


def test_sde_off_mode_smoke(tmp_path, one_thread) -> None:
    sde_off_mode.main(["--smoke", "--results-dir", str(tmp_path)])
    rows = json.loads((tmp_path / "sde_off_mode.json").read_text())["rows"]
    assert rows[0]["sampler"] == "exact" and rows[0]["off_mode"] < 0.01
    assert {r["sampler"] for r in rows[1:]} == set(sde_off_mode.SAMPLERS)


def test_sampler_overhead_smoke(tmp_path, one_thread) -> None:
    sampler_overhead.main(["--smoke", "--results-dir", str(tmp_path)])
    rows = json.loads((tmp_path / "sampler_overhead.json").read_text())["rows"]
    assert len(rows) >= 3 and all(r["ms_per_step"] > 0 for r in rows)


def test_core_samplers_smoke(tmp_path, one_thread) -> None:
    """One problem, NFE 5 and 10, every solver × grid (~7 s without diffusers)."""
    core_samplers.main(["--smoke", "--workers", "1", "--problems", "mix2d", "--results-dir", str(tmp_path)])
    out = json.loads((tmp_path / "core_samplers.json").read_text())
    assert [r["nfe"] for r in out["rows"]] == [5, 10]
    paths = [r["pathwise"] for r in out["all_rows"] if r["pathwise"] is not None]
    assert paths and all(math.isfinite(p) for p in paths)
