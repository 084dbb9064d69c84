"""Samplers against the exact Gaussian-mixture oracle: time grids, input validation, convergence to the target
q_{t_min} as the number of steps grows, DPM-Solver++(2M) versus DDIM at equal NFE, NFE accounting and
determinism. Constrained spaces (zero centre of mass, padded versus flat layouts, the torus) are in
:mod:`tests.test_samplers_spaces`.

Every ε-predictor here is exact (``GaussianMixture.eps_fn``, or the isotropic oracle lifted node-wise), so any
error that remains is the sampler's own discretisation error plus Monte-Carlo noise, and every tolerance below
is stated in units of that Monte-Carlo noise.
"""
from __future__ import annotations

import inspect
import math
from functools import lru_cache
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from torch import Tensor

from sciddpm import samplers as S
from sciddpm.objectives import EpsFn
from sciddpm.oracle import GaussianMixture, sliced_wasserstein2
from sciddpm.schedules import CosineSchedule, LinearSchedule, NoiseSchedule, VESchedule, VPSchedule
from sciddpm.spaces import DenseSpace, Space

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread() -> Iterator[None]:
    """Run this module on one intra-op thread, restoring the setting afterwards. Its work is thousands of
    small tensor ops (8k × 2 states); on a shared 2-core machine OpenMP synchronisation between 2 threads
    made each op 5–10× slower than 1 thread, which would blow the module's time budget."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

# ==================================================================================================
# Fixed problems
# ==================================================================================================


def _rotated_cov(angle: float, eigenvalues: tuple[float, float]) -> Tensor:
    """R(angle) diag(eigenvalues) R(angle)ᵀ: a correlated 2-D covariance."""
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.tensor([[c, -s], [s, c]], dtype=F64)
    return rot @ torch.diag(torch.tensor(eigenvalues, dtype=F64)) @ rot.T


#: The 2-D target: 3 components, unequal weights, correlated full covariances with condition numbers 3–6,
#: overlapping enough that the component weights are a non-trivial statistic of the sampler.
MIX2 = GaussianMixture(
    torch.tensor([0.5, 0.3, 0.2]),
    torch.tensor([[-1.5, 0.5], [1.5, 1.0], [0.5, -1.5]]),
    torch.stack([_rotated_cov(0.5, (0.5, 0.1)), _rotated_cov(-0.8, (0.3, 0.05)), _rotated_cov(1.2, (0.2, 0.6))]),
)


def _mixture_32d() -> GaussianMixture:
    """The 32-D target: 3 components, weights (0.5, 0.3, 0.2), means 1.5·N(0, I), diagonal variances
    U(0.05, 0.5), all drawn from ``torch.Generator().manual_seed(32)``."""
    g = torch.Generator().manual_seed(32)
    means = 1.5 * torch.randn((3, 32), generator=g, dtype=F64)
    variances = 0.05 + 0.45 * torch.rand((3, 32), generator=g, dtype=F64)
    return GaussianMixture(torch.tensor([0.5, 0.3, 0.2]), means, variances, diagonal=True)


#: (label, sampler name, keyword arguments): every sampler of the library, with both DDPM variances and both
#: DDIM extremes.
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("ddpm_beta", "ddpm", {"variance": "beta"}),
    ("ddpm_beta_tilde", "ddpm", {"variance": "beta_tilde"}),
    ("ddim_eta0", "ddim", {"eta": 0.0}),
    ("ddim_eta1", "ddim", {"eta": 1.0}),
    ("euler_maruyama", "euler_maruyama", {}),
    ("pc", "pc", {}),
    ("heun", "heun", {}),
    ("dpm_solver_pp_2m", "dpm_solver_pp_2m", {}),
    ("dpm_solver_pp_3m", "dpm_solver_pp_3m", {}),
    ("unipc", "unipc", {}),
    ("rk45", "rk45", {}),
]
LABELS = [c[0] for c in CASES]
_BY_LABEL = {c[0]: c for c in CASES}
#: Labels whose output depends on the generator beyond x_T (DDIM with η = 0 and the ODE solvers do not).
STOCHASTIC = {"ddpm_beta", "ddpm_beta_tilde", "ddim_eta1", "euler_maruyama", "pc"}


def _grid(label: str, schedule: NoiseSchedule, steps: int) -> Tensor:
    """The grid each sampler is run on: log-SNR for Heun (its first step is unstable on a uniform grid when
    σ/α is huge at t_max), uniform in t for all others (rk45 only uses the end points)."""
    return S.time_grid(schedule, steps, "logsnr" if label == "heun" else "uniform")


def run_sampler(label: str, eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x_T: Tensor, grid: Tensor,
                generator: torch.Generator | None = None, **extra: Any) -> S.SamplerOutput:
    """Run the sampler ``label`` through ``get_sampler``, passing the generator where the sampler takes one."""
    _, name, kwargs = _BY_LABEL[label]
    fn = S.get_sampler(name)
    kwargs = {**kwargs, **extra}
    if "generator" in inspect.signature(fn).parameters:
        kwargs["generator"] = generator
    return fn(eps_fn, schedule, space, x_T, grid, **kwargs)


# ==================================================================================================
# Time grids and input validation
# ==================================================================================================
@pytest.mark.parametrize("kind", ["uniform", "quadratic", "logsnr", "karras"])
def test_time_grid_shape_for_every_schedule_and_kind(schedule: NoiseSchedule, kind: str) -> None:
    """For every schedule and grid kind and a range of K: K + 1 unique, strictly decreasing points from exactly
    t_max to exactly t_min, inside [t_min, t_max]; on a discrete schedule the points are integers and K = N
    gives every level N, N − 1, …, 0."""
    n = schedule.num_steps
    for steps in [1, 2, 3, 10, 37, 250] + ([n - 1, n] if n is not None else [1000]):
        grid = S.time_grid(schedule, steps, kind)
        assert grid.dtype == F64 and grid.shape == (steps + 1,)
        assert float(grid[0]) == schedule.t_max and float(grid[-1]) == schedule.t_min  # exact, not approximate
        assert (grid[1:] < grid[:-1]).all()
        assert torch.unique(grid).numel() == grid.numel()
        assert grid.min() >= schedule.t_min and grid.max() <= schedule.t_max
        if n is not None:
            assert torch.equal(grid, grid.round())
    if n is not None:
        assert torch.equal(S.time_grid(schedule, n, kind), torch.arange(n, -1, -1, dtype=F64))
        with pytest.raises(ValueError, match="cannot be sampled in"):
            S.time_grid(schedule, n + 1, kind)


@pytest.mark.parametrize("kind", ["uniform", "quadratic", "logsnr", "karras"])
def test_time_grid_small_discrete_schedule_every_k(kind: str) -> None:
    """On 10-step discrete schedules (linear with β up to 0.3, cosine), every K = 1..10 gives a valid integer
    grid (collisions from rounding are resolved without losing either end), and K = 11 raises."""
    for schedule in (LinearSchedule(10, beta_end=0.3), CosineSchedule(10)):
        _check_small_discrete(schedule, kind)


def _check_small_discrete(schedule: NoiseSchedule, kind: str) -> None:
    for steps in range(1, 11):
        grid = S.time_grid(schedule, steps, kind)
        assert grid.shape == (steps + 1,) and grid[0] == 10 and grid[-1] == 0
        assert (grid[1:] < grid[:-1]).all() and torch.equal(grid, grid.round())
    with pytest.raises(ValueError, match="cannot be sampled in 11 steps"):
        S.time_grid(schedule, 11, kind)


def test_time_grid_rejects_bad_arguments() -> None:
    """K < 1 and unknown kinds raise ValueError naming the problem; a continuous VP schedule with t_min = 0
    (λ = +∞ at the data end) still gets a finite log-SNR grid ending exactly at 0."""
    with pytest.raises(ValueError, match="steps must be >= 1"):
        S.time_grid(VPSchedule(), 0)
    with pytest.raises(ValueError, match="unknown grid kind"):
        S.time_grid(VPSchedule(), 10, "cubic")  # type: ignore[arg-type]
    grid = S.time_grid(VPSchedule(t_min=0.0), 20, "logsnr")
    assert float(grid[-1]) == 0.0 and float(grid[0]) == 1.0 and (grid[1:] < grid[:-1]).all()


_BAD_GRIDS: list[tuple[str, list[float], str]] = [
    ("non-monotone", [1000.0, 300.0, 600.0, 0.0], "strictly decreasing"),
    ("repeated point", [1000.0, 500.0, 500.0, 0.0], "strictly decreasing"),
    ("increasing", [0.0, 500.0, 1000.0], "strictly decreasing"),
    ("not ending at t_min", [1000.0, 500.0, 10.0], "end exactly at the data end"),
    ("out of range above", [1200.0, 500.0, 0.0], "out of range"),
    ("out of range below", [1000.0, 500.0, -3.0], "out of range"),
    ("NaN", [1000.0, float("nan"), 0.0], "NaN"),
    ("inf", [float("inf"), 500.0, 0.0], "NaN or inf"),
    ("single point", [0.0], "at least 2 points"),
]


@pytest.mark.parametrize("label", LABELS)
def test_samplers_reject_bad_grids_and_states(label: str) -> None:
    """Every sampler raises ValueError naming the problem for a non-monotone, repeated, out-of-range, NaN or
    too-short grid and for one not ending at t_min; for a 2-D grid tensor; for a state whose shape does not
    match the space; for a NaN state; and for an ε-function returning the wrong shape. The ε-function is never
    called on a bad grid (validation happens before any evaluation)."""
    schedule = LinearSchedule(1000)
    space = DenseSpace((8, 2))
    calls = []

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        calls.append(1)
        return MIX2.eps(x, schedule, t).to(x.dtype)

    x_T = S.prior_sample(schedule, space, torch.Generator().manual_seed(0), F64)
    for _what, values, message in _BAD_GRIDS:
        with pytest.raises(ValueError, match=message):
            run_sampler(label, eps_fn, schedule, space, x_T, torch.tensor(values, dtype=F64))
    with pytest.raises(ValueError, match="1-D"):
        run_sampler(label, eps_fn, schedule, space, x_T, torch.tensor([[1000.0, 0.0]], dtype=F64))
    assert not calls
    grid = S.time_grid(schedule, 4)
    with pytest.raises(ValueError, match=r"shape \(8, 3\) but the space expects \(8, 2\)"):
        run_sampler(label, eps_fn, schedule, space, torch.zeros(8, 3, dtype=F64), grid)
    with pytest.raises(ValueError, match=r"shape \(7, 2\)"):
        run_sampler(label, eps_fn, schedule, space, torch.zeros(7, 2, dtype=F64), grid)
    bad_x = x_T.clone()
    bad_x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        run_sampler(label, eps_fn, schedule, space, bad_x, grid)
    with pytest.raises(ValueError, match="eps_fn returned shape"):
        run_sampler(label, lambda x, t: x[:, :1], schedule, space, x_T, grid)


# ==================================================================================================
# Convergence to the exact target on the 2-D mixture
# ==================================================================================================
#: Samples per run (and size of the exact reference). The oracle costs ~0.5 µs per sample per call on one
#: thread, so 8k samples keep the ~5.5k evaluations of the convergence tests near 30 s; the standard errors
#: below are computed for this n.
N_CONV = 8_000
_SCHEDULES = {"linear": lambda: LinearSchedule(1000), "vp": lambda: VPSchedule()}

#: Steps ladder per sampler; the last rung is also the moment test's run.
#: - First-order samplers go on to 250 steps: their covariance bias, measured with n = 80k at K = 200, was
#:   −5.5 SE (DDPM-β̃) and −4.4 SE (DDIM η = 0) of that n; scaling as 1/K and √n this is ≈ 1.4 SE at K = 250
#:   and n = 8k, well inside the 5-SE tolerance, while at K = 20 it is ≈ 16 SE (asserted below: the moment
#:   test has power).
#: - PC stops at 100 steps (200 NFE): its Langevin corrector uses a fixed snr, whose step-size bias does not
#:   shrink as K grows (its SW2 at 1000 steps was no better than at 100); at 100 steps all its z-scores were
#:   < 2.5 with n = 80k.
#: - Heun and DPM-Solver++(2M) are converged at 100 steps (their z-scores agree with rk45's at rtol 1e-5 to
#:   within 0.1).
#: - rk45: the rungs are tolerances rtol = atol, the last being the default 1e-5.
LADDER: dict[str, list[int]] = {
    "ddpm_beta": [5, 20, 100, 250],
    "ddpm_beta_tilde": [5, 20, 100, 250],
    "ddim_eta0": [5, 20, 100, 250],
    "ddim_eta1": [5, 20, 100, 250],
    "euler_maruyama": [5, 20, 100, 250],
    "pc": [5, 20, 100],
    "heun": [5, 20, 100],
    "dpm_solver_pp_2m": [5, 20, 100],
    "dpm_solver_pp_3m": [5, 20, 100],
    "unipc": [5, 20, 100],
}
RK45_TOLERANCES = [0.3, 1e-2, 1e-5]


@lru_cache(maxsize=None)
def _converge_run(schedule_key: str, label: str, level: int) -> tuple[Tensor, int]:
    """(sample, nfe) of ``label`` on MIX2 with N_CONV samples, x_T and noise from seed 0 (so every rung of a
    ladder shares x_T: common random numbers make the differences between rungs less noisy). ``level`` is the
    number of steps, or for rk45 the index into RK45_TOLERANCES. Cached: the moment test reuses the ladder's
    last rung."""
    schedule = _SCHEDULES[schedule_key]()
    space = DenseSpace((N_CONV, 2))
    g = torch.Generator().manual_seed(0)
    x_T = S.prior_sample(schedule, space, g, F64)
    if label == "rk45":
        tol = RK45_TOLERANCES[level]
        out = run_sampler(label, MIX2.eps_fn(schedule), schedule, space, x_T, S.time_grid(schedule, 1),
                          rtol=tol, atol=tol)
    else:
        out = run_sampler(label, MIX2.eps_fn(schedule), schedule, space, x_T, _grid(label, schedule, level), g)
    return out.sample, out.nfe


def _levels(label: str) -> list[int]:
    return list(range(len(RK45_TOLERANCES))) if label == "rk45" else LADDER[label]


class SW2Reference:
    """Sliced W2 against a fixed reference sample with fixed projections: the statistic of
    ``oracle.sliced_wasserstein2(x, ref, num_projections, torch.Generator().manual_seed(seed))`` (θ drawn the
    same way; checked in ``test_sw2_reference_matches_the_oracle``), with the reference's sorted projections
    computed once and the sorting done in numpy (torch's CPU sort along dim 0 is ~5× slower here)."""

    def __init__(self, ref: Tensor, num_projections: int = 256, seed: int = 7) -> None:
        theta = torch.randn((ref.shape[1], num_projections), dtype=F64, generator=torch.Generator().manual_seed(seed))
        self.theta = (theta / theta.norm(dim=0, keepdim=True)).numpy()
        self.n = ref.shape[0]
        self.ref_sorted = np.sort(ref.to(F64).numpy() @ self.theta, axis=0)

    def __call__(self, x: Tensor) -> float:
        if x.shape[0] != self.n:
            raise ValueError(f"sample has {x.shape[0]} points, the reference {self.n}")
        px = np.sort(x.detach().to(F64).numpy() @ self.theta, axis=0)
        return float(np.sqrt(((px - self.ref_sorted) ** 2).mean()))


def test_sw2_reference_matches_the_oracle() -> None:
    """SW2Reference computes exactly the oracle's ``sliced_wasserstein2`` with the same projection seed."""
    g = torch.Generator().manual_seed(0)
    x, ref = MIX2.sample(700, g)[0], MIX2.sample(700, g)[0] + 0.1
    expected = float(sliced_wasserstein2(x, ref, num_projections=64, generator=torch.Generator().manual_seed(3)))
    assert SW2Reference(ref, 64, seed=3)(x) == pytest.approx(expected, rel=1e-12)


@lru_cache(maxsize=None)
def _reference(schedule_key: str) -> tuple[SW2Reference, float]:
    """An exact sample of q_{t_min} (N_CONV points, seed 12345) and the SW2 slack.

    The slack is what SW2 to this reference reads for a *perfect* sampler: the SW2 of 8 further independent
    exact samples of the same size (same projections) has mean m and standard deviation s; slack = m + 4s.
    SW2 estimates at this n are heavy-tailed (a ±0.5% shift of the component counts moves mass between modes),
    which is why 4 spreads and not 2–3 are used. At n = 8k this is ≈ 0.08, against errors of 0.2–0.35 at
    5 steps (and 0.9–6 for Heun at 5 steps and rk45 at rtol 0.3)."""
    schedule = _SCHEDULES[schedule_key]()
    sw2 = SW2Reference(MIX2.sample_marginal(schedule, schedule.t_min, N_CONV, torch.Generator().manual_seed(12345)))
    floors = torch.tensor([
        sw2(MIX2.sample_marginal(schedule, schedule.t_min, N_CONV, torch.Generator().manual_seed(100 + i)))
        for i in range(8)
    ])
    return sw2, float(floors.mean() + 4 * floors.std())


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("schedule_key", sorted(_SCHEDULES))
def test_sliced_w2_error_decreases_with_steps(schedule_key: str, label: str) -> None:
    """SW2(sample, exact reference) decreases along the steps ladder 5 → 20 → 100 (→ 250), or
    for rk45 along tolerances 0.3 → 1e-2 → 1e-5: each rung is no worse than the previous one up to the MC
    slack (see ``_reference``), the last rung is within the slack of a perfect sampler (converged), and — for
    the fixed-step samplers, whose 5-step error is far above the noise — the last rung improves on the first by
    more than the slack (a real decrease, not noise)."""
    sw2, slack = _reference(schedule_key)
    errors = [sw2(_converge_run(schedule_key, label, level)[0]) for level in _levels(label)]
    for coarse, fine in zip(errors, errors[1:]):
        assert fine <= coarse + slack, (errors, slack)
    assert errors[-1] <= slack, (errors, slack)
    if label != "rk45":
        assert errors[-1] < errors[0] - slack, (errors, slack)


def _moment_z_scores(x: Tensor, schedule: NoiseSchedule) -> dict[str, Tensor]:
    """z-scores (estimate − exact)/SE for the mean (2), covariance entries 00, 11, 01 (3) and the component
    weights measured by the exact classifier at t_min (3), for a sample x of q_{t_min}.

    Exact values: E[x] = α m, Cov[x] = α² C + σ² I (m, C of the mixture, α, σ at t_min) and
    E_{x∼q_{t_min}}[q_{t_min}(k | x)] = w_k. Standard errors: sqrt(C_ii/n) from the exact variance for the
    mean; the sample standard deviation of the products (x_i − x̄_i)(x_j − x̄_j) over √n for the covariance;
    the sample standard deviation of the responsibilities over √n for the weights."""
    n = x.shape[0]
    t = torch.tensor(schedule.t_min, dtype=F64)
    a, s2 = float(schedule.alpha(t)), float(schedule.sigma_sq(t))
    mean = a * MIX2.mean()
    cov = a * a * MIX2.covariance() + s2 * torch.eye(2, dtype=F64)
    x_bar = x.mean(0)
    z_mean = (x_bar - mean) / torch.sqrt(cov.diagonal() / n)
    xc = x - x_bar
    z_cov = []
    for i, j in [(0, 0), (1, 1), (0, 1)]:
        prod = xc[:, i] * xc[:, j]
        z_cov.append((prod.mean() - cov[i, j]) / (prod.std() / math.sqrt(n)))
    r = MIX2.responsibilities(x, schedule, schedule.t_min)
    z_w = (r.mean(0) - MIX2.weights) / (r.std(0) / math.sqrt(n))
    return {"mean": z_mean, "cov": torch.stack(z_cov), "weights": z_w}


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("schedule_key", sorted(_SCHEDULES))
def test_moments_and_weights_match_the_mixture(schedule_key: str, label: str) -> None:
    """At the ladder's last rung (250 steps first-order, 100 for PC and the second-order solvers, rk45 at 1e-5)
    the sample's mean, covariance and component weights (via the exact responsibilities at t_min) match
    q_{t_min} within 5 standard errors each.

    Tolerance: 8 statistics × 18 (sampler, schedule) pairs = 144 z-scores; for an exact sampler
    P(|z| > 5) ≈ 6e-7 each, so < 1e-4 for the whole family. In absolute terms 5 SE at n = 8k is ≈ 0.06–0.08
    on the mean, ≈ 0.07–0.10 on covariance entries and ≈ 0.02–0.03 on the weights. A first-order sampler at
    20 steps misses the covariance by ≫ 5 SE (checked below for DDPM-β̃), so the test has power."""
    level = _levels(label)[-1]
    schedule = _SCHEDULES[schedule_key]()
    x, _ = _converge_run(schedule_key, label, level)
    for stat, z in _moment_z_scores(x, schedule).items():
        assert z.abs().max() < 5.0, (stat, z)
    if label == "ddpm_beta_tilde":  # power: the same statistic rejects the 20-step sample
        z = _moment_z_scores(_converge_run(schedule_key, label, 20)[0], schedule)
        assert max(float(v.abs().max()) for v in z.values()) > 5.0


def test_ddim_eta1_is_ancestral_sampling_with_beta_tilde() -> None:
    """DDIM with η = 1 and DDPM with v = β̃ are the same update (c² = β̃_{t|s}, and the ε coefficient
    √(σ_s² − β̃) equals the posterior-mean weight): same x_T and seed → the same samples to float64 rounding."""
    schedule = LinearSchedule(1000)
    space = DenseSpace((256, 2))
    eps_fn = MIX2.eps_fn(schedule)
    x_T = S.prior_sample(schedule, space, torch.Generator().manual_seed(3), F64)
    for grid in (S.time_grid(schedule, 17), S.time_grid(schedule, 40, "quadratic")):
        a = S.ddim(eps_fn, schedule, space, x_T, grid, eta=1.0, generator=torch.Generator().manual_seed(4))
        b = S.ddpm(eps_fn, schedule, space, x_T, grid, variance="beta_tilde",
                   generator=torch.Generator().manual_seed(4))
        torch.testing.assert_close(a.sample, b.sample, rtol=0, atol=1e-10)


# ==================================================================================================
# DPM-Solver++(2M) versus DDIM at 20 NFE
# ==================================================================================================
@pytest.mark.parametrize("dim", [2, 32])
def test_dpm_solver_beats_ddim_at_20_nfe(dim: int) -> None:
    """On the linear 1000-step schedule with 20 NFE and the same x_T, DPM-Solver++(2M) has lower SW2 error than
    DDIM (η = 0), on the 2-D mixture (n = 20k) and on the 32-D diagonal mixture (n = 10k).

    Margin: the gap must exceed one standard deviation of SW2 between independent exact samples of that size
    (4 draws; ≈ 0.004 in 2-D, ≈ 0.014 in 32-D) — the MC spread of a single SW2 estimate. Because both
    solvers start from the same x_T their errors share most of that noise, so the margin is conservative.
    Observed: 2-D ≈ 0.07 vs 0.03, 32-D ≈ 0.06 vs 0.03."""
    mixture = MIX2 if dim == 2 else _mixture_32d()
    n = 20_000 if dim == 2 else 10_000
    schedule = LinearSchedule(1000)
    space = DenseSpace((n, dim))
    eps_fn = mixture.eps_fn(schedule)
    sw2 = SW2Reference(mixture.sample(n, torch.Generator().manual_seed(1))[0])  # q_{t_min} = q_0 (discrete)
    floors = torch.tensor([sw2(mixture.sample(n, torch.Generator().manual_seed(50 + i))[0]) for i in range(4)])
    x_T = S.prior_sample(schedule, space, torch.Generator().manual_seed(0), F64)
    grid = S.time_grid(schedule, 20)
    ddim_out = S.ddim(eps_fn, schedule, space, x_T, grid)
    dpm_out = S.dpm_solver_pp_2m(eps_fn, schedule, space, x_T, grid)
    assert ddim_out.nfe == dpm_out.nfe == 20
    err_ddim, err_dpm = sw2(ddim_out.sample), sw2(dpm_out.sample)
    assert err_dpm < err_ddim - float(floors.std()), (err_dpm, err_ddim, floors)


# ==================================================================================================
# NFE accounting
# ==================================================================================================
class _Counter:
    """An ε-function that counts its own calls (the ground truth for a sampler's reported NFE)."""

    def __init__(self, eps_fn: EpsFn) -> None:
        self.eps_fn, self.calls = eps_fn, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.eps_fn(x, t)


@pytest.mark.parametrize("schedule_key", sorted(_SCHEDULES))
def test_nfe_accounting(schedule_key: str) -> None:
    """Reported NFE equals the ε-function's own call count, and: DDPM, DDIM, Euler–Maruyama and
    DPM-Solver++(2M) report K; Heun reports 2K − 1 when the grid ends at σ = 0 (discrete schedule: the last
    step into ς = 0 is Euler only) and 2K when it does not (VP with t_min = 1e-3); PC reports K(1 + c) for c
    corrector steps; rk45 reports its solver's count, > 0."""
    schedule = _SCHEDULES[schedule_key]()
    ends_at_zero_noise = float(schedule.sigma(torch.tensor(schedule.t_min, dtype=F64))) == 0.0
    assert ends_at_zero_noise == (schedule_key == "linear")
    space = DenseSpace((64, 2))
    x_T = S.prior_sample(schedule, space, torch.Generator().manual_seed(0), F64)

    def check(label: str, grid: Tensor, expected: int | None, **extra: Any) -> int:
        counter = _Counter(MIX2.eps_fn(schedule))
        out = run_sampler(label, counter, schedule, space, x_T, grid, torch.Generator().manual_seed(1), **extra)
        assert out.nfe == counter.calls, label
        if expected is not None:
            assert out.nfe == expected, (label, out.nfe, expected)
        return out.nfe

    for k in (1, 2, 7, 20):
        grid = S.time_grid(schedule, k)
        for label in ("ddpm_beta", "ddpm_beta_tilde", "ddim_eta0", "ddim_eta1", "euler_maruyama", "dpm_solver_pp_2m",
                      "dpm_solver_pp_3m", "unipc"):
            check(label, grid, k)
        check("heun", S.time_grid(schedule, k, "logsnr"), 2 * k - 1 if ends_at_zero_noise else 2 * k)
        for c in (0, 1, 3):
            check("pc", grid, k * (1 + c), corrector_steps=c)
    assert check("rk45", S.time_grid(schedule, 1), None) > 0


def test_heun_nfe_on_ve_schedule_with_t_min_zero() -> None:
    """VE with t_min = 0 still has σ(0) = σ_min > 0, so no step lands on ς = 0 and Heun uses 2K evaluations."""
    schedule = VESchedule()
    space = DenseSpace((16, 2))
    x_T = S.prior_sample(schedule, space, torch.Generator().manual_seed(0), F64)
    out = S.heun(MIX2.eps_fn(schedule), schedule, space, x_T, S.time_grid(schedule, 6, "logsnr"))
    assert out.nfe == 12


# ==================================================================================================
# Determinism
# ==================================================================================================
@pytest.mark.parametrize("label", LABELS)
def test_same_seed_gives_identical_samples(label: str) -> None:
    """The same generator seed (for x_T and for the sampler's noise) gives bit-identical samples; a different
    seed for the sampler's noise changes the output of the stochastic samplers (so the generator is really
    what drives their noise) and leaves the deterministic ones unchanged."""
    schedule = LinearSchedule(1000)
    space = DenseSpace((128, 2))
    grid = _grid(label, schedule, 10)

    def draw(seed_noise: int) -> Tensor:
        x_T = S.prior_sample(schedule, space, torch.Generator().manual_seed(0), F64)
        return run_sampler(label, MIX2.eps_fn(schedule), schedule, space, x_T, grid,
                           torch.Generator().manual_seed(seed_noise)).sample

    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a, b)
    if label in STOCHASTIC:
        assert not torch.allclose(a, c)
    else:
        assert torch.equal(a, c)
