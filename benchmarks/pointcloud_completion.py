"""Point-cloud completion on ModelNet40 partial views: the PDR-style diffusion pipeline (coarse in K steps, with and
without the one-pass refinement) beside the baselines a practitioner tries first, all measured in one run.

Protocol. Training shapes: the first ``--per-class`` training shapes of each of ``--classes`` (8 classes), each with
``--views`` seeded partial views (hidden-point removal and viewpoint crop in turn). Test: the first
``--per-class-test`` test-split shapes of the same classes (seen) and of ``--novel`` classes (never trained on; PCN's
novel-category test), one fixed view each (kinds alternating over shapes). Clouds have ``--points`` points, partials
``--partial`` points. Methods, every one scored on the same test pairs:

* ``partial``: the partial cloud itself (resampled to N points by seeded repetition, so the exact EMD is defined);
* ``mirror``: PDR's mirror-and-join: the partial joined with its reflection in the coordinate plane that is the best
  mirror plane of the *training* shapes (smallest mean CD-L1 between a training shape and its reflection);
* ``nn_retrieval``: the training shape closest to the partial under the one-sided Chamfer distance
  mean_{p∈partial} min_{s∈shape} ‖p − s‖;
* ``regression``: the deterministic network of the same backbone trained with a Chamfer loss (PCN-style;
  ``refine.OnePassNet`` from a fixed template);
* ``coarse-K``: the conditional DDPM (engine-trained, EMA weights) sampled with DDIM (η = 0) at K = 10, 20, 50 and
  with ancestral DDPM at K = 1000;
* ``refined-K``: coarse-K followed by one pass of the refinement network trained on the coarse model's
  ``--refine-train-k``-step DDIM outputs of the training partials.

Metrics (``domains/pointclouds/metrics.py``): CD-L1 ×10³, CD-L2 ×10⁴, exact EMD ×10², F-score@0.01 (threshold on
the distance); seconds per shape on this machine (one thread), network calls per shape. Training uses fixed step
budgets (wall clock is noisy on a shared machine) and is cached in ``--run`` (rerun with the same arguments to reuse,
``--resume`` to continue an interrupted diffusion training).

Run: ``python benchmarks/pointcloud_completion.py`` (about an hour on one CPU thread at the defaults);
``--smoke`` runs everything in seconds on the bundled subset and writes to a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._report import RESULTS_DIR, markdown_table, write_results  # noqa: E402
from sciddpm.domains.pointclouds.adapter import TEST_VIEW_SEED, PointCloudDomain  # noqa: E402
from sciddpm.domains.pointclouds.data import load_shapes  # noqa: E402
from sciddpm.domains.pointclouds.metrics import completion_metrics, emd_exact, f_score, nearest_distances  # noqa: E402
from sciddpm.domains.pointclouds.refine import OnePassNet, train_one_pass  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "modelnet40_pc" / "modelnet40_1024.npz"
SEEN = ["airplane", "bed", "bookshelf", "chair", "monitor", "sofa", "table", "toilet"]
NOVEL = ["bottle", "car", "piano", "vase"]
METRICS = ("cd_l1", "cd_l2", "emd", "f1", "f1_5pct")
#: A second F-score threshold: at 256 points in the unit sphere neighbouring points are ~0.1 apart, so τ = 0.01
#: only counts points that coincide with ground-truth points (which the partial's own points do).
WIDE_TAU = 0.05


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--classes", default=",".join(SEEN))
    p.add_argument("--novel", default=",".join(NOVEL))
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--per-class-test", type=int, default=6)
    p.add_argument("--points", type=int, default=256)
    p.add_argument("--partial", type=int, default=128)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--channels", default="32,64,128")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--diffusion-steps", type=int, default=2500)
    p.add_argument("--regression-steps", type=int, default=1000)
    p.add_argument("--refine-steps", type=int, default=600)
    p.add_argument("--refine-train-k", type=int, default=20)
    p.add_argument("--ks", default="10,20,50")
    p.add_argument("--full-k", type=int, default=1000, help="steps of the ancestral DDPM reference (0: skip)")
    p.add_argument("--clip", type=float, default=1.0,
                   help="DDPM/DDIM clip their x0 prediction to [-clip, clip] (the unit sphere's box; 0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--run", type=Path, default=ROOT / "runs" / "pointcloud_completion")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--smoke", action="store_true", help="seconds, on the bundled subset, into a temporary folder")
    p.add_argument("--results-dir", type=Path, default=None)
    return p.parse_args(argv)


def smoke_args(args: argparse.Namespace, tmp: Path) -> argparse.Namespace:
    """The whole pipeline at toy scale on tests/data/modelnet40_tiny.npz (seconds)."""
    return argparse.Namespace(**{**vars(args), "data": ROOT / "tests" / "data" / "modelnet40_tiny.npz",
                                 "classes": "airplane,chair", "novel": "lamp,table", "per_class": 4,
                                 "per_class_test": 2, "points": 64, "partial": 32, "views": 2, "channels": "8,16",
                                 "k": 4, "batch_size": 8, "diffusion_steps": 3, "regression_steps": 3,
                                 "refine_steps": 3, "refine_train_k": 2, "ks": "2", "full_k": 5,
                                 "run": tmp / "run", "results_dir": tmp / "results"})


def resample(clouds: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Each cloud [P, 3] brought to n points: a seeded subsample, or all points plus seeded repeats."""
    rng = np.random.default_rng(seed)
    out = []
    for c in clouds:
        if len(c) >= n:
            idx = rng.choice(len(c), n, replace=False)
        else:
            idx = np.concatenate([np.arange(len(c)), rng.choice(len(c), n - len(c), replace=True)])
        out.append(c[idx])
    return np.stack(out).astype(np.float32)


def mirror_axis(train: np.ndarray) -> int:
    """The coordinate axis a whose plane x_a = 0 is the best mirror plane of the training shapes."""
    t = torch.as_tensor(train, dtype=torch.float64)
    scores = []
    for a in range(3):
        flipped = t.clone()
        flipped[..., a] = -flipped[..., a]
        scores.append(float(0.5 * (nearest_distances(t, flipped).mean() + nearest_distances(flipped, t).mean())))
    return int(np.argmin(scores))


def mirror_and_join(partial: np.ndarray, axis: int, n: int, seed: int) -> np.ndarray:
    """PDR's baseline: the partial ∪ its reflection x_axis → −x_axis, resampled to n points."""
    flipped = partial.copy()
    flipped[..., axis] = -flipped[..., axis]
    return resample(np.concatenate([partial, flipped], 1), n, seed)


def nn_retrieval(partial: np.ndarray, train_shapes: np.ndarray) -> np.ndarray:
    """For each partial, the training shape minimising mean_{p∈partial} min_{s} ‖p − s‖ (one-sided Chamfer)."""
    bank = torch.as_tensor(train_shapes, dtype=torch.float32)
    out = []
    for p in torch.as_tensor(partial, dtype=torch.float32):
        d = torch.cdist(p[None].expand(len(bank), -1, -1), bank).min(2).values.mean(1)
        out.append(train_shapes[int(d.argmin())])
    return np.stack(out)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), wall seconds it took)."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def one_pass_net(path: Path, schedule: Any, backbone: dict, steps: int, template: int, data: Callable,
                 seed: int, device: str) -> tuple[OnePassNet, float]:
    """Train (or reuse, if ``path`` holds the same step budget) a ``OnePassNet``; returns it and its training wall s."""
    from safetensors.torch import load_file, save_file

    net = OnePassNet(schedule, backbone, template_points=template, seed=seed).to(device)
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file() and json.loads(meta.read_text())["steps"] == steps:
        net.load_state_dict(load_file(str(path)))
        return net.eval(), json.loads(meta.read_text())["train_wall_s"]
    torch.manual_seed(seed)
    _, wall = timed(lambda: train_one_pass(net, data, steps, lr=1e-3, seed=seed,
                                           log=lambda s, l: print(f"  {path.stem} step {s} loss {l:.4f}", flush=True)
                                           if s % 100 == 0 else None))
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(path))
    meta.write_text(json.dumps({"steps": steps, "train_wall_s": wall}) + "\n")
    return net.eval(), wall


def diffusion_model(args: argparse.Namespace, data: dict, backbone: dict) -> tuple[Any, float]:
    """The conditional DDPM, trained with the engine (Lightning, EMA, safetensors export) or reused."""
    from sciddpm.config import config_from_dict
    from sciddpm.export import load
    from sciddpm.training import fit, latest_checkpoint

    cfg = config_from_dict({"domain": "pointclouds", "data": data, "backbone": backbone,
                            "batch_size": args.batch_size, "lr": 1e-3, "warmup_steps": min(100, args.diffusion_steps),
                            "max_steps": args.diffusion_steps, "ema_decay": 0.999, "checkpoint_every": 250,
                            "log_every": 50, "seed": args.seed, "accelerator": "cpu" if args.device == "cpu" else "auto"},
                           "pointcloud_completion")
    run, export = args.run / "diffusion", args.run / "diffusion" / "export"
    timing = run / "timing.json"
    done = (export / "model.safetensors").is_file() and timing.is_file() and \
        json.loads((run / "config.json").read_text()).get("max_steps") == cfg.max_steps
    if not done:
        resume = latest_checkpoint(run) if args.resume and (run / "checkpoints").is_dir() else None
        _, wall = timed(lambda: fit(cfg, run, resume=resume, progress=False, overwrite=resume is None))
        timing.write_text(json.dumps({"train_wall_s": wall}) + "\n")
    return load(export).to(args.device), json.loads(timing.read_text())["train_wall_s"]


def sample_clouds(model: Any, partial: torch.Tensor, sampler: str, steps: int, seed: int, clip: float) -> np.ndarray:
    """Completions of each partial; x̂₀ clipped to [−clip, clip] (clip > 0), not clipped at all for clip = 0."""
    options = {"clip_x0": (-clip, clip) if clip > 0 else None}
    out = model.sample(len(partial), sampler=sampler, steps=steps, seed=seed, conditions={"partial": partial},
                       **options)
    return out.sample.cpu().numpy()


def score_rows(name: str, pred: np.ndarray, gt: np.ndarray, labels: np.ndarray, classes: list[str], split: str,
               seconds: float, calls: int, per_class: list[dict]) -> dict[str, Any]:
    """The overall row of one method on one split (and its per-class rows appended to ``per_class``)."""
    scores = completion_metrics(pred, gt)
    scores["f1_5pct"] = f_score(pred, gt, WIDE_TAU).numpy()
    for c in sorted(set(labels)):
        mask = labels == c
        per_class.append({"method": name, "split": split, "class": classes[c], "shapes": int(mask.sum()),
                          **{k: float(scores[k][mask].mean()) for k in METRICS}})
    return {"method": name, "split": split, "shapes": len(gt), **{k: float(scores[k].mean()) for k in METRICS},
            "s_per_shape": seconds / len(gt), "net_calls": calls}


def emd_seconds(path: Path, sizes: tuple[int, ...] = (256, 1024), pairs: int = 4) -> dict[str, float]:
    """Wall seconds of one exact EMD (Hungarian) between two shapes of each size, averaged over ``pairs`` pairs."""
    shapes = load_shapes(path)
    out = {}
    for n in sizes:
        n = min(n, shapes.points.shape[1])
        a, b = shapes.points[:pairs, :n], shapes.points[pairs:2 * pairs, :n]
        emd_exact(a[:1], b[:1])  # warm-up
        out[f"emd_s_per_pair_{n}"] = timed(lambda: emd_exact(a, b))[1] / pairs
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(1)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="pc_smoke_") as tmp:
            run_benchmark(smoke_args(args, Path(tmp)), smoke=True)
        return
    run_benchmark(args, smoke=False)


def run_benchmark(args: argparse.Namespace, smoke: bool) -> None:
    args.run.mkdir(parents=True, exist_ok=True)
    seen, novel = args.classes.split(","), args.novel.split(",")
    data = {"path": str(args.data), "classes": seen, "per_class": args.per_class, "per_class_test": args.per_class_test,
            "n_points": args.points, "n_partial": args.partial, "views": args.views, "seed": args.seed}
    backbone = {"channels": [int(c) for c in args.channels.split(",")], "k": args.k}
    domain = PointCloudDomain(dict(data))
    complete_tr, partial_tr = domain.train_dataset(domain.options).tensors
    train_shapes = domain.shapes(domain.options, True)
    splits = {}
    for split, classes in (("seen", seen), ("novel", novel)):
        shapes = domain.shapes(domain.options, False, classes=classes)
        complete, partial, _, kept, kind = domain.pairs(shapes, 1, args.seed + TEST_VIEW_SEED)
        splits[split] = (complete.numpy(), partial, shapes.label, kept, kind)
    classes = train_shapes.classes
    model, diffusion_wall = diffusion_model(args, data, backbone)
    schedule, device = model.schedule, args.device
    print(f"diffusion model: {args.diffusion_steps} steps, {diffusion_wall:.0f} s", flush=True)

    def pairs_batch(x_in: torch.Tensor | None) -> Callable:
        def draw(gen: torch.Generator):
            i = torch.randint(len(partial_tr) if x_in is None else len(x_in), (args.batch_size,), generator=gen)
            if x_in is None:
                return partial_tr[i].to(device), complete_tr[i].to(device), None
            j = sub[i]
            return partial_tr[j].to(device), complete_tr[j].to(device), x_in[i].to(device)
        return draw

    regressor, regression_wall = one_pass_net(args.run / "regression.safetensors", schedule, backbone,
                                              args.regression_steps, args.points, pairs_batch(None), args.seed, device)
    # the refiner learns from the coarse model's own K-step outputs of one view per training shape
    sub = torch.arange(0, len(partial_tr), args.views)
    coarse_file = args.run / f"coarse_train_k{args.refine_train_k}_{args.diffusion_steps}_clip{args.clip:g}.npy"
    if not coarse_file.is_file():
        np.save(coarse_file, np.concatenate([sample_clouds(model, partial_tr[sub[i:i + 128]], "ddim",
                                                           args.refine_train_k, args.seed + 7 + i, args.clip)
                                             for i in range(0, len(sub), 128)]))
    coarse_train = torch.as_tensor(np.load(coarse_file))
    refiner, refine_wall = one_pass_net(args.run / f"refiner_clip{args.clip:g}.safetensors", schedule, backbone,
                                        args.refine_steps, 0, pairs_batch(coarse_train), args.seed + 1, device)
    domain_r = model.domain
    domain_r.attach_refiner(refiner, backbone, schedule)
    from sciddpm.export import export_model

    export_model(model, args.run / "export_refined")  # `sciddpm complete --model RUN/export_refined` uses both stages
    axis = mirror_axis(complete_tr[sub].numpy())
    rows: list[dict] = []
    per_class: list[dict] = []
    ks = [int(k) for k in args.ks.split(",") if k]
    for split, (gt, partial, labels, kept, kind) in splits.items():
        p_np = partial.numpy()
        rec = lambda name, pred, sec, calls: rows.append(  # noqa: E731
            score_rows(name, pred, gt, labels, classes, split, sec, calls, per_class))
        rec("partial", resample(p_np, args.points, 1), 0.0, 0)
        pred, sec = timed(lambda: mirror_and_join(p_np, axis, args.points, 2))
        rec(f"mirror (axis {'xyz'[axis]})", pred, sec, 0)
        pred, sec = timed(lambda: nn_retrieval(p_np, train_shapes.points))
        rec("nn_retrieval", pred, sec, 0)
        with torch.no_grad():
            pred, sec = timed(lambda: regressor(partial.to(device)).cpu().numpy())
        rec("regression (same backbone)", pred, sec, 1)
        if args.clip > 0:  # the ablation: the same model and seed without clipping x0
            pred, sec = timed(lambda: sample_clouds(model, partial, "ddim", ks[len(ks) // 2], args.seed + 100, 0.0))
            rec(f"coarse ddim K={ks[len(ks) // 2]}, no x0 clip", pred, sec, ks[len(ks) // 2])
        runs = [("ddim", k) for k in ks] + ([("ddpm", args.full_k)] if args.full_k else [])
        for sampler, k in runs:
            coarse, sec = timed(lambda: sample_clouds(model, partial, sampler, k, args.seed + 100, args.clip))
            rec(f"coarse {sampler} K={k}", coarse, sec, k)
            with torch.no_grad():
                refined, sec_r = timed(lambda: refiner(partial.to(device), torch.as_tensor(coarse).to(device))
                                       .cpu().numpy())
            rec(f"refined {sampler} K={k}", refined, sec + sec_r, k + 1)
            print(f"{split} {sampler} K={k}: coarse {rows[-2]['cd_l1']:.2f}, refined {rows[-1]['cd_l1']:.2f} "
                  f"(CD-L1 x1e3), {sec:.0f} s", flush=True)
    verdict = goal_verdict(rows, ks, args.full_k)
    verdict.update(emd_seconds(args.data))
    kept_all = {f"{s}_{k}": float(v[3][v[4] == k].mean()) for s, v in splits.items() for k in sorted(set(v[4]))}
    kept_all.update({k: v for k, v in domain.kept_fraction.items() if k.startswith("train")})
    notes = notes_text(args, axis, kept_all, verdict, diffusion_wall, regression_wall, refine_wall, per_class)
    command = "python benchmarks/pointcloud_completion.py " + " ".join(sys.argv[1:])
    write_results("pointcloud_completion", rows, title="Point-cloud completion (ModelNet40 partial views, CPU)",
                  notes=notes, extra={"per_class": per_class, "fraction_kept": kept_all, "mirror_axis": "xyz"[axis],
                                      "verdict": verdict, "command_used": command, "args": {k: str(v) for k, v in
                                                                                            vars(args).items()},
                                      "train_wall_s": {"diffusion": diffusion_wall, "regression": regression_wall,
                                                       "refiner": refine_wall}},
                  results_dir=args.results_dir or RESULTS_DIR)


def goal_verdict(rows: list[dict], ks: list[int], full_k: int) -> dict[str, Any]:
    """The issue's goals on the seen split: does the best diffusion row beat every baseline on EMD and F1, and is
    refined-20 within 5 % of coarse-1000's CD-L1 and CD-L2?"""
    seen = {r["method"]: r for r in rows if r["split"] == "seen"}
    base = [r for m, r in seen.items() if not m.startswith(("coarse", "refined"))]
    diff = [r for m, r in seen.items() if m.startswith(("coarse", "refined"))]
    out: dict[str, Any] = {
        "diffusion_best_emd_beats_baselines": min(r["emd"] for r in diff) < min(r["emd"] for r in base),
        "diffusion_best_f1_beats_baselines": max(r["f1"] for r in diff) > max(r["f1"] for r in base)}
    ref20, full = seen.get("refined ddim K=20"), seen.get(f"coarse ddpm K={full_k}")
    if ref20 is not None and full is not None:
        for key in ("cd_l1", "cd_l2"):
            out[f"refined20_{key}_over_coarse{full_k}"] = ref20[key] / full[key]
    return out


def notes_text(args: argparse.Namespace, axis: int, kept: dict, verdict: dict, dw: float, rw: float, fw: float,
               per_class: list[dict]) -> str:
    kept_text = ", ".join(f"{k} {v:.2f}" for k, v in kept.items())
    seen_pc = [r for r in per_class if r["method"] in ("nn_retrieval", "regression (same backbone)",
                                                      "refined ddim K=20", f"coarse ddpm K={args.full_k}")]
    return (f"Scale (one CPU thread): {len(args.classes.split(','))} seen classes x {args.per_class} training shapes "
            f"x {args.views} views; test {args.per_class_test} shapes per class (seen and novel: {args.novel}); "
            f"N = {args.points} points, partials M = {args.partial}. Training budgets: diffusion {args.diffusion_steps} "
            f"steps (batch {args.batch_size}, {dw:.0f} s), regression {args.regression_steps} steps ({rw:.0f} s), "
            f"refiner {args.refine_steps} steps on DDIM K={args.refine_train_k} outputs ({fw:.0f} s). DDPM/DDIM clip "
            f"their x0 prediction to [-{args.clip:g}, {args.clip:g}] (0: off; one unclipped row shows its effect). "
            f"Fraction of "
            f"points kept by the partial views: {kept_text}. Mirror plane (best on training shapes): "
            f"{'xyz'[axis]} = 0.\n\nMetrics: CD-L1 x1e3 = (mean d(P,G) + mean d(G,P))/2; CD-L2 x1e4 = mean d^2 + "
            f"mean d^2; EMD x1e2 exact (Hungarian, cost in the goals line); F1 at tau = 0.01 on the distance "
            f"(f1_5pct: tau = 0.05), shapes in the unit sphere. At N = {args.points} neighbouring points are ~0.1 "
            f"apart, so F1 at 0.01 counts coinciding points only: the partial's own points are ground-truth points, "
            f"hence its high F1; f1_5pct is the informative one here. "
            f"Not comparable with PCN/MVP published figures (ShapeNet crops at 16,384/2,048 points, a [-0.5, 0.5] "
            f"scale); we know of no published PDR figure on this ModelNet40 protocol.\n\nGoals (seen split): "
            f"{json.dumps(verdict)}\n\nPer class (selected methods):\n\n{markdown_table(seen_pc)}")


if __name__ == "__main__":
    main()
