"""ς helpers on the schedule, sampler step callbacks, the step-loop RK45 and the progress bar."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

import sciddpm.samplers as S
from sciddpm.oracle import GaussianMixture
from sciddpm.progress import sampling_progress
from sciddpm.schedules import LinearSchedule, NoiseSchedule, VPSchedule
from sciddpm.spaces import DenseSpace
from tests.test_samplers import LABELS, STOCHASTIC, _grid, run_sampler

F64 = torch.float64
MIX = GaussianMixture(torch.tensor([0.6, 0.4]), torch.tensor([[-1.0, 0.5], [1.0, -0.5]]),
                      torch.tensor([[0.3, 0.2], [0.2, 0.4]]), diagonal=True)


# ---------------------------------------------------------------------------------------------- ς helpers
def test_varsigma_closed_form_and_inverse(schedule: NoiseSchedule) -> None:
    """ς(t) = σ_t/α_t (closed form from the schedule's own σ, α) to 1e-12 relative, t(ς(t)) = t, ς = 0 → t_min,
    ς beyond ς(t_max) clamps to t_max, negative ς raises."""
    t = torch.linspace(schedule.t_min, schedule.t_max, 41, dtype=F64)
    vs = schedule.varsigma(t)
    ref = schedule.sigma(t) / schedule.alpha(t)
    torch.testing.assert_close(vs, ref, rtol=1e-12, atol=0.0)
    inner = vs > 0
    back = schedule.time_at_varsigma(vs[inner])
    torch.testing.assert_close(back, t[inner], rtol=1e-9, atol=1e-9 * schedule.t_max)
    assert float(schedule.time_at_varsigma(0.0)) == schedule.t_min
    assert float(schedule.time_at_varsigma(2 * float(vs[-1]))) == pytest.approx(schedule.t_max, rel=1e-12)
    with pytest.raises(ValueError, match="varsigma"):
        schedule.time_at_varsigma(-1.0)


def test_varsigma_known_values() -> None:
    """Linear DDPM: ς(0) = 0 and ς(n) = √((1 − ᾱ_n)/ᾱ_n); VP: ς(1) = √(e^{∫β} − 1) with ∫_0^1 β = (β_min + β_max)/2."""
    lin = LinearSchedule(1000)
    abar = lin.alphas_cumprod[500]
    assert float(lin.varsigma(0)) == 0.0
    assert float(lin.varsigma(500)) == pytest.approx(math.sqrt((1 - float(abar)) / float(abar)), rel=1e-12)
    assert float(VPSchedule().varsigma(1.0)) == pytest.approx(math.sqrt(math.expm1(10.05)), rel=1e-12)


# ---------------------------------------------------------------------------------------------- callbacks
def _run(label: str, schedule: NoiseSchedule, steps: int, callback: Any = None) -> S.SamplerOutput:
    space = DenseSpace((32, 2))
    x_T = S.prior_sample(schedule, space, torch.Generator().manual_seed(0), F64)
    extra = {} if callback is None else {"callback": callback}
    return run_sampler(label, MIX.eps_fn(schedule), schedule, space, x_T, _grid(label, schedule, steps),
                       torch.Generator().manual_seed(1), **extra)


@pytest.mark.parametrize("schedule_key", ["linear", "vp"])
@pytest.mark.parametrize("label", LABELS)
def test_callback_reports_every_step(label: str, schedule_key: str) -> None:
    """Fixed grids: exactly K calls with i = 0..K−1, total K, progress (i+1)/K, t > s along the grid, non-decreasing
    NFE ending at the output's NFE. RK45: ≥ 1 call per accepted step (i = 0, 1, …, total None), progress rising
    to 1 and s ending at t_min. Always: x in the last call is the output, and the output is bit-identical to a
    run without a callback."""
    schedule = LinearSchedule(1000) if schedule_key == "linear" else VPSchedule()
    steps = 7
    seen: list[S.SamplerStep] = []
    out = _run(label, schedule, steps, seen.append)
    plain = _run(label, schedule, steps)
    assert torch.equal(out.sample, plain.sample) and out.nfe == plain.nfe
    assert [st.i for st in seen] == list(range(len(seen)))
    assert torch.equal(seen[-1].x, out.sample)
    # rk45's tolerance check re-solves after the last reported step; its NFE is in out.info (issue 14)
    assert seen[-1].nfe == (out.info["nfe_solve"] if label == "rk45" else out.nfe)
    assert all(a.nfe <= b.nfe for a, b in zip(seen, seen[1:]))
    assert all(float(st.s) < float(st.t) for st in seen)
    assert float(seen[-1].s) == schedule.t_min
    if label == "rk45":
        assert len(seen) >= 2 and all(st.total is None for st in seen)
        prog = [st.progress for st in seen]
        assert all(a < b for a, b in zip(prog, prog[1:])) and prog[-1] == pytest.approx(1.0, abs=1e-12)
    else:
        grid = _grid(label, schedule, steps)
        assert len(seen) == steps and all(st.total == steps for st in seen)
        assert [st.progress for st in seen] == [(i + 1) / steps for i in range(steps)]
        assert all(torch.equal(st.t, grid[st.i]) and torch.equal(st.s, grid[st.i + 1]) for st in seen)
    has_x0 = label not in ("euler_maruyama", "pc")
    assert all((st.x0 is not None) == has_x0 for st in seen)
    if has_x0:  # the last step lands on the data end: its x̂₀ prediction is (close to) the sample
        assert seen[-1].x0.shape == out.sample.shape and torch.isfinite(seen[-1].x0).all()


def test_callback_x0_is_the_denoised_prediction() -> None:
    """DDIM's reported x̂₀ is (x_t − σ_t ε̂)/α_t of the state before the step (checked on step 0, x_t = x_T)."""
    schedule = VPSchedule()
    space = DenseSpace((8, 2))
    x_T = S.prior_sample(schedule, space, torch.Generator().manual_seed(0), F64)
    grid = S.time_grid(schedule, 5)
    seen: list[S.SamplerStep] = []
    S.ddim(MIX.eps_fn(schedule), schedule, space, x_T, grid, callback=seen.append)
    t = grid[0]
    eps = MIX.eps_fn(schedule)(x_T, t.expand(8))
    torch.testing.assert_close(seen[0].x0, (x_T - schedule.sigma(t) * eps) / schedule.alpha(t), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- RK45
def test_rk45_step_loop_matches_solve_ivp_and_exact_flow() -> None:
    """The RK45 step loop against (a) scipy's solve_ivp on the same ODE dy/dς = ε̂ (same tolerances: equal to
    1e-12, it is the same Dormand–Prince sequence) and (b) the exact probability-flow map of a single diagonal
    Gaussian N(μ, diag v): y(ς) − μ = √((v + ς²)/(v + ς_T²)) (y_T − μ), at x = α y (rtol = atol = 1e-9: error
    < 1e-6)."""
    from scipy.integrate import solve_ivp

    schedule = VPSchedule()
    mu, var = torch.tensor([[0.7, -1.2, 0.1]], dtype=F64), torch.tensor([[0.25, 0.5, 0.05]], dtype=F64)
    gauss = GaussianMixture(torch.tensor([1.0]), mu, var, diagonal=True)
    space = DenseSpace((16, 3))
    x_T = S.prior_sample(schedule, space, torch.Generator().manual_seed(3), F64)
    grid = S.time_grid(schedule, 1)
    out = S.probability_flow_rk45(gauss.eps_fn(schedule), schedule, space, x_T, grid, rtol=1e-9, atol=1e-9)

    vs_T, vs_0 = schedule.varsigma(grid[0]), schedule.varsigma(grid[-1])
    a_T, a_0 = schedule.alpha(grid[0]), schedule.alpha(grid[-1])
    y_T = x_T / a_T
    exact = a_0 * (mu + ((var + vs_0**2) / (var + vs_T**2)).sqrt() * (y_T - mu))
    assert float((out.sample - exact).abs().max()) < 1e-6

    def rhs(vs: float, y: np.ndarray) -> np.ndarray:
        t = schedule.time_at_varsigma(vs)
        yt = torch.from_numpy(y).reshape(16, 3)
        return gauss.eps_fn(schedule)(yt * schedule.alpha(t), t.expand(16)).reshape(-1).numpy()

    # error control is per sample (issue 14): for one sample it is scipy's own norm, so the sequences agree
    one = S.probability_flow_rk45(gauss.eps_fn(schedule), schedule, DenseSpace((1, 3)), x_T[:1], grid, rtol=1e-9,
                                  atol=1e-9, check="off")
    sol = solve_ivp(lambda vs, y: rhs(vs, np.tile(y, 16))[:3], (float(vs_T), float(vs_0)), y_T[0].numpy(),
                    method="RK45", rtol=1e-9, atol=1e-9)
    ref = torch.from_numpy(sol.y[:, -1]).reshape(1, 3) * a_0
    torch.testing.assert_close(one.sample, ref, rtol=1e-12, atol=1e-12)
    assert one.nfe == sol.nfev


# ---------------------------------------------------------------------------------------------- progress
def test_progress_bar_counts_sampler_steps(capsys: pytest.CaptureFixture[str]) -> None:
    """Heun on 6 steps makes 11 or 12 network calls but the bar counts 6 steps and shows the NFE; RK45's bar
    reaches its total (ς fraction 1)."""
    schedule = LinearSchedule(1000)
    with sampling_progress(6, "heun") as cb:
        out = _run("heun", schedule, 6, cb)
    err = capsys.readouterr().err
    assert "6/6" in err and f"nfe={out.nfe}" in err and out.nfe == 11
    with sampling_progress(None, "rk45") as cb:
        out = _run("rk45", schedule, 1, cb)
    err = capsys.readouterr().err
    assert "100.0/100" in err and f"nfe={out.info['nfe_solve']}" in err
    with sampling_progress(6, "quiet", enabled=False) as cb:
        _run("ddim_eta0", schedule, 6, cb)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="total"):
        with sampling_progress(0):
            pass


def test_sampler_step_progress_default() -> None:
    """A SamplerStep built by a sampler outside this module (e.g. RePaint) gets progress (i + 1)/K by default;
    without a total the progress must be given."""
    z = torch.zeros(())
    assert S.SamplerStep(2, 8, z, z, z, None, 3).progress == 3 / 8
    assert S.SamplerStep(0, None, z, z, z, None, 5, 0.25).progress == 0.25
    with pytest.raises(ValueError, match="progress"):
        S.SamplerStep(0, None, z, z, z, None, 5)
