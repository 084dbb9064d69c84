"""Stateless samplers for the reverse process, each next to its equation.

Every sampler has the form ``sampler(eps_fn, schedule, space, x_T, grid, ...) -> SamplerOutput`` where
``eps_fn(x, t)`` is an ε-predictor (a wrapped network, a guidance wrapper, or the oracle), ``grid`` is an
explicit decreasing time grid from ``time_grid`` ending exactly at the data end, and the output carries the
sample and the number of network evaluations (NFE). Guidance never lives here: it wraps ``eps_fn``.
Every sampler takes ``callback(SamplerStep)``, called once after each sampler step (k-diffusion's habit), which
``sciddpm.progress.sampling_progress`` turns into a progress bar.

Notation: α_t, σ_t from the schedule; λ_t = log(α_t²/σ_t²); skip coefficients α_{t|s}, β_{t|s} (s < t);
x̂₀ = (x_t − σ_t ε̂)/α_t.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .grids import GridKind, check_grid, time_grid  # noqa: F401  (re-exported)
from .multistep import dpm_solver_pp, dpm_solver_pp_3m, unipc  # noqa: F401  (re-exported)
from .objectives import EpsFn, predict_x0
from .sampler_base import (SamplerOutput, SamplerStep, StepCallback, _coef, _CountedEps, _prepare,  # noqa: F401
                           _report, prior_sample, x0_threshold)
from .schedules import NoiseSchedule
from .spaces import Space


# ==================================================================================================
# Ancestral samplers
# ==================================================================================================
def ddpm(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor, *,
         variance: str | Tensor | VarianceFn = "beta_tilde", generator: torch.Generator | None = None,
         clip_x0: tuple[float, float] | None = None, dynamic_threshold: float | None = None,
         callback: StepCallback | None = None) -> SamplerOutput:
    """Ancestral sampling (Ho et al. 2020, Alg. 2) on any grid, via the posterior q(x_s | x_t, x̂₀):

        μ = α_s β_{t|s}/σ_t² · x̂₀ + α_{t|s} σ_s²/σ_t² · x_t,   x_s = μ + v^{1/2} z,

    with v = β̃_{t|s} = σ_s² β_{t|s}/σ_t² (``beta_tilde``), v = β_{t|s} (``beta``), a supplied table
    of K per-step variances (e.g. Analytic-DPM's), or a callable (x_t, t, s, ε̂) → per-element variances
    (SN/NPR-DPM's diagonal covariances). No noise is added on a step into σ_s = 0. ``clip_x0`` /
    ``dynamic_threshold``: static or dynamic thresholding of x̂₀ (``x0_threshold``).
    """
    threshold = x0_threshold(clip_x0, dynamic_threshold)
    x = _prepare(schedule, space, x, grid)
    steps = grid.numel() - 1
    variance_at = reverse_variance(schedule, variance, steps)
    eps_fn = _CountedEps(eps_fn, space)
    # the posterior-mean coefficients of every step once, as host floats (no per-step schedule calls)
    t_all, s_all = grid[:-1], grid[1:]
    sig2_t, sig2_s = schedule.sigma_sq(t_all), schedule.sigma_sq(s_all)
    c_x0 = (schedule.alpha(s_all) * schedule.skip_beta(s_all, t_all) / sig2_t).tolist()
    c_xt = (schedule.skip_alpha(s_all, t_all) * sig2_s / sig2_t).tolist()
    alpha, sigma, noisy = schedule.alpha(t_all).tolist(), sig2_t.sqrt().tolist(), (sig2_s > 0).tolist()
    for i in range(steps):
        t, s = grid[i], grid[i + 1]
        eps = eps_fn(x, t)
        var = torch.as_tensor(variance_at(i, x, t, s, eps), dtype=torch.float64)
        x0 = predict_x0(eps, x, alpha[i], sigma[i])
        if threshold is not None:
            x0 = threshold(x0)
        mean = c_x0[i] * x0 + c_xt[i] * x
        if noisy[i] and (var.device.type != "cpu" or bool((var > 0).any())):
            mean = mean + _coef(var.sqrt(), x) * space.noise(generator=generator, dtype=x.dtype)
        x = space.project(mean)
        eps_fn.step(callback, i, steps, t, s, x, x0)
    return eps_fn.output(x)


VarianceFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def reverse_variance(schedule: NoiseSchedule, variance: str | Tensor | VarianceFn, steps: int
                     ) -> Callable[[int, Tensor, Tensor, Tensor, Tensor], Tensor]:
    """Validate a reverse-variance choice and return ``at(i, x_t, t, s, ε̂)`` giving step i's variance
    (a float64 scalar, or per-element for a callable)."""
    if isinstance(variance, Tensor):
        if variance.shape != (steps,):
            raise ValueError(f"variance table has shape {tuple(variance.shape)}, expected ({steps},) for this grid")
        if not torch.isfinite(variance).all() or (variance < 0).any():
            raise ValueError("variance table must be finite and non-negative")
        return lambda i, x, t, s, eps: variance[i].to(torch.float64)
    if callable(variance):
        def at(i: int, x: Tensor, t: Tensor, s: Tensor, eps: Tensor) -> Tensor:
            v = variance(x, t, s, eps)
            if not torch.isfinite(v).all() or (v < 0).any():
                raise ValueError(f"variance function returned NaN, inf or negative values at step {i}")
            return v
        return at
    if variance == "beta":
        return lambda i, x, t, s, eps: schedule.skip_beta(s, t)
    if variance == "beta_tilde":
        return lambda i, x, t, s, eps: schedule.posterior_variance(s, t)
    raise ValueError(f"unknown variance {variance!r}; expected 'beta', 'beta_tilde', a tensor or a callable")


def ancestral_step(eps: Tensor, schedule: NoiseSchedule, space: Space, x: Tensor, t: Tensor, s: Tensor, var: Tensor, *,
                   generator: torch.Generator | None = None, clip_x0: tuple[float, float] | None = None,
                   dynamic_threshold: float | None = None) -> Tensor:
    """One ancestral step t → s: x_s = μ̃(x_t, x̂₀) + v^{1/2} z with the posterior mean
    μ̃ = α_s β_{t|s}/σ_t² · x̂₀ + α_{t|s} σ_s²/σ_t² · x_t and x̂₀ = (x_t − σ_t ε̂)/α_t (no noise into σ_s = 0),
    x̂₀ thresholded as ``x0_threshold(clip_x0, dynamic_threshold)`` says."""
    threshold = x0_threshold(clip_x0, dynamic_threshold)
    sig2_t, sig2_s = schedule.sigma_sq(t), schedule.sigma_sq(s)
    b_ts = schedule.skip_beta(s, t)
    x0 = predict_x0(eps, x, _coef(schedule.alpha(t), x), _coef(sig2_t.sqrt(), x))
    if threshold is not None:
        x0 = threshold(x0)
    mean = _coef(schedule.alpha(s) * b_ts / sig2_t, x) * x0 + _coef(schedule.skip_alpha(s, t) * sig2_s / sig2_t, x) * x
    var = torch.as_tensor(var, dtype=torch.float64)
    if float(sig2_s) > 0 and bool((var > 0).any()):
        mean = mean + _coef(var.sqrt(), x) * space.noise(generator=generator, dtype=x.dtype)
    return space.project(mean)


def ddim(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor, *, eta: float = 0.0,
         variance: str | Tensor | VarianceFn | None = None, generator: torch.Generator | None = None,
         clip_x0: tuple[float, float] | None = None, dynamic_threshold: float | None = None,
         callback: StepCallback | None = None) -> SamplerOutput:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) on any grid:

        x_s = α_s x̂₀ + (σ_s² − c²)^{1/2} ε̂ + c z,   c² = η² β̃_{t|s} = η² σ_s² β_{t|s}/σ_t².

    η = 0 is deterministic; η = 1 is ancestral sampling with β̃.

    With ``variance`` (``beta``/``beta_tilde``, a table of K per-step variances, or a callable
    (x_t, t, s, ε̂) → per-element variances, as for ``ddpm``) the mean keeps DDIM(η)'s λ² = c² but the
    added noise has the given variance v instead (the DDIM-type generalised process of Bao et al. 2022a,
    Analytic-DPM Thm. 1 with λ² = η² β̃, and its diagonal SN/NPR form, Bao et al. 2022b):
    x_s = α_s x̂₀ + (σ_s² − λ²)^{1/2} ε̂ + v^{1/2} z, e.g. Analytic-DDIM's v* = (σ_t/α_{t|s} − σ_s)² (1 − Γ_t)
    for η = 0. The callable sees the network's ε̂ (before any thresholding). No noise on a step into σ_s = 0.
    ``clip_x0`` / ``dynamic_threshold``: x̂₀ thresholded (``x0_threshold``) and ε̂ re-derived from it,
    ε̂ = (x_t − α_t x̂₀)/σ_t, so the step stays on the DDIM trajectory through the corrected x̂₀.
    """
    if eta < 0:
        raise ValueError("eta must be >= 0")
    threshold = x0_threshold(clip_x0, dynamic_threshold)
    x = _prepare(schedule, space, x, grid)
    steps = grid.numel() - 1
    variance_at = reverse_variance(schedule, variance, steps) if variance is not None else None
    eps_fn = _CountedEps(eps_fn, space)
    # every coefficient once, as host floats: no per-step schedule calls or host→device copies
    alpha, sigma, sig2 = schedule.alpha(grid).tolist(), schedule.sigma(grid).tolist(), schedule.sigma_sq(grid)
    post = torch.zeros(steps, dtype=torch.float64)
    inner = sig2[1:] > 0
    if bool(inner.any()):
        post[inner] = schedule.posterior_variance(grid[1:][inner], grid[:-1][inner])
    c2 = (eta**2 * post).tolist()
    keep = (sig2[1:] - eta**2 * post).clamp_min(0).sqrt().tolist()
    for i in range(steps):
        t, s = grid[i], grid[i + 1]
        eps = eps_fn(x, t)
        var = variance_at(i, x, t, s, eps) if variance_at is not None else None
        x0 = predict_x0(eps, x, alpha[i], sigma[i])
        if threshold is not None:
            x0 = threshold(x0)
            eps = (x - alpha[i] * x0) / sigma[i]
        x = alpha[i + 1] * x0 + keep[i] * eps
        if var is None:
            if c2[i] > 0:
                x = x + math.sqrt(c2[i]) * space.noise(generator=generator, dtype=x.dtype)
        elif bool(inner[i]) and bool((var > 0).any()):
            x = x + _coef(var.sqrt(), x) * space.noise(generator=generator, dtype=x.dtype)
        x = space.project(x)
        eps_fn.step(callback, i, steps, t, s, x, x0)
    return eps_fn.output(x)


# ==================================================================================================
# SDE samplers (Song et al., ICLR 2021)
# ==================================================================================================
def _score(eps_fn: _CountedEps, schedule: NoiseSchedule, x: Tensor, t: Tensor) -> Tensor:
    """s(x, t) = −ε̂(x, t)/σ_t."""
    return -eps_fn(x, t) / _coef(schedule.sigma(t), x)


def euler_maruyama(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor, *,
                   generator: torch.Generator | None = None, final_noise: bool = False,
                   callback: StepCallback | None = None) -> SamplerOutput:
    """Euler–Maruyama on the reverse SDE dx = [f x − g² s(x, t)] dt + g dW̄ (Anderson 1982; Song et al. 2021):

        x_{s} = x_t − (f_t x_t − g_t² s(x_t, t)) Δ + g_t √Δ z,   Δ = t − s > 0.

    The last step returns the mean (no noise) unless ``final_noise``, as in Song et al.'s code.
    """
    x = _prepare(schedule, space, x, grid)
    eps_fn = _CountedEps(eps_fn, space)
    steps = grid.numel() - 1
    for i in range(steps):
        t, s = grid[i], grid[i + 1]
        dt = t - s
        drift = _coef(schedule.drift_coef(t), x) * x - _coef(schedule.diffusion_sq(t), x) * _score(eps_fn, schedule, x, t)
        x = x - _coef(dt, x) * drift
        if i < steps - 1 or final_noise:
            x = x + _coef((schedule.diffusion_sq(t) * dt).sqrt(), x) * space.noise(generator=generator, dtype=x.dtype)
        x = space.project(x)
        eps_fn.step(callback, i, steps, t, s, x, None)
    return eps_fn.output(x)


def predictor_corrector(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor, *,
                        snr: float = 0.16, corrector_steps: int = 1, generator: torch.Generator | None = None,
                        callback: StepCallback | None = None) -> SamplerOutput:
    """Predictor–corrector (Song et al. 2021, Alg. 1–3): at each grid time, ``corrector_steps`` Langevin steps

        x ← x + ε s(x, t) + √(2ε) z,   ε = 2 a (snr ‖z‖ / ‖s‖)²,

    with ‖·‖ the batch mean of per-sample norms (as in Song et al.'s code; per-sample ratios make huge steps
    for low-dimensional samples near a mode) and a = α_{t|s}² (the discrete α_i of Song's VP corrector, 1 for
    VE), then one Euler–Maruyama predictor
    step to the next grid time. NFE = K (1 + corrector_steps).
    """
    if snr <= 0 or corrector_steps < 0:
        raise ValueError("snr must be > 0 and corrector_steps >= 0")
    x = _prepare(schedule, space, x, grid)
    eps_fn = _CountedEps(eps_fn, space)
    steps = grid.numel() - 1
    for i in range(steps):
        t, s = grid[i], grid[i + 1]
        a = schedule.skip_alpha(s, t) ** 2
        for _ in range(corrector_steps):
            grad = _score(eps_fn, schedule, x, t)
            z = space.noise(generator=generator, dtype=x.dtype)
            z_norm = space.sum_per_sample(z * z).sqrt().mean()
            g_norm = space.sum_per_sample(grad * grad).sqrt().mean().clamp_min(torch.finfo(x.dtype).tiny)
            step = 2 * _coef(a, x) * (snr * z_norm / g_norm) ** 2
            x = space.project(x + step * grad + (2 * step).sqrt() * z)
        dt = t - s
        drift = _coef(schedule.drift_coef(t), x) * x - _coef(schedule.diffusion_sq(t), x) * _score(eps_fn, schedule, x, t)
        x = x - _coef(dt, x) * drift
        if i < steps - 1:
            x = x + _coef((schedule.diffusion_sq(t) * dt).sqrt(), x) * space.noise(generator=generator, dtype=x.dtype)
        x = space.project(x)
        eps_fn.step(callback, i, steps, t, s, x, None)
    return eps_fn.output(x)


# ==================================================================================================
# Probability-flow ODE
# ==================================================================================================
def probability_flow_rk45(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor, *,
                          rtol: float = 1e-5, atol: float = 1e-5, check: str = "warn", check_factor: float = 10.0,
                          callback: StepCallback | None = None) -> SamplerOutput:
    """Integrate the probability-flow ODE with adaptive RK45 (Dormand–Prince, scipy, float64), grid[0] → grid[-1].

    The ODE dx/dt = f x − ½ g² s is solved in EDM's variables y = x/α, ς = σ/α, where it reads
    dy/dς = ε̂(α y, t(ς)) (Karras et al. 2022, eq. 4 with s(t) = α): smooth down to ς = 0 for every schedule,
    whereas the t-form has a 1/σ singularity at a discrete schedule's data end. Only the grid's end points are
    used (the solver picks its own steps); NFE is the solver's count of evaluations. Only non-padding entries
    are integrated, and ε is projected as a velocity (``Space.project_tangent``: not wrapped on the torus).

    Error control is per sample: a step is accepted when every sample's RMS of err_j/(atol + rtol |y_j|) is < 1
    (Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4, with the norm taken per independent sample; scipy's
    default RMS over the whole flattened batch lets a few samples carry errors ~√B larger than the tolerance).
    A local error test cannot see a step that jumps over the whole region where the flow bends (at rtol ≥ 0.03
    RK45 finishes in ~4 steps with garbage), so ``check`` ("warn", "raise" or "off") re-solves at
    tolerances /``check_factor`` and compares: the global error estimate is e_j = |y_j − y_j^fine| and the run
    fails the check when the RMS over samples of each sample's RMS of e_j/(atol + rtol |y_j^fine|) exceeds
    ``check_factor`` (the global error of a tolerance-proportional method is a modest multiple of its local
    tolerance). The returned sample is the requested-tolerance solution; ``nfe`` counts both solves and
    ``info`` holds ``nfe_solve``, ``nfe_check`` and ``global_error`` (that RMS, in units of the tolerance).
    The solver is stepped one accepted step at a time and each accepted step is reported to ``callback`` with
    ``total=None``, ``progress`` the fraction of ς travelled and x̂₀ = y − ς ε̂ from the solver's end-of-step
    slope (first-same-as-last: no extra evaluation). A non-finite state raises FloatingPointError with the step.
    """
    if check not in ("warn", "raise", "off"):
        raise ValueError(f"check must be 'warn', 'raise' or 'off', got {check!r}")
    if not (rtol > 0 and atol > 0 and check_factor > 1):
        raise ValueError("rk45 needs rtol > 0, atol > 0 and check_factor > 1")
    x = _prepare(schedule, space, x, grid)
    counted = _CountedEps(eps_fn, space)
    y, steps = _rk45_solve(counted, schedule, space, x, grid, rtol, atol, callback)
    info = {"nfe_solve": counted.calls, "nfe_check": 0, "global_error": float("nan")}
    if check != "off":
        fine = _CountedEps(eps_fn, space)
        y_fine, _ = _rk45_solve(fine, schedule, space, x, grid, rtol / check_factor, atol / check_factor, None)
        valid = space.valid_mask()
        owner = space.element_owner()[valid].cpu().numpy()
        y_t, y_fine_t = (torch.zeros(space.shape, dtype=torch.float64) for _ in range(2))
        y_t[valid.cpu()], y_fine_t[valid.cpu()] = torch.from_numpy(y), torch.from_numpy(y_fine)
        gap = space.to("cpu").difference(space.to("cpu").project(y_t), space.to("cpu").project(y_fine_t))  # torus: wrapped
        scaled = gap[valid.cpu()].numpy() / (atol + rtol * np.abs(y_fine))
        per_sample = np.sqrt(np.bincount(owner, scaled**2) / np.maximum(np.bincount(owner), 1))
        info.update(nfe_check=fine.calls, global_error=float(np.sqrt((per_sample**2).mean())))
        counted.calls += fine.calls
        if info["global_error"] > check_factor:
            msg = (f"rk45 (rtol={rtol:g}, atol={atol:g}) stopped after {steps} steps and {info['nfe_solve']} "
                   f"evaluations without meeting its tolerance: global error ≈ {info['global_error']:.3g} × tolerance "
                   f"against a solve at tolerance/{check_factor:g}; use a smaller rtol/atol")
            if check == "raise":
                raise RuntimeError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
    valid = space.valid_mask()
    out = torch.zeros(space.shape, dtype=x.dtype, device=x.device)
    out[valid] = torch.from_numpy(y).to(device=x.device, dtype=x.dtype)
    x = space.project(out * _coef(schedule.alpha(grid[-1]), out))
    result = SamplerOutput(x, counted.calls)
    result.info = info
    return result


def _rk45_solve(counted: _CountedEps, schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor, rtol: float,
                atol: float, callback: StepCallback | None) -> tuple[np.ndarray, int]:
    """One RK45 solve with per-sample error control: (the valid entries of y = x/α at grid[-1], accepted steps)."""
    from scipy.integrate import RK45

    dtype, device = x.dtype, x.device
    valid = space.valid_mask()  # integrate only real entries: padding must not enter the solver's error norm
    owner = space.element_owner()[valid].cpu().numpy()
    counts = np.maximum(np.bincount(owner), 1)

    class PerSampleRK45(RK45):
        """scipy's RK45 with the error norm max over samples of the per-sample RMS (instead of one batch RMS)."""

        def _estimate_error_norm(self, K: np.ndarray, h: float, scale: np.ndarray) -> float:
            err = (self._estimate_error(K, h) / scale) ** 2
            return float(np.sqrt((np.bincount(owner, err, minlength=counts.size) / counts).max()))

    if not hasattr(RK45, "_estimate_error_norm"):  # pragma: no cover - guards a scipy internals change
        raise RuntimeError("this scipy's RK45 has no _estimate_error_norm: pin scipy==1.17.1 (requirements.txt)")

    def unpack(flat: np.ndarray) -> Tensor:
        out = torch.zeros(space.shape, dtype=dtype, device=device)
        out[valid] = torch.from_numpy(flat).to(device=device, dtype=dtype)
        return out

    def rhs(vs: float, y: np.ndarray) -> np.ndarray:
        t = schedule.time_at_varsigma(vs)
        yt = unpack(y)
        with torch.no_grad():
            eps = counted(space.project(yt * _coef(schedule.alpha(t), yt)), t)
        out = space.project_tangent(eps)[valid].detach().to("cpu", torch.float64).numpy()
        if not np.isfinite(out).all():
            raise FloatingPointError(f"rk45: the network returned NaN or inf at evaluation {counted.calls} "
                                     f"(ς = {vs:.4g})")
        return out

    vs_start, vs_end = float(schedule.varsigma(grid[0])), float(schedule.varsigma(grid[-1]))
    y0 = (x / _coef(schedule.alpha(grid[0]), x))[valid].detach().to("cpu", torch.float64).numpy()
    solver = PerSampleRK45(rhs, vs_start, y0, vs_end, rtol=rtol, atol=atol)
    t_prev, i = grid[0], 0
    while solver.status == "running":
        message = solver.step()
        if solver.status == "failed":
            raise RuntimeError(f"RK45 failed after {counted.calls} evaluations: {message}")
        if callback is not None:
            s = grid[-1] if solver.status == "finished" else schedule.time_at_varsigma(solver.t)
            y = unpack(solver.y)
            x_s = space.project(y * _coef(schedule.alpha(s), y))
            x0 = y - _coef(torch.tensor(solver.t, dtype=torch.float64), y) * unpack(solver.f)
            _report(callback, i, None, t_prev, s, x_s, x0, counted.calls, (vs_start - solver.t) / (vs_start - vs_end))
            t_prev = s
        i += 1
    return solver.y, i


def heun(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor, *,
         callback: StepCallback | None = None) -> SamplerOutput:
    """Heun's 2nd-order method on the probability-flow ODE in EDM's variables (Karras et al. 2022, Alg. 1):

    with y = x/α and ς = σ/α = e^{−λ/2}, the ODE is dy/dς = ε̂(α y, t(ς)) for every schedule. Each step
    takes an Euler step in ς and corrects with the slope at its end, except into ς = 0 (Euler only).
    """
    x = _prepare(schedule, space, x, grid)
    eps_fn = _CountedEps(eps_fn, space)
    steps = grid.numel() - 1
    for i in range(steps):
        t, s = grid[i], grid[i + 1]
        a_t, a_s = schedule.alpha(t), schedule.alpha(s)
        vs_t, vs_s = schedule.varsigma(t), schedule.varsigma(s)
        y = x / _coef(a_t, x)
        d = eps_fn(x, t)
        y_next = y + _coef(vs_s - vs_t, x) * d
        if float(vs_s) > 0:
            d2 = eps_fn(space.project(y_next * _coef(a_s, x)), s)
            y_next = y + _coef(vs_s - vs_t, x) * 0.5 * (d + d2)
        x = space.project(y_next * _coef(a_s, x))
        eps_fn.step(callback, i, steps, t, s, x, y - _coef(vs_t, x) * d)
    return eps_fn.output(x)


def dpm_solver_pp_2m(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor, *,
                     lower_order_final: bool = True, clip_x0: tuple[float, float] | None = None,
                     dynamic_threshold: float | None = None, callback: StepCallback | None = None) -> SamplerOutput:
    """DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2), the multistep 2nd-order data-prediction solver:

        x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x − α_{t_i} (e^{−h_i} − 1) D_i,   D_i = x̂₀_{i−1} + (x̂₀_{i−1} − x̂₀_{i−2})/(2r_i),

    h = log(α/σ) differences, r_i = h_{i−1}/h_i; D_i = x̂₀_{i−1} on the first step and, with ``lower_order_final``
    and K < 15, on the last. A step into σ = 0 extrapolates x̂₀ to τ = σ²/α² = 0 (``sciddpm.multistep``).
    ``dpm_solver_pp(order=2)``, thresholding included."""
    return dpm_solver_pp(eps_fn, schedule, space, x, grid, order=2, lower_order_final=lower_order_final,
                         clip_x0=clip_x0, dynamic_threshold=dynamic_threshold, callback=callback)


SAMPLERS: dict[str, Callable[..., SamplerOutput]] = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler_maruyama": euler_maruyama,
    "pc": predictor_corrector,
    "rk45": probability_flow_rk45,
    "heun": heun,
    "dpm_solver_pp_2m": dpm_solver_pp_2m,
    "dpm_solver_pp_3m": dpm_solver_pp_3m,
    "unipc": unipc,
}


def get_sampler(name: str) -> Callable[..., SamplerOutput]:
    """Look up a sampler by name; ValueError listing the known names otherwise."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]
