"""Diffusion on the flat torus T^d = (−π, π]^d: the wrapped normal, its score, and an exact mixture oracle.

Variance-exploding noise on the torus (α = 1) is Brownian motion on the circle in every angle, whose transition
kernel is the wrapped normal (Jing et al. 2022, *Torsional diffusion*, §3.2 and App. A; De Bortoli et al. 2022,
*Riemannian score-based generative modelling*, §3 and the heat kernel of Example 1):

    p_σ(x | μ) = Σ_{k∈ℤ} N(x; μ + 2πk, σ²)                                   (image sum)
               = (1/2π) [1 + 2 Σ_{n≥1} e^{−n²σ²/2} cos(n(x − μ))]            (theta / Fourier series),

and ∇_x log p_σ(x | μ) is the training target of denoising score matching on the torus (Jing et al. 2022, eq. 6).
Both series are truncated with a proven bound on the error (``image_error_bound``, ``fourier_error_bound``); the
image sum serves σ ≤ √(2π) and the Fourier series σ > √(2π) (the self-dual point of Jacobi's θ-transformation,
where both need the fewest terms), and the number of terms is chosen from the bound for a tolerance on ε = −σ·s.

``WrappedNormalMixture`` is the exact oracle: a mixture of products of wrapped normals on T^d stays a mixture of
wrapped normals under VE noise (std √(s² + σ_t²), because WN(μ, s²) ∗ WN(0, σ²) = WN(μ, s² + σ²)), so its noisy
density, score, ε-predictor and exact cell probabilities on a grid (for TV / KL of samples) are closed form.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .schedules import NoiseSchedule
from .spaces import wrap_angle

TWO_PI = 2.0 * math.pi
#: Switch from the image sum to the Fourier series above this std: √(2π), where θ-duality makes both equally short.
SWITCH_STD = math.sqrt(TWO_PI)
#: Default tolerance on the truncation error of log p and of ε = −σ ∇log p.
DEFAULT_TOL = 1e-12
_MAX_TERMS = 10_000


# ==================================================================================================
# Truncation bounds
# ==================================================================================================
def _series_tail(term: Callable[[int], float], start: int) -> float:
    """An upper bound on Σ_{j≥start} term(j) for a positive sequence whose ratio term(j+1)/term(j) decreases:
    the terms are summed until they stop mattering, and the rest is bounded by a geometric series."""
    total, j = 0.0, start
    while j < start + _MAX_TERMS:
        a = term(j)
        if a == 0.0:
            return total
        nxt = term(j + 1)
        ratio = nxt / a
        if ratio < 1.0 and a < 1e-30 * max(total, 1e-300):
            return total + a / (1.0 - ratio)
        total, j = total + a, j + 1
    raise ValueError("series tail did not converge (std too large for this series)")


def image_error_bound(std: float, terms: int) -> tuple[float, float]:
    """Bounds on the error of the image sum truncated to k ∈ {−K..K} (K = ``terms`` ≥ 1) at std σ:
    (|Δ log p|, |Δ ε|) with ε = −σ ∂_x log p.

    With d = wrap(x − μ) ∈ (−π, π], a_k = exp(−z_k²/2) and z_k = (d + 2πk)/σ, the k = 0 term is the largest and
    a_k/a_0 = exp(−2πk(d + πk)/σ²) ≤ exp(−2π²j(j − 1)/σ²) for |k| = j (worst case |d| = π), while |z_k| ≤ (2j + 1)π/σ.
    So the relative tail of Σ a_k is ρ_B = 2 Σ_{j>K} e^{−2π²j(j−1)/σ²}, that of Σ a_k z_k is
    ρ_A = 2 Σ_{j>K} (2j+1)(π/σ) e^{−2π²j(j−1)/σ²}, and since ε = Σ a_k z_k / Σ a_k,
    |Δ ε| ≤ ρ_A + (2K+1)(π/σ) ρ_B and |Δ log p| = log(1 + tail/Σ_{|k|≤K} a_k) ≤ ρ_B. Both grow with σ.
    """
    if terms < 1 or not std > 0:
        raise ValueError(f"image_error_bound needs terms >= 1 and std > 0, got terms={terms}, std={std}")
    c = 2.0 * math.pi**2 / std**2
    rho_b = 2.0 * _series_tail(lambda j: math.exp(-c * j * (j - 1)), terms + 1)
    rho_a = 2.0 * _series_tail(lambda j: (2 * j + 1) * math.pi / std * math.exp(-c * j * (j - 1)), terms + 1)
    return rho_b, rho_a + (2 * terms + 1) * math.pi / std * rho_b


def fourier_error_bound(std: float, terms: int) -> tuple[float, float]:
    """Bounds on the error of the Fourier series truncated to n ≤ N (N = ``terms`` ≥ 1) at std σ:
    (|Δ log p|, |Δ ε|) with ε = −σ ∂_x log p.

    With q = e^{−σ²/2}, B = 2πp = 1 + 2Σ q^{n²} cos(nd) and A = ∂_x B = −2Σ n q^{n²} sin(nd): the tails are
    t_B = 2Σ_{n>N} q^{n²} and t_A = 2Σ_{n>N} n q^{n²}; B ≥ L = max(1 − 2Σ_{n≥1} q^{n²}, (√(2π)/σ) e^{−π²/(2σ²)})
    (the series, or the k = 0 image alone); |A_N| ≤ a = 2Σ_{n≤N} n q^{n²}. Then for s = A/B,
    |Δ s| ≤ (t_A + a t_B/(L − t_B))/L, |Δ ε| = σ |Δ s| and |Δ log p| ≤ t_B/(L − t_B). Both fall as σ grows.
    """
    if terms < 1 or not std > 0:
        raise ValueError(f"fourier_error_bound needs terms >= 1 and std > 0, got terms={terms}, std={std}")
    h = std**2 / 2.0
    t_b = 2.0 * _series_tail(lambda n: math.exp(-h * n * n), terms + 1)
    t_a = 2.0 * _series_tail(lambda n: n * math.exp(-h * n * n), terms + 1)
    a = 2.0 * sum(n * math.exp(-h * n * n) for n in range(1, terms + 1))
    low = max(1.0 - 2.0 * _series_tail(lambda n: math.exp(-h * n * n), 1),
              math.sqrt(TWO_PI) / std * math.exp(-math.pi**2 / (2.0 * std**2)))
    if low <= t_b:
        return math.inf, math.inf
    return t_b / (low - t_b), std * (t_a + a * t_b / (low - t_b)) / low


def truncation_terms(std: float, tol: float = DEFAULT_TOL, form: str | None = None) -> int:
    """The fewest terms (K images per side, or N Fourier modes) whose error bounds on log p and on ε are ≤ ``tol``
    at std σ, for ``form`` = ``image`` or ``fourier`` (default: image for σ ≤ √(2π), else Fourier)."""
    form = form or ("image" if std <= SWITCH_STD else "fourier")
    bound = {"image": image_error_bound, "fourier": fourier_error_bound}[form]
    for terms in range(1, _MAX_TERMS):
        if max(bound(std, terms)) <= tol:
            return terms
    raise ValueError(f"no {form} truncation reaches tol={tol} at std={std}")


def uniform_prior_tv_bound(std: float, num_angles: int = 1) -> float:
    """TV(p, U(T^F)) ≤ F (2q/π + Σ_{n≥2} q^{n²}), q = e^{−σ²/2}, for any p that is a mixture of products of F
    wrapped normals of std ≥ σ: per angle 2πp − 1 = 2Σ q^{n²} cos(n(x − μ)) and (1/2π)∫|cos| = 2/π, TV is
    subadditive over independent angles and convex over mixtures. It is how far the VE torus marginal at σ_max is
    from the uniform prior (per angle 1.7e-9 at σ = 2π; 4.6e-3 at σ = π, Jing et al.'s σ_max); tight as σ grows."""
    if not std > 0 or num_angles < 1:
        raise ValueError(f"uniform_prior_tv_bound needs std > 0 and num_angles >= 1, got {std}, {num_angles}")
    q = math.exp(-std**2 / 2.0)
    return num_angles * (2.0 * q / math.pi + _series_tail(lambda n: q ** (n * n), 2))


# ==================================================================================================
# The wrapped normal
# ==================================================================================================
def _image_sum(d: Tensor, std: Tensor, terms: int) -> tuple[Tensor, Tensor]:
    """(log p, ε) of WN(0, σ²) at wrapped offsets d from the image sum over k ∈ {−K..K}: log p =
    logsumexp(−z_k²/2) − log σ − ½ log 2π and ε = Σ a_k z_k / Σ a_k, z_k = (d + 2πk)/σ."""
    z0 = d / std
    total, moment = torch.ones_like(d), z0.clone()
    for k in range(1, terms + 1):  # a_k / a_0 = exp(−(z_k² − z_0²)/2) ≤ 1: |d| ≤ π makes k = 0 the largest term
        for zk in (z0 + TWO_PI * k / std, z0 - TWO_PI * k / std):
            ak = torch.exp(-0.5 * (zk - z0) * (zk + z0))
            total, moment = total + ak, moment + ak * zk
    log_p = -0.5 * z0 * z0 + torch.log(total) - torch.log(std) - 0.5 * math.log(TWO_PI)
    return log_p, moment / total


def _fourier_sum(d: Tensor, std: Tensor, terms: int) -> tuple[Tensor, Tensor]:
    """(log p, ε) of WN(0, σ²) from the theta series to n ≤ N: 2πp = 1 + 2Σ q^{n²} cos(nd), q = e^{−σ²/2},
    ∂_x log p = −2Σ n q^{n²} sin(nd) / (2πp), ε = −σ ∂_x log p."""
    n = torch.arange(1, terms + 1, dtype=d.dtype, device=d.device)
    q = torch.exp(-0.5 * (std.unsqueeze(-1) * n) ** 2)
    nd = d.unsqueeze(-1) * n
    b = 1.0 + 2.0 * (q * torch.cos(nd)).sum(-1)
    a = -2.0 * (n * q * torch.sin(nd)).sum(-1)
    return torch.log(b) - math.log(TWO_PI), -std * a / b


def wrapped_normal(x: Tensor, mean: Tensor | float, std: Tensor | float, tol: float = DEFAULT_TOL
                   ) -> tuple[Tensor, Tensor]:
    """log p_σ(x | μ) and ε = −σ ∂_x log p_σ(x | μ) of the wrapped normal WN(μ, σ²) on the circle, elementwise
    (x, μ, σ broadcast), each within ``tol`` of the exact series (Jing et al. 2022, eq. 6's score, times −σ).

    Image sum for σ ≤ √(2π), Fourier series above, with the number of terms chosen from ``image_error_bound`` at
    the largest σ (the bound grows with σ) and from ``fourier_error_bound`` at the smallest (it falls with σ).
    ValueError for σ ≤ 0 or a non-finite input.
    """
    x = torch.as_tensor(x)
    dtype = x.dtype if x.is_floating_point() else torch.float64
    x, mean, std = torch.broadcast_tensors(x.to(dtype), torch.as_tensor(mean, dtype=dtype, device=x.device),
                                           torch.as_tensor(std, dtype=dtype, device=x.device))
    if not bool(torch.isfinite(x).all() and torch.isfinite(mean).all()):
        raise ValueError("wrapped_normal: x and mean must be finite")
    if not bool(((std > 0) & torch.isfinite(std)).all()):
        raise ValueError("wrapped_normal: std must be positive and finite")
    d = wrap_angle(x - mean)
    small = std <= SWITCH_STD
    n_small = int(small.sum())
    if n_small == d.numel():
        return _image_sum(d, std, truncation_terms(float(std.max()), tol, "image"))
    if n_small == 0:
        return _fourier_sum(d, std, truncation_terms(float(std.min()), tol, "fourier"))
    std = std.contiguous()
    log_p, eps = torch.empty_like(d), torch.empty_like(d)
    if n_small:
        s = std[small]
        log_p[small], eps[small] = _image_sum(d[small], s, truncation_terms(float(s.max()), tol, "image"))
    if n_small < d.numel():
        s = std[~small]
        log_p[~small], eps[~small] = _fourier_sum(d[~small], s, truncation_terms(float(s.min()), tol, "fourier"))
    return log_p, eps


def wrapped_normal_log_prob(x: Tensor, mean: Tensor | float, std: Tensor | float, tol: float = DEFAULT_TOL) -> Tensor:
    """log p_σ(x | μ) = log Σ_k N(x; μ + 2πk, σ²) of the wrapped normal (see ``wrapped_normal``)."""
    return wrapped_normal(x, mean, std, tol)[0]


def wrapped_normal_score(x: Tensor, mean: Tensor | float, std: Tensor | float, tol: float = DEFAULT_TOL) -> Tensor:
    """∂_x log p_σ(x | μ) = −Σ_k w_k (x − μ − 2πk)/σ², w_k ∝ N(x; μ + 2πk, σ²) (Jing et al. 2022, eq. 6); see
    ``wrapped_normal`` (which returns ε = −σ × this, to ``tol``)."""
    x = torch.as_tensor(x)
    std_t = torch.as_tensor(std, dtype=x.dtype if x.is_floating_point() else torch.float64, device=x.device)
    return -wrapped_normal(x, mean, std_t, tol)[1] / std_t


def wrapped_normal_interval_mass(lo: Tensor, hi: Tensor, mean: Tensor, std: Tensor, tol: float = 1e-15) -> Tensor:
    """P(x ∈ [lo, hi]) under WN(μ, σ²) for intervals inside [−π, π] and μ ∈ (−π, π] (broadcast):
    Σ_{|k|≤K} [Φ((hi − μ + 2πk)/σ) − Φ((lo − μ + 2πk)/σ)]. The images with |k| > K lie at distance ≥ 2πK from μ,
    so the omitted mass is ≤ erfc(2πK/(σ√2)); K is the smallest with that ≤ ``tol``."""
    lo, hi, mean, std = torch.broadcast_tensors(lo, hi, mean, std)
    if not bool(((std > 0) & torch.isfinite(std)).all()):
        raise ValueError("wrapped_normal_interval_mass: std must be positive and finite")
    s_max = float(std.max())
    terms = 1
    while math.erfc(TWO_PI * terms / (s_max * math.sqrt(2.0))) > tol:
        terms += 1
    k = torch.arange(-terms, terms + 1, dtype=lo.dtype, device=lo.device)
    shift = TWO_PI * k - mean.unsqueeze(-1)
    za, zb = (lo.unsqueeze(-1) + shift) / std.unsqueeze(-1), (hi.unsqueeze(-1) + shift) / std.unsqueeze(-1)
    # Φ(zb) − Φ(za) written on the side of 0 where it does not cancel
    upper = za > 0
    diff = torch.where(upper, torch.special.ndtr(-za) - torch.special.ndtr(-zb),
                       torch.special.ndtr(zb) - torch.special.ndtr(za))
    return diff.sum(-1)


# ==================================================================================================
# The exact oracle
# ==================================================================================================
class WrappedNormalMixture:
    """p_0 = Σ_i w_i Π_c WN(x_c; μ_ic, s_ic²) on T^d, held in float64, with its exact VE-noised marginals.

    Under x_t = wrap(x_0 + σ_t ε) (VE, α = 1) each component becomes Π_c WN(μ_ic, s_ic² + σ_t²), so

        p_t(x) = Σ_i w_i Π_c WN(x_c; μ_ic, v_ic),  v_ic = s_ic² + σ_t²,
        ∇_c log p_t(x) = Σ_i r_i(x) ∂_c log WN(x_c; μ_ic, v_ic),  r_i ∝ w_i Π_c WN(x_c; μ_ic, v_ic),

    and the exact ε-predictor is ε*(x, t) = −σ_t ∇log p_t(x) (Song et al. 2021 with α = 1).

    Args:
        weights: [K] positive (normalised here); means: [K, d] (wrapped to (−π, π]); stds: [K, d] positive.
    """

    def __init__(self, weights: Tensor, means: Tensor, stds: Tensor) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        mu = torch.as_tensor(means, dtype=torch.float64)
        s = torch.as_tensor(stds, dtype=torch.float64)
        if mu.dim() != 2 or mu.shape[0] != w.shape[0]:
            raise ValueError(f"means must be [K, d] with K = {w.shape[0]} components, got {tuple(mu.shape)}")
        if tuple(s.shape) != tuple(mu.shape):
            raise ValueError(f"stds must have the means' shape {tuple(mu.shape)}, got {tuple(s.shape)}")
        if not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
            raise ValueError("mixture weights must be positive and finite")
        if not bool(torch.isfinite(mu).all()) or not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise ValueError("means must be finite and stds positive and finite")
        self.weights, self.means, self.stds = w / w.sum(), wrap_angle(mu), s
        self.num_components, self.dim = mu.shape

    def _check(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [B, {self.dim}], got {tuple(x.shape)}")
        return x.to(torch.float64)

    @staticmethod
    def _sigma(schedule: NoiseSchedule | None, t: float | Tensor | None, batch: int) -> Tensor:
        """σ_t per sample [B] (0 without a schedule); ValueError unless the schedule is variance exploding."""
        if schedule is None:
            return torch.zeros(batch, dtype=torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(batch)
        if not bool((schedule.log_alpha(t) == 0).all()):
            raise ValueError("WrappedNormalMixture is exact only for variance-exploding noise (alpha = 1): use "
                             "VESchedule")
        return schedule.sigma(t)

    def _component_terms(self, x: Tensor, sigma: Tensor, tol: float) -> tuple[Tensor, Tensor, Tensor]:
        """Per-component log densities [B, K], per-coordinate ε_ic [B, K, d] and stds v_ic^{1/2} [B, K, d]."""
        std = torch.sqrt(self.stds[None] ** 2 + sigma.reshape(-1, 1, 1) ** 2)
        log_p, eps = wrapped_normal(x[:, None, :], self.means[None], std, tol)
        return log_p.sum(-1), eps, std

    def log_prob(self, x: Tensor, schedule: NoiseSchedule | None = None, t: float | Tensor | None = None,
                 tol: float = DEFAULT_TOL) -> Tensor:
        """log p_t(x) [B] (log p_0 without a schedule)."""
        x = self._check(x)
        comp, _, _ = self._component_terms(x, self._sigma(schedule, t, x.shape[0]), tol)
        return torch.logsumexp(torch.log(self.weights) + comp, dim=-1)

    def score(self, x: Tensor, schedule: NoiseSchedule | None = None, t: float | Tensor | None = None,
              tol: float = DEFAULT_TOL) -> Tensor:
        """∇log p_t(x) = Σ_i r_i(x) ∂ log WN(x; μ_i, v_i) [B, d]."""
        x = self._check(x)
        comp, eps, std = self._component_terms(x, self._sigma(schedule, t, x.shape[0]), tol)
        r = torch.softmax(torch.log(self.weights) + comp, dim=-1)
        return (r.unsqueeze(-1) * (-eps / std)).sum(1)

    def eps(self, x: Tensor, schedule: NoiseSchedule, t: float | Tensor, tol: float = DEFAULT_TOL) -> Tensor:
        """The exact ε-predictor ε*(x, t) = E[ε | x_t = x] = −σ_t ∇log p_t(x) [B, d] (VE only)."""
        sigma = self._sigma(schedule, t, x.shape[0])
        return -sigma.unsqueeze(-1) * self.score(x, schedule, t, tol)

    def eps_fn(self, schedule: NoiseSchedule) -> Callable[[Tensor, Tensor], Tensor]:
        """The exact ε-predictor as a sampler's ``eps_fn(x [B, d], t [B]) → ε̂`` in x's dtype."""

        def eps_fn(x: Tensor, t: Tensor) -> Tensor:
            return self.eps(x, schedule, t).to(x.dtype)

        return eps_fn

    def sample(self, n: int, generator: torch.Generator | None = None, sigma: float = 0.0) -> Tensor:
        """n exact draws of p_t with noise level σ_t = ``sigma`` (p_0 for 0): wrap(μ_i + √(s_i² + σ²) z), [n, d]."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), dtype=torch.float64, generator=generator)
        std = torch.sqrt(self.stds[comp] ** 2 + float(sigma) ** 2)
        return wrap_angle(self.means[comp] + std * z)

    def cell_probabilities(self, bins: int, sigma: float = 0.0) -> Tensor:
        """Exact probabilities of the bins^d cells of a uniform grid on (−π, π]^d under p_t at noise level σ:
        Σ_i w_i ⊗_c P_ic (``wrapped_normal_interval_mass`` per angle), shape [bins]*d, summing to 1."""
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        edges = torch.linspace(-math.pi, math.pi, bins + 1, dtype=torch.float64)
        std = torch.sqrt(self.stds ** 2 + float(sigma) ** 2)
        mass = wrapped_normal_interval_mass(edges[:-1], edges[1:], self.means[..., None], std[..., None])  # [K,d,bins]
        out = torch.zeros([bins] * self.dim, dtype=torch.float64)
        for i in range(self.num_components):
            cell = mass[i, 0]
            for c in range(1, self.dim):
                cell = cell[..., None] * mass[i, c]
            out = out + self.weights[i] * cell
        return out


def histogram(x: Tensor, bins: int) -> Tensor:
    """Empirical cell probabilities of angles x [n, d] on the uniform bins^d grid of (−π, π]^d (the grid of
    ``WrappedNormalMixture.cell_probabilities``)."""
    if x.dim() != 2:
        raise ValueError(f"histogram needs angles [n, d], got shape {tuple(x.shape)}")
    idx = torch.floor((wrap_angle(x.to(torch.float64)) + math.pi) / TWO_PI * bins).long().clamp(0, bins - 1)
    flat = torch.zeros(bins ** x.shape[1], dtype=torch.float64)
    lin = torch.zeros(x.shape[0], dtype=torch.long)
    for c in range(x.shape[1]):
        lin = lin * bins + idx[:, c]
    flat.index_add_(0, lin, torch.ones(x.shape[0], dtype=torch.float64))
    return (flat / x.shape[0]).reshape([bins] * x.shape[1])


def grid_distances(p_hat: Tensor, p: Tensor) -> tuple[float, float]:
    """(TV, KL) between an empirical cell distribution p̂ and the exact p on the same grid:
    TV = ½ Σ |p̂ − p| and KL(p̂ ‖ p) = Σ p̂ log(p̂/p) (finite: a wrapped-normal mixture puts mass on every cell)."""
    if p_hat.shape != p.shape:
        raise ValueError(f"grid_distances: shapes {tuple(p_hat.shape)} and {tuple(p.shape)} differ")
    tv = 0.5 * float((p_hat - p).abs().sum())
    nz = p_hat > 0
    kl = float((p_hat[nz] * torch.log(p_hat[nz] / p[nz])).sum())
    return tv, kl
