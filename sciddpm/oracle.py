"""Gaussian mixtures with closed-form noisy marginals: the exact ground truth for tests and benchmarks.

For q_0 = Σ_k w_k N(μ_k, Σ_k) and any schedule, the forward marginal is again a mixture:

    q_t(x) = Σ_k w_k N(x; α_t μ_k, α_t² Σ_k + σ_t² I),

so its density, score ∇log q_t, the exact ε-predictor ε*(x, t) = −σ_t ∇log q_t(x) and the posterior mean
E[x_0 | x_t] (Tweedie) are all closed form. We diagonalise Σ_k = U_k diag(λ_k) U_kᵀ once; then
α²Σ_k + σ²I = U_k diag(α²λ_k + σ²) U_kᵀ for every t, which makes per-sample times cheap.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .objectives import EpsFn, forward_noise
from .schedules import NoiseSchedule
from .spaces import DenseSpace


class GaussianMixture:
    """A Gaussian mixture in R^D with full or diagonal covariances, held in float64.

    Args:
        weights: mixture weights [K] (normalised here; must be positive).
        means: component means [K, D].
        covariances: full covariances [K, D, D] (symmetric positive definite) or, with ``diagonal=True``,
            per-coordinate variances [K, D].
    """

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor, diagonal: bool = False) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        mu = torch.as_tensor(means, dtype=torch.float64)
        cov = torch.as_tensor(covariances, dtype=torch.float64)
        if mu.dim() != 2 or mu.shape[0] != w.shape[0]:
            raise ValueError(f"means must be [K, D] with K = {w.shape[0]} components, got {tuple(mu.shape)}")
        if (w <= 0).any() or not torch.isfinite(w).all():
            raise ValueError("mixture weights must be positive and finite")
        k, d = mu.shape
        if diagonal:
            if tuple(cov.shape) != (k, d):
                raise ValueError(f"diagonal covariances must be [K, D] = {(k, d)}, got {tuple(cov.shape)}")
            if (cov <= 0).any():
                raise ValueError("diagonal variances must be positive")
            evals, evecs = cov.clone(), torch.eye(d, dtype=torch.float64).expand(k, d, d).clone()
        else:
            if tuple(cov.shape) != (k, d, d):
                raise ValueError(f"covariances must be [K, D, D] = {(k, d, d)}, got {tuple(cov.shape)}")
            if not torch.allclose(cov, cov.transpose(1, 2), atol=1e-12):
                raise ValueError("covariances must be symmetric")
            evals, evecs = torch.linalg.eigh(cov)
            if (evals <= 0).any():
                raise ValueError("covariances must be positive definite")
        self.weights, self.means, self.evals, self.evecs = w / w.sum(), mu, evals, evecs
        self.num_components, self.dim = k, d

    # ---------------------------------------------------------------------------------------------
    @property
    def covariances(self) -> Tensor:
        """Full covariances Σ_k = U diag(λ) Uᵀ, [K, D, D]."""
        return self.evecs @ torch.diag_embed(self.evals) @ self.evecs.transpose(1, 2)

    def mean(self) -> Tensor:
        """E[x_0] = Σ_k w_k μ_k."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Cov[x_0] = Σ_k w_k (Σ_k + μ_k μ_kᵀ) − m mᵀ."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covariances + self.means[:, :, None] * self.means[:, None, :])
        return second - torch.outer(m, m)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Exact samples of q_0 and their component labels: ([n, D], [n])."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), dtype=torch.float64, generator=generator)
        x = self.means[comp] + torch.einsum("nij,nj->ni", self.evecs[comp], z * self.evals[comp].sqrt())
        return x, comp

    def sample_marginal(self, schedule: NoiseSchedule, t: float | Tensor, n: int,
                        generator: torch.Generator | None = None) -> Tensor:
        """Exact samples of q_t = α_t q_0 ∗ N(0, σ_t² I)."""
        x0, _ = self.sample(n, generator)
        return forward_noise(schedule, DenseSpace((n, self.dim)), x0, torch.as_tensor(t, dtype=torch.float64),
                             generator=generator)[0]

    # ---------------------------------------------------------------------------------------------
    def _terms(self, x: Tensor, alpha: Tensor, sigma_sq: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample, per-component log N and eigen-coordinates: (log N [B,K], y [B,K,D], v [B,K,D])."""
        x = x.to(torch.float64)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [B, {self.dim}], got {tuple(x.shape)}")
        a = alpha.reshape(-1, 1, 1)
        diff = x[:, None, :] - a * self.means[None]  # [B,K,D]
        y = torch.einsum("bkd,kdj->bkj", diff, self.evecs)
        v = a * a * self.evals[None] + sigma_sq.reshape(-1, 1, 1)
        log_n = -0.5 * ((y * y) / v).sum(-1) - 0.5 * torch.log(2 * math.pi * v).sum(-1)
        return log_n, y, v

    def _coeffs(self, schedule: NoiseSchedule | None, t: float | Tensor | None, batch: int) -> tuple[Tensor, Tensor]:
        if schedule is None:
            return torch.ones(batch, dtype=torch.float64), torch.zeros(batch, dtype=torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(batch)
        return schedule.alpha(t), schedule.sigma_sq(t)

    def log_prob(self, x: Tensor, schedule: NoiseSchedule | None = None, t: float | Tensor | None = None) -> Tensor:
        """log q_t(x) [B] (log q_0 when no schedule is given)."""
        alpha, s2 = self._coeffs(schedule, t, x.shape[0])
        log_n, _, _ = self._terms(x, alpha, s2)
        return torch.logsumexp(torch.log(self.weights) + log_n, dim=-1)

    def responsibilities(self, x: Tensor, schedule: NoiseSchedule | None = None, t: float | Tensor | None = None) -> Tensor:
        """q_t(k | x) [B, K]: the exact noisy-data classifier over components."""
        alpha, s2 = self._coeffs(schedule, t, x.shape[0])
        log_n, _, _ = self._terms(x, alpha, s2)
        return torch.softmax(torch.log(self.weights) + log_n, dim=-1)

    def score(self, x: Tensor, schedule: NoiseSchedule | None = None, t: float | Tensor | None = None,
              components: Tensor | None = None) -> Tensor:
        """∇_x log q_t(x) = Σ_k q_t(k|x) · (−(α²Σ_k + σ²I)⁻¹ (x − α μ_k)) [B, D].

        With ``components`` (a bool mask [K] or [B, K]), the score of the mixture restricted to those
        components (the exact class-conditional score for classes made of components).
        """
        alpha, s2 = self._coeffs(schedule, t, x.shape[0])
        log_n, y, v = self._terms(x, alpha, s2)
        logits = torch.log(self.weights) + log_n
        if components is not None:
            logits = logits.masked_fill(~components.to(torch.bool).expand_as(logits), float("-inf"))
        r = torch.softmax(logits, dim=-1)
        per_comp = -torch.einsum("bkj,kdj->bkd", y / v, self.evecs)
        return (r.unsqueeze(-1) * per_comp).sum(1)

    def eps(self, x: Tensor, schedule: NoiseSchedule, t: float | Tensor, components: Tensor | None = None) -> Tensor:
        """The exact ε-predictor ε*(x, t) = E[ε | x_t = x] = −σ_t ∇log q_t(x)."""
        _, s2 = self._coeffs(schedule, t, x.shape[0])
        return -torch.sqrt(s2).unsqueeze(-1) * self.score(x, schedule, t, components)

    def x0_mean(self, x: Tensor, schedule: NoiseSchedule, t: float | Tensor) -> Tensor:
        """Tweedie: E[x_0 | x_t = x] = (x + σ_t² ∇log q_t(x)) / α_t."""
        alpha, s2 = self._coeffs(schedule, t, x.shape[0])
        return (x.to(torch.float64) + s2.unsqueeze(-1) * self.score(x, schedule, t)) / alpha.unsqueeze(-1)

    def _posterior_components(self, x: Tensor, schedule: NoiseSchedule, t: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-component posteriors q(x₀ | x_t, k) = N(m_k, S_k) with S_k = (Σ_k⁻¹ + α²/σ² I)⁻¹ and
        m_k = S_k(Σ_k⁻¹ μ_k + α/σ² x_t), in the eigenbasis: (responsibilities [B,K], m [B,K,D], S eigenvalues [B,K,D])."""
        alpha, s2 = self._coeffs(schedule, t, x.shape[0])
        x = x.to(torch.float64)
        a = alpha.reshape(-1, 1, 1)
        prec_x = (a * a / s2.reshape(-1, 1, 1))  # α²/σ²
        s_eig = 1.0 / (1.0 / self.evals[None] + prec_x)  # [B,K,D]
        mu_e = torch.einsum("kd,kdj->kj", self.means, self.evecs)[None]  # μ in each eigenbasis
        x_e = torch.einsum("bd,kdj->bkj", x, self.evecs)
        m_e = s_eig * (mu_e / self.evals[None] + (a / s2.reshape(-1, 1, 1)) * x_e)
        m = torch.einsum("bkj,kdj->bkd", m_e, self.evecs)
        return self.responsibilities(x, schedule, t), m, s_eig

    def x0_posterior_cov(self, x: Tensor, schedule: NoiseSchedule, t: float | Tensor) -> Tensor:
        """Cov[x₀ | x_t = x] = Σ_k r_k (S_k + m_k m_kᵀ) − m̄ m̄ᵀ, [B, D, D] (closed form for the mixture)."""
        r, m, s_eig = self._posterior_components(x, schedule, t)
        s_full = torch.einsum("kdj,bkj,kej->bkde", self.evecs, s_eig, self.evecs)
        second = torch.einsum("bk,bkde->bde", r, s_full + m[..., :, None] * m[..., None, :])
        mean = torch.einsum("bk,bkd->bd", r, m)
        return second - mean[:, :, None] * mean[:, None, :]

    def sample_posterior(self, x: Tensor, schedule: NoiseSchedule, t: float | Tensor, n: int,
                         generator: torch.Generator | None = None) -> Tensor:
        """n exact draws of x₀ ~ q(x₀ | x_t = x) for every row of x: [n, B, D]."""
        r, m, s_eig = self._posterior_components(x, schedule, t)
        b = x.shape[0]
        comp = torch.multinomial(r, n, replacement=True, generator=generator).T  # [n, B]
        z = torch.randn((n, b, self.dim), dtype=torch.float64, generator=generator)
        rows = torch.arange(b).expand(n, b)
        scaled = z * s_eig[rows, comp].sqrt()
        return m[rows, comp] + torch.einsum("nbj,nbdj->nbd", scaled, self.evecs[comp])

    def gamma_gap(self, schedule: NoiseSchedule, t: float | Tensor, n: int = 0,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """1 − Γ_t = 1 − E‖ε*(x_t, t)‖²/D = (α_t²/σ_t²) E_{x_t} tr Cov[x₀ | x_t] / D for the exact ε*, with its
        standard error: (value, stderr), float64 scalars.

        (1 − Γ = E‖ε − ε*‖²/D, and ε − ε* = (α/σ)(x₀ − E[x₀|x_t]).) For one component it is closed form,
        1 − Γ_t = (1/D) Σ_j α²λ_j/(α²λ_j + σ²) with λ_j the eigenvalues of Σ (stderr 0, ``n`` unused). For several
        components the expectation over x_t has no closed form: it is averaged over ``n`` exact draws of q_t of
        the exact conditional trace (a Rao–Blackwellised Monte Carlo; its stderr is returned). σ_t = 0 gives 0.
        """
        t = torch.as_tensor(t, dtype=torch.float64).reshape(())
        a2, s2 = schedule.alpha_sq(t), schedule.sigma_sq(t)
        if float(s2) == 0.0:
            return torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        if self.num_components == 1:
            lam = self.evals[0]
            return (a2 * lam / (a2 * lam + s2)).mean(), torch.zeros((), dtype=torch.float64)
        if n < 2:
            raise ValueError("gamma_gap of a mixture needs n >= 2 Monte-Carlo draws")
        x = self.sample_marginal(schedule, t, n, generator)
        r, m, s_eig = self._posterior_components(x, schedule, t)
        mean = torch.einsum("bk,bkd->bd", r, m)
        within = torch.einsum("bk,bkd->b", r, s_eig)  # Σ_k r_k tr S_k
        between = torch.einsum("bk,bk->b", r, ((m - mean[:, None]) ** 2).sum(-1))
        per = (a2 / s2) * (within + between) / self.dim
        return per.mean(), per.std() / math.sqrt(n)

    def eps_fn(self, schedule: NoiseSchedule, components: Tensor | None = None) -> EpsFn:
        """The exact ε-predictor as a denoiser callable (x [B, D], t [B]) → ε̂ in x's dtype."""

        def eps_fn(x: Tensor, t: Tensor) -> Tensor:
            return self.eps(x, schedule, t, components).to(x.dtype)

        return eps_fn


def sliced_wasserstein2(x: Tensor, y: Tensor, num_projections: int = 256, generator: torch.Generator | None = None) -> Tensor:
    """Sliced 2-Wasserstein distance between two equal-size samples in R^D (Bonneel et al. 2015):

    SW₂(x, y)² = E_θ W₂²(θᵀx, θᵀy), θ uniform on the sphere; the 1-D W₂ between empirical measures
    with equal counts is the RMS difference of sorted projections. Returns SW₂ (not squared).
    """
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"sliced_wasserstein2 needs two [n, D] samples of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    theta = torch.randn((x.shape[1], num_projections), dtype=torch.float64, generator=generator)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px = torch.sort(x.to(torch.float64) @ theta, dim=0).values
    py = torch.sort(y.to(torch.float64) @ theta, dim=0).values
    return torch.sqrt(((px - py) ** 2).mean())
