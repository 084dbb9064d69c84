"""State spaces: noise, projection, reductions, degrees of freedom, and padded/flat equivalence."""
from __future__ import annotations

import math

import pytest
import torch

from sciddpm.spaces import (DenseSpace, GraphSpace, MaskedSpace, ProductSpace, TorusSpace, ZeroCoMSpace,
                            wrap_angle)

SIZES = [3, 5, 2, 4]


def _graph_and_mask(feature_dim: int = 3):
    batch = torch.cat([torch.full((n,), i) for i, n in enumerate(SIZES)])
    mask = torch.arange(max(SIZES))[None, :] < torch.tensor(SIZES)[:, None]
    return GraphSpace(batch, feature_dim), MaskedSpace(mask, feature_dim)


def test_dof_counts():
    """d = N·F for sets, F(N − 1) with zero CoM, and sums for products."""
    graph, masked = _graph_and_mask()
    assert graph.dof.tolist() == [3.0 * n for n in SIZES]
    assert masked.dof.tolist() == [3.0 * n for n in SIZES]
    assert ZeroCoMSpace(graph).dof.tolist() == [3.0 * (n - 1) for n in SIZES]
    feats = GraphSpace(graph.batch, 6)
    prod = ProductSpace([ZeroCoMSpace(graph), feats])
    assert prod.dof.tolist() == [3.0 * (n - 1) + 6.0 * n for n in SIZES]
    assert DenseSpace((7, 2, 3)).dof.tolist() == [6.0] * 7


def test_padded_and_flat_draw_identical_noise():
    """Same generator seed → the padded layout holds exactly the flat layout's noise at valid nodes."""
    graph, masked = _graph_and_mask()
    for make in (lambda s: s, ZeroCoMSpace):
        a = make(graph).noise(torch.Generator().manual_seed(3), torch.float64)
        b = make(masked).noise(torch.Generator().manual_seed(3), torch.float64)
        torch.testing.assert_close(b[masked.mask], a, rtol=0, atol=1e-15)
        assert (b[~masked.mask] == 0).all()


def test_zero_com_projection_and_noise_statistics():
    """Projected states have CoM < 1e-12; noise has E‖z‖² = d (it is standard normal in the subspace)."""
    graph, masked = _graph_and_mask()
    zc = ZeroCoMSpace(graph)
    x = torch.randn(graph.shape, dtype=torch.float64) + 5.0
    assert zc.centre_of_mass(zc.project(x)).abs().max() < 1e-12
    g = torch.Generator().manual_seed(0)
    n_rep = 4000
    sq = torch.stack([zc.sum_per_sample(zc.noise(g, torch.float64) ** 2) for _ in range(n_rep)])
    # E‖z‖² = d with Var = 2d per sample; 5 standard errors.
    se = torch.sqrt(2 * zc.dof / n_rep)
    assert ((sq.mean(0) - zc.dof).abs() < 5 * se).all()
    zm = ZeroCoMSpace(masked)
    assert zm.centre_of_mass(zm.noise(g, torch.float64)).abs().max() < 1e-12


def test_reductions_agree_between_layouts():
    """sum_per_sample and broadcast agree between padded and flat layouts; padding never contributes."""
    graph, masked = _graph_and_mask()
    flat = torch.randn(graph.shape, dtype=torch.float64)
    padded = torch.zeros(masked.shape, dtype=torch.float64)
    padded[masked.mask] = flat
    padded_with_junk = padded + (~masked.mask).unsqueeze(-1) * 100.0
    torch.testing.assert_close(graph.sum_per_sample(flat), masked.sum_per_sample(padded_with_junk))
    v = torch.arange(len(SIZES), dtype=torch.float64)
    torch.testing.assert_close((masked.broadcast(v) * padded)[masked.mask], graph.broadcast(v) * flat)


def test_torus_wraps_to_half_open_interval():
    """wrap_angle maps to (−π, π]: π stays π, −π becomes π, 3π/2 becomes −π/2."""
    x = torch.tensor([math.pi, -math.pi, 1.5 * math.pi, -7.0, 0.0], dtype=torch.float64)
    y = wrap_angle(x)
    assert (y > -math.pi).all() and (y <= math.pi).all()
    torch.testing.assert_close(y, torch.tensor([math.pi, math.pi, -0.5 * math.pi, -7.0 + 2 * math.pi, 0.0], dtype=torch.float64))
    space = TorusSpace(DenseSpace((10, 4)))
    z = space.project(10 * torch.randn(space.shape))
    assert (z > -math.pi).all() and (z <= math.pi).all()


def test_element_owner():
    """element_owner marks each element's sample and −1 on padding."""
    graph, masked = _graph_and_mask()
    assert graph.element_owner()[:, 0].tolist() == graph.batch.tolist()
    own = masked.element_owner()
    assert (own[~masked.mask] == -1).all() and (own[masked.mask][:, 0] == graph.batch).all()


def test_bad_input():
    """Shape mismatches and malformed layouts raise ValueError naming the problem."""
    graph, masked = _graph_and_mask()
    with pytest.raises(ValueError, match=r"state has shape \(3, 3\) but the space expects \(14, 3\)"):
        graph.sum_per_sample(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        MaskedSpace(torch.ones(2, 3), 3)
    with pytest.raises(ValueError, match="batch index must be a long tensor"):
        GraphSpace(torch.zeros(3), 3)
    with pytest.raises(ValueError, match="at least 2 points"):
        ZeroCoMSpace(GraphSpace(torch.tensor([0, 1, 1]), 3))
    with pytest.raises(ValueError, match="leading axes"):
        ProductSpace([DenseSpace((4, 3)), DenseSpace((5, 2))])
    with pytest.raises(ValueError, match="dense space shape"):
        DenseSpace((4,))



def every_layout() -> list:
    """One space of each kind (dense, masked, graph, zero-CoM, torus, product) over small index tensors."""
    batch = torch.tensor([0, 0, 1, 1, 1])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    return [DenseSpace((2, 3, 4)), MaskedSpace(mask, 3), GraphSpace(batch, 3), ZeroCoMSpace(GraphSpace(batch, 3)),
            TorusSpace(DenseSpace((2, 5))), ProductSpace([ZeroCoMSpace(GraphSpace(batch, 3)), GraphSpace(batch, 2)])]


def test_to_rebuilds_the_same_layout():
    """``Space.to(device)`` rebuilds the space (constraints and products wrap the rebuilt parts) with the same
    type, shape, batch size, degrees of freedom, element owners and projection (tests/test_gpu.py moves them to
    CUDA)."""
    for space in every_layout():
        moved = space.to("cpu")
        assert type(moved) is type(space) and moved is not space
        assert moved.shape == space.shape and moved.batch_size == space.batch_size
        assert torch.equal(moved.dof, space.dof) and torch.equal(moved.element_owner(), space.element_owner())
        x = torch.randn(space.shape, generator=torch.Generator().manual_seed(0))
        assert torch.equal(moved.project(x), space.project(x))
