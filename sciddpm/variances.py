"""Optimal reverse variances: Analytic-DPM (Bao, Li, Zhu & Zhang, ICLR 2022) for any grid and any space.

For a reverse step t → s (s < t) of the DDIM family q_λ(x_s | x_t, x₀) = N(μ̃_λ(x_t, x₀), λ² I) with
μ̃_λ = α_s x₀ + (σ_s² − λ²)^{1/2} (x_t − α_t x₀)/σ_t, the Gaussian p(x_s|x_t) = N(μ̃_λ(x_t, E[x₀|x_t]), v I)
that maximises the ELBO has (Bao et al. 2022, Theorem 1, written with skip coefficients)

    v* = λ² + (σ_t/α_{t|s} − (σ_s² − λ²)^{1/2})² (1 − Γ_t),     Γ_t = E_{q_t} ‖ε*(x_t, t)‖² / d,

with d the space's degrees of freedom. DDPM uses λ² = β̃_{t|s}; DDIM(η) uses λ² = η² β̃_{t|s}. Replacing ε* by a
trained ε̂ and Γ_t by a Monte-Carlo estimate gives Analytic-DPM; Theorem 2's bounds keep the estimate honest:

    λ² ≤ v* ≤ λ² + (σ_t/α_{t|s} − (σ_s² − λ²)^{1/2})² · (α_t²/σ_t²) · mean_i((b_i − a_i)/2)²

for data in a box [a, b] (per channel for science data). Γ is estimated once on the schedule's own steps
(``estimate_gamma``) and interpolated linearly in t for any grid, so one table serves any number of steps.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from .objectives import EpsFn, forward_noise
from .schedules import NoiseSchedule
from .spaces import Space

#: Floor on (1 − Γ_t): a Monte-Carlo Γ ≥ 1 near the data end (where 1 − Γ is below its standard error) must not
#: give a zero variance, which would make the decoder step look free to the DP and break the ELBO. Where the
#: table has standard errors, (1 − Γ) is also floored at GAMMA_GAP_SE standard errors: the variance is then
#: only as small as the estimate can resolve.
GAMMA_GAP_FLOOR = 1e-6
GAMMA_GAP_SE = 2.0


@dataclass
class GammaTable:
    """Γ_t = E‖ε̂(x_t, t)‖²/d at times ``t`` (float64), with its Monte-Carlo standard error."""

    t: Tensor
    gamma: Tensor
    stderr: Tensor

    def __call__(self, t: Tensor) -> Tensor:
        """Γ at arbitrary times, linearly interpolated in t between table entries (exact at the entries)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return self._interp(t, self.gamma)

    def stderr_at(self, t: Tensor) -> Tensor:
        """The standard error of Γ at arbitrary times (interpolated like Γ)."""
        return self._interp(torch.as_tensor(t, dtype=torch.float64), self.stderr)

    def _interp(self, t: Tensor, values: Tensor) -> Tensor:
        order = torch.argsort(self.t)
        return torch.from_numpy(np.interp(t.numpy(), self.t[order].numpy(), values[order].numpy()))

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors to save next to the schedule (safetensors-compatible)."""
        return {"gamma_t": self.t.contiguous(), "gamma": self.gamma.contiguous(), "gamma_stderr": self.stderr.contiguous()}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, Tensor]) -> "GammaTable":
        """Rebuild from ``state_dict``; ValueError naming a missing or inconsistent entry."""
        for key in ("gamma_t", "gamma", "gamma_stderr"):
            if key not in tensors:
                raise ValueError(f"Gamma table is missing tensor {key!r}")
        t, g, s = (tensors[k].to(torch.float64) for k in ("gamma_t", "gamma", "gamma_stderr"))
        if not (t.shape == g.shape == s.shape) or t.dim() != 1:
            raise ValueError("Gamma table tensors must be 1-D and of equal length")
        if not torch.isfinite(g).all():
            raise ValueError("Gamma table contains NaN or inf")
        return cls(t, g, s)


def estimate_gamma(eps_fn: EpsFn | None, schedule: NoiseSchedule, batches: Iterable[tuple], times: Tensor,
                   generator: torch.Generator | None = None,
                   callback: Callable[[int], None] | None = None) -> GammaTable:
    """Γ_t = E_{x₀, ε} ‖ε̂(α_t x₀ + σ_t ε, t)‖² / d (Bao et al. 2022, eq. 8) by antithetic, control-variate Monte Carlo.

    The plain average of Y = 1 − ‖ε̂‖²/d has a standard error ~√(2/d)/√n near the noise end, far above
    1 − Γ_t ≈ α_t² Var[x₀]/… → 0 there, so it can return 1 − Γ < 0. Since E‖ε‖²/d = 1 exactly for the space's own
    noise, C = ‖ε‖²/d − 1 is a zero-mean control variate, and Y + C = (‖ε‖² − ‖ε̂‖²)/d = [2⟨ε, ε − ε̂⟩ − ‖ε − ε̂‖²]/d
    vanishes where ε̂ ≈ ε. Two refinements make it uniformly good: (i) every x₀ is noised with ε and −ε
    (antithetic pair; Glasserman 2004, §4.2), which cancels the part of 2⟨ε, ε − ε̂⟩ linear in ε (the O(α_t) term at
    the noise end); (ii) the control's coefficient is the regression one, 1 − Γ ≈ mean(Y − c C) with
    c = Cov(Y, C)/Var(C) over the pairs (Glasserman 2004, §4.1), which is ≈ −1 at the noise end and ≈ 0 at the data
    end, where ε̂ ≈ 0 and the plain Y is already exact. ``batches`` yields (x₀, space) pairs of training data, or
    (x₀, space, ε-predictor) triples when the predictor depends on the batch; every batch is noised at every time
    in ``times`` (two network evaluations per time: the pair ε, −ε). ``callback(k)``, if given, is called after
    each of the k network evaluations (progress reports). Returns Γ = 1 − estimate and its standard error
    √(Var(Y − cC)/n) over the n antithetic pairs.
    """
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    ys: list[Tensor] = []
    cs: list[Tensor] = []
    calls = 0
    for item in batches:
        x0, space = item[0], item[1]
        batch_eps = item[2] if len(item) > 2 else eps_fn
        if batch_eps is None:
            raise ValueError("estimate_gamma needs an eps_fn or (x0, space, eps_fn) batches")
        space.check(x0, name="x0")
        if not torch.isfinite(x0).all():
            raise ValueError("x0 contains NaN or inf")
        x0 = space.project(x0)
        y_t, c_t = [], []
        for t in times:
            eps = space.noise(generator=generator, dtype=x0.dtype)
            y_pair, c_pair = 0.0, 0.0
            for sign in (1.0, -1.0):
                x_t, e = forward_noise(schedule, space, x0, t, sign * eps)
                with torch.no_grad():
                    eps_hat = batch_eps(x_t, t.expand(space.batch_size))
                calls += 1
                if callback is not None:
                    callback(calls)
                y_pair = y_pair + 0.5 * (1 - space.mean_square_per_sample(eps_hat.to(torch.float64)))
                c_pair = c_pair + 0.5 * (space.mean_square_per_sample(e.to(torch.float64)) - 1)
            y_t.append(y_pair)
            c_t.append(c_pair)
        ys.append(torch.stack(y_t).cpu())  # [T, B]: one host read per batch
        cs.append(torch.stack(c_t).cpu())
    if not ys:
        raise ValueError("estimate_gamma got no data batches")
    y, c = torch.cat(ys, 1), torch.cat(cs, 1)
    if not torch.isfinite(y).all():
        raise ValueError("estimate_gamma: the eps-predictor returned NaN or inf")
    n = y.shape[1]
    yc, cc = y - y.mean(1, keepdim=True), c - c.mean(1, keepdim=True)
    coef = (yc * cc).sum(1) / (cc * cc).sum(1).clamp_min(torch.finfo(torch.float64).tiny)
    z = y - coef[:, None] * c
    gap = z.mean(1)
    stderr = z.std(1) / math.sqrt(n) if n > 1 else torch.zeros_like(gap)
    return GammaTable(times, 1 - gap, stderr)


def _lambda_sq(schedule: NoiseSchedule, s: Tensor, t: Tensor, eta: float | None) -> Tensor:
    """λ² of the DDIM family: β̃_{t|s} for DDPM (eta=None or 1), η² β̃_{t|s} for DDIM(η)."""
    if float(schedule.sigma_sq(s)) == 0.0:
        return torch.zeros((), dtype=torch.float64)
    post = schedule.posterior_variance(s, t)
    return post if eta is None else eta**2 * post


def _x0_coefficient(schedule: NoiseSchedule, s: Tensor, t: Tensor, lam_sq: Tensor) -> Tensor:
    """c = σ_t/α_{t|s} − (σ_s² − λ²)^{1/2}: the weight of the x₀ error in μ̃_λ (α_s − (σ_s² − λ²)^{1/2} α_t/σ_t)
    times σ_t/α_t, so that c² (1 − Γ_t) = (x₀ weight)² · E‖x₀ − E[x₀|x_t]‖²/d."""
    return schedule.sigma(t) / schedule.skip_alpha(s, t) - (schedule.sigma_sq(s) - lam_sq).clamp_min(0).sqrt()


def _gap(gamma: Tensor, stderr: Tensor | float = 0.0) -> Tensor:
    """1 − Γ floored at max(GAMMA_GAP_FLOOR, GAMMA_GAP_SE · stderr)."""
    floor = torch.clamp(GAMMA_GAP_SE * torch.as_tensor(stderr, dtype=torch.float64), min=GAMMA_GAP_FLOOR)
    return torch.maximum(1 - torch.as_tensor(gamma, dtype=torch.float64), floor)


def analytic_variance(schedule: NoiseSchedule, s: Tensor, t: Tensor, gamma: Tensor, *, eta: float | None = None,
                      data_range: tuple[Tensor | float, Tensor | float] | None = None,
                      gamma_stderr: Tensor | float = 0.0) -> Tensor:
    """The optimal variance v* of the step t → s (Theorem 1), clipped to Theorem 2's bounds.

    ``gamma`` is Γ_t; ``eta`` None gives the DDPM form (λ² = β̃), a number the DDIM(η) form. The lower bound
    clips (1 − Γ) at 0; the upper bound uses the data box ``data_range`` = (a, b), scalars or per-channel
    tensors (mean_i((b_i − a_i)/2)² is the per-dimension bound on E Var[x₀|x_t]). (1 − Γ) is floored at
    ``GAMMA_GAP_FLOOR`` and at ``GAMMA_GAP_SE`` times ``gamma_stderr``, so that the step into the data end never
    gets a variance smaller than the estimate can resolve.
    """
    s, t = torch.as_tensor(s, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64)
    lam_sq = _lambda_sq(schedule, s, t, eta)
    c = _x0_coefficient(schedule, s, t, lam_sq)
    v = lam_sq + c**2 * _gap(gamma, gamma_stderr)
    if data_range is not None:
        a, b = (torch.as_tensor(v_, dtype=torch.float64) for v_ in data_range)
        if (b <= a).any():
            raise ValueError("data_range needs b > a in every channel")
        half_sq = (((b - a) / 2) ** 2).mean()
        v = torch.minimum(v, lam_sq + c**2 * half_sq * schedule.alpha_sq(t) / schedule.sigma_sq(t))
    return v


def last_step_cap(resolution: float) -> float:
    """Cap on the last step's variance from the data resolution Δ: E|σ z| = σ √(2/π) ≤ Δ/2, i.e.
    σ² ≤ (π/2)(Δ/2)² (the "clipping σ₁" of Bao et al. 2022, App. F, with Δ = 2/255 for 8-bit images)."""
    if resolution <= 0:
        raise ValueError("resolution must be > 0")
    return 0.5 * math.pi * (resolution / 2) ** 2


def variance_table(schedule: NoiseSchedule, grid: Tensor, gamma: GammaTable | Callable[[Tensor], Tensor], *,
                   eta: float | None = None, data_range: tuple[Tensor | float, Tensor | float] | None = None,
                   last_step_resolution: float | None = None) -> Tensor:
    """Per-step Analytic-DPM variances for a decreasing grid (a table for ``ddpm``/``elbo``), K entries.

    The last entry (the step into the data end) is additionally capped by ``last_step_cap`` when a
    resolution is given.
    """
    vs = []
    for i in range(grid.numel() - 1):
        t, s = grid[i], grid[i + 1]
        se = gamma.stderr_at(t.reshape(1))[0] if isinstance(gamma, GammaTable) else 0.0
        vs.append(analytic_variance(schedule, s, t, gamma(t.reshape(1))[0], eta=eta, data_range=data_range, gamma_stderr=se))
    table = torch.stack(vs)
    if last_step_resolution is not None:
        table[-1] = table[-1].clamp(max=last_step_cap(last_step_resolution))
    return table


def optimal_trajectory(schedule: NoiseSchedule, gamma: GammaTable | Callable[[Tensor], Tensor], steps: int, *,
                       data_range: tuple[Tensor | float, Tensor | float] | None = None) -> Tensor:
    """The K-step sub-sequence of a discrete schedule's steps that maximises the ELBO under Analytic-DPM
    variances, by dynamic programming (Bao et al. 2022, §4, eq. 12–13).

    With optimal variances each step's KL per dimension is ½ log(v*_{s|t}/β̃_{t|s}) and the decoder (t → 0)
    costs ½(log(2π v*_{0|t}) + 1); the prior term depends only on t_max. (1 − Γ) is floored as in
    ``analytic_variance``, so an unresolved Γ near the data end cannot make a step look free. Cost O(K N²).
    Returns a decreasing float64 grid N = τ_K > … > τ_0 = 0.
    """
    n = schedule.num_steps
    if n is None:
        raise ValueError("optimal_trajectory needs a discrete schedule")
    if not 1 <= steps <= n:
        raise ValueError(f"steps must lie in [1, {n}], got {steps}")
    ts = torch.arange(n + 1, dtype=torch.float64)
    gam = gamma(ts[1:])
    gam_se = gamma.stderr_at(ts[1:]) if isinstance(gamma, GammaTable) else torch.zeros(n, dtype=torch.float64)
    # cost[s, t] for 0 ≤ s < t ≤ N
    cost = np.full((n + 1, n + 1), np.inf)
    for t_idx in range(1, n + 1):
        t = ts[t_idx]
        s = ts[:t_idx]
        lam_sq = schedule.posterior_variance(s, t.expand_as(s))
        c = schedule.sigma(t) / schedule.skip_alpha(s, t.expand_as(s)) - (schedule.sigma_sq(s) - lam_sq).clamp_min(0).sqrt()
        v = lam_sq + c**2 * _gap(gam[t_idx - 1], gam_se[t_idx - 1])
        if data_range is not None:
            a, b = (torch.as_tensor(v_, dtype=torch.float64) for v_ in data_range)
            v = torch.minimum(v, lam_sq + c**2 * (((b - a) / 2) ** 2).mean() * schedule.alpha_sq(t) / schedule.sigma_sq(t))
        row = 0.5 * torch.log(v[1:] / lam_sq[1:])
        cost[1:t_idx, t_idx] = row.numpy()
        cost[0, t_idx] = 0.5 * (math.log(2 * math.pi * float(v[0])) + 1)
    best = cost[0].copy()  # best[t]: minimal cost of a 1-step path from t to 0
    back = []
    for _ in range(steps - 1):
        total = best[:, None] + cost  # path … → s → 0 plus step t → s
        arg = np.argmin(total, axis=0)
        back.append(arg)
        best = total[arg, np.arange(n + 1)]
    path = [n]
    for arg in reversed(back):
        path.append(int(arg[path[-1]]))
    path.append(0)
    return torch.tensor(path, dtype=torch.float64)


# ==================================================================================================
# SN-DPM and NPR-DPM: diagonal covariances with an imperfect mean (Bao et al., ICML 2022)
# ==================================================================================================
def diagonal_optimal_variance(schedule: NoiseSchedule, s: Tensor, t: Tensor, error_sq: Tensor, *,
                              eta: float | None = None,
                              data_range: tuple[Tensor | float, Tensor | float] | None = None) -> Tensor:
    """The optimal diagonal covariance of the step t → s for a FIXED (imperfect) mean (Bao et al. 2022b, Thm. 1):

        Σ*(x_t)_i = λ² + (σ_t/α_{t|s} − (σ_s² − λ²)^{1/2})² · E[(ε − ε̂(x_t))_i² | x_t],

    with ``error_sq`` = E[(ε − ε̂)² | x_t] per element (NPR's head, or SN's E[ε²|x_t] − ε̂²). Clipped elementwise
    to [λ², λ² + c² α_t²/σ_t² ((b_i − a_i)/2)²] with per-channel bounds broadcast against the last axis.
    """
    s, t = torch.as_tensor(s, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64)
    dev = error_sq.device  # s, t may be CPU scalars while the error lives on an accelerator
    lam_sq = _lambda_sq(schedule, s, t, eta)
    c2 = _x0_coefficient(schedule, s, t, lam_sq) ** 2
    v = lam_sq.to(dev) + c2.to(dev) * error_sq.to(torch.float64).clamp_min(0)
    if data_range is not None:
        a, b = (torch.as_tensor(v_, dtype=torch.float64) for v_ in data_range)
        if (b <= a).any():
            raise ValueError("data_range needs b > a in every channel")
        upper = lam_sq + c2 * ((b - a) / 2) ** 2 * schedule.alpha_sq(t) / schedule.sigma_sq(t)
        v = torch.minimum(v, upper.to(dev))
    return v


def sn_error_from_second_moment(eps_sq: Tensor, eps_hat: Tensor) -> Tensor:
    """SN-DPM: E[(ε − ε̂)² | x] ≈ E[ε² | x] − ε̂², exact when ε̂ = E[ε | x] (clipped at 0)."""
    return (eps_sq - eps_hat**2).clamp_min(0)


def covariance_head_loss(head: Callable[[Tensor, Tensor], Tensor], mean_eps_fn: EpsFn, schedule: NoiseSchedule,
                         space: Space, x0: Tensor, *, kind: str = "npr",
                         generator: torch.Generator | None = None) -> Tensor:
    """Second-stage loss on a frozen mean network (Bao et al. 2022b, eq. 9–10), per-sample mean over d:

        NPR: ‖h(x_t, t) − (ε − ε̂(x_t, t))²‖²/d,     SN: ‖h(x_t, t) − ε²‖²/d,

    whose minimisers are E[(ε − ε̂)² | x_t] and E[ε² | x_t]. t is uniform; ε ~ space.noise. Returns the batch mean.
    """
    if kind not in ("npr", "sn"):
        raise ValueError(f"unknown covariance head kind {kind!r}; expected 'npr' or 'sn'")
    from .objectives import sample_times

    space.check(x0, name="x0")
    x0 = space.project(x0)
    t, _ = sample_times(schedule, space.batch_size, generator=generator, device=space.device)
    x_t, eps = forward_noise(schedule, space, x0, t, generator=generator)
    with torch.no_grad():
        eps_hat = mean_eps_fn(x_t, t)
    target = (eps - eps_hat) ** 2 if kind == "npr" else eps**2
    pred = head(x_t, t)
    space.check(pred, name="covariance head output")
    return space.mean_square_per_sample(pred - target).mean()


def diagonal_variance_fn(schedule: NoiseSchedule, head: Callable[[Tensor, Tensor], Tensor], *, kind: str = "npr",
                         eta: float | None = None,
                         data_range: tuple[Tensor | float, Tensor | float] | None = None,
                         error_floor: float = 0.0) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """A per-element variance callable ``(x_t, t, s, ε̂) -> Σ`` for ``ddpm``/``ddim``/``elbo`` from a trained NPR
    or SN head (Bao et al. 2022b, Thm. 1). ``error_floor`` > 0 floors the estimated E[(ε − ε̂)² | x_t] (e.g. at
    ``GAMMA_GAP_FLOOR``, as Analytic-DPM floors 1 − Γ): SN's E[ε²|x] − ε̂² is clipped at 0, which makes the
    decoder step (λ² = 0) a zero variance that ``elbo`` rejects."""
    if kind not in ("npr", "sn"):
        raise ValueError(f"unknown covariance head kind {kind!r}; expected 'npr' or 'sn'")
    if error_floor < 0:
        raise ValueError(f"error_floor must be >= 0, got {error_floor}")

    def variance(x: Tensor, t: Tensor, s: Tensor, eps_hat: Tensor) -> Tensor:
        # t as the sampler gives it (one time for the step): the head broadcasts it over its samples, so a graph
        # state's rows (atoms, not samples) never get a per-row time
        with torch.no_grad():
            h = head(x, torch.as_tensor(t, dtype=torch.float64, device=x.device)).to(torch.float64)
        err = h if kind == "npr" else sn_error_from_second_moment(h, eps_hat.to(torch.float64))
        if error_floor > 0:
            err = err.clamp_min(error_floor)
        return diagonal_optimal_variance(schedule, s, t, err, eta=eta, data_range=data_range)

    return variance


def fit_covariance_head(head: torch.nn.Module, mean_eps_fn_for: Callable[..., EpsFn], schedule: NoiseSchedule,
                        batches: Iterable[tuple], *, kind: str = "npr", steps: int = 1000, lr: float = 1e-3,
                        weight_decay: float = 0.0, grad_clip: float | None = 1.0, max_seconds: float | None = None,
                        device: torch.device | str | None = None, generator: torch.Generator | None = None,
                        log_every: int = 0) -> list[float]:
    """The second training stage of SN-/NPR-DPM (Bao et al. 2022b, §4, eq. 9–10) on a frozen mean network:

        SN:  min_φ E_{t, x₀, ε} ‖h_φ(x_t, t) − ε²‖²,     NPR: min_φ E_{t, x₀, ε} ‖h_φ(x_t, t) − (ε − ε̂(x_t, t))²‖²,

    by AdamW on the head's trainable parameters only (``requires_grad``; a frozen trunk is skipped), through
    ``covariance_head_loss``. ``batches`` yields (x₀, space) or (x₀, space, condition dict) for any space;
    ``mean_eps_fn_for(space, **condition)`` returns the frozen ε̂ for that batch and the head is called as
    ``head(x_t, t, **condition)``. A re-iterable ``batches`` is restarted when exhausted, an iterator ends the
    fit early. Stops after ``steps`` steps or ``max_seconds``; returns the per-step loss history. On an accelerator
    pass ``generator=None`` (``sample_times`` draws on the CPU, the noise on the space's device: no single
    generator serves both) and seed the global RNGs instead.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the covariance head has no trainable parameters")
    if device is not None:
        head.to(device)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    head.train()
    losses: list[Tensor] = []
    start, it, fresh = time.perf_counter(), iter(batches), True
    while len(losses) < steps and (max_seconds is None or time.perf_counter() - start < max_seconds):
        try:
            item = next(it)
        except StopIteration:
            if iter(batches) is batches or fresh:  # an exhausted iterator, or an empty re-iterable
                if not losses:
                    raise ValueError("fit_covariance_head got no data batches") from None
                break
            it, fresh = iter(batches), True
            continue
        fresh = False
        x0, space, cond = item[0], item[1], (item[2] if len(item) > 2 else {})
        if device is not None:
            x0, space = x0.to(device), space.to(device)
        loss = covariance_head_loss(lambda x, t: head(x, t, **cond), mean_eps_fn_for(space, **cond), schedule,
                                    space, x0, kind=kind, generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        losses.append(loss.detach())
        if log_every and len(losses) % log_every == 0:
            print(f"covariance head ({kind}) step {len(losses)}: loss {float(loss):.5f}", flush=True)
    head.eval()
    return torch.stack(losses).cpu().tolist()
