"""Noise schedules: one object per forward process, used by every loss, sampler, variance and likelihood.

The forward process is q(x_t | x_0) = N(α(t) x_0, σ(t)² I). Every schedule here exposes the same
interface, evaluated in float64 on tensors of times:

- ``alpha(t)`` (mean coefficient √ᾱ(t)), ``sigma(t)`` (noise level), ``log_snr(t)`` = λ(t) = log(α²/σ²)
  and its inverse ``time_at_log_snr(λ)``;
- the forward SDE dx = f(t) x dt + g(t) dW (Song et al., ICLR 2021): ``drift_coef(t)`` = f(t) and
  ``diffusion_sq(t)`` = g(t)² = dσ²/dt − 2 f σ²;
- skip coefficients between any s < t (Kingma et al., VDM 2021, eq. 8 notation):
  α_{t|s} = α_t/α_s and β_{t|s} = σ_t² − α_{t|s}² σ_s² = σ_t² · (−expm1(λ_t − λ_s)), computed without
  cancellation;
- for discrete schedules, β_n, α_n = 1 − β_n, ᾱ_n and the posterior variance β̃_n.

Time conventions: a discrete schedule of N steps lives on t ∈ [0, N] with data at t = 0 (ᾱ_0 = 1) and
its noise levels at the integers n = 1..N; between integers log ᾱ is interpolated linearly, so
continuous-time samplers and the probability-flow ODE can run on a discrete model. Continuous schedules
live on t ∈ [t_min, 1].
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Union

import torch
from torch import Tensor

TimeLike = Union[Tensor, float, int]
_F64 = torch.float64


def _as_time(t: TimeLike, check_finite: bool = True) -> Tensor:
    """Convert a time (number or tensor) to a float64 tensor, rejecting NaN/inf (``check_finite=False``: the
    caller checks, e.g. with :meth:`NoiseSchedule.check_time`, which also rejects them)."""
    t = torch.as_tensor(t, dtype=_F64)
    if check_finite and not torch.isfinite(t).all():
        raise ValueError("time t contains NaN or inf")
    return t


class NoiseSchedule(ABC):
    """Common interface of all forward processes q(x_t|x_0) = N(α(t) x_0, σ(t)² I).

    Subclasses implement ``log_alpha`` and ``log_snr`` (both float64, differentiable where needed) and
    the time range; everything else derives from them.
    """

    #: Time at the data end (samplers stop exactly here).
    t_min: float
    #: Time at the noise end (samplers start here).
    t_max: float
    #: Number of discrete steps N for a discrete schedule; ``None`` for continuous schedules.
    num_steps: int | None = None

    # --- primitives -------------------------------------------------------------------------------
    @abstractmethod
    def log_alpha(self, t: TimeLike) -> Tensor:
        """log α(t), the log of the mean coefficient of q(x_t|x_0)."""

    @abstractmethod
    def log_snr(self, t: TimeLike) -> Tensor:
        """λ(t) = log(α(t)²/σ(t)²); strictly decreasing in t (+inf at the data end if σ(t_min) = 0)."""

    @abstractmethod
    def time_at_log_snr(self, lam: TimeLike) -> Tensor:
        """Inverse of λ: the t with λ(t) = lam (λ⁻¹(λ(t)) = t)."""

    @abstractmethod
    def drift_coef(self, t: TimeLike) -> Tensor:
        """f(t) = d log α / dt, the linear drift of the forward SDE dx = f x dt + g dW."""

    @abstractmethod
    def diffusion_sq(self, t: TimeLike) -> Tensor:
        """g(t)² = dσ²/dt − 2 f(t) σ(t)², the squared diffusion of the forward SDE."""

    @property
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior p_T = N(0, prior_std² I) that samplers start from."""
        return 1.0

    # --- derived quantities -----------------------------------------------------------------------
    def alpha(self, t: TimeLike) -> Tensor:
        """α(t) = √ᾱ(t), the mean coefficient."""
        return torch.exp(self.log_alpha(t))

    def alpha_sq(self, t: TimeLike) -> Tensor:
        """α(t)² = ᾱ(t)."""
        return torch.exp(2.0 * self.log_alpha(t))

    def sigma_sq(self, t: TimeLike) -> Tensor:
        """σ(t)² = α(t)² e^{−λ(t)} (0 where λ = +inf)."""
        return torch.exp(2.0 * self.log_alpha(t) - self.log_snr(t))

    def sigma(self, t: TimeLike) -> Tensor:
        """σ(t), the noise standard deviation."""
        return torch.sqrt(self.sigma_sq(t))

    def skip_alpha(self, s: TimeLike, t: TimeLike) -> Tensor:
        """α_{t|s} = α_t / α_s for s ≤ t: the mean coefficient of q(x_t | x_s)."""
        s, t = _as_time(s), _as_time(t)
        self._check_order(s, t)
        return torch.exp(self.log_alpha(t) - self.log_alpha(s))

    def skip_beta(self, s: TimeLike, t: TimeLike) -> Tensor:
        """β_{t|s} = σ_t² − α_{t|s}² σ_s² = σ_t² (−expm1(λ_t − λ_s)): the variance of q(x_t | x_s).

        Written through expm1 of the log-SNR difference, so it stays exact when s and t are close.
        """
        s, t = _as_time(s), _as_time(t)
        self._check_order(s, t)
        return self.sigma_sq(t) * (-torch.expm1(self.log_snr(t) - self.log_snr(s)))

    def posterior_variance(self, s: TimeLike, t: TimeLike) -> Tensor:
        """β̃_{t|s} = σ_s² β_{t|s} / σ_t², the variance of q(x_s | x_t, x_0) (Ho et al. 2020, eq. 7)."""
        return self.sigma_sq(s) * self.skip_beta(s, t) / self.sigma_sq(t)

    def snr_derivative_weight(self, t: TimeLike) -> Tensor:
        """−dλ/dt = g(t)²/σ(t)²: the likelihood weighting of the ε-MSE (Song et al. 2021; Kingma et al. 2021)."""
        return self.diffusion_sq(t) / self.sigma_sq(t)

    # --- EDM variables (Karras et al. 2022) ---------------------------------------------------------
    def varsigma(self, t: TimeLike) -> Tensor:
        """ς(t) = σ_t/α_t = e^{−λ_t/2}: the noise level of the rescaled state y = x/α (Karras et al. 2022, eq. 4
        with s(t) = α_t, σ(t) = ς); 0 where σ_t = 0."""
        return torch.exp(-0.5 * self.log_snr(t))

    def time_at_varsigma(self, vs: TimeLike) -> Tensor:
        """Inverse of ς: t(ς) = λ⁻¹(−2 log ς), with ς = 0 mapped to the data end t_min and the result clamped
        into [t_min, t_max] (a ς beyond ς(t_max) returns t_max). ValueError for a negative or NaN ς."""
        vs = torch.as_tensor(vs, dtype=_F64)
        if not bool((vs >= 0).all()):
            raise ValueError("time_at_varsigma: varsigma must be >= 0 (got a negative or NaN value)")
        pos = vs > 0
        lam = -2.0 * torch.log(torch.where(pos, vs, torch.ones_like(vs)))
        t = self.time_at_log_snr(lam).clamp(self.t_min, self.t_max)
        return torch.where(pos, t, torch.full_like(t, self.t_min))

    #: Floor on ς = σ/α in :meth:`c_noise`, so the network input is finite at the data end (σ = 0).
    C_NOISE_SIGMA_FLOOR: float = 1e-5

    def c_noise(self, t: TimeLike, check: bool = True) -> Tensor:
        """The network's time input: c_noise(t) = ¼ ln max(ς(t), ς_floor) with ς = σ/α = e^{−λ/2}, i.e. −λ(t)/8.

        EDM's input preconditioning c_noise = ¼ ln σ (Karras et al. 2022, Table 1), written for any α through the
        equivalent VE noise level ς = σ/α (:meth:`varsigma`). It depends on the noise level only, so the same
        noise level gives the same network input under every schedule (linear, cosine, polynomial, VP, sub-VP,
        VE): a network never needs a ``time_scale`` guess and switching schedules cannot silently feed it times of
        another scale. ς is clamped to ``C_NOISE_SIGMA_FLOOR`` = 1e-5 (c ≥ ¼ ln 1e-5 ≈ −2.88), which keeps the data
        end (σ = 0, λ = +∞) finite. Ranges over [t_min, t_max]: linear 1000 steps −2.88 … 1.26 (−1.15 at t = 1),
        cosine 1000 −2.88 … 2.48, polynomial_2 1000 −2.88 … 1.44, VP(0.1, 20, t_min = 1e-3) −1.14 … 1.26,
        sub-VP −2.28 … 1.26, VE(0.01, 50) −1.15 … 0.98 (tests/test_network_time.py checks them).

        ``check=False`` skips the range/finiteness check of t (no host–device synchronisation, e.g. inside a
        network whose inputs were checked on the device already); the caller guarantees t ∈ [t_min, t_max]. Under
        ``torch.compile`` the check is skipped too (its host read would split the graph); the engine's losses and
        samplers draw or check their times themselves. Returned in float64, shape of t.
        """
        check = check and not torch.compiler.is_compiling()
        lam = self.log_snr(t) if check else self._log_snr_unchecked(torch.as_tensor(t, dtype=_F64))
        return torch.clamp(-0.125 * lam, min=0.25 * math.log(self.C_NOISE_SIGMA_FLOOR))

    def _log_snr_unchecked(self, t: Tensor) -> Tensor:
        """λ(t) for a float64 t already known to lie in [t_min, t_max]; schedules override it to skip the check."""
        return self.log_snr(t)

    def _check_order(self, s: Tensor, t: Tensor) -> None:
        if (s > t).any():
            raise ValueError("skip coefficients need s <= t (s is the less noisy time)")

    def check_time(self, t: Tensor) -> None:
        """Raise ValueError if any t is NaN/inf or lies outside [t_min, t_max] (one read of the device: NaN fails
        both comparisons, so a single reduction covers all three cases; the message is worked out on failure)."""
        lo, hi = self.t_min, self.t_max
        tol = 1e-9 * max(1.0, abs(hi))
        if not bool(((t >= lo - tol) & (t <= hi + tol)).all()):
            if not bool(torch.isfinite(t).all()):
                raise ValueError("time t contains NaN or inf")
            raise ValueError(f"time out of range: expected t in [{lo}, {hi}], got [{t.min().item()}, {t.max().item()}]")

    @abstractmethod
    def config(self) -> dict:
        """A JSON-serialisable description from which ``schedule_from_config`` rebuilds this schedule."""


# ==================================================================================================
# Discrete schedules
# ==================================================================================================
class DiscreteSchedule(NoiseSchedule):
    """A schedule given by β_1..β_N (float64), with data at t = 0 and noise level n at t = n.

    log ᾱ_n = Σ_{m≤n} log1p(−β_m); between integers log ᾱ(t) is linear in t, so on (n − 1, n]
    f(t) = ½ log(1 − β_n) and, because σ² = 1 − ᾱ, g(t)² = dσ²/dt − 2fσ² = −2f.
    """

    def __init__(self, betas: Tensor | list[float], name: str = "discrete") -> None:
        betas = torch.as_tensor(betas, dtype=_F64).flatten()
        if betas.numel() == 0:
            raise ValueError("betas must be non-empty")
        if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas >= 1).any():
            raise ValueError("betas must lie in the open interval (0, 1)")
        self.name = name
        self.betas = betas
        self.num_steps = int(betas.numel())
        self.t_min = 0.0
        self.t_max = float(self.num_steps)
        log_alphas = torch.log1p(-betas)
        # log ᾱ at the integers 0..N; ᾱ_0 = 1 (data).
        self._log_abar = torch.cat([torch.zeros(1, dtype=_F64), torch.cumsum(log_alphas, 0)])
        if not (self._log_abar[1:] < self._log_abar[:-1]).all():
            raise ValueError("schedule is not monotone: log alpha-bar must strictly decrease")
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _tables(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(log ᾱ at 0..N, β_1..β_N) on ``device`` (copied once per device, so CUDA times index CUDA tables)."""
        if device.type == "cpu":
            return self._log_abar, self.betas
        if device not in self._on_device:
            self._on_device[device] = (self._log_abar.to(device), self.betas.to(device))
        return self._on_device[device]

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor | list[float], name: str = "discrete") -> "DiscreteSchedule":
        """Build from ᾱ_1..ᾱ_N, which must strictly decrease inside (0, 1)."""
        abar = torch.as_tensor(alphas_cumprod, dtype=_F64).flatten()
        if not torch.isfinite(abar).all() or (abar <= 0).any() or (abar >= 1).any():
            raise ValueError("alphas_cumprod must lie in the open interval (0, 1)")
        log_abar = torch.cat([torch.zeros(1, dtype=_F64), torch.log(abar)])
        if not (log_abar[1:] < log_abar[:-1]).all():
            raise ValueError("schedule is not monotone: alphas_cumprod must strictly decrease")
        return cls(-torch.expm1(log_abar[1:] - log_abar[:-1]), name=name)

    # integer-indexed tables (index n = 1..N; index 0 is the data end)
    @property
    def alphas(self) -> Tensor:
        """α_n = 1 − β_n for n = 1..N."""
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_n for n = 0..N (ᾱ_0 = 1)."""
        return torch.exp(self._log_abar)

    @property
    def posterior_variances(self) -> Tensor:
        """β̃_n = β_n (1 − ᾱ_{n−1}) / (1 − ᾱ_n) for n = 1..N (β̃_1 = 0)."""
        n = torch.arange(1, self.num_steps + 1, dtype=_F64)
        return self.posterior_variance(n - 1, n)

    def _interp_log_abar(self, t: Tensor, check: bool = True) -> tuple[Tensor, Tensor]:
        """log ᾱ(t) (linear between integers) and the index n of the interval (n−1, n] containing t."""
        t = _as_time(t, check_finite=False)
        if check:
            self.check_time(t)  # also rejects NaN/inf
        tc = t.clamp(0.0, self.t_max)
        upper = torch.ceil(tc).clamp(min=1).long()
        frac = tc - (upper - 1).to(_F64)
        log_abar = self._tables(t.device)[0]
        lo = log_abar[upper - 1]
        hi = log_abar[upper]
        return lo + frac * (hi - lo), upper

    def log_alpha(self, t: TimeLike) -> Tensor:
        return 0.5 * self._interp_log_abar(t)[0]

    def log_snr(self, t: TimeLike) -> Tensor:
        return self._log_snr_from(self._interp_log_abar(t)[0])

    def _log_snr_unchecked(self, t: Tensor) -> Tensor:
        return self._log_snr_from(self._interp_log_abar(t, check=False)[0])

    @staticmethod
    def _log_snr_from(la: Tensor) -> Tensor:
        # λ = log ᾱ − log(1 − ᾱ) = la − log(−expm1(la)); +inf at t = 0.
        return la - torch.log(-torch.expm1(la))

    def time_at_log_snr(self, lam: TimeLike) -> Tensor:
        lam = torch.as_tensor(lam, dtype=_F64)
        la = torch.nn.functional.logsigmoid(lam)  # log ᾱ = log sigmoid(λ)
        grid = self._tables(lam.device)[0]  # decreasing in n
        # find n with grid[n-1] >= la > grid[n]
        neg = -grid  # increasing
        upper = torch.searchsorted(neg, (-la).contiguous(), right=False).clamp(1, self.num_steps)
        lo, hi = grid[upper - 1], grid[upper]
        frac = (la - lo) / (hi - lo)
        return (upper - 1).to(_F64) + frac

    def drift_coef(self, t: TimeLike) -> Tensor:
        t = _as_time(t, check_finite=False)
        _, n = self._interp_log_abar(t)
        return 0.5 * torch.log1p(-self._tables(t.device)[1][n - 1])

    def diffusion_sq(self, t: TimeLike) -> Tensor:
        # σ² = 1 − ᾱ ⇒ dσ²/dt = −ᾱ · 2f, so g² = dσ²/dt − 2fσ² = −2f.
        return -2.0 * self.drift_coef(t)

    def config(self) -> dict:
        return {"type": "discrete", "betas": self.betas.tolist(), "name": self.name}


class LinearSchedule(DiscreteSchedule):
    """Ho et al. (2020): β_n linear from β_1 = 1e-4 to β_N = 0.02 (scaled by 1000/N, as Nichol & Dhariwal)."""

    def __init__(self, num_steps: int = 1000, beta_start: float | None = None, beta_end: float | None = None):
        if num_steps < 1:
            raise ValueError("num_steps must be >= 1")
        scale = 1000.0 / num_steps
        self.beta_start = beta_start if beta_start is not None else scale * 1e-4
        self.beta_end = beta_end if beta_end is not None else scale * 0.02
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end} "
                             f"(the default range scales by 1000/num_steps; pass beta_end for num_steps={num_steps})")
        super().__init__(torch.linspace(self.beta_start, self.beta_end, num_steps, dtype=_F64), name="linear")

    def config(self) -> dict:
        return {"type": "linear", "num_steps": self.num_steps, "beta_start": self.beta_start, "beta_end": self.beta_end}


class CosineSchedule(DiscreteSchedule):
    """Nichol & Dhariwal (2021), eq. 17: ᾱ_n = f(n)/f(0), f(n) = cos²((n/N + s)/(1 + s) · π/2), β_n ≤ 0.999."""

    def __init__(self, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        if num_steps < 1:
            raise ValueError("num_steps must be >= 1")
        self.s, self.max_beta = s, max_beta
        n = torch.arange(num_steps + 1, dtype=_F64)
        log_f = 2.0 * torch.log(torch.cos((n / num_steps + s) / (1 + s) * math.pi / 2).clamp_min(0.0))
        # β_n = 1 − ᾱ_n/ᾱ_{n−1} = −expm1(log f(n) − log f(n−1)), clipped at max_beta.
        betas = (-torch.expm1(log_f[1:] - log_f[:-1])).clamp(max=max_beta)
        super().__init__(betas, name="cosine")

    def config(self) -> dict:
        return {"type": "cosine", "num_steps": self.num_steps, "s": self.s, "max_beta": self.max_beta}


class PolynomialSchedule(DiscreteSchedule):
    """EDM (Hoogeboom et al. 2022) ``polynomial_2``: ᾱ(x) = (1 − x^p)² with x = n/N, step ratios
    ᾱ_n/ᾱ_{n−1} clipped at ≥ 0.001, then the precision clip ᾱ ← (1 − 2s) ᾱ + s.

    EDM's array has N + 1 entries (its level 0 has ᾱ = 1 − s); we keep its levels n = 1..N as our noise
    levels and put exact data (ᾱ = 1) at t = 0, so a sampler's last step returns the x̂₀ prediction.
    """

    def __init__(self, num_steps: int = 1000, power: float = 2.0, precision: float = 1e-5, clip_value: float = 0.001):
        if num_steps < 1:
            raise ValueError("num_steps must be >= 1")
        if not 0 < precision < 0.5:
            raise ValueError("precision must lie in (0, 0.5)")
        self.power, self.precision, self.clip_value = power, precision, clip_value
        steps = num_steps + 1
        x = torch.linspace(0, steps, steps, dtype=_F64) / steps
        abar = (1 - x**power) ** 2
        abar = torch.cat([torch.ones(1, dtype=_F64), abar])
        ratio = (abar[1:] / abar[:-1]).clamp(clip_value, 1.0)
        abar = torch.cumprod(ratio, 0)
        abar = (1 - 2 * precision) * abar + precision  # EDM levels 0..N
        abar_levels = torch.cat([torch.ones(1, dtype=_F64), abar[1:]])
        betas = -torch.expm1(torch.log(abar_levels[1:]) - torch.log(abar_levels[:-1]))
        super().__init__(betas, name="polynomial")

    def config(self) -> dict:
        return {"type": "polynomial", "num_steps": self.num_steps, "power": self.power,
                "precision": self.precision, "clip_value": self.clip_value}


# ==================================================================================================
# Continuous schedules (Song et al., ICLR 2021)
# ==================================================================================================
class VPSchedule(NoiseSchedule):
    """Variance-preserving SDE: β(t) = β_min + t(β_max − β_min), log α(t) = −¼t²(β_max − β_min) − ½tβ_min,
    σ² = 1 − α², f = −½β(t), g² = β(t), t ∈ [t_min, 1]."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        if not 0 < beta_min < beta_max:
            raise ValueError("need 0 < beta_min < beta_max")
        if not 0 <= t_min < 1:
            raise ValueError("t_min must lie in [0, 1)")
        self.beta_min, self.beta_max, self.t_min, self.t_max = beta_min, beta_max, t_min, 1.0

    def _beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _integral(self, t: Tensor) -> Tensor:  # ∫_0^t β = −2 log α
        return 0.5 * t**2 * (self.beta_max - self.beta_min) + t * self.beta_min

    def log_alpha(self, t: TimeLike) -> Tensor:
        return -0.5 * self._integral(_as_time(t))

    def _var(self, t: Tensor) -> Tensor:  # σ² = −expm1(−∫β)
        return -torch.expm1(-self._integral(t))

    def log_snr(self, t: TimeLike) -> Tensor:
        return self._log_snr_unchecked(_as_time(t))

    def _log_snr_unchecked(self, t: Tensor) -> Tensor:
        return -self._integral(t) - torch.log(self._var(t))

    def time_at_log_snr(self, lam: TimeLike) -> Tensor:
        lam = torch.as_tensor(lam, dtype=_F64)
        big_l = -torch.nn.functional.logsigmoid(lam)  # ∫β = −log ᾱ
        return self._time_at_integral(big_l)

    def _time_at_integral(self, big_l: Tensor) -> Tensor:
        d = self.beta_max - self.beta_min
        return 2 * big_l / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * big_l))

    def drift_coef(self, t: TimeLike) -> Tensor:
        return -0.5 * self._beta(_as_time(t))

    def diffusion_sq(self, t: TimeLike) -> Tensor:
        return self._beta(_as_time(t))

    def config(self) -> dict:
        return {"type": "vp", "beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}


class SubVPSchedule(VPSchedule):
    """sub-VP SDE: the VP mean with σ(t)² = (1 − e^{−∫β})², g² = β(t)(1 − e^{−2∫β}) (Song et al. 2021, eq. 11)."""

    def _var(self, t: Tensor) -> Tensor:
        return torch.expm1(-self._integral(t)) ** 2

    def time_at_log_snr(self, lam: TimeLike) -> Tensor:
        lam = torch.as_tensor(lam, dtype=_F64)
        # e^λ = ᾱ/(1 − ᾱ)²; the root in (0, 1): ᾱ = 2 / ((2 + e^{−λ}) + sqrt(4e^{−λ} + e^{−2λ})).
        em = torch.exp(-lam)
        abar = 2.0 / ((2.0 + em) + torch.sqrt(4.0 * em + em * em))
        return self._time_at_integral(-torch.log(abar))

    def diffusion_sq(self, t: TimeLike) -> Tensor:
        t = _as_time(t)
        return self._beta(t) * (-torch.expm1(-2.0 * self._integral(t)))

    def config(self) -> dict:
        return {"type": "subvp", "beta_min": self.beta_min, "beta_max": self.beta_max, "t_min": self.t_min}


class VESchedule(NoiseSchedule):
    """Variance-exploding SDE: α = 1, σ(t) = σ_min (σ_max/σ_min)^t, f = 0, g² = dσ²/dt = 2σ² log(σ_max/σ_min).

    The data end t = 0 carries noise σ_min (Song et al. 2021); samplers target q_{t_min}.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 0.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError("need 0 < sigma_min < sigma_max")
        self.sigma_min, self.sigma_max, self.t_min, self.t_max = sigma_min, sigma_max, t_min, 1.0
        self._log_ratio = math.log(sigma_max / sigma_min)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def log_alpha(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(_as_time(t))

    def log_snr(self, t: TimeLike) -> Tensor:
        return self._log_snr_unchecked(_as_time(t))

    def _log_snr_unchecked(self, t: Tensor) -> Tensor:
        return -2.0 * (math.log(self.sigma_min) + t * self._log_ratio)

    def time_at_log_snr(self, lam: TimeLike) -> Tensor:
        lam = torch.as_tensor(lam, dtype=_F64)
        return (-0.5 * lam - math.log(self.sigma_min)) / self._log_ratio

    def drift_coef(self, t: TimeLike) -> Tensor:
        return torch.zeros_like(_as_time(t))

    def diffusion_sq(self, t: TimeLike) -> Tensor:
        return 2.0 * self._log_ratio * self.sigma_sq(t)

    def config(self) -> dict:
        return {"type": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "t_min": self.t_min}


_SCHEDULES = {
    "discrete": DiscreteSchedule,
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "polynomial": PolynomialSchedule,
    "vp": VPSchedule,
    "subvp": SubVPSchedule,
    "ve": VESchedule,
}


def schedule_from_config(config: dict) -> NoiseSchedule:
    """Rebuild a schedule from ``NoiseSchedule.config()``; ValueError naming an unknown type or key."""
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in _SCHEDULES:
        raise ValueError(f"unknown schedule type {kind!r}; expected one of {sorted(_SCHEDULES)}")
    try:
        return _SCHEDULES[kind](**config)
    except TypeError as exc:
        raise ValueError(f"bad schedule config for {kind!r}: {exc}") from None

