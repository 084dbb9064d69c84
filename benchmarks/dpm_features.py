"""DPM features for label-efficient Fashion-MNIST classification (Baranchuk et al., ICLR 2022, adapted from
segmentation to classification by global average pooling of the decoder blocks).

100 labels (10 per class, drawn from the train set with each of ``--label-seeds`` seeds), tested on the full 10k
test set, for three feature sources with the same probe and hyper-parameters:

(a) a diffusion UNet trained here on all 60k training images (unconditional, ε-prediction, linear schedule N = 1000,
    AdamW 2e-4 with linear warm-up, EMA 0.999, bf16 autocast on CUDA, a plain device-resident loop for ``--minutes``)
    or loaded from ``--model <export dir>``;
(b) the same architecture randomly initialised (with ``zero_init=False``: the default zero-initialised residual
    output convs would make every residual branch vanish and the features degenerate);
(c) raw pixels.

Timesteps and blocks are fixed a priori (t ∈ {50, 150, 250} of 1000, the middle decoder blocks, as Baranchuk et al.);
a row per single t is reported too, and one row selects t by stratified k-fold cross-validation on the 100 labelled
images only (never on test data).

    python benchmarks/dpm_features.py --device cuda              # ~3 min training + ~1 min features/probes (H200)
    python benchmarks/dpm_features.py --smoke --device cpu      # tiny UNet, committed subset, < 90 s on 1 thread
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_results  # noqa: E402
from benchmarks._resident import train_resident  # noqa: E402
from sciddpm.domains.images.adapter import ImagesDomain  # noqa: E402
from sciddpm.domains.images.data import load_fashion_mnist, to_model_range  # noqa: E402
from sciddpm.domains.images.features import (cross_val_accuracy, decoder_block_count, extract_features,  # noqa: E402
                                             middle_blocks, pixel_features, probe_accuracy, sample_labelled,
                                             train_probe)
from sciddpm.export import export_model, load  # noqa: E402
from sciddpm.objectives import denoising_loss  # noqa: E402
from sciddpm.spaces import DenseSpace  # noqa: E402
from sciddpm.training import DiffusionModule, config_from_dict  # noqa: E402

GPU_UNET = {"model_channels": 64, "channel_mult": [1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [14],
            "dropout": 0.1, "norm_groups": 32}
TINY_UNET = {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
             "dropout": 0.0, "norm_groups": 4}
SUPERVISED_REF = "0.908 test accuracy for the in-project CNN trained on all 60k labels (fashion_eval_classifier.md)"


def log(msg: str, start: float) -> None:
    """Print a progress line with the seconds since ``start``."""
    print(f"[dpm_features {time.perf_counter() - start:7.1f}s] {msg}", flush=True)


def ints(text: str) -> list[int]:
    """Parse a comma-separated list of integers ("50,150,250")."""
    return [int(v) for v in text.split(",") if v.strip()]


def train_diffusion(x_train: torch.Tensor, backbone: dict, args: argparse.Namespace):
    """The unconditional UNet with the core's ε-MSE (``denoising_loss``, Ho et al. 2020) in the benchmarks'
    device-resident loop (AdamW with linear warm-up, grad-norm clip 1, the engine's EMA rule); returns the
    engine's ``DiffusionModule`` (for the export) and the training info."""
    device = x_train.device
    bf16 = device.type == "cuda"
    cfg = config_from_dict({"domain": "images", "data": {"path": args.data}, "backbone": backbone,
                            "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": args.warmup,
                            "lr_schedule": "constant", "ema_decay": 0.999, "precision": "bf16" if bf16 else "32",
                            "seed": args.seed, "max_steps": max(1, args.steps or 10**7)})
    torch.manual_seed(args.seed)
    module = DiffusionModule(asdict(cfg), domain=ImagesDomain(cfg.data)).to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed)

    def loss(_: torch.nn.Module, x0: torch.Tensor) -> torch.Tensor:  # module.forward: bf16 autocast around the UNet
        return denoising_loss(module, module.schedule, DenseSpace(x0.shape, device=device), x0, generator=gen).loss

    _, info = train_resident(module.net, loss, (x_train,), lr=cfg.lr, seconds=args.minutes * 60.0,
                             max_steps=args.steps, batch_size=cfg.batch_size, warmup=cfg.warmup_steps, ema=module.ema,
                             ema_decay=cfg.ema_decay, grad_clip=cfg.grad_clip, generator=gen, label="diffusion",
                             log_every=100)
    return module, info


def fit_and_score(feats_l: torch.Tensor, y_l: torch.Tensor, pos: list[torch.Tensor], feats_t: torch.Tensor,
                  y_t: torch.Tensor, seeds: list[int], probe_kw: dict) -> list[float]:
    """Test accuracy (1/M) Σ 1[ŷ = y] on the M test images of one probe per label seed, trained on that seed's labelled rows only."""
    return [probe_accuracy(train_probe(feats_l[p], y_l[p], seed=s, **probe_kw), feats_t, y_t)
            for s, p in zip(seeds, pos)]


def summary(name: str, timesteps: str, blocks: str, labels: int, accs: list[float]) -> dict:
    """A result row: mean and sample SD √(Σ(a − ā)²/(S − 1)) of the per-seed accuracies (SD 0 for one seed)."""
    return {"features": name, "timesteps": timesteps, "blocks": blocks, "labels": labels,
            "accuracy_mean": statistics.mean(accs), "accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "seeds": len(accs)}


def main() -> None:
    """Train (or load) the diffusion UNet, extract features, fit the probes per label seed, write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fashion_mnist"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--minutes", type=float, default=3.0, help="diffusion training wall budget")
    ap.add_argument("--steps", type=int, default=0, help="train exactly this many steps instead (0: use --minutes)")
    ap.add_argument("--model", default=None, help="export dir of a trained images model: skip training")
    ap.add_argument("--output", default=str(ROOT / "runs" / "dpm_features"), help="where the trained export goes")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--label-seeds", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--times", default="50,150,250", help="a-priori timesteps (Baranchuk et al.)")
    ap.add_argument("--single-times", default="10,50,150,250,500,1000", help="one row per t (trained UNet)")
    ap.add_argument("--blocks", default="", help="decoder blocks (default: middle_blocks, fixed a priori)")
    ap.add_argument("--probe-hidden", type=int, default=256)
    ap.add_argument("--probe-epochs", type=int, default=300)
    ap.add_argument("--probe-lr", type=float, default=1e-3)
    ap.add_argument("--probe-wd", type=float, default=0.1)
    ap.add_argument("--cv-folds", type=int, default=5, help="k of the label-only CV selection row (0: no such row)")
    ap.add_argument("--feature-batch", type=int, default=500)
    ap.add_argument("--smoke", action="store_true", help="tiny UNet, committed subset, 20 steps, 2 seeds")
    ap.add_argument("--results-dir", default=None, help="default benchmarks/results (smoke: /tmp/dpm_features_smoke)")
    args = ap.parse_args()
    backbone = GPU_UNET
    if args.smoke:
        torch.set_num_threads(1)
        backbone, args.steps, args.batch_size, args.warmup = TINY_UNET, 20, 16, 5
        args.data = str(ROOT / "tests" / "data" / "fashion_mnist_subset")
        args.label_seeds, args.probe_epochs, args.feature_batch = 2, 15, 64
        args.output = "/tmp/dpm_features_smoke_run"
    results_dir = Path(args.results_dir or ("/tmp/dpm_features_smoke" if args.smoke else ROOT / "benchmarks" / "results"))
    device = torch.device(args.device)
    start = time.perf_counter()

    train_u8, train_y = load_fashion_mnist(args.data, "train")
    test_u8, test_y = load_fashion_mnist(args.data, "test")
    x_train, x_test = to_model_range(train_u8), to_model_range(test_u8)
    y_train, y_test = torch.as_tensor(train_y), torch.as_tensor(test_y).to(device)
    log(f"data: {len(x_train)} train, {len(x_test)} test images; device {device}", start)

    if args.model:
        model = load(args.model).to(device)
        net, schedule = model.net.eval(), model.schedule
        train_info = {"loaded_from": str(args.model), "train_config": model.config}
    else:
        module, train_info = train_diffusion(x_train.to(device), backbone, args)
        net, schedule = module.ema.eval(), module.schedule
        export_model(module, Path(args.output) / "export")
        train_info["export"] = str(Path(args.output) / "export")
        log(f"trained {train_info['steps']} steps in {train_info['seconds']} s; export {train_info['export']}", start)
    unet_cfg = net.config()
    n_params = sum(p.numel() for p in net.parameters())
    torch.manual_seed(args.seed + 1)
    rand_net = type(net).from_config({**unet_cfg, "zero_init": False}, schedule).to(device).eval()

    n_blocks = decoder_block_count(net)
    blocks = ints(args.blocks) if args.blocks else list(middle_blocks(n_blocks))
    times = ints(args.times)
    singles = ints(args.single_times)
    all_times = list(dict.fromkeys(singles + times))
    seeds = list(range(args.label_seeds))
    labelled = [sample_labelled(y_train, args.per_class, s) for s in seeds]
    union = torch.unique(torch.cat(labelled))
    pos = [torch.searchsorted(union, idx).to(device) for idx in labelled]
    y_l = y_train[union].to(device)
    n_lab = len(labelled[0])
    probe_kw = {"hidden": args.probe_hidden, "epochs": args.probe_epochs, "lr": args.probe_lr,
                "weight_decay": args.probe_wd, "device": device, "num_classes": 10}

    def feats(which: torch.nn.Module, images: torch.Tensor, ts: list[int], seed: int) -> torch.Tensor:
        gen = torch.Generator(device=device).manual_seed(seed)
        return extract_features(which, schedule, images, ts, blocks, generator=gen, pool="mean",
                                batch_size=args.feature_batch)

    # ε seeds: 1000 for the labelled images, 2000 for the test images (the same ε for every t and both networks).
    f_l, f_t = feats(net, x_train[union], all_times, 1000), feats(net, x_test, all_times, 2000)
    width = f_l.shape[1] // len(all_times)

    def cols(ts: list[int]) -> torch.Tensor:
        return torch.cat([torch.arange(all_times.index(t) * width, (all_times.index(t) + 1) * width) for t in ts]).to(device)

    r_l, r_t = feats(rand_net, x_train[union], times, 1000), feats(rand_net, x_test, times, 2000)
    p_l, p_t = pixel_features(x_train[union]).to(device), pixel_features(x_test).to(device)
    log(f"features: {len(union)} labelled + {len(x_test)} test images, {len(all_times)} t, {width} dims per t", start)

    blk, tstr = ",".join(map(str, blocks)), ",".join(map(str, times))
    rows, per_seed = [], {}

    def add(name: str, ts: str, b: str, fl: torch.Tensor, ft: torch.Tensor) -> None:
        accs = fit_and_score(fl, y_l, pos, ft, y_test, seeds, probe_kw)
        rows.append(summary(name, ts, b, n_lab, accs))
        per_seed[f"{name} | t={ts}"] = accs
        log(f"{name} t={ts}: {rows[-1]['accuracy_mean']:.4f} ± {rows[-1]['accuracy_sd']:.4f}", start)

    c = cols(times)
    add("DPM (trained UNet, EMA)", tstr, blk, f_l[:, c], f_t[:, c])
    for t in singles:
        c = cols([t])
        add("DPM (trained UNet, EMA)", str(t), blk, f_l[:, c], f_t[:, c])
    add("random UNet (same arch, zero_init=False)", tstr, blk, r_l, r_t)
    add("raw pixels", "-", "-", p_l, p_t)

    cv_choice: list[str] = []
    if args.cv_folds:
        candidates = [[t] for t in singles] + [times]
        accs = []
        for s, p in zip(seeds, pos):
            scores = [cross_val_accuracy(f_l[p][:, cols(ts)], y_l[p], args.cv_folds, s, **probe_kw) for ts in candidates]
            best = candidates[max(range(len(candidates)), key=lambda i: scores[i])]
            cv_choice.append("+".join(map(str, best)))
            c = cols(best)
            accs.append(probe_accuracy(train_probe(f_l[p][:, c], y_l[p], seed=s, **probe_kw), f_t[:, c], y_test))
        rows.append(summary("DPM (trained UNet, EMA), t by label-only CV", "cv: " + " / ".join(cv_choice), blk,
                            n_lab, accs))
        per_seed["cv"] = accs
        log(f"CV-selected t per seed {cv_choice}: {rows[-1]['accuracy_mean']:.4f}", start)

    dims = {"dpm_per_t": width, "dpm_a_priori": width * len(times), "random_unet": r_l.shape[1], "pixels": p_l.shape[1]}
    source = (f"loaded from {args.model}" if args.model else
              f"trained here for {train_info['steps']} steps / {train_info['seconds']} s at batch {args.batch_size} "
              f"(AdamW lr {args.lr} with {args.warmup} warm-up steps, EMA 0.999, "
              f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}; final L_simple over the last <= 100 steps "
              f"{train_info['final_loss']:.5f})")
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    notes = (
        ("SMOKE RUN (tiny UNet, 200/100-image subset, 20 steps): NOT a result.\n\n" if args.smoke else "")
        + f"Task: Fashion-MNIST classification with {n_lab} labels ({args.per_class} per class, drawn from the train "
        f"set with label seeds 0..{args.label_seeds - 1}); accuracy on all {len(x_test)} test images; accuracy_mean ± "
        f"accuracy_sd = mean and sample SD over the {args.label_seeds} label seeds (each seed: a new labelled set "
        f"and a new probe initialisation). Chance is 0.10. Reference: {SUPERVISED_REF}.\n\n"
        f"Diffusion UNet: {json.dumps(unet_cfg)} ({n_params:,} parameters), unconditional, ε-prediction, linear "
        f"schedule N = 1000, {source}, on {device}{gpu}, all {len(x_train)} training images (no labels). Features are "
        f"read from the EMA weights.\n\nFeatures (Baranchuk et al. 2022, adapted to classification): x_t = √ᾱ_t x₀ + "
        f"√(1−ᾱ_t) ε with one fixed seeded ε per image (shared by all t and both networks), decoder blocks {blk} of "
        f"{n_blocks} (the middle of the decoder: Baranchuk's blocks 5–12 of 18 scaled to {n_blocks}), each globally "
        f"average-pooled, concatenated over blocks then over t. Dims: {dims}. timesteps and blocks were fixed before "
        f"seeing any result; the single-t rows are all reported (no selection on the test set). The 'label-only CV' "
        f"row picks, per label seed, among the single t's and the a-priori set the candidate with the best "
        f"{args.cv_folds}-fold stratified cross-validation accuracy on the {n_lab} labelled images only, then refits on "
        f"all {n_lab}; the chosen candidates are listed in its timesteps column.\n\n"
        f"Random UNet: the same architecture, seed {args.seed + 1}, built with zero_init=False (the default zero-"
        f"initialised residual output convs would make every residual branch zero and the features degenerate), "
        f"same t's, blocks and ε.\n\nProbe (identical for every row): standardisation z = (f − μ)/s with μ, s from the "
        f"labelled set only (s = 1 where constant), then MLP {'linear' if args.probe_hidden == 0 else f'D→{args.probe_hidden}→ReLU→10'}, "
        f"full-batch AdamW lr {args.probe_lr}, weight decay {args.probe_wd}, {args.probe_epochs} epochs, "
        f"cross-entropy; hyper-parameters fixed a priori (a sanity check of the raw-pixel probe used train images "
        f"50k–60k, never the test set). Columns: features = feature source; timesteps = diffusion t (of 1000); "
        f"blocks = decoder block indices; labels = labelled training images per seed; seeds = label seeds.\n\n"
        f"Wall time of the whole script: {time.perf_counter() - start:.0f} s.")
    write_results("dpm_features_smoke" if args.smoke else "dpm_features", rows,
                  title=f"DPM features: Fashion-MNIST with {n_lab} labels", notes=notes, results_dir=results_dir,
                  extra={"train": train_info, "unet": unet_cfg, "parameters": n_params, "feature_dims": dims,
                         "per_seed_accuracy": per_seed, "cv_choice": cv_choice,
                         "probe": {k: v for k, v in probe_kw.items() if k != "device"}})


if __name__ == "__main__":
    main()
