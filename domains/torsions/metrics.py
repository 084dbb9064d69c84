"""Ramachandran metrics: 36 × 36 histograms, Jensen–Shannon divergence, basin populations and free-energy
differences with block-bootstrap errors.

Basins (degrees, half-open boxes covering the whole torus; ``BASINS``): the conventional Ramachandran regions of
alanine dipeptide in water (names and locations as in Chodera, Swope, Pitera & Dill, Multiscale Model. Simul.
5:1214, 2006, the source of the data, and Bolhuis, Dellago & Chandler, PNAS 97:5877, 2000): C7eq/β (extended,
φ < −100°), P_II (polyproline II, −100° ≤ φ < 0), both with ψ ≥ 50° or ψ < −150°; α_R (φ < 0, −150° ≤ ψ < 50°);
α_L (φ ≥ 0, −100° ≤ ψ < 100°); and the rest of φ ≥ 0 (C7ax and the rare φ > 0, |ψ| > 100° states). The box edges
are fixed here, before and independently of any held-out data, on the saddles between these minima.

JS(P‖Q) = ½ KL(P‖M) + ½ KL(Q‖M), M = (P + Q)/2, in nats (≤ ln 2), on 36 × 36 bins of 10° (Lin, IEEE Trans. Inf.
Theory 37:145, 1991). ΔG(i − j) = −ln(p_i / p_j) in units of kT at the sample's own temperature.
Errors: the bootstrap (Efron 1979) over blocks of correlated frames (``block``: one exchange iteration of the
parallel-tempering data, 20 frames; each generated sample its own block), optionally with per-frame weights
(MBAR); the standard deviation of the bootstrap replicates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 36
#: Basin boxes: name → list of (φ_lo, φ_hi, ψ_lo, ψ_hi) in degrees, half-open [lo, hi); union of boxes.
BASINS: dict[str, list[tuple[float, float, float, float]]] = {
    "C7eq": [(-180, -100, 50, 180), (-180, -100, -180, -150)],
    "PII": [(-100, 0, 50, 180), (-100, 0, -180, -150)],
    "alphaR": [(-180, 0, -150, 50)],
    "alphaL": [(0, 180, -100, 100)],
    "C7ax": [(0, 180, 100, 180), (0, 180, -180, -100)],
}
BASIN_NAMES = tuple(BASINS)


def histogram(phi: np.ndarray, psi: np.ndarray, weights: np.ndarray | None = None, bins: int = BINS) -> np.ndarray:
    """Normalised 2-D histogram P[i, j] of (φ, ψ) in degrees on ``bins`` × ``bins`` equal cells of [−180, 180)²
    (Σ P = 1); ``weights`` (≥ 0) for reweighted frames."""
    edges = np.linspace(-180.0, 180.0, bins + 1)
    h, _, _ = np.histogram2d(_wrap(phi), _wrap(psi), bins=[edges, edges], weights=weights)
    total = h.sum()
    if not total > 0:
        raise ValueError("histogram of zero total weight (no frames)")
    return h / total


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence ½ Σ p ln(p/m) + ½ Σ q ln(q/m), m = (p + q)/2, in nats (0 ≤ JS ≤ ln 2); empty
    cells contribute 0 (0 ln 0 = 0). p, q: histograms of the same shape, each summing to 1."""
    p, q = np.asarray(p, np.float64).ravel(), np.asarray(q, np.float64).ravel()
    if p.shape != q.shape:
        raise ValueError(f"js_divergence: shapes differ {p.shape} vs {q.shape}")
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / m[nz])))

    return 0.5 * kl(p) + 0.5 * kl(q)


def _wrap(a: np.ndarray) -> np.ndarray:
    return (np.asarray(a, np.float64) + 180.0) % 360.0 - 180.0


def basin_index(phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Index into ``BASIN_NAMES`` of every frame (the boxes partition the torus, so every frame has one)."""
    phi, psi = _wrap(phi), _wrap(psi)
    out = np.full(len(phi), -1, dtype=np.int64)
    for b, boxes in enumerate(BASINS.values()):
        for f0, f1, s0, s1 in boxes:
            out[(phi >= f0) & (phi < f1) & (psi >= s0) & (psi < s1)] = b
    if (out < 0).any():  # cannot happen for angles in [−180, 180): the boxes are a partition
        raise ValueError("basin boxes do not cover every angle")
    return out


@dataclass
class BasinStats:
    """Populations p_b (Σ = 1) and their bootstrap errors; ΔG(α_L − C7eq) = −ln(p_αL/p_C7eq) in kT ± error."""

    population: dict[str, float]
    population_error: dict[str, float]
    dg_alphaL_C7eq: float
    dg_alphaL_C7eq_error: float
    n_blocks: int


def basin_stats(phi: np.ndarray, psi: np.ndarray, weights: np.ndarray | None = None, block: np.ndarray | None = None,
                n_boot: int = 500, seed: int = 0) -> BasinStats:
    """Basin populations p_b = Σ_n w_n [x_n ∈ b] / Σ_n w_n and ΔG(α_L − C7eq) = −ln(p_αL/p_C7eq) (kT), with
    errors from ``n_boot`` bootstrap resamples of whole blocks (``block``: block id per frame; None: every frame
    its own block). Weighted sums per block are precomputed, so a replicate is one multinomial draw of blocks."""
    idx = basin_index(phi, psi)
    w = np.ones(len(idx)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != idx.shape or not (np.isfinite(w).all() and (w >= 0).all()) or not w.sum() > 0:
        raise ValueError(f"basin_stats: weights must be {len(idx)} finite values >= 0 with a positive sum")
    _, blk = np.unique(np.arange(len(idx)) if block is None else np.asarray(block), return_inverse=True)
    nb, K = int(blk.max()) + 1, len(BASIN_NAMES)
    sums = np.zeros((nb, K))
    np.add.at(sums, (blk, idx), w)
    a, c = BASIN_NAMES.index("alphaL"), BASIN_NAMES.index("C7eq")

    def stats(per_basin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = per_basin / per_basin.sum(-1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            return p, -np.log(p[..., a] / p[..., c])

    p, dg = stats(sums.sum(0))
    draws = np.random.default_rng(seed).integers(0, nb, (n_boot, nb))  # nb blocks drawn with replacement, per replicate
    counts = np.bincount((np.arange(n_boot)[:, None] * nb + draws).ravel(), minlength=n_boot * nb).reshape(n_boot, nb)
    p_b, dg_b = stats(counts @ sums)
    finite = np.isfinite(dg_b)
    dg_err = float(dg_b[finite].std(ddof=1)) if finite.sum() > 1 else float("nan")
    return BasinStats({k: float(v) for k, v in zip(BASIN_NAMES, p)},
                      {k: float(v) for k, v in zip(BASIN_NAMES, p_b.std(0, ddof=1))}, float(dg), dg_err, nb)


def noise_floor(phi: np.ndarray, psi: np.ndarray) -> float:
    """JS between the 36 × 36 histograms of the first and the second half of a set of frames (in time order):
    the JS two independent-as-possible halves of the same equilibrium data show, the floor below which no method's
    JS to that data can be told apart from sampling noise."""
    h = len(phi) // 2
    if h < 1:
        raise ValueError("noise_floor needs at least 2 frames")
    return js_divergence(histogram(phi[:h], psi[:h]), histogram(phi[h:2 * h], psi[h:2 * h]))
