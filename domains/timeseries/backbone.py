"""TFDPM-style conditional denoiser for multivariate sensor series (Yan, Zhou, Zhan & Xia, Knowledge-Based Systems
2022, arXiv 2112.10774).

The condition is a history window H ∈ R^{L×F} (F sensors, L past steps) with a mask M (1 = observed): every
(step, sensor) cell is embedded from (H·M, M), so a missing value is a zero input flagged by its mask, never a NaN.

* **temporal attention** (per sensor, over the L steps; Vaswani et al. 2017): the last step's embedding (plus a
  learned query) attends over the sensor's L embedded steps, then an MLP, giving one context vector c_f per sensor
  (only the last step queries, so the cost is linear in L);
* **graph attention across sensors** (Veličković et al. 2018, as a dot-product attention with a learned additive
  adjacency bias A ∈ R^{F×F}, or a given sensor graph as a hard mask) mixes the context vectors;
* the **ε-network** ε̂(x_t, t | c) reads the noisy forecast x_t ∈ R^{h×F} per sensor (one token per sensor holding
  its h future values), adds c_f, a sensor embedding and the noise-level embedding (sinusoids of 250·c_noise(t),
  Karras et al. 2022, through ``domains.images.backbone.noise_level_embedding``) and runs ``layers`` blocks of
  graph attention across sensors + MLP before reading out h values per sensor.

``encode`` (history → context) and ``denoise`` (x_t, t, context → ε̂) are separate so a sampler evaluates the
history encoder once per window, not once per step (``forward`` composes them as ``net(x_t, t, **condition)``).
The same network trained with x_t ≡ 0 at a fixed t and an x₀ (MSE) loss is the deterministic-forecaster baseline.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sciddpm.network_time import require_schedule
from sciddpm.schedules import NoiseSchedule
from sciddpm.domains.images.backbone import noise_level_embedding


class SensorAttention(nn.Module):
    """Pre-norm block: multi-head attention across sensors with an additive graph bias, then an MLP:
    h ← h + MHA(LN h; bias A), h ← h + MLP(LN h). ``bias`` [F, F]: learned logits or −inf off a given graph."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h: Tensor, bias: Tensor) -> Tensor:
        a = self.norm1(h)
        h = h + self.attn(a, a, a, attn_mask=bias.to(h.dtype), need_weights=False)[0]
        return h + self.mlp(self.norm2(h))


class TFDPMNet(nn.Module):
    """ε̂(x_t, t | history, history_mask) for x_t ∈ R^{B×h×F} (see the module docstring).

    ``sensors`` F, ``horizon`` h, ``history`` L (the window length the network is built for), ``dim`` width,
    ``heads`` attention heads, ``layers`` depth of the ε-network, ``graph``: optional F×F 0/1 adjacency (self-loops added) that restricts the sensor attention;
    default a learned dense bias.
    """

    def __init__(self, sensors: int, horizon: int = 1, history: int = 24, dim: int = 32, heads: int = 4,
                 layers: int = 2, graph: list[list[int]] | None = None, *,
                 schedule: NoiseSchedule | None = None) -> None:
        super().__init__()
        if min(sensors, horizon, history, dim, heads, layers) < 1 or dim % heads:
            raise ValueError(f"TFDPMNet: need positive sizes and dim divisible by heads (dim={dim}, heads={heads})")
        self.schedule = require_schedule(schedule, "TFDPMNet")
        self.sensors, self.horizon, self.history, self.dim = sensors, horizon, history, dim
        self.cell = nn.Linear(2, dim)
        self.step_embedding = nn.Parameter(0.02 * torch.randn(history, dim))
        self.sensor_embedding = nn.Parameter(0.02 * torch.randn(sensors, dim))
        self.query = nn.Parameter(torch.zeros(dim))
        self.temporal_norm = nn.LayerNorm(dim)
        self.temporal = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.temporal_mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.graph_logits = nn.Parameter(torch.zeros(sensors, sensors))
        if graph is not None:
            adj = torch.as_tensor(graph, dtype=torch.bool)
            if adj.shape != (sensors, sensors):
                raise ValueError(f"TFDPMNet: graph has shape {tuple(adj.shape)}, expected ({sensors}, {sensors})")
            adj = adj | adj.T | torch.eye(sensors, dtype=torch.bool)
            self.register_buffer("graph_mask", torch.zeros(sensors, sensors).masked_fill(~adj, float("-inf")))
        else:
            self.graph_mask = None
        self.spatial = SensorAttention(dim, heads)
        self.value_in = nn.Linear(horizon, dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(SensorAttention(dim, heads) for _ in range(layers))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, horizon))

    def _bias(self) -> Tensor:
        return self.graph_logits if self.graph_mask is None else self.graph_logits + self.graph_mask

    def encode(self, history: Tensor, history_mask: Tensor | None = None) -> Tensor:
        """Context c ∈ R^{B×F×dim} from the history H [B, L, F] and its mask M (1 observed; default all)."""
        b, length, f = history.shape
        if (length, f) != (self.history, self.sensors):
            raise ValueError(f"TFDPMNet: history has shape {tuple(history.shape)}, expected (B, {self.history}, "
                             f"{self.sensors})")
        mask = torch.ones_like(history) if history_mask is None else history_mask.to(history.dtype)
        values = torch.where(mask > 0, history, torch.zeros_like(history))  # a NaN under the mask never enters
        cells = self.cell(torch.stack([values, mask], dim=-1))  # [B, L, F, dim]
        cells = cells + self.step_embedding[None, :, None] + self.sensor_embedding[None, None]
        seq = self.temporal_norm(cells.permute(0, 2, 1, 3).reshape(b * f, length, self.dim))
        query = seq[:, -1:] + self.query
        ctx = cells[:, -1].reshape(b * f, 1, self.dim) + self.temporal(query, seq, seq, need_weights=False)[0]
        ctx = (ctx + self.temporal_mlp(ctx)).reshape(b, f, self.dim)
        return self.spatial(ctx, self._bias())

    def denoise(self, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        """ε̂ [B, h, F] for the noisy forecast x [B, h, F] at times t [B] given ``encode``'s context."""
        b = x.shape[0]
        temb = self.time_mlp(noise_level_embedding(self.schedule, t, b, x.device, self.dim).to(x.dtype))
        h = self.value_in(x.transpose(1, 2)) + context + self.sensor_embedding[None] + temb[:, None]
        bias = self._bias()
        for block in self.blocks:
            h = block(h, bias)
        return self.out(h).transpose(1, 2)

    def forward(self, x: Tensor, t: Tensor, history: Tensor, history_mask: Tensor | None = None) -> Tensor:
        """ε̂(x_t, t | history) = denoise(x_t, t, encode(history, history_mask))."""
        return self.denoise(x, t, self.encode(history, history_mask))
