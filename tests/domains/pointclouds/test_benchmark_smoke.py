"""The completion benchmark's --smoke run: the whole pipeline (engine training, regression and refinement nets,
baselines, every sampler row, results files) at toy scale on the bundled subset, into a temporary folder."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks import pointcloud_completion as bench


def test_smoke_run_writes_every_row(tmp_path: Path):
    args = bench.smoke_args(bench.parse([]), tmp_path)
    bench.run_benchmark(args, smoke=True)
    result = json.loads((tmp_path / "results" / "pointcloud_completion.json").read_text())
    methods = {r["method"] for r in result["rows"] if not r["method"].startswith("mirror (axis ")}
    assert methods == {"partial", "nn_retrieval", "regression (same backbone)", "coarse ddim K=2",
                       "coarse ddim K=2, no x0 clip", "refined ddim K=2", "coarse ddpm K=5", "refined ddpm K=5"}
    assert len(result["rows"]) == 2 * 9
    assert {r["split"] for r in result["rows"]} == {"seen", "novel"}
    assert all(0 <= r["f1"] <= r["f1_5pct"] <= 1 and r["cd_l1"] > 0 for r in result["rows"] if r["method"] != "partial")
    assert result["verdict"]["emd_s_per_pair_256"] > 0 and result["verdict"]["emd_s_per_pair_1024"] > 0
    assert (tmp_path / "run" / "export_refined" / "model.safetensors").is_file()
    assert set(result["fraction_kept"]) >= {"seen_hpr", "seen_crop", "train_hpr", "train_crop"}
