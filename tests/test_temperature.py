"""Temperature in the core (thermodynamic maps, Herron et al. PNAS 2024): per-sample noise variance v = T.

The ground truth is the Gaussian oracle. A quadratic energy U(x) = ½ xᵀAx has the Boltzmann density
exp(−U/T) ∝ N(0, T K) with K = A⁻¹. Under the tempered forward process x_t = α x₀ + σ √T ε the exact
noise-unit predictor is E[√T ε | x_t] = σ (α²K + σ²I)⁻¹ x_t at every T: the oracle's ε for N(0, K) at T = 1.
So a model exact at one temperature, sampled at a temperature it never saw, must give covariance T K.
"""
from __future__ import annotations

import math

import pytest
import torch

from sciddpm.likelihood import elbo
from sciddpm.objectives import denoising_loss
from sciddpm.oracle import GaussianMixture
from sciddpm.samplers import ddim, ddpm, prior_sample, time_grid
from sciddpm.schedules import LinearSchedule, VESchedule
from sciddpm.spaces import DenseSpace, GraphSpace, MaskedSpace, ProductSpace, TorusSpace, ZeroCoMSpace

K = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=torch.float64)  # K = A⁻¹, the T = 1 covariance


def _boltzmann_oracle() -> GaussianMixture:
    return GaussianMixture(torch.ones(1), torch.zeros(1, 2), K[None])


def _cov_within(x: torch.Tensor, expected: torch.Tensor, n_sigma: float = 4.5, rel_bias: float = 0.01) -> None:
    """Sample covariance of x [n, 2] within n_sigma standard errors (plus a small relative discretisation bias)."""
    n = x.shape[0]
    cov = torch.cov(x.T.double())
    # se of a Gaussian sample covariance entry: sqrt((Σ_ij² + Σ_ii Σ_jj)/n)
    se = ((expected**2 + torch.outer(expected.diagonal(), expected.diagonal())) / n).sqrt()
    assert ((cov - expected).abs() <= n_sigma * se + rel_bias * expected.abs().max()).all(), (cov, expected)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_untrained_temperature_reproduces_boltzmann_variance(sampler: str) -> None:
    """Exact ε from T = 1 only; per-sample temperatures 0.4 and 2.7 in one batch → covariances 0.4 K and 2.7 K.
    With the unit-variance prior (T only as an input) the same model gives K: the prior variance carries T."""
    torch.manual_seed(0)
    schedule, oracle, n = LinearSchedule(1000), _boltzmann_oracle(), 12_000
    temps = torch.cat([torch.full((n,), 0.4), torch.full((n,), 2.7)]).double()
    eps_fn = oracle.eps_fn(schedule)  # exact at T = 1, and (noise units) at every T
    grid = time_grid(schedule, 250)
    run = ddim if sampler == "ddim" else ddpm
    for prior, scale in ((True, temps), (False, torch.ones_like(temps))):
        space = DenseSpace((2 * n, 2)).with_temperature(temps, prior=prior)
        assert torch.equal(space.condition["temperature"], temps)
        gen = torch.Generator().manual_seed(1)
        x = run(eps_fn, schedule, space, prior_sample(schedule, space, gen, torch.float64), grid, generator=gen).sample
        for lo, hi in ((0, n), (n, 2 * n)):
            _cov_within(x[lo:hi], float(scale[lo]) * K)


def test_tempered_loss_is_unit_eps_mse_of_the_exact_model() -> None:
    """With the exact noise-unit model the per-sample loss has expectation tr(I − σ²(α²K + σ²I)⁻¹)/d at its t
    (the irreducible unit-ε error), for any T; a loss in noise units would be T times larger."""
    torch.manual_seed(0)
    schedule, oracle, n = LinearSchedule(1000), _boltzmann_oracle(), 40_000
    model = lambda x, t, temperature: oracle.eps(x, schedule, t)  # noqa: E731  (reads x only, as it may)
    for temp in (0.3, 3.0):
        gen = torch.Generator().manual_seed(2)
        x0 = oracle.sample(n, gen)[0] * math.sqrt(temp)
        space = DenseSpace((n, 2)).with_temperature(temp)
        out = denoising_loss(model, schedule, space, x0, generator=gen, **{"temperature": space.condition["temperature"]})
        a2, s2 = schedule.alpha_sq(out.t), schedule.sigma_sq(out.t)
        evals = torch.linalg.eigvalsh(K)
        expected = (1 - s2[:, None] / (a2[:, None] * evals + s2[:, None])).sum(1) / 2
        diff = out.per_sample.double() - expected
        assert abs(float(diff.mean())) < 4.5 * float(diff.std()) / math.sqrt(n)
        assert abs(float(out.per_sample.mean() / expected.mean()) - 1) < 0.03


def test_tempered_torus_target_uses_the_tempered_noise_scale() -> None:
    """Without wrap-around (σ_max small) the torus's wrapped-normal target equals ε, so the tempered torus loss
    must equal the tempered dense loss: the target is computed at noise scale σ √T, in unit ε."""
    schedule, n = VESchedule(sigma_min=1e-3, sigma_max=0.05), 64
    x0 = torch.rand(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5
    model = lambda x, t: torch.sin(3 * x)  # noqa: E731
    losses = []
    for space in (TorusSpace(DenseSpace((n, 3))), DenseSpace((n, 3))):
        space = space.with_temperature(torch.linspace(1.0, 4.0, n))
        losses.append(denoising_loss(model, schedule, space, x0, generator=torch.Generator().manual_seed(3)).per_sample)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-9, atol=1e-12)


def test_noise_variance_in_every_layout() -> None:
    """Per-sample noise variance v in dense, masked, graph, zero-CoM, torus and product spaces: mean square of a
    draw ≈ v, padding stays zero, centres of mass stay zero, and ``to`` keeps v."""
    torch.manual_seed(0)
    v = torch.tensor([0.25, 4.0])
    mask = torch.zeros(2, 900, dtype=torch.bool)
    mask[0, :600], mask[1, :] = True, True
    batch = torch.cat([torch.zeros(600), torch.ones(900)]).long()
    spaces = [DenseSpace((2, 900, 3)), MaskedSpace(mask, 3), GraphSpace(batch, 3), ZeroCoMSpace(MaskedSpace(mask, 3)),
              TorusSpace(DenseSpace((2, 900, 3))), ProductSpace([ZeroCoMSpace(GraphSpace(batch, 3)), GraphSpace(batch, 2)])]
    for base in spaces:
        space = base.with_temperature(v).to("cpu")
        torch.testing.assert_close(space.noise_variance, v.double())
        z = space.noise(torch.Generator().manual_seed(1), torch.float64)
        ms = space.mean_square_per_sample(z)
        assert torch.allclose(ms, v.double(), rtol=0.1), (type(base).__name__, ms)
        assert not z[~space.valid_mask()].any()
        if isinstance(base, ZeroCoMSpace):
            assert base.centre_of_mass(z).abs().max() < 1e-10
        torch.testing.assert_close(base.mean_square_per_sample(base.noise(torch.Generator().manual_seed(1),
                                                                          torch.float64)), ms / v.double())


def test_temperature_errors_are_one_line() -> None:
    space = DenseSpace((3, 2))
    for bad, match in ((0.0, "> 0"), (-1.0, "> 0"), (float("nan"), "finite"), ([1.0, 2.0], "2 values for 3")):
        with pytest.raises(ValueError, match=match) as err:
            space.with_temperature(bad)
        assert "\n" not in str(err.value)
    tempered = space.with_temperature(2.0)
    with pytest.raises(ValueError, match="tempered"):
        elbo(lambda x, t: x, LinearSchedule(100), tempered, torch.zeros(3, 2), time_grid(LinearSchedule(100), 5))
    assert space.with_temperature(2.0, prior=False).noise_variance is None
