"""Multistep exponential integrators with data prediction: DPM-Solver++(2M/3M) and UniPC (bh1/bh2, orders 1–3).

All solve the probability-flow ODE in its exact exponential-integrator form (Lu et al. 2022b, eq. 9): with
λ = log(α/σ) (half the log-SNR), h = λ_t − λ_s > 0 for a step s → t towards the data and x̂₀ = D(x, s),

    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^{λ} D(λ) dλ,

and differ in the polynomial that replaces D(λ) on the step: built from the previous x̂₀'s (multistep: one
network evaluation per step), or, for UniPC's corrector, also from the x̂₀ at the step's end, which the next step
needs anyway (no extra evaluation). Differences of x̂₀'s go through ``Space.difference`` (wrap-safe on the torus).

A step into σ = 0 (λ = +∞, a discrete schedule's data end) has the exact form x_t = α_t D(λ = ∞): the x̂₀ at the
data end, which no polynomial in λ reaches. It is extrapolated instead in τ = ς² = σ²/α² (the variance-exploding
time, in which the probability-flow trajectory y = x/α and D along it are smooth down to τ = 0): a Lagrange
polynomial through the last p x̂₀'s at their τ's, evaluated at τ = 0 (p = 1: x_t = α_t x̂₀, DDIM's last step).
``lower_order_final`` (with K < 15 steps, as in Lu et al. 2022b, App. D) uses p = 1 on the last step and at most
p = 2 on the one before it; without it every step uses the full order its history allows.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .objectives import EpsFn, predict_x0
from .sampler_base import SamplerOutput, StepCallback, X0Threshold, _CountedEps, _prepare, x0_threshold
from .schedules import NoiseSchedule
from .spaces import Space

#: Below this many steps ``lower_order_final`` lowers the order of the last steps (Lu et al. 2022b, App. D).
LOWER_ORDER_FINAL_BELOW = 15


def _step_order(order: int, i: int, steps: int, lower_order_final: bool) -> int:
    """The order usable at step i: limited by the history (i + 1 x̂₀'s) and, with ``lower_order_final`` and K < 15,
    to 1 on the last step and 2 on the one before."""
    p = min(order, i + 1)
    if lower_order_final and steps < LOWER_ORDER_FINAL_BELOW:
        p = min(p, steps - i)
    return p


def _combine(space: Space, base: Tensor, terms: list[tuple[float, Tensor]]) -> Tensor:
    """base + Σ c_k (a_k − base) for (c_k, a_k) in ``terms``, differences through ``Space.difference``."""
    out = base
    for c, a in terms:
        out = out + float(c) * space.difference(a, base)
    return out


def data_end_extrapolation(space: Space, x0s: list[Tensor], taus: list[float]) -> Tensor:
    """D(τ = 0) from the Lagrange polynomial through (τ_k, x̂₀_k), most recent first (τ = ς² = σ²/α²):

        D(0) = Σ_k w_k x̂₀_k,   w_k = Π_{j≠k} τ_j/(τ_j − τ_k),   written as x̂₀_0 + Σ_{k≥1} w_k (x̂₀_k − x̂₀_0).
    """
    weights = []
    for k in range(len(taus)):
        w = 1.0
        for j in range(len(taus)):
            if j != k:
                w *= taus[j] / (taus[j] - taus[k])
        weights.append(w)
    return _combine(space, x0s[0], list(zip(weights[1:], x0s[1:])))


def _run_multistep(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor, order: int,
                   lower_order_final: bool, callback: StepCallback | None, update: Callable[..., Tensor],
                   corrector: Callable[..., Tensor] | None = None,
                   threshold: X0Threshold | None = None) -> SamplerOutput:
    """The loop shared by the multistep solvers: one evaluation per step, a history of (λ, τ, x̂₀), the step into
    σ = 0 by ``data_end_extrapolation``. ``update(x, x0s, lams, lam_t, a_t, sig_t, sig_s)`` is the step's predictor
    (x̂₀'s and λ's most recent first, as many as the step's order); ``corrector(x0_t, *the previous update's
    arguments)`` (UniPC) corrects the previous step's result with the new x̂₀. ``threshold`` corrects every x̂₀
    as it is formed (before predictor and corrector see it; Lu et al. 2022b, Alg. 2 with thresholding)."""
    x = _prepare(schedule, space, x, grid)
    eps_fn = _CountedEps(eps_fn, space)
    steps = grid.numel() - 1
    alphas, sigmas = schedule.alpha(grid), schedule.sigma(grid)  # float64 tables, computed once
    lams = (alphas.log() - sigmas.log()).tolist()  # λ = log(α/σ); +inf at σ = 0
    taus = (sigmas / alphas).square().tolist()
    x0s: list[Tensor] = []
    prev: tuple | None = None  # what the corrector needs from the previous step
    for i in range(steps):
        t, s = grid[i], grid[i + 1]
        x0 = predict_x0(eps_fn(x, t), x, float(alphas[i]), float(sigmas[i]))
        if threshold is not None:
            x0 = threshold(x0)
        if corrector is not None and prev is not None:
            x = space.project(corrector(x0, *prev))
        x0s = [x0] + x0s[: order]
        p = _step_order(order, i, steps, lower_order_final)
        if float(sigmas[i + 1]) == 0.0:
            d0 = data_end_extrapolation(space, x0s[:p], taus[i::-1][:p])
            x_new = float(alphas[i + 1]) * d0
            prev = None
        else:
            coefs = (lams[i + 1], float(alphas[i + 1]), float(sigmas[i + 1]), float(sigmas[i]))
            x_new = update(x, x0s[:p], lams[i::-1][:p], *coefs)
            prev = (x, x0s[:p], lams[i::-1][:p], *coefs)
        x = space.project(x_new)
        eps_fn.step(callback, i, steps, t, s, x, x0)
    return eps_fn.output(x)


# ==================================================================================================
# DPM-Solver++(2M/3M)
# ==================================================================================================
def _dpmpp_update(space: Space, x: Tensor, x0s: list[Tensor], lams: list[float], lam_t: float, a_t: float,
                  sig_t: float, sig_s: float) -> Tensor:
    """One DPM-Solver++ multistep step of order len(x0s) ∈ {1, 2, 3} (Lu et al. 2022b, Alg. 2 and App. B):

        x_t = (σ_t/σ_s) x − α_t φ₁ D₀ + α_t φ₂ D₁ − α_t φ₃ D₂,
        φ₁ = e^{−h} − 1,  φ₂ = φ₁/h + 1,  φ₃ = φ₂/h − ½,

    with r_k = (λ_{s_{k−1}} − λ_{s_k})/h and the divided differences D₁⁽⁰⁾ = (x̂₀⁽⁰⁾ − x̂₀⁽¹⁾)/r₀,
    D₁⁽¹⁾ = (x̂₀⁽¹⁾ − x̂₀⁽²⁾)/r₁; order 2 is DPM-Solver++(2M), x_t = (σ_t/σ_s) x − α_t φ₁ (x̂₀⁽⁰⁾ + D₁⁽⁰⁾/2); order 3
    D₁ = D₁⁽⁰⁾ + r₀/(r₀ + r₁)(D₁⁽⁰⁾ − D₁⁽¹⁾), D₂ = (D₁⁽⁰⁾ − D₁⁽¹⁾)/(r₀ + r₁).
    """
    h = lam_t - lams[0]
    phi1 = math.expm1(-h)
    out = (sig_t / sig_s) * x
    p = len(x0s)
    if p == 1:
        return out - (a_t * phi1) * x0s[0]
    r0 = (lams[0] - lams[1]) / h
    if p == 2:  # 2M: D = x̂₀ + (x̂₀ − x̂₀')/(2 r₀)
        return out - (a_t * phi1) * _combine(space, x0s[0], [(-1 / (2 * r0), x0s[1])])
    r1 = (lams[1] - lams[2]) / h
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    # D₁⁽⁰⁾, D₁⁽¹⁾, D₁, D₂ as coefficients on (x̂₀⁽¹⁾ − x̂₀⁽⁰⁾, x̂₀⁽²⁾ − x̂₀⁽⁰⁾)
    d10 = (-1 / r0, 0.0)
    d11 = (1 / r1, -1 / r1)
    diff = (d10[0] - d11[0], d10[1] - d11[1])
    d1 = [d10[k] + r0 / (r0 + r1) * diff[k] for k in range(2)]
    d2 = [diff[k] / (r0 + r1) for k in range(2)]
    c = [phi2 * d1[k] - phi3 * d2[k] for k in range(2)]
    return out - (a_t * phi1) * x0s[0] \
        + a_t * sum(c[k] * space.difference(x0s[k + 1], x0s[0]) for k in range(2))


def dpm_solver_pp(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor, *, order: int = 3,
                  lower_order_final: bool = True, clip_x0: tuple[float, float] | None = None,
                  dynamic_threshold: float | None = None, callback: StepCallback | None = None) -> SamplerOutput:
    """DPM-Solver++(kM), k = ``order`` ∈ {1, 2, 3} (Lu et al. 2022b): the multistep data-prediction exponential
    integrator of global order k (``_dpmpp_update`` has the step), one network evaluation per step; the first
    steps use the orders their history allows, the step into σ = 0 the τ-extrapolation of the module docstring.
    ``clip_x0`` / ``dynamic_threshold``: every x̂₀ thresholded (``sampler_base.x0_threshold``; Lu et al. 2022b,
    Alg. 2 with thresholding)."""
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
    threshold = x0_threshold(clip_x0, dynamic_threshold)

    def update(x: Tensor, x0s: list[Tensor], lams: list[float], lam_t: float, a_t: float, sig_t: float,
               sig_s: float) -> Tensor:
        return _dpmpp_update(space, x, x0s, lams, lam_t, a_t, sig_t, sig_s)

    return _run_multistep(eps_fn, schedule, space, x, grid, order, lower_order_final, callback, update,
                          threshold=threshold)


def dpm_solver_pp_3m(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor, *,
                     lower_order_final: bool = True, clip_x0: tuple[float, float] | None = None,
                     dynamic_threshold: float | None = None, callback: StepCallback | None = None) -> SamplerOutput:
    """DPM-Solver++(3M) (Lu et al. 2022b, App. B): ``dpm_solver_pp`` with order 3."""
    return dpm_solver_pp(eps_fn, schedule, space, x, grid, order=3, lower_order_final=lower_order_final,
                         clip_x0=clip_x0, dynamic_threshold=dynamic_threshold, callback=callback)


# ==================================================================================================
# UniPC (Zhao et al. 2023)
# ==================================================================================================
def unipc_coefficients(h: float, rks: list[float], variant: str) -> tuple[float, list[float]]:
    """B(h) and the right-hand side b of UniPC's order conditions (Zhao et al. 2023, Thm. 3.1 / Alg. 2, data
    prediction): with hh = −h, φ_{k+1}(hh) from φ₁ = (e^{hh} − 1)/hh, φ_{k+1} = (φ_k − 1/k!)/hh,

        b_k = k! φ_{k+1}(hh) · hh / B(h),  k = 1 … p,    B(h) = hh (bh1) or e^{hh} − 1 (bh2),

    to be solved against R_{kj} = r_j^{k−1} for the ρ's. Returns (B(h), b)."""
    hh = -h
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    h_phi_k = math.expm1(hh) / hh - 1  # = hh φ₂(hh)
    factorial, b = 1.0, []
    for k in range(1, len(rks) + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return b_h, b


def _unipc_step(space: Space, x: Tensor, x0s: list[Tensor], lams: list[float], lam_t: float, a_t: float,
                sig_t: float, sig_s: float, variant: str, x0_t: Tensor | None) -> Tensor:
    """UniP-p (``x0_t`` None) or UniC-p (with the x̂₀ at the step's end) for p = len(x0s) (Zhao et al. 2023, Alg. 1–2):

        x_t = (σ_t/σ_s) x − α_t (e^{−h} − 1) x̂₀⁽⁰⁾ − α_t B(h) Σ_k ρ_k D_k,   D_k = (x̂₀⁽ᵏ⁾ − x̂₀⁽⁰⁾)/r_k,

    r_k = (λ_{s_k} − λ_s)/h for the earlier points (and r = 1, D = x̂₀_t − x̂₀⁽⁰⁾ for the corrector's new point);
    the predictor's ρ solve R ρ = b on the earlier points (ρ = ½ for p = 2), the corrector's on all of them
    (ρ = ½ for p = 1)."""
    h = lam_t - lams[0]
    base = (sig_t / sig_s) * x - (a_t * math.expm1(-h)) * x0s[0]
    p = len(x0s)
    rks = [(lams[k] - lams[0]) / h for k in range(1, p)]
    if x0_t is None:
        if p == 1:
            return base
        b_h, b = unipc_coefficients(h, rks + [1.0], variant)
        if p == 2:
            rhos = [0.5]
        else:
            rhos = np.linalg.solve(np.array([[r**k for r in rks] for k in range(p - 1)]), np.array(b[: p - 1])).tolist()
        terms = [(rhos[k] / rks[k], x0s[k + 1]) for k in range(p - 1)]
    else:
        b_h, b = unipc_coefficients(h, rks + [1.0], variant)
        if p == 1:
            rhos = [0.5]
        else:
            rhos = np.linalg.solve(np.array([[r**k for r in rks + [1.0]] for k in range(p)]), np.array(b)).tolist()
        terms = [(rhos[k] / rks[k], x0s[k + 1]) for k in range(p - 1)] + [(rhos[-1], x0_t)]
    corr = sum(c * space.difference(a, x0s[0]) for c, a in terms)
    return base - (a_t * b_h) * corr


def unipc(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor, *, order: int = 2,
          variant: str = "bh2", corrector: bool = True, lower_order_final: bool = True,
          clip_x0: tuple[float, float] | None = None, dynamic_threshold: float | None = None,
          callback: StepCallback | None = None) -> SamplerOutput:
    """UniPC (Zhao et al. 2023): the unified predictor–corrector. Each step predicts with UniP-p (p = ``order`` ∈
    {1, 2, 3}, limited by the history) and, once the next x̂₀ is evaluated (the next step's evaluation: no extra
    NFE), corrects the predicted state with UniC-p, which raises the order by one (Zhao et al. 2023, Thm. 3.3:
    UniPC-p converges with order p + 1). ``variant`` picks B(h): ``bh1`` = h, ``bh2`` = e^h − 1 (the paper's
    choices for few and for more steps). The last step (no evaluation after it) is not corrected, and a step
    into σ = 0 uses the τ-extrapolation of the module docstring. NFE = K. ``clip_x0`` / ``dynamic_threshold``:
    every x̂₀ thresholded before predictor and corrector use it (``sampler_base.x0_threshold``).
    """
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
    unipc_coefficients(1.0, [1.0], variant)  # validates the variant before any evaluation
    threshold = x0_threshold(clip_x0, dynamic_threshold)

    def update(x: Tensor, x0s: list[Tensor], lams: list[float], lam_t: float, a_t: float, sig_t: float,
               sig_s: float) -> Tensor:
        return _unipc_step(space, x, x0s, lams, lam_t, a_t, sig_t, sig_s, variant, None)

    def correct(x0_t: Tensor, x: Tensor, x0s: list[Tensor], lams: list[float], lam_t: float, a_t: float,
                sig_t: float, sig_s: float) -> Tensor:
        return _unipc_step(space, x, x0s, lams, lam_t, a_t, sig_t, sig_s, variant, x0_t)

    return _run_multistep(eps_fn, schedule, space, x, grid, order, lower_order_final, callback, update,
                          correct if corrector else None, threshold=threshold)
