"""Time grids for the samplers: decreasing float64 grids t_0 = t_max > … > t_K = t_min, and their check."""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .schedules import NoiseSchedule

GridKind = Literal["uniform", "quadratic", "logsnr", "karras"]
#: Grid kinds ``time_grid`` builds (``optimised`` grids are computed per model: ``sciddpm.grid_opt``).
GRID_KINDS = ("uniform", "quadratic", "logsnr", "karras")
#: Karras et al. (2022)'s ρ, the exponent of the ς-spacing of the ``karras`` grid.
KARRAS_RHO = 7.0



def time_grid(schedule: NoiseSchedule, steps: int, kind: GridKind = "uniform", t_start: float | None = None,
              rho: float = KARRAS_RHO) -> Tensor:
    """A decreasing float64 grid t_0 = t_max > t_1 > … > t_K = t_min with K = ``steps`` intervals.

    ``t_start`` < t_max starts the grid there instead (SDEdit, partial reverse processes).

    ``uniform``: equal spacing in t; ``quadratic``: t spaced as u² for u uniform (DDIM's quadratic
    sub-sequence, Song et al. 2021a); ``logsnr``: uniform in λ (Lu et al. 2022); ``karras``: ς = σ/α spaced as
    ς_i = (ς_max^{1/ρ} + i/K' (ς_min^{1/ρ} − ς_max^{1/ρ}))^ρ (Karras et al. 2022, eq. 5, ρ = 7). Where σ(t_min) = 0,
    ``logsnr`` and ``karras`` space their K − 1 first steps down to the first level with finite λ and finish with
    one step to t_min (K' = K − 1; else K' = K). For a discrete schedule the
    grid is a sub-sequence of the integers {0, …, N} (any K ≤ N), made strictly decreasing by construction.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    lo, hi = float(schedule.t_min), float(schedule.t_max)
    if t_start is not None:
        if not lo < t_start <= hi:
            raise ValueError(f"t_start must lie in ({lo}, {hi}], got {t_start}")
        if schedule.num_steps is not None and float(t_start) != round(t_start):
            raise ValueError(f"t_start must be an integer step for a discrete schedule, got {t_start}")
        hi = float(t_start)
    u = np.linspace(0.0, 1.0, steps + 1)
    if kind == "uniform":
        g = lo + (hi - lo) * u
    elif kind == "quadratic":
        g = lo + (hi - lo) * u**2
    elif kind in ("logsnr", "karras"):
        # λ at the data end may be +inf (σ(t_min) = 0): then space λ uniformly between the noise end and the
        # first level with finite λ (t = 1 for a discrete schedule) and finish with one step to t_min.
        def lam(t: float) -> float:
            return float(schedule.log_snr(torch.tensor(t, dtype=torch.float64)))

        t_first = lo
        if not np.isfinite(lam(lo)):
            t_first = 1.0 if schedule.num_steps is not None else lo + 1e-3 * (hi - lo)
        n_inner = steps + 1 if t_first == lo else steps
        if kind == "logsnr":
            lams = np.linspace(lam(t_first), lam(hi), n_inner)
        else:  # ς^{1/ρ} uniform, ς = e^{−λ/2}
            if rho <= 0:
                raise ValueError(f"rho must be > 0, got {rho}")
            vs = np.exp(-0.5 * np.array([lam(t_first), lam(hi)]))
            lams = -2.0 * rho * np.log(np.linspace(vs[0] ** (1 / rho), vs[1] ** (1 / rho), n_inner))
        g = schedule.time_at_log_snr(torch.tensor(lams)).numpy()
        if t_first != lo:
            g = np.concatenate([[lo], g])
        g[0], g[-1] = lo, hi
    else:
        raise ValueError(f"unknown grid kind {kind!r}; expected one of {', '.join(GRID_KINDS)}")
    if schedule.num_steps is not None:
        n_max = int(round(hi))
        if steps > n_max:
            raise ValueError(f"a discrete schedule of {n_max} steps cannot be sampled in {steps} steps")
        g = np.round(g).astype(np.int64)
        g[0], g[-1] = 0, n_max
        for i in range(1, steps):  # strictly increasing from the data end: push collisions up,
            g[i] = max(g[i], g[i - 1] + 1)
        for i in range(steps - 1, 0, -1):  # then down from N, which keeps both ends (K ≤ N)
            g[i] = min(g[i], g[i + 1] - 1)
        g = g.astype(np.float64)
    grid = torch.tensor(g[::-1].copy(), dtype=torch.float64)
    grid[0], grid[-1] = hi, lo
    check_grid(schedule, grid)
    return grid


def check_grid(schedule: NoiseSchedule, grid: Tensor) -> None:
    """Raise ValueError unless the grid is 1-D, strictly decreasing, inside [t_min, t_max], ending at t_min."""
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError("time grid must be a 1-D tensor with at least 2 points")
    if not torch.isfinite(grid).all():
        raise ValueError("time grid contains NaN or inf")
    if not (grid[1:] < grid[:-1]).all():
        raise ValueError("time grid must be strictly decreasing (unique, monotone)")
    schedule.check_time(grid)
    if float(grid[-1]) != float(schedule.t_min):
        raise ValueError(f"time grid must end exactly at the data end t_min = {schedule.t_min}, got {float(grid[-1])}")


#: (sampler, grid kind or "*", largest K) → what was measured. Heun on the linear schedule's logsnr/quadratic grids
#: at K ≤ 10 had 3–12× the pathwise error of the uniform grid on the oracle (benchmarks/results/core_samplers.md);
#: Heun is not linearly unstable on any grid (on Gaussian data of any scale v its step factor lies in [−1, 1]), so
#: these are warnings, not refusals. Euler–Maruyama below 50 steps and PC below 50 steps (100 evaluations) left
#: 43–98 % of the samples off 25 narrow modes (benchmarks/results/sde_off_mode.md).
GRID_WARNINGS = {
    ("heun", "logsnr"): (10, "was measured 3-12x less accurate than on the uniform grid (core_samplers.md); use "
                             "--grid uniform or optimised"),
    ("heun", "quadratic"): (10, "was measured 3-12x less accurate than on the uniform grid (core_samplers.md); use "
                                "--grid uniform or optimised"),
    ("euler_maruyama", "*"): (49, "left 69-94% of samples off narrow modes at <= 20 steps (sde_off_mode.md); use "
                                  "ddpm, or an ODE solver (unipc, dpm_solver_pp_3m), or >= 50 steps"),
    ("pc", "*"): (49, "left 43-98% of samples off narrow modes at <= 50 evaluations (sde_off_mode.md); use ddpm, "
                      "or an ODE solver (unipc, dpm_solver_pp_3m), or >= 50 steps"),
}


def grid_warning(sampler: str, kind: str, steps: int) -> str | None:
    """The warning for a sampler/grid/K combination measured to be poor (``GRID_WARNINGS``), or None."""
    entry = GRID_WARNINGS.get((sampler, kind)) or GRID_WARNINGS.get((sampler, "*"))
    if entry is None or steps > entry[0]:
        return None
    return f"{sampler} on the {kind} grid with {steps} steps {entry[1]}"
