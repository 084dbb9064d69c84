"""Optimised time grids on trained models of two domains (issue 14): images (Fashion-MNIST) and molecules (QM9).

For each domain a small model is trained here on CPU from the committed test subsets (``tests/data``: 300
Fashion-MNIST training images; the QM9 subset), exported, and then sampled with UniPC (bh2, order 2) at 10
and 20 network evaluations on the uniform, quadratic and optimised grids — same model,
same x_T (seed 0); DPM-Solver++(3M) rows were left out to keep the CPU run within minutes. The optimised grid
comes from ``sciddpm optimise-grid``'s code path
(``DiffusionModel.optimise_grid``: pathwise error against the model's own RK45 endpoint on 48 *other* prior
draws, seed 1234), is saved in the export (``variance.grid.<sampler>.<K>``) and read back by
``sample(grid="optimised")``. Metrics: the domain's own (images: FD in the committed evaluation classifier's
feature space against the test images; molecules: atom/molecule stability and RDKit validity) and the pathwise
error E‖x − x*(x_T)‖/√d against the exact ODE endpoint of the same x_T (RK45, rtol = atol = 1e-4).

These are tiny models trained for minutes: absolute quality is far from the domains' benchmarks; the point is the
grid comparison on a real trained network, whose ε is not the oracle's.

Usage: ``python benchmarks/optimised_grid_domains.py [--steps-images 600] [--steps-molecules 12000] [--smoke]``
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._report import RESULTS_DIR, write_results  # noqa: E402
from sciddpm.config import config_from_dict  # noqa: E402
from sciddpm.export import load, save_variances  # noqa: E402
from sciddpm.grid_opt import ode_reference  # noqa: E402
from sciddpm.objectives import eps_predictor  # noqa: E402
from sciddpm.samplers import prior_sample  # noqa: E402
from sciddpm.training import fit  # noqa: E402

DATA = REPO / "tests" / "data"
DOMAINS = {
    "images": {"domain": "images", "data": {"path": str(DATA / "fashion_mnist_subset"), "n_reference": 300},
               "backbone": {"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                            "attention_resolutions": [14], "dropout": 0.0, "norm_groups": 8}},
    "molecules": {"domain": "molecules", "data": {"path": str(DATA / "qm9_subset.npz")},
                  "backbone": {"n_layers": 2, "hidden_nf": 32}},
}
SAMPLERS = [("unipc", {})]


def train(domain: str, steps: int, out: Path, device: str) -> Path:
    """Train the domain's small model for ``steps`` steps (batch 32) and return its export folder (an existing
    finished run of ``steps`` steps in ``out`` is reused)."""
    done = out / "checkpoints" / f"step={steps}.ckpt"
    if (out / "export" / "config.json").is_file() and done.is_file():
        return out / "export"
    cfg = config_from_dict({**DOMAINS[domain], "batch_size": 32, "max_steps": steps, "checkpoint_every": steps,
                            "log_every": max(steps // 5, 1), "accelerator": "gpu" if device == "cuda" else "cpu",
                            "seed": 0})
    fit(cfg, out, progress=False)
    return out / "export"


def reference_endpoints(model: Any, n: int, seed: int) -> Any:
    """(space, x*(x_T)) for the n prior draws of seed ``seed`` (the x_T every ``sample(seed=seed)`` row starts from),
    x* by RK45 at rtol = atol = 1e-4 with per-sample error control."""
    gen = torch.Generator().manual_seed(seed)
    space = model.domain.sample_space(n, gen, None)
    x_T = prior_sample(model.schedule, space, gen, torch.float32)
    if model.device.type != "cpu":
        space, x_T = space.to(model.device), x_T.to(model.device)
    eps = eps_predictor(model.net, model.schedule, space, model.parameterization,
                        **model.domain.network_condition(space))
    with torch.no_grad():
        return space, ode_reference(eps, model.schedule, space, x_T, rtol=1e-4)


def evaluate_domain(domain: str, export: Path, n_eval: int, n_opt: int, nfes: list[int], sweeps: int,
                    log) -> list[dict[str, Any]]:
    rows = []
    start = time.perf_counter()
    space, ref = reference_endpoints(load(export), n_eval, 0)
    log(f"[{domain}] exact ODE endpoints of the {n_eval} evaluation draws in {time.perf_counter() - start:.0f}s")
    for sampler, options in SAMPLERS:
        for nfe in nfes:
            model = load(export)
            start = time.perf_counter()
            key, result = model.optimise_grid(sampler, nfe, n=n_opt, seed=1234, sweeps=sweeps)
            opt_s = time.perf_counter() - start
            save_variances(export, {**model.variances, key: result.grid})
            model = load(export)  # read the grid back from the export, as `sciddpm sample --grid optimised` does
            log(f"[{domain}] {sampler} K={nfe}: optimised grid {[round(v) for v in result.grid.tolist()]} "
                f"(opt-set error {result.error:.4f} vs {result.start_kind} {result.start_error:.4f}, {opt_s:.0f}s)")
            for grid in ("uniform", "quadratic", "optimised"):
                out = model.sample(n_eval, sampler=sampler, steps=nfe, seed=0, grid=grid, **options)
                metrics = model.domain.evaluate(out.sample, out.space)
                diff = space.difference(out.sample.to(ref.device), ref).to(torch.float64)
                row = {"domain": domain, "sampler": sampler, "nfe": out.nfe, "grid": grid,
                       "pathwise": float(space.mean_square_per_sample(diff).sqrt().mean())}
                row.update({k: v for k, v in metrics.items() if not k.startswith("n_")})
                rows.append(row)
                log(f"[{domain}] {sampler} nfe={out.nfe} {grid:9s} " + " ".join(
                    f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps-images", type=int, default=600)
    parser.add_argument("--steps-molecules", type=int, default=12000)
    parser.add_argument("--n-eval", type=int, default=128, help="samples per row (the same x_T for every grid)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sweeps", type=int, default=2, help="coordinate-descent sweeps of the grid optimisation")
    parser.add_argument("--work", type=Path, default=None, help="folder for the trained runs (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long run into a temporary folder")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where to write the results (default benchmarks/results; a temp folder with --smoke)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="gridopt_domains_"))
    steps = {"images": 4 if args.smoke else args.steps_images, "molecules": 4 if args.smoke else args.steps_molecules}
    n_eval, n_opt, nfes = (8, 8, [4]) if args.smoke else (args.n_eval, 48, [10, 20])
    rows: list[dict[str, Any]] = []
    timing = {}
    for domain in DOMAINS:
        start = time.perf_counter()
        export = train(domain, steps[domain], work / domain, args.device)
        timing[f"{domain}_train_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        rows += evaluate_domain(domain, export, n_eval, n_opt, nfes, args.sweeps, lambda m: print(m, flush=True))
        timing[f"{domain}_eval_s"] = round(time.perf_counter() - start, 1)
    notes = f"""
Small models trained here on CPU from the committed subsets (images: {steps['images']} steps, UNet 16 channels, 300
training images; molecules: {steps['molecules']} steps, EGNN 2 × 32, the QM9 subset), batch 32, seed 0; times
{timing}. Each row: {n_eval} samples from the same x_T (seed 0) with the same model; UniPC bh2 order 2 with
lower_order_final, NFE = K. optimised = DiffusionModel.optimise_grid ({args.sweeps} sweeps of
coordinate descent on {n_opt} other prior draws, seed 1234, reference RK45 at 1e-4) saved in and read back
from the export. pathwise =
E‖x − x*(x_T)‖/√d against RK45 (1e-4) from the same x_T: the quantity the grid optimises, measured on held-out
draws. images: fd_classifier (lower is better) against the first 300 test images of the subset; molecules: EDM's
stability and validity (higher is better). With {n_eval} samples the domain metrics carry Monte-Carlo noise of a
few per cent (molecules: ±√(p(1−p)/{n_eval})).
"""
    keys = list(dict.fromkeys(k for r in rows for k in r))  # both domains' metrics as columns of one table
    rows = [{k: r.get(k) for k in keys} for r in rows]
    results_dir = args.results_dir or (Path(tempfile.mkdtemp(prefix="gridopt_smoke_")) if args.smoke else RESULTS_DIR)
    write_results("optimised_grid_domains", rows, title="Optimised time grids on trained image and molecule models",
                  notes=notes, extra={"timing": timing, "train_steps": steps}, results_dir=results_dir)


if __name__ == "__main__":
    main()
