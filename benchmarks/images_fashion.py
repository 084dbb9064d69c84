"""Fashion-MNIST through the engine: train an unconditional UNet for a wall budget, then

* ``images_fashion``: FD-classifier (in-project classifier features, NOT FID) of samples vs test images for DDPM
  (β̃), DDIM, DPM-Solver++(2M), Analytic-DPM (DDPM and DDIM forms) and SN-DDIM at K = 10, 25, 50, and DDPM / DDIM /
  DPM-Solver++ at K = 1000;
* ``analytic_dpm``: test-set NLL in bits/dim (discrete ELBO, Ho et al.'s discretised decoder, uniform grids) at
  K = 10, 25, 50, 100, 200, 1000 for DDPM-β̃, DDPM-β, Analytic-DPM, NPR-DPM and SN-DPM (Bao et al. 2022a, b), with
  the FD-classifier of the matching sampler at K ≤ 50 and the speed-up figure (the smallest K at which
  Analytic-DPM's NLL is at most DDPM-β's at K = 1000).

NPR-DPM / SN-DPM: a second training stage (``--head-minutes`` each) fits a covariance head on the frozen mean
network (``domains/images/covariance_head.py``); its diagonal covariance (Bao et al. 2022b, Thm. 1, clipped to its
bounds) is used by the ELBO and by SN-DDIM. Evaluation runs inside a wall budget (``--eval-minutes``): rows are run
cheapest first, and a row whose predicted cost does not fit is written as "not run (budget)".

    python benchmarks/images_fashion.py --device cuda                 # GPU: ADM-sized UNet, 3 min + 1 min heads
    python benchmarks/images_fashion.py --device cpu --minutes 12     # CPU: small UNet (tiny budget)
    python benchmarks/images_fashion.py --smoke   # a few steps of every path (a check; results in a temp folder)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import RESULTS_DIR, write_results  # noqa: E402
from sciddpm.domains.images.adapter import SMALL_UNET  # noqa: E402
from sciddpm.domains.images.covariance_head import train_image_covariance_head  # noqa: E402
from sciddpm.domains.images.data import load_fashion_mnist, to_model_range  # noqa: E402
from sciddpm.domains.images.metrics import classifier_features, fd_from_features, load_eval_classifier  # noqa: E402
from sciddpm.export import load  # noqa: E402
from sciddpm.likelihood import elbo  # noqa: E402
from sciddpm.objectives import eps_predictor  # noqa: E402
from sciddpm.samplers import ddim, prior_sample, time_grid  # noqa: E402
from sciddpm.spaces import DenseSpace  # noqa: E402
from sciddpm.training import config_from_dict, fit  # noqa: E402
from sciddpm.variances import GAMMA_GAP_FLOOR, GammaTable, diagonal_variance_fn, variance_table  # noqa: E402

PAPER_ANCHOR = ("CIFAR10 (linear schedule), K = 10: β̃ 74.95, β 6.99, Analytic-DPM 5.47, NPR-DPM 5.40 bits/dim "
                "(Bao et al. 2022a Table 1; 2022b Table 1)")
GPU_UNET = {"model_channels": 64, "channel_mult": [1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [14],
            "dropout": 0.1, "norm_groups": 32}
TINY_UNET = {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
             "dropout": 0.0, "norm_groups": 4}
DATA_RANGE = (-1.0, 1.0)
FD_K, FD_LONG, NLL_K = (10, 25, 50), 1000, (10, 25, 50, 100, 200, 1000)
ANALYTIC_TITLE = "Analytic-DPM, NPR-DPM, SN-DPM vs β̃ / β: NLL (bits/dim) on Fashion-MNIST"
FD_METHODS = ("ddpm", "ddim", "dpm_solver_pp_2m", "analytic_ddpm", "analytic_ddim", "sn_ddim")


class CachedEps:
    """ε̂ memoised on (t, x_t): the ELBOs of β̃, β and the optimal variances with one seed draw identical x_t, so the
    variance choices share every network call of the mean network."""

    def __init__(self, eps) -> None:
        self.eps, self.cache, self.calls = eps, {}, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        key = float(t.reshape(-1)[0])
        hit = self.cache.get(key)
        if hit is not None and torch.equal(hit[0], x):
            return hit[1]
        self.calls += 1
        out = self.eps(x.float(), t).double()
        self.cache[key] = (x.clone(), out)
        return out


def draw(model, method: str, k: int, n: int, seed: int, heads: dict, gamma: GammaTable) -> tuple[torch.Tensor, int]:
    """n samples of ``method`` at K steps (x_T drawn on the CPU; step noise on the model's device)."""
    if method in ("ddpm", "ddim", "dpm_solver_pp_2m", "analytic_ddpm"):
        variance = "analytic" if method == "analytic_ddpm" else "beta_tilde"
        out = model.sample(n, sampler="ddpm" if method == "analytic_ddpm" else method, steps=k, seed=seed,
                           variance=variance)
        return out.sample, out.nfe
    device, schedule = model.device, model.schedule
    gen = torch.Generator().manual_seed(seed)
    space = model.domain.sample_space(n, gen)
    x_t = prior_sample(schedule, space, gen, torch.float32).to(device)
    space = space.to(device)
    grid = time_grid(schedule, k)
    if method == "analytic_ddim":  # Analytic-DDIM: η = 0 mean, optimal variance c²(1 − Γ) (Bao et al. 2022a)
        var = variance_table(schedule, grid, gamma, eta=0.0, data_range=DATA_RANGE,
                             last_step_resolution=model.domain.resolution)
    elif method == "sn_ddim":
        var = diagonal_variance_fn(schedule, heads["sn"], kind="sn", eta=0.0, data_range=DATA_RANGE)
    else:
        raise ValueError(f"unknown method {method!r}")
    # SN-DDIM: ε̂ through the head's mean_model, so that ε̂ and the head share one trunk forward per step
    net = heads["sn"].mean_model if method == "sn_ddim" else model.net
    eps = eps_predictor(net, schedule, space, model.parameterization)
    with torch.no_grad():
        out = ddim(eps, schedule, space, x_t, grid, eta=0.0, variance=var,
                   generator=torch.Generator(device=device).manual_seed(seed))
    return out.sample, out.nfe


def train(args: argparse.Namespace, device: torch.device, backbone: dict, out: Path) -> tuple[int, float]:
    cfg = config_from_dict({"domain": "images", "data": {"path": args.data}, "backbone": backbone,
                            "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": 100 if not args.smoke else 2,
                            "lr_schedule": "constant", "max_steps": 8 if args.smoke else 10**7,
                            "max_time": None if args.smoke else str(args.minutes * 60), "ema_decay": args.ema,
                            "checkpoint_every": 10**6, "log_every": 50, "seed": 0, "num_workers": 0,
                            "precision": "bf16" if device.type == "cuda" else "32",
                            "accelerator": "gpu" if device.type == "cuda" else "cpu"})
    t0 = time.perf_counter()
    module = fit(cfg, out, progress=False, overwrite=True)  # the run folder is the benchmark's scratch space
    return int(module.global_step), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fashion_mnist"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall budget of the mean network")
    ap.add_argument("--head-minutes", type=float, default=0.75, help="training budget of each covariance head")
    ap.add_argument("--eval-minutes", type=float, default=3.0, help="sampling + NLL wall budget")
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--n-reference", type=int, default=2000)
    ap.add_argument("--nll-images", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--backbone", default=None, help="UNet config JSON (default: ADM-sized on CUDA, small on CPU)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output", default=str(ROOT / "runs" / "images_fashion"))
    ap.add_argument("--results-dir", type=Path, default=None,
                    help="default benchmarks/results (--smoke: a temporary folder, never the committed tables)")
    ap.add_argument("--smoke", action="store_true", help="tiny UNet, committed subset, a few steps of every path")
    ap.add_argument("--extra-rows", default=None,
                    help="second pass on the export in --output: FD rows 'method:K,...' (ddpm, ddim, dpm_solver_pp_2m, "
                         "analytic_ddpm, analytic_ddim) added to the images_fashion results in --results-dir")
    ap.add_argument("--nll-extra", type=int, default=None,
                    help="second pass on the export in --output: NLL rows at this K for β̃, β and Analytic-DPM, added "
                         "to the analytic_dpm results in --results-dir (same --nll-images as the first pass)")
    ap.add_argument("--head-steps", type=int, default=None,
                    help="second passes: retrain the NPR/SN heads for exactly this many steps (the first pass's count)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    backbone = json.loads(args.backbone) if args.backbone else (GPU_UNET if device.type == "cuda" else
                                                                 {**SMALL_UNET, "model_channels": 16})
    if args.smoke:
        backbone, args.data = TINY_UNET, str(ROOT / "tests" / "data" / "fashion_mnist_subset")
        args.n_samples, args.n_reference, args.nll_images, args.batch_size = 20, 50, 8, 16
    if args.results_dir is None:
        args.results_dir = Path(tempfile.gettempdir()) / "images_fashion_smoke" if args.smoke else RESULTS_DIR
    out = Path(args.output)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if args.extra_rows:
        return extra_rows(args, device)
    if args.nll_extra:
        return extra_nll(args, device)
    steps, train_s = train(args, device, backbone, out)
    model = load(out / "export").to(device)
    n_params = sum(p.numel() for p in model.net.parameters())
    print(f"[images] trained {steps} steps in {train_s:.0f} s ({n_params} parameters) on {device}", flush=True)

    eval_start, budget = time.perf_counter(), args.eval_minutes * 60
    t = time.perf_counter()
    gamma = model.estimate_gamma(batches=4 if not args.smoke else 1, batch_size=128 if not args.smoke else 8,
                                 num_times=100 if not args.smoke else 10, seed=0)
    model.variances = gamma.state_dict()
    gamma_s = time.perf_counter() - t
    heads, head_info = train_heads(args, model, device, 4 if args.smoke else None)

    clf = load_eval_classifier(device=device)
    test_u8, _ = load_fashion_mnist(args.data, "test")
    ref_feats = classifier_features(to_model_range(test_u8[: args.n_reference]), clf)
    sec_per_nfe, rows, fd_of = None, [], {}
    plan = [(m, k) for k in FD_K for m in FD_METHODS] + [(m, FD_LONG) for m in ("ddpm", "ddim", "dpm_solver_pp_2m")]
    nll_cost = sum(NLL_K) * 3 * args.nll_images / args.n_samples  # network calls in batch-n_samples units
    for method, k in plan:
        left = budget - (time.perf_counter() - eval_start)
        reserve = (sec_per_nfe or 0.0) * nll_cost  # the NLL table (issue #4's) comes first: keep room for it
        if sec_per_nfe is not None and sec_per_nfe * k * (2 if method == "sn_ddim" else 1) > left - reserve:
            rows.append({"sampler": method, "steps": k, "nfe": None, "fd_classifier": "not run (budget)",
                         "n_samples": None, "seconds": None})
            continue
        t = time.perf_counter()
        x, nfe = draw(model, method, k if not args.smoke else min(k, 6), args.n_samples, 1, heads, gamma)
        sec = time.perf_counter() - t
        sec_per_nfe = sec / max(1, nfe) / (2 if method == "sn_ddim" else 1)
        fd = fd_from_features(classifier_features(x.clamp(-1, 1), clf), ref_feats)
        fd_of[(method, k)] = fd
        rows.append({"sampler": method, "steps": k, "nfe": nfe, "fd_classifier": fd, "n_samples": args.n_samples,
                     "seconds": round(sec, 1)})
        print(rows[-1], flush=True)
        if (method, k) == ("ddpm", 50):
            model.domain.plot_samples(args.results_dir / "images_fashion_samples.png", x)

    # ---- NLL (discrete ELBO, discretised decoder) -----------------------------------------------------------
    x0 = to_model_range(test_u8[: args.nll_images]).double().to(device)
    space = DenseSpace(x0.shape, device=device)
    eps = CachedEps(eps_predictor(model.net, model.schedule, space, model.parameterization))
    nll_rows = []
    fd_key = {"beta_tilde": "ddpm", "analytic_dpm": "analytic_ddpm"}
    for k in NLL_K:
        grid = time_grid(model.schedule, k if not args.smoke else min(k, 6), "uniform")
        eps.cache.clear()
        left = budget - (time.perf_counter() - eval_start)
        need = (sec_per_nfe or 0.0) * k * 3 * args.nll_images / args.n_samples
        methods = {"beta_tilde": "beta_tilde", "beta": "beta",
                   # no last-step cap: Bao et al. clip σ₁ for sampling only; it would distort the likelihood
                   "analytic_dpm": variance_table(model.schedule, grid, gamma, data_range=DATA_RANGE),
                   # the error floor keeps the decoder step's variance > 0 where SN's E[ε²|x] − ε̂² clips to 0
                   "npr_dpm": diagonal_variance_fn(model.schedule, heads["npr"], kind="npr", data_range=DATA_RANGE,
                                                   error_floor=GAMMA_GAP_FLOOR),
                   "sn_dpm": diagonal_variance_fn(model.schedule, heads["sn"], kind="sn", data_range=DATA_RANGE,
                                                  error_floor=GAMMA_GAP_FLOOR)}
        for method, variance in methods.items():
            if need > left:
                nll_rows.append({"method": method, "K": k, "nll_bpd": "not run (budget)", "fd_classifier": None})
                continue
            with torch.no_grad():
                res = elbo(eps, model.schedule, space, x0, grid, variance=variance, decoder="discretized",
                           generator=torch.Generator(device=device).manual_seed(7))
            nll_rows.append({"method": method, "K": k, "nll_bpd": float(res.bits_per_dim.mean()),
                             "fd_classifier": fd_of.get((fd_key.get(method), k))})
            print(nll_rows[-1], flush=True)
    eval_s = time.perf_counter() - eval_start
    speedup = speed_up(nll_rows)
    write_tables(args, device, rows, nll_rows, speedup, backbone, steps, train_s, n_params, gamma_s, head_info,
                 sec_per_nfe, eval_s, eps.calls)


def train_heads(args: argparse.Namespace, model, device: torch.device, steps: int | None,
                kinds: tuple[str, ...] = ("npr", "sn")) -> tuple[dict, dict]:
    """The NPR and SN covariance heads on the frozen mean network: ``steps`` steps each, or ``--head-minutes``.
    Seeded and (on one CPU thread) deterministic, so a second pass given the first pass's step counts
    (``--head-steps``) rebuilds the same heads."""
    train_u8, _ = load_fashion_mnist(args.data, "train")
    x_train = to_model_range(train_u8).to(device)
    heads, info = {}, {}
    for kind in kinds:
        t = time.perf_counter()
        heads[kind] = train_image_covariance_head(model.net, model.schedule, x_train, kind=kind,
                                                  steps=steps or 10**7,
                                                  max_seconds=None if steps else args.head_minutes * 60,
                                                  batch_size=args.batch_size, lr=1e-3, device=device, seed=0)
        info[f"{kind}_steps"] = len(heads[kind].loss_history)
        info[f"{kind}_seconds"] = round(time.perf_counter() - t, 1)
    return heads, info


def extra_rows(args: argparse.Namespace, device: torch.device) -> None:
    """FD rows run on the saved export (same seed, sample count and reference) and merged into the results."""
    model = load(Path(args.output) / "export").to(device)
    path = args.results_dir / "images_fashion.json"
    payload = json.loads(path.read_text())
    n = payload["rows"][0]["n_samples"] or args.n_samples
    clf = load_eval_classifier(device=device)
    test_u8, _ = load_fashion_mnist(args.data, "test")
    ref_feats = classifier_features(to_model_range(test_u8[: args.n_reference]), clf)
    gamma = None
    if "analytic" in args.extra_rows:  # the first pass's Γ call (same seed), so the same table
        gamma = model.estimate_gamma(batches=4, batch_size=128, num_times=100, seed=0)
        model.variances = gamma.state_dict()
    heads = train_heads(args, model, device, args.head_steps)[0] if args.head_steps else {}
    done = []
    for item in args.extra_rows.split(","):
        method, k = item.split(":")
        if method not in ("ddpm", "ddim", "dpm_solver_pp_2m", "analytic_ddpm", "analytic_ddim", "sn_ddim"):
            raise ValueError(f"--extra-rows: unknown method {method!r}")
        if method == "sn_ddim" and not heads:
            raise ValueError("--extra-rows sn_ddim needs --head-steps (the first pass's head step count)")
        t = time.perf_counter()
        x, nfe = draw(model, method, int(k), n, 1, heads, gamma)
        row = {"sampler": method, "steps": int(k), "nfe": nfe,
               "fd_classifier": fd_from_features(classifier_features(x.clamp(-1, 1), clf), ref_feats),
               "n_samples": n, "seconds": round(time.perf_counter() - t, 1)}
        print(row, flush=True)
        if (method, int(k)) == ("ddpm", 50):  # the results' sample grid, as in the first pass
            model.domain.plot_samples(args.results_dir / "images_fashion_samples.png", x)
        payload["rows"] = [r for r in payload["rows"] if (r["sampler"], r["steps"]) != (method, int(k))] + [row]
        done.append(f"{method} {k}")
    payload["notes"] = notes_of(path, payload)
    order = {m: i for i, m in enumerate(FD_METHODS)}
    payload["rows"].sort(key=lambda r: (r["steps"], order.get(r["sampler"], len(order))))  # the first pass's order
    keep = {k: v for k, v in payload.items() if k not in ("benchmark", "date", "machine", "command", "rows", "notes")}
    notes = payload["notes"] + (f"\n\nRows {', '.join(done)}: a second pass on the same export, same seed, sample "
                                f"count and reference images (`python {' '.join(sys.argv)}`).")
    title = payload.get("title", "Fashion-MNIST: FD-classifier by sampler and steps")
    write_results("images_fashion", payload["rows"], title=title, notes=notes, extra={**keep, "notes": notes},
                  results_dir=args.results_dir)


def extra_nll(args: argparse.Namespace, device: torch.device) -> None:
    """β̃ / β / Analytic-DPM NLL rows at K = ``--nll-extra`` on the saved export (the first pass's Γ call and ELBO
    seed), merged into the analytic_dpm results; NPR/SN rows there stay as they were (their heads are not saved)."""
    model = load(Path(args.output) / "export").to(device)
    gamma = model.estimate_gamma(batches=4, batch_size=128, num_times=100, seed=0)
    path = args.results_dir / "analytic_dpm.json"
    payload = json.loads(path.read_text())
    test_u8, _ = load_fashion_mnist(args.data, "test")
    x0 = to_model_range(test_u8[: args.nll_images]).double().to(device)
    space = DenseSpace(x0.shape, device=device)
    eps = CachedEps(eps_predictor(model.net, model.schedule, space, model.parameterization))
    k = args.nll_extra
    grid = time_grid(model.schedule, k, "uniform")
    methods = {"beta_tilde": "beta_tilde", "beta": "beta",
               "analytic_dpm": variance_table(model.schedule, grid, gamma, data_range=DATA_RANGE)}
    if args.head_steps:
        heads = train_heads(args, model, device, args.head_steps)[0]
        methods.update({kind + "_dpm": diagonal_variance_fn(model.schedule, heads[kind], kind=kind, data_range=DATA_RANGE,
                                                            error_floor=GAMMA_GAP_FLOOR) for kind in ("npr", "sn")})
    new = {}
    for method, variance in methods.items():
        t = time.perf_counter()
        with torch.no_grad():
            res = elbo(eps, model.schedule, space, x0, grid, variance=variance, decoder="discretized",
                       generator=torch.Generator(device=device).manual_seed(7))
        new[method] = float(res.bits_per_dim.mean())
        print({"method": method, "K": k, "nll_bpd": new[method], "seconds": round(time.perf_counter() - t, 1)},
              flush=True)
    for row in payload["rows"]:
        if row["K"] == k and row["method"] in new:
            row["nll_bpd"] = new[row["method"]]
        elif row["K"] == k and row["nll_bpd"] == "not run (budget)":
            row["nll_bpd"] = "not run (second pass: covariance heads not saved)"
    speedup = speed_up(payload["rows"])
    notes = notes_of(path, payload)
    head, _, tail = notes.partition("Speed-up figure:")
    tail = tail.partition("\n\n")[2]
    notes = (head + speed_line(speedup) + "\n\n" + tail + f"\n\nK = {k} rows of {', '.join(new)}: a second pass on the "
             f"same export (`python {' '.join(sys.argv)}`), same Γ estimate (same call and seed), ELBO seed and test images"
             + (f"; NPR/SN heads retrained for the first pass's {args.head_steps} steps (same seed, data and batches, "
                "deterministic on one CPU thread)." if args.head_steps else "."))
    keep = {key: v for key, v in payload.items() if key not in ("benchmark", "date", "machine", "command", "rows", "notes",
                                                              "speed_up")}
    write_results("analytic_dpm", payload["rows"], title=ANALYTIC_TITLE, notes=notes, results_dir=args.results_dir,
                  extra={**keep, "notes": notes, "speed_up": speedup})


def notes_of(path: Path, payload: dict) -> str:
    """A results file's notes: from its JSON, else (older files) the markdown text after the table."""
    if "notes" in payload:
        return payload["notes"]
    lines = path.with_suffix(".md").read_text().splitlines()
    return "\n".join(lines[max(i for i, line in enumerate(lines) if line.startswith("|")) + 1:]).strip()


def speed_line(s: dict) -> str:
    """The speed-up sentence of the NLL table's notes."""
    if s["smallest_K_analytic"]:
        return (f"Speed-up figure: DDPM-β at K = 1000 gives {s['target_beta_K1000']:.4f} bits/dim; Analytic-DPM "
                f"matches or beats it from K = {s['smallest_K_analytic']} on (×{s['speed_up']:.0f} fewer steps).")
    return ("Speed-up figure: Analytic-DPM did not reach DDPM-β's K = 1000 NLL at any measured K (or a row was not "
            f"run): {s}.")


def speed_up(nll_rows: list[dict]) -> dict:
    """The smallest K at which Analytic-DPM's NLL ≤ DDPM-β's at K = 1000 (Bao et al. 2022a's speed-up figure)."""
    value = {(r["method"], r["K"]): r["nll_bpd"] for r in nll_rows if isinstance(r["nll_bpd"], float)}
    target = value.get(("beta", 1000))
    if target is None:
        return {"target_beta_K1000": None, "smallest_K_analytic": None, "speed_up": None}
    ks = sorted(k for (m, k), v in value.items() if m == "analytic_dpm" and v <= target)
    return {"target_beta_K1000": target, "smallest_K_analytic": ks[0] if ks else None,
            "speed_up": 1000 / ks[0] if ks else None}


def write_tables(args, device, rows, nll_rows, speedup, backbone, steps, train_s, n_params, gamma_s, head_info,
                 sec_per_nfe, eval_s, nll_calls) -> None:
    where = (torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} shared CPU threads")
    budget_note = (f"Training: unconditional UNet ({n_params:,} parameters, backbone `{json.dumps(backbone)}`), linear "
                   f"schedule N = 1000, ε-prediction, batch {args.batch_size}, AdamW lr {args.lr} constant after "
                   f"warm-up, EMA {args.ema}, {'bf16 autocast' if device.type == 'cuda' else 'fp32'}, on the real "
                   f"Fashion-MNIST train set (60k) through the engine (Lightning) for a wall budget of "
                   f"{args.minutes:g} min on {where}: **{steps} optimiser steps** ({train_s:.0f} s incl. start-up). "
                   f"Published DDPMs train ~10^5–10^6 steps, so absolute numbers are far from converged; the "
                   f"comparison between samplers/variances on one model is the point. Covariance heads (NPR, SN): "
                   f"a fresh GroupNorm–SiLU–conv output layer on the frozen network's last decoder features, "
                   f"trained {args.head_minutes:g} min each ({head_info}).")
    notes = (f"{budget_note}\n\nFD-classifier: Fréchet distance on the 128-d penultimate features of the in-project "
             f"Fashion-MNIST classifier (`benchmarks/weights/fashion_eval_classifier.safetensors`), NOT FID. "
             f"{args.n_samples} samples per row vs the first {args.n_reference} test images (reference: real train vs "
             f"test = 0.13; test vs test + N(0, 0.3²) noise = 90). Seed 1 for every row; uniform time grids. "
             f"analytic_ddpm / analytic_ddim: Analytic-DPM's optimal variance for the DDPM (λ² = β̃) and DDIM (η = 0) "
             f"forms (Γ from `estimate_gamma`, 4 × 128 training images, {gamma_s:.0f} s; data range [−1, 1]; last-step "
             f"cap from resolution 2/255). sn_ddim: DDIM (η = 0) mean with SN-DPM's diagonal covariance (Bao et al. 2022b). Rows marked "
             f"\"not run (budget)\" did not fit the {args.eval_minutes:g}-min evaluation budget ({sec_per_nfe or 0:.3f} s "
             f"per network call at batch {args.n_samples}). Evaluation took {eval_s:.0f} s. Samples (DDPM, 50 steps): "
             f"`images_fashion_samples.png`.")
    title = "Fashion-MNIST: FD-classifier by sampler and steps"
    write_results("images_fashion", rows, title=title, notes=notes, results_dir=args.results_dir,
                  extra={"title": title, "notes": notes, "train_steps": steps, "train_seconds": train_s,
                         "n_parameters": n_params, "sec_per_nfe": sec_per_nfe})
    nll_notes = (f"Test-set NLL upper bound (negative discrete ELBO, bits/dim) on the first {args.nll_images} "
                 f"Fashion-MNIST test images, Ho et al.'s discretised Gaussian decoder (256 bins over [−1, 1]), uniform "
                 f"K-step grids, one x_t draw per term (seed 7; all variances share the draws and the mean network's "
                 f"calls, {nll_calls} of them). β̃ uses the previous step's β̃ for the decoder (Ho et al.'s clipped "
                 f"log-variance), so β̃ is not catastrophic here as in the paper's table. analytic_dpm: the Γ table of "
                 f"the FD run, no last-step cap (Bao et al. clip σ₁ for sampling only). npr_dpm / sn_dpm: the diagonal "
                 f"covariance of Bao et al. 2022b (Thm. 1) from the NPR / SN heads, clipped to its bounds, with the estimated E[(ε − ε̂)²|x_t] floored at GAMMA_GAP_FLOOR (as Analytic-DPM floors 1 − Γ) so that the decoder variance stays positive. fd_classifier: "
                 f"from `images_fashion` where the same sampler and K were sampled (β̃ = ddpm, analytic = "
                 f"analytic_ddpm), null where not measured.\n\n{speed_line(speedup)}\n\nPaper anchor: {PAPER_ANCHOR}. Not "
                 f"comparable in absolute terms (different data set, small model and training). Fashion-MNIST's many "
                 f"exactly-black pixels fall in the open-ended edge bin, which keeps bits/dim low.\n\n{budget_note}")
    write_results("analytic_dpm", nll_rows, title=ANALYTIC_TITLE, notes=nll_notes, results_dir=args.results_dir,
                  extra={"notes": nll_notes, "speed_up": speedup, "train_steps": steps, "paper_anchor": PAPER_ANCHOR})


if __name__ == "__main__":
    main()
