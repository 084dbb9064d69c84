"""Why NPR-DPM's NLL grows with K on a weak model: the ELBO's terms and the NPR head's calibration at the decoder step.

    python benchmarks/npr_head_diagnostic.py --output runs/images_fashion_cpu --head-steps 386

On the export that ``images_fashion.py`` wrote to ``--output``, the NPR head is rebuilt deterministically (the first
pass's step count, one CPU thread; see ``images_fashion.train_heads``). For each K it splits NPR-DPM's negative ELBO
(bits/dim) into prior, diffusion and decoder terms, and compares the head h(x_t, t) with its target (ε − ε̂(x_t, t))²
at the decoder step's time t (the grid's last non-zero time): mean target, mean head, and the fraction of pixels whose
head is below a tenth of the target (there the decoder's variance σ_t² h is far too small). Writes
benchmarks/results/npr_head_diagnostic.{json,md}.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import RESULTS_DIR, write_results  # noqa: E402
from benchmarks.images_fashion import DATA_RANGE, CachedEps, train_heads  # noqa: E402
from sciddpm.domains.images.data import load_fashion_mnist, to_model_range  # noqa: E402
from sciddpm.export import load  # noqa: E402
from sciddpm.likelihood import elbo  # noqa: E402
from sciddpm.objectives import eps_predictor, forward_noise  # noqa: E402
from sciddpm.samplers import time_grid  # noqa: E402
from sciddpm.spaces import DenseSpace  # noqa: E402
from sciddpm.variances import GAMMA_GAP_FLOOR, diagonal_variance_fn  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fashion_mnist"))
    ap.add_argument("--output", default=str(ROOT / "runs" / "images_fashion_cpu"), help="images_fashion's --output")
    ap.add_argument("--head-steps", type=int, required=True, help="the first pass's NPR head step count")
    ap.add_argument("--batch-size", type=int, default=128, help="the first pass's batch size")
    ap.add_argument("--nll-images", type=int, default=100)
    ap.add_argument("--ks", default="10,200")
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the heads are rebuilt bit-identically on one thread only
    model = load(Path(args.output) / "export")
    args.head_minutes = None
    head = train_heads(args, model, torch.device("cpu"), args.head_steps, ("npr",))[0]["npr"]
    test_u8, _ = load_fashion_mnist(args.data, "test")
    x0 = to_model_range(test_u8[: args.nll_images]).double()
    space = DenseSpace(x0.shape)
    eps_fn = eps_predictor(model.net, model.schedule, space, model.parameterization)
    eps = CachedEps(eps_fn)
    variance = diagonal_variance_fn(model.schedule, head, kind="npr", data_range=DATA_RANGE, error_floor=GAMMA_GAP_FLOOR)
    bits = x0[0].numel() * math.log(2.0)
    rows = []
    for k in [int(v) for v in args.ks.split(",")]:
        grid = time_grid(model.schedule, k, "uniform")
        eps.cache.clear()
        with torch.no_grad():
            res = elbo(eps, model.schedule, space, x0, grid, variance=variance, decoder="discretized",
                       generator=torch.Generator().manual_seed(7))
            t = grid[-2]
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
            x_t, _ = forward_noise(model.schedule, space, x0, t, noise)
            target = (noise - eps_fn(x_t.float(), t.expand(len(x0))).double()) ** 2
            h = head(x_t.float(), t).double()
        terms = {name: float(v.mean() / bits) for name, v in res.terms.items()}
        rows.append({"K": k, "nll_bpd": float(res.bits_per_dim.mean()), "prior_bpd": terms["prior"],
                     "diffusion_bpd": terms["diffusion"], "decoder_bpd": terms["decoder"],
                     "decoder_t": float(t), "mean_target": float(target.mean()), "mean_head": float(h.mean()),
                     "frac_head_below_target_over_10": float((h < target / 10).double().mean())})
        print(rows[-1], flush=True)
    notes = (f"NPR-DPM on the export in `{args.output}` (written by benchmarks/images_fashion.py), its NPR head rebuilt "
             f"for {args.head_steps} steps (seed 0, batch {args.batch_size}, one CPU thread: the first pass's head). "
             f"Terms of the negative ELBO in bits/dim on the first {args.nll_images} test images (ELBO seed 7, as "
             "images_fashion). decoder_t: the time of the decoder step (the grid's last non-zero time). mean_target = "
             "mean of (ε − ε̂(x_t, t))² over pixels and images at decoder_t (one noise draw, seed 3), mean_head = the "
             "NPR head's mean prediction of it there, frac_head_below_target_over_10 = fraction of pixels where the "
             "head is below a tenth of its target: the decoder variance σ_t² h is then far too small.")
    write_results("npr_head_diagnostic", rows, title="NPR-DPM: ELBO terms and head calibration at the decoder step",
                  notes=notes, results_dir=args.results_dir)


if __name__ == "__main__":
    main()
