"""Monte Carlo configurations of the 2-D Ising model and lattice files.

H = −J Σ_⟨ij⟩ s_i s_j on an L × L periodic lattice (J = 1, k_B = 1, each bond once). Updates, vectorised in numpy
over a batch of independent chains:

- **Wolff** single-cluster updates (Wolff, PRL 62, 361 (1989)): from a random seed site, a neighbour with the same
  spin joins the cluster with probability p = 1 − e^{−2βJ} through each bond to it (each bond tested once, when its
  first end joins), and the cluster is flipped. Grown breadth-first for every chain at once: a candidate reached
  through k bonds in one generation joins with 1 − (1 − p)^k, as in the sequential algorithm.
- **Metropolis** checkerboard sweeps (Metropolis et al. 1953): each sublattice at once, flip with min(1, e^{−βΔE}).

One *update* is k Wolff flips (k ≈ N / ⟨|C|⟩, about one lattice's worth of flipped spins, measured during
equilibration) plus one Metropolis sweep; frames are saved every ``spacing`` updates, and the integrated
autocorrelation time of |M| and E of the saved series (Sokal's windowing) says how decorrelated they are.

Lattice files: ``.npz`` with ``spins`` [n, L, L] of ±1 and ``temperature`` [n] (or one value), read by
``load_lattices`` with one-line errors.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sciddpm.inputs import read_npz
from sciddpm.outputs import atomic_path


def neighbours(L: int) -> np.ndarray:
    """Periodic nearest neighbours of every site i = r L + c of an L × L lattice: [N, 4] (up, down, left, right)."""
    r, c = np.divmod(np.arange(L * L), L)
    return np.stack([((r - 1) % L) * L + c, ((r + 1) % L) * L + c, r * L + (c - 1) % L, r * L + (c + 1) % L], 1)


def energy(spins: np.ndarray) -> np.ndarray:
    """E = −Σ_⟨ij⟩ s_i s_j per lattice of ``spins`` [..., L, L] (each periodic bond once: right and down)."""
    s = spins.astype(np.int64)
    return -(s * np.roll(s, -1, -1) + s * np.roll(s, -1, -2)).sum((-1, -2))


def magnetisation(spins: np.ndarray) -> np.ndarray:
    """M = Σ_i s_i per lattice of ``spins`` [..., L, L]."""
    return spins.astype(np.int64).sum((-1, -2))


def metropolis_sweep(spins: np.ndarray, beta: np.ndarray, rng: np.random.Generator) -> None:
    """One checkerboard Metropolis sweep of every lattice in ``spins`` [B, L, L] (int8, in place) at inverse
    temperatures ``beta`` [B]: on each sublattice, ΔE = 2 s_i h_i with h_i the sum of the 4 neighbours, accepted
    with probability min(1, e^{−β ΔE}) (Metropolis et al. 1953). Needs even L (the two sublattices)."""
    L = spins.shape[-1]
    rows, cols = np.indices((L, L))
    b = beta.reshape(-1, 1, 1)
    for parity in (0, 1):
        mask = (rows + cols) % 2 == parity
        h = (np.roll(spins, 1, 1) + np.roll(spins, -1, 1) + np.roll(spins, 1, 2) + np.roll(spins, -1, 2)).astype(np.int64)
        delta = 2 * spins * h
        accept = mask & (rng.random(spins.shape) < np.exp(np.minimum(-b * delta, 0.0)))
        spins[accept] *= -1


def wolff_update(spins: np.ndarray, beta: np.ndarray, rng: np.random.Generator, nbr: np.ndarray | None = None) -> np.ndarray:
    """One Wolff cluster flip in every lattice of ``spins`` [B, L, L] (int8, in place) at ``beta`` [B]; returns the
    cluster sizes [B]. Bond probability p = 1 − e^{−2β} (J = 1; Wolff 1989), grown breadth-first for all chains."""
    B, L, _ = spins.shape
    n = L * L
    nbr = neighbours(L) if nbr is None else nbr
    flat = spins.reshape(-1)
    p_add = -np.expm1(-2.0 * np.asarray(beta, dtype=np.float64)).reshape(-1)
    frontier = rng.integers(n, size=B) + np.arange(B) * n
    in_cluster = np.zeros(B * n, dtype=bool)
    in_cluster[frontier] = True
    while frontier.size:
        base = (frontier // n) * n
        cand = nbr[frontier - base] + base[:, None]
        ok = (flat[cand] == flat[frontier][:, None]) & ~in_cluster[cand]
        ok &= rng.random(cand.shape) < p_add[frontier // n][:, None]
        frontier = np.unique(cand[ok])
        in_cluster[frontier] = True
    flat[in_cluster] *= -1
    return in_cluster.reshape(B, n).sum(1)


def integrated_autocorrelation_time(series: np.ndarray, c: float = 5.0) -> float:
    """τ_int = ½ + Σ_{t=1}^{W} ρ(t) of ``series`` [chains, n] (ρ averaged over chains), with Sokal's automatic
    window: the smallest W ≥ c τ_int(W) (Sokal 1997, *Monte Carlo methods in statistical mechanics*, §3). In units
    of the series' spacing; ½ for independent samples. NaN when the series is constant."""
    x = np.asarray(series, dtype=np.float64)
    x = x.reshape(1, -1) if x.ndim == 1 else x
    x = x - x.mean(1, keepdims=True)
    n = x.shape[1]
    var = (x * x).mean()
    if n < 4 or var == 0:
        return float("nan")
    spec = np.fft.rfft(x, 2 * n, axis=1)
    acov = np.fft.irfft(spec * spec.conj(), axis=1)[:, :n].mean(0) / (n - np.arange(n))
    rho = acov / acov[0]
    tau = 0.5
    for w in range(1, n):
        tau += rho[w]
        if w >= c * tau:
            break
    return float(tau)


@dataclass
class MCRun:
    """Saved frames at one temperature and how they were made."""

    temperature: float
    spins: np.ndarray  # [n, L, L] int8
    flips_per_update: int  # Wolff clusters flipped per update (plus one Metropolis sweep)
    spacing: int  # updates between saved frames
    mean_cluster: float  # ⟨|C|⟩ / N during equilibration
    tau_abs_m: float  # integrated autocorrelation times of the saved series, in frames
    tau_energy: float
    seconds: float  # wall time of the whole run (equilibration included)
    production_seconds: float  # wall time of the saved part only
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds_per_frame(self) -> float:
        """Production wall time per saved frame (all chains advance together)."""
        return self.production_seconds / len(self.spins)


def simulate(L: int, temperature: float, n_frames: int, *, chains: int = 32, spacing: int = 2,
             equilibration: int = 50, seed: int = 0) -> MCRun:
    """``n_frames`` configurations at ``temperature`` from ``chains`` independent chains (cold start at T < 2.27,
    random otherwise): ``equilibration`` updates, then a frame every ``spacing`` updates; an update is
    k = max(1, round(N/⟨|C|⟩)) Wolff flips and one Metropolis sweep."""
    if temperature <= 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if L < 2 or L % 2:
        raise ValueError(f"lattice size L must be even and >= 2, got {L}")
    if n_frames < 1 or chains < 1 or spacing < 1:
        raise ValueError("n_frames, chains and spacing must be >= 1")
    rng = np.random.default_rng(seed)
    chains = min(chains, n_frames)
    per_chain = -(-n_frames // chains)
    beta = np.full(chains, 1.0 / temperature)
    nbr, n = neighbours(L), L * L
    spins = (np.ones((chains, L, L)) if temperature < 2.27 else rng.choice([-1, 1], (chains, L, L))).astype(np.int8)
    start = time.perf_counter()
    sizes = [wolff_update(spins, beta, rng, nbr).mean() for _ in range(20)]
    k = max(1, round(n / float(np.mean(sizes))))
    for _ in range(equilibration):
        for _ in range(k):
            sizes.append(wolff_update(spins, beta, rng, nbr).mean())
        metropolis_sweep(spins, beta, rng)
    produce = time.perf_counter()
    frames = np.empty((per_chain, chains, L, L), dtype=np.int8)
    for f in range(per_chain):
        for _ in range(spacing):
            for _ in range(k):
                wolff_update(spins, beta, rng, nbr)
            metropolis_sweep(spins, beta, rng)
        frames[f] = spins
    end = time.perf_counter()
    series = frames.transpose(1, 0, 2, 3)  # [chains, per_chain, L, L]
    out = series.reshape(-1, L, L)[:n_frames]
    return MCRun(float(temperature), out, k, spacing, float(np.mean(sizes)) / n,
                 integrated_autocorrelation_time(np.abs(magnetisation(series))),
                 integrated_autocorrelation_time(energy(series)), end - start,
                 (end - produce) * n_frames / (per_chain * chains), {"chains": chains, "equilibration": equilibration})


# ==================================================================================================
# Lattice files
# ==================================================================================================
def check_lattices(spins: Any, temperature: Any, where: str = "lattices") -> tuple[np.ndarray, np.ndarray]:
    """``spins`` as int8 [n, L, L] of ±1 and ``temperature`` as float64 [n] (one value is repeated); ValueError
    naming ``where`` and the field for a wrong shape, values other than ±1, or T ≤ 0 / non-finite."""
    s = np.asarray(spins)
    if s.ndim != 3 or s.shape[1] != s.shape[2] or s.shape[0] < 1 or s.shape[1] < 2:
        raise ValueError(f"{where}: 'spins' must have shape [n, L, L] (square lattices), got {list(s.shape)}")
    if s.dtype.kind not in "biuf" or not np.isin(s, (-1, 1)).all():
        bad = s[~np.isin(s, (-1, 1))].ravel()[:1] if s.dtype.kind in "biuf" else s.dtype
        raise ValueError(f"{where}: 'spins' must hold only -1 and +1, found {bad[0] if len(bad) else bad}")
    t = np.asarray(temperature, dtype=np.float64).reshape(-1)
    if t.size == 1:
        t = np.full(len(s), float(t[0]))
    if t.size != len(s):
        raise ValueError(f"{where}: 'temperature' holds {t.size} values for {len(s)} lattices")
    if not np.isfinite(t).all() or (t <= 0).any():
        raise ValueError(f"{where}: 'temperature' must be finite and > 0, found {t[~(np.isfinite(t) & (t > 0))][0]}")
    return s.astype(np.int8), t


def load_lattices(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Read an ``.npz`` lattice file: (spins int8 [n, L, L], temperature float64 [n], the other arrays by name).
    One-line ValueError for a missing file, a missing field, a wrong shape or values other than ±1."""
    path = Path(path)
    arrays = read_npz(path, "Ising lattice")
    for key in ("spins", "temperature"):
        if key not in arrays:
            raise ValueError(f"{path}: missing array {key!r} (has {sorted(arrays)})")
    spins, temperature = check_lattices(arrays.pop("spins"), arrays.pop("temperature"), str(path))
    return spins, temperature, arrays


def save_lattices(path: str | Path, spins: np.ndarray, temperature: np.ndarray, **extra: np.ndarray) -> None:
    """Write an ``.npz`` lattice file atomically (a temporary name in the same folder, then a rename)."""
    path = Path(path)
    spins, temperature = check_lattices(spins, temperature, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, spins=spins, temperature=temperature, **extra)


def generate_dataset(path: str | Path, L: int, temperatures: Sequence[float], n_per_temperature: int, *,
                     chains: int = 32, spacing: int = 2, seed: int = 0) -> list[MCRun]:
    """MC frames at each temperature (``simulate``) written as one lattice file, with per-T diagnostics
    (``mc_T``, ``mc_tau_abs_m``, ``mc_tau_energy``, ``mc_flips_per_update``, ``mc_spacing``)."""
    runs = [simulate(L, float(t), n_per_temperature, chains=chains, spacing=spacing, seed=seed + i)
            for i, t in enumerate(temperatures)]
    save_lattices(path, np.concatenate([r.spins for r in runs]),
                  np.concatenate([np.full(len(r.spins), r.temperature) for r in runs]),
                  mc_T=np.array([r.temperature for r in runs]), mc_tau_abs_m=np.array([r.tau_abs_m for r in runs]),
                  mc_tau_energy=np.array([r.tau_energy for r in runs]),
                  mc_flips_per_update=np.array([r.flips_per_update for r in runs]),
                  mc_spacing=np.array([r.spacing for r in runs]))
    return runs
