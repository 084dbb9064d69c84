"""Parameterisations (ε, x₀, v, score), their exact conversions, and denoising score-matching losses.

With x_t = α x₀ + σ ε (α = α(t), σ = σ(t)):

- ε-prediction (Ho et al. 2020), x₀-prediction, score s = ∇log q_t = −ε/σ (Song et al. 2021),
- v-prediction (Salimans & Ho 2022) v = α ε − σ x₀; for any α, σ the pair (x₀, ε) is recovered from
  (x_t, v) by inverting [[α, σ], [−σ, α]]: x₀ = (α x_t − σ v)/(α² + σ²), ε = (σ x_t + α v)/(α² + σ²).

Every loss is written in ε-space as w(t) ‖ε − ε̂‖²/d per sample, whatever the network predicts, so a
weighting means the same objective for every parameterisation. Weightings: ``simple`` (w = 1, Ho et al.),
``likelihood`` (w = −dλ/dt = g²/σ², which makes the loss the continuous-time ELBO up to constants; Song et
al. 2021, Kingma et al. 2021) and ``min_snr`` (w = min(SNR, γ)/SNR, Hang et al. 2023).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from .schedules import NoiseSchedule
from .spaces import Space

Parameterization = Literal["eps", "x0", "v", "score"]
PARAMETERIZATIONS = ("eps", "x0", "v", "score")
Weighting = Literal["simple", "likelihood", "min_snr"]
WEIGHTINGS = ("simple", "likelihood", "min_snr")
EpsFn = Callable[[Tensor, Tensor], Tensor]


def _check_param(name: str) -> None:
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {name!r}; expected one of {PARAMETERIZATIONS}")


def to_eps(pred: Tensor, parameterization: str, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Convert a prediction to ε̂: ε = (x_t − α x₀)/σ, ε = −σ s, ε = (σ x_t + α v)/(α² + σ²).

    ``alpha`` and ``sigma`` must already broadcast against x_t (use ``Space.broadcast``).
    """
    _check_param(parameterization)
    if parameterization == "eps":
        return pred
    if parameterization == "x0":
        return (x_t - alpha * pred) / sigma
    if parameterization == "score":
        return -sigma * pred
    return (sigma * x_t + alpha * pred) / (alpha * alpha + sigma * sigma)


def from_eps(eps: Tensor, parameterization: str, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Convert ε to the target of a parameterisation: x₀ = (x_t − σε)/α, s = −ε/σ, v = αε − σx₀."""
    _check_param(parameterization)
    if parameterization == "eps":
        return eps
    x0 = (x_t - sigma * eps) / alpha
    if parameterization == "x0":
        return x0
    if parameterization == "score":
        return -eps / sigma
    return alpha * eps - sigma * x0


def predict_x0(eps: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """x̂₀ = (x_t − σ ε̂)/α."""
    return (x_t - sigma * eps) / alpha


def coefficients(schedule: NoiseSchedule, space: Space, t: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """α(t), σ(t) for per-sample times t [B], broadcast to the space and cast to ``dtype``."""
    t = torch.as_tensor(t, dtype=torch.float64, device=space.device).reshape(-1).expand(space.batch_size)
    return (space.broadcast(schedule.alpha(t)).to(dtype), space.broadcast(schedule.sigma(t)).to(dtype))


def eps_predictor(model: Callable[..., Tensor], schedule: NoiseSchedule, space: Space,
                  parameterization: str = "eps", **condition: Any) -> EpsFn:
    """Wrap a network ``model(x_t, t, **condition)`` (predicting ``parameterization``) as an ε-predictor.

    The returned callable takes (x [state], t [B] float64) and returns ε̂ in x's dtype, projected as a velocity
    (``Space.project_tangent``: padding and centre of mass removed, never wrapped on the torus); samplers,
    guidance wrappers, variance estimators and likelihoods all consume this form.
    """
    _check_param(parameterization)

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1).expand(space.batch_size)
        out = model(x, t, **condition)
        space.check(out, name="model output")
        if parameterization == "eps":  # no coefficients needed (and none computed: they cost a host read each)
            return space.project_tangent(out).to(x.dtype)
        alpha, sigma = coefficients(schedule, space, t, out.dtype)
        return space.project_tangent(to_eps(out, parameterization, x, alpha, sigma)).to(x.dtype)

    return eps_fn


def forward_noise(schedule: NoiseSchedule, space: Space, x0: Tensor, t: Tensor, eps: Tensor | None = None, *,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The forward (noising) process q(x_t | x₀), the one place it is written:

        x_t = space.project(α_t x₀ + σ_t ε),   ε ~ space.noise()  (Ho et al. 2020, eq. 4; Song et al. 2021),

    so padding stays zero, centres of mass stay at zero and angles are wrapped onto the torus; on a tempered space
    (``Space.with_noise_variance``) ε ~ N(0, v I) per sample, which relaxes x_t to N(0, v I) (Herron et al. 2024). ``t`` is a scalar
    or per-sample [B] (float64, the schedule's units); ``eps`` is drawn from the space's own noise when not given.
    Returns (x_t, ε) in x₀'s dtype. The regression target that belongs to x_t is ``space.eps_target``.
    """
    space.check(x0, name="x0")
    if eps is None:
        eps = space.noise(generator=generator, dtype=x0.dtype)
    else:
        space.check(eps, name="eps")
    alpha, sigma = coefficients(schedule, space, t, x0.dtype)
    return space.project(alpha * x0 + sigma * eps), eps


# ==================================================================================================
# Weightings and time sampling
# ==================================================================================================
def loss_weight(schedule: NoiseSchedule, t: Tensor, weighting: str = "simple", min_snr_gamma: float = 5.0) -> Tensor:
    """w(t) for the ε-MSE: 1 (simple), −dλ/dt = g²/σ² (likelihood), min(SNR, γ)/SNR (min-SNR-γ)."""
    if weighting == "simple":
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))
    if weighting == "likelihood":
        return schedule.snr_derivative_weight(t)
    if weighting == "min_snr":
        snr = torch.exp(schedule.log_snr(t))
        return torch.clamp(snr, max=min_snr_gamma) / snr
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")


def sample_times(schedule: NoiseSchedule, n: int, *, importance: str | None = None, min_snr_gamma: float = 5.0,
                 generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                 grid_size: int = 4096) -> tuple[Tensor, Tensor]:
    """Draw training times and their importance corrections.

    Uniform (``importance=None``): discrete n ~ U{1..N}, continuous t ~ U[t_min, t_max], correction 1.
    Importance-sampled (``importance`` = a weighting name): t ~ p(t) ∝ w(t) (tabulated: every integer for a
    discrete schedule, a ``grid_size`` midpoint grid otherwise) with correction c(t) = w(t)/(p(t)·|T|) where
    |T| is N or t_max − t_min, so that E_p[c(t) ℓ(t)] = E_U[w(t) ℓ(t)]: the same objective, lower variance.
    Returns (t float64 [n], c float64 [n]) on ``device``; the per-sample loss term is c(t)·ℓ(t) (w is already in
    c). The draws are made on the generator's device (the CPU without one), so one CUDA generator can seed both
    the times and the noise of a loss on the GPU.
    """
    if n < 1:
        raise ValueError("number of times must be >= 1")
    if schedule.num_steps is not None:
        support = torch.arange(1, schedule.num_steps + 1, dtype=torch.float64)
        width = 1.0
    else:
        width = (schedule.t_max - schedule.t_min) / grid_size
        support = schedule.t_min + width * (torch.arange(grid_size, dtype=torch.float64) + 0.5)
    gen_device = generator.device if generator is not None else torch.device("cpu")  # draws where the generator is
    support = support.to(gen_device)
    if importance is None:
        if schedule.num_steps is not None:
            idx = torch.randint(0, schedule.num_steps, (n,), generator=generator, device=gen_device)
            t = support[idx]
        else:
            u = torch.rand(n, dtype=torch.float64, generator=generator, device=gen_device)
            t = schedule.t_min + u * (schedule.t_max - schedule.t_min)
        return t.to(device), torch.ones(n, dtype=torch.float64, device=device)
    w = loss_weight(schedule, support, importance, min_snr_gamma)
    if not torch.isfinite(w).all() or (w <= 0).any():
        raise ValueError(f"weighting {importance!r} is not positive and finite on the schedule's time range")
    pmf = w / w.sum()
    idx = torch.multinomial(pmf, n, replacement=True, generator=generator)
    t = support[idx]
    if schedule.num_steps is None:  # jitter inside the grid cell: piecewise-constant density
        t = t + (torch.rand(n, dtype=torch.float64, generator=generator, device=gen_device) - 0.5) * width
        t = t.clamp(schedule.t_min, schedule.t_max)
    # density p(t) = pmf/width and |T| = len(support)·width, so c = w/(p·|T|) = w/(pmf·len(support)).
    correction = w[idx] / (pmf[idx] * support.numel())
    return t.to(device), correction.to(device)


@dataclass
class LossOutput:
    """A denoising loss: the batch mean ``loss``, the per-sample terms and the times used."""

    loss: Tensor
    per_sample: Tensor
    t: Tensor


def denoising_loss(model: Callable[..., Tensor], schedule: NoiseSchedule, space: Space, x0: Tensor, *,
                   parameterization: str = "eps", weighting: str = "simple", importance_sampling: bool = False,
                   min_snr_gamma: float = 5.0, generator: torch.Generator | None = None,
                   **condition: Any) -> LossOutput:
    """Denoising score matching (Vincent 2011; Ho et al. 2020; Song et al. 2021) through the space:

        L = E_t E_ε [ w(t) ‖ε* − ε̂(x_t, t)‖² / d ],   x_t = forward_noise(x₀, t, ε),  ε ~ space.noise(),

    with ε* = ``space.eps_target`` (ε itself in linear spaces; −σ_t ∇log p_WN(x_t | x₀) on the torus, where the
    noising wraps) and w from ``loss_weight``; t uniform, or importance-sampled ∝ w(t) with the matching correction.
    On a space with a noise variance v (a thermodynamic map, ``Space.with_temperature``) the network predicts the
    noise as drawn, √v ε (so for a quadratic energy its exact ε is the same function at every T), and the loss is
    taken in unit ε, ‖ε* − ε̂/√v‖²/d with ε* computed at noise scale σ_t √v, so that w(t) weighs every T alike.
    """
    space.check(x0, name="x0")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 contains NaN or inf")
    x0 = space.project(x0)
    t, corr = sample_times(schedule, space.batch_size, importance=weighting if importance_sampling else None,
                           min_snr_gamma=min_snr_gamma, generator=generator, device=space.device)
    x_t, eps = forward_noise(schedule, space, x0, t, generator=generator)
    alpha, sigma = coefficients(schedule, space, t, x0.dtype)
    std = space.noise_std(x0.dtype)  # √v: the noise is σ_t √v ε with unit ε (1 unless the space is tempered)
    target = space.eps_target(x0, x_t, eps / std, alpha, sigma * std)
    eps_hat = eps_predictor(model, schedule, space, parameterization, **condition)(x_t, t)
    mse = space.mean_square_per_sample(target - eps_hat / std)
    w = corr if importance_sampling else loss_weight(schedule, t, weighting, min_snr_gamma)
    per_sample = w.to(mse.dtype) * mse
    return LossOutput(per_sample.mean(), per_sample, t)
