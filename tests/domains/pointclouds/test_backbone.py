"""The PDR-style backbone: farthest-point sampling and k-NN by hand, permutation equivariance in the noisy cloud,
invariance to the partial cloud's order, and its dependence on the partial (feature transfer reaches the output)."""
from __future__ import annotations

import pytest
import torch

from sciddpm.domains.pointclouds.backbone import PointDiffusionNet, farthest_point_sample, knn
from sciddpm.schedules import schedule_from_config

SCHEDULE = schedule_from_config({"type": "linear", "num_steps": 1000})


def test_farthest_point_sampling_by_hand():
    """Start at the point farthest from the mean (10, 0, 0), then the farthest from it (−1, 0, 0), then the point
    farthest from both ((0, 3, 0): distance √10 to (−1,0,0))."""
    pts = torch.tensor([[[0.0, 0, 0], [10, 0, 0], [-1, 0, 0], [0, 3, 0], [9, 0, 0]]])
    assert farthest_point_sample(pts, 3).tolist() == [[1, 2, 3]]
    perm = torch.tensor([4, 2, 0, 3, 1])  # the chosen set follows the points, not their order
    assert sorted(perm[farthest_point_sample(pts[:, perm], 3)[0]].tolist()) == [1, 2, 3]


def test_knn_by_hand():
    ref = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [3, 0, 0]]])
    idx, dist = knn(torch.tensor([[[2.1, 0, 0]]]), ref, 2)
    assert idx.tolist() == [[[2, 1]]]
    torch.testing.assert_close(dist, torch.tensor([[[0.9, 1.1]]]))


def _net() -> PointDiffusionNet:
    torch.manual_seed(0)
    return PointDiffusionNet(channels=(16, 32, 32), ratio=4, k=8, time_dim=16, schedule=SCHEDULE).double()


def test_permutation_equivariance_and_partial_order_invariance():
    net = _net()
    gen = torch.Generator().manual_seed(1)
    x, part = torch.randn(2, 64, 3, generator=gen, dtype=torch.float64), torch.rand(2, 32, 3, generator=gen,
                                                                                    dtype=torch.float64)
    t = torch.tensor([10.0, 700.0], dtype=torch.float64)
    with torch.no_grad():
        out = net(x, t, part)
        perm, cperm = torch.randperm(64, generator=gen), torch.randperm(32, generator=gen)
        torch.testing.assert_close(net(x[:, perm], t, part), out[:, perm], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(net(x, t, part[:, cperm]), out, rtol=1e-10, atol=1e-10)
        # the output depends on the partial cloud and on t (feature transfer and time embedding are wired in)
        assert (net(x, t, part + 0.3) - out).abs().max() > 1e-3
        assert (net(x, t.flip(0), part) - out).abs().max() > 1e-3
        # batch elements are independent
        torch.testing.assert_close(net(x[:1], t[:1], part[:1]), out[:1], rtol=1e-10, atol=1e-10)


def test_bad_sizes_are_errors():
    with pytest.raises(ValueError, match="time_dim"):
        PointDiffusionNet(channels=(8,), schedule=SCHEDULE)
    with pytest.raises(ValueError, match="partial must be"):
        _net()(torch.zeros(1, 16, 3, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
               torch.zeros(1, 16, 2, dtype=torch.float64))
