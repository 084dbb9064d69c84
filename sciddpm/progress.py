"""One progress report for long work: training steps, sampler steps, Γ estimation.

``Progress(total, desc)`` is driven with absolute positions (``update(n, loss=…)``). On a terminal it is a tqdm
bar (position/total, rate, time left, the fields as postfix); when the stream is not a terminal (a log file, a
pipe, ``make demo > log``) it prints one line every ``every`` seconds (default 10, or the environment variable
``SCIDDPM_PROGRESS_EVERY``) and a last line when the work ends::

    [train] step 120/400 (30%) loss=0.531 | 2.1 step/s | elapsed 57s | left 2m13s

The rate counts only the steps done in this process (a resumed run starts from its checkpoint's step), and the time
left is (total − n) / rate. ``sampling_progress`` adapts it to the samplers' ``callback`` (k-diffusion's habit)::

    with sampling_progress(steps, "heun sampling") as callback:
        out = heun(eps_fn, schedule, space, x_T, grid, callback=callback)

The report advances once per sampler step (not per network call: Heun and PC make several calls a step) and shows
the NFE; for an adaptive solver that does not know its number of steps (RK45, ``SamplerStep.total is None``) it
shows the fraction of ς = σ/α travelled, scaled to the report's ``total``.
"""
from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

from .sampler_base import SamplerStep, StepCallback


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _field(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """Progress of ``total`` units of work (``unit``, e.g. "step"), starting at ``start``: a bar on a terminal,
    a line every ``every`` seconds otherwise (see the module text). ``enabled=False``: silent. ``tty``: force the
    kind (default: ``stream.isatty()``). Use as a context manager, or call ``close()``."""

    def __init__(self, total: int | None, desc: str, unit: str = "step", start: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, tty: bool | None = None, every: float | None = None) -> None:
        if total is not None and total < 1:
            raise ValueError(f"Progress: total must be >= 1 or None, got {total}")
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        if every is None:
            every = float(os.environ.get("SCIDDPM_PROGRESS_EVERY", "10"))
        self.every = every
        self.n, self.start, self.fields = start, start, {}
        self.t0 = self._last = time.monotonic()
        self._printed_n: float | None = None
        self._bar = None
        if enabled and self.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=start, desc=desc, unit=unit, file=self.stream)

    def rate(self) -> float:
        """Units per second done in this process so far (0 before the first)."""
        elapsed = time.monotonic() - self.t0
        return (self.n - self.start) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """The report as one line (what a non-terminal stream gets)."""
        n = round(self.n, 3) if isinstance(self.n, float) else self.n
        text = f"[{self.desc}] {self.unit} {n}"
        if self.total is not None:
            text += f"/{self.total} ({100.0 * self.n / self.total:.0f}%)"
        if self.fields:
            text += " " + " ".join(f"{k}={_field(v)}" for k, v in self.fields.items())
        rate = self.rate()
        text += f" | {rate:.3g} {self.unit}/s | elapsed {_duration(time.monotonic() - self.t0)}"
        if self.total is not None and rate > 0:
            text += f" | left {_duration(max(0.0, self.total - self.n) / rate)}"
        return text

    def update(self, n: float, **fields: Any) -> None:
        """Move to position ``n`` (absolute) and show ``fields`` (e.g. ``loss=0.53``)."""
        self.n = n
        self.fields.update(fields)
        if not self.enabled:
            return
        if self._bar is not None:
            if fields:
                self._bar.set_postfix({k: _field(v) for k, v in self.fields.items()}, refresh=False)
            self._bar.update(n - self._bar.n)  # redraws at most every 0.1 s (tqdm's mininterval)
            return
        now = time.monotonic()
        if self._printed_n is None or now - self._last >= self.every:
            self._emit(now)

    def set_total(self, total: int | None) -> None:
        """Change the total (a sampler that learns its number of steps on its first step)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total

    def _emit(self, now: float) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last, self._printed_n = now, self.n

    def close(self) -> None:
        """End the report: close the bar, or print the last line if the last position was not printed yet."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._printed_n != self.n:
            self._emit(time.monotonic())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def sampling_progress(total: int | None, desc: str = "sampling", enabled: bool = True,
                      **options: Any) -> Iterator[StepCallback]:
    """Yield a ``callback(SamplerStep)`` that drives a ``Progress`` of ``total`` sampler steps.

    After step i of a fixed grid of K steps the report stands at i + 1 (of K); after an adaptive step it stands at
    ``progress · total`` (ς fraction; ``total=None`` → a report of 100, i.e. percent). The fields show the NFE.
    ``enabled=False`` gives a silent report (the callback still works, nothing is printed); ``options`` go to
    ``Progress`` (``stream``, ``tty``, ``every``).
    """
    if total is not None and total < 1:
        raise ValueError(f"sampling_progress: total must be >= 1 or None, got {total}")
    bar_total = 100 if total is None else total
    with Progress(bar_total, desc, unit="step", enabled=enabled, **options) as report:
        def callback(step: SamplerStep) -> None:
            if step.total is not None:
                if step.total != report.total:
                    report.set_total(step.total)
                report.update(step.i + 1, nfe=step.nfe)
            else:
                report.update(round(step.progress * bar_total, 3), nfe=step.nfe)

        yield callback
