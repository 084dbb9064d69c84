"""The oracle itself: scores against autograd, sampling against moments, Tweedie against the score."""
from __future__ import annotations

import pytest
import torch

from sciddpm.oracle import GaussianMixture, sliced_wasserstein2
from sciddpm.schedules import LinearSchedule, VPSchedule


def test_score_is_gradient_of_log_density(mixture2d):
    """∇log q_t from the closed form equals autograd of log q_t, for per-sample times."""
    sch = VPSchedule()
    x = torch.randn(64, 2, dtype=torch.float64, requires_grad=True)
    t = torch.rand(64, dtype=torch.float64) * 0.9 + 0.05
    (grad,) = torch.autograd.grad(mixture2d.log_prob(x, sch, t).sum(), x)
    torch.testing.assert_close(mixture2d.score(x.detach(), sch, t), grad, rtol=1e-10, atol=1e-12)


def test_full_and_diagonal_agree():
    """A diagonal mixture given as full covariances gives the same density and score."""
    var = torch.tensor([[0.5, 2.0, 1.0], [1.5, 0.3, 0.7]], dtype=torch.float64)
    means = torch.randn(2, 3, dtype=torch.float64)
    a = GaussianMixture(torch.tensor([0.4, 0.6]), means, var, diagonal=True)
    b = GaussianMixture(torch.tensor([0.4, 0.6]), means, torch.diag_embed(var))
    x = torch.randn(10, 3, dtype=torch.float64)
    sch = LinearSchedule(1000)
    torch.testing.assert_close(a.log_prob(x, sch, 300.0), b.log_prob(x, sch, 300.0))
    torch.testing.assert_close(a.score(x, sch, 300.0), b.score(x, sch, 300.0))


def test_samples_have_exact_moments(mixture2d):
    """Exact q₀ samples: mean within 5 SE and covariance within 5% of the closed form (n = 100k)."""
    x, comp = mixture2d.sample(100_000, torch.Generator().manual_seed(0))
    cov = mixture2d.covariance()
    assert ((x.mean(0) - mixture2d.mean()).abs() < 5 * torch.sqrt(cov.diag() / 1e5)).all()
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0.05, atol=0.01)
    freq = torch.bincount(comp, minlength=3).to(torch.float64) / 1e5
    assert torch.allclose(freq, mixture2d.weights, atol=0.01)


def test_eps_is_posterior_mean_of_noise(mixture2d):
    """ε*(x_t) = E[ε | x_t]: regressing the true ε on ε* gives slope 1 (E[(ε − ε*) ε*] = 0)."""
    sch = LinearSchedule(1000)
    g = torch.Generator().manual_seed(1)
    x0, _ = mixture2d.sample(50_000, g)
    t = torch.tensor(400.0, dtype=torch.float64)
    eps = torch.randn(x0.shape, dtype=torch.float64, generator=g)
    xt = sch.alpha(t) * x0 + sch.sigma(t) * eps
    e_star = mixture2d.eps(xt, sch, t)
    slope = (eps * e_star).sum() / (e_star * e_star).sum()
    assert float(slope) == pytest.approx(1.0, abs=0.02)
    torch.testing.assert_close(mixture2d.x0_mean(xt, sch, t), (xt - sch.sigma(t) * e_star) / sch.alpha(t))


def test_sliced_w2_detects_shift():
    """Sliced W₂ of a sample against itself is 0 and against a shift by δ·u is ≈ δ·E|θᵀu| scale."""
    x = torch.randn(2000, 2, dtype=torch.float64)
    assert float(sliced_wasserstein2(x, x)) == 0.0
    shifted = float(sliced_wasserstein2(x, x + torch.tensor([1.0, 0.0], dtype=torch.float64), generator=torch.Generator().manual_seed(0)))
    assert shifted == pytest.approx(2**-0.5, rel=0.1)  # RMS of cos θ over the circle is 1/√2


def test_bad_input():
    """Malformed mixtures raise ValueError naming the problem."""
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.tensor([[[1.0, 2.0], [2.0, 1.0]]]))
    with pytest.raises(ValueError, match="weights must be positive"):
        GaussianMixture(torch.tensor([-1.0]), torch.zeros(1, 2), torch.ones(1, 2), diagonal=True)
    with pytest.raises(ValueError, match=r"x must be \[B, 2\]"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.ones(1, 2), diagonal=True).log_prob(torch.zeros(3, 3))
