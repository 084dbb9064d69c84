"""The torsion network: a residual MLP on Fourier features of the angles, conditioned on noise level and
temperature (small enough to train in minutes on one CPU thread; runs batched on CUDA)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sciddpm.network_time import require_schedule
from sciddpm.schedules import NoiseSchedule


class _Block(nn.Module):
    """h + W₂ SiLU(W₁ LN(h) + E c): a pre-norm residual block with an additive conditioning embedding c."""

    def __init__(self, hidden: int, emb: int) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.cond = nn.Linear(emb, hidden)

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        return h + self.fc2(torch.nn.functional.silu(self.fc1(self.norm(h)) + self.cond(c)))


class TorsionNet(nn.Module):
    """ε̂(x, t, T) for F angles (or F min-max-scaled coordinates).

    Input features: ``periodic`` → [cos kx, sin kx]_{k=1..fourier} (Fourier features on the torus, periodic by
    construction: Jing et al. 2022 and Tancik et al. 2020); otherwise the raw coordinates x (the DDPM_REMD ablation,
    Wang, Herron & Tiwary, PNAS 2022, whose network sees angles scaled to [−1, 1] as plain numbers).
    Conditioning c = [sin/cos(250 c_noise(t) ω_j), sin/cos(τ ω'_j)] with c_noise(t) = ¼ ln(σ_t/α_t) of the model's
    ``schedule`` (Karras et al. 2022) and τ = ln(T / 300 K)·8 (geometric frequencies ω, ω'), fed through an MLP
    into every residual block."""

    def __init__(self, angles: int = 2, hidden: int = 128, blocks: int = 3, fourier: int = 4, emb: int = 32,
                 periodic: bool = True, *, schedule: NoiseSchedule | None = None) -> None:
        super().__init__()
        if min(angles, hidden, blocks, fourier, emb) < 1 or emb % 4:
            raise ValueError("TorsionNet: angles, hidden, blocks, fourier >= 1 and emb a positive multiple of 4")
        self.schedule = require_schedule(schedule, "TorsionNet")
        self.periodic, self.emb = periodic, emb
        self.register_buffer("k", torch.arange(1, fourier + 1, dtype=torch.float32), persistent=False)
        self.inp = nn.Linear(2 * angles * fourier if periodic else angles, hidden)
        self.embed = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.blocks = nn.ModuleList(_Block(hidden, emb) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, angles))

    def _sinusoids(self, v: Tensor, scale: float) -> Tensor:
        half = self.emb // 4
        freqs = torch.exp(-math.log(1e3) * torch.arange(half, device=v.device, dtype=torch.float32) / half)
        a = (scale * v.to(torch.float32))[:, None] * freqs
        return torch.cat([a.sin(), a.cos()], dim=1)

    def forward(self, x: Tensor, t: Tensor, temperature: Tensor | None = None) -> Tensor:
        if temperature is None:
            raise ValueError("TorsionNet needs the temperature of every sample (condition 'temperature')")
        if x.dim() != 2 or x.shape[1] * (2 * len(self.k) if self.periodic else 1) != self.inp.in_features:
            raise ValueError(f"TorsionNet: expected x of shape [B, {self.out[1].out_features}], got {tuple(x.shape)}")
        xf = x.to(torch.float32)
        feats = torch.cat([torch.cos(xf[..., None] * self.k).flatten(1), torch.sin(xf[..., None] * self.k).flatten(1)],
                          dim=1) if self.periodic else xf
        temp = torch.as_tensor(temperature, device=x.device).reshape(-1).expand(len(x))
        c = torch.cat([self._sinusoids(self.schedule.c_noise(t).reshape(-1).expand(len(x)), 250.0),
                       self._sinusoids(torch.log(temp.to(torch.float64)), 8.0)], dim=1)
        c = self.embed(c)
        h = self.inp(feats)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h).to(x.dtype)
