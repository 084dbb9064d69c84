"""Ramachandran free-energy panels: F(φ, ψ) = −ln P(φ, ψ) (kT, minimum 0) on the 36 × 36 grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sciddpm.outputs import atomic_path

from .metrics import histogram


def free_energy(phi: np.ndarray, psi: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """F = −ln P on the 36 × 36 grid, shifted to min 0; empty cells NaN (drawn blank)."""
    p = histogram(phi, psi, weights)
    with np.errstate(divide="ignore"):
        f = -np.log(p)
    f[~np.isfinite(f)] = np.nan
    return f - np.nanmin(f)


def free_energy_panels(path: Path, rows: dict[str, list], vmax: float = 8.0) -> None:
    """A grid of panels, one row per series name, one column per temperature; each cell (title, φ, ψ[, w]) or
    None. Written through ``atomic_path`` as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncol = max(len(v) for v in rows.values())
    fig = Figure(figsize=(2.3 * ncol + 0.8, 2.2 * len(rows) + 0.3))
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(rows), ncol, squeeze=False))
    im = None
    for r, (name, cells) in enumerate(rows.items()):
        for c in range(ncol):
            ax = axes[r, c]
            cell = cells[c] if c < len(cells) else None
            if cell is None:
                ax.axis("off")
                continue
            title, phi, psi, *w = cell
            im = ax.imshow(free_energy(phi, psi, w[0] if w else None).T, origin="lower", extent=(-180, 180, -180, 180),
                           vmin=0, vmax=vmax, cmap="viridis")
            ax.set_title(f"{name} {title}", fontsize=8)
            ax.set_xticks([-180, 0, 180]), ax.set_yticks([-180, 0, 180])
            ax.tick_params(labelsize=6)
            if c == 0:
                ax.set_ylabel("ψ (°)", fontsize=7)
            if r == len(rows) - 1:
                ax.set_xlabel("φ (°)", fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="−ln P (kT)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
