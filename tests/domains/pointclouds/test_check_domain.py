"""The pointclouds domain keeps the Domain contract (``sciddpm.testing.check_domain``): partial clouds (and
references) travel in the space; the network commutes with permutations of the noisy cloud."""
from __future__ import annotations

import torch

from sciddpm.domains.pointclouds.adapter import PointCloudDomain
from sciddpm.testing import check_domain

TINY = {"channels": [8, 16], "ratio": 4, "k": 4, "time_dim": 8}
OPTIONS = {"n_points": 64, "n_partial": 32, "views": 1}


def permute(x: torch.Tensor, space) -> torch.Tensor:
    return x[:, torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(5))]


def test_pointclouds_keep_the_contract():
    gen = torch.Generator().manual_seed(0)
    report = check_domain(PointCloudDomain(OPTIONS), backbone=TINY, group_action=permute,
                          conditions=[{}, {"partial": torch.rand(40, 3, generator=gen)},
                                      {"partial": torch.rand(4, 40, 3, generator=gen),
                                       "reference": torch.rand(4, 64, 3, generator=gen)}])
    checks = report["checks"]
    assert checks["sample_space"]["shapes"] == [(4, 64, 3)] * 3
    assert checks["data_batch"]["network_keywords"] == ["partial"]
    assert checks["export_load"]["max_abs_difference"] == 0.0
    assert checks["equivariance"]["max_abs_error"] <= 1e-5
    assert {"cd_l1", "cd_l2", "emd", "f1"} <= set(checks["outputs"]["metrics"])


def test_benchmark_config_is_valid():
    """benchmarks/pointcloud_diffusion.yaml (the README's `sciddpm train --config`) passes the engine's key checks."""
    from pathlib import Path

    from sciddpm.config import check_domain_config, load_config

    repo = Path(__file__).resolve().parents[3]
    cfg = load_config(repo / "benchmarks" / "pointcloud_diffusion.yaml")
    assert cfg.domain == "pointclouds" and cfg.data["n_points"] == 256
    # the YAML's data.path is relative to the repository root (where the README's command runs); without
    # ../shared the keys are still checked, with the path left out
    path = repo / cfg.data["path"]
    cfg.data = {**cfg.data, "path": str(path)} if path.exists() else \
        {k: v for k, v in cfg.data.items() if k != "path"}
    check_domain_config(cfg, PointCloudDomain(cfg.data))
