"""Device check for the images domain: train the Fashion-MNIST UNet on a GPU and report iterations/s at batch 128
in bf16 and fp32.

``benchmarks/results/gpu_images.*`` come from an H200 (``benchmarks/device_run.sh``, 8 s timed per precision):
about 15 it/s in both precisions: bf16 gains nothing, so at this model size a step is bound by per-step host work
(kernel launches and host synchronisations), not by the GPU's arithmetic; which part dominates is not yet profiled.

Each precision trains the engine's ``DiffusionModule`` (the images domain's UNet, the engine's bf16 autocast path,
the core's denoising loss, linear schedule N = 1000, ε-prediction, AdamW + EMA) on random batches of the real
training set held on the device, for ``--seconds`` after ``--warmup`` steps; it/s = timed steps / timed seconds
(``torch.cuda.synchronize`` around the timer). Batch 128 by default.

    python benchmarks/gpu_images.py                     # GPU: 2 × 150 s, ADM-sized UNet (64 ch, 1-2-2, attn 14)
    python benchmarks/gpu_images.py --tiny              # CPU smoke test: tiny UNet, batch 8, 3 timed steps, subset
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import write_results  # noqa: E402
from sciddpm.domains.images.adapter import ImagesDomain  # noqa: E402
from sciddpm.objectives import denoising_loss  # noqa: E402
from sciddpm.schedules import schedule_from_config  # noqa: E402
from sciddpm.spaces import DenseSpace  # noqa: E402
from sciddpm.training import DiffusionModule, config_from_dict  # noqa: E402

GPU_UNET = {"model_channels": 64, "channel_mult": [1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [14],
            "dropout": 0.1, "norm_groups": 32}
TINY_UNET = {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
             "dropout": 0.0, "norm_groups": 4}


def train_for(precision: str, x_train: torch.Tensor, args: argparse.Namespace, backbone: dict) -> dict:
    """Train one DiffusionModule for ``args.warmup`` untimed + (``args.steps`` or ``args.seconds``) timed steps."""
    device = x_train.device
    cfg = config_from_dict({"domain": "images", "data": {"path": args.data}, "backbone": backbone,
                            "batch_size": args.batch_size, "precision": precision, "lr": 2e-4, "seed": 0})
    domain = ImagesDomain(cfg.data)
    module = DiffusionModule(asdict(cfg), domain=domain).to(device)
    opt = torch.optim.AdamW(module.net.parameters(), lr=cfg.lr)
    gen = torch.Generator(device=device).manual_seed(0)

    def step() -> float:
        idx = torch.randint(0, len(x_train), (args.batch_size,), device=device, generator=gen)
        x0 = x_train[idx]
        out = denoising_loss(module, module.schedule, DenseSpace(x0.shape, device=device), x0)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(module.net.parameters(), cfg.grad_clip)
        opt.step()
        module.update_ema()
        return out.loss.detach()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    start, n, loss = time.perf_counter(), 0, None
    while (n < args.steps) if args.steps else (time.perf_counter() - start < args.seconds):
        loss = step()
        n += 1
    sync()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"precision": precision, "batch_size": args.batch_size, "timed_steps": n, "seconds": round(elapsed, 2),
            "it_per_s": n / elapsed, "images_per_s": n * args.batch_size / elapsed,
            "final_loss": float(loss) if loss is not None else None, "peak_mem_gib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fashion_mnist"))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=150.0, help="timed training per precision")
    ap.add_argument("--steps", type=int, default=0, help="timed steps instead of --seconds (0: use seconds)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--backbone", default=None, help="UNet config JSON (default: the ADM-sized GPU_UNET)")
    ap.add_argument("--precisions", default="bf16,32")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny UNet, batch 8, 2+3 steps, subset")
    ap.add_argument("--results-dir", default=None, help="where to write gpu_images.{json,md} (default results/)")
    args = ap.parse_args()
    backbone = json.loads(args.backbone) if args.backbone else GPU_UNET
    if args.tiny:
        args.batch_size, args.steps, args.warmup, backbone = 8, 3, 2, TINY_UNET
        args.data = str(ROOT / "tests" / "data" / "fashion_mnist_subset")
        torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        print("warning: no CUDA device; timing the CPU (use --tiny for a smoke test)", file=sys.stderr)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        torch.backends.cudnn.allow_tf32 = False
    x_train = ImagesDomain({"path": args.data}).train_dataset({"path": args.data}).tensors[0].to(device)
    rows = []
    for precision in args.precisions.split(","):
        rows.append(train_for(precision.strip(), x_train, args, backbone))
        print(rows[-1], flush=True)
    images = ImagesDomain({})
    n_params = sum(p.numel() for p in images.build_backbone(backbone, schedule_from_config(images.default_schedule))
                   .parameters())
    notes = (f"UNet {json.dumps(backbone)} ({n_params:,} parameters), {len(x_train)} training images on the device, "
             f"{args.warmup} warm-up steps then {'%d steps' % args.steps if args.steps else '%g s' % args.seconds} "
             f"timed per precision; bf16 = the engine's autocast around the network (weights, optimiser and loss "
             f"in fp32); fp32 with TF32 disabled. Device: {device}"
             + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else "") + "."
             + (" --tiny CPU smoke run: NOT a performance number." if args.tiny else ""))
    kwargs = {"results_dir": Path(args.results_dir)} if args.results_dir else {}
    name = "gpu_images_tiny" if args.tiny else "gpu_images"
    write_results(name, rows, title="Images UNet training throughput (batch %d)" % args.batch_size, notes=notes,
                  **kwargs)


if __name__ == "__main__":
    main()
