"""Noise-aware classifier p_t(c | x_t) for classifier guidance (Dhariwal & Nichol 2021, "ADM", §4 and App. C).

ADM's classifier is the *encoder half* of its UNet: the input conv, the down-sampling levels of AdaGN residual
blocks (with self-attention at chosen resolutions) and the middle block, all conditioned on the time t through
the same sinusoidal embedding + MLP, followed by GroupNorm → SiLU → a pooling head → class logits. The pooling
head is ADM's attention pooling (``pool="attention"``, CLIP's AttentionPool2d: the spatial mean token, with a
learned positional embedding, attends over all positions) or global average pooling (``pool="avg"``).

It is trained on noised data x_t = α_t x₀ + σ_t ε with t uniform (``sciddpm.guidance.noisy_classifier_loss``) so
that ∇_x log p_t(c | x_t) is meaningful at every noise level; guidance then adds λ ∇_x log p_t(c | x_t) to the score
(``sciddpm.guidance.classifier_guidance``). The building blocks are those of :mod:`.backbone`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciddpm.network_time import refuse_raw_time_config, require_schedule
from sciddpm.schedules import NoiseSchedule

from .backbone import AttentionBlock, Block, Downsample, ResBlock, _norm, noise_level_embedding

POOLS = ("attention", "avg")


class AttentionPool2d(nn.Module):
    """Attention pooling (Radford et al. 2021, CLIP; used by ADM's classifier): the query is the spatial mean
    token; keys/values are [mean; all positions] + a learned positional embedding; output = Linear(attended)."""

    def __init__(self, spatial: int, ch: int, head_channels: int, out_dim: int):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(ch, spatial * spatial + 1) / ch**0.5)
        self.heads = max(1, ch // head_channels) if ch % max(1, ch // head_channels) == 0 else 1
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj = nn.Conv1d(ch, out_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(-1, keepdim=True), x], dim=-1) + self.pos.to(x.dtype)[None]  # [b, c, 1 + hw]
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, -1).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # only the mean token's query: [b, heads, 1, c/heads]
        return self.proj(h.transpose(-1, -2).reshape(b, c, 1))[:, :, 0]


class NoisyClassifier(nn.Module):
    """ADM's encoder-half classifier: ``forward(x_t [B,C,H,W], t [B]) -> logits [B, num_classes]``.

    Args mirror :class:`~.backbone.UNet`: ``model_channels``, ``channel_mult``, ``num_res_blocks``,
    ``attention_resolutions`` (spatial sizes with self-attention), ``image_size``, ``dropout``, ``schedule``
    (required, keyword-only: t in the schedule's units is embedded as sinusoids of C · ``schedule.c_noise(t)``),
    ``head_channels``, ``norm_groups``, ``zero_init`` (ADM's zero-initialised residual output convs, so every block
    starts as the identity and t enters only after training; off only for tests); plus ``num_classes`` and
    ``pool`` ("attention" or "avg").
    """

    def __init__(self, in_channels: int = 1, model_channels: int = 64, channel_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 2, attention_resolutions: Sequence[int] = (14,), image_size: int = 28,
                 dropout: float = 0.0, num_classes: int = 10, head_channels: int = 32,
                 norm_groups: int = 32, pool: str = "attention", zero_init: bool = True, *,
                 schedule: NoiseSchedule | None = None) -> None:
        super().__init__()
        self.schedule = require_schedule(schedule, type(self).__name__)
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self._config: dict[str, Any] = dict(
            in_channels=in_channels, model_channels=model_channels, channel_mult=list(channel_mult),
            num_res_blocks=num_res_blocks, attention_resolutions=list(attention_resolutions), image_size=image_size,
            dropout=dropout, num_classes=num_classes, head_channels=head_channels,
            norm_groups=norm_groups, pool=pool, zero_init=zero_init)
        self.in_channels, self.model_channels, self.num_classes = in_channels, model_channels, num_classes
        emb_dim, g = 4 * model_channels, norm_groups
        self.time_mlp = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch, res_size = model_channels, image_size
        self.input_conv = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, model_channels * mult, emb_dim, dropout, g, zero_init)]
                ch = model_channels * mult
                if res_size in attention_resolutions:
                    layers.append(AttentionBlock(ch, head_channels, g, zero_init))
                self.down.append(Block(layers))
            if level != len(channel_mult) - 1:
                self.down.append(Block([Downsample(ch)]))
                res_size = (res_size + 1) // 2
        self.middle = Block([ResBlock(ch, ch, emb_dim, dropout, g, zero_init),
                             AttentionBlock(ch, head_channels, g, zero_init), ResBlock(ch, ch, emb_dim, dropout, g, zero_init)])
        self.out_norm = nn.Sequential(_norm(ch, g), nn.SiLU())
        self.head: nn.Module = (AttentionPool2d(res_size, ch, head_channels, num_classes) if pool == "attention"
                                else nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes)))
        self.feature_size = res_size

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON); ``NoisyClassifier.from_config(m.config(), schedule)`` rebuilds it."""
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self._config.items()}

    @classmethod
    def from_config(cls, config: dict[str, Any], schedule: NoiseSchedule) -> "NoisyClassifier":
        """Rebuild from ``config()`` for the given schedule (a v1 config's ``time_scale`` is rejected)."""
        refuse_raw_time_config(config, cls.__name__)
        return cls(**config, schedule=schedule)

    def embed(self, t: Tensor, batch: int, device: torch.device) -> Tensor:
        """e = MLP(sinusoid(C · c_noise(t))), the time embedding of the UNet (no class embedding)."""
        sinusoid = noise_level_embedding(self.schedule, t, batch, device, self.model_channels)
        return self.time_mlp(sinusoid.to(self.time_mlp[0].weight.dtype))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Logits of p_t(c | x_t), [B, num_classes]."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        emb = self.embed(t, x.shape[0], x.device)
        h = self.input_conv(x)
        for block in self.down:
            h = block(h, emb)
        h = self.out_norm(self.middle(h, emb))
        if isinstance(self.head, AttentionPool2d) and h.shape[-1] * h.shape[-2] != self.feature_size**2:
            raise ValueError(f"attention pooling was built for {self._config['image_size']}px inputs, got {tuple(x.shape[-2:])}")
        return self.head(h)
