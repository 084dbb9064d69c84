"""What ``sciddpm complete`` does with a trained model: K completions of one partial cloud, the medoid completion
with a per-point uncertainty, a PLY (uncertainty as a vertex property) and a PNG (partial / completion / ground
truth from three views).

Per-point uncertainty. Completions of one partial are unordered sets, so there is no point-to-point correspondence
to take a variance over. For the medoid completion X⁽ᵐ⁾ (the one with the smallest mean CD-L1 to the others) the
uncertainty of its point x_i is the mean distance to the nearest point of every other completion:
u_i = 1/(K−1) Σ_{k≠m} min_j ‖x_i − x_j⁽ᵏ⁾‖₂, i.e. how far the other samples put the surface from where this one
put it (0 where all completions agree). K = 1 gives u ≡ 0 (stated in the summary).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sciddpm.outputs import atomic_path, require_suffix
from sciddpm.samplers import get_sampler

from .metrics import chamfer_l1, completion_metrics, nearest_distances


def medoid_and_uncertainty(completions: Tensor) -> tuple[int, Tensor]:
    """(index m of the medoid completion, u [N] float64) for K completions [K, N, 3] (module docstring)."""
    c = completions.detach().double().cpu()
    k = len(c)
    if k == 1:
        return 0, torch.zeros(c.shape[1], dtype=torch.float64)
    pair = torch.stack([chamfer_l1(c, c[j].expand_as(c)) for j in range(k)], 1)  # [K, K], zero diagonal
    m = int(pair.sum(1).argmin())
    others = torch.cat([c[:m], c[m + 1:]])
    u = nearest_distances(c[m].expand_as(others), others).mean(0)
    return m, u


def write_ply(path: Path, points: np.ndarray, **properties: np.ndarray) -> None:
    """A binary little-endian PLY of ``points`` [N, 3] (float32 x, y, z) with extra float32 vertex ``properties``
    (each [N]), written atomically."""
    require_suffix(path, (".ply",))
    n = len(points)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")] + [(k, "<f4") for k in properties]
    table = np.empty(n, dtype=fields)
    for i, axis in enumerate("xyz"):
        table[axis] = points[:, i]
    for key, value in properties.items():
        value = np.asarray(value).reshape(-1)
        if len(value) != n:
            raise ValueError(f"{path}: vertex property {key!r} has {len(value)} values for {n} points")
        table[key] = value
    header = "ply\nformat binary_little_endian 1.0\ncomment written by sciddpm (pointclouds domain)\n" \
             f"element vertex {n}\n" + "".join(f"property float {name}\n" for name, _ in fields) + "end_header\n"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(table.tobytes())


def plot_completion(path: Path, partial: np.ndarray, completion: np.ndarray, reference: np.ndarray | None = None,
                    uncertainty: np.ndarray | None = None, title: str = "") -> None:
    """A PNG: rows partial / completion (coloured by uncertainty if given) / ground truth, columns three views
    (azimuths 30°, 120°, 210°), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [("partial", partial, None), ("completion", completion, uncertainty)]
    if reference is not None:
        rows.append(("ground truth", reference, None))
    fig = Figure(figsize=(9, 3 * len(rows)))
    FigureCanvasAgg(fig)
    for r, (name, pts, colour) in enumerate(rows):
        for v, azim in enumerate((30, 120, 210)):
            ax = fig.add_subplot(len(rows), 3, 3 * r + v + 1, projection="3d")
            style = {"c": colour, "cmap": "viridis"} if colour is not None else {"color": "C0"}
            ax.scatter(pts[:, 0], pts[:, 2], pts[:, 1], s=2, **style)
            ax.view_init(elev=20, azim=azim)
            ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
            ax.set_axis_off()
            if v == 0:
                ax.set_title(name + (" (colour: uncertainty)" if colour is not None else ""), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")


def run_complete(model: Any, partial: np.ndarray, output: Path, samples: int = 8, steps: int = 50,
                 sampler: str = "ddim", seed: int = 0, reference: np.ndarray | None = None,
                 source: str = "partial") -> dict[str, Any]:
    """K = ``samples`` completions of one partial cloud [M, 3] with ``model`` (a loaded DiffusionModel of the
    pointclouds domain), refined when the domain holds a refinement network; writes the medoid completion to
    ``output`` (.ply with an ``uncertainty`` vertex property, or .npy [N, 4]) and a PNG beside it."""
    from sciddpm.outputs import check_output

    check_output(output, (".ply", ".npy"))
    if samples < 1:
        raise ValueError(f"--samples must be >= 1, got {samples}")
    conditions: dict[str, Any] = {"partial": torch.as_tensor(partial, dtype=torch.float32)}
    # the domain's threshold_x0 makes every sampler that takes clip_x0 clip x̂₀ to its data_range (the clip box)
    thresholds = "clip_x0" in inspect.signature(get_sampler(sampler)).parameters
    out = model.sample(samples, sampler=sampler, steps=steps, seed=seed, conditions=conditions)
    clouds = model.domain.refine(out.sample, out.space).cpu()
    m, u = medoid_and_uncertainty(clouds)
    best, unc = clouds[m].numpy(), u.numpy().astype(np.float32)
    if output.suffix.lower() == ".ply":
        write_ply(output, best, uncertainty=unc)
    else:
        with atomic_path(output) as tmp:
            np.save(tmp, np.concatenate([best, unc[:, None]], 1).astype(np.float32))
    summary: dict[str, Any] = {"input": source, "output": str(output), "samples": samples, "sampler": sampler,
                               "steps": steps, "clip_x0": model.domain.data_range if thresholds else None, "refined": model.domain.refiner is not None,
                               "points": int(len(best)), "mean_uncertainty": float(unc.mean()),
                               "max_uncertainty": float(unc.max())}
    if samples == 1:
        summary["note"] = "one completion: the uncertainty needs --samples >= 2 and is 0 here"
    if reference is not None:
        ref = torch.as_tensor(reference, dtype=torch.float64)[None]
        scores = completion_metrics(torch.as_tensor(best, dtype=torch.float64)[None], ref,
                                    emd=ref.shape[1] == len(best))
        summary.update({k: float(v[0]) for k, v in scores.items()})
    png = output.with_suffix(".png")
    plot_completion(png, np.asarray(partial), best, None if reference is None else np.asarray(reference), unc,
                    title=f"{source}: {samples} completions, {sampler} {steps} steps")
    summary["png"] = str(png)
    return summary
