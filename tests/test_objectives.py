"""Parameterisations, losses, weightings and time sampling."""
from __future__ import annotations

import pytest
import torch

from sciddpm.objectives import (PARAMETERIZATIONS, denoising_loss, eps_predictor, from_eps, loss_weight, sample_times,
                                to_eps)
from sciddpm.schedules import LinearSchedule, VESchedule, VPSchedule
from sciddpm.spaces import DenseSpace, GraphSpace, ZeroCoMSpace


@pytest.mark.parametrize("param", PARAMETERIZATIONS)
@pytest.mark.parametrize("sch", [VPSchedule(), VESchedule()], ids=["vp", "ve"])
def test_conversions_are_exact_inverses(param, sch):
    """to_eps(from_eps(ε)) = ε for every parameterisation, also for non-VP schedules (α² + σ² ≠ 1)."""
    x0 = torch.randn(8, 5, dtype=torch.float64)
    eps = torch.randn(8, 5, dtype=torch.float64)
    t = torch.rand(8, dtype=torch.float64) * 0.9 + 0.05
    a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
    xt = a * x0 + s * eps
    target = from_eps(eps, param, xt, a, s)
    torch.testing.assert_close(to_eps(target, param, xt, a, s), eps, rtol=1e-10, atol=1e-10)
    if param == "x0":
        torch.testing.assert_close(target, x0)
    if param == "v":
        torch.testing.assert_close(target, a * eps - s * x0)


def test_loss_is_zero_for_the_exact_eps_and_positive_otherwise(mixture2d):
    """The oracle ε* attains the loss minimum: L(ε*) < L(ε* + 0.1) and L(ε*) equals the MMSE E‖ε − ε*‖²/d."""
    sch = LinearSchedule(1000)
    x0, _ = mixture2d.sample(20000, torch.Generator().manual_seed(0))
    space = DenseSpace(x0.shape)

    def exact(x, t):
        return mixture2d.eps(x, sch, t)

    def biased(x, t):
        return mixture2d.eps(x, sch, t) + 0.1

    l_exact = denoising_loss(exact, sch, space, x0, generator=torch.Generator().manual_seed(1))
    l_bias = denoising_loss(biased, sch, space, x0, generator=torch.Generator().manual_seed(1))
    # same t and ε draws: the difference is exactly E‖0.1‖²/d + 2·0.1·E[ε* − ε] ≈ 0.01
    assert float(l_bias.loss - l_exact.loss) == pytest.approx(0.01, abs=0.003)


@pytest.mark.parametrize("param", ["x0", "v", "score"])
def test_parameterisation_does_not_change_the_objective(param, mixture2d):
    """A network predicting x₀, v or the score of the exact model gets the same loss as the ε-model."""
    sch = VPSchedule()
    x0, _ = mixture2d.sample(512, torch.Generator().manual_seed(0))
    space = DenseSpace(x0.shape)

    def model(x, t):
        a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
        return from_eps(mixture2d.eps(x, sch, t), param, x, a, s)

    ref = denoising_loss(lambda x, t: mixture2d.eps(x, sch, t), sch, space, x0, generator=torch.Generator().manual_seed(2))
    out = denoising_loss(model, sch, space, x0, parameterization=param, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-8, atol=1e-10)


def test_weightings():
    """likelihood weight = −dλ/dt; min-SNR weight = min(SNR, γ)/SNR (1 where SNR ≤ γ)."""
    sch = VPSchedule()
    t = torch.linspace(0.05, 0.95, 10, dtype=torch.float64)
    h = 1e-6
    dlam = (sch.log_snr(t + h) - sch.log_snr(t - h)) / (2 * h)
    torch.testing.assert_close(loss_weight(sch, t, "likelihood"), -dlam, rtol=1e-6, atol=0)
    snr = torch.exp(sch.log_snr(t))
    torch.testing.assert_close(loss_weight(sch, t, "min_snr", 5.0), torch.clamp(snr, max=5.0) / snr)
    with pytest.raises(ValueError, match="unknown weighting"):
        loss_weight(sch, t, "nope")


def test_importance_sampling_is_unbiased():
    """E_p[c(t) ℓ(t)] = E_U[w(t) ℓ(t)] for the likelihood weighting, with a slowly varying ℓ(t) = 1 + t/t_max
    (within 4 SE); for such ℓ the importance-sampled estimate also has a much smaller variance."""
    for sch in (VPSchedule(), LinearSchedule(1000)):
        g = torch.Generator().manual_seed(0)
        t_u, _ = sample_times(sch, 200_000, generator=g)
        target = loss_weight(sch, t_u, "likelihood") * (1 + t_u / sch.t_max)
        t_i, c = sample_times(sch, 200_000, importance="likelihood", generator=g)
        est = c * (1 + t_i / sch.t_max)
        se = (target.std() ** 2 / 2e5 + est.std() ** 2 / 2e5).sqrt()
        assert abs(float(est.mean() - target.mean())) < 4 * float(se)
        assert float(est.std()) < 0.5 * float(target.std())


def test_loss_through_graph_space_with_zero_com():
    """The loss works on flat zero-CoM graph batches: per-sample terms are ‖ε − ε̂‖²/d with d = 3(N − 1)."""
    batch = torch.tensor([0, 0, 0, 1, 1])
    space = ZeroCoMSpace(GraphSpace(batch, 3))
    x0 = space.project(torch.randn(5, 3))
    out = denoising_loss(lambda x, t: torch.zeros_like(x), LinearSchedule(1000), space, x0, generator=torch.Generator().manual_seed(0))
    # with ε̂ = 0 the per-sample term is ‖ε‖²/d for projected ε; recompute with the same draws
    g = torch.Generator().manual_seed(0)
    sample_times(LinearSchedule(1000), 2, generator=g)
    eps = space.noise(generator=g)
    torch.testing.assert_close(out.per_sample, space.sum_per_sample(eps**2) / space.dof.float())


def test_bad_input():
    """NaN data, shape mismatch and unknown parameterisation raise ValueError naming the problem."""
    sch = LinearSchedule(1000)
    space = DenseSpace((4, 2))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        denoising_loss(lambda x, t: x, sch, space, torch.full((4, 2), float("nan")))
    with pytest.raises(ValueError, match=r"x0 has shape \(3, 2\)"):
        denoising_loss(lambda x, t: x, sch, space, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="unknown parameterization"):
        eps_predictor(lambda x, t: x, sch, space, "eps2")
    with pytest.raises(ValueError, match=r"model output has shape \(4, 3\)"):
        denoising_loss(lambda x, t: torch.zeros(4, 3), sch, space, torch.zeros(4, 2))
