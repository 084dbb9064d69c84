"""Likelihoods: the discrete ELBO of a reverse Markov chain and the probability-flow-ODE log-likelihood.

Both count dimensions with the space's degrees of freedom d (3(N − 1) for zero-CoM positions), report nats
per sample, nats/dim and bits/dim, and accept a dequantisation bin width Δ: for data on a grid of bins of
width Δ dequantised uniformly, −log P(bin) ≤ −E_u log p(x + u) − d log Δ (Theis et al. 2016; Ho et al. 2020).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .objectives import EpsFn, forward_noise, predict_x0
from .samplers import VarianceFn, check_grid, reverse_variance
from .schedules import NoiseSchedule
from .spaces import Space


@dataclass
class LikelihoodResult:
    """Negative log-likelihood (or its ELBO bound) per sample, with per-dimension units and the terms."""

    nll: Tensor  # nats per sample [B]
    dof: Tensor  # degrees of freedom per sample [B]
    terms: dict[str, Tensor] = field(default_factory=dict)  # per-sample nats

    @property
    def nats_per_dim(self) -> Tensor:
        """NLL / d."""
        return self.nll / self.dof

    @property
    def bits_per_dim(self) -> Tensor:
        """NLL / (d ln 2)."""
        return self.nll / (self.dof * math.log(2.0))


def _times(t: Tensor, batch: int) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(batch)


def gaussian_kl(mean_sq_dist: Tensor, var_q: Tensor, var_p: Tensor, dof: Tensor) -> Tensor:
    """KL(N(μ_q, v_q I) ‖ N(μ_p, v_p I)) in d dimensions = ½[d(v_q/v_p − 1 − log(v_q/v_p)) + ‖μ_q − μ_p‖²/v_p]."""
    r = var_q / var_p
    return 0.5 * (dof * (r - 1 - torch.log(r)) + mean_sq_dist / var_p)


def gaussian_nll(sq_dist: Tensor, var: Tensor, dof: Tensor) -> Tensor:
    """−log N(x; μ, v I) in d dimensions = ½[‖x − μ‖²/v + d log(2π v)]."""
    return 0.5 * (sq_dist / var + dof * torch.log(2 * math.pi * var))


def _log_prob_between(lo: Tensor, hi: Tensor) -> Tensor:
    """log(Φ(hi) − Φ(lo)) for lo < hi, stable in both tails (reflect to the lower tail when lo > 0)."""
    flip = lo > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    return log_b + torch.log1p(-torch.exp(log_a - log_b).clamp(max=1 - 1e-16))


def discretized_gaussian_nll(x: Tensor, mean: Tensor, var: Tensor, space: Space, num_bins: int = 256,
                             data_range: tuple[float, float] = (-1.0, 1.0)) -> Tensor:
    """−log P(x) for data on ``num_bins`` equally spaced values in ``data_range`` under a discretised Gaussian
    (Ho et al. 2020, eq. 13): P = Φ((x + Δ/2 − μ)/σ) − Φ((x − Δ/2 − μ)/σ), the edge bins extended to ±∞."""
    a, b = data_range
    half = 0.5 * (b - a) / (num_bins - 1)
    x64, mu, sd = x.to(torch.float64), mean.to(torch.float64), var.to(torch.float64).sqrt()
    lo = torch.where(x64 <= a + half / 2, torch.full_like(x64, -math.inf), (x64 - half - mu) / sd)
    hi = torch.where(x64 >= b - half / 2, torch.full_like(x64, math.inf), (x64 + half - mu) / sd)
    return -space.sum_per_sample(_log_prob_between(lo, hi))


def dequantize(x_int: Tensor, num_bins: int = 256, data_range: tuple[float, float] = (-1.0, 1.0),
               generator: torch.Generator | None = None) -> tuple[Tensor, float]:
    """Uniform dequantisation: integer data k ∈ {0..num_bins−1} → a + (b − a)(k + u)/num_bins, u ~ U[0, 1).

    Returns the continuous data and the bin width Δ = (b − a)/num_bins to pass as ``bin_width``.
    """
    if (x_int < 0).any() or (x_int >= num_bins).any():
        raise ValueError(f"integer data must lie in [0, {num_bins - 1}]")
    a, b = data_range
    u = torch.rand(x_int.shape, generator=generator, dtype=torch.float64)
    width = (b - a) / num_bins
    return a + width * (x_int.to(torch.float64) + u), width


def _bin_term(space: Space, bin_width: float | None) -> Tensor:
    if bin_width is None:
        return torch.zeros(space.batch_size, dtype=torch.float64, device=space.device)
    if bin_width <= 0:
        raise ValueError("bin_width must be > 0")
    return -space.dof * math.log(bin_width)


# ==================================================================================================
def _untempered(space: Space, who: str) -> None:
    """ValueError for a space with a noise variance: the prior and posterior terms here assume unit noise."""
    if space.noise_variance is not None:
        raise ValueError(f"{who} assumes unit forward noise; the space is tempered (noise_variance set): "
                         "evaluate x/√T on the untempered space instead")


def elbo(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x0: Tensor, grid: Tensor, *,
         variance: str | Tensor | VarianceFn = "beta_tilde", decoder: Literal["gaussian", "discretized"] = "gaussian",
         num_bins: int = 256, data_range: tuple[float, float] = (-1.0, 1.0), bin_width: float | None = None,
         generator: torch.Generator | None = None) -> LikelihoodResult:
    """Negative ELBO of the reverse chain on ``grid`` (Sohl-Dickstein et al. 2015; Ho et al. 2020, eq. 5):

        −ELBO = KL(q(x_{t_0}|x₀) ‖ p_T) + Σ_i KL(q(x_{t_{i+1}}|x_{t_i}, x₀) ‖ p(x_{t_{i+1}}|x_{t_i})) − log p(x₀|x_{t'})

    Each KL uses one draw x_t ~ q(x_t|x₀); the Gaussian posterior q(x_s|x_t,x₀) has mean
    α_s β_{t|s}/σ_t² x₀ + α_{t|s} σ_s²/σ_t² x_t and variance β̃_{t|s}; the model replaces x₀ by x̂₀. Reverse
    variances: β_{t|s}, β̃_{t|s}, a table of K variances (the last entry is the decoder's), or a callable
    (x_t, t, s, ε̂) → per-element variances (SN/NPR-DPM), for which each KL is summed element by element over
    the valid elements (for a zero-CoM part that is all coordinates, an approximation: the subspace has no
    per-coordinate basis).
    When the grid ends at σ = 0 the last step is the decoder (with β̃, whose last value is 0, the decoder
    takes the previous step's β̃, as Ho et al.'s clipped log-variance). When it ends at σ(t_min) > 0, a decoder
    N(x̂₀(x_{t_min}), σ²/α²) is appended (one extra NFE). ``discretized`` uses Ho et al.'s 8-bit decoder.
    """
    _untempered(space, "elbo")
    space.check(x0, name="x0")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 contains NaN or inf")
    check_grid(schedule, grid)
    x0 = space.project(x0.to(torch.float64))
    steps = grid.numel() - 1
    variance_at = reverse_variance(schedule, variance, steps)
    if isinstance(variance, Tensor) and (variance <= 0).any():
        raise ValueError("variance table must be finite and positive")
    if decoder not in ("gaussian", "discretized"):
        raise ValueError(f"unknown decoder {decoder!r}; expected 'gaussian' or 'discretized'")
    dof, b = space.dof, space.batch_size
    x0_sq = space.sum_per_sample(x0 * x0)

    # prior term
    t0 = grid[0]
    p2 = schedule.prior_std**2
    prior = gaussian_kl(schedule.alpha_sq(t0) * x0_sq, schedule.sigma_sq(t0), torch.tensor(p2, dtype=torch.float64), dof)

    def draw(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x_t, _ = forward_noise(schedule, space, x0, t, generator=generator)  # x0 is float64 here
        with torch.no_grad():
            eps = eps_fn(x_t, _times(t, b)).to(torch.float64)
        return x_t, eps, predict_x0(eps, x_t, schedule.alpha(t), schedule.sigma(t))

    diffusion = torch.zeros(b, dtype=torch.float64, device=space.device)
    ends_at_data = float(schedule.sigma_sq(grid[-1])) == 0.0
    kl_steps = steps - 1 if ends_at_data else steps
    for i in range(kl_steps):
        t, s = grid[i], grid[i + 1]
        x_t, eps, x0_hat = draw(t)
        coef = schedule.alpha(s) * schedule.skip_beta(s, t) / schedule.sigma_sq(t)
        var_q, var_p = schedule.posterior_variance(s, t), variance_at(i, x_t, t, s, eps)
        if var_p.dim() == 0:
            d2 = coef**2 * space.sum_per_sample((x0 - x0_hat) ** 2)
            diffusion = diffusion + gaussian_kl(d2, var_q, var_p, dof)
        else:  # per-element reverse variances
            r = var_q / var_p
            diffusion = diffusion + 0.5 * space.sum_per_sample(r - 1 - torch.log(r) + coef**2 * (x0 - x0_hat) ** 2 / var_p)

    # decoder
    if ends_at_data:
        t_dec, s_dec = grid[-2], grid[-1]
        x_t, eps, x0_hat = draw(t_dec)
        # β̃ into σ = 0 is 0: take the previous step's β̃ (or β when K = 1)
        if isinstance(variance, str) and variance == "beta_tilde":
            var = schedule.posterior_variance(grid[-2], grid[-3]) if steps >= 2 else schedule.skip_beta(s_dec, t_dec)
        else:
            var = variance_at(steps - 1, x_t, t_dec, s_dec, eps)
        mean = schedule.alpha(s_dec) * x0_hat
    else:
        t_dec = grid[-1]
        _, _, x0_hat = draw(t_dec)
        var = schedule.sigma_sq(t_dec) / schedule.alpha_sq(t_dec)
        mean = x0_hat
    if (var <= 0).any():
        raise ValueError("the decoder variance must be positive")
    if decoder == "discretized":
        dec = discretized_gaussian_nll(x0, mean, var, space, num_bins, data_range)
    elif var.dim() == 0:
        dec = gaussian_nll(space.sum_per_sample((x0 - mean) ** 2), var, dof)
    else:
        dec = 0.5 * space.sum_per_sample((x0 - mean) ** 2 / var + torch.log(2 * math.pi * var))
    nll = prior + diffusion + dec + _bin_term(space, bin_width)
    return LikelihoodResult(nll, dof, {"prior": prior, "diffusion": diffusion, "decoder": dec})


# ==================================================================================================
def ode_log_likelihood(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x0: Tensor, *,
                       trace: Literal["exact", "hutchinson"] = "hutchinson",
                       probe: Literal["rademacher", "gaussian"] = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                       bin_width: float | None = None, generator: torch.Generator | None = None) -> LikelihoodResult:
    """Probability-flow-ODE negative log-likelihood at the data end (Song et al. 2021, App. D.2; Chen et al. 2018):

    in y = x/α, ς = σ/α the ODE is dy/dς = ε̂(αy, t(ς)), so
        log p_x(x₀) = log p_y(y(ς_T)) + ∫_{ς_min}^{ς_T} div_y ε̂ dς − d log α(t_min),   p_y(y_T) = N(0, (p_T/α_T)² I)·,
    integrated with RK45 in float64 from the data to ς_T. The divergence is exact (Σ_i e_iᵀ J P e_i over all
    coordinates, one vector-Jacobian product each; for small d) or Hutchinson's zᵀ J z (Hutchinson 1989;
    Grathwohl et al. 2019) with one fixed probe z per sample (Rademacher or Gaussian, projected on the space,
    so its covariance is the space's projector P and E zᵀJz = tr(JP)).
    """
    _untempered(space, "ode_log_likelihood")
    from scipy.integrate import solve_ivp

    space.check(x0, name="x0")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 contains NaN or inf")
    if trace not in ("exact", "hutchinson") or probe not in ("rademacher", "gaussian"):
        raise ValueError(f"unknown trace/probe {trace!r}/{probe!r}")
    shape, b, dof = x0.shape, space.batch_size, space.dof
    if probe == "gaussian":
        z = space.noise(generator=generator, dtype=torch.float64)
    else:
        z = space.project(torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1)

    def eps_of_y(y: Tensor, vs: float) -> tuple[Tensor, Tensor]:
        t = schedule.time_at_varsigma(vs)
        return eps_fn(space.project(y * schedule.alpha(t)), _times(t, b)).to(torch.float64), t

    def divergence(y: Tensor, vs: float) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            eps, _ = eps_of_y(y, vs)
            eps = space.project_tangent(eps)
            if trace == "hutchinson":
                (vjp,) = torch.autograd.grad(eps, y, z)
                return eps.detach(), space.sum_per_sample(vjp * z)
            div = torch.zeros(b, dtype=torch.float64)
            for e in _coordinate_rounds(space):  # one coordinate of every sample per round
                (vjp,) = torch.autograd.grad(eps, y, e, retain_graph=True)
                div = div + space.sum_per_sample(vjp * space.project(e))
            return eps.detach(), div

    valid = space.valid_mask()  # only real entries enter the solver (padding would change its error norm)
    n_el = int(valid.sum())

    def unpack(flat: np.ndarray) -> Tensor:
        out = torch.zeros(shape, dtype=torch.float64)
        out[valid] = torch.from_numpy(flat)
        return out

    def rhs(vs: float, state: np.ndarray) -> np.ndarray:
        eps, div = divergence(unpack(state[:n_el]), vs)
        return np.concatenate([eps[valid].numpy(), div.numpy()])

    t_lo, t_hi = schedule.t_min, schedule.t_max
    vs_lo, vs_hi = float(schedule.varsigma(t_lo)), float(schedule.varsigma(t_hi))
    a_lo = schedule.alpha(torch.tensor(t_lo, dtype=torch.float64))
    y0 = space.project(x0.to(torch.float64)) / a_lo
    state0 = np.concatenate([y0[valid].numpy(), np.zeros(b)])
    sol = solve_ivp(rhs, (vs_lo, vs_hi), state0, method="RK45", rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"RK45 failed: {sol.message}")
    y_t = unpack(sol.y[:n_el, -1])
    integral = torch.from_numpy(sol.y[n_el:, -1])
    prior_var_y = schedule.prior_std**2 / float(schedule.alpha_sq(torch.tensor(t_hi, dtype=torch.float64)))
    log_prior = -0.5 * (space.sum_per_sample(y_t * y_t) / prior_var_y + dof * math.log(2 * math.pi * prior_var_y))
    log_px = log_prior + integral - dof * torch.log(a_lo)
    nll = -log_px + _bin_term(space, bin_width)
    return LikelihoodResult(nll, dof, {"prior": -log_prior, "divergence_integral": integral, "nfe": torch.tensor(sol.nfev)})


def _coordinate_rounds(space: Space) -> list[Tensor]:
    """One-hot tensors e_r (r = 0, 1, …) holding the r-th coordinate of every sample at once.

    Samples are independent, so Σ_r e_rᵀ J P e_r gives every sample's tr(JP) with as many vector-Jacobian
    products as the largest sample has coordinates.
    """
    owner = space.element_owner().reshape(-1).cpu()
    key = torch.where(owner >= 0, owner, space.batch_size)  # padding sorts last
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    rank = torch.empty_like(owner)
    rank[order] = torch.arange(owner.numel()) - torch.searchsorted(sorted_key, sorted_key)
    rank[owner < 0] = -1
    valid = owner >= 0
    rounds = []
    for r in range(int(rank.max()) + 1 if valid.any() else 0):
        rounds.append((rank == r).to(torch.float64).reshape(space.shape).to(space.device))
    return rounds
