"""Completion metrics against hand-computed answers and their symmetries (``domains/pointclouds/metrics.py``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sciddpm.domains.pointclouds.metrics import (chamfer_l1, chamfer_l2, completion_metrics, emd_exact, f_score)

P = torch.tensor([[0.0, 0, 0], [1, 0, 0]], dtype=torch.float64)
G = torch.tensor([[0.0, 0, 0], [0, 2, 0]], dtype=torch.float64)


def test_two_point_clouds_by_hand():
    """d(P→G) = (0, 1), d(G→P) = (0, 2); the best bijection is identity-like: (0 + √5)/2 vs (2 + 1)/2."""
    assert float(chamfer_l1(P, G)) == pytest.approx(0.5 * (0.5 + 1.0), abs=1e-12)
    assert float(chamfer_l2(P, G)) == pytest.approx(0.5 + 2.0, abs=1e-12)
    assert float(emd_exact(P, G)) == pytest.approx(math.sqrt(5) / 2, abs=1e-12)
    assert float(f_score(P, G)) == pytest.approx(0.5, abs=1e-12)  # precision 1/2, recall 1/2
    scaled = completion_metrics(P, G)
    assert scaled["cd_l1"][0] == pytest.approx(750.0) and scaled["cd_l2"][0] == pytest.approx(25000.0)
    assert scaled["emd"][0] == pytest.approx(100 * math.sqrt(5) / 2)


def test_f_score_threshold_is_on_the_distance():
    gt = torch.zeros(1, 4, 3, dtype=torch.float64)
    near = gt.clone()
    near[0, :, 0] = 0.009
    far = gt.clone()
    far[0, :, 0] = 0.011
    assert float(f_score(near, gt)) == 1.0  # d = 0.009 < 0.01 (d² = 8.1e-5 < 1e-4: the same test)
    assert float(f_score(far, gt)) == 0.0
    assert float(f_score(far, gt, tau=0.02)) == 1.0


def test_symmetries_and_identity():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 50, 3, generator=gen, dtype=torch.float64), torch.rand(3, 50, 3, generator=gen,
                                                                                 dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    shift = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    perm = torch.randperm(50, generator=gen)
    for fn in (chamfer_l1, chamfer_l2, emd_exact, f_score):
        base = fn(a, b)
        torch.testing.assert_close(fn(b, a), base, rtol=1e-10, atol=1e-12)  # symmetric in its arguments
        torch.testing.assert_close(fn(a[:, perm], b), base, rtol=1e-10, atol=1e-12)  # order-free
        torch.testing.assert_close(fn(a @ q.T + shift, b @ q.T + shift), base, rtol=1e-9, atol=1e-12)  # rigid
    for fn in (chamfer_l1, chamfer_l2, emd_exact):
        assert float(fn(a, a).abs().max()) == 0.0
    assert float(f_score(a, a).min()) == 1.0
    # EMD uses one matching for both sides, so it bounds CD-L1's two nearest-point means from above
    assert bool((emd_exact(a, b) >= chamfer_l1(a, b) - 1e-12).all())


def test_emd_of_a_translated_cloud_is_the_translation():
    """mean‖p − φ(p) − v‖ ≥ ‖mean(p − φ(p)) − v‖ = ‖v‖ for every bijection φ (Jensen), with equality at φ = id."""
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(40, 3, generator=gen, dtype=torch.float64)
    v = torch.tensor([0.05, 0.02, -0.01], dtype=torch.float64)
    assert float(emd_exact(a, a + v)) == pytest.approx(float(v.norm()), rel=1e-12)


def test_bad_shapes_are_one_line_errors():
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        chamfer_l1(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="equal size"):
        emd_exact(np.zeros((4, 3)), np.zeros((5, 3)))
