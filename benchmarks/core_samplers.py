"""Core samplers with the exact score: sliced-W2 error versus NFE, and each sampler's own overhead per step.

Problems (exact ε from ``sciddpm.oracle.GaussianMixture``; schedule: discrete linear, 1000 steps, β 1e-4 → 0.02,
so the target q_{t_min} = q_0 is the mixture itself):

- ``mix2d``: 3 components in 2-D, weights (0.5, 0.3, 0.2), means (−1.5, 0.5), (1.5, 1.0), (0.5, −1.5), full
  covariances R(θ) diag(λ) R(θ)ᵀ with (θ, λ) = (0.5, (0.5, 0.1)), (−0.8, (0.3, 0.05)), (1.2, (0.2, 0.6))
  (the 2-D problem of ``tests/test_samplers.py``);
- ``mix32d``: 3 components in 32-D, weights (0.5, 0.3, 0.2), means 1.5·N(0, I), diagonal variances
  U(0.05, 0.5), drawn from ``torch.Generator().manual_seed(32)`` (means first, then variances).

For every sampler at NFE ≈ 10, 20, 50, 100, 1000 (Heun: K = ⌈NFE/2⌉ steps, 2K − 1 evaluations; PC: K = NFE/2
with one corrector step; rk45: adaptive, at a few tolerances, its own NFE) the row gives the sliced-W2 error
(256 projections, shared across rows) against an exact sample of the same size, and the sampler's own overhead
per step: (wall time − time inside the ε-function) / steps, measured with a timing wrapper around the oracle's
ε (for rk45 "steps" is its NFE). All samplers start from the same x_T. The noise floor row is the SW2 between
independent exact samples of the same size (mean over 3 draws). If ``diffusers`` is importable, its
DDIMScheduler and DPMSolverMultistepScheduler (dpmsolver++, order 2, trailing timesteps = our uniform grid)
run with the same ε and x_T.

Usage: ``python benchmarks/core_samplers.py [--quick] [--threads 1]``
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._report import write_results  # noqa: E402
from sciddpm import samplers as S  # noqa: E402
from sciddpm.objectives import EpsFn  # noqa: E402
from sciddpm.oracle import GaussianMixture, sliced_wasserstein2  # noqa: E402
from sciddpm.schedules import LinearSchedule, NoiseSchedule  # noqa: E402
from sciddpm.spaces import DenseSpace  # noqa: E402

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
# Sampler runs
# ==================================================================================================
#: (row label, sampler name, kwargs, stochastic?)
FIXED_STEP = [
    ("ddpm (beta)", "ddpm", {"variance": "beta"}, True),
    ("ddpm (beta_tilde)", "ddpm", {"variance": "beta_tilde"}, True),
    ("ddim (eta=0)", "ddim", {"eta": 0.0}, False),
    ("ddim (eta=1)", "ddim", {"eta": 1.0}, True),
    ("euler_maruyama", "euler_maruyama", {}, True),
    ("pc (1 corrector)", "pc", {"corrector_steps": 1}, True),
    ("heun (logsnr grid)", "heun", {}, False),
    ("dpm_solver_pp_2m", "dpm_solver_pp_2m", {}, False),
]


def steps_for(name: str, nfe: int) -> int:
    """Grid intervals K that give ≈ ``nfe`` evaluations on a discrete schedule (ending at σ = 0)."""
    if name == "heun":
        return (nfe + 1) // 2  # 2K − 1 evaluations
    if name == "pc":
        return max(1, nfe // 2)  # K (1 + 1 corrector) evaluations
    return nfe


def run_fixed(name: str, kwargs: dict[str, Any], stochastic: bool, schedule: NoiseSchedule, space: DenseSpace,
              x_T: Tensor, eps: EpsFn, steps: int, seed: int) -> tuple[Tensor, int, float, float]:
    """(sample, nfe, total wall seconds, seconds inside ε) for one fixed-step sampler run."""
    grid = S.time_grid(schedule, steps, "logsnr" if name == "heun" else "uniform")
    timed = TimedEps(eps)
    extra = {"generator": torch.Generator().manual_seed(seed)} if stochastic else {}
    start = time.perf_counter()
    out = S.get_sampler(name)(timed, schedule, space, x_T, grid, **kwargs, **extra)
    wall = time.perf_counter() - start
    assert out.nfe == timed.calls
    return out.sample, out.nfe, wall, timed.seconds


def run_rk45(schedule: NoiseSchedule, space: DenseSpace, x_T: Tensor, eps: EpsFn, tol: float
             ) -> tuple[Tensor, int, float, float]:
    timed = TimedEps(eps)
    start = time.perf_counter()
    out = S.probability_flow_rk45(timed, schedule, space, x_T, S.time_grid(schedule, 1), rtol=tol, atol=tol)
    wall = time.perf_counter() - start
    return out.sample, out.nfe, wall, timed.seconds


def _diffusers_available() -> str | None:
    try:
        import diffusers  # noqa: F401
    except Exception:  # not installed (or broken): reported in the notes
        return None
    return diffusers.__version__


def run_diffusers(kind: str, schedule: LinearSchedule, x_T: Tensor, eps: EpsFn, steps: int
                  ) -> tuple[Tensor, int, float, float]:
    """Drive diffusers' DDIMScheduler (η = 0) or DPMSolverMultistepScheduler (dpmsolver++, 2M) with the exact ε.

    Both get our β table (``trained_betas``) and ``timestep_spacing="trailing"``: diffusers' timestep τ is our
    t = τ + 1 (its alphas_cumprod[τ] is our ᾱ_{τ+1}), so trailing timesteps 999, …, 1000/K − 1 are our uniform
    grid 1000, …, 1000/K, and both schedulers finish at ᾱ = 1 (set_alpha_to_one / final_sigmas_type="zero").
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    betas = schedule.betas.numpy()
    if kind == "ddim":
        sched = DDIMScheduler(num_train_timesteps=schedule.num_steps, trained_betas=betas, clip_sample=False,
                              set_alpha_to_one=True, prediction_type="epsilon", timestep_spacing="trailing")
    else:
        sched = DPMSolverMultistepScheduler(num_train_timesteps=schedule.num_steps, trained_betas=betas,
                                            algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon",
                                            lower_order_final=True, final_sigmas_type="zero",
                                            timestep_spacing="trailing")
    timed = TimedEps(eps)
    start = time.perf_counter()
    sched.set_timesteps(steps)
    x = x_T.clone()
    n = x.shape[0]
    for tau in sched.timesteps:
        e = timed(x, torch.full((n,), float(tau) + 1.0, dtype=F64))
        x = sched.step(e, tau, x).prev_sample
    wall = time.perf_counter() - start
    return x, timed.calls, wall, timed.seconds


# ==================================================================================================
def benchmark_problem(problem: str, mixture: GaussianMixture, n: int, nfes: list[int], rk45_tols: list[float],
                      diffusers_version: str | None, log: Callable[[str], None]) -> tuple[list[dict], dict]:
    schedule = LinearSchedule(1000)
    space = DenseSpace((n, mixture.dim))
    eps = mixture.eps_fn(schedule)
    sw2 = SW2Reference(mixture.sample(n, torch.Generator().manual_seed(1))[0])  # q_{t_min} = q_0 (t_min = 0)
    floors = [sw2(mixture.sample(n, torch.Generator().manual_seed(100 + i))[0]) for i in range(3)]
    rows: list[dict] = [{"problem": problem, "sampler": "exact (noise floor)", "nfe": 0, "steps": 0,
                         "sliced_w2": float(np.mean(floors)), "overhead_ms_per_step": None}]
    log(f"[{problem}] n={n}, noise floor SW2 {np.mean(floors):.4f} (draws {', '.join(f'{f:.4f}' for f in floors)})")
    x_T = S.prior_sample(schedule, space, torch.Generator().manual_seed(0), F64)

    def add(label: str, nfe: int, steps: int, sample: Tensor, wall: float, inside: float) -> None:
        row = {"problem": problem, "sampler": label, "nfe": nfe, "steps": steps, "sliced_w2": sw2(sample),
               "overhead_ms_per_step": 1e3 * (wall - inside) / steps}
        rows.append(row)
        log(f"[{problem}] {label:42s} nfe={nfe:5d} sw2={row['sliced_w2']:.4f} "
            f"overhead={row['overhead_ms_per_step']:.3f} ms/step (wall {wall:.1f}s, eps {inside:.1f}s)")

    cross_check: dict[str, float] = {}
    for label, name, kwargs, stochastic in FIXED_STEP:
        for target in nfes:
            steps = steps_for(name, target)
            sample, nfe, wall, inside = run_fixed(name, kwargs, stochastic, schedule, space, x_T, eps, steps, seed=11)
            add(label, nfe, steps, sample, wall, inside)
    for tol in rk45_tols:
        sample, nfe, wall, inside = run_rk45(schedule, space, x_T, eps, tol)
        add(f"rk45 (rtol=atol={tol:g})", nfe, nfe, sample, wall, inside)
    if diffusers_version is not None:
        for kind, label, ours in (("ddim", "diffusers DDIMScheduler (eta=0)", "ddim"),
                                  ("dpm", "diffusers DPMSolverMultistep (2M, dpmsolver++)", "dpm_solver_pp_2m")):
            for target in [k for k in nfes if k <= 100]:  # same algorithms as ours (cross-checked): skip 1000
                sample, nfe, wall, inside = run_diffusers(kind, schedule, x_T, eps, target)
                add(label, nfe, target, sample, wall, inside)
                if target == nfes[0]:  # same algorithm, same grid, same x_T: differences are float32 tables
                    mine = S.get_sampler(ours)(eps, schedule, space, x_T, S.time_grid(schedule, target)).sample
                    key = f"{label} vs sciddpm {ours} at K={target}: max |Δx|"
                    cross_check[key] = float((sample - mine).abs().max())
    return rows, {"noise_floor_draws": floors, "cross_check": cross_check}


def _worker(problem: str, n: int, nfes: list[int], rk45_tols: list[float], diffusers_version: str | None,
            threads: int) -> tuple[list[dict], dict]:
    """One problem in its own process (so the two problems use the two cores), on ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    mixture = mixture_2d() if problem == "mix2d" else mixture_32d()
    return benchmark_problem(problem, mixture, n, nfes, rk45_tols, diffusers_version,
                             lambda msg: print(msg, flush=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small run (few samples and NFEs), written as core_samplers_quick")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads per worker (default 1: see notes)")
    parser.add_argument("--workers", type=int, default=2, help="problems run in parallel processes (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    _check_sw2_reference()
    diffusers_version = _diffusers_available()
    if args.quick:
        config = {"mix2d": 2_000, "mix32d": 1_000}
        nfes, rk45_tols = [10, 20, 100], [1e-3]
    else:
        config = {"mix2d": 20_000, "mix32d": 8_000}
        nfes, rk45_tols = [10, 20, 50, 100, 1000], [1e-2, 1e-3, 1e-5]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    rows: list[dict] = []
    extra: dict[str, Any] = {"samples": config, "nfe_targets": nfes, "rk45_tolerances": rk45_tols,
                             "threads": args.threads, "workers": args.workers,
                             "diffusers": diffusers_version or "not installed"}
    jobs = [(problem, n, nfes, rk45_tols, diffusers_version, args.threads) for problem, n in config.items()]
    if args.workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=args.workers, mp_context=mp.get_context("spawn")) as pool:
            results = list(pool.map(_worker, *zip(*jobs)))
    else:
        results = [_worker(*job) for job in jobs]
    for (problem, *_), (problem_rows, info) in zip(jobs, results):
        rows += problem_rows
        extra[f"{problem}_info"] = info
    runtime = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    extra["runtime_s"] = round(runtime, 1)
    extra["load_average_1min"] = {"start": load_before, "end": load_after}
    cross = "; ".join(f"{p}: {k} = {v:.1e}" for p in config for k, v in extra[f"{p}_info"]["cross_check"].items())
    floor_txt = "; ".join(
        f"{p}: n = {n}, SW2 between independent exact samples {min(extra[f'{p}_info']['noise_floor_draws']):.4f}–"
        f"{max(extra[f'{p}_info']['noise_floor_draws']):.4f}" for p, n in config.items())
    notes = f"""
Exact ε from the Gaussian-mixture oracle; schedule LinearSchedule(1000) (β 1e-4 → 0.02), target q_0. Problems:
mix2d = 3-component 2-D mixture with weights (0.5, 0.3, 0.2) and correlated full covariances; mix32d = 3-component
32-D mixture, means 1.5·N(0, I) and diagonal variances U(0.05, 0.5) from seed 32 (details in the script's
docstring). Every sampler starts from the same x_T (seed 0); stochastic samplers use noise seed 11.

- sliced_w2: SW2 (256 projections, seed 7, shared by all rows) against an exact sample of the same size (seed 1).
  Noise floor ({floor_txt}): errors at that level are converged; only differences above the floor's spread mean
  anything. The deterministic samplers (DDIM η = 0, Heun, DPM-Solver++, rk45, diffusers) all push the same x_T
  forward, so at high NFE they converge to the SW2 of one and the same exact-like sample, which can sit anywhere
  in (or, in 32-D where a ±√(w(1−w)/n) fluctuation of the component counts moves mass between distant modes, above)
  the floor's 3-draw range; compare them with each other at low NFE, and with the stochastic samplers only
  through the floor.
- nfe: the sampler's own count. Heun runs on the log-SNR grid with K = ⌈NFE/2⌉ (2K − 1 evaluations, the last step
  into σ = 0 is Euler); PC is one corrector step per predictor step (snr 0.16), NFE = 2K; rk45 (scipy RK45 on the
  probability-flow ODE in EDM's variables) is adaptive and reports its own NFE; all other samplers use the uniform
  integer grid with K = NFE.
- overhead_ms_per_step: (wall − time inside the ε-function) / steps, with a timing wrapper around the oracle's ε
  (steps = K; for rk45 steps = NFE, so it is the overhead per evaluation including scipy's bookkeeping). It
  includes the sampler's own tensor arithmetic on the [n, D] state, so it grows with n·D. Measured with
  torch.set_num_threads({args.threads}) per problem, the {len(config)} problems in {args.workers} parallel
  process(es) (on this shared 2-core machine, 2 intra-op threads made small ops 5–10× slower when other jobs were
  running); 1-minute load average {load_before:.1f} at the start and {load_after:.1f} at the end (other jobs share
  the machine), so compare rows within a problem rather than absolute values. The stochastic samplers draw a
  fresh [n, D] float64 Gaussian every step (≈ 0.7 ms for 20000 × 2 and ≈ 4.5 ms for 8000 × 32 on one thread
  here), which is most of their extra overhead over DDIM (η = 0); PC draws two per step.
- diffusers: {("version " + diffusers_version + "; DDIMScheduler (η = 0) and DPMSolverMultistepScheduler "
  "(dpmsolver++, order 2, lower_order_final) with our β table, timestep_spacing='trailing' (= our uniform grid) "
  "and the same ε and x_T, at NFE ≤ 100. Cross-check with the same algorithm in sciddpm: " + cross
  + " (diffusers keeps its tables in float32).") if diffusers_version else "not installed, so no diffusers rows."}
- A VP-SDE (continuous) problem set was left out to keep the full run under ~10 minutes on 2 cores; the
  convergence of every sampler on VP is covered by tests/test_samplers.py.
- Total runtime: {runtime:.0f} s.
"""
    name = "core_samplers_quick" if args.quick else "core_samplers"
    write_results(name, rows, title="Core samplers with the exact score: SW2 error vs NFE and overhead per step",
                  notes=notes, extra=extra)


if __name__ == "__main__":
    main()
