"""Torus oracle: samplers and a trained network on T² against an exact wrapped-normal mixture (TV and KL on a grid).

Torus diffusion as in Jing et al. (2022, *Torsional diffusion*) and De Bortoli et al. (2022, *Riemannian
score-based generative modelling*): VE noise x_t = wrap(x₀ + σ_t ε), σ_t = σ_min (σ_max/σ_min)^t with σ_min = 0.01,
σ_max = 2π (the marginal at σ_max is within TV 3.4e-9 of the uniform prior on T²), the wrapped-normal score as
the training target (``TorusSpace.eps_target``) and samplers that wrap after every step (``TorusSpace.project``).

Problem: ``torus_mixture()``, 3 components on T² = (−π, π]², weights (0.45, 0.35, 0.2), means (2.7, −2.8),
(−1.2, 0.6), (0.6, 3.0), per-angle stds (0.5, 0.4), (0.35, 0.7), (0.6, 0.3): the first sits on the corner
(±π, ±π) and the third on the edge x₂ = ±π, so a method that ignores wrapping shows it. The target is the exact
p_{σ_min} (``WrappedNormalMixture.cell_probabilities``: exact cell masses of a 16×16 grid); a row's TV = ½Σ|p̂ − p|
and KL(p̂‖p) are measured on that grid with n samples, so they include the sampling noise of n draws, shown by
the ``exact samples`` row (n exact draws of p_{σ_min}, the floor every row approaches).

Rows: Euler–Maruyama (reverse SDE), Heun (EDM's 2nd-order PF-ODE), DDIM (Euler on the PF-ODE) and DPM-Solver++(2M)
with the exact ε* = −σ_t ∇log p_t (``WrappedNormalMixture.eps``) at K = 10, 20, 50, 100, 200 (and 500 for
Euler–Maruyama) uniform-in-t steps (geometric in σ) from the same uniform x_T; baselines: the uniform prior itself; the
torus samplers with the score of the *unwrapped* Gaussian mixture (``sciddpm.oracle.GaussianMixture`` with the
same means and variances: what the torus got before, the score without the image sum); the small network
(``TorusMLP``: periodic inputs cos/sin) trained with ``denoising_loss`` on ``TorusSpace`` (wrapped-normal
target), and the same network trained as naive Euclidean VE diffusion (``DenseSpace``, plain ε target, prior
N(0, σ_max²) with σ_max = 50, raw angles as input, samples wrapped only at the end).

Usage: ``python benchmarks/torus_oracle.py [--quick] [--threads 1]``
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._report import write_results  # noqa: E402
from sciddpm import samplers as S  # noqa: E402
from sciddpm.objectives import denoising_loss, eps_predictor  # noqa: E402
from sciddpm.oracle import GaussianMixture  # noqa: E402
from sciddpm.schedules import VESchedule  # noqa: E402
from sciddpm.spaces import DenseSpace, Space, TorusSpace, wrap_angle  # noqa: E402
from sciddpm.torus import WrappedNormalMixture, grid_distances, histogram, uniform_prior_tv_bound  # noqa: E402

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX, EUCLID_SIGMA_MAX = 0.01, 2 * math.pi, 50.0
BINS = 16


def torus_mixture() -> WrappedNormalMixture:
    """The benchmark's T² mixture (see the module docstring)."""
    return WrappedNormalMixture(torch.tensor([0.45, 0.35, 0.2]),
                                torch.tensor([[2.7, -2.8], [-1.2, 0.6], [0.6, 3.0]]),
                                torch.tensor([[0.5, 0.4], [0.35, 0.7], [0.6, 0.3]]))


def torus_schedule() -> VESchedule:
    """VE noise on the torus: σ_min = 0.01, σ_max = 2π."""
    return VESchedule(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)


def unwrapped_mixture(mixture: WrappedNormalMixture) -> GaussianMixture:
    """The Gaussian mixture in R^d with the torus mixture's means and variances (its score ignores the images)."""
    return GaussianMixture(mixture.weights, mixture.means, mixture.stds ** 2, diagonal=True)


# ==================================================================================================
# The small network
# ==================================================================================================
class TorusMLP(nn.Module):
    """ε̂(x, t): an MLP on periodic features [cos x, sin x] (``periodic``; raw x/√(σ_t² + 1) otherwise, EDM's c_in
    for unit-scale data) and the time features [t, sin(πjt), cos(πjt)]_{j=1..4}, three SiLU hidden layers."""

    def __init__(self, schedule: VESchedule, dim: int = 2, hidden: int = 128, periodic: bool = True) -> None:
        super().__init__()
        self.schedule, self.periodic = schedule, periodic
        width = (2 * dim if periodic else dim) + 9
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = t.to(x.dtype).reshape(-1, 1)
        j = torch.arange(1, 5, dtype=x.dtype, device=x.device)
        time = torch.cat([t, torch.sin(math.pi * j * t), torch.cos(math.pi * j * t)], dim=-1)
        if self.periodic:
            feats = torch.cat([torch.cos(x), torch.sin(x)], dim=-1)
        else:
            feats = x / torch.sqrt(self.schedule.sigma_sq(t.to(F64)).to(x.dtype) + 1.0)
        return self.net(torch.cat([feats, time], dim=-1))


def train_network(mixture: WrappedNormalMixture, *, torus: bool = True, steps: int = 1500, batch: int = 512,
                  n_train: int = 20_000, lr: float = 3e-3, seed: int = 0) -> tuple[TorusMLP, VESchedule, list[float]]:
    """Train ``TorusMLP`` with ``denoising_loss`` (ε-MSE, simple weighting) on ``n_train`` fixed samples of the
    mixture: on ``TorusSpace`` with σ_max = 2π (wrapped-normal target), or (``torus=False``) as Euclidean VE on
    ``DenseSpace`` with σ_max = 50 and the plain ε target. Adam, cosine-decayed learning rate, float32.
    Returns (network, schedule, per-step losses)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    schedule = torus_schedule() if torus else VESchedule(sigma_min=SIGMA_MIN, sigma_max=EUCLID_SIGMA_MAX)
    net = TorusMLP(schedule, mixture.dim, periodic=torus)
    data = mixture.sample(n_train, gen).to(torch.float32)
    space: Space = TorusSpace(DenseSpace((batch, mixture.dim))) if torus else DenseSpace((batch, mixture.dim))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in range(steps):
        x0 = data[torch.randint(0, n_train, (batch,), generator=gen)]
        loss = denoising_loss(net, schedule, space, x0, generator=gen).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return net, schedule, losses


def network_eps(net: TorusMLP, schedule: VESchedule, space: Space) -> Callable[[Tensor, Tensor], Tensor]:
    """The trained network as a sampler's ε-function (no gradients, float32 inside)."""
    inner = eps_predictor(net, schedule, space)

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        with torch.no_grad():
            return inner(x.to(torch.float32), t).to(x.dtype)

    return eps_fn


# ==================================================================================================
# Sampling and scoring
# ==================================================================================================
SAMPLER_OPTIONS: dict[str, dict[str, Any]] = {"euler_maruyama": {}, "pc": {}, "ddpm": {}, "heun": {}, "ddim": {},
                                              "dpm_solver_pp_2m": {}}
STOCHASTIC = {"euler_maruyama", "pc", "ddpm"}


def run(sampler: str, eps_fn: Callable[[Tensor, Tensor], Tensor], schedule: VESchedule, space: Space, steps: int,
        seed: int = 1) -> tuple[Tensor, int]:
    """Sample from the space's prior (uniform on the torus, N(0, σ_max²) on R^d) with ``steps`` uniform-in-t steps;
    returns (samples, NFE): a torus sampler's own output (it
    wraps every step), Euclidean samples wrapped only at the end. Fixed seeds: the prior from ``seed``, the sampler's noise from
    ``seed + 1``."""
    x_T = S.prior_sample(schedule, space, torch.Generator().manual_seed(seed), F64)
    options = dict(SAMPLER_OPTIONS[sampler])
    if sampler in STOCHASTIC:
        options["generator"] = torch.Generator().manual_seed(seed + 1)
    out = S.get_sampler(sampler)(eps_fn, schedule, space, x_T, S.time_grid(schedule, steps), **options)
    return (out.sample if isinstance(space, TorusSpace) else wrap_angle(out.sample)), out.nfe


def score_samples(x: Tensor, p: Tensor) -> dict[str, float]:
    """TV and KL(p̂‖p) of samples x [n, 2] on the BINS² grid against exact cell probabilities p."""
    tv, kl = grid_distances(histogram(x, BINS), p)
    return {"tv": tv, "kl": kl}


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and write benchmarks/results/torus_oracle.{json,md}."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and steps (a smoke run)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = 5_000 if args.quick else 20_000
    step_list = [10, 50] if args.quick else [10, 20, 50, 100, 200, 500]
    samplers = ["euler_maruyama", "heun"] if args.quick else ["euler_maruyama", "heun", "ddim", "dpm_solver_pp_2m"]
    mixture, schedule = torus_mixture(), torus_schedule()
    p = mixture.cell_probabilities(BINS, SIGMA_MIN)
    space = TorusSpace(DenseSpace((n, 2)))
    rows: list[dict[str, Any]] = []

    def add(method: str, score: str, sampler: str, steps: Any, nfe: Any, x: Tensor, seconds: float) -> None:
        rows.append({"method": method, "score": score, "sampler": sampler, "steps": steps, "nfe": nfe,
                     **score_samples(x, p), "seconds": round(seconds, 2)})

    start = time.time()
    add("exact samples (noise floor)", "-", "-", "-", 0, mixture.sample(n, torch.Generator().manual_seed(7), SIGMA_MIN), 0)
    add("uniform prior", "-", "-", 0, 0, space.prior(SIGMA_MAX, torch.Generator().manual_seed(1), F64), 0)
    exact, unwrapped = mixture.eps_fn(schedule), unwrapped_mixture(mixture).eps_fn(schedule)
    for sampler in samplers:
        for steps in step_list if sampler == "euler_maruyama" else step_list[:-1]:
            t0 = time.time()
            x, nfe = run(sampler, exact, schedule, space, steps)
            add("torus, exact wrapped score", "exact", sampler, steps, nfe, x, time.time() - t0)
            print(rows[-1], flush=True)
    for sampler in ["euler_maruyama", "heun"]:
        for steps in [step_list[-1]] if not args.quick else step_list[-1:]:
            t0 = time.time()
            x, nfe = run(sampler, unwrapped, schedule, space, steps)
            add("torus, unwrapped Gaussian score (no images)", "exact", sampler, steps, nfe, x, time.time() - t0)
    extra: dict[str, Any] = {"prior_tv_bound_T2": uniform_prior_tv_bound(SIGMA_MAX, 2)}
    train_steps = 300 if args.quick else 1500
    for torus in (True, False):
        t0 = time.time()
        net, sch, losses = train_network(mixture, torus=torus, steps=train_steps)
        train_s = time.time() - t0
        label = "torus TorusMLP (wrapped-normal target)" if torus else "naive Euclidean VE (plain ε, wrap at end)"
        extra[f"train_seconds_{'torus' if torus else 'euclidean'}"] = round(train_s, 1)
        extra[f"final_loss_{'torus' if torus else 'euclidean'}"] = sum(losses[-100:]) / len(losses[-100:])
        sp: Space = space if torus else DenseSpace((n, 2))
        for sampler in ["euler_maruyama", "heun"]:
            for steps in [100] if not args.quick else [50]:
                t0 = time.time()
                x, nfe = run(sampler, network_eps(net, sch, sp), sch, sp, steps)
                add(label, f"trained {train_steps} steps", sampler, steps, nfe, x, time.time() - t0)
                print(rows[-1], flush=True)
    extra["total_seconds"] = round(time.time() - start, 1)
    notes = f"""
TV and KL(p̂‖p) on a {BINS}×{BINS} grid of T² with n = {n} samples per row, against exact cell masses of
p_{{σ_min}}; `exact samples` is the floor set by n (its TV is the sampling noise alone). The VE schedule on the
torus is σ_min = {SIGMA_MIN}, σ_max = 2π; TV(p_{{σ_max}}, uniform) ≤ {extra['prior_tv_bound_T2']:.2g} (the bound of
`sciddpm.torus.uniform_prior_tv_bound`). NFE per row; seconds = sampling wall time on this machine (one thread).
Trained rows: `TorusMLP` (3×128 SiLU) trained {train_steps} Adam steps (batch 512, lr 3e-3 cosine) on 20 000
fixed samples with `denoising_loss`; the Euclidean row uses VE σ_max = 50 on `DenseSpace` (a Gaussian prior needs
σ_max far above the data's scale) and wraps the samples only at the end.
DPM-Solver++(2M) forms D = x̂₀ᵢ + (x̂₀ᵢ − x̂₀ᵢ₋₁)/2r through `Space.difference` (the shortest arc on the torus):
written as (1 + 1/2r) x̂₀ᵢ − x̂₀ᵢ₋₁/2r it mixes two predictions 2π apart whenever a state wrapped between steps;
measured with n = 10 000 on the same problem, that form gave TV 0.146 (20 steps) and 0.085 (100 steps) against
0.046 and 0.041 with the wrapped difference (floor 0.039).
Papers: Jing et al. 2022 (Torsional diffusion, NeurIPS); De Bortoli et al. 2022 (Riemannian score-based
generative modelling, NeurIPS); Song et al. 2021 (score SDEs, ICLR); Karras et al. 2022 (Heun).
"""
    write_results("torus_oracle" if not args.quick else "torus_oracle_quick", rows,
                  title="Torus oracle: samplers and a trained network vs an exact wrapped-normal mixture on T²",
                  notes=notes, extra=extra)


if __name__ == "__main__":
    main()
