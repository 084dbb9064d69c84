"""Per-step overhead of sciddpm's ODE solvers beside diffusers' schedulers on the same problem (issue 14).

The ε-function is ε̂ = x/2 (one multiply), so the time per step is the sampler's own bookkeeping plus that
multiply: DDIM (η = 0), DPM-Solver++(3M) and UniPC (bh2, order 2) in sciddpm and in diffusers (DDIMScheduler,
DPMSolverMultistepScheduler, UniPCMultistepScheduler driven as in ``core_samplers``: trailing timesteps on our β
table), K = 50 steps, float64 states of 10000 × 2 and 3000 × 64 (the sizes of core_samplers' mix2d and aniso64),
one thread, best of 5 interleaved repetitions (the machine is shared). diffusers' rows include its
``set_timesteps``; sciddpm's include ``time_grid``.

Usage (from an environment with diffusers): ``python benchmarks/sampler_overhead.py [--smoke]``
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._report import RESULTS_DIR, write_results  # noqa: E402
from benchmarks.core_samplers import _diffusers_available, run_diffusers  # noqa: E402
from sciddpm import samplers as S  # noqa: E402
from sciddpm.schedules import LinearSchedule  # noqa: E402
from sciddpm.spaces import DenseSpace  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run into a temporary folder")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where to write the results (default benchmarks/results; a temp folder with --smoke)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    version = _diffusers_available()
    schedule = LinearSchedule(1000)
    sizes, steps, reps = ([(200, 2)], 10, 1) if args.smoke else ([(10000, 2), (3000, 64)], 50, 5)
    rows = []
    for n, dim in sizes:
        space = DenseSpace((n, dim))
        x_T = torch.randn((n, dim), dtype=torch.float64, generator=torch.Generator().manual_seed(0))

        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return x * 0.5

        runs = {
            "sciddpm ddim": lambda: S.ddim(eps, schedule, space, x_T, S.time_grid(schedule, steps)),
            "sciddpm dpm_solver_pp_3m": lambda: S.dpm_solver_pp_3m(eps, schedule, space, x_T,
                                                                   S.time_grid(schedule, steps)),
            "sciddpm unipc (bh2, p2)": lambda: S.unipc(eps, schedule, space, x_T, S.time_grid(schedule, steps)),
        }
        if version is not None:
            runs.update({
                "diffusers DDIMScheduler": lambda: run_diffusers(
                    "DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False}, schedule, x_T, eps, steps),
                "diffusers DPMSolverMultistep (3M)": lambda: run_diffusers(
                    "DPMSolverMultistepScheduler", {"solver_order": 3}, schedule, x_T, eps, steps),
                "diffusers UniPCMultistep (bh2, p2)": lambda: run_diffusers(
                    "UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}, schedule, x_T, eps, steps),
            })
        best = {name: float("inf") for name in runs}
        for _ in range(reps):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], 1e3 * (time.perf_counter() - start) / steps)
        rows += [{"state": f"{n} x {dim}", "sampler": name, "ms_per_step": round(v, 3)} for name, v in best.items()]
    notes = f"diffusers {version or 'not installed'}; K = {steps}; best of {reps}; ε̂ = x/2."
    write_results("sampler_overhead", rows, title="Per-step overhead: sciddpm vs diffusers (same problem)", notes=notes,
                  results_dir=args.results_dir or (
                      Path(tempfile.mkdtemp(prefix="overhead_")) if args.smoke else RESULTS_DIR))


if __name__ == "__main__":
    main()
