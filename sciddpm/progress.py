"""A progress bar that counts sampler steps, driven by the samplers' ``callback`` (k-diffusion's habit).

Usage::

    with sampling_progress(steps, "heun sampling") as callback:
        out = heun(eps_fn, schedule, space, x_T, grid, callback=callback)

The bar advances once per sampler step (not per network call: Heun and PC make several calls a step) and shows
the NFE so far in its postfix; for an adaptive solver that does not know its number of steps (RK45,
``SamplerStep.total is None``) it shows the fraction of ς = σ/α travelled, scaled to the bar's ``total``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from .samplers import SamplerStep, StepCallback


@contextmanager
def sampling_progress(total: int | None, desc: str = "sampling", enabled: bool = True) -> Iterator[StepCallback]:
    """Yield a ``callback(SamplerStep)`` that drives a tqdm bar of ``total`` sampler steps (tqdm imported lazily).

    After step i of a fixed grid of K steps the bar stands at i + 1 (of K); after an adaptive step it stands at
    ``progress · total`` (ς fraction; ``total=None`` → a bar of 100, i.e. percent). The postfix shows the NFE.
    ``enabled=False`` gives a silent bar (the callback still works, nothing is printed).
    """
    if total is not None and total < 1:
        raise ValueError(f"sampling_progress: total must be >= 1 or None, got {total}")
    from tqdm.auto import tqdm

    bar_total = 100 if total is None else total
    with tqdm(total=bar_total, desc=desc, unit="step", disable=not enabled) as bar:
        def callback(step: SamplerStep) -> None:
            if step.total is not None:
                bar.total = step.total
                bar.n = step.i + 1
            else:
                bar.n = round(step.progress * bar_total, 3)
            bar.set_postfix(nfe=step.nfe, refresh=False)
            bar.refresh()

        yield callback
