"""Train the Fashion-MNIST evaluation classifier used by the FD-classifier metric (seeded, CPU).

Writes ``benchmarks/weights/fashion_eval_classifier.safetensors`` (+ ``.config.json``) and the results
table ``fashion_eval_classifier.{json,md}``: per-epoch train loss and test accuracy, then FD-classifier
reference values (real train vs real test; test vs test + Gaussian pixel noise) to show the metric's scale.

Run: python benchmarks/train_eval_classifier.py [--data ../shared/data/fashion_mnist] [--epochs 4]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/train_eval_classifier.py`
    sys.path.insert(0, str(REPO))

from benchmarks._report import RESULTS_DIR, write_results  # noqa: E402
from sciddpm.domains.images.data import load_fashion_mnist, to_model_range
from sciddpm.domains.images.metrics import (EvalClassifier, classifier_accuracy, classifier_features,
                                            fd_from_features, save_eval_classifier)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion_mnist"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS_DIR.parent / "weights" / "fashion_eval_classifier.safetensors")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    xtr_u8, ytr_np = load_fashion_mnist(args.data, "train")
    xte_u8, yte_np = load_fashion_mnist(args.data, "test")
    xtr, ytr = to_model_range(xtr_u8), torch.from_numpy(ytr_np)
    xte, yte = to_model_range(xte_u8), torch.from_numpy(yte_np)

    model = EvalClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = len(xtr) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(args.seed)
    rows: list[dict] = []
    t0 = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            xb = xtr[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # horizontal flips: label-preserving here
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        acc = classifier_accuracy(xte, yte, model)
        rows.append({"row": f"epoch {epoch}", "train_loss": total / steps_per_epoch, "test_accuracy": acc,
                     "fd_classifier": "", "wall_s": round(time.time() - t0, 1)})
        print(rows[-1], flush=True)

    model.eval()
    test_acc = rows[-1]["test_accuracy"]
    save_eval_classifier(model, args.out, info={"test_accuracy": test_acc, "epochs": args.epochs, "seed": args.seed,
                                                "trained_on": "Fashion-MNIST train (60,000)"})
    f_tr, f_te = classifier_features(xtr, model), classifier_features(xte, model)
    ref = [("FD-classifier: real train (60k) vs real test (10k)", fd_from_features(f_tr, f_te)),
           ("FD-classifier: real test vs itself", fd_from_features(f_te, f_te))]
    noise_gen = torch.Generator().manual_seed(args.seed + 1)
    for sigma in (0.1, 0.3):
        noisy = (xte + sigma * torch.randn(xte.shape, generator=noise_gen)).clamp(-1, 1)
        ref.append((f"FD-classifier: test vs test + N(0, {sigma}²) noise (clipped to [-1, 1])",
                    fd_from_features(f_te, classifier_features(noisy, model))))
    for name, fd in ref:
        rows.append({"row": name, "train_loss": "", "test_accuracy": "", "fd_classifier": fd, "wall_s": ""})
    n_params = sum(p.numel() for p in model.parameters())
    write_results(
        "fashion_eval_classifier", rows, title="Fashion-MNIST evaluation classifier (for FD-classifier)",
        notes=(f"Small CNN ({n_params:,} parameters), seed {args.seed}, {args.epochs} epochs AdamW + one-cycle, "
               f"batch {args.batch_size}, random horizontal flips, {args.threads} CPU threads. Final test accuracy "
               f"{test_acc:.4f}. Weights: `{args.out.name}` (safetensors) with `{args.out.stem}.config.json` "
               "(config + SHA-256). FD-classifier is the Fréchet distance on this classifier's 128-d penultimate "
               "features: NOT FID, not comparable with Inception-based numbers."),
        extra={"config": model.config(), "num_parameters": n_params, "test_accuracy": test_acc},
    )


if __name__ == "__main__":
    main()
