"""The QM9 NLL benchmark's pieces (benchmarks/qm9_nll.py) on the committed subset: shared draws and network calls,
per-molecule units, and an exact oracle (isotropic Gaussian data on the molecule space)."""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.images_fashion import CachedEps
from benchmarks.qm9_edm import gamma_table
from benchmarks.qm9_nll import METHODS, qm9_test_batch, speed_up, summarise, variance_elbos
from sciddpm.domains.molecules.adapter import DEFAULT_PATH, EDM_SCHEDULE, MoleculesDomain
from sciddpm.objectives import eps_predictor
from sciddpm.samplers import time_grid
from sciddpm.schedules import schedule_from_config
from sciddpm.variances import GammaTable

TINY = {"n_layers": 2, "hidden_nf": 16}


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        domain = MoleculesDomain({})
        schedule = schedule_from_config(EDM_SCHEDULE)
        net = domain.build_backbone(TINY, schedule).eval()  # untrained
        gamma = gamma_table(net, domain, schedule, domain.train_dataset({}), torch.device("cpu"), batches=1,
                            batch_size=8)
        batch = qm9_test_batch(domain, DEFAULT_PATH, 8)
        yield domain, schedule, net, gamma, batch
    finally:
        torch.set_num_threads(threads)


def test_three_variances_share_draws_and_calls(setup):
    domain, schedule, net, gamma, batch = setup
    space, x0, cond = domain.space_for(batch), domain.state_from(batch).double(), domain.network_condition(domain.space_for(batch))
    raw = eps_predictor(net, schedule, space, "eps", **cond)
    eps = CachedEps(raw)
    k = 4
    out = variance_elbos(eps, schedule, space, x0, time_grid(schedule, k), gamma)
    assert set(out) == set(METHODS)
    # σ(0) = 0: K − 1 KL steps + the decoder = K network calls for all three ELBOs (a cache hit needs equal x_t)
    assert eps.calls == k and eps.cache == {}
    for res in out.values():
        assert res.nll.shape == (8,) and torch.isfinite(res.nll).all()
    # the analytic row differs from β and β̃ only through its variances: rerun β without the cache, same seed
    again = variance_elbos(CachedEps(lambda x, t: raw(x, t)), schedule, space, x0, time_grid(schedule, k), gamma)
    torch.testing.assert_close(again["beta"].nll, out["beta"].nll, rtol=1e-12, atol=0)
    assert not torch.equal(out["analytic_dpm"].nll, out["beta"].nll)


def test_rows_use_molecule_degrees_of_freedom(setup):
    domain, schedule, net, gamma, batch = setup
    space, x0, cond = domain.space_for(batch), domain.state_from(batch).double(), domain.network_condition(domain.space_for(batch))
    res = variance_elbos(CachedEps(eps_predictor(net, schedule, space, "eps", **cond)), schedule, space, x0,
                         time_grid(schedule, 3), gamma)["analytic_dpm"]
    n_atoms = torch.bincount(batch.batch, minlength=8).double()
    dof = 3 * (n_atoms - 1) + 6 * n_atoms
    torch.testing.assert_close(res.dof.double(), dof)
    row = summarise("analytic_dpm", 3, res)
    assert row["method"] == "analytic_dpm" and row["K"] == 3
    assert row["nats_per_dof"] == pytest.approx(float(res.nll.sum() / dof.sum()), rel=1e-12)
    assert row["nll_nats_per_molecule"] == pytest.approx(float(res.nll.mean()), rel=1e-12)
    assert row["se"] == pytest.approx(float(res.nll.std()) / math.sqrt(8), rel=1e-12)


def test_speed_up_reads_the_reference_row():
    rows = [{"method": m, "K": k, "nll_nats_per_molecule": v} for m, k, v in
            [("beta", 1000, 50.0), ("analytic_dpm", 10, 60.0), ("analytic_dpm", 25, 49.0), ("analytic_dpm", 50, 45.0),
             ("beta", 25, 70.0), ("analytic_dpm", 1000, "not run (budget)")]]
    assert speed_up(rows, 1000) == {"reference_K": 1000, "target_beta": 50.0, "smallest_K_analytic": 25,
                                    "speed_up": 40.0}
    assert speed_up(rows[1:], 1000)["speed_up"] is None


def _gaussian_oracle(schedule, s: float):
    """Exact ε* and Γ for x₀ ~ N(0, s² P) on the space (P its projector): x_t ~ N(0, (α²s² + σ²) P), so
    E[ε|x_t] = σ x_t/(α²s² + σ²) and Γ_t = σ²/(α²s² + σ²)."""
    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t0 = t.reshape(-1)[0].double()
        return schedule.sigma(t0) / (schedule.alpha_sq(t0) * s**2 + schedule.sigma_sq(t0)) * x

    ts = torch.arange(1, schedule.num_steps + 1, dtype=torch.float64)
    g = schedule.sigma_sq(ts) / (schedule.alpha_sq(ts) * s**2 + schedule.sigma_sq(ts))
    return eps, GammaTable(ts, g, torch.zeros_like(g))


def test_gaussian_oracle_on_the_molecule_space(setup):
    domain, schedule, _, _, _ = setup
    batch = qm9_test_batch(domain, DEFAULT_PATH, 30)  # the subset's whole test split
    space = domain.space_for(batch)
    # unit-variance data: the true reverse variance is β, and Theorem 1 must give exactly that
    eps, gamma = _gaussian_oracle(schedule, 1.0)
    x0 = space.noise(generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = variance_elbos(CachedEps(eps), schedule, space, x0, time_grid(schedule, 10), gamma)
    torch.testing.assert_close(out["analytic_dpm"].nll, out["beta"].nll, rtol=1e-9, atol=1e-9)
    # s = 0.3: with exact ε and Γ the analytic chain is the true reverse process, so its −ELBO is the exact
    # −log N(x₀; 0, s² I_d) in expectation (the prior mismatch is < 1e-4 nats); β is far worse on every molecule
    s = 0.3
    eps, gamma = _gaussian_oracle(schedule, s)
    diffs, gaps = [], []
    for seed in range(3):
        x0 = s * space.noise(generator=torch.Generator().manual_seed(10 + seed), dtype=torch.float64)
        exact = 0.5 * (space.sum_per_sample(x0 * x0) / s**2 + space.dof * math.log(2 * math.pi * s**2))
        out = variance_elbos(CachedEps(eps), schedule, space, x0, time_grid(schedule, 10), gamma, seed=seed)
        diffs.append(out["analytic_dpm"].nll - exact)
        gaps.append(out["beta"].nll - out["analytic_dpm"].nll)
    d, g = torch.cat(diffs), torch.cat(gaps)
    se = float(d.std()) / math.sqrt(d.numel())
    assert abs(float(d.mean())) < 4 * se and se < 2.0
    assert float(g.min()) > 0 and float(g.mean()) > 10 * float(g.std()) / math.sqrt(g.numel())
