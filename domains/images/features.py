"""DPM features for downstream tasks (Baranchuk et al., ICLR 2022, "Label-Efficient Semantic Segmentation with
Diffusion Models").

A trained denoising UNet is used as a frozen feature extractor: an image x₀ is noised with the forward process
q(x_t | x₀) (Ho et al. 2020, eq. 4),

    x_t = α_t x₀ + σ_t ε,   α_t = √ᾱ_t,  σ_t = √(1 − ᾱ_t),  ε ~ N(0, I) (one fixed, seeded draw per image),

the network is run once at each chosen t, and the activations of chosen *decoder* blocks are read out
(Baranchuk et al. §3: the middle decoder blocks at small t, e.g. blocks {5, 6, 7, 8, 12} of 18 at t ∈ {50, 150, 250}
of 1000, are the most informative). For segmentation every block is upsampled bilinearly to the input resolution
and the channels are stacked per pixel (their pixel-wise representation); for image classification we pool each
block globally (mean over pixels), as in the linear probes of diffusion features of Xiang et al. (ICCV 2023,
"Denoising Diffusion Autoencoders are Unified Self-supervised Learners"). Features of several t are concatenated.

A label-efficient head (:class:`FeatureProbe`) is then trained on the few labelled examples only: a small MLP on
standardised features, z = (f − μ)/s with μ, s the per-dimension mean and standard deviation **of the labelled set**
(Baranchuk et al. train pixel-wise MLP ensembles on 20–50 labelled images). :func:`pixel_features` is the raw-pixel
baseline. Everything is torch only (no scikit-learn).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciddpm.network_time import check_network_schedule
from sciddpm.objectives import forward_noise
from sciddpm.schedules import NoiseSchedule
from sciddpm.spaces import DenseSpace

POOL_MODES = ("mean", "pixel")
#: Baranchuk et al.'s blocks {5, 6, 7, 8, 12} of an 18-block decoder span its fractions [5/18, 13/18).
BARANCHUK_FRACTION = (5 / 18, 13 / 18)


def decoder_block_count(net: nn.Module) -> int:
    """Number of decoder blocks whose outputs ``net(x, t, return_features=True)`` returns (``len(net.up)``)."""
    up = getattr(net, "up", None)
    if up is None:
        raise ValueError("net has no decoder blocks (`up`): expected the images UNet")
    return len(up)


def middle_blocks(num_blocks: int) -> tuple[int, ...]:
    """The middle decoder blocks, fixed a priori from Baranchuk et al. (§4, blocks {5..8, 12} of 18 for ADM):
    indices b with round(n·5/18) ≤ b < round(n·13/18) of an n-block decoder; e.g. n = 9 → (2, 3, 4, 5), n = 4 → (1, 2).
    """
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    lo = round(num_blocks * BARANCHUK_FRACTION[0])
    hi = max(lo + 1, round(num_blocks * BARANCHUK_FRACTION[1]))
    return tuple(range(lo, min(hi, num_blocks)))


def _check_inputs(net: nn.Module, schedule: NoiseSchedule, x0: Tensor, times: Sequence[float],
                  blocks: Sequence[int], pool: str, batch_size: int) -> tuple[list[float], list[int]]:
    if pool not in POOL_MODES:
        raise ValueError(f"pool must be one of {POOL_MODES}, got {pool!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if x0.dim() != 4 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty image batch [N, C, H, W], got shape {tuple(x0.shape)}")
    times = [float(t) for t in times]
    if not times:
        raise ValueError("times must hold at least one diffusion time")
    check_network_schedule(net, schedule, "extract_features")
    lo, hi = schedule.t_min, schedule.t_max
    bad_t = [t for t in times if not lo <= t <= hi]
    if bad_t:
        raise ValueError(f"times {bad_t} outside the schedule's range [{lo}, {hi}]")
    n_blocks = decoder_block_count(net)
    blocks = [int(b) for b in blocks]
    if not blocks:
        raise ValueError("blocks must hold at least one decoder block index")
    bad_b = [b for b in blocks if not 0 <= b < n_blocks]
    if bad_b or len(set(blocks)) != len(blocks):
        raise ValueError(f"blocks {blocks} must be distinct decoder block indices in 0..{n_blocks - 1}")
    return times, blocks


@torch.no_grad()
def extract_features(net: nn.Module, schedule: NoiseSchedule, x0: Tensor, times: Sequence[float],
                     blocks: Sequence[int], *, generator: torch.Generator, pool: str = "mean",
                     batch_size: int = 256) -> Tensor:
    """DPM features (Baranchuk et al. 2022, §3): decoder activations of ``net`` at x_t = α_t x₀ + σ_t ε.

    ε ~ N(0, I) is drawn **once** for the whole of ``x0`` through a ``DenseSpace`` on the network's device with
    ``generator`` (which must live on that device) and reused for every t (common random numbers: features at
    different t differ only through t), so the result is independent of ``batch_size``. The network runs in eval
    mode (no dropout), in float32, without gradients; its training mode is restored afterwards.

    Args:
        net: the images UNet (``forward(x, t, return_features=True)`` → (out, decoder block outputs)).
        schedule: the model's noise schedule (discrete t ∈ [0, N] for the linear schedule).
        x0: clean images [N, C, H, W] in the model range [−1, 1]; any device (moved per batch).
        times: diffusion times t (schedule units), non-empty.
        blocks: distinct decoder block indices in 0..len(net.up) − 1 (order kept).
        pool: ``"mean"`` → global average pool, [N, T·ΣC] (classification); ``"pixel"`` → each block upsampled
            bilinearly to H×W and stacked, [N, T·ΣC, H, W] (segmentation, Baranchuk's pixel representation).
        batch_size: images per forward pass.

    Returns:
        float32 features on the network's device, concatenated over ``times`` in the given order (t-major: the
        first ΣC columns belong to ``times[0]``).
    """
    times, blocks = _check_inputs(net, schedule, x0, times, blocks, pool, batch_size)
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the network is on {device}: draw the noise there")
    n, h, w = x0.shape[0], x0.shape[-2], x0.shape[-1]
    eps = DenseSpace(x0.shape, device=device).noise(generator=generator)
    was_training = net.training
    net.eval()
    chunks: list[Tensor] = []
    try:
        for start in range(0, n, batch_size):
            xb = x0[start:start + batch_size].to(device=device, dtype=torch.float32)
            eb = eps[start:start + batch_size]
            per_t: list[Tensor] = []
            for t in times:
                tt = torch.full((xb.shape[0],), t, dtype=torch.float64, device=device)
                x_t, _ = forward_noise(schedule, DenseSpace(xb.shape, device=device), xb, tt, eb)
                _, feats = net(x_t, tt, return_features=True)
                chosen = [feats[b].float() for b in blocks]
                if pool == "mean":
                    chosen = [f.mean(dim=(2, 3)) for f in chosen]
                else:
                    chosen = [f if f.shape[-2:] == (h, w) else
                              F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False) for f in chosen]
                per_t.append(torch.cat(chosen, dim=1))
            chunks.append(torch.cat(per_t, dim=1))
    finally:
        net.train(was_training)
    return torch.cat(chunks, dim=0)


def pixel_features(x0: Tensor) -> Tensor:
    """Raw-pixel baseline: images [N, C, H, W] (or [N, H, W]) flattened to float32 [N, C·H·W]."""
    if x0.dim() not in (3, 4) or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a non-empty image batch [N, C, H, W] or [N, H, W], got {tuple(x0.shape)}")
    return x0.reshape(x0.shape[0], -1).to(torch.float32)


# ==================================================================================================
# Label-efficient head
# ==================================================================================================
class FeatureProbe(nn.Module):
    """MLP head on standardised features: logits = W₂ ReLU(W₁ z + b₁) + b₂ with z = (f − μ)/s (``hidden = 0``: the
    linear probe W z + b). μ, s are buffers set from the labelled set only (:func:`standardisation`)."""

    def __init__(self, in_dim: int, num_classes: int, hidden: int, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        if in_dim < 1 or num_classes < 2 or hidden < 0:
            raise ValueError(f"need in_dim >= 1, num_classes >= 2, hidden >= 0; got {in_dim}, {num_classes}, {hidden}")
        if mean.shape != (in_dim,) or std.shape != (in_dim,):
            raise ValueError(f"mean and std must have shape ({in_dim},), got {tuple(mean.shape)}, {tuple(std.shape)}")
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("std", std.detach().float().clone())
        self.mlp = (nn.Linear(in_dim, num_classes) if hidden == 0 else
                    nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)))

    def forward(self, features: Tensor) -> Tensor:
        """Logits [M, num_classes] for features [M, in_dim]."""
        return self.mlp((features - self.mean) / self.std)


def standardisation(features: Tensor, min_std: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-dimension μ = mean(f), s = std(f) (population) over the rows of ``features`` (the labelled set);
    dimensions with s ≤ ``min_std`` (constant on the labelled set, e.g. always-black border pixels) get s = 1,
    so unseen variation there is not blown up."""
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False)
    return mean, torch.where(std > min_std, std, torch.ones_like(std))


def _rows(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten pixel features [N, C, H, W] with labels [N, H, W] into per-pixel rows; pass [N, D] / [N] through."""
    if features.dim() == 4:
        if labels.shape != (features.shape[0],) + tuple(features.shape[-2:]):
            raise ValueError(f"pixel features {tuple(features.shape)} need labels [N, H, W], got {tuple(labels.shape)}")
        return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), labels.reshape(-1)
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"features must be [N, D] with labels [N] (or [N, C, H, W] with [N, H, W]); "
                         f"got {tuple(features.shape)} and {tuple(labels.shape)}")
    return features, labels


def train_probe(features: Tensor, labels: Tensor, *, hidden: int = 256, epochs: int = 300, lr: float = 1e-3,
                weight_decay: float = 0.1, seed: int = 0, device: torch.device | str = "cpu",
                num_classes: int | None = None, batch_size: int | None = None) -> FeatureProbe:
    """Fit a :class:`FeatureProbe` to labelled features by cross-entropy with AdamW (Loshchilov & Hutter 2019):
    θ ← θ − lr (m̂/(√v̂ + ε) + λ θ) with decoupled weight decay λ = ``weight_decay``.

    features [N, D] with labels [N] (classification), or [N, C, H, W] with labels [N, H, W] (a pixel-wise MLP as
    Baranchuk et al.: each pixel is a row). μ, s of the standardisation come from these labelled rows only. The
    weights are initialised from ``seed`` (global RNG untouched); ``batch_size=None`` trains full-batch (one step per
    epoch), otherwise rows are reshuffled each epoch with a generator on ``device``. Returns the probe in eval mode.
    """
    rows, y = _rows(features, labels)
    if rows.shape[0] < 2:
        raise ValueError(f"need at least 2 labelled rows, got {rows.shape[0]}")
    if epochs < 1 or lr <= 0 or weight_decay < 0 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"need epochs >= 1, lr > 0, weight_decay >= 0, batch_size >= 1; got {epochs}, {lr}, "
                         f"{weight_decay}, {batch_size}")
    device = torch.device(device)
    rows, y = rows.to(device=device, dtype=torch.float32), y.to(device=device, dtype=torch.long)
    k = int(num_classes) if num_classes is not None else int(y.max().item()) + 1
    if int(y.min().item()) < 0 or int(y.max().item()) >= k:
        raise ValueError(f"labels must lie in 0..{k - 1}")
    mean, std = standardisation(rows)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = FeatureProbe(rows.shape[1], max(k, 2), hidden, mean.cpu(), std.cpu())
    probe = probe.to(device).train()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")
    gen = torch.Generator(device=device).manual_seed(seed)
    m = rows.shape[0]
    for _ in range(epochs):
        order = None if batch_size is None or batch_size >= m else torch.randperm(m, generator=gen, device=device)
        for start in range(0, m, batch_size or m):
            idx = None if order is None else order[start:start + batch_size]
            xb, yb = (rows, y) if idx is None else (rows[idx], y[idx])
            loss = F.cross_entropy(probe(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return probe.eval()


@torch.no_grad()
def probe_predict(probe: FeatureProbe, features: Tensor, batch_size: int = 8192) -> Tensor:
    """Class predictions argmax_k logits_k, long [N] (or [N, H, W] for pixel features), on the probe's device."""
    device = probe.mean.device
    if features.dim() == 4:
        n, _, h, w = features.shape
        rows, _ = _rows(features, torch.zeros((n, h, w), dtype=torch.long, device=features.device))
        return probe_predict(probe, rows, batch_size).reshape(n, h, w)
    if features.dim() != 2:
        raise ValueError(f"features must be [N, D] or [N, C, H, W], got {tuple(features.shape)}")
    out = [probe(features[s:s + batch_size].to(device=device, dtype=torch.float32)).argmax(dim=1)
           for s in range(0, features.shape[0], batch_size)]
    return torch.cat(out)


def probe_accuracy(probe: FeatureProbe, features: Tensor, labels: Tensor, batch_size: int = 8192) -> float:
    """Accuracy (1/M) Σ 1[argmax logits = label] over the M rows (images, or pixels for pixel features)."""
    pred = probe_predict(probe, features, batch_size)
    if pred.shape != labels.shape:
        raise ValueError(f"labels must have shape {tuple(pred.shape)}, got {tuple(labels.shape)}")
    return float((pred == labels.to(pred.device)).float().mean().item())


# ==================================================================================================
# Label selection and cross-validation on the labelled set only
# ==================================================================================================
def sample_labelled(labels: Tensor, per_class: int, seed: int) -> Tensor:
    """Indices of ``per_class`` examples of every class present in ``labels`` (uniformly without replacement,
    CPU generator seeded with ``seed``), sorted; ValueError if a class has fewer examples."""
    labels = labels.detach().cpu().long()
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} examples, fewer than per_class={per_class}")
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.sort(torch.cat(picked)).values


def stratified_folds(labels: Tensor, k: int, seed: int) -> Tensor:
    """Fold id in 0..k−1 per example: within each class a seeded shuffle, then folds dealt round-robin, so every
    fold holds ⌊n_c/k⌋ or ⌈n_c/k⌉ examples of class c (stratified k-fold)."""
    labels = labels.detach().cpu().long()
    if k < 2 or k > labels.numel():
        raise ValueError(f"k must be in 2..{labels.numel()}, got {k}")
    gen = torch.Generator().manual_seed(seed)
    fold = torch.empty_like(labels)
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        fold[idx[torch.randperm(len(idx), generator=gen)]] = torch.arange(len(idx)) % k
    return fold


def cross_val_accuracy(features: Tensor, labels: Tensor, k: int, seed: int, **probe_kwargs) -> float:
    """Mean held-out accuracy of :func:`train_probe` over stratified k folds of the labelled set (each fold's
    standardisation from its own training part): a selection criterion that never sees test data."""
    fold = stratified_folds(labels, k, seed).to(features.device)
    labels = labels.to(features.device)
    accs = []
    for j in range(k):
        held = fold == j
        probe = train_probe(features[~held], labels[~held], seed=seed, **probe_kwargs)
        accs.append(probe_accuracy(probe, features[held], labels[held]))
    return sum(accs) / k
