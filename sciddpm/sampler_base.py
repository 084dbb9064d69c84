"""The sampler contract shared by every solver: the output and per-step report types, the NFE-counting ε
wrapper, the prior draw and the input checks (``sciddpm.samplers`` re-exports all of them)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .grids import check_grid
from .objectives import EpsFn
from .schedules import NoiseSchedule
from .spaces import Space


@dataclass
class SamplerOutput:
    """A sampler's result: the final state, the number of ε-network evaluations used and (set by
    ``DiffusionModel.sample``) the space of the samples, which domains need to decode variable-size layouts."""

    sample: Tensor
    nfe: int
    space: Space | None = None
    #: Sampler-specific diagnostics (rk45: its own and its check solve's NFE and the global-error estimate).
    info: dict | None = None


@dataclass(frozen=True)
class SamplerStep:
    """What a sampler reports to its callback after step ``i`` (0-based) of ``total`` (K; ``None`` when the
    number of steps is not known in advance, as for adaptive RK45): the step went from time ``t`` to ``s`` < t,
    ``x`` is the new state x_s, ``x0`` the step's x̂₀ prediction (``None`` where the sampler forms none),
    ``nfe`` the network evaluations so far and ``progress`` the fraction of the run done, in (0, 1]
    ((i + 1)/K on a fixed grid, the default when ``total`` is given; for RK45 the fraction of ς = σ/α travelled).
    Any sampler can report with it, e.g. ``callback(SamplerStep(i, K, t, s, x, None, nfe))``."""

    i: int
    total: int | None
    t: Tensor
    s: Tensor
    x: Tensor
    x0: Tensor | None
    nfe: int
    progress: float | None = None

    def __post_init__(self) -> None:
        if self.progress is None:
            if self.total is None:
                raise ValueError("SamplerStep: progress is required when total is None")
            object.__setattr__(self, "progress", (self.i + 1) / self.total)


StepCallback = Callable[[SamplerStep], None]


def _report(callback: StepCallback | None, i: int, total: int | None, t: Tensor, s: Tensor, x: Tensor,
            x0: Tensor | None, nfe: int, progress: float | None = None) -> None:
    """Call ``callback`` (if any) with step i's SamplerStep; ``progress`` defaults to (i + 1)/total."""
    if callback is not None:
        callback(SamplerStep(i, total, t, s, x, x0, nfe, progress))


class _CountedEps:
    """Wraps an ε-predictor: feeds it per-sample float64 times, counts its calls (the NFE) and watches the state.

    ``step(callback, i, total, t, s, x, x0)`` ends sampler step i: it records, on x's device and without a host
    read, the first step whose state holds a NaN or inf, then reports to the callback; ``output(x)`` makes the
    ``SamplerOutput`` and raises FloatingPointError naming that step. One host read per run, none per step (a
    per-step ``isfinite`` check would synchronise an accelerator on every step).
    """

    def __init__(self, eps_fn: EpsFn, space: Space) -> None:
        self.eps_fn, self.space, self.calls = eps_fn, space, 0
        self.first_bad: Tensor | None = None

    def step(self, callback: StepCallback | None, i: int, total: int | None, t: Tensor, s: Tensor, x: Tensor,
             x0: Tensor | None, progress: float | None = None) -> None:
        """Record whether step i left a non-finite state (device-side), then call ``_report``."""
        bad = ~torch.isfinite(x).all()
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.long, device=x.device)
        self.first_bad = torch.where(bad & (self.first_bad < 0), torch.full_like(self.first_bad, i), self.first_bad)
        _report(callback, i, total, t, s, x, x0, self.calls, progress)

    def output(self, x: Tensor) -> SamplerOutput:
        """The run's ``SamplerOutput``; FloatingPointError if any step produced a NaN or inf state."""
        if self.first_bad is not None:
            first = int(self.first_bad)
            if first >= 0:
                raise FloatingPointError(f"sampler state became NaN or inf at step {first} (0-based, after "
                                         f"{self.calls} network evaluations): check the network, grid and guidance")
        return SamplerOutput(x, self.calls)

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        self.calls += 1
        if isinstance(t, float) or (t.numel() == 1 and t.device.type == "cpu"):  # fill on the device: no copy
            t_b = torch.full((self.space.batch_size,), float(t), dtype=torch.float64, device=x.device)
        else:
            t_b = torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1).expand(self.space.batch_size)
        eps = self.eps_fn(x, t_b)
        if eps.shape != x.shape:
            raise ValueError(f"eps_fn returned shape {tuple(eps.shape)} for a state of shape {tuple(x.shape)}")
        return eps


def prior_sample(schedule: NoiseSchedule, space: Space, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """x_T from the prior of ``space`` at the schedule's noise end: N(0, prior_std² I) (``Space.prior``; the torus
    draws uniform angles)."""
    return space.prior(schedule.prior_std, generator=generator, dtype=dtype)


def _prepare(schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor) -> Tensor:
    space.check(x, name="x_T")
    if not torch.isfinite(x).all():
        raise ValueError("x_T contains NaN or inf")
    check_grid(schedule, grid)
    return space.project(x)


X0Threshold = Callable[[Tensor], Tensor]


def x0_threshold(clip_x0: tuple[float, float] | None = None, dynamic_threshold: float | None = None
                 ) -> X0Threshold | None:
    """The x̂₀ correction every x̂₀-forming sampler applies before using x̂₀ (None: none).

    * ``clip_x0 = (a, b)``: static thresholding, x̂₀ ← clip(x̂₀, a, b) (Ho et al. 2020's clipping to the data range).
    * with ``dynamic_threshold = p`` ∈ (0, 1) as well: dynamic thresholding (Saharia et al. 2022, Imagen §2.3),
      in the coordinates y = (x̂₀ − m)/h that map [a, b] to [−1, 1] (m = (a + b)/2, h = (b − a)/2): per sample,
      s = max(1, quantile_p |y|) over its elements, y ← clip(y, −s, s)/s, x̂₀ = m + h·y. Pixels beyond the range
      are pushed inwards instead of saturating; s = 1 (no sample element beyond the range at level p) is the
      static clip. The batch is the leading axis (dense states).
    ValueError for a ≥ b, a non-finite bound, or p outside (0, 1) or without ``clip_x0``.
    """
    if dynamic_threshold is not None and clip_x0 is None:
        raise ValueError("dynamic_threshold needs clip_x0 = (a, b), the data range it thresholds to")
    if clip_x0 is None:
        return None
    try:
        a, b = (float(v) for v in clip_x0)
    except (TypeError, ValueError):
        raise ValueError(f"clip_x0 must be two numbers (a, b), got {clip_x0!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise ValueError(f"clip_x0 = ({a}, {b}) needs finite a < b")
    if dynamic_threshold is None:
        return lambda x0: x0.clamp(a, b)
    p = float(dynamic_threshold)
    if not 0 < p < 1:
        raise ValueError(f"dynamic_threshold is a quantile level in (0, 1), got {p}")
    mid, half = (a + b) / 2, (b - a) / 2

    def dynamic(x0: Tensor) -> Tensor:
        y = (x0 - mid) / half
        flat = y.abs().reshape(y.shape[0], -1).float()
        s = torch.quantile(flat, p, dim=1).clamp_min(1.0).to(y.dtype).reshape(-1, *([1] * (y.dim() - 1)))
        return mid + half * (torch.maximum(torch.minimum(y, s), -s) / s)

    return dynamic


def _coef(value: Tensor, x: Tensor) -> Tensor | float:
    """A coefficient for arithmetic with x: a host scalar (a one-element CPU tensor, as the schedule computes them)
    becomes a Python float, passed to the kernel as an argument (a 0-d tensor moved to an accelerator would be a
    host-to-device copy, which synchronises, on every step); anything else is moved to x's device and dtype."""
    if value.numel() == 1 and value.device.type == "cpu":
        return float(value)
    return value.to(device=x.device, dtype=x.dtype)


# ==================================================================================================
# Ancestral samplers
