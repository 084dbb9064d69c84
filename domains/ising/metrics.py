"""Ising observables per temperature with bootstrap errors, and T_c estimates.

Per temperature, from n configurations (N = L² spins, e = E/N, m = M/N):
    ⟨e⟩, ⟨|m|⟩, C/N = N Var(e)/T², χ/N = N (⟨m²⟩ − ⟨|m|⟩²)/T (the finite-lattice susceptibility of |m|,
    Landau & Binder, *A Guide to Monte Carlo Simulations*, §4.2), U₄ = 1 − ⟨m⁴⟩/(3⟨m²⟩²) (Binder 1981),
each with a bootstrap standard error (Efron 1979: the standard deviation over resamples of the n configurations,
which assumes the frames are independent: check the MC's integrated autocorrelation time).

T_c estimates: the heat-capacity peak from a least-squares parabola (weighted by the errors) through the points
nearest the grid maximum, its error from the same fit on every bootstrap replicate; and, with two lattice sizes,
the crossing of U₄(T) (Binder 1981), located by linear interpolation of the difference.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sciddpm.outputs import atomic_path

OBSERVABLES = ("energy", "abs_m", "heat_capacity", "susceptibility", "binder")


@dataclass
class Observables:
    """Observables at temperatures T [k]: ``value[name]`` [k], ``error[name]`` [k] (bootstrap SE) and
    ``replicates[name]`` [n_boot, k] (kept for the errors of fitted quantities such as T_c)."""

    temperature: np.ndarray
    value: dict[str, np.ndarray]
    error: dict[str, np.ndarray]
    replicates: dict[str, np.ndarray]
    count: np.ndarray


def _stats(e: np.ndarray, m: np.ndarray, T: float, N: int) -> dict[str, np.ndarray]:
    """The observables of per-spin energies e and magnetisations m, along the last axis (batched over resamples)."""
    a = np.abs(m)
    m2, m4 = (m * m).mean(-1), (m**4).mean(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        binder = 1.0 - m4 / (3.0 * m2 * m2)
    return {"energy": e.mean(-1), "abs_m": a.mean(-1), "heat_capacity": N * e.var(-1) / T**2,
            "susceptibility": N * (m2 - a.mean(-1) ** 2) / T, "binder": binder}


def observables(spins: np.ndarray, temperature: np.ndarray, n_boot: int = 200, seed: int = 0) -> Observables:
    """Observables of configurations ``spins`` [n, L, L] (±1) grouped by their ``temperature`` [n], with bootstrap
    standard errors from ``n_boot`` resamples per temperature."""
    from .data import check_lattices, energy, magnetisation

    spins, temperature = check_lattices(spins, temperature, "observables")
    L = spins.shape[-1]
    N = L * L
    e_all, m_all = energy(spins) / N, magnetisation(spins) / N
    temps = np.unique(temperature)
    rng = np.random.default_rng(seed)
    value: dict[str, list] = {k: [] for k in OBSERVABLES}
    error: dict[str, list] = {k: [] for k in OBSERVABLES}
    reps: dict[str, list] = {k: [] for k in OBSERVABLES}
    counts = []
    for T in temps:
        sel = temperature == T
        e, m = e_all[sel], m_all[sel]
        idx = rng.integers(len(e), size=(n_boot, len(e)))
        point, boot = _stats(e, m, T, N), _stats(e[idx], m[idx], T, N)
        for k in OBSERVABLES:
            value[k].append(point[k])
            with warnings.catch_warnings():  # U₄ is undefined (NaN) in resamples with every M = 0
                warnings.simplefilter("ignore", RuntimeWarning)
                error[k].append(np.nanstd(boot[k]))
            reps[k].append(boot[k])
        counts.append(int(sel.sum()))
    return Observables(temps, {k: np.array(v) for k, v in value.items()}, {k: np.array(v) for k, v in error.items()},
                       {k: np.stack(v, 1) for k, v in reps.items()}, np.array(counts))


def _parabola_peak(T: np.ndarray, c: np.ndarray, w: np.ndarray) -> float:
    """Vertex of the weighted least-squares parabola through (T, c); NaN when it opens upwards."""
    a2, a1, _ = np.polyfit(T, c, 2, w=w)
    return float(-a1 / (2 * a2)) if a2 < 0 else float("nan")


def peak_temperature(T: np.ndarray, c: np.ndarray, c_err: np.ndarray | None = None, replicates: np.ndarray | None = None,
                     points: int = 7) -> tuple[float, float]:
    """T_c from the heat-capacity peak: the vertex of a parabola fitted (weights 1/error) to the ``points``
    temperatures nearest the grid maximum of C, and its error as the standard deviation of the same fit over
    bootstrap ``replicates`` [n_boot, k] (NaN without them). The fit, not the grid maximum, so the estimate is not
    tied to the grid spacing. A vertex outside the fitted window is returned as it is (the peak was not bracketed)."""
    T, c = np.asarray(T, dtype=np.float64), np.asarray(c, dtype=np.float64)
    if len(T) < 3:
        raise ValueError(f"a peak fit needs at least 3 temperatures, got {len(T)}")
    points = min(points, len(T))
    order = np.argsort(T)
    T, c = T[order], c[order]
    w = np.ones_like(c) if c_err is None else 1.0 / np.maximum(np.asarray(c_err)[order], 1e-12)
    i = int(np.argmax(c))
    lo = int(np.clip(i - points // 2, 0, len(T) - points))
    win = slice(lo, lo + points)
    tc = _parabola_peak(T[win], c[win], w[win])
    if replicates is None:
        return tc, float("nan")
    reps = np.asarray(replicates)[:, order]
    fits = np.array([_parabola_peak(T[win], r[win], w[win]) for r in reps])
    return tc, float(np.nanstd(fits)) if np.isfinite(fits).sum() > 1 else float("nan")


def binder_crossing(T: np.ndarray, u_small: np.ndarray, u_large: np.ndarray) -> float:
    """The temperature where U₄ of two lattice sizes cross (Binder 1981), by linear interpolation of
    u_large − u_small between the two grid points where it changes sign (the one nearest the middle if several);
    NaN if it never does."""
    d = np.asarray(u_large) - np.asarray(u_small)
    T = np.asarray(T, dtype=np.float64)
    idx = np.nonzero((np.sign(d[:-1]) * np.sign(d[1:]) <= 0) & (d[:-1] != d[1:]))[0]
    if not len(idx):
        return float("nan")
    i = idx[np.argmin(np.abs(idx - len(T) / 2))]
    return float(T[i] - d[i] * (T[i + 1] - T[i]) / (d[i + 1] - d[i]))


def ambiguous_fraction(x: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of generated continuous spins with |x| < threshold, where sign(x) is a coin flip rather than a
    clear ±1 (the dequantised data sit within a few noise widths of ±1)."""
    return float((np.abs(np.asarray(x)) < threshold).mean())


def plot_observables(path: str | Path, series: dict[str, Observables], L: int,
                     examples: tuple[np.ndarray, np.ndarray] | None = None, title: str = "") -> None:
    """A PNG of ⟨E⟩/N, ⟨|M|⟩/N, C/N and U₄ vs T for each labelled ``series`` (points with bootstrap error bars)
    beside Kaufman's exact ⟨E⟩/N and C/N of the L × L lattice, the exact finite-L C peak and Onsager's T_c; with
    ``examples`` = (spins, temperature), a row of configurations at up to six temperatures."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .exact import ONSAGER_TC, heat_capacity_peak, kaufman

    temps = np.concatenate([s.temperature for s in series.values()])
    grid = np.linspace(temps.min(), temps.max(), 300) if len(temps) else np.linspace(1.0, 4.0, 300)
    exact, peak = kaufman(grid, L), heat_capacity_peak(L)
    rows = 2 if examples is not None else 1
    fig = Figure(figsize=(16, 4 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 4, squeeze=False)
    panels = (("energy", "⟨E⟩/N", exact.energy_per_spin), ("abs_m", "⟨|M|⟩/N", None),
              ("heat_capacity", "C/N", exact.heat_capacity_per_spin), ("binder", "U₄", None))
    for ax, (key, label, curve) in zip(axes[0], panels):
        if curve is not None:
            ax.plot(grid, curve, "k-", lw=1, label=f"Kaufman exact (L={L})")
        for name, obs in series.items():
            ax.errorbar(obs.temperature, obs.value[key], obs.error[key], fmt="o", ms=3, capsize=2, label=name)
        ax.axvline(peak, color="grey", ls="--", lw=0.8)
        ax.axvline(ONSAGER_TC, color="grey", ls=":", lw=0.8)
        ax.set(xlabel="T", ylabel=label)
    axes[0][0].legend(fontsize=7)
    axes[0][2].set_title(f"dashed: exact C peak {peak:.4f}; dotted: Onsager {ONSAGER_TC:.4f}", fontsize=8)
    if examples is not None:
        spins, temperature = examples
        uniq = np.unique(temperature)
        pick = uniq[np.unique(np.linspace(0, len(uniq) - 1, min(4, len(uniq))).round().astype(int))]
        for ax, t in zip(axes[1], pick):
            ax.imshow(spins[np.flatnonzero(temperature == t)[0]], cmap="gray", vmin=-1, vmax=1)
            ax.set_title(f"T = {t:.3f}")
            ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.08, top=0.9, wspace=0.25, hspace=0.3)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
