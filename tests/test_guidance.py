"""Guidance and start-state helpers against closed forms on the Gaussian-mixture oracle."""
from __future__ import annotations

import math

import pytest
import torch

from sciddpm.guidance import (batched_pair, classifier_free_guidance, classifier_guidance, energy_guidance,
                              gaussian_log_likelihood, repaint, replacement_inpainting, paste_known, sdedit_start)
from sciddpm.oracle import GaussianMixture
from sciddpm.samplers import ddim, ddpm, prior_sample, time_grid
from sciddpm.schedules import LinearSchedule
from sciddpm.spaces import DenseSpace

SCH = LinearSchedule(1000)
CLASS_B = torch.tensor([False, True, True])  # class B = components 1 and 2 of the 3-component mixture


def _class_log_prob(mixture: GaussianMixture, components: torch.Tensor):
    """The exact noisy-data classifier log p_t(c | x) = log Σ_{k∈c} q_t(k | x)."""

    def log_prob(x, t):
        alpha, s2 = mixture._coeffs(SCH, t, x.shape[0])
        log_n, _, _ = mixture._terms(x, alpha, s2)
        logits = torch.log(mixture.weights) + log_n
        return torch.logsumexp(logits[:, components], -1) - torch.logsumexp(logits, -1)

    return log_prob


def test_classifier_guidance_at_scale_one_is_the_conditional_score(mixture2d):
    """ε(x) − σ_t ∇log p_t(c|x) equals the exact class-conditional ε to 1e-5 at several times."""
    x = torch.randn(256, 2, dtype=torch.float64) * 2
    guided = classifier_guidance(mixture2d.eps_fn(SCH), _class_log_prob(mixture2d, CLASS_B), SCH, DenseSpace(x.shape), 1.0)
    for t in (10.0, 200.0, 600.0, 999.0):
        tt = torch.full((256,), t, dtype=torch.float64)
        torch.testing.assert_close(guided(x, tt), mixture2d.eps(x, SCH, tt, components=CLASS_B), rtol=0, atol=1e-5)


def _class_fraction(mixture, samples, components):
    return float(mixture.responsibilities(samples)[:, components].sum(1).gt(0.5).double().mean())


def test_guided_samples_land_in_the_class(mixture2d):
    """Sampling with classifier guidance (λ = 1) and with CFG (λ = 1) puts ≥ 98% of samples in class B
    (whose prior mass is 0.8), and the class-B sample mean matches the exact conditional mean within 5 SE."""
    space = DenseSpace((2000, 2))
    g = torch.Generator().manual_seed(0)
    x_t = prior_sample(SCH, space, g, torch.float64)
    grid = time_grid(SCH, 100)
    cg = classifier_guidance(mixture2d.eps_fn(SCH), _class_log_prob(mixture2d, CLASS_B), SCH, space, 1.0)
    pair = lambda x, t: (mixture2d.eps(x, SCH, t, CLASS_B), mixture2d.eps(x, SCH, t))  # noqa: E731
    cfg = classifier_free_guidance(pair, 1.0)
    w = mixture2d.weights[CLASS_B] / mixture2d.weights[CLASS_B].sum()
    cond_mean = w @ mixture2d.means[CLASS_B]
    for fn in (cg, cfg):
        out = ddpm(fn, SCH, space, x_t, grid, generator=g).sample
        assert _class_fraction(mixture2d, out, CLASS_B) > 0.98
        se = out.std(0) / math.sqrt(len(out))
        assert ((out.mean(0) - cond_mean).abs() < 5 * se).all()


def test_guidance_scale_concentrates_samples(mixture2d):
    """For λ = 1, 2, 4 the mean log p₀(B | x) of the samples rises and their spread shrinks, monotonically."""
    space = DenseSpace((3000, 2))
    g = torch.Generator().manual_seed(1)
    x_t = prior_sample(SCH, space, g, torch.float64)
    grid = time_grid(SCH, 100)
    pair = lambda x, t: (mixture2d.eps(x, SCH, t, CLASS_B), mixture2d.eps(x, SCH, t))  # noqa: E731
    log_pc, spread = [], []
    for scale in (1.0, 2.0, 4.0):
        out = ddim(classifier_free_guidance(pair, scale), SCH, space, x_t, grid).sample
        log_pc.append(float(_class_log_prob(mixture2d, CLASS_B)(out, torch.zeros(len(out), dtype=torch.float64)).mean()))
        spread.append(float(torch.linalg.det(torch.cov(out.T))))
    assert log_pc[0] < log_pc[1] < log_pc[2]
    assert spread[0] > spread[1] > spread[2]


def test_energy_guidance_moves_the_mean_by_the_closed_form_amount():
    """Data N(μ₀, v₀I); the tilt e^{−k‖x − a‖²/2} gives N(μ₁, v₁I), 1/v₁ = 1/v₀ + k, μ₁ = v₁(μ₀/v₀ + k a).
    With the exact noisy energy E_t = log q_t − log p_t (both Gaussian) the guided sampler's mean is μ₁ (5 SE)."""
    mu0, v0, k, a = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5, 3.0, torch.tensor([-1.0, 1.0], dtype=torch.float64)
    v1 = 1 / (1 / v0 + k)
    mu1 = v1 * (mu0 / v0 + k * a)
    data = GaussianMixture(torch.ones(1), mu0[None], torch.full((1, 2), v0), diagonal=True)
    tilted = GaussianMixture(torch.ones(1), mu1[None], torch.full((1, 2), v1), diagonal=True)

    def energy(x, t):
        return data.log_prob(x, SCH, t) - tilted.log_prob(x, SCH, t)

    space = DenseSpace((2000, 2))
    g = torch.Generator().manual_seed(2)
    out = ddpm(energy_guidance(data.eps_fn(SCH), energy, SCH, space, 1.0), SCH, space,
               prior_sample(SCH, space, g, torch.float64), time_grid(SCH, 100), generator=g).sample
    se = math.sqrt(v1 / len(out))
    assert ((out.mean(0) - mu1).abs() < 5 * se).all()
    # the spread is only approximately v₁: ancestral β̃ steps at K = 100 shrink it by a few per cent
    assert float(out.var(0).mean()) == pytest.approx(v1, rel=0.15)


@pytest.mark.parametrize("t0", [100.0, 300.0, 600.0])
def test_sdedit_retained_correlation_matches_closed_form(t0):
    """Gaussian data N(0, v₀): starting from x_{t₀} = α x_ref + σ z, the deterministic PF-ODE (DDIM η = 0) keeps
    corr(x₀, x_ref) = α√v₀/√(α²v₀ + σ²) and exact posterior sampling (DDPM, β̃) keeps α²v₀/(α²v₀ + σ²) (±0.02)."""
    v0 = 0.7
    data = GaussianMixture(torch.ones(1), torch.zeros(1, 1), torch.full((1, 1), v0), diagonal=True)
    g = torch.Generator().manual_seed(3)
    ref, _ = data.sample(10000, g)
    space = DenseSpace(ref.shape)
    t = torch.tensor(t0, dtype=torch.float64)
    a2, s2 = float(SCH.alpha_sq(t)), float(SCH.sigma_sq(t))
    grid = time_grid(SCH, 50, t_start=t0)
    x_start = sdedit_start(ref, SCH, space, t0, generator=g)
    det = ddim(data.eps_fn(SCH), SCH, space, x_start, grid).sample
    sto = ddpm(data.eps_fn(SCH), SCH, space, x_start, grid, generator=g).sample
    corr = lambda u: float(torch.corrcoef(torch.stack([u[:, 0], ref[:, 0]]))[0, 1])  # noqa: E731
    assert corr(det) == pytest.approx(math.sqrt(a2 * v0 / (a2 * v0 + s2)), abs=0.02)
    assert corr(sto) == pytest.approx(a2 * v0 / (a2 * v0 + s2), abs=0.02)


def test_inpainting_recovers_the_exact_conditional():
    """Correlated 2-D Gaussian (ρ = 0.9), x₁ = 1.5 known: the exact conditional mean of x₂ is ρ x₁ = 1.35.
    Replacement is known to under-condition (measured ≈ 0.89 here); RePaint's resampling (r = 10) must come
    within 0.08 of 1.35 and much closer than replacement."""
    rho = 0.9
    cov = torch.tensor([[[1.0, rho], [rho, 1.0]]], dtype=torch.float64)
    data = GaussianMixture(torch.ones(1), torch.zeros(1, 2), cov)
    n = 2000
    known = torch.zeros(n, 2, dtype=torch.float64)
    known[:, 0] = 1.5
    mask = torch.zeros(n, 2, dtype=torch.bool)
    mask[:, 0] = True
    space = DenseSpace((n, 2))
    g = torch.Generator().manual_seed(4)
    grid = time_grid(SCH, 50)
    out = repaint(data.eps_fn(SCH), SCH, space, prior_sample(SCH, space, g, torch.float64), grid, known, mask, resample=10, generator=g)
    assert out.nfe == 500 and (out.sample[:, 0] == 1.5).all()
    assert float(out.sample[:, 1].mean()) == pytest.approx(rho * 1.5, abs=0.08)
    rep = ddpm(replacement_inpainting(data.eps_fn(SCH), SCH, space, known, mask, g), SCH, space,
               prior_sample(SCH, space, g, torch.float64), grid, generator=g).sample
    rep = paste_known(rep, known, mask)
    assert torch.isfinite(rep).all() and (rep[:, 0] == 1.5).all()
    assert abs(float(rep[:, 1].mean()) - 1.35) > 3 * abs(float(out.sample[:, 1].mean()) - 1.35)


def test_batched_pair_makes_one_call():
    """batched_pair evaluates condition and null condition in one doubled call and splits it back."""
    calls = []

    def model(x, t, y):
        calls.append(x.shape[0])
        return x * y[:, None]

    pair = batched_pair(model, {"y": torch.full((3,), 2.0)}, {"y": torch.zeros(3)})
    c, u = pair(torch.ones(3, 2), torch.zeros(3))
    assert calls == [6] and (c == 2).all() and (u == 0).all()
    with pytest.raises(ValueError, match="same keys"):
        batched_pair(model, {"y": torch.ones(1)}, {"z": torch.ones(1)})


def test_gaussian_regressor_guidance_and_bad_input():
    """A regressor's Gaussian likelihood has gradient −(f − y)/w² · ∂f; NaN guidance values are refused."""
    lp = gaussian_log_likelihood(lambda x, t: x.sum(1, keepdim=True), torch.tensor([[1.0]]), 0.5)
    x = torch.zeros(4, 2, dtype=torch.float64)
    guided = classifier_guidance(lambda x, t: torch.zeros_like(x), lp, SCH, DenseSpace(x.shape), 1.0)
    t = torch.full((4,), 500.0, dtype=torch.float64)
    expected = -SCH.sigma(t)[:, None] * (1.0 / 0.25) * torch.ones(4, 2, dtype=torch.float64)
    torch.testing.assert_close(guided(x, t), expected)
    bad = classifier_guidance(lambda x, t: x, lambda x, t: x.sum(1) * float("nan"), SCH, DenseSpace(x.shape))
    with pytest.raises(ValueError, match="NaN"):
        bad(x, t)
    with pytest.raises(ValueError, match="t_start must lie"):
        time_grid(SCH, 10, t_start=2000.0)
