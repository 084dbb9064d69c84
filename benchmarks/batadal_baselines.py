"""Baseline detectors for ``benchmarks/batadal.py``: each fitted on the attack-free fitting rows only and giving one
raw anomaly score per row (higher = more anomalous).

* PCA (Jolliffe 2002; the SCADA process-monitoring pair of statistics): with k components keeping 99% of the
  variance, Hotelling's T² = Σ_{i≤k} s_i²/λ_i of the scores s = Pᵀz, and Q/SPE = ‖z − PPᵀz‖²;
* Isolation Forest (Liu, Ting & Zhou 2008): score = −``score_samples`` (scikit-learn);
* a dense autoencoder (Taormina & Galelli, J. Water Resour. Plann. Manage. 144(10), 2018: a detector for BATADAL
  from reconstruction errors): 43 → 32 → 16 → 32 → 43 tanh MLP, score = mean squared reconstruction error;
* the deterministic forecaster: the diffusion model's own TFDPM network trained with an x₀ MSE loss at x_t ≡ 0
  and a fixed t (``PointForecaster``), so the comparison isolates what the diffusion adds.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sciddpm.domains.timeseries.backbone import TFDPMNet
from sciddpm.domains.timeseries.detect import PointForecaster


def pca_scores(fit_rows: np.ndarray, rows: np.ndarray, variance: float = 0.99) -> dict[str, np.ndarray]:
    """Hotelling T² and Q/SPE of standardised ``rows`` for a PCA of ``fit_rows`` keeping ``variance``."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=variance, svd_solver="full").fit(fit_rows)
    s = pca.transform(rows)
    recon = pca.inverse_transform(s)
    return {"T2": (s ** 2 / pca.explained_variance_).sum(1), "Q": ((rows - recon) ** 2).sum(1)}


def isolation_forest_scores(fit_rows: np.ndarray, rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """−score_samples of an Isolation Forest (200 trees) fitted on ``fit_rows``."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=200, random_state=seed).fit(fit_rows)
    return -forest.score_samples(rows)


def _train(net: nn.Module, loss_fn: Any, n: int, steps: int, batch: int, lr: float, seed: int) -> float:
    """Adam with a cosine learning-rate decay for ``steps`` steps on random batches of n items; returns seconds."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.1 * lr)
    start = time.perf_counter()
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=gen)
        loss = loss_fn(idx)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    net.eval()
    return time.perf_counter() - start


def autoencoder_scores(fit_rows: np.ndarray, tables: list[np.ndarray], steps: int, seed: int = 0,
                       batch: int = 64) -> tuple[list[np.ndarray], float]:
    """Mean squared reconstruction error per row of each array in ``tables`` (NaN-free standardised rows), for a
    dense tanh autoencoder trained ``steps`` steps on ``fit_rows``; returns (scores, training seconds)."""
    torch.manual_seed(seed)
    f = fit_rows.shape[1]
    net = nn.Sequential(nn.Linear(f, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 32), nn.Tanh(),
                        nn.Linear(32, f))
    x = torch.as_tensor(fit_rows, dtype=torch.float32)
    seconds = _train(net, lambda idx: (net(x[idx]) - x[idx]).pow(2).mean(), len(x), steps, batch, 1e-3, seed)
    with torch.no_grad():
        out = [(net(torch.as_tensor(t, dtype=torch.float32)) - torch.as_tensor(t, dtype=torch.float32))
               .pow(2).mean(1).double().numpy() for t in tables]
    return out, seconds


def point_forecaster(domain: Any, backbone: dict[str, Any], schedule: Any, steps: int, batch: int, lr: float,
                     seed: int, path: Path | None = None) -> tuple[PointForecaster, float]:
    """The TFDPM network trained as a deterministic forecaster: min ‖net.denoise(0, t₀, encode(H)) − x₀‖² over the
    domain's training windows (same steps, batch and learning rate as the diffusion model). Weights are cached
    in ``path`` (safetensors) and reloaded when present; returns (forecaster, training seconds or 0 if cached)."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(seed)
    net = TFDPMNet(len(domain.options["columns"]), domain.horizon, domain.history, **backbone, schedule=schedule)
    forecaster = PointForecaster(net)
    if path is not None and path.is_file():
        net.load_state_dict(load_file(str(path)))
        return forecaster, 0.0
    future, history, mask = domain.train_dataset(domain.options).tensors
    t0 = torch.full((batch,), forecaster.t_fixed, dtype=torch.float64)

    def loss(idx: torch.Tensor) -> torch.Tensor:
        pred = net.denoise(torch.zeros_like(future[idx]), t0, net.encode(history[idx], mask[idx]))
        return (pred - future[idx]).pow(2).mean()

    seconds = _train(net, loss, len(future), steps, batch, lr, seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(net.state_dict(), str(tmp))
        tmp.replace(path)
    return forecaster, seconds
