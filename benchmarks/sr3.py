"""SR3 2× super-resolution on Fashion-MNIST (Saharia et al. 2021): 14×14 → 28×28, vs bicubic and nearest.

Trains the images domain's UNet with ``cond_channels = 1`` (SR3: ε̂ = UNet(cat(y_t, bicubic_up(x_LR)), t)) on the full
Fashion-MNIST training set for a wall budget (``--minutes``) in a plain device-resident loop (random batches of the
train set held on the device, the core's ``denoising_loss``, AdamW with linear warm-up, EMA, bf16 autocast around the
network on CUDA), then super-resolves the LR versions (``sr3.downsample``: bicubic, anti-aliased, clamped) of the
first ``--n-test`` test images with DDPM (β̃, 100 steps) and DPM-Solver++(2M) (20 steps) from the EMA weights, and
reports PSNR / SSIM against the HR test images next to bicubic and nearest-neighbour upsampling of the same LR inputs,
plus the FD-classifier of each method's outputs vs the HR images and, budget permitting, the per-pixel mean of 4 SR
samples per image. Writes ``sr3.{json,md}`` and ``sr3_samples.png`` to ``--results-dir``.

    python benchmarks/sr3.py --device cuda --results-dir R          # GPU: 3 min training, <= 5 min in all (H200)
    python benchmarks/sr3.py --smoke --results-dir /tmp/sr3_smoke   # CPU/GPU gate: tiny UNet, subset, 20 steps
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_results  # noqa: E402
from benchmarks._resident import sync, train_resident  # noqa: E402
from sciddpm.domains.images.adapter import ImagesDomain, image_grid  # noqa: E402
from sciddpm.domains.images.data import from_model_range, load_fashion_mnist, to_model_range  # noqa: E402
from sciddpm.domains.images.metrics import (classifier_features, fd_from_features, load_eval_classifier, psnr,  # noqa: E402
                                            ssim)
from sciddpm.domains.images.sr3 import bicubic_upsample, downsample, nearest_upsample, super_resolve  # noqa: E402
from sciddpm.objectives import denoising_loss  # noqa: E402
from sciddpm.schedules import LinearSchedule  # noqa: E402
from sciddpm.spaces import DenseSpace  # noqa: E402

GPU_UNET = {"model_channels": 64, "channel_mult": [1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [14],
            "dropout": 0.1, "norm_groups": 32}
TINY_UNET = {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
             "dropout": 0.0, "norm_groups": 4}
SUBSET = ROOT / "tests" / "data" / "fashion_mnist_subset"


class Forward:
    """net(x, t, **cond) with bf16 autocast on CUDA (output cast back to float32 for the loss and the samplers)."""

    def __init__(self, net: torch.nn.Module, device: torch.device) -> None:
        self.net, self.bf16 = net, device.type == "cuda"
        self.device_type = device.type

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.net(x, t, **cond)
        return out.float()


def sr_samples(ema: torch.nn.Module, schedule: LinearSchedule, low: torch.Tensor, sampler: str, steps: int,
               gen: torch.Generator, args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, float]:
    """One SR sample per LR image (chunks of ``--eval-batch``), returned on the CPU in [−1, 1], and the wall seconds."""
    fwd = Forward(ema, device)
    sync(device)
    start = time.perf_counter()
    outs = [super_resolve(fwd, schedule, low[i:i + args.eval_batch], sampler=sampler, steps=steps, generator=gen,
                          factor=args.factor).sample.float().clamp(-1, 1).cpu()
            for i in range(0, len(low), args.eval_batch)]
    sync(device)
    return torch.cat(outs), time.perf_counter() - start


def save_figure(path: Path, low: torch.Tensor, bicubic: torch.Tensor, sr: torch.Tensor, high: torch.Tensor,
                sr_label: str) -> None:
    """4 rows × 10 images: LR (nearest-upsampled) / bicubic / SR3 / HR, 8-bit greyscale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(10, len(high))
    rows = [nearest_upsample(low[:n], high.shape[-2:]), bicubic[:n], sr[:n], high[:n]]
    grid = image_grid(torch.cat(rows), nrow=n)
    fig, ax = plt.subplots(figsize=(1.0 * n + 1.6, 4.6), dpi=100)
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    cell = grid.shape[0] / 4
    ax.set_yticks([cell * (i + 0.5) for i in range(4)])
    ax.set_yticklabels([f"LR {low.shape[-1]}² (nearest)", "bicubic", sr_label, f"HR {high.shape[-1]}²"])
    ax.set_xticks([])
    ax.set_title("SR3 2× super-resolution, first test images")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fashion_mnist"))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall budget")
    ap.add_argument("--eval-minutes", type=float, default=1.5,
                    help="wall budget for the optional mean-of-4 rows (the two single-sample rows always run)")
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--eval-batch", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--max-steps", type=int, default=10**9)
    ap.add_argument("--ddpm-steps", type=int, default=100)
    ap.add_argument("--dpm-steps", type=int, default=20)
    ap.add_argument("--factor", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=500)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny UNet, committed subset, 20 steps, 20 test images, 5 sampling steps (same code paths)")
    ap.add_argument("--results-dir", default=None, help="default benchmarks/results (smoke: /tmp/sr3_smoke)")
    args = ap.parse_args()
    backbone = GPU_UNET
    if args.smoke:
        torch.set_num_threads(1)
        backbone, args.data, args.max_steps, args.n_test = TINY_UNET, str(SUBSET), 20, 20
        args.batch_size, args.ddpm_steps, args.dpm_steps, args.warmup, args.log_every = 16, 5, 5, 5, 10
        args.minutes = min(args.minutes, 1.0)
    name = "sr3_smoke" if args.smoke else "sr3"
    results_dir = Path(args.results_dir) if args.results_dir else (
        Path("/tmp/sr3_smoke") if args.smoke else ROOT / "benchmarks" / "results")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)  # the global RNG draws the training times and noise inside denoising_loss
    t_start = time.perf_counter()

    train_u8, _ = load_fashion_mnist(args.data, "train")
    test_u8, _ = load_fashion_mnist(args.data, "test")
    if args.n_test > len(test_u8):
        raise ValueError(f"--n-test {args.n_test} exceeds the {len(test_u8)} test images in {args.data}")
    x_train = to_model_range(train_u8).to(device)
    low_train = downsample(x_train, args.factor)  # the degradation is deterministic: computed once
    high_cpu = to_model_range(test_u8[: args.n_test])
    low = downsample(high_cpu.to(device), args.factor)
    low_cpu = low.cpu()

    domain = ImagesDomain({"super_resolution": args.factor})
    schedule = LinearSchedule(1000)
    net = domain.build_backbone(backbone, schedule).to(device)
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    n_params = sum(p.numel() for p in net.parameters())
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"SR3 x{args.factor}: {len(x_train)} train images, UNet {n_params:,} params on {dev_name}", flush=True)

    fwd = Forward(net, device)

    def sr3_loss(_: torch.nn.Module, x0: torch.Tensor, low_x0: torch.Tensor) -> torch.Tensor:
        """ε-MSE (Ho et al. 2020) of UNet(cat(x_t, upsample(x_LR)), t) (Saharia et al. 2021)."""
        return denoising_loss(fwd, schedule, DenseSpace(x0.shape, device=device), x0, cond_image=low_x0).loss

    _, info = train_resident(net, sr3_loss, (x_train, low_train), lr=args.lr, seconds=args.minutes * 60.0,
                             max_steps=args.max_steps, batch_size=args.batch_size, warmup=args.warmup, ema=ema,
                             ema_decay=args.ema, generator=torch.Generator(device=device).manual_seed(args.seed),
                             label="sr3", log_every=args.log_every)
    print(f"trained {info['steps']} steps in {info['seconds']:.1f} s", flush=True)
    del x_train, low_train
    ema.eval()

    clf = load_eval_classifier(device=device)
    high_u8 = from_model_range(high_cpu)
    ref_feat = classifier_features(high_cpu, clf)
    floor = None
    if len(test_u8) >= 2 * args.n_test:  # FD between two disjoint sets of HR test images of the same size
        floor = fd_from_features(classifier_features(to_model_range(test_u8[args.n_test: 2 * args.n_test]), clf),
                                 ref_feat)

    def row(method: str, steps: int | str, images: torch.Tensor, seconds: float) -> dict[str, Any]:
        px = from_model_range(images)
        r = {"method": method, "steps": steps, "psnr_db": psnr(px, high_u8, 255.0), "ssim": ssim(px, high_u8, 255.0),
             "fd_classifier": fd_from_features(classifier_features(images, clf), ref_feat), "seconds": round(seconds, 3)}
        print(r, flush=True)
        return r

    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    bicubic = bicubic_upsample(low, high_cpu.shape[-2:]).cpu()
    rows.append(row("bicubic", "-", bicubic, time.perf_counter() - t0))
    t0 = time.perf_counter()
    rows.append(row("nearest", "-", nearest_upsample(low, high_cpu.shape[-2:]).cpu(), time.perf_counter() - t0))

    eval_start = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    draws: dict[str, tuple[int, list[torch.Tensor], float]] = {}
    for label, sampler, steps in (("sr3 dpm-solver++(2M)", "dpm_solver_pp_2m", args.dpm_steps),
                                  ("sr3 ddpm", "ddpm", args.ddpm_steps)):
        out, sec = sr_samples(ema, schedule, low, sampler, steps, gen, args, device)
        draws[sampler] = (steps, [out], sec)
        rows.append(row(label, steps, out, sec))
    sec_per_nfe = sum(d[2] for d in draws.values()) / sum(d[0] for d in draws.values())
    skipped = []
    deadline = eval_start + args.eval_minutes * 60.0
    for label, sampler in (("sr3 dpm-solver++(2M) (mean of 4)", "dpm_solver_pp_2m"), ("sr3 ddpm (mean of 4)", "ddpm")):
        steps, outs, sec = draws[sampler]
        if time.perf_counter() + 3 * steps * sec_per_nfe * 1.2 > deadline:
            skipped.append(label)
            print(f"skipped {label}: predicted {3 * steps * sec_per_nfe:.1f} s exceeds the eval budget", flush=True)
            continue
        for _ in range(3):
            out, s = sr_samples(ema, schedule, low, sampler, steps, gen, args, device)
            outs.append(out)
            sec += s
        rows.append(row(label, steps, torch.stack(outs).mean(0), sec))

    png = results_dir / f"{name}_samples.png"
    results_dir.mkdir(parents=True, exist_ok=True)
    save_figure(png, low_cpu, bicubic, draws["ddpm"][1][0], high_cpu, f"SR3 (DDPM {args.ddpm_steps})")
    total = time.perf_counter() - t_start
    notes = (
        f"Training: SR3 UNet {json.dumps(backbone)} + cond_channels=1 ({n_params:,} parameters), linear schedule "
        f"N = 1000, ε-prediction, batch {args.batch_size}, AdamW lr {args.lr:g} (linear warm-up {args.warmup} steps, "
        f"then constant), grad clip 1, EMA {args.ema} (samples use the EMA weights), "
        f"{'bf16 autocast around the network' if device.type == 'cuda' else 'fp32'}; {info['steps']} steps in "
        f"{info['seconds']:.1f} s wall (budget {args.minutes:g} min) on {dev_name}, on "
        f"{len(train_u8)} training images held on the device. Whole script: {total:.0f} s.\n\n"
        f"Task: LR = clamp(bicubic anti-aliased downsample of the 28×28 test image to {28 // args.factor}×"
        f"{28 // args.factor}, −1, 1) (`sr3.downsample`); the first {args.n_test} test images. Columns: psnr_db = "
        f"PSNR in dB and ssim = SSIM (Wang et al. 2004: Gaussian window 11, σ 1.5, K1 0.01, K2 0.03, valid region, "
        f"population covariance), both per image on 8-bit pixels (outputs clamped to [−1, 1] and rounded, L = 255) "
        f"then averaged over images; fd_classifier = Fréchet distance of the in-project evaluation classifier's "
        f"features (NOT FID) between the method's {args.n_test} outputs and the {args.n_test} HR images"
        + (f" (floor: two disjoint sets of {args.n_test} HR test images give {floor:.3f})" if floor is not None else "")
        + f"; steps = sampler steps (= network calls per sample); seconds = wall time to produce all {args.n_test} "
        f"outputs (the mean-of-4 rows: all 4 draws). SR rows: DDPM ancestral sampling (β̃ variance, "
        f"{args.ddpm_steps} steps) and DPM-Solver++(2M) ({args.dpm_steps} steps, deterministic given y_T), uniform "
        f"time grids, no x̂₀ clipping; 'mean of 4' = pixel mean of 4 independent SR samples per image (the first is "
        f"the single-sample row's). Baselines bicubic (clamped) and nearest upsampling of the same LR inputs.\n\n"
        f"Diffusion SR outputs are samples from p(HR | LR), not its mean: they invent plausible high-frequency "
        f"detail, which PSNR/SSIM penalise, so they are expected to score lower PSNR than a regression/mean "
        f"estimate at equal or better perceptual quality (Saharia et al. 2021 report that SR3 has lower PSNR/SSIM "
        f"than a regression baseline while winning human evaluations); averaging samples moves towards the "
        f"posterior mean (higher PSNR, blurrier, typically worse FD). Samples are stochastic: one seed, no error bars. "
        f"FD-classifier here compares each output set with the HR versions of the same images, so it can fall below "
        f"the disjoint-set floor. Known at short training (a 1-min, ~700-step diagnostic on an H200, 500 test images): "
        f"the deterministic ODE samplers (DPM-Solver++(2M) and DDIM, 20-100 steps) leave salt-and-pepper speckle on "
        f"the black backgrounds and score below bicubic (≈17.5 dB vs 19.2), the same in bf16 and fp32 and on uniform "
        f"and logSNR grids, while ancestral DDPM is clean (≈24.4 dB at 100 steps, 24.9 at 20); DDIM with x̂₀ clipping "
        f"gave 21.3 dB. Speckle also explains why averaging DPM-Solver++ samples can lower PSNR (impulses average to "
        f"grey noise)."
        + (f" Skipped for the eval budget ({args.eval_minutes:g} min): {', '.join(skipped)}." if skipped else "")
        + (" SMOKE RUN (tiny UNet, committed subset, 20 steps): not a result." if args.smoke else ""))
    extra = {"train_steps": info["steps"], "train_seconds": round(info["seconds"], 2), "parameters": n_params,
             "device": dev_name, "backbone": backbone, "factor": args.factor, "n_test": args.n_test,
             "fd_floor_hr_vs_hr": floor, "skipped": skipped, "loss_curve": info["loss_curve"],
             "total_seconds": round(total, 1), "figure": png.name}
    write_results(name, rows, title=f"SR3 {args.factor}× super-resolution on Fashion-MNIST "
                                    f"({28 // args.factor}² → 28²)", notes=notes, extra=extra, results_dir=results_dir)
    print(f"wrote {png}", flush=True)


if __name__ == "__main__":
    main()
