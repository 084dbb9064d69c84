"""Kaufman's exact partition function of the finite periodic 2-D Ising model, and what follows from it.

For an m × n lattice with periodic boundaries, J = 1, k_B = 1 and K = βJ (Kaufman, Phys. Rev. 76, 1232 (1949);
in the form of Beale, PRL 76, 78 (1996), eqs. 2–4):

    Z = ½ (2 sinh 2K)^{mn/2} (Z₁ + Z₂ + Z₃ + Z₄),
    Z₁ = Π_{r=0}^{n−1} 2 cosh(m γ_{2r+1}/2),   Z₂ = Π_{r=0}^{n−1} 2 sinh(m γ_{2r+1}/2),
    Z₃ = Π_{r=0}^{n−1} 2 cosh(m γ_{2r}/2),     Z₄ = Π_{r=0}^{n−1} 2 sinh(m γ_{2r}/2),
    cosh γ_k = cosh 2K coth 2K − cos(πk/n)  (k ≥ 1, γ_k > 0),   γ₀ = 2K + ln tanh K  (signed: < 0 below T_c).

ln Z is evaluated as ln Z₁ + ln(1 + Z₂/Z₁ + (Z₃/Z₁)(1 + Z₄/Z₃)) with Z₂/Z₁ = Π tanh(mγ_odd/2),
Z₄/Z₃ = Π tanh(mγ_even/2) and ln cosh written without overflow, so it is finite and smooth through T_c at any size.
⟨E⟩ = −∂ln Z/∂β and C = β² ∂²ln Z/∂β² are exact derivatives of that expression (automatic differentiation in
float64), not finite differences.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

#: Onsager's critical temperature of the infinite lattice, 2/ln(1 + √2).
ONSAGER_TC = 2.0 / math.log(1.0 + math.sqrt(2.0))


def _log_cosh(x: Tensor) -> Tensor:
    """ln cosh x = ln(eˣ + e⁻ˣ) − ln 2 (``logaddexp``: no overflow, and smooth at 0 to every order under autograd)."""
    return torch.logaddexp(x, -x) - math.log(2.0)


def log_partition(beta: Tensor, m: int, n: int | None = None) -> Tensor:
    """ln Z(β) of the m × n periodic lattice (Kaufman 1949; Beale 1996) for float64 ``beta`` of any shape."""
    n = m if n is None else n
    if m < 1 or n < 1:
        raise ValueError(f"lattice sizes must be >= 1, got {m} x {n}")
    beta = torch.as_tensor(beta, dtype=torch.float64)
    if not bool(torch.isfinite(beta).all()) or bool((beta <= 0).any()):
        raise ValueError("beta (1/T) must be finite and > 0")
    K = beta[..., None]
    k = torch.arange(2 * n, dtype=torch.float64)
    c = torch.cosh(2 * K) / torch.tanh(2 * K) - torch.cos(math.pi * k / n)
    gamma = torch.acosh(c[..., 1:].clamp_min(1.0))
    gamma0 = 2 * K + torch.log(torch.tanh(K))
    gamma = torch.cat([gamma0, gamma], dim=-1)  # γ_0 … γ_{2n−1}
    odd, even = 0.5 * m * gamma[..., 1::2], 0.5 * m * gamma[..., 0::2]
    log_z1 = (math.log(2.0) + _log_cosh(odd)).sum(-1)
    log_z3 = (math.log(2.0) + _log_cosh(even)).sum(-1)
    # every γ_k > 0 except γ₀, which crosses 0 at T_c: its factor stays outside the log (exact autograd through 0)
    r21 = torch.exp(torch.log(torch.tanh(odd)).sum(-1))
    r43 = torch.tanh(even[..., 0]) * torch.exp(torch.log(torch.tanh(even[..., 1:])).sum(-1))
    r31 = torch.exp(log_z3 - log_z1)
    return (-math.log(2.0) + 0.5 * m * n * torch.log(2 * torch.sinh(2 * beta)) + log_z1
            + torch.log1p(r21 + r31 * (1 + r43)))


@dataclass
class ExactThermo:
    """Exact per-spin thermodynamics at temperatures T: ln Z / N, ⟨E⟩/N, C/N = (⟨E²⟩ − ⟨E⟩²)/(N T²)."""

    temperature: np.ndarray
    log_z_per_spin: np.ndarray
    energy_per_spin: np.ndarray
    heat_capacity_per_spin: np.ndarray


def kaufman(temperature: Sequence[float] | np.ndarray | float, L: int) -> ExactThermo:
    """Exact ln Z/N, ⟨E⟩/N = −(1/N) ∂ln Z/∂β and C/N = (β²/N) ∂²ln Z/∂β² of the L × L periodic lattice at each T
    (Kaufman 1949; Beale 1996), the derivatives by automatic differentiation of ``log_partition`` in float64."""
    T = np.atleast_1d(np.asarray(temperature, dtype=np.float64))
    if not np.isfinite(T).all() or (T <= 0).any():
        raise ValueError(f"temperatures must be finite and > 0, got minimum {T.min() if T.size else 'none'}")
    beta = torch.tensor(1.0 / T, dtype=torch.float64, requires_grad=True)
    log_z = log_partition(beta, L)
    (d1,) = torch.autograd.grad(log_z.sum(), beta, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), beta)
    N = L * L
    b = beta.detach()
    return ExactThermo(T, (log_z.detach() / N).numpy(), (-d1.detach() / N).numpy(), (b * b * d2 / N).numpy())


def heat_capacity_peak(L: int, lo: float = 1.5, hi: float = 3.5, tol: float = 1e-9) -> float:
    """The temperature of the maximum of the exact C(T) of the L × L lattice (golden-section search on [lo, hi],
    after a grid bracket); the finite-size pseudo-critical temperature (Ferdinand & Fisher 1969)."""
    grid = np.linspace(lo, hi, 401)
    c = kaufman(grid, L).heat_capacity_per_spin
    i = int(np.clip(np.argmax(c), 1, len(grid) - 2))
    a, b = grid[i - 1], grid[i + 1]
    g = (math.sqrt(5) - 1) / 2
    x1, x2 = b - g * (b - a), a + g * (b - a)
    f1, f2 = (float(kaufman(x, L).heat_capacity_per_spin[0]) for x in (x1, x2))
    while b - a > tol:
        if f1 > f2:
            b, x2, f2 = x2, x1, f1
            x1 = b - g * (b - a)
            f1 = float(kaufman(x1, L).heat_capacity_per_spin[0])
        else:
            a, x1, f1 = x1, x2, f2
            x2 = a + g * (b - a)
            f2 = float(kaufman(x2, L).heat_capacity_per_spin[0])
    return 0.5 * (a + b)


def brute_force(temperature: Sequence[float] | np.ndarray, L: int) -> ExactThermo:
    """ln Z/N, ⟨E⟩/N, C/N by enumerating all 2^(L²) states (L ≤ 4): the check of ``kaufman``."""
    if L > 4:
        raise ValueError(f"brute force enumerates 2^(L^2) states; L = {L} is too large (at most 4)")
    from .data import energy

    N = L * L
    states = ((np.arange(2**N)[:, None] >> np.arange(N)) & 1).astype(np.int8) * 2 - 1
    levels, counts = np.unique(energy(states.reshape(-1, L, L)), return_counts=True)
    T = np.atleast_1d(np.asarray(temperature, dtype=np.float64))
    x = -levels[None, :] / T[:, None]
    shift = x.max(1, keepdims=True)
    w = counts[None, :] * np.exp(x - shift)
    z = w.sum(1)
    p = w / z[:, None]
    e1, e2 = (p * levels).sum(1), (p * levels.astype(np.float64) ** 2).sum(1)
    return ExactThermo(T, (np.log(z) + shift[:, 0]) / N, e1 / N, (e2 - e1**2) / (N * T**2))
