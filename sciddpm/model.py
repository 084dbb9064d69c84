"""A trained model ready to sample: ``DiffusionModel`` (domain, EMA network, schedule, variance tables).

Shared by the engine's in-memory EMA model (``DiffusionModule.ema_model``) and a loaded export
(``sciddpm.export.load``), so both give identical samples. Samples are drawn on the network's device; the prior
draw x_T is made on the CPU so that a seed gives the same starting state on every device.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from .domain import Domain
from .objectives import eps_predictor
from .guidance import GuidanceContext, GuidanceHook, apply_guidance
from .samplers import SamplerOutput, StepCallback, get_sampler, prior_sample, time_grid
from .schedules import NoiseSchedule


# ==================================================================================================
# Sampling (shared by the in-memory EMA model and a loaded export, so both give identical samples)
# ==================================================================================================
def _accepts(fn: Any, name: str) -> bool:
    return name in inspect.signature(fn).parameters


@dataclass
class DiffusionModel:
    """A trained model ready to sample: domain (with its statistics), network (EMA weights), schedule."""

    domain: Domain
    net: nn.Module
    schedule: NoiseSchedule
    parameterization: str
    config: dict
    variances: dict[str, Tensor] = field(default_factory=dict)
    #: Analytic-DPM variance tables already built, by (grid, eta): built once per loaded export, not per call.
    _analytic_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @torch.no_grad()
    def sample(self, n: int, sampler: str = "ddim", steps: int = 50, seed: int = 0, grid: str = "uniform",
               progress: bool = False, variance: str = "beta_tilde", conditions: dict[str, Any] | None = None,
               guidance: GuidanceHook | Sequence[GuidanceHook] | None = None,
               callback: StepCallback | None = None, **sampler_options: Any) -> SamplerOutput:
        """Draw n samples: x_T ~ prior, then ``sampler`` on the grid ``self.grid(sampler, steps, grid)`` (a built-in
        kind, or ``optimised``: the grid saved in the export by ``sciddpm optimise-grid``).

        ``conditions``: per-sample conditions for the domain's ``sample_space`` (class labels, low-resolution
        inputs, property targets …; see the domain's ``condition_keys``); the returned ``SamplerOutput.space``
        carries them, so ``write_samples`` / ``evaluate`` see what was sampled. ``guidance``: hooks
        ``hook(eps_fn, GuidanceContext) -> eps_fn`` (``sciddpm.guidance.ClassifierFree``, ``ClassifierGuidance``,
        ``EnergyGuidance``) wrapped around the model's ε in order. ``variance`` (for ``ddpm``/``ddim``):
        ``beta_tilde`` (ddpm's default), ``beta`` or ``analytic`` (Analytic-DPM from the Γ table saved by
        ``estimate_variance``, with the domain's data range and last-step resolution). ``callback`` receives a
        ``SamplerStep`` after every sampler step; ``progress`` shows a bar that counts steps. ``sampler_options``
        go to the sampler (e.g. ``eta`` for ddim); unknown ones are a ValueError naming them. Where the domain sets
        ``threshold_x0`` (images), samplers that take ``clip_x0`` get the domain's ``data_range`` unless
        ``sampler_options`` has its own ``clip_x0`` (None: no thresholding).
        """
        if n < 1:
            raise ValueError(f"number of samples must be >= 1, got {n}")
        fn = get_sampler(sampler)
        accepted = set(inspect.signature(fn).parameters) - {"eps_fn", "schedule", "space", "x", "grid", "callback",
                                                             "generator", "variance"}
        unknown = sorted(set(sampler_options) - accepted)
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} for sampler {sampler!r}; valid options: "
                             f"{', '.join(sorted(accepted)) or 'none'}")
        if "clip_x0" in accepted and "clip_x0" not in sampler_options and self.domain.threshold_x0 \
                and self.domain.data_range is not None:
            sampler_options = {**sampler_options, "clip_x0": tuple(float(v) for v in self.domain.data_range)}
        self.net.eval()
        gen = torch.Generator().manual_seed(seed)
        space = self.domain.sample_space(n, gen, conditions)
        x_t = prior_sample(self.schedule, space, gen, torch.float32)  # on the CPU: the same x_T on every device
        device = self.device
        if device.type != "cpu":
            space, x_t = space.to(device), x_t.to(device)
            gen = torch.Generator(device=device).manual_seed(seed)
        condition = self.domain.network_condition(space)
        eps = eps_predictor(self.net, self.schedule, space, self.parameterization, **condition)
        if guidance is not None:
            ctx = GuidanceContext(self.net, self.schedule, space, self.parameterization, condition,
                                  self.domain.null_condition(space))
            eps = apply_guidance(eps, guidance, ctx)
        grid_t = self.grid(sampler, steps, grid)
        kwargs: dict[str, Any] = {"generator": gen} if _accepts(fn, "generator") else {}
        if variance != "beta_tilde":
            if not _accepts(fn, "variance"):
                raise ValueError(f"variance {variance!r} needs the ddpm or ddim sampler, not {sampler!r}")
            kwargs["variance"] = self.analytic_table(grid_t, sampler_options.get("eta", 0.0) if sampler == "ddim"
                                                     else None) if variance == "analytic" else variance
        from .progress import sampling_progress

        total = None if sampler == "rk45" else steps
        with sampling_progress(total, f"{sampler} sampling", enabled=progress) as bar:
            def report(step: Any) -> None:
                bar(step)
                if callback is not None:
                    callback(step)

            out = fn(eps, self.schedule, space, x_t, grid_t, callback=report, **kwargs, **sampler_options)
        out.space = space
        return out

    def grid(self, sampler: str, steps: int, kind: str = "uniform") -> Tensor:
        """The time grid ``kind`` for ``sampler`` and K = ``steps``: a built-in kind (``time_grid``; a RuntimeWarning
        for combinations measured to be poor, ``sciddpm.grids.grid_warning``) or ``optimised``, the grid saved in
        the export by ``sciddpm optimise-grid`` (ValueError naming the missing ``variance.grid.<sampler>.<K>``)."""
        import warnings

        from .grid_opt import grid_key
        from .grids import check_grid, grid_warning

        if kind == "optimised":
            key = grid_key(sampler, steps)
            if key not in self.variances:
                raise ValueError(f"this export has no optimised grid variance.{key}: run `sciddpm optimise-grid "
                                 f"MODEL --sampler {sampler} --steps {steps}` first")
            grid_t = self.variances[key].to(torch.float64).cpu()
            check_grid(self.schedule, grid_t)
            return grid_t
        message = grid_warning(sampler, kind, steps)
        if message is not None:
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        return time_grid(self.schedule, steps, kind)  # type: ignore[arg-type]

    @torch.no_grad()
    def optimise_grid(self, sampler: str, steps: int, n: int = 256, seed: int = 1234, sweeps: int = 4,
                      conditions: dict[str, Any] | None = None, reference_rtol: float = 1e-4):
        """``(export key, OptimisedGrid)`` for ``sampler`` at K = ``steps`` on this model (``sciddpm.grid_opt``): for
        an ODE solver the grid minimising the pathwise error against RK45 on ``n`` of the model's own prior draws
        (seed ``seed``; sample with another; the reference is RK45 at ``reference_rtol`` with per-sample error
        control), for ``ddpm`` Analytic-DPM's ELBO-optimal trajectory from the Γ table."""
        from .grid_opt import (ODE_SAMPLERS, STOCHASTIC_SAMPLERS, OptimisedGrid, grid_key, optimise_ode_grid,
                               optimised_stochastic_grid)
        from .variances import GammaTable

        if sampler in STOCHASTIC_SAMPLERS:
            if "gamma" not in self.variances:
                raise ValueError("the ddpm grid needs a Gamma table: run `sciddpm estimate-variance` first")
            grid_t = optimised_stochastic_grid(self.schedule, GammaTable.from_state_dict(self.variances), steps,
                                               data_range=self.domain.data_range)
            return grid_key(sampler, steps), OptimisedGrid(grid_t, float("nan"), float("nan"), "none", 0)
        if sampler not in ODE_SAMPLERS:
            raise ValueError(f"no optimised grid for sampler {sampler!r}; expected one of "
                             f"{', '.join(ODE_SAMPLERS + STOCHASTIC_SAMPLERS)}")
        self.net.eval()
        gen = torch.Generator().manual_seed(seed)
        space = self.domain.sample_space(n, gen, conditions)
        x_t = prior_sample(self.schedule, space, gen, torch.float32)
        if self.device.type != "cpu":
            space, x_t = space.to(self.device), x_t.to(self.device)
        eps = eps_predictor(self.net, self.schedule, space, self.parameterization, **self.domain.network_condition(space))
        return grid_key(sampler, steps), optimise_ode_grid(sampler, eps, self.schedule, space, x_t, steps,
                                                           sweeps=sweeps, reference_rtol=reference_rtol)

    @property
    def device(self) -> torch.device:
        """The device of the network's parameters (samples are drawn there)."""
        param = next(self.net.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def to(self, device: torch.device | str) -> "DiffusionModel":
        """Move the network to ``device`` (in place); returns self."""
        self.net.to(device)
        return self

    def analytic_table(self, grid: Tensor, eta: float | None = None) -> Tensor:
        """Analytic-DPM variances for ``grid`` from the saved Γ table (ValueError if none was estimated): DDPM's
        (``eta`` None) or DDIM(η)'s optimal variance (Bao et al. 2022a, Thm. 1)."""
        from .variances import GammaTable, variance_table

        if "gamma" not in self.variances:
            raise ValueError("this model has no Gamma table: run `sciddpm estimate-variance` on its export first")
        key = (tuple(grid.tolist()), eta, self.variances["gamma"].data_ptr())
        if key not in self._analytic_cache:
            table = GammaTable.from_state_dict(self.variances)
            self._analytic_cache[key] = variance_table(self.schedule, grid, table, eta=eta,
                                                       data_range=self.domain.data_range,
                                                       last_step_resolution=self.domain.resolution)
        return self._analytic_cache[key]

    def estimate_gamma(self, batches: int = 8, batch_size: int = 64, num_times: int = 100, seed: int = 0,
                       progress: bool = False):
        """Γ_t = E‖ε̂‖²/d (Analytic-DPM) over ``batches`` training batches at ``num_times`` times (every step for
        a discrete schedule of ≤ num_times steps, else an even grid); returns a ``GammaTable``. ``progress``
        reports the network evaluations done (``sciddpm.progress.Progress``: a bar, or lines in a log)."""
        from .progress import Progress
        from .variances import estimate_gamma

        data = self.domain.train_dataset(self.domain.options)
        loader = DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=self.domain.collate,
                            generator=torch.Generator().manual_seed(seed))
        sch = self.schedule
        if sch.num_steps is not None:
            times = torch.unique(torch.linspace(1, sch.num_steps, min(num_times, sch.num_steps)).round()).to(torch.float64)
        else:
            times = torch.linspace(sch.t_min, sch.t_max, num_times + 1, dtype=torch.float64)[1:]
        device = self.device
        pairs = []
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            batch = _move(batch, device)
            space = self.domain.space_for(batch)
            pairs.append((self.domain.state_from(batch), space, self.domain.network_condition(space)))

        def batches_iter():
            for x0, space, cond in pairs:
                yield x0, space, eps_predictor(self.net, sch, space, self.parameterization, **cond)

        gen = torch.Generator(device=device).manual_seed(seed + 1)
        with Progress(2 * len(pairs) * len(times) or None, "estimate Gamma", unit="eval", enabled=progress) as report:
            return estimate_gamma(None, sch, batches_iter(), times, generator=gen, callback=report.update)


def _move(batch: Any, device: torch.device) -> Any:
    """A collated batch (tensor, tuple/list of tensors, or an object with ``.to``, e.g. a PyG batch) on ``device``."""
    if device.type == "cpu":
        return batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(_move(b, device) for b in batch)
    return batch.to(device) if hasattr(batch, "to") else batch


__all__ = ["DiffusionModel"]
