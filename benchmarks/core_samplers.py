"""Core samplers with the exact score: error versus NFE for every sciddpm solver × time grid, beside diffusers'
best solvers in the same run (issue 14), and each sampler's own overhead per step.

Problems (exact ε from ``sciddpm.oracle.GaussianMixture``; schedule: discrete linear, 1000 steps, β 1e-4 → 0.02,
so the target q_{t_min} = q_0 is the mixture itself):

- ``mix2d``: 3 components in 2-D, weights (0.5, 0.3, 0.2), correlated full covariances (``mixture_2d``);
- ``mix32d``: 3 components in 32-D, means 1.5·N(0, I), diagonal variances U(0.05, 0.5), seed 32 (``mixture_32d``);
- ``grid25``: 25 well-separated narrow modes in 2-D: means on the 5 × 5 grid {−4, −2, 0, 2, 4}², isotropic
  std 0.05 (40 standard deviations apart), weights ∝ 1 + (k mod 3) (``mixture_grid25``);
- ``aniso64``: 4 components in 64-D with anisotropic full covariances Q diag(λ) Qᵀ, λ log-uniform in
  [1e-3, 1] (condition number up to 1000), Q a random rotation, means 2·N(0, I), seed 64 (``mixture_aniso64``).

At NFE 5, 8, 10, 15, 20, 50: every deterministic sciddpm solver (DDIM η = 0, Heun with K = ⌈NFE/2⌉, DPM-Solver++
2M/3M, UniPC bh1/bh2 orders 2–3) on every grid (uniform, quadratic, logsnr, karras, and the optimised grid of
``sciddpm.grid_opt`` for NFE ≤ 20, optimised on 256 other prior draws), the stochastic samplers (DDPM β̃, DDPM
with Analytic-DPM variances on its ELBO-optimal trajectory, Euler–Maruyama, PC) on the uniform grid, rk45 at three
tolerances, and diffusers' UniPC (bh1/bh2, orders 2–3), DPM-Solver++ (2M/3M, default trailing, Karras and Lu
spacing), DEIS (order 3) and DDIM, all from the same x_T with the same exact ε. Metrics: sliced-W2 to an exact
sample (256 projections) with the noise floor, and for deterministic solvers the pathwise error E‖x − x*(x_T)‖
against the exact ODE endpoint x* of the same x_T (RK45 at rtol = atol = 1e-7 with per-sample error control).

Usage: ``python benchmarks/core_samplers.py [--smoke] [--workers 2] [--device cpu]``
"""
from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._report import RESULTS_DIR, write_results  # noqa: E402
from sciddpm import samplers as S  # noqa: E402
from sciddpm.objectives import EpsFn  # noqa: E402
from sciddpm.oracle import GaussianMixture, sliced_wasserstein2  # noqa: E402
from sciddpm.schedules import LinearSchedule, NoiseSchedule  # noqa: E402
from sciddpm.spaces import DenseSpace  # noqa: E402
from sciddpm.variances import optimal_trajectory  # noqa: E402

F64 = torch.float64


# ==================================================================================================
# Problems
# ==================================================================================================
def _rotated_cov(angle: float, eigenvalues: tuple[float, float]) -> Tensor:
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]], dtype=F64)
    return rot @ torch.diag(torch.tensor(eigenvalues, dtype=F64)) @ rot.T


def mixture_2d() -> GaussianMixture:
    """The fixed 2-D mixture (see the module docstring)."""
    return GaussianMixture(
        torch.tensor([0.5, 0.3, 0.2]),
        torch.tensor([[-1.5, 0.5], [1.5, 1.0], [0.5, -1.5]]),
        torch.stack([_rotated_cov(0.5, (0.5, 0.1)), _rotated_cov(-0.8, (0.3, 0.05)), _rotated_cov(1.2, (0.2, 0.6))]),
    )


def mixture_grid25() -> GaussianMixture:
    """25 narrow modes (std 0.05) on the 5 × 5 grid {−4, −2, 0, 2, 4}², weights ∝ 1 + (k mod 3)."""
    centres = torch.tensor([[x, y] for x in (-4.0, -2.0, 0.0, 2.0, 4.0) for y in (-4.0, -2.0, 0.0, 2.0, 4.0)], dtype=F64)
    weights = torch.tensor([1.0 + (k % 3) for k in range(25)], dtype=F64)
    return GaussianMixture(weights, centres, torch.full((25, 2), 0.05**2, dtype=F64), diagonal=True)


def mixture_aniso64() -> GaussianMixture:
    """4 components in 64-D: means 2·N(0, I), covariances Q diag(λ) Qᵀ with λ log-uniform in [1e-3, 1] and Q the
    orthogonal factor of a Gaussian matrix, all from ``torch.Generator().manual_seed(64)``."""
    g = torch.Generator().manual_seed(64)
    d, k = 64, 4
    means = 2.0 * torch.randn((k, d), generator=g, dtype=F64)
    covs = []
    for _ in range(k):
        q, _ = torch.linalg.qr(torch.randn((d, d), generator=g, dtype=F64))
        lam = 10 ** (-3 * torch.rand(d, generator=g, dtype=F64))
        cov = q @ torch.diag(lam) @ q.T
        covs.append(0.5 * (cov + cov.T))
    return GaussianMixture(torch.tensor([0.4, 0.3, 0.2, 0.1]), means, torch.stack(covs))


PROBLEMS = {"mix2d": mixture_2d, "mix32d": lambda: mixture_32d(), "grid25": mixture_grid25, "aniso64": mixture_aniso64}


def mixture_32d() -> GaussianMixture:
    """The fixed 32-D diagonal mixture (see the module docstring)."""
    g = torch.Generator().manual_seed(32)
    means = 1.5 * torch.randn((3, 32), generator=g, dtype=F64)
    variances = 0.05 + 0.45 * torch.rand((3, 32), generator=g, dtype=F64)
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, variances, diagonal=True)


# ==================================================================================================
# Measurement helpers
# ==================================================================================================
class TimedEps:
    """Wraps an ε-function and accumulates the wall time spent inside it and its number of calls."""

    def __init__(self, eps_fn: EpsFn) -> None:
        self.eps_fn, self.seconds, self.calls = eps_fn, 0.0, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        start = time.perf_counter()
        out = self.eps_fn(x, t)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


class SW2Reference:
    """``sliced_wasserstein2(x, ref, P, Generator().manual_seed(seed))`` with θ and the reference's sorted
    projections computed once and numpy sorting (checked against the oracle's function at start-up)."""

    def __init__(self, ref: Tensor, num_projections: int = 256, seed: int = 7) -> None:
        theta = torch.randn((ref.shape[1], num_projections), dtype=F64, generator=torch.Generator().manual_seed(seed))
        self.theta = (theta / theta.norm(dim=0, keepdim=True)).numpy()
        self.ref_sorted = np.sort(ref.to(F64).numpy() @ self.theta, axis=0)

    def __call__(self, x: Tensor) -> float:
        px = np.sort(x.detach().to(F64).numpy() @ self.theta, axis=0)
        return float(np.sqrt(((px - self.ref_sorted) ** 2).mean()))


def _check_sw2_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(500, 3, generator=g, dtype=F64), torch.randn(500, 3, generator=g, dtype=F64) + 0.2
    expected = float(sliced_wasserstein2(x, y, 64, torch.Generator().manual_seed(3)))
    got = SW2Reference(y, 64, seed=3)(x)
    if not math.isclose(got, expected, rel_tol=1e-12):
        raise RuntimeError(f"SW2Reference disagrees with oracle.sliced_wasserstein2: {got} vs {expected}")


# ==================================================================================================
# Runs
# ==================================================================================================
#: (row label, sampler name, kwargs) of the deterministic sciddpm solvers
ODE_SOLVERS = [
    ("ddim", "ddim", {"eta": 0.0}),
    ("heun", "heun", {}),
    ("dpm++2m", "dpm_solver_pp_2m", {}),
    ("dpm++3m", "dpm_solver_pp_3m", {}),
    ("unipc bh1 p2", "unipc", {"variant": "bh1", "order": 2}),
    ("unipc bh1 p3", "unipc", {"variant": "bh1", "order": 3}),
    ("unipc bh2 p2", "unipc", {"variant": "bh2", "order": 2}),
    ("unipc bh2 p3", "unipc", {"variant": "bh2", "order": 3}),
]
#: (row label, sampler name, kwargs) of the stochastic ones (uniform grid)
SDE_SOLVERS = [
    ("ddpm (beta_tilde)", "ddpm", {"variance": "beta_tilde"}),
    ("euler_maruyama", "euler_maruyama", {}),
    ("pc (1 corrector)", "pc", {"corrector_steps": 1}),
]
GRIDS = ["uniform", "quadratic", "logsnr", "karras", "optimised"]


def steps_for(name: str, nfe: int) -> int:
    """Grid intervals K that give ≈ ``nfe`` evaluations on a discrete schedule (ending at σ = 0)."""
    if name == "heun":
        return (nfe + 1) // 2  # 2K − 1 evaluations
    if name == "pc":
        return max(1, nfe // 2)  # K (1 + 1 corrector) evaluations
    return nfe


def timed_run(fn: Callable[..., Any], eps: EpsFn, *args: Any, **kwargs: Any) -> tuple[Any, int, float, float]:
    """(output, NFE, wall seconds, seconds inside ε) for one sampler call ``fn(timed_eps, *args, **kwargs)``."""
    timed = TimedEps(eps)
    start = time.perf_counter()
    out = fn(timed, *args, **kwargs)
    return out, timed.calls, time.perf_counter() - start, timed.seconds


def _diffusers_available() -> str | None:
    try:
        import diffusers  # noqa: F401
    except Exception:  # not installed (or broken): reported in the notes
        return None
    return diffusers.__version__


#: (row label, scheduler class name, constructor kwargs) of diffusers' solvers
DIFFUSERS = [
    ("diffusers DDIM", "DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}),
    ("diffusers DPM++2M", "DPMSolverMultistepScheduler", {"solver_order": 2}),
    ("diffusers DPM++2M karras", "DPMSolverMultistepScheduler", {"solver_order": 2, "use_karras_sigmas": True}),
    ("diffusers DPM++2M lu", "DPMSolverMultistepScheduler", {"solver_order": 2, "use_lu_lambdas": True}),
    ("diffusers DPM++3M", "DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("diffusers DPM++3M karras", "DPMSolverMultistepScheduler", {"solver_order": 3, "use_karras_sigmas": True}),
    ("diffusers DPM++3M lu", "DPMSolverMultistepScheduler", {"solver_order": 3, "use_lu_lambdas": True}),
    ("diffusers UniPC bh1 p2", "UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh1",
                                                                  "final_sigmas_type": "sigma_min"}),
    ("diffusers UniPC bh1 p3", "UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh1",
                                                                  "final_sigmas_type": "sigma_min"}),
    ("diffusers UniPC bh2 p2", "UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}),
    ("diffusers UniPC bh2 p3", "UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh2"}),
    ("diffusers UniPC bh2 p3 karras", "UniPCMultistepScheduler", {"solver_order": 3, "solver_type": "bh2",
                                                                   "use_karras_sigmas": True}),
    ("diffusers DEIS p3", "DEISMultistepScheduler", {"solver_order": 3}),
]


def make_diffusers(cls_name: str, options: dict[str, Any], schedule: LinearSchedule) -> Any:
    """A diffusers scheduler on our β table with trailing timesteps (diffusers' τ is our t = τ + 1, so trailing
    τ = 999, … is our uniform grid 1000, …), lower_order_final, and a final step to σ = 0 where it has the option."""
    import diffusers

    cls = getattr(diffusers, cls_name)
    kwargs: dict[str, Any] = {"num_train_timesteps": schedule.num_steps, "trained_betas": schedule.betas.numpy(),
                              "prediction_type": "epsilon", "timestep_spacing": "trailing", **options}
    params = inspect.signature(cls.__init__).parameters
    if "lower_order_final" in params:
        kwargs["lower_order_final"] = True
    if "final_sigmas_type" in params:
        kwargs.setdefault("final_sigmas_type", "zero")
    if "algorithm_type" in params and cls_name == "DPMSolverMultistepScheduler":
        kwargs["algorithm_type"] = "dpmsolver++"
    return cls(**kwargs)


def run_diffusers(cls_name: str, options: dict[str, Any], schedule: LinearSchedule, x_T: Tensor, eps: EpsFn,
                  steps: int) -> tuple[Tensor, int, float, float]:
    """Drive a diffusers scheduler with the exact ε. Schedulers with a σ table (``sched.sigmas``, ς = σ/α in our
    notation) get ε at the time whose ς is the scheduler's own σ for that step, so the ε is exact for the state
    the scheduler believes it is in (Karras/Lu spacings have σ's between integer steps); DDIM gets τ + 1."""
    sched = make_diffusers(cls_name, options, schedule)
    timed = TimedEps(eps)
    start = time.perf_counter()
    sched.set_timesteps(steps)
    sigmas = getattr(sched, "sigmas", None)
    x = x_T.clone()
    n = x.shape[0]
    for i, tau in enumerate(sched.timesteps):
        if sigmas is not None:
            t = schedule.time_at_varsigma(torch.as_tensor(float(sigmas[i]), dtype=F64))
        else:
            t = torch.tensor(float(tau) + 1.0, dtype=F64)
        e = timed(x, t.expand(n))
        x = sched.step(e, tau, x).prev_sample
    return x, timed.calls, time.perf_counter() - start, timed.seconds


# ==================================================================================================
def benchmark_problem(problem: str, n: int, nfes: list[int], rk45_tols: list[float], opt_max_nfe: int,
                      diffusers_version: str | None, device: str, log: Callable[[str], None]) -> tuple[list[dict], dict]:
    from sciddpm.grid_opt import ode_reference, optimise_ode_grid
    from sciddpm.variances import estimate_gamma, variance_table

    mixture = PROBLEMS[problem]()
    schedule = LinearSchedule(1000)
    space = DenseSpace((n, mixture.dim), device=device)
    eps = mixture.eps_fn(schedule)
    sw2 = SW2Reference(mixture.sample(n, torch.Generator().manual_seed(1))[0])  # q_{t_min} = q_0 (t_min = 0)
    floors = [sw2(mixture.sample(n, torch.Generator().manual_seed(100 + i))[0]) for i in range(3)]
    floor = float(np.mean(floors))
    rows: list[dict] = [{"problem": problem, "sampler": "exact (noise floor)", "grid": "", "nfe": 0,
                         "sliced_w2": floor, "pathwise": None, "overhead_ms_per_step": None}]
    log(f"[{problem}] n={n}, noise floor SW2 {floor:.4f}")
    x_T = S.prior_sample(schedule, space, torch.Generator().manual_seed(0), F64)
    t0 = time.perf_counter()
    ref = ode_reference(eps, schedule, space, x_T, rtol=1e-7)
    log(f"[{problem}] exact ODE endpoints in {time.perf_counter() - t0:.0f}s")
    opt_space = DenseSpace((256, mixture.dim), device=device)
    opt_x = S.prior_sample(schedule, opt_space, torch.Generator().manual_seed(5), F64)
    opt_ref = ode_reference(eps, schedule, opt_space, opt_x, rtol=1e-7)

    def add(label: str, grid: str, nfe: int, steps: int, sample: Tensor, wall: float, inside: float,
            deterministic: bool) -> None:
        path = float((sample - ref).norm(dim=1).mean()) if deterministic else None
        row = {"problem": problem, "sampler": label, "grid": grid, "nfe": nfe, "sliced_w2": sw2(sample.cpu()),
               "pathwise": path, "overhead_ms_per_step": 1e3 * (wall - inside) / steps}
        rows.append(row)
        log(f"[{problem}] {label:30s} {grid:10s} nfe={nfe:4d} sw2={row['sliced_w2']:.4f} "
            f"path={path if path is None else round(path, 4)} overhead={row['overhead_ms_per_step']:.3f} ms/step")

    opt_info: dict[str, Any] = {}
    for label, name, kwargs in ODE_SOLVERS:
        fn = S.get_sampler(name)
        for target in nfes:
            steps = steps_for(name, target)
            for kind in GRIDS:
                if kind == "optimised":
                    if target > opt_max_nfe or steps < 2:
                        continue
                    res = optimise_ode_grid(name, eps, schedule, opt_space, opt_x, steps, reference=opt_ref,
                                            sweeps=3, options=kwargs)
                    grid = res.grid
                    opt_info[f"{label} K={steps}"] = {"grid": grid.tolist(), "start_kind": res.start_kind,
                                                      "opt_error": res.error, "start_error": res.start_error,
                                                      "runs": res.runs}
                else:
                    grid = S.time_grid(schedule, steps, kind)
                out, nfe, wall, inside = timed_run(fn, eps, schedule, space, x_T, grid, **kwargs)
                add(label, kind, nfe, steps, out.sample, wall, inside, True)
    gamma = estimate_gamma(eps, schedule, [(mixture.sample(2000, torch.Generator().manual_seed(3))[0],
                                            DenseSpace((2000, mixture.dim)))],
                           torch.arange(1, 1001, 10, dtype=F64), generator=torch.Generator().manual_seed(4))
    for target in nfes:
        for label, name, kwargs in SDE_SOLVERS:
            steps = steps_for(name, target)
            out, nfe, wall, inside = timed_run(S.get_sampler(name), eps, schedule, space, x_T,
                                               S.time_grid(schedule, steps), generator=torch.Generator().manual_seed(11),
                                               **kwargs)
            add(label, "uniform", nfe, steps, out.sample, wall, inside, False)
        traj = optimal_trajectory(schedule, gamma, target)
        table = variance_table(schedule, traj, gamma)
        out, nfe, wall, inside = timed_run(S.ddpm, eps, schedule, space, x_T, traj, variance=table,
                                           generator=torch.Generator().manual_seed(11))
        add("ddpm (analytic)", "optimised", nfe, target, out.sample, wall, inside, False)
    for tol in rk45_tols:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out, nfe, wall, inside = timed_run(S.probability_flow_rk45, eps, schedule, space, x_T,
                                               S.time_grid(schedule, 1), rtol=tol, atol=tol)
        label = f"rk45 (tol={tol:g}{', WARNED' if caught else ''})"
        add(label, "adaptive", out.info["nfe_solve"], nfe, out.sample, wall, inside, True)
    cross_check: dict[str, float] = {}
    if diffusers_version is not None:
        for label, cls_name, options in DIFFUSERS:
            for target in nfes:
                sample, nfe, wall, inside = run_diffusers(cls_name, options, schedule, x_T, eps, target)
                add(label, "", nfe, target, sample, wall, inside, True)
        for label, name, kwargs, d_cls, d_opt in (
                ("ddim", "ddim", {}, "DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}),
                ("dpm++2m", "dpm_solver_pp_2m", {}, "DPMSolverMultistepScheduler", {"solver_order": 2}),
                ("dpm++3m", "dpm_solver_pp_3m", {}, "DPMSolverMultistepScheduler", {"solver_order": 3}),
                ("unipc bh2 p3", "unipc", {"variant": "bh2", "order": 3}, "UniPCMultistepScheduler",
                 {"solver_order": 3, "solver_type": "bh2"}),
                ("unipc bh2 p2", "unipc", {"variant": "bh2", "order": 2}, "UniPCMultistepScheduler",
                 {"solver_order": 2, "solver_type": "bh2"})):
            k = 10  # same algorithm, same (uniform = trailing) grid, same x_T: differences are float32 tables
            theirs = run_diffusers(d_cls, d_opt, schedule, x_T, eps, k)[0]
            mine = S.get_sampler(name)(eps, schedule, space, x_T, S.time_grid(schedule, k), **kwargs).sample
            cross_check[f"{label} vs diffusers at K={k}: max |dx|"] = float((theirs - mine).abs().max())
    return rows, {"noise_floor_draws": floors, "cross_check": cross_check, "optimised_grids": opt_info,
                  "gamma_gap_noise_end": 1 - float(gamma.gamma[-1]), "gamma_stderr_noise_end": float(gamma.stderr[-1])}


def _worker(problem: str, n: int, nfes: list[int], rk45_tols: list[float], opt_max_nfe: int,
            diffusers_version: str | None, device: str) -> tuple[list[dict], dict]:
    """One problem in its own process (the problems use the machine's cores in parallel), on one thread."""
    torch.set_num_threads(1)
    return benchmark_problem(problem, n, nfes, rk45_tols, opt_max_nfe, diffusers_version, device,
                             lambda msg: print(msg, flush=True))


def summary(rows: list[dict], problems: list[str], nfes: list[int]) -> list[dict]:
    """Per problem and NFE: sciddpm's best and the best other library's, by pathwise error and by sliced-W2 above
    the noise floor (deterministic rows; rk45 and the stochastic samplers are in all_rows)."""
    out = []
    for p in problems:
        floor = next(r["sliced_w2"] for r in rows if r["problem"] == p and r["nfe"] == 0)
        for nfe in nfes:
            cand = [r for r in rows if r["problem"] == p and r["nfe"] == nfe and r["pathwise"] is not None
                    and not r["sampler"].startswith("rk45")]
            ours = [r for r in cand if not r["sampler"].startswith("diffusers")]
            theirs = [r for r in cand if r["sampler"].startswith("diffusers")]
            if not ours:
                continue
            row: dict[str, Any] = {"problem": p, "nfe": nfe}
            for metric, key in (("pathwise", lambda r: r["pathwise"]), ("sw2_above_floor",
                                                                         lambda r: max(r["sliced_w2"] - floor, 0.0))):
                best_ours = min(ours, key=key)
                row[f"sciddpm best ({metric})"] = f"{best_ours['sampler']} / {best_ours['grid']}"
                row[f"sciddpm {metric}"] = key(best_ours)
                if theirs:
                    best_theirs = min(theirs, key=key)
                    row[f"diffusers best ({metric})"] = best_theirs["sampler"].replace("diffusers ", "")
                    row[f"diffusers {metric}"] = key(best_theirs)
                    row[f"ratio {metric}"] = key(best_ours) / max(key(best_theirs), 1e-12)
            out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run into a temporary folder")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where to write the results (default benchmarks/results; a temp folder with --smoke)")
    parser.add_argument("--workers", type=int, default=2, help="problems run in parallel processes (default 2)")
    parser.add_argument("--device", default="cpu", help="torch device of the states (the oracle runs there too)")
    parser.add_argument("--problems", default=",".join(PROBLEMS), help="comma-separated subset of the problems")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    _check_sw2_reference()
    diffusers_version = _diffusers_available()
    problems = [p for p in args.problems.split(",") if p]
    unknown = sorted(set(problems) - set(PROBLEMS))
    if unknown:
        raise SystemExit(f"unknown problem(s) {unknown}; expected {sorted(PROBLEMS)}")
    if args.smoke:
        sizes = {"mix2d": 300, "mix32d": 200, "grid25": 300, "aniso64": 100}
        nfes, tols, opt_max = [5, 10], [1e-3], 5
    else:
        sizes = {"mix2d": 10_000, "mix32d": 4_000, "grid25": 10_000, "aniso64": 3_000}
        nfes, tols, opt_max = [5, 8, 10, 15, 20, 50], [3e-2, 1e-2, 1e-3], 20
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    jobs = [(p, sizes[p], nfes, tols, opt_max, diffusers_version, args.device) for p in problems]
    if args.workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn")) as pool:
            results = list(pool.map(_worker, *zip(*jobs)))
    else:
        results = [_worker(*job) for job in jobs]
    rows: list[dict] = []
    extra: dict[str, Any] = {"samples": {p: sizes[p] for p in problems}, "nfe_targets": nfes,
                             "rk45_tolerances": tols, "diffusers": diffusers_version or "not installed"}
    for (problem, *_), (problem_rows, info) in zip(jobs, results):
        rows += problem_rows
        extra[f"{problem}_info"] = info
    extra["runtime_s"] = round(time.perf_counter() - start, 1)
    extra["load_average_1min"] = {"start": load_before, "end": os.getloadavg()[0]}
    extra["all_rows"] = rows
    notes = _notes(rows, problems, nfes, extra)
    results_dir = args.results_dir or (Path(tempfile.mkdtemp(prefix="core_samplers_smoke_")) if args.smoke
                                       else RESULTS_DIR)
    write_results("core_samplers", summary(rows, problems, nfes), notes=notes, extra=extra, results_dir=results_dir,
                  title="Core samplers with the exact score: sciddpm vs diffusers, error vs NFE, every solver × grid")


def _grid_table(rows: list[dict], problems: list[str], nfes: list[int]) -> str:
    """Markdown: for each solver and grid, the pathwise error at each NFE ≤ 20 relative to the best grid for that
    solver, problem and NFE, as the geometric mean over problems (1.00 = always the best grid)."""
    lines = ["| solver | " + " | ".join(GRIDS) + " |", "|---" * (len(GRIDS) + 1) + "|"]
    for label, _, _ in ODE_SOLVERS:
        cells = []
        for kind in GRIDS:
            ratios = []
            for p in problems:
                for nfe in [k for k in nfes if k <= 20]:
                    sel = {r["grid"]: r["pathwise"] for r in rows if r["problem"] == p and r["nfe"] in (nfe, nfe - 1)
                           and r["sampler"] == label and r["pathwise"] is not None}
                    if kind in sel and sel:
                        ratios.append(sel[kind] / min(sel.values()))
            cells.append(f"{math.exp(np.mean(np.log(ratios))):.2f}" if ratios else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _notes(rows: list[dict], problems: list[str], nfes: list[int], extra: dict[str, Any]) -> str:
    """The notes under the summary table: set-up, the per-grid table, rk45 and the stochastic samplers, cross-checks."""
    def best(p: str, nfe: int, pred: Callable[[dict], bool]) -> str:
        sel = [r for r in rows if r["problem"] == p and r["nfe"] == nfe and pred(r)]
        if not sel:
            return "–"
        r = min(sel, key=lambda r: r["sliced_w2"])
        return f"{r['sampler']} {r['sliced_w2']:.3f}"

    sde = ["| problem | nfe | best stochastic (SW2) | best deterministic sciddpm (SW2) | noise floor |", "|---|---|---|---|---|"]
    for p in problems:
        floor = next(r["sliced_w2"] for r in rows if r["problem"] == p and r["nfe"] == 0)
        for nfe in nfes:
            sde.append(f"| {p} | {nfe} | {best(p, nfe, lambda r: r['pathwise'] is None)} | "
                       f"{best(p, nfe, lambda r: r['pathwise'] is not None and not r['sampler'].startswith(('diffusers', 'rk45')))}"
                       f" | {floor:.3f} |")
    rk = [f"{r['problem']}: {r['sampler']} NFE {r['nfe']} SW2 {r['sliced_w2']:.3f} pathwise {r['pathwise']:.3g}"
          for r in rows if r["sampler"].startswith("rk45")]
    cross = "; ".join(f"{p}: " + ", ".join(f"{k} = {v:.1e}" for k, v in extra[f"{p}_info"]["cross_check"].items())
                      for p in problems)
    gam = "; ".join(f"{p}: {extra[f'{p}_info']['gamma_gap_noise_end']:.2e} ± {extra[f'{p}_info']['gamma_stderr_noise_end']:.1e}"
                    for p in problems)
    return f"""
Summary: per problem and NFE, sciddpm's best deterministic solver × grid and the best diffusers solver, by mean
pathwise error E‖x − x*(x_T)‖ against the exact ODE endpoint of the same x_T, and by sliced-W2 above the noise
floor (the exact-sample floor of the problem); ratio = sciddpm / diffusers (goal ≤ 0.8 for NFE 5–20). Every
row (each solver × grid × NFE, the stochastic samplers, rk45, each diffusers solver, with overhead per step) is in
core_samplers.json under all_rows. Samples: {extra['samples']}; same x_T (seed 0) for every solver; stochastic
samplers noise seed 11. diffusers {extra['diffusers']} from a side venv (same torch), schedulers on our β table
with trailing timesteps, lower_order_final, final step to σ = 0 (DEIS has no such option, and UniPC bh1 gives NaN
with it (B(h) = −h = −∞ on that step): both end at t = 1, ς = 0.01, "sigma_min");
schedulers with a σ table get ε at the time of their own σ (Karras/Lu spacings). Optimised grids
(sciddpm.grid_opt, 3 coordinate-descent sweeps) are fitted on 256 *other* prior draws (seed 5) against their exact
ODE endpoints, for NFE ≤ 20; the rows measure them on the benchmark's x_T.

Pathwise error of each grid relative to the best grid for the same solver, problem and NFE (geometric mean over
problems and NFE 5–20; Heun's NFE is 2K − 1):

{_grid_table(rows, problems, nfes)}

Stochastic samplers (uniform grid; ddpm (analytic) = Analytic-DPM variances from Γ estimated by the control-variate
estimator with the exact ε, on the ELBO-optimal trajectory) against the deterministic solvers, by SW2:

{chr(10).join(sde)}

rk45 (per-sample error control; WARNED = its tolerance check fired; NFE without the check solve):
{'; '.join(rk)}.

Cross-checks, same algorithm and grid in sciddpm and diffusers (float32 tables in diffusers): {cross}.
1 − Γ at the noise end from estimate_gamma (2000 samples): {gam}.
Total runtime {extra['runtime_s']:.0f} s; 1-minute load average {extra['load_average_1min']['start']:.1f} →
{extra['load_average_1min']['end']:.1f} (shared machine: compare overheads within a problem).
"""


if __name__ == "__main__":
    main()
