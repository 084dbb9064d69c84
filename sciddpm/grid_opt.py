"""Optimised time grids: for a given model (or the oracle), sampler and step budget K, the K-step grid that
minimises a measured error.

- ODE solvers (``ddim`` η = 0, ``heun``, DPM-Solver++, UniPC): the grid minimising the mean pathwise error
  E_{x_T} ‖x_K(grid; x_T) − x_ref(x_T)‖/√d against a fine reference solution of the same probability-flow ODE from
  the same x_T (adaptive RK45 at a tight tolerance), on a few hundred of the model's own prior draws; in the spirit
  of Align Your Steps (Sabour et al. 2024), which optimises a bound on this error, here measured directly.
  Search: start from the best built-in grid kind for this sampler and K, then a pattern search on each interior
  time in turn (coordinate descent), in u = ς^{1/ρ} (Karras et al. 2022's axis), each point moved within its
  neighbours by a step that halves every sweep; a move is kept only if it lowers the measured error.
- Stochastic samplers (``ddpm``; ``ddim`` with Analytic-DPM variances): Analytic-DPM's optimal trajectory, the
  K-step sub-sequence that maximises the ELBO under the optimal variances (Bao et al. 2022, §4), by dynamic
  programming on the Γ table (``sciddpm.variances.optimal_trajectory``).

Grids are saved in the export as ``variance.grid.<sampler>.<K>`` (next to the Γ table) and used by
``DiffusionModel.sample(grid="optimised")`` / ``sciddpm sample --grid optimised``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .grids import GRID_KINDS, KARRAS_RHO, check_grid, time_grid
from .objectives import EpsFn
from .schedules import NoiseSchedule
from .spaces import Space

#: Samplers whose optimised grid is the pathwise-error one (deterministic ODE solvers).
ODE_SAMPLERS = ("ddim", "heun", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc")
#: Samplers whose optimised grid is Analytic-DPM's DP trajectory.
STOCHASTIC_SAMPLERS = ("ddpm",)


def grid_key(sampler: str, steps: int) -> str:
    """The export key of an optimised grid (under ``variance.``)."""
    return f"grid.{sampler}.{steps}"


@dataclass
class OptimisedGrid:
    """An optimised grid with its measured error (mean pathwise RMS per dimension against the reference), the
    error of the best built-in kind it started from, that kind, and the number of sampler runs the search made."""

    grid: Tensor
    error: float
    start_error: float
    start_kind: str
    runs: int


def pathwise_error(sampler_fn, eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x_T: Tensor, grid: Tensor,
                   reference: Tensor, options: dict[str, Any] | None = None) -> float:
    """E ‖x_K − x_ref‖/√d over the batch: the RMS per degree of freedom of the endpoint error, averaged."""
    out = sampler_fn(eps_fn, schedule, space, x_T, grid, **(options or {}))
    diff = space.difference(out.sample, reference).to(torch.float64)
    return float(space.mean_square_per_sample(diff).sqrt().mean())


def ode_reference(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x_T: Tensor, rtol: float = 1e-5) -> Tensor:
    """The exact-ODE endpoint of x_T to a tight tolerance (RK45 with per-sample error control, rtol = atol)."""
    from .samplers import probability_flow_rk45

    return probability_flow_rk45(eps_fn, schedule, space, x_T, time_grid(schedule, 1), rtol=rtol, atol=rtol,
                                 check="off").sample


def _to_u(schedule: NoiseSchedule, t: Tensor, rho: float) -> np.ndarray:
    return (schedule.varsigma(t).numpy()) ** (1 / rho)


def _from_u(schedule: NoiseSchedule, u: np.ndarray, rho: float) -> np.ndarray:
    return schedule.time_at_varsigma(torch.tensor(np.maximum(u, 0) ** rho, dtype=torch.float64)).numpy()


def optimise_ode_grid(sampler: str, eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x_T: Tensor, steps: int,
                      *, reference: Tensor | None = None, sweeps: int = 4, options: dict[str, Any] | None = None,
                      rho: float = KARRAS_RHO, reference_rtol: float = 1e-5) -> OptimisedGrid:
    """The K-step grid minimising the measured mean pathwise error of ``sampler`` from these x_T (module docstring).

    Interior times move on u = ς^{1/ρ}; on a discrete schedule they are rounded to integer steps and kept strictly
    decreasing (a candidate that collides with a neighbour is skipped). The first and last times stay at t_max and
    t_min; a grid whose last step goes into σ = 0 keeps its last interior point's σ > 0. ``reference``: the exact
    endpoints of ``x_T`` if known, else RK45 at ``reference_rtol``.
    """
    from .samplers import get_sampler

    if sampler not in ODE_SAMPLERS:
        raise ValueError(f"optimise_ode_grid needs a deterministic sampler {ODE_SAMPLERS}, got {sampler!r}")
    if steps < 2:
        raise ValueError(f"an optimised grid needs steps >= 2, got {steps}")
    fn = get_sampler(sampler)
    options = dict(options or {})
    if sampler == "ddim":
        options.setdefault("eta", 0.0)
        if options["eta"] != 0.0:
            raise ValueError("the pathwise-error grid is for deterministic DDIM (eta = 0)")
    if reference is None:
        reference = ode_reference(eps_fn, schedule, space, x_T, rtol=reference_rtol)
    runs = 0

    def error(grid: Tensor) -> float:
        nonlocal runs
        runs += 1
        return pathwise_error(fn, eps_fn, schedule, space, x_T, grid, reference, options)

    starts = {kind: error(time_grid(schedule, steps, kind)) for kind in GRID_KINDS}
    start_kind = min(starts, key=starts.get)
    grid = time_grid(schedule, steps, start_kind)
    best = starts[start_kind]
    discrete = schedule.num_steps is not None
    u = _to_u(schedule, grid, rho)
    for sweep in range(sweeps):
        for j in range(1, steps):
            lo, hi = u[j + 1], u[j - 1]  # decreasing grid: neighbours bound point j
            if j == steps - 1 and float(schedule.sigma(grid[-1])) == 0.0:
                lo = max(lo, _to_u(schedule, torch.tensor([1.0 if discrete else 1e-3 * schedule.t_max],
                                                          dtype=torch.float64), rho)[0])
            step = 0.5 ** (sweep + 1) * (hi - lo)
            for cand in (u[j] - step, u[j] + step):
                if not lo < cand < hi:
                    continue
                t_new = float(_from_u(schedule, np.array([cand]), rho)[0])
                if discrete:
                    t_new = float(round(t_new))
                if not float(grid[j + 1]) < t_new < float(grid[j - 1]) or t_new == float(grid[j]):
                    continue
                trial = grid.clone()
                trial[j] = t_new
                e = error(trial)
                if e < best:
                    best, grid = e, trial
                    u[j] = _to_u(schedule, trial[j:j + 1], rho)[0]
    check_grid(schedule, grid)
    return OptimisedGrid(grid, best, starts[start_kind], start_kind, runs)


def optimised_stochastic_grid(schedule: NoiseSchedule, gamma, steps: int, *,
                              data_range: tuple[Tensor | float, Tensor | float] | None = None) -> Tensor:
    """Analytic-DPM's ELBO-optimal K-step trajectory from a Γ table (Bao et al. 2022, §4; discrete schedules)."""
    from .variances import optimal_trajectory

    return optimal_trajectory(schedule, gamma, steps, data_range=data_range)
