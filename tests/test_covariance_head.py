"""SN-/NPR-DPM second stage and DDIM-type sampling with optimal variances (Bao et al. 2022a, 2022b).

(a) ``fit_covariance_head`` learns NPR's E[(ε − ε̂)² | x_t] for a deliberately imperfect mean ε̂ = ε* + b on a
Gaussian mixture, whose closed form is Var[ε | x_t] + b²; (b) ``ddim(variance=...)`` keeps DDIM(η)'s mean and
adds exactly the requested noise, and the η = 0 (Analytic-/SN-DDIM) covariance is the optimal one by Monte Carlo;
(c) the image head on a frozen UNet: shapes, non-negativity, frozen trunk, shared trunk forward, training, export.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import Tensor, nn

from sciddpm import samplers as S
from sciddpm.domains.images.backbone import UNet
from sciddpm.domains.images.covariance_head import UNetCovarianceHead, train_image_covariance_head
from sciddpm.domains.images.data import load_fashion_mnist, to_model_range
from sciddpm.objectives import eps_predictor
from sciddpm.oracle import GaussianMixture
from sciddpm.schedules import DiscreteSchedule, LinearSchedule, VPSchedule
from sciddpm.spaces import DenseSpace
from sciddpm.variances import (analytic_variance, covariance_head_loss, diagonal_optimal_variance,
                               diagonal_variance_fn, fit_covariance_head)
from tests.domains.images.common import LINEAR_1000

F64 = torch.float64
SUBSET = Path(__file__).resolve().parent / "data" / "fashion_mnist_subset"
TINY = {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
        "dropout": 0.0, "norm_groups": 4}


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


MIX2 = GaussianMixture(
    torch.tensor([0.2, 0.5, 0.3]),
    torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]]),
    torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]], [[0.15, 0.0], [0.0, 0.15]]]),
)


def _var_eps(mixture: GaussianMixture, schedule, x: Tensor, t: Tensor) -> Tensor:
    """diag Var[ε | x_t] = (α_t²/σ_t²) diag Cov[x₀ | x_t], closed form for the mixture."""
    tt = torch.as_tensor(t, dtype=F64).reshape(-1, 1).expand(x.shape[0], 1)
    cov = torch.diagonal(mixture.x0_posterior_cov(x, schedule, tt.flatten()), dim1=1, dim2=2)
    return cov * schedule.alpha_sq(tt) / schedule.sigma_sq(tt)


# ==================================================================================================
# (a) fit_covariance_head against the closed form
# ==================================================================================================
class _MLPHead(nn.Module):
    """A tiny head on x only (the schedule below has a single time): softplus(MLP(x))."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)).double()

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return nn.functional.softplus(self.net(x))


def test_npr_fit_learns_the_closed_form_error_of_an_imperfect_mean():
    """One noise level (β = 0.5, so t ≡ 1), a 1-D two-component mixture and ε̂ = ε* + b with b = 0.5: NPR's
    minimiser is h*(x) = Var[ε|x_t] + b². The loss decomposes as L(h) = L(h*) + E(h − h*)², so the fit is judged
    by its excess risk E_{q_t}(h − h*)² on 20k fresh x_t. SGD on noisy targets is not exact, so we require
    (i) R² ≥ 0.9 against h* (excess ≤ 0.1 Var h*) and (ii) the bias resolved: excess ≤ 0.1 b⁴, i.e. far closer
    to h* than to the perfect-mean error Var[ε|x_t]; (iii) only trainable parameters move."""
    torch.manual_seed(0)
    schedule = DiscreteSchedule([0.5])
    mix = GaussianMixture(torch.tensor([0.4, 0.6]), torch.tensor([[-1.5], [1.0]]), torch.tensor([[[0.1]], [[0.3]]]))
    bias = 0.5
    head = _MLPHead()
    frozen = nn.Parameter(torch.ones(3, dtype=F64), requires_grad=False)
    head.register_parameter("frozen", frozen)
    g = torch.Generator().manual_seed(1)
    batches = [(x0, DenseSpace(x0.shape)) for x0, _ in (mix.sample(1024, g) for _ in range(10))]
    hist = fit_covariance_head(head, lambda space: (lambda x, t: mix.eps(x, schedule, t) + bias), schedule, batches,
                               kind="npr", steps=400, lr=3e-3, generator=g)
    assert len(hist) == 400 and all(math.isfinite(v) for v in hist)
    assert torch.equal(head.frozen, torch.ones(3, dtype=F64)) and not head.training
    x_t = mix.sample_marginal(schedule, 1.0, 20_000, torch.Generator().manual_seed(5))
    with torch.no_grad():
        h = head(x_t, torch.ones(20_000, dtype=F64))
    var = _var_eps(mix, schedule, x_t, torch.tensor(1.0, dtype=F64))
    excess = float(((h - var - bias**2) ** 2).mean())
    assert excess <= 0.1 * float((var + bias**2).var()), excess
    assert excess <= 0.1 * bias**4, excess


def test_fit_rejects_bad_input():
    head = _MLPHead()
    mean_for = lambda space: (lambda x, t: torch.zeros_like(x))  # noqa: E731
    with pytest.raises(ValueError, match="no data batches"):
        fit_covariance_head(head, mean_for, DiscreteSchedule([0.5]), [], steps=3)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        fit_covariance_head(head, mean_for, DiscreteSchedule([0.5]), [], steps=0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit_covariance_head(head.requires_grad_(False), mean_for, DiscreteSchedule([0.5]), [], steps=3)


# ==================================================================================================
# (b) DDIM with a given reverse variance
# ==================================================================================================
SCH = LinearSchedule(1000)


def test_ddim_variance_defaults_are_bit_identical():
    """η = 0 with a zero table is plain DDIM(η = 0); η = 1 with the β̃ table (or "beta_tilde") is DDIM(η = 1):
    the mean is DDIM(η)'s and the noise β̃ = c², drawn from the same generator, so the samples are identical."""
    space = DenseSpace((300, 2))
    eps_fn = MIX2.eps_fn(SCH)
    x_T = S.prior_sample(SCH, space, torch.Generator().manual_seed(3), F64)
    grid = S.time_grid(SCH, 12)
    plain = S.ddim(eps_fn, SCH, space, x_T, grid).sample
    zeros = S.ddim(eps_fn, SCH, space, x_T, grid, variance=torch.zeros(12, dtype=F64)).sample
    assert torch.equal(plain, zeros)
    table = torch.stack([SCH.posterior_variance(grid[i + 1], grid[i]) for i in range(12)])
    ref = S.ddim(eps_fn, SCH, space, x_T, grid, eta=1.0, generator=torch.Generator().manual_seed(4)).sample
    for variance in (table, "beta_tilde"):
        out = S.ddim(eps_fn, SCH, space, x_T, grid, eta=1.0, variance=variance, generator=torch.Generator().manual_seed(4))
        assert torch.equal(out.sample, ref) and out.nfe == 12
    with pytest.raises(ValueError, match="variance table has shape"):
        S.ddim(eps_fn, SCH, space, x_T, grid, variance=torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match="NaN, inf or negative"):
        S.ddim(eps_fn, SCH, space, x_T, grid, variance=lambda x, t, s, e: -torch.ones_like(x))


def test_ddim_adds_exactly_the_given_per_element_noise():
    """One step t_max → t_min of the VP SDE (σ(t_min) > 0, so noise is added): with a per-element variance
    v(x_T, ε̂), ddim(η, variance=v) − ddim(η, variance=0) = v^{1/2} z with z the generator's first draw, for
    η = 0 and η = 0.5 (the mean keeps DDIM(η)'s (σ_s² − η²β̃)^{1/2} ε̂ term)."""
    sch = VPSchedule()
    space = DenseSpace((64, 2))
    eps_fn = MIX2.eps_fn(sch)
    x_T = S.prior_sample(sch, space, torch.Generator().manual_seed(0), F64)
    grid = torch.tensor([sch.t_max, sch.t_min], dtype=F64)
    var_fn = lambda x, t, s, e: 0.01 + 0.02 * x**2 + 0.01 * e.abs()  # noqa: E731
    for eta in (0.0, 0.5):
        mean = S.ddim(eps_fn, sch, space, x_T, grid, eta=eta, variance=torch.zeros(1, dtype=F64)).sample
        noisy = S.ddim(eps_fn, sch, space, x_T, grid, eta=eta, variance=var_fn, generator=torch.Generator().manual_seed(9))
        z = torch.randn(space.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
        v = var_fn(x_T, None, None, eps_fn(x_T, grid[:1].expand(64)))
        torch.testing.assert_close(noisy.sample - mean, v.sqrt() * z, rtol=1e-12, atol=1e-12)
        # and the deterministic part is DDIM(η)'s mean, not DDIM(0)'s
        x0 = (x_T - sch.sigma(grid[0]) * eps_fn(x_T, grid[:1].expand(64))) / sch.alpha(grid[0])
        lam_sq = eta**2 * sch.posterior_variance(grid[1], grid[0])
        torch.testing.assert_close(mean, sch.alpha(grid[1]) * x0 + (sch.sigma_sq(grid[1]) - lam_sq).sqrt()
                                   * eps_fn(x_T, grid[:1].expand(64)), rtol=1e-12, atol=1e-12)


def test_ddim_type_optimal_covariance_by_monte_carlo():
    """For the DDIM(η = 0)-type process x_s = α_s x₀ + σ_s (x_t − α_t x₀)/σ_t and the fixed imperfect mean
    μ = α_s x̂₀ + σ_s ε̂ (ε̂ = ε* + b), E[(x_s − μ)_i² | x_t] by exact posterior sampling equals the η = 0 form of
    Theorem 1, (σ_t/α_{t|s} − σ_s)² (Var[ε|x_t] + b²)_i, within 5 standard errors (100k draws per x_t)."""
    g = torch.Generator().manual_seed(21)
    bias = torch.tensor([0.15, -0.3], dtype=F64)
    x_t = torch.tensor([[0.5, 0.2], [-1.0, 0.3], [1.2, -1.5]], dtype=F64)
    n = 100_000
    for t_val, s_val in ((300.0, 250.0), (100.0, 60.0), (700.0, 500.0)):
        t, s = torch.tensor(t_val, dtype=F64), torch.tensor(s_val, dtype=F64)
        eps_hat = MIX2.eps(x_t, SCH, t) + bias
        x0_hat = (x_t - SCH.sigma(t) * eps_hat) / SCH.alpha(t)
        mu = SCH.alpha(s) * x0_hat + SCH.sigma(s) * eps_hat
        x0 = MIX2.sample_posterior(x_t, SCH, t, n, generator=g)
        x_s = SCH.alpha(s) * x0 + SCH.sigma(s) * (x_t - SCH.alpha(t) * x0) / SCH.sigma(t)
        sq = (x_s - mu) ** 2
        mc, se = sq.mean(0), sq.std(0) / math.sqrt(n)
        v = diagonal_optimal_variance(SCH, s, t, _var_eps(MIX2, SCH, x_t, t) + bias**2, eta=0.0)
        assert ((v - mc).abs() < 5 * se).all(), (t_val, v, mc)


def test_sn_ddim_variance_averages_to_analytic_ddim():
    """With the exact mean, SN's per-element η = 0 variance c²(E[ε²|x] − ε*²) averaged over x_t ~ q_t equals
    Analytic-DDIM's scalar c²(1 − Γ) with Γ = E‖ε*‖²/d on the same samples, since E Var[ε|x] = 1 − Γ up to the
    Monte-Carlo error of that identity (4 SE); the callable is what ``ddim`` consumes and gives finite samples."""
    grid = S.time_grid(SCH, 10)
    g = torch.Generator().manual_seed(2)
    head = lambda x, t: _var_eps(MIX2, SCH, x, t) + MIX2.eps(x, SCH, t) ** 2  # noqa: E731  (SN: E[ε²|x_t])
    var_fn = diagonal_variance_fn(SCH, head, kind="sn", eta=0.0)
    for i in (0, 4, 8):
        t, s = grid[i], grid[i + 1]
        x = MIX2.sample_marginal(SCH, t, 20_000, g)
        eps_star = MIX2.eps(x, SCH, t)
        per = var_fn(x, t, s, eps_star)
        gamma = (eps_star**2).mean()
        ref = analytic_variance(SCH, s, t, gamma, eta=0.0)
        c2 = (SCH.sigma(t) / SCH.skip_alpha(s, t) - SCH.sigma(s)) ** 2
        identity = (_var_eps(MIX2, SCH, x, t) + eps_star**2 - 1).mean(1)  # zero-mean per sample
        tol = 4 * float(c2 * identity.std() / math.sqrt(len(identity)))
        assert abs(float(per.mean() - ref)) < tol, (i, float(per.mean()), float(ref))
    space = DenseSpace((200, 2))
    out = S.ddim(MIX2.eps_fn(SCH), SCH, space, S.prior_sample(SCH, space, g, F64), grid, variance=var_fn, generator=g)
    assert torch.isfinite(out.sample).all() and out.nfe == 10


# ==================================================================================================
# (c) the image head on a frozen UNet
# ==================================================================================================
def _unet() -> UNet:
    torch.manual_seed(0)
    return UNet(schedule=LINEAR_1000, zero_init=False, **TINY)


def test_image_head_shapes_nonnegativity_and_frozen_trunk():
    """[B, 1, 28, 28] ≥ 0, ≈ init_value at initialisation, depends on x_t and on t; gradients reach only the head."""
    unet = _unet()
    head = UNetCovarianceHead(unet, init_value=0.5)
    assert all(not p.requires_grad for p in unet.parameters())
    x = torch.randn(3, 1, 28, 28)
    t = torch.tensor([10.0, 500.0, 900.0], dtype=F64)
    out = head(x, t)
    assert out.shape == (3, 1, 28, 28) and (out >= 0).all() and (out - 0.5).abs().max() < 0.25
    assert not torch.allclose(out, head(x + 0.5 * torch.randn_like(x), t))
    assert not torch.allclose(out, head(x, t.flip(0) + 1.0))
    schedule = LinearSchedule(1000)
    space = DenseSpace((3, 1, 28, 28))
    loss = covariance_head_loss(head, eps_predictor(head.mean_model, schedule, space), schedule, space, x.clamp(-1, 1),
                                kind="sn", generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in unet.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.out.parameters())
    head.train()
    assert head.training and not unet.training
    with pytest.raises(ValueError, match="init_value must be > 0"):
        UNetCovarianceHead(unet, init_value=0.0)


def test_shared_trunk_forward_is_exact_and_runs_the_trunk_once():
    """After ``mean_model`` on the same x object and equal t, ``forward`` reuses the hidden state: the result equals
    a fresh forward exactly and the trunk runs once; a different x or t recomputes."""
    unet = _unet()
    head = UNetCovarianceHead(unet)
    calls = []
    unet.register_forward_hook(lambda *a: calls.append(1))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([30.0, 600.0], dtype=F64)
    fresh = head(x, t)
    eps = head.mean_model(x, t)
    torch.testing.assert_close(eps, unet(x, t), rtol=0, atol=0)
    calls.clear()
    shared = head(x, t.clone())
    assert len(calls) == 0 and torch.equal(shared, fresh)
    head.mean_model(x, t)
    head(x, t + 1.0)
    head.mean_model(x, t)
    head(x.clone(), t)
    assert len(calls) == 4


def test_fit_steps_reduce_the_loss_on_a_fixed_batch_and_export_roundtrip(tmp_path):
    """A few NPR fit steps on one fixed batch of real images lower the loss at fixed (t, ε) draws; the saved head
    (head tensors only) reloads onto the same UNet with identical outputs."""
    unet = _unet()
    head = UNetCovarianceHead(unet, init_value=0.1)
    u8, _ = load_fashion_mnist(SUBSET, "train")
    x0 = to_model_range(u8[:8])
    space = DenseSpace(x0.shape)
    schedule = LinearSchedule(1000)
    mean_for = lambda sp: eps_predictor(head.mean_model, schedule, sp)  # noqa: E731

    def loss() -> float:
        with torch.no_grad():
            return float(covariance_head_loss(head, mean_for(space), schedule, space, x0, kind="npr",
                                              generator=torch.Generator().manual_seed(3)))

    before = loss()
    fit_covariance_head(head, mean_for, schedule, [(x0, space)], kind="npr", steps=5, lr=1e-2,
                        generator=torch.Generator().manual_seed(3))
    assert loss() < before
    unet_state = {k: v.clone() for k, v in unet.state_dict().items()}
    assert all(torch.equal(v, unet_state[k]) for k, v in unet.state_dict().items())
    path = head.save(tmp_path / "head.safetensors")
    back = UNetCovarianceHead.load(path, unet)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5.0, 50.0], dtype=F64)
    assert torch.equal(back(x, t), head(x, t)) and back.config() == head.config()


def test_train_image_covariance_head_on_cpu():
    """The benchmark helper trains on device-resident random batches for the given steps, leaves bf16 off and the
    head in eval mode, and its head gives a valid SN-DDIM variance for ``ddim``."""
    unet = _unet()
    u8, _ = load_fashion_mnist(SUBSET, "train")
    schedule = LinearSchedule(1000)
    rng_before = torch.random.get_rng_state()
    head = train_image_covariance_head(unet, schedule, to_model_range(u8[:32]), kind="sn", steps=3, batch_size=4,
                                       lr=1e-3, device="cpu", seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert len(head.loss_history) == 3 and not head.autocast_bf16 and not head.training
    space = DenseSpace((2, 1, 28, 28))
    var_fn = diagonal_variance_fn(schedule, head, kind="sn", eta=0.0, data_range=(-1.0, 1.0))
    out = S.ddim(eps_predictor(head.mean_model, schedule, space), schedule, space,
                 S.prior_sample(schedule, space, torch.Generator().manual_seed(0)), S.time_grid(schedule, 3),
                 variance=var_fn, generator=torch.Generator().manual_seed(1))
    assert out.sample.shape == (2, 1, 28, 28) and torch.isfinite(out.sample).all()
    with pytest.raises(ValueError, match="x_train must be"):
        train_image_covariance_head(unet, schedule, torch.zeros(4, 28, 28), steps=1)


def test_error_floor_keeps_the_sn_decoder_variance_positive():
    """An SN head with E[ε²|x] ≤ ε̂² gives a zero decoder variance (λ² = 0 into σ = 0), which ``elbo`` rejects;
    ``error_floor`` restores λ² + c² · floor > 0 and a finite NLL, and leaves larger errors unchanged."""
    from sciddpm.likelihood import elbo

    x0, _ = MIX2.sample(50, torch.Generator().manual_seed(1))
    space = DenseSpace(x0.shape)
    grid = S.time_grid(SCH, 5)
    eps_fn = MIX2.eps_fn(SCH)
    head = lambda x, t: MIX2.eps(x, SCH, t) ** 2  # noqa: E731  (E[ε²|x] = ε̂²: zero estimated error)
    with pytest.raises(ValueError, match="decoder variance must be positive"):
        elbo(eps_fn, SCH, space, x0, grid, variance=diagonal_variance_fn(SCH, head, kind="sn"))
    floored = diagonal_variance_fn(SCH, head, kind="sn", error_floor=1e-6)
    assert torch.isfinite(elbo(eps_fn, SCH, space, x0, grid, variance=floored).nll).all()
    x, t, s = x0, grid[2], grid[3]
    big = lambda x, t: MIX2.eps(x, SCH, t) ** 2 + 0.5  # noqa: E731
    torch.testing.assert_close(diagonal_variance_fn(SCH, big, kind="sn", error_floor=1e-6)(x, t, s, eps_fn(x, t)),
                               diagonal_variance_fn(SCH, big, kind="sn")(x, t, s, eps_fn(x, t)), rtol=0, atol=0)
