"""Torus diffusion (Jing et al. 2022; De Bortoli et al. 2022): the wrapped normal's truncated series against brute
force and finite differences, the exact mixture oracle, the wrapped-score loss target, the uniform prior, samplers
converging to the exact T² mixture, and a small trained network recovering it."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.torus_oracle import (SIGMA_MIN, network_eps, run, torus_mixture, torus_schedule, train_network,
                                     unwrapped_mixture)
from sciddpm.objectives import denoising_loss, eps_predictor, forward_noise
from sciddpm.samplers import prior_sample
from sciddpm.schedules import LinearSchedule, VESchedule
from sciddpm.spaces import DenseSpace, GraphSpace, MaskedSpace, TorusSpace, wrap_angle
from sciddpm.torus import (WrappedNormalMixture, _fourier_sum, _image_sum, fourier_error_bound, grid_distances,
                           histogram, image_error_bound, truncation_terms, uniform_prior_tv_bound, wrapped_normal,
                           wrapped_normal_log_prob, wrapped_normal_score)

F64 = torch.float64
BRUTE_K = 400  # images per side: exact in float64 for σ ≤ 50 (the next term is below e^{−2π²·400·399/2500})


def _points(n: int = 3000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.rand(n, dtype=F64, generator=g) - 1) * math.pi
    mu = (2 * torch.rand(n, dtype=F64, generator=g) - 1) * math.pi
    return x, mu


def _brute(x: torch.Tensor, mu: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p and ε = −σ ∂log p from the image sum with 801 terms (logsumexp/softmax, independent arithmetic)."""
    k = torch.arange(-BRUTE_K, BRUTE_K + 1, dtype=F64)
    z = (wrap_angle(x - mu).unsqueeze(-1) + 2 * math.pi * k) / std.unsqueeze(-1)
    logw = -0.5 * z * z
    log_p = torch.logsumexp(logw, -1) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_p, (torch.softmax(logw, -1) * z).sum(-1)


# ==================================================================================================
# The wrapped normal
# ==================================================================================================
@pytest.mark.parametrize("form,std,terms", [("image", 1.0, 1), ("image", 2.0, 1), ("image", 2.0, 2),
                                            ("image", 2.5, 1), ("image", 2.5, 2), ("fourier", 1.5, 1),
                                            ("fourier", 1.5, 2), ("fourier", 2.5, 1), ("fourier", 2.5, 2),
                                            ("fourier", 4.0, 1)])
def test_truncation_error_is_within_its_bound_and_the_bound_is_tight(form: str, std: float, terms: int) -> None:
    """With a deliberately short series (K images per side or N Fourier modes), the worst error over 3000 random
    (x, μ) of log p and of ε against an 801-term image sum is below the proven bound (+ 1e-14 for rounding), and
    where the error is above rounding the bound is within a factor 20 of it (not vacuous)."""
    x, mu = _points()
    s = torch.full_like(x, std)
    log_p, eps = (_image_sum if form == "image" else _fourier_sum)(wrap_angle(x - mu), s, terms)
    ref_lp, ref_eps = _brute(x, mu, s)
    errors = ((log_p - ref_lp).abs().max().item(), (eps - ref_eps).abs().max().item())
    bounds = (image_error_bound if form == "image" else fourier_error_bound)(std, terms)
    for err, bound in zip(errors, bounds):
        assert err <= bound + 1e-14
        if err > 1e-12:
            assert bound < 20 * err


def test_automatic_truncation_matches_brute_force_across_scales() -> None:
    """``wrapped_normal`` with the automatic choice (image sum for σ ≤ √(2π), Fourier above, both regimes in one
    call) agrees with the 801-term image sum for σ from 0.01 to 30 to the default tolerance 1e-12 plus rounding:
    ε to 1e-12 + 1e-13·|ε| (|ε| = |d|/σ reaches 314 at σ = 0.01), log p to 1e-12 + 1e-15·|log p| (−z²/2 reaches
    −5e4)."""
    x, mu = _points(4000)
    std = torch.logspace(-2, math.log10(30.0), 4000, dtype=F64)
    log_p, eps = wrapped_normal(x, mu, std)
    ref_lp, ref_eps = _brute(x, mu, std)
    assert ((log_p - ref_lp).abs() <= 1e-12 + 1e-15 * ref_lp.abs()).all()
    assert ((eps - ref_eps).abs() <= 1e-12 + 1e-13 * ref_eps.abs()).all()
    assert truncation_terms(0.01) == 1 and truncation_terms(2.0) == 3 and truncation_terms(10.0) == 1


def test_bounds_are_monotone_in_std_so_one_truncation_serves_a_batch() -> None:
    """``wrapped_normal`` picks K at the batch's largest σ (image) and N at its smallest (Fourier): valid because
    the image bound grows with σ on (0, √(2π)] and the Fourier bound falls with σ on [√(2π), 50]."""
    small = torch.linspace(0.05, math.sqrt(2 * math.pi), 60).tolist()
    large = torch.linspace(math.sqrt(2 * math.pi), 50.0, 60).tolist()
    for terms in (1, 2, 3):
        img = [max(image_error_bound(s, terms)) for s in small]
        fou = [max(fourier_error_bound(s, terms)) for s in large]
        assert all(b <= a * (1 + 1e-12) for a, b in zip(img[1:], img[:-1]))
        assert all(b <= a * (1 + 1e-12) for a, b in zip(fou[:-1], fou[1:]))


@pytest.mark.parametrize("std", [0.05, 0.4, 1.5, 2.4, 2.6, 6.0])
def test_score_equals_finite_differences_of_the_log_density(std: float) -> None:
    """∂_x log p from ``wrapped_normal_score`` equals the central difference (h = 1e-6) of
    ``wrapped_normal_log_prob`` to 1e-6 (1 + |s|) (truncation h² f''' plus rounding |log p|·1e-16/h)."""
    x, mu = _points(500, seed=1)
    h = 1e-6
    fd = (wrapped_normal_log_prob(x + h, mu, std) - wrapped_normal_log_prob(x - h, mu, std)) / (2 * h)
    score = wrapped_normal_score(x, mu, std)
    assert ((score - fd).abs() <= 1e-6 * (1 + score.abs())).all()


def test_density_normalises_and_approaches_uniform_within_the_prior_bound() -> None:
    """∫ p_σ = 1 to 1e-12 (periodic trapezoid, spectrally accurate); TV(WN(σ), U) computed on the grid is below
    ``uniform_prior_tv_bound`` for σ ≥ 1 and within 1.05× of it for σ ≥ 2 (where the n = 1 mode dominates)."""
    x = torch.linspace(-math.pi, math.pi, 4097, dtype=F64)[:-1]
    for std in (0.05, 0.5, 1.0, 2.0, math.pi, 10.0):
        p = torch.exp(wrapped_normal_log_prob(x, 0.3, std))
        assert abs(float(p.mean() * 2 * math.pi) - 1.0) < 1e-12
        if std >= 1.0:
            tv = 0.5 * float((p - 1 / (2 * math.pi)).abs().mean() * 2 * math.pi)
            bound = uniform_prior_tv_bound(std)
            assert tv <= bound
            if std < 5:  # at σ = 10 the deviation (1e-22) is below the rounding of p
                assert std < 2 or bound < 1.05 * tv
    assert uniform_prior_tv_bound(2 * math.pi, 2) < 4e-9


# ==================================================================================================
# The mixture oracle
# ==================================================================================================
def test_noisy_mixture_is_the_convolution_of_the_data_with_the_wrapped_kernel() -> None:
    """p_t(x) in closed form (component stds √(s² + σ_t²)) equals ∫ p_0(y) WN(x; y, σ_t²) dy computed by the
    periodic trapezoid rule on T¹ (2048 points) to 1e-10, at σ_t = 0.1, 0.7, 3."""
    mix = WrappedNormalMixture(torch.tensor([0.6, 0.4]), torch.tensor([[3.0], [-0.5]]), torch.tensor([[0.4], [0.8]]))
    schedule = VESchedule(0.01, 2 * math.pi)
    y = torch.linspace(-math.pi, math.pi, 2049, dtype=F64)[:-1]
    p0 = torch.exp(mix.log_prob(y[:, None]))
    x = torch.linspace(-3.1, 3.1, 40, dtype=F64)
    for sigma in (0.1, 0.7, 3.0):
        t = float(schedule.time_at_varsigma(torch.tensor(sigma, dtype=F64)))
        kernel = torch.exp(wrapped_normal_log_prob(x[:, None], y[None, :], sigma))
        conv = (kernel * p0[None, :]).mean(1) * 2 * math.pi
        exact = torch.exp(mix.log_prob(x[:, None], schedule, t))
        torch.testing.assert_close(exact, conv, rtol=0, atol=1e-10)


def test_mixture_eps_is_minus_sigma_times_the_gradient_of_log_p() -> None:
    """On T² the oracle's ε*(x, t) equals −σ_t ∇log p_t by central differences (h = 1e-6) to 1e-6, at three t."""
    mix, schedule = torus_mixture(), torus_schedule()
    x = wrap_angle(4 * torch.rand(300, 2, dtype=F64, generator=torch.Generator().manual_seed(3)) - 2 + 2.5)
    h = 1e-6
    for t in (0.0, 0.4, 0.9):
        sigma = float(schedule.sigma(torch.tensor(t, dtype=F64)))
        grad = torch.stack([(mix.log_prob(x + h * e, schedule, t) - mix.log_prob(x - h * e, schedule, t)) / (2 * h)
                            for e in torch.eye(2, dtype=F64)], dim=-1)
        torch.testing.assert_close(mix.eps(x, schedule, t), -sigma * grad, rtol=1e-6, atol=1e-6)


def test_cell_probabilities_are_exact_cell_masses() -> None:
    """Exact cell masses sum to 1 and match an 80×80-point midpoint rule inside each of 8×8 cells to 1e-5 (its
    O(h²) error is 5e-6 here, 2e-5 with 40×40 points); the
    histogram of 20 000 exact draws is as far from them as multinomial noise predicts (TV < 2× its mean
    ½Σ√(2p(1−p)/(πn)))."""
    mix = torus_mixture()
    p = mix.cell_probabilities(8, SIGMA_MIN)
    assert abs(float(p.sum()) - 1) < 1e-13
    m = 640
    c = -math.pi + (torch.arange(m, dtype=F64) + 0.5) * 2 * math.pi / m
    grid = torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    dens = torch.exp(mix.log_prob(grid, torus_schedule(), 0.0)).reshape(m, m) * (2 * math.pi / m) ** 2
    torch.testing.assert_close(dens.reshape(8, 80, 8, 80).sum((1, 3)), p, rtol=0, atol=1e-5)
    n = 20_000
    tv, kl = grid_distances(histogram(mix.sample(n, torch.Generator().manual_seed(0), SIGMA_MIN), 8), p)
    assert tv < 2 * 0.5 * float(torch.sqrt(2 * p * (1 - p) / (math.pi * n)).sum()) and kl >= 0


# ==================================================================================================
# TorusSpace: the loss target and the prior
# ==================================================================================================
def test_loss_target_on_the_torus_is_the_exact_conditional_score() -> None:
    """``denoising_loss`` on ``TorusSpace`` regresses on −σ_t ∂log p_WN(x_t | x₀): a model that returns the brute-
    force conditional target (it knows x₀) has loss 1e-20, while one that returns the drawn ε (the Euclidean
    target, which differs once σε wraps) does not; for small σ without wrapping the target is ε itself."""
    schedule, n = torus_schedule(), 256
    space = TorusSpace(DenseSpace((n, 2)))
    x0 = torus_mixture().sample(n, torch.Generator().manual_seed(0))

    def brute_target(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = schedule.sigma(t).unsqueeze(-1).expand_as(x)
        return _brute(x, x0, sigma)[1]

    loss = denoising_loss(brute_target, schedule, space, x0, generator=torch.Generator().manual_seed(5)).loss
    assert float(loss) < 1e-20
    g = torch.Generator().manual_seed(5)
    t = torch.rand(n, dtype=F64, generator=g)  # the same draws as denoising_loss's sample_times + forward_noise
    _, eps = forward_noise(schedule, space, x0, t, generator=g)
    loss_eps = denoising_loss(lambda x, t_: eps, schedule, space, x0, generator=torch.Generator().manual_seed(5))
    assert float(loss_eps.loss) > 0.1
    alpha, sigma = torch.ones(n, 1, dtype=F64), torch.full((n, 1), 0.01, dtype=F64)
    small_eps = torch.randn(n, 2, dtype=F64, generator=g).clamp(-3, 3)
    x_t = space.project(x0 + 0.01 * small_eps)
    torch.testing.assert_close(space.eps_target(x0, x_t, small_eps, alpha, sigma), small_eps, rtol=0, atol=1e-9)


def test_difference_is_the_shortest_arc_on_the_torus_and_plain_elsewhere() -> None:
    """``Space.difference``: wrap(a − b) on the torus (3 − (−3) = 6 − 2π), a − b on a dense space, per part in a
    product."""
    from sciddpm.spaces import ProductSpace

    a, b = torch.full((2, 3), 3.0, dtype=F64), torch.full((2, 3), -3.0, dtype=F64)
    torus, dense = TorusSpace(DenseSpace((2, 3))), DenseSpace((2, 3))
    torch.testing.assert_close(torus.difference(a, b), torch.full((2, 3), 6.0 - 2 * math.pi, dtype=F64))
    assert (dense.difference(a, b) == 6.0).all()
    both = ProductSpace([torus, dense]).difference(torch.cat([a, a], -1), torch.cat([b, b], -1))
    torch.testing.assert_close(both, torch.cat([torus.difference(a, b), dense.difference(a, b)], -1))


def test_network_eps_is_not_wrapped_and_euclidean_targets_are_unchanged() -> None:
    """``eps_predictor`` projects ε̂ as a velocity: on the torus an ε̂ of 4 (> π) stays 4; on a dense space the
    loss target is still the drawn ε (``Space.eps_target`` default)."""
    space = TorusSpace(DenseSpace((8, 3)))
    out = eps_predictor(lambda x, t: torch.full_like(x, 4.0), torus_schedule(), space)(space.zeros(), torch.ones(8))
    assert (out == 4.0).all()
    dense = DenseSpace((8, 3))
    eps = torch.randn(8, 3)
    assert dense.eps_target(torch.zeros(8, 3), eps, eps, torch.ones(8, 1), torch.ones(8, 1)) is eps


def test_uniform_prior_on_the_torus() -> None:
    """``prior_sample`` on the torus is uniform on (−π, π]: inside the interval, mean of cos and sin within 4/√n
    of 0 and a 16-bin histogram within 3.5σ of its χ² expectation; padded and flat layouts draw the same angles
    with zero padding."""
    n = 40_000
    space = TorusSpace(DenseSpace((n, 1)))
    x = prior_sample(torus_schedule(), space, torch.Generator().manual_seed(0), F64)
    assert (x > -math.pi).all() and (x <= math.pi).all()
    assert abs(float(torch.cos(x).mean())) < 4 / math.sqrt(n) and abs(float(torch.sin(x).mean())) < 4 / math.sqrt(n)
    counts = histogram(x, 16).flatten() * n
    chi2 = float(((counts - n / 16) ** 2 / (n / 16)).sum())
    assert abs(chi2 - 15) < 3.5 * math.sqrt(30)
    batch = torch.tensor([0, 0, 1, 1, 1])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    flat = TorusSpace(GraphSpace(batch, 2)).prior(6.0, torch.Generator().manual_seed(1), F64)
    padded = TorusSpace(MaskedSpace(mask, 2)).prior(6.0, torch.Generator().manual_seed(1), F64)
    assert (padded[~mask] == 0).all()
    torch.testing.assert_close(padded[mask], flat)


# ==================================================================================================
# Samplers and training against the exact T² mixture
# ==================================================================================================
BINS, N = 16, 10_000


def _floor(p: torch.Tensor, n: int) -> float:
    """E[TV] of n exact draws on the grid, ½ Σ √(2p(1−p)/(πn)) (normal approximation to E|Bin − np|/n)."""
    return 0.5 * float(torch.sqrt(2 * p * (1 - p) / (math.pi * n)).sum())


@pytest.mark.parametrize("sampler", ["euler_maruyama", "heun", "dpm_solver_pp_2m"])
def test_samplers_converge_to_the_exact_torus_mixture(sampler: str) -> None:
    """The reverse SDE (Euler–Maruyama), the probability-flow ODE (Heun) and DPM-Solver++(2M) (whose multistep
    x̂₀ difference goes through ``Space.difference``, wrapped on the torus) with the exact ε* on VE noise stay in
    (−π, π] and their TV to the exact p_{σ_min} on a 16×16 grid falls with the steps (5 → 20 → 80) to within
    1.3 × the sampling-noise floor of n = 10 000 exact draws (floor 0.039; exact draws measure 0.036–0.046 over
    seeds, so 1.3× is ≈ 3 standard deviations above it); the unwrapped Gaussian score stays far off (TV > 0.1)."""
    mix, schedule = torus_mixture(), torus_schedule()
    p = mix.cell_probabilities(BINS, SIGMA_MIN)
    space = TorusSpace(DenseSpace((N, 2)))
    tvs = []
    for steps in (5, 20, 80):
        x, _ = run(sampler, mix.eps_fn(schedule), schedule, space, steps)
        assert (x > -math.pi).all() and (x <= math.pi).all()
        tvs.append(grid_distances(histogram(x, BINS), p)[0])
    floor = _floor(p, N)
    assert tvs[0] > 2 * tvs[1] and tvs[2] <= tvs[1] + 0.005 and tvs[2] <= 1.3 * floor, (tvs, floor)
    x, _ = run(sampler, unwrapped_mixture(mix).eps_fn(schedule), schedule, space, 20)
    assert grid_distances(histogram(x, BINS), p)[0] > 0.1


def test_small_network_trained_with_the_wrapped_target_recovers_the_mixture() -> None:
    """``TorusMLP`` trained 800 Adam steps (batch 256, seed 0, one thread, ≈ 5 s) with ``denoising_loss`` on
    ``TorusSpace`` and sampled with Euler–Maruyama (50 steps) reaches TV < 0.15 on the 16×16 grid (measured
    0.10; the exact-draw floor is 0.039), against 0.66 for the uniform prior."""
    mix = torus_mixture()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, schedule, losses = train_network(mix, steps=800, batch=256, lr=5e-3)
    finally:
        torch.set_num_threads(threads)
    assert all(math.isfinite(v) for v in losses)
    p = mix.cell_probabilities(BINS, SIGMA_MIN)
    space = TorusSpace(DenseSpace((N, 2)))
    x, _ = run("euler_maruyama", network_eps(net, schedule, space), schedule, space, 50)
    tv = grid_distances(histogram(x, BINS), p)[0]
    tv_uniform = grid_distances(torch.full_like(p, 1 / BINS**2), p)[0]
    assert tv < 0.15 and tv < 0.25 * tv_uniform, (tv, tv_uniform)


# ==================================================================================================
# Bad input
# ==================================================================================================
def test_bad_input_raises_one_line_errors() -> None:
    """Non-positive or non-finite std, NaN angles, shape mismatches, and a non-VE schedule for the oracle."""
    with pytest.raises(ValueError, match="std must be positive"):
        wrapped_normal(torch.zeros(3), 0.0, torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="must be finite"):
        wrapped_normal(torch.tensor([float("nan")]), 0.0, 1.0)
    with pytest.raises(ValueError, match="stds must have the means' shape"):
        WrappedNormalMixture(torch.ones(2), torch.zeros(2, 2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="weights must be positive"):
        WrappedNormalMixture(torch.tensor([1.0, -1.0]), torch.zeros(2, 2), torch.ones(2, 2))
    mix = torus_mixture()
    with pytest.raises(ValueError, match=r"x must be \[B, 2\]"):
        mix.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="variance-exploding"):
        mix.eps(torch.zeros(4, 2), LinearSchedule(100), 10.0)
    with pytest.raises(ValueError, match="terms >= 1"):
        image_error_bound(1.0, 0)
    space = TorusSpace(DenseSpace((4, 2)))
    with pytest.raises(ValueError, match="std must be positive"):
        space.eps_target(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 2), torch.ones(4, 1), torch.zeros(4, 1))
