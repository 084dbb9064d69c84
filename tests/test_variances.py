"""Analytic-DPM against the oracle: Γ, the optimal variance, its bounds, the ELBO ordering and the DP trajectory."""
from __future__ import annotations

import math

import pytest
import torch

from sciddpm.likelihood import elbo
from sciddpm.samplers import ddpm, prior_sample, time_grid
from sciddpm.schedules import LinearSchedule
from sciddpm.spaces import DenseSpace
from sciddpm.variances import (GammaTable, analytic_variance, covariance_head_loss, diagonal_optimal_variance,
                               diagonal_variance_fn, estimate_gamma, last_step_cap, optimal_trajectory,
                               sn_error_from_second_moment, variance_table)

SCH = LinearSchedule(1000)


def _gamma_for(mixture, n: int, seed: int, times: torch.Tensor, batch: int = 2000) -> GammaTable:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n // batch):
        x0, _ = mixture.sample(batch, g)
        batches.append((x0, DenseSpace(x0.shape)))
    return estimate_gamma(mixture.eps_fn(SCH), SCH, batches, times, generator=g)


TABLE_TIMES = torch.unique(torch.cat([torch.arange(1.0, 20.0), torch.arange(20.0, 1001.0, 20.0)])).to(torch.float64)


@pytest.fixture(scope="module")
def gamma_table() -> GammaTable:
    """Γ of the exact model from 6k data samples at 69 times (interpolated in between)."""
    return _gamma_for(_mixture(), 6000, 0, TABLE_TIMES)


def _mixture():
    from sciddpm.oracle import GaussianMixture
    return GaussianMixture(
        torch.tensor([0.2, 0.5, 0.3]),
        torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]]),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]], [[0.15, 0.0], [0.0, 0.15]]]),
    )


def test_analytic_variance_matches_the_optimal_variance_at_every_step():
    """With the exact ε, v* from Γ equals the variance that the optimal Gaussian step needs,
    λ² + (x₀ weight)² E‖x₀ − E[x₀|x_t]‖²/d, computed independently from Tweedie means on fresh samples.
    Both are Monte-Carlo; the tolerance is 4 combined standard errors (plus 1e-9 for round-off)."""
    mixture = _mixture()
    g = torch.Generator().manual_seed(7)
    n = 20_000
    grid = time_grid(SCH, 20)
    gamma_table = _gamma_for(mixture, 10_000, 11, grid[:-1])  # Γ at exactly the grid's noisy times
    for i in range(20):
        t, s = grid[i], grid[i + 1]
        x0, _ = mixture.sample(n, g)
        x_t = SCH.alpha(t) * x0 + SCH.sigma(t) * torch.randn(x0.shape, dtype=torch.float64, generator=g)
        err = ((x0 - mixture.x0_mean(x_t, SCH, t)) ** 2).mean(1)  # per-sample ‖x₀ − E[x₀|x_t]‖²/d
        lam_sq = SCH.posterior_variance(s, t) if float(SCH.sigma_sq(s)) > 0 else torch.tensor(0.0, dtype=torch.float64)
        w = SCH.alpha(s) - (SCH.sigma_sq(s) - lam_sq).clamp_min(0).sqrt() * SCH.alpha(t) / SCH.sigma(t)
        direct = lam_sq + w**2 * err.mean()
        direct_se = w**2 * err.std() / math.sqrt(n)
        v = analytic_variance(SCH, s, t, gamma_table(t.reshape(1))[0])
        gamma_se = gamma_table.stderr[i]
        c2 = (SCH.sigma(t) / SCH.skip_alpha(s, t) - (SCH.sigma_sq(s) - lam_sq).clamp_min(0).sqrt()) ** 2
        tol = 4 * math.sqrt(float(direct_se) ** 2 + float(c2 * gamma_se) ** 2) + 1e-9
        assert abs(float(v - direct)) < tol, f"step {float(t)} → {float(s)}: {float(v)} vs {float(direct)}"


def test_gamma_estimate_within_mc_error_of_a_large_reference():
    """Γ from 4k samples agrees with a 40k-sample reference at every tested step within 4 SE."""
    mixture = _mixture()
    times = torch.tensor([1.0, 10.0, 100.0, 300.0, 600.0, 1000.0], dtype=torch.float64)
    small = _gamma_for(mixture, 4000, 1, times)
    big = _gamma_for(mixture, 40_000, 2, times)
    se = (small.stderr**2 + big.stderr**2).sqrt()
    assert ((small.gamma - big.gamma).abs() < 4 * se + 1e-12).all()


@pytest.mark.parametrize("steps", [10, 25, 50, 100])
def test_analytic_elbo_beats_beta_and_beta_tilde(steps, gamma_table):
    """ELBO with Analytic-DPM variances ≥ ELBO with β and with β̃ (common random numbers; margin 3 SE)."""
    mixture = _mixture()
    x0, _ = mixture.sample(600, torch.Generator().manual_seed(3))
    space = DenseSpace(x0.shape)
    grid = time_grid(SCH, steps)
    table = variance_table(SCH, grid, gamma_table)
    nll = {}
    for name, var in (("analytic", table), ("beta", "beta"), ("beta_tilde", "beta_tilde")):
        nll[name] = elbo(mixture.eps_fn(SCH), SCH, space, x0, grid, variance=var, generator=torch.Generator().manual_seed(9)).nll
    for other in ("beta", "beta_tilde"):
        diff = nll[other] - nll["analytic"]
        assert float(diff.mean()) > -3 * float(diff.std()) / math.sqrt(len(diff)), other


def test_bounds_are_never_violated():
    """For any Γ (even outside [0, 1]) the clipped variance lies in [λ², λ² + c² α_t²/σ_t² ((b − a)/2)²]."""
    grid = time_grid(SCH, 50)
    for gamma in (-0.5, 0.0, 0.3, 0.999, 1.0, 1.7):
        for eta in (None, 0.0, 0.5):
            for i in range(49):
                t, s = grid[i], grid[i + 1]
                v = analytic_variance(SCH, s, t, torch.tensor(gamma), eta=eta, data_range=(-1.0, 1.0))
                lam_sq = SCH.posterior_variance(s, t) * (1.0 if eta is None else eta**2)
                c = SCH.sigma(t) / SCH.skip_alpha(s, t) - (SCH.sigma_sq(s) - lam_sq).sqrt()
                upper = lam_sq + c**2 * SCH.alpha_sq(t) / SCH.sigma_sq(t)
                assert float(lam_sq) - 1e-15 <= float(v) <= float(upper) + 1e-15


def test_dp_trajectory_beats_uniform(gamma_table):
    """The DP trajectory's ELBO (same MC noise) is at least the uniform trajectory's at K = 10, and the DP
    path starts at N, ends at 0 and is strictly decreasing."""
    mixture = _mixture()
    path = optimal_trajectory(SCH, gamma_table, 10)
    assert path[0] == 1000 and path[-1] == 0 and (path[1:] < path[:-1]).all() and len(path) == 11
    x0, _ = mixture.sample(600, torch.Generator().manual_seed(4))
    space = DenseSpace(x0.shape)
    uni = time_grid(SCH, 10)
    res = {}
    for name, grid in (("dp", path), ("uniform", uni)):
        res[name] = elbo(mixture.eps_fn(SCH), SCH, space, x0, grid, variance=variance_table(SCH, grid, gamma_table),
                         generator=torch.Generator().manual_seed(5)).nll
    diff = res["uniform"] - res["dp"]
    assert float(diff.mean()) > -3 * float(diff.std()) / math.sqrt(len(diff))


def test_sampling_with_a_variance_table_and_last_step_cap(gamma_table):
    """DDPM accepts the Analytic-DPM table; the capped last step obeys σ² ≤ (π/2)(Δ/2)²."""
    grid = time_grid(SCH, 10)
    table = variance_table(SCH, grid, gamma_table, last_step_resolution=2 / 255)
    assert float(table[-1]) <= last_step_cap(2 / 255) + 1e-18
    space = DenseSpace((100, 2))
    x_t = prior_sample(SCH, space, torch.Generator().manual_seed(0), torch.float64)
    out = ddpm(_mixture().eps_fn(SCH), SCH, space, x_t, grid, variance=table, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(out.sample).all() and out.nfe == 10


def test_table_roundtrip_and_bad_input(gamma_table):
    """state_dict round-trips; a missing key or NaN is a one-line ValueError."""
    back = GammaTable.from_state_dict(gamma_table.state_dict())
    torch.testing.assert_close(back.gamma, gamma_table.gamma)
    bad = gamma_table.state_dict()
    del bad["gamma"]
    with pytest.raises(ValueError, match="missing tensor 'gamma'"):
        GammaTable.from_state_dict(bad)
    with pytest.raises(ValueError, match="steps must lie in"):
        optimal_trajectory(SCH, gamma_table, 0)
    with pytest.raises(ValueError, match="data_range needs b > a"):
        analytic_variance(SCH, torch.tensor(1.0), torch.tensor(2.0), torch.tensor(0.5), data_range=(1.0, -1.0))


# ---------------------------------------------------------------------------------------------------------------
# SN-DPM / NPR-DPM with a deliberately imperfect mean ε̂ = ε* + b
# ---------------------------------------------------------------------------------------------------------------
BIAS = torch.tensor([0.15, -0.3], dtype=torch.float64)


def _exact_error_sq(mixture, x, t, bias):
    """E[(ε − ε̂)² | x_t] per element for ε̂ = ε* + b: diag Var[ε|x_t] + b², Var[ε|x_t] = (α²/σ²) Cov[x₀|x_t]."""
    tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1, 1)
    var_eps = torch.diagonal(mixture.x0_posterior_cov(x, SCH, tt.flatten()), dim1=1, dim2=2) * SCH.alpha_sq(tt) / SCH.sigma_sq(tt)
    return var_eps + bias**2


def test_npr_covariance_equals_the_theorem_by_monte_carlo():
    """Σ*(x_t)_i = E_{q(x_s|x_t)}[(x_s − μ_θ(x_t))_i²] for the fixed imperfect mean μ_θ (the optimal diagonal
    Gaussian), estimated by exact posterior sampling x₀ ~ q(x₀|x_t), x_s ~ q(x_s|x_t, x₀); the NPR formula with
    the exact E[(ε − ε̂)²|x_t] must match it within 5 standard errors at several x_t and steps."""
    mixture = _mixture()
    g = torch.Generator().manual_seed(21)
    x_t = torch.tensor([[0.5, 0.2], [-1.0, 0.3], [1.2, -1.5]], dtype=torch.float64)
    n = 100_000
    for t_val, s_val in ((300.0, 250.0), (100.0, 60.0), (700.0, 500.0)):
        t, s = torch.tensor(t_val, dtype=torch.float64), torch.tensor(s_val, dtype=torch.float64)
        eps_hat = mixture.eps(x_t, SCH, t) + BIAS
        x0_hat = (x_t - SCH.sigma(t) * eps_hat) / SCH.alpha(t)
        c_x0 = SCH.alpha(s) * SCH.skip_beta(s, t) / SCH.sigma_sq(t)
        c_xt = SCH.skip_alpha(s, t) * SCH.sigma_sq(s) / SCH.sigma_sq(t)
        mu_theta = c_x0 * x0_hat + c_xt * x_t
        x0 = mixture.sample_posterior(x_t, SCH, t, n, generator=g)  # [n, B, D]
        x_s = c_x0 * x0 + c_xt * x_t + SCH.posterior_variance(s, t).sqrt() * torch.randn(x0.shape, dtype=torch.float64, generator=g)
        sq = (x_s - mu_theta) ** 2
        mc, se = sq.mean(0), sq.std(0) / math.sqrt(n)
        v = diagonal_optimal_variance(SCH, s, t, _exact_error_sq(mixture, x_t, t, BIAS))
        assert ((v - mc).abs() < 5 * se).all(), (t_val, v, mc)


def test_head_losses_are_minimised_by_the_exact_moments():
    """With common random numbers, L(h* + δ) − L(h*) = E‖δ‖²/d (the cross term vanishes only at the minimiser):
    NPR's h* = E[(ε − ε̂)²|x_t], SN's h* = E[ε²|x_t] = diag Var[ε|x_t] + ε*²; checked within 10%."""
    mixture = _mixture()
    x0, _ = mixture.sample(8000, torch.Generator().manual_seed(22))
    space = DenseSpace(x0.shape)
    mean_eps = lambda x, t: mixture.eps(x, SCH, t) + BIAS  # noqa: E731
    heads = {
        "npr": lambda x, t: _exact_error_sq(mixture, x, t, BIAS),
        "sn": lambda x, t: _exact_error_sq(mixture, x, t, torch.zeros(2, dtype=torch.float64)) + mixture.eps(x, SCH, t) ** 2,
    }
    for kind, head in heads.items():
        base = covariance_head_loss(head, mean_eps, SCH, space, x0, kind=kind, generator=torch.Generator().manual_seed(5))
        for delta in (0.05, -0.1):
            shifted = covariance_head_loss(lambda x, t: head(x, t) + delta, mean_eps, SCH, space, x0, kind=kind,
                                           generator=torch.Generator().manual_seed(5))
            assert float(shifted - base) == pytest.approx(delta**2, rel=0.1), (kind, delta)


def test_sn_with_the_exact_mean_equals_npr():
    """With ε̂ = ε*, SN's E[ε²|x] − ε̂² equals NPR's E[(ε − ε̂)²|x] exactly (both Var[ε|x_t])."""
    mixture = _mixture()
    x = torch.randn(50, 2, dtype=torch.float64)
    t = torch.tensor(400.0, dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    eps_star = mixture.eps(x, SCH, t)
    sn = sn_error_from_second_moment(_exact_error_sq(mixture, x, t, zero) + eps_star**2, eps_star)
    torch.testing.assert_close(sn, _exact_error_sq(mixture, x, t, zero), rtol=1e-10, atol=1e-12)


def test_diagonal_bounds_are_never_violated():
    """Any predicted error (negative, huge) gives a covariance within [λ², λ² + c² α_t²/σ_t² ((b − a)/2)²] per channel."""
    grid = time_grid(SCH, 20)
    err = torch.tensor([[-1.0, 0.0], [0.5, 1e6]], dtype=torch.float64)
    lo, hi = torch.tensor([-1.0, -3.0]), torch.tensor([1.0, 3.0])
    for i in range(20):
        t, s = grid[i], grid[i + 1]
        v = diagonal_optimal_variance(SCH, s, t, err, data_range=(lo, hi))
        lam_sq = SCH.posterior_variance(s, t) if float(SCH.sigma_sq(s)) > 0 else torch.tensor(0.0, dtype=torch.float64)
        c2 = (SCH.sigma(t) / SCH.skip_alpha(s, t) - (SCH.sigma_sq(s) - lam_sq).clamp_min(0).sqrt()) ** 2
        upper = lam_sq + c2 * ((hi - lo).double() / 2) ** 2 * SCH.alpha_sq(t) / SCH.sigma_sq(t)
        assert (v >= lam_sq - 1e-15).all() and (v <= upper + 1e-12).all()


def test_npr_elbo_beats_fixed_variances_with_an_imperfect_mean():
    """With the biased mean, the ELBO with NPR's diagonal covariance (exact head) ≥ the ELBO with β and with β̃
    at K = 10 (common random numbers; margin 3 SE); ddpm samples with it are finite."""
    mixture = _mixture()
    x0, _ = mixture.sample(600, torch.Generator().manual_seed(23))
    space = DenseSpace(x0.shape)
    grid = time_grid(SCH, 10)
    mean_eps = lambda x, t: mixture.eps(x, SCH, t) + BIAS  # noqa: E731
    head = lambda x, t: _exact_error_sq(mixture, x, t, BIAS)  # noqa: E731
    var_fn = diagonal_variance_fn(SCH, head, kind="npr")
    nll = {name: elbo(mean_eps, SCH, space, x0, grid, variance=v, generator=torch.Generator().manual_seed(9)).nll
           for name, v in (("npr", var_fn), ("beta", "beta"), ("beta_tilde", "beta_tilde"))}
    for other in ("beta", "beta_tilde"):
        diff = nll[other] - nll["npr"]
        assert float(diff.mean()) > -3 * float(diff.std()) / math.sqrt(len(diff)), other
    out = ddpm(mean_eps, SCH, space, prior_sample(SCH, space, torch.Generator().manual_seed(0), torch.float64), grid,
               variance=var_fn, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(out.sample).all()
