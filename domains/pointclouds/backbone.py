"""PDR-style conditional point denoiser (Lyu, Kong, Liu & Tang, *A Conditional Point Diffusion-Refinement Paradigm
for 3D Point Cloud Completion*, ICLR 2022, their Conditional Generation Network), written in plain torch.

* **PointNet++ levels** (Qi et al. 2017): a set-abstraction level picks M' = M / ratio centres by farthest-point
  sampling, groups each centre's k nearest neighbours, runs a shared MLP on (p_j − c, f_j) and max-pools over
  the group; a feature-propagation level interpolates coarse features back to the finer points with inverse-
  distance weights of the 3 nearest coarse points (w ∝ 1/d²), concatenates the skip features and applies an MLP.
* **Time**: the noise-level embedding of the core (sinusoids of 250·c_noise(t), Karras et al. 2022, through
  ``domains.images.backbone.noise_level_embedding``) through an MLP, added at every level.
* **Condition branch**: the partial cloud runs through its own set-abstraction levels (same ratios); at every
  level of the noisy branch, encoder and decoder, a **feature transfer** module lets each noisy point gather the k
  nearest partial-cloud points of that level: h_i ← h_i + max_j MLP(c_j − x_i, g_j) (PDR's feature transfer,
  with max-pooling in place of their attention weights).

Farthest-point sampling starts at the point farthest from the cloud's mean (not at index 0), so the network is
permutation-equivariant in the noisy cloud and invariant to the order of the partial cloud (tested). Everything
is batched tensor code (cdist + topk for neighbours), so it runs on CUDA as it is.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sciddpm.domains.images.backbone import noise_level_embedding
from sciddpm.network_time import require_schedule
from sciddpm.schedules import NoiseSchedule


def gather_points(x: Tensor, idx: Tensor) -> Tensor:
    """x[b, idx[b, ...]]: rows of x [B, N, C] picked by idx [B, ...] → [B, ..., C]."""
    b = x.shape[0]
    flat = idx.reshape(b, -1)
    out = torch.gather(x, 1, flat[..., None].expand(-1, -1, x.shape[-1]))
    return out.reshape(*idx.shape, x.shape[-1])


def farthest_point_sample(xyz: Tensor, m: int) -> Tensor:
    """Indices [B, m] of farthest-point sampling (Eldar et al. 1997): start at argmax ‖x − x̄‖, then repeatedly
    add argmax_i min_{s chosen} ‖x_i − x_s‖. The start is defined by the set, not the order (equivariance)."""
    b, n, _ = xyz.shape
    m = min(m, n)
    idx = torch.empty(b, m, dtype=torch.long, device=xyz.device)
    current = (xyz - xyz.mean(1, keepdim=True)).pow(2).sum(-1).argmax(1)
    dist = torch.full((b, n), float("inf"), dtype=xyz.dtype, device=xyz.device)
    rows = torch.arange(b, device=xyz.device)
    for i in range(m):
        idx[:, i] = current
        dist = torch.minimum(dist, (xyz - xyz[rows, current][:, None]).pow(2).sum(-1))
        current = dist.argmax(1)
    return idx


def knn(query: Tensor, ref: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(indices [B, M, k] of the k nearest points of ref [B, N, 3] to each query [B, M, 3], their distances)."""
    d = torch.cdist(query, ref)
    dist, idx = d.topk(min(k, ref.shape[1]), dim=-1, largest=False)
    return idx, dist


def _mlp(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c_in, c_out), nn.SiLU(), nn.Linear(c_out, c_out))


class SetAbstraction(nn.Module):
    """FPS centres, k-NN groups, shared MLP on (p_j − c, f_j) plus the time embedding, max over the group."""

    def __init__(self, c_in: int, c_out: int, ratio: int, k: int, temb_dim: int) -> None:
        super().__init__()
        self.ratio, self.k = ratio, k
        self.mlp1, self.mlp2 = nn.Linear(3 + c_in, c_out), nn.Linear(c_out, c_out)
        self.temb = nn.Linear(temb_dim, c_out) if temb_dim else None

    def forward(self, xyz: Tensor, feat: Tensor, temb: Tensor | None = None) -> tuple[Tensor, Tensor]:
        centres = gather_points(xyz, farthest_point_sample(xyz, max(1, xyz.shape[1] // self.ratio)))
        nb, _ = knn(centres, xyz, self.k)
        h = self.mlp1(torch.cat([gather_points(xyz, nb) - centres[:, :, None], gather_points(feat, nb)], -1))
        if self.temb is not None and temb is not None:
            h = h + self.temb(temb)[:, None, None]
        return centres, self.mlp2(nn.functional.silu(h)).max(dim=2).values


class FeatureTransfer(nn.Module):
    """h_i ← h_i + max_{j ∈ kNN(x_i, partial)} MLP(c_j − x_i, g_j): partial-cloud features into the noisy branch."""

    def __init__(self, c: int, c_cond: int, k: int) -> None:
        super().__init__()
        self.k, self.mlp = k, _mlp(3 + c_cond, c)

    def forward(self, xyz: Tensor, feat: Tensor, cxyz: Tensor, cfeat: Tensor) -> Tensor:
        nb, _ = knn(xyz, cxyz, self.k)
        msg = self.mlp(torch.cat([gather_points(cxyz, nb) - xyz[:, :, None], gather_points(cfeat, nb)], -1))
        return feat + msg.max(dim=2).values


class FeaturePropagation(nn.Module):
    """Inverse-distance (1/d²) interpolation from the 3 nearest coarse points, concat skip, MLP (+ time)."""

    def __init__(self, c_coarse: int, c_skip: int, c_out: int, temb_dim: int) -> None:
        super().__init__()
        self.mlp1, self.mlp2 = nn.Linear(c_coarse + c_skip, c_out), nn.Linear(c_out, c_out)
        self.temb = nn.Linear(temb_dim, c_out)

    def forward(self, xyz: Tensor, skip: Tensor, cxyz: Tensor, cfeat: Tensor, temb: Tensor) -> Tensor:
        nb, dist = knn(xyz, cxyz, 3)
        w = 1.0 / dist.pow(2).clamp_min(1e-10)
        w = w / w.sum(-1, keepdim=True)
        up = (gather_points(cfeat, nb) * w[..., None]).sum(2)
        h = self.mlp1(torch.cat([up, skip], -1)) + self.temb(temb)[:, None]
        return self.mlp2(nn.functional.silu(h))


class PointDiffusionNet(nn.Module):
    """ε̂(x_t, t | partial) for a noisy cloud x_t [B, N, 3] and a partial cloud [B, M, 3] (module docstring).

    ``channels``: widths per level (level 0 = the points themselves, then one set-abstraction level each);
    ``ratio``: centres kept per level (N/ratio); ``k``: group and transfer neighbours; ``time_dim``: embedding width.
    """

    def __init__(self, channels: tuple[int, ...] | list[int] = (32, 64, 128), ratio: int = 4, k: int = 16,
                 time_dim: int = 64, *, schedule: NoiseSchedule | None = None) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2 or min(channels) < 1 or ratio < 2 or k < 1 or time_dim < 2 or time_dim % 2:
            raise ValueError(f"PointDiffusionNet: need >= 2 positive channel widths, ratio >= 2, k >= 1 and an even "
                             f"time_dim (channels={channels}, ratio={ratio}, k={k}, time_dim={time_dim})")
        self.schedule = require_schedule(schedule, "PointDiffusionNet")
        self.channels, self.time_dim = channels, time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.x_in, self.c_in = nn.Linear(3, channels[0]), nn.Linear(3, channels[0])
        pairs = list(zip(channels[:-1], channels[1:]))
        self.cond_sa = nn.ModuleList(SetAbstraction(a, b, ratio, k, 0) for a, b in pairs)
        self.sa = nn.ModuleList(SetAbstraction(a, b, ratio, k, time_dim) for a, b in pairs)
        self.enc_transfer = nn.ModuleList(FeatureTransfer(c, c, k) for c in channels)
        self.fp = nn.ModuleList(FeaturePropagation(b, a, a, time_dim) for a, b in pairs)
        self.dec_transfer = nn.ModuleList(FeatureTransfer(c, c, k) for c in channels[:-1])
        self.out = nn.Sequential(nn.LayerNorm(channels[0]), nn.Linear(channels[0], channels[0]), nn.SiLU(),
                                 nn.Linear(channels[0], 3))

    def encode(self, partial: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The condition branch: [(points, features)] per level for the partial cloud [B, M, 3] (independent of t,
        so a sampler could compute it once per partial)."""
        if partial.dim() != 3 or partial.shape[-1] != 3:
            raise ValueError(f"PointDiffusionNet: partial must be [B, M, 3], got {tuple(partial.shape)}")
        levels = [(partial, self.c_in(partial))]
        for sa in self.cond_sa:
            levels.append(sa(*levels[-1]))
        return levels

    def denoise(self, x: Tensor, t: Tensor, cond: list[tuple[Tensor, Tensor]]) -> Tensor:
        """The noisy branch: set abstraction with feature transfer, then propagation back to every point."""
        if x.dim() != 3 or x.shape[-1] != 3:
            raise ValueError(f"PointDiffusionNet: x must be [B, N, 3], got {tuple(x.shape)}")
        temb = self.time_mlp(noise_level_embedding(self.schedule, t, x.shape[0], x.device, self.time_dim).to(x.dtype))
        levels = [(x, self.enc_transfer[0](x, self.x_in(x), *cond[0]))]
        for i, sa in enumerate(self.sa):
            xyz, feat = sa(*levels[-1], temb)
            levels.append((xyz, self.enc_transfer[i + 1](xyz, feat, *cond[i + 1])))
        feat = levels[-1][1]
        for i in reversed(range(len(self.fp))):
            xyz, skip = levels[i]
            feat = self.fp[i](xyz, skip, *levels[i + 1][0:1], feat, temb)
            feat = self.dec_transfer[i](xyz, feat, *cond[i])
        return self.out(feat)

    def forward(self, x: Tensor, t: Tensor, partial: Tensor) -> Tensor:
        """ε̂(x_t, t | partial) [B, N, 3] = denoise(x_t, t, encode(partial))."""
        return self.denoise(x, t, self.encode(partial.to(x.dtype)))
