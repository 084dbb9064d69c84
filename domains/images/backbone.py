"""ADM-style UNet for images (Ho et al. 2020; Nichol & Dhariwal 2021; Dhariwal & Nichol 2021 "ADM").

Residual blocks with GroupNorm and adaptive group normalisation from the time(+class) embedding,
AdaGN(h, e) = y_s · GroupNorm(h) + y_b with (y_s, y_b) = Linear(SiLU(e)) (ADM eq. in §3; GLIDE), written
as (1 + s)·GN(h) + b so that a zero-initialised projection starts at the identity. Self-attention at chosen
resolutions, dropout, an optional class embedding with an extra learned **null token** (index
``num_classes``) for classifier-free guidance (Ho & Salimans 2022), and an optional low-resolution
conditioning image (SR3, Saharia et al. 2022) upsampled bicubically to the input size and concatenated on
channels. Time t is given in the schedule's units (e.g. 0..N); the network reads it only through the noise level,
as sinusoids of ``C_NOISE_EMBED_SCALE`` · ``schedule.c_noise(t)`` (EDM's c_noise = ¼ ln(σ/α), Karras et al. 2022),
so the same weights see the same input for the same noise level under any schedule.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciddpm.network_time import refuse_raw_time_config, require_schedule
from sciddpm.schedules import NoiseSchedule

#: Sinusoids embed C_NOISE_EMBED_SCALE · c_noise(t). c_noise = −λ/8 spans about −2.9 … 1.3 (linear, 1000 steps)
#: to −2.9 … 2.5 (cosine), so the embedded argument covers an interval about 1000–1300 wide, as ADM's raw steps
#: 0..1000 did (Dhariwal & Nichol 2021): the same sinusoid frequencies resolve neighbouring noise levels.
C_NOISE_EMBED_SCALE = 250.0
#: Padding modes of the UNet's convolutions (``circular``: periodic boundaries, e.g. an Ising lattice).
PADDING_MODES = ("zeros", "circular", "reflect", "replicate")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017; Ho et al. 2020): [cos(t ω_k), sin(t ω_k)], ω_k = P^{−k/(dim/2)}."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def noise_level_embedding(schedule: NoiseSchedule, t: Tensor | float, batch: int, device: torch.device,
                          dim: int) -> Tensor:
    """sinusoid(C_NOISE_EMBED_SCALE · c_noise(t)) [batch, dim], c_noise = ¼ ln(σ_t/α_t) (Karras et al. 2022, Tab. 1)."""
    t = torch.as_tensor(t, device=device).reshape(-1).to(torch.float64).expand(batch)
    return timestep_embedding((C_NOISE_EMBED_SCALE * schedule.c_noise(t)).float(), dim)


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, ch), ch)


def _zero(module: nn.Module, enabled: bool) -> nn.Module:
    if enabled:
        for p in module.parameters():
            nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """h = conv(SiLU(GN(x))); h = conv(dropout(SiLU(AdaGN(h, e)))); return skip(x) + h."""

    def __init__(self, ch_in: int, ch_out: int, emb_dim: int, dropout: float, groups: int, zero_init: bool):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(ch_in, groups), nn.SiLU(), nn.Conv2d(ch_in, ch_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * ch_out))
        self.out_norm = _norm(ch_out, groups)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout),
                                        _zero(nn.Conv2d(ch_out, ch_out, 3, padding=1), zero_init))
        self.skip = nn.Identity() if ch_in == ch_out else nn.Conv2d(ch_in, ch_out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_layers(self.out_norm(h) * (1 + scale) + shift)
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels with a residual connection (ADM)."""

    def __init__(self, ch: int, head_channels: int, groups: int, zero_init: bool):
        super().__init__()
        self.heads = max(1, ch // head_channels) if ch % max(1, ch // head_channels) == 0 else 1
        self.norm = _norm(ch, groups)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv1d(ch, ch, 1), zero_init)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, hh, ww = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, hh * ww))
        q, k, v = qkv.reshape(b, 3, self.heads, c // self.heads, hh * ww).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)  # [b, heads, hw, c/heads]
        h = h.transpose(-1, -2).reshape(b, c, hh * ww)
        return x + self.proj(h).reshape(b, c, hh, ww)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the matching encoder size (odd sizes such as 7 → 14 handled), then conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class Block(nn.ModuleList):
    """A sequence of ResBlock / AttentionBlock / Downsample layers that all take (x, emb)."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb)
        return x


class UNet(nn.Module):
    """ADM-style UNet: ``forward(x [B,C,H,W], t [B], y=None, cond_image=None, return_features=False)``.

    Args:
        in_channels / out_channels: image channels; ``out_channels`` may exceed ``in_channels`` (e.g. ε and
            an SN/NPR head stacked on channels). Default: ``in_channels``.
        model_channels, channel_mult, num_res_blocks: width, per-level multipliers, res blocks per level.
        attention_resolutions: spatial sizes (e.g. (14,) for 28×28 inputs) at which to add self-attention.
        num_classes: enables a class embedding with ``num_classes + 1`` rows; index ``num_classes`` (and
            ``y=None``) is the learned null token for classifier-free guidance.
        cond_channels: channels of an optional low-resolution conditioning image (SR3); 0 disables it.
        schedule: the model's noise schedule (required, keyword-only); t in its units enters only as
            sinusoids of ``C_NOISE_EMBED_SCALE`` · ``schedule.c_noise(t)``. Stored as a plain attribute (not in
            ``config()`` nor the state dict): ``UNet.from_config(config, schedule)``.
        zero_init: zero-initialise residual output convs and the final conv (ADM); off only for tests.
        padding_mode: padding of every 3×3 conv (``torch.nn.Conv2d``'s): ``zeros`` for images, ``circular`` for
            periodic lattices (the network then commutes with translations by multiples of 2^(levels − 1), the
            stride of its deepest level; exactly with every translation when there is one level).
    """

    def __init__(self, in_channels: int = 1, model_channels: int = 64, out_channels: int | None = None,
                 channel_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (14,), image_size: int = 28, dropout: float = 0.1,
                 num_classes: int | None = None, cond_channels: int = 0,
                 head_channels: int = 32, norm_groups: int = 32, zero_init: bool = True,
                 padding_mode: str = "zeros", *, schedule: NoiseSchedule | None = None) -> None:
        super().__init__()
        self.schedule = require_schedule(schedule, type(self).__name__)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self._config: dict[str, Any] = dict(
            in_channels=in_channels, model_channels=model_channels,
            out_channels=out_channels if out_channels is not None else in_channels,
            channel_mult=list(channel_mult), num_res_blocks=num_res_blocks,
            attention_resolutions=list(attention_resolutions), image_size=image_size, dropout=dropout,
            num_classes=num_classes, cond_channels=cond_channels,
            head_channels=head_channels, norm_groups=norm_groups, zero_init=zero_init, padding_mode=padding_mode)
        self.in_channels, self.out_channels = in_channels, self._config["out_channels"]
        self.model_channels, self.num_classes, self.cond_channels = model_channels, num_classes, cond_channels
        emb_dim, g = 4 * model_channels, norm_groups

        def res(ci: int, co: int) -> ResBlock:
            return ResBlock(ci, co, emb_dim, dropout, g, zero_init)

        def attn(c: int) -> AttentionBlock:
            return AttentionBlock(c, head_channels, g, zero_init)

        self.time_mlp = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None

        ch, res_size = model_channels, image_size
        self.input_conv = nn.Conv2d(in_channels + cond_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, model_channels * mult)]
                ch = model_channels * mult
                if res_size in attention_resolutions:
                    layers.append(attn(ch))
                self.down.append(Block(layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(Block([Downsample(ch)]))
                skips.append(ch)
                res_size = (res_size + 1) // 2
        self.middle = Block([res(ch, ch), attn(ch), res(ch, ch)])
        self.up = nn.ModuleList()
        self.upsamplers = nn.ModuleDict()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skips.pop(), model_channels * mult)]
                ch = model_channels * mult
                if res_size in attention_resolutions:
                    layers.append(attn(ch))
                self.up.append(Block(layers))
                if level and i == num_res_blocks:
                    self.upsamplers[str(len(self.up) - 1)] = Upsample(ch)
                    res_size *= 2
        self.out = nn.Sequential(_norm(ch, g), nn.SiLU(),
                                 _zero(nn.Conv2d(ch, self.out_channels, 3, padding=1), zero_init))
        for conv in self.modules():  # every padded conv, strided ones included
            if isinstance(conv, nn.Conv2d) and any(conv.padding):
                conv.padding_mode = padding_mode

    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable); ``UNet.from_config(m.config(), schedule)`` rebuilds it."""
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self._config.items()}

    @classmethod
    def from_config(cls, config: dict[str, Any], schedule: NoiseSchedule) -> "UNet":
        """Rebuild from ``config()`` for the given schedule (a v1 config's ``time_scale`` is rejected)."""
        refuse_raw_time_config(config, cls.__name__)
        return cls(**config, schedule=schedule)

    def embed(self, t: Tensor, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """e = MLP(sinusoid(C · c_noise(t))) [+ class embedding of y, null token when y is None]."""
        emb = self.time_mlp(noise_level_embedding(self.schedule, t, batch, device, self.model_channels))
        if self.class_emb is not None:
            if y is None:
                y = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
            y = torch.as_tensor(y, device=device).long().reshape(-1)
            if y.numel() != batch or (y < 0).any() or (y > self.num_classes).any():
                raise ValueError(f"y must hold {batch} labels in 0..{self.num_classes} ({self.num_classes} = null)")
            emb = emb + self.class_emb(y)
        elif y is not None:
            raise ValueError("y given but the UNet was built without num_classes")
        return emb

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond_image: Tensor | None = None,
                return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Predict [B, out_channels, H, W]; with ``return_features`` also the decoder block outputs (DPM features)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        emb = self.embed(t, y, x.shape[0], x.device)
        if self.cond_channels:
            if cond_image is None or cond_image.dim() != 4 or cond_image.shape[1] != self.cond_channels:
                raise ValueError(f"this UNet needs cond_image [B, {self.cond_channels}, h, w]")
            if cond_image.shape[-2:] != x.shape[-2:]:
                cond_image = F.interpolate(cond_image.float(), size=x.shape[-2:], mode="bicubic", align_corners=False)
            x = torch.cat([x, cond_image.to(x.dtype)], dim=1)
        elif cond_image is not None:
            raise ValueError("cond_image given but the UNet was built with cond_channels=0")
        h = self.input_conv(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb)
            hs.append(h)
        h = self.middle(h, emb)
        features: list[Tensor] = []
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, hs.pop().to(h.dtype)], dim=1), emb)
            if str(i) in self.upsamplers:
                h = self.upsamplers[str(i)](h, hs[-1].shape[-2:])
            features.append(h)
        out = self.out(h)
        return (out, features) if return_features else out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
