"""Classifier-free vs classifier guidance on Fashion-MNIST (issue #5): FD-classifier, accuracy and diversity vs λ.

Trains, in one run on the device, (a) a class-conditional ADM-sized UNet with label dropout p_uncond = 0.1 to the
null token (Ho & Salimans 2022) and (b) ADM's noise-aware classifier p_t(c | x_t) (Dhariwal & Nichol 2021), each
for a wall-clock budget, with a plain device-resident loop (the whole train set on the device, random batches,
AdamW, EMA). Then it samples with deterministic DDIM (η = 0) from the SAME x_T for every row, with

- classifier-free guidance ε̃ = ε(x|∅) + λ (ε(x|c) − ε(x|∅)) (one doubled network call per step), λ ∈ {0, 1, 2, 4};
- classifier guidance ε̃ = ε(x|∅) − λ σ_t ∇_x log p_t(c | x) on the unconditional denoiser, λ ∈ {0, 1, 2, 4};
- classifier guidance on the conditional denoiser ε(x|c), λ ∈ {1, 2} (skipped if the time budget runs out),

and scores the samples with the in-project evaluation classifier (FD-classifier, NOT FID).

    python benchmarks/guidance_fashion.py --device cuda --results-dir R     # full run, <= 5 min on an H200
    python benchmarks/guidance_fashion.py --smoke --device cpu              # tiny nets, committed subset, ~1 min
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_results  # noqa: E402
from benchmarks._resident import autocast, sync, train_resident  # noqa: E402
from sciddpm.domains.images.adapter import image_grid  # noqa: E402
from sciddpm.domains.images.backbone import UNet, count_parameters  # noqa: E402
from sciddpm.domains.images.classifier import NoisyClassifier  # noqa: E402
from sciddpm.domains.images.data import load_fashion_mnist, to_model_range  # noqa: E402
from sciddpm.domains.images.metrics import classifier_features, fd_from_features, load_eval_classifier  # noqa: E402
from sciddpm.guidance import (batched_pair, classifier_free_guidance, classifier_guidance, classifier_log_prob,  # noqa: E402
                              noisy_classifier_loss)
from sciddpm.objectives import denoising_loss, eps_predictor  # noqa: E402
from sciddpm.samplers import ddim, time_grid  # noqa: E402
from sciddpm.schedules import LinearSchedule  # noqa: E402
from sciddpm.spaces import DenseSpace  # noqa: E402

GPU_UNET = {"model_channels": 64, "channel_mult": [1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [14],
            "dropout": 0.1, "norm_groups": 32}
GPU_CLF = {"model_channels": 64, "channel_mult": [1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [14],
           "dropout": 0.0, "norm_groups": 32, "pool": "attention"}
TINY_UNET = {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
             "dropout": 0.0, "norm_groups": 4}
TINY_CLF = {**TINY_UNET, "pool": "attention"}
NUM_CLASSES, NULL, P_UNCOND = 10, 10, 0.1
UNET_LR, CLF_LR, CLF_WD, WARMUP, EMA_DECAY, GRAD_CLIP = 2e-4, 3e-4, 0.05, 200, 0.999, 1.0
CFG_SCALES, CG_SCALES, CG_COND_SCALES = (0.0, 1.0, 2.0, 4.0), (0.0, 1.0, 2.0, 4.0), (1.0, 2.0)
NOISY_ACC_TIMES = (0, 250, 500, 750)


@torch.no_grad()
def noisy_accuracy(clf: nn.Module, schedule: LinearSchedule, x: Tensor, y: Tensor, t: int, seed: int) -> float:
    """Accuracy of argmax p_t(c | x_t) on x_t = α_t x₀ + σ_t ε (test images, fixed noise seed)."""
    device = x.device
    gen = torch.Generator(device=device).manual_seed(seed)
    a, s = float(schedule.alpha(torch.tensor(float(t)))), float(schedule.sigma(torch.tensor(float(t))))
    correct = 0
    for i in range(0, len(x), 1000):
        xb = x[i:i + 1000]
        xt = a * xb + s * torch.randn(xb.shape, generator=gen, device=device)
        with autocast(device):
            logits = clf(xt, torch.full((len(xb),), float(t), device=device))
        correct += int((logits.float().argmax(1) == y[i:i + 1000]).sum().cpu())
    return correct / len(x)


def within_class_spread(features: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of tr Cov(features | class) (unbiased covariance; classes with < 2 members skipped)."""
    traces = [features[labels == c].var(0, ddof=1).sum() for c in range(NUM_CLASSES) if (labels == c).sum() >= 2]
    if not traces:
        raise ValueError("within-class spread needs at least 2 samples of some class")
    return float(np.mean(traces))


def sample_rows(args: argparse.Namespace, net: nn.Module, clf: nn.Module, schedule: LinearSchedule,
                device: torch.device, score: Callable[[Tensor, Tensor], dict], t0: float) -> tuple[list, dict, list]:
    """All guidance rows from the same x_T (CPU seed, moved to the device) with DDIM η = 0, x̂₀ clipped to [−1, 1]."""
    n = args.n_samples
    x_T = torch.randn((n, 1, 28, 28), generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    labels = (torch.arange(n) % NUM_CLASSES).to(device)
    grid = time_grid(schedule, args.sample_steps)

    def net_call(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        with autocast(device):
            return net(x, t, y=y).float()

    def clf_call(x: Tensor, t: Tensor) -> Tensor:
        with autocast(device):
            return clf(x, t).float()

    def cfg(lam: float) -> Callable[[DenseSpace, Tensor], Callable]:
        return lambda space, y: classifier_free_guidance(
            batched_pair(net_call, {"y": y}, {"y": torch.full_like(y, NULL)}), lam)

    def cg(lam: float, conditional: bool) -> Callable[[DenseSpace, Tensor], Callable]:
        def make(space: DenseSpace, y: Tensor) -> Callable:
            eps = eps_predictor(net_call, schedule, space, "eps", y=y if conditional else torch.full_like(y, NULL))
            return classifier_guidance(eps, classifier_log_prob(clf_call, y), schedule, space, lam)
        return make

    plan = ([("cfg", lam, cfg(lam), True) for lam in CFG_SCALES]
            + [("classifier (uncond)", lam, cg(lam, False), True) for lam in CG_SCALES]
            + [("classifier (cond)", lam, cg(lam, True), False) for lam in CG_COND_SCALES])
    rows, kept, skipped, last = [], {}, [], 0.0
    for name, lam, make, required in plan:
        if not required and time.perf_counter() - t0 + last > args.time_limit:
            skipped.append(f"{name} λ={lam:g}")
            print(f"skipping {name} λ={lam:g}: time limit", flush=True)
            continue
        sync(device)
        start = time.perf_counter()
        chunks = []
        with torch.no_grad():
            for i in range(0, n, args.sample_batch):
                xc, yc = x_T[i:i + args.sample_batch], labels[i:i + args.sample_batch]
                space = DenseSpace(xc.shape, device=device)
                out = ddim(make(space, yc), schedule, space, xc, grid, eta=0.0, clip_x0=(-1.0, 1.0))
                chunks.append(out.sample.float().clamp(-1, 1).cpu())
        sync(device)
        last = time.perf_counter() - start
        samples = torch.cat(chunks)
        row = {"guidance": name, "scale": lam, **score(samples, labels.cpu()), "seconds": round(last, 1)}
        rows.append(row)
        print(row, flush=True)
        if name == "cfg" and lam in (0.0, 1.0, 4.0):
            kept[lam] = samples
    return rows, kept, skipped


def samples_png(path: Path, kept: dict, per_class: int) -> None:
    """Rows = classes 0..9; blocks left to right = CFG λ = 0, 1, 4 (``per_class`` samples each), white separators."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = []
    for lam in sorted(kept):
        s = kept[lam]
        idx = [i for c in range(NUM_CLASSES) for i in range(c, len(s), NUM_CLASSES)[:per_class]]
        blocks.append(image_grid(s[idx], per_class))
    sep = np.full((blocks[0].shape[0], 6), 255, dtype=np.uint8)
    mosaic = np.concatenate([b if i == 0 else np.concatenate([sep, b], 1) for i, b in enumerate(blocks)], 1)
    plt.imsave(str(path), mosaic, cmap="gray", vmin=0, vmax=255, format="png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fashion_mnist"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--minutes", type=float, default=2.5, help="UNet training wall budget")
    ap.add_argument("--classifier-minutes", type=float, default=1.0, help="noise-aware classifier wall budget")
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--sample-batch", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--time-limit", type=float, default=280.0, help="skip the optional rows past this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny nets, committed subset, 20 steps each, 20 samples")
    ap.add_argument("--results-dir", default=None, help="default benchmarks/results (smoke: a temp folder)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    unet_cfg, clf_cfg, max_steps = GPU_UNET, GPU_CLF, 0
    if args.smoke:
        torch.set_num_threads(1)
        unet_cfg, clf_cfg, max_steps = TINY_UNET, TINY_CLF, 20
        args.data = str(ROOT / "tests" / "data" / "fashion_mnist_subset")
        args.n_samples, args.sample_steps, args.batch_size = 20, 5, 16
    if args.n_samples < 2 * NUM_CLASSES:
        raise ValueError(f"--n-samples must be >= {2 * NUM_CLASSES} (two per class for the diversity column)")
    results_dir = Path(args.results_dir) if args.results_dir else (
        Path(tempfile.gettempdir()) / "guidance_fashion_smoke" if args.smoke else ROOT / "benchmarks" / "results")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)  # seeds the CPU and every CUDA device (batches, times, noise, label dropout)

    images, train_labels = load_fashion_mnist(args.data, "train")
    x_train, y_train = to_model_range(images).to(device), torch.as_tensor(train_labels).long().to(device)
    test_images, test_labels = load_fashion_mnist(args.data, "test")
    x_test, y_test = to_model_range(test_images).to(device), torch.as_tensor(test_labels).long().to(device)
    schedule = LinearSchedule(1000)
    print(f"{len(x_train)} train / {len(x_test)} test images on {device}", flush=True)

    def unet_loss(net: nn.Module, x0: Tensor, y: Tensor) -> Tensor:
        y = torch.where(torch.rand(y.shape, device=y.device) < P_UNCOND, torch.full_like(y, NULL), y)

        def model(x: Tensor, t: Tensor, y: Tensor) -> Tensor:
            with autocast(device):
                return net(x, t, y=y)
        return denoising_loss(model, schedule, DenseSpace(x0.shape, device=device), x0, y=y).loss

    def clf_loss(clf: nn.Module, x0: Tensor, y: Tensor) -> Tensor:
        def call(x: Tensor, t: Tensor) -> Tensor:
            with autocast(device):
                return clf(x, t)
        return noisy_classifier_loss(call, schedule, DenseSpace(x0.shape, device=device), x0, y)

    unet = UNet(**unet_cfg, num_classes=NUM_CLASSES, schedule=schedule).to(device)
    unet, unet_info = train_resident(unet, unet_loss, (x_train, y_train), lr=UNET_LR, seconds=60 * args.minutes,
                                     max_steps=max_steps, batch_size=args.batch_size, warmup=WARMUP, ema=True,
                                     ema_decay=EMA_DECAY, grad_clip=GRAD_CLIP, label="unet")
    print(f"UNet: {unet_info}", flush=True)
    clf = NoisyClassifier(**clf_cfg, schedule=schedule).to(device)
    clf, clf_info = train_resident(clf, clf_loss, (x_train, y_train), lr=CLF_LR, weight_decay=CLF_WD,
                                   seconds=60 * args.classifier_minutes, max_steps=max_steps,
                                   batch_size=args.batch_size, warmup=WARMUP, ema=False, anneal=True,
                                   grad_clip=GRAD_CLIP, label="classifier")
    clf.requires_grad_(False)
    print(f"classifier: {clf_info}", flush=True)
    noisy_acc = {str(t): noisy_accuracy(clf, schedule, x_test, y_test, t, args.seed + 7) for t in NOISY_ACC_TIMES}
    print(f"noise-aware classifier accuracy on noised test images: {noisy_acc}", flush=True)

    eval_clf = load_eval_classifier(device=device)
    n_ref = min(2000, len(x_test))
    ref_feats = classifier_features(x_test[:n_ref], eval_clf)
    ref_spread = within_class_spread(ref_feats, test_labels[:n_ref])

    def score(samples: Tensor, labels: Tensor) -> dict:
        feats = classifier_features(samples, eval_clf)
        with torch.no_grad():
            pred = torch.cat([eval_clf(samples[i:i + 1000].to(device)).argmax(1).cpu() for i in range(0, len(samples), 1000)])
        return {"fd_classifier": fd_from_features(feats, ref_feats),
                "sample_accuracy": float((pred == labels).double().mean()),
                "diversity": within_class_spread(feats, labels.numpy()) / ref_spread}

    rows, kept, skipped = sample_rows(args, unet, clf, schedule, device, score, t0)
    results_dir.mkdir(parents=True, exist_ok=True)
    name = "guidance_fashion_smoke" if args.smoke else "guidance_fashion"
    per_class = max(1, min(8, args.n_samples // NUM_CLASSES))
    samples_png(results_dir / f"{name}_samples.png", kept, per_class)

    dev_name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    n_unet, n_clf = count_parameters(unet), count_parameters(clf)
    notes = (
        f"{'SMOKE RUN (tiny nets, committed 200-image subset, 20 steps each): NOT a result. ' if args.smoke else ''}"
        f"Fashion-MNIST, {len(x_train)} training images. Device: {dev_name}. "
        f"(a) Class-conditional ADM-style UNet {unet_cfg} ({n_unet:,} parameters), 10 classes + learned null token "
        f"(index 10), label dropout p_uncond = {P_UNCOND} (Ho & Salimans 2022); linear schedule N = 1000, "
        f"ε-prediction, simple loss; batch {args.batch_size}, AdamW lr {UNET_LR:g} ({WARMUP}-step linear warm-up, "
        f"then constant), grad clip {GRAD_CLIP}, EMA 0.999 (decay min(0.999, (1+n)/(10+n))), "
        f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}: {unet_info['steps']} steps in "
        f"{unet_info['seconds']} s (budget {args.minutes:g} min), final mean loss {unet_info['final_loss']:.4f}. "
        f"(b) Noise-aware classifier p_t(c|x_t) = the UNet's encoder half + attention pooling (Dhariwal & Nichol "
        f"2021) {clf_cfg} ({n_clf:,} parameters), cross-entropy on x_t ~ q(x_t|x₀) with t ~ U{{1..1000}}; AdamW lr "
        f"{CLF_LR:g}, weight decay {CLF_WD}, warm-up then linear decay to 0 over the budget (ADM's classifier recipe), "
        f"no EMA: {clf_info['steps']} steps in {clf_info['seconds']} s (budget {args.classifier_minutes:g} min), "
        f"final mean loss {clf_info['final_loss']:.4f}. Its accuracy on the {len(x_test)} test images noised at "
        f"t = 0/250/500/750: " + ", ".join(f"{v:.3f}" for v in noisy_acc.values()) + ".\n\n"
        f"Sampling: DDIM η = 0 (Song et al. 2021), {args.sample_steps} uniform steps, x̂₀ clipped to [−1, 1] (as "
        f"ADM), n = {args.n_samples} per row with intended classes cycling 0..9, the SAME x_T (CPU seed "
        f"{args.seed + 1}) in every row, so rows differ only by the guidance. DDIM rather than DDPM because it is "
        f"deterministic (a paired comparison: no sampling noise between rows) and its ε̃ update is exactly "
        f"Dhariwal & Nichol's Alg. 2 for classifier guidance. NFE = {args.sample_steps} per row; a CFG step is ONE "
        f"network call on the doubled batch (`batched_pair`); a classifier-guidance step is one UNet call plus one "
        f"classifier forward/backward. Rows: `cfg` ε̃ = ε(x|∅) + λ(ε(x|c) − ε(x|∅)) (λ = 0: unconditional, λ = 1: "
        f"conditional); `classifier (uncond)` ε̃ = ε(x|∅) − λ σ_t ∇ log p_t(c|x) (λ = 0 is the unconditional "
        f"model again: it must match cfg λ = 0 up to batch-size round-off); `classifier (cond)` the same on ε(x|c).\n\n"
        f"Columns: fd_classifier = Fréchet distance between Gaussians fitted to the in-project evaluation "
        f"classifier's penultimate features (benchmarks/weights/fashion_eval_classifier) of the samples and of the "
        f"first {n_ref} test images (the FID formula on other features: NOT FID, not comparable to published "
        f"FIDs); sample_accuracy = fraction of samples the evaluation classifier assigns to the intended label (λ = 0 "
        f"rows ignore the label, so ≈ chance, 0.1, there: that is the point); diversity = mean over the 10 classes of "
        f"tr Cov(eval features | intended class) of the samples divided by the same statistic of the {n_ref} test "
        f"images grouped by their true labels (1 = data-like within-class spread, < 1 concentrated; for λ = 0 rows "
        f"the groups are arbitrary, so it measures the total, not the within-class, spread); seconds = wall time of the row's "
        f"sampling (device-synchronised, metrics excluded)."
        + (f" Skipped for the time limit ({args.time_limit:g} s): {', '.join(skipped)}." if skipped else "")
        + f" Whole script: {time.perf_counter() - t0:.0f} s. Sample grid: {name}_samples.png (rows = classes "
        f"0..9; blocks = CFG λ = 0, 1, 4).")
    extra = {"notes": notes, "noise_aware_classifier_accuracy": noisy_acc, "unet": {**unet_info, "parameters": n_unet,
             "config": unet_cfg}, "classifier": {**clf_info, "parameters": n_clf, "config": clf_cfg},
             "sampler": {"name": "ddim", "eta": 0.0, "steps": args.sample_steps, "clip_x0": [-1.0, 1.0]},
             "n_samples": args.n_samples, "n_reference": n_ref, "device": dev_name, "skipped_rows": skipped}
    write_results(name, rows, title="Fashion-MNIST: classifier-free vs classifier guidance (FD-classifier, accuracy, "
                  "diversity)", notes=notes, extra=extra, results_dir=results_dir)


if __name__ == "__main__":
    main()
