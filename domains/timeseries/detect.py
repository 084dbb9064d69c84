"""Attack detection with a conditional diffusion forecaster (TFDPM, Yan et al. 2022): score = how far each new
reading falls from the model's predictive distribution, normalised per sensor on attack-free data.

For the reading y_t ∈ R^F at row t the forecaster sees the L rows before it and draws S one-step-ahead forecasts
X_1..X_S (a few-step sampler of the core, DPM-Solver++(2M) or DDIM, on the TFDPM network; the history is encoded
once per window). Per sensor f the ensemble's CRPS (Gneiting & Raftery 2007, eq. 21)

    c_{t,f} = (1/S) Σ_i |X_{i,f} − y_{t,f}| − 1/(2S²) Σ_{i,j} |X_{i,f} − X_{j,f}|

is a proper score of the whole predictive distribution (for S = 1 it is the absolute error of a point forecast,
which is how the deterministic baseline is scored). It is standardised per sensor with its mean m_f and spread s_f
on attack-free calibration rows, a_{t,f} = (c_{t,f} − m_f)/s_f (s_f floored, so a sensor that never moved in
training — a pump always off — scores any movement as a large deviation), aggregated as the mean of the top-k a_{t,f}
(the k sensors named in the alarm), smoothed by a causal mean over the last ``smooth`` rows, and compared with a
threshold fixed on attack-free data only: the ``quantile`` of the smoothed calibration scores.

The sampler's starting noise for row t is drawn from a generator seeded by (seed, t's timestamp), so a row's score
does not depend on how rows are batched: scoring a file and streaming it row by row give the same numbers.
"""
from __future__ import annotations

import json
import logging
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from sciddpm.objectives import eps_predictor
from sciddpm.outputs import atomic_path
from sciddpm.samplers import get_sampler, time_grid
from sciddpm.spaces import DenseSpace

from .data import (DEFAULT_LABEL_COLUMN, DEFAULT_TIME_COLUMN, DEFAULT_TIME_FORMAT, PlantReader, PlantTable,
                   open_source)

log = logging.getLogger(__name__)

#: A forecaster maps (history [N, L, F], mask [N, L, F], row keys long [N]) to forecasts [S, N, h, F].
Forecaster = Callable[[Tensor, Tensor, Tensor], Tensor]
#: Floor of the per-sensor calibration spread s_f (standard units).
MIN_SPREAD = 1e-3
DETECTOR_FILE = "detector.json"


class DiffusionForecaster:
    """S samples of the next h steps from a trained ``DiffusionModel`` of the timeseries domain: ``steps`` steps of
    the core sampler ``sampler`` (deterministic ones: ``dpm_solver_pp_2m``, ``ddim``, ``heun``) from x_T drawn per
    row from a generator seeded by (seed, row key)."""

    def __init__(self, model: Any, samples: int = 8, steps: int = 10, sampler: str = "dpm_solver_pp_2m",
                 seed: int = 0, chunk: int = 256) -> None:
        if samples < 1 or steps < 1:
            raise ValueError(f"need samples >= 1 and steps >= 1, got {samples} and {steps}")
        self.model, self.samples, self.steps, self.seed, self.chunk = model, samples, steps, seed, chunk
        self.sampler = get_sampler(sampler)
        self.grid = time_grid(model.schedule, steps, "uniform")

    @torch.no_grad()
    def __call__(self, history: Tensor, mask: Tensor, keys: Tensor) -> Tensor:
        net, sch = self.model.net.eval(), self.model.schedule
        device = self.model.device
        s, (n, _, f), h = self.samples, history.shape, net.horizon
        out = []
        for a in range(0, n, self.chunk):
            hist, msk, key = history[a:a + self.chunk], mask[a:a + self.chunk], keys[a:a + self.chunk]
            m = len(hist)
            ctx = net.encode(hist.to(device), msk.to(device)).repeat(s, 1, 1)  # sample-major: [s*m, F, dim]
            noise = torch.stack([torch.randn(s, h, f, generator=torch.Generator().manual_seed(
                self.seed * 1_000_003 + int(k))) for k in key.tolist()], dim=1)  # [s, m, h, F]
            space = DenseSpace((s * m, h, f), device=device)
            x_t = (sch.prior_std * noise.reshape(s * m, h, f)).to(device)
            eps = eps_predictor(net.denoise, sch, space, self.model.parameterization, context=ctx)
            x0 = self.sampler(eps, sch, space, x_t, self.grid.to(device)).sample
            out.append(x0.reshape(s, m, h, f).cpu())
        return torch.cat(out, dim=1)


class PointForecaster:
    """A deterministic forecaster with the same network: ŷ = net.denoise(0, t_fixed, encode(history)) predicts the
    next h steps directly (trained with an MSE loss on x₀), returned as one 'sample'."""

    def __init__(self, net: Any, t_fixed: float = 500.0) -> None:
        self.net, self.t_fixed = net, t_fixed

    @torch.no_grad()
    def __call__(self, history: Tensor, mask: Tensor, keys: Tensor) -> Tensor:
        self.net.eval()
        device = next(self.net.parameters()).device
        b = len(history)
        zeros = torch.zeros(b, self.net.horizon, self.net.sensors, device=device)
        t = torch.full((b,), self.t_fixed, dtype=torch.float64, device=device)
        return self.net.denoise(zeros, t, self.net.encode(history.to(device), mask.to(device)))[None].cpu()


@torch.no_grad()
def impute(model: Any, history: Tensor, mask: Tensor, known: Tensor, known_mask: Tensor, samples: int = 8,
           steps: int = 50, seed: int = 0) -> Tensor:
    """The second mode (ImDiffusion-style imputation, Chen et al. 2024): samples of the next h rows in which the
    entries flagged by ``known_mask`` are observed (``known``, standardised, [N, h, F]) and the others are drawn
    from the model conditioned on them and on the history, by replacement inpainting around the core's ε
    (``sciddpm.guidance.replacement_inpainting``: known entries re-noised to q(x_t | known) before every network
    call; Song et al. 2021, App. I) with ``steps`` ancestral DDPM steps. Returns [samples, N, h, F] with the known
    entries pasted exactly."""
    from sciddpm.guidance import paste_known, replacement_inpainting
    from sciddpm.samplers import ddpm

    net, sch, device = model.net.eval(), model.schedule, model.device
    n, h, f = known.shape
    gen = torch.Generator(device=device).manual_seed(seed)
    space = DenseSpace((samples * n, h, f), device=device)
    ctx = net.encode(history.to(device), mask.to(device)).repeat(samples, 1, 1)
    known_rep = torch.nan_to_num(known, nan=0.0).repeat(samples, 1, 1).to(device)
    mask_rep = known_mask.bool().repeat(samples, 1, 1).to(device)
    eps = eps_predictor(net.denoise, sch, space, model.parameterization, context=ctx)
    guided = replacement_inpainting(eps, sch, space, known_rep, mask_rep, generator=gen)
    x_t = sch.prior_std * space.noise(generator=gen)
    x0 = ddpm(guided, sch, space, x_t, time_grid(sch, steps, "uniform").to(device), generator=gen).sample
    return paste_known(x0, known_rep, mask_rep).reshape(samples, n, h, f).cpu()


def crps_ensemble(samples: Tensor, observed: Tensor) -> Tensor:
    """CRPS of an ensemble (Gneiting & Raftery 2007, eq. 21): mean|X_i − y| − ½ mean_{i,j}|X_i − X_j|; samples
    [S, N, F], observed [N, F] (NaN stays NaN: a missing reading has no score)."""
    first = (samples - observed[None]).abs().mean(0)
    second = (samples[:, None] - samples[None]).abs().mean((0, 1))
    return first - 0.5 * second


@dataclass
class DetectorSettings:
    """What fixes a detector once calibrated (saved as ``detector.json`` in the model's export folder)."""

    samples: int = 8
    steps: int = 10
    sampler: str = "dpm_solver_pp_2m"
    seed: int = 0
    top_k: int = 3
    smooth: int = 6
    quantile: float = 0.99
    threshold: float = math.nan
    step_hours: float = 1.0
    sensor_mean: list[float] = field(default_factory=list)
    sensor_spread: list[float] = field(default_factory=list)


def history_windows(z: np.ndarray, hours: np.ndarray, length: int, step: float) -> tuple[np.ndarray, Tensor, Tensor]:
    """(rows r that have ``length`` contiguous rows before them, history [N, L, F] with 0 where missing, mask)."""
    gaps = np.r_[True, np.abs(np.diff(hours) - step) > 1e-6 * max(step, 1.0)]
    run_start = np.maximum.accumulate(np.where(gaps, np.arange(len(hours)), 0))
    rows = np.flatnonzero(np.arange(len(hours)) - run_start >= length)
    idx = rows[:, None] - length + np.arange(length)[None]
    hist = torch.as_tensor(z[idx] if len(rows) else np.zeros((0, length, z.shape[1])), dtype=torch.float32)
    mask = torch.isfinite(hist).float()
    return rows, torch.nan_to_num(hist, nan=0.0), mask


def causal_mean(score: np.ndarray, window: int) -> np.ndarray:
    """Mean of the finite values among the last ``window`` rows (NaN where there is none)."""
    out = np.full(len(score), np.nan)
    finite = np.isfinite(score)
    csum, ccount = np.r_[0.0, np.cumsum(np.where(finite, score, 0.0))], np.r_[0, np.cumsum(finite)]
    lo = np.maximum(np.arange(len(score)) + 1 - window, 0)
    count = ccount[1:] - ccount[lo]
    ok = count > 0
    out[ok] = (csum[1:] - csum[lo])[ok] / count[ok]
    return out


class Detector:
    """A forecaster + the per-sensor calibration, aggregation, smoothing and threshold of the module docstring."""

    def __init__(self, domain: Any, forecaster: Forecaster, settings: DetectorSettings | None = None) -> None:
        self.domain, self.forecaster = domain, forecaster
        self.settings = settings or DetectorSettings()
        self.columns: list[str] = list(domain.options["columns"])

    # ------------------------------------------------------------------ scoring
    def sensor_crps(self, table: PlantTable) -> np.ndarray:
        """c_{t,f} [T, F] for every row with a full contiguous history (NaN on warm-up rows and missing readings)."""
        z = self.domain.normaliser.apply(table.select(self.columns).values)
        rows, hist, mask = history_windows(z, table.hours, self.domain.history, self.settings.step_hours)
        out = np.full(z.shape, np.nan)
        if len(rows):
            keys = torch.as_tensor(np.round(table.hours[rows]).astype(np.int64))
            forecast = self.forecaster(hist, mask, keys)[:, :, 0]  # one step ahead: [S, N, F]
            out[rows] = crps_ensemble(forecast.double(), torch.as_tensor(z[rows])).numpy()
        return out

    def normalise(self, crps: np.ndarray) -> np.ndarray:
        """a_{t,f} = (c_{t,f} − m_f)/s_f with the calibration statistics."""
        mean, spread = np.asarray(self.settings.sensor_mean), np.asarray(self.settings.sensor_spread)
        if mean.shape != (len(self.columns),):
            raise ValueError("the detector is not calibrated (no per-sensor statistics): calibrate it on attack-free "
                             "rows first")
        return (crps - mean) / spread

    def aggregate(self, sensor: np.ndarray) -> np.ndarray:
        """Mean of the top-k finite per-sensor scores of each row (NaN for a row without any)."""
        k = self.settings.top_k
        filled = np.where(np.isfinite(sensor), sensor, -np.inf)
        top = -np.sort(-filled, axis=1)[:, :k]
        count = np.isfinite(top).sum(1)
        total = np.where(np.isfinite(top), top, 0.0).sum(1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    def score(self, table: PlantTable) -> dict[str, np.ndarray]:
        """Per-row ``sensor`` [T, F], ``raw`` [T], ``score`` (smoothed) [T] and ``alarm`` [T] of a plant table."""
        sensor = self.normalise(self.sensor_crps(table))
        raw = self.aggregate(sensor)
        smoothed = causal_mean(raw, self.settings.smooth)
        return {"sensor": sensor, "raw": raw, "score": smoothed, "alarm": self.alarms(smoothed)}

    def alarms(self, smoothed: np.ndarray) -> np.ndarray:
        """score > threshold (False on unscored rows)."""
        if not math.isfinite(self.settings.threshold):
            raise ValueError("the detector has no threshold: calibrate it on attack-free rows first")
        return np.nan_to_num(smoothed, nan=-np.inf) > self.settings.threshold

    # ------------------------------------------------------------------ calibration on attack-free rows
    def calibrate(self, table: PlantTable, scored_from: int = 0, quantile: float | None = None) -> np.ndarray:
        """Fit m_f, s_f on the rows ``scored_from``… of an attack-free ``table`` (earlier rows serve as history
        only) and set the threshold to the ``quantile`` of their smoothed scores; returns those scores."""
        if table.labels is not None and table.labels[scored_from:].any():
            raise ValueError(f"{table.source}: calibration rows must be attack-free (the label column flags "
                             f"{int(table.labels[scored_from:].sum())} rows)")
        crps = self.sensor_crps(table)[scored_from:]
        if not np.isfinite(crps).any(axis=0).all():
            raise ValueError(f"{table.source}: too few calibration rows (a sensor has no scored reading)")
        self.settings.sensor_mean = np.nanmean(crps, 0).tolist()
        self.settings.sensor_spread = np.maximum(np.nanstd(crps, 0), MIN_SPREAD).tolist()
        smoothed = causal_mean(self.aggregate(self.normalise(crps)), self.settings.smooth)
        self.set_threshold(smoothed, self.settings.quantile if quantile is None else quantile)
        return smoothed

    def set_threshold(self, calibration_scores: np.ndarray, quantile: float) -> float:
        """threshold = the ``quantile`` of the attack-free calibration scores (quantile 1: their maximum)."""
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        finite = calibration_scores[np.isfinite(calibration_scores)]
        self.settings.quantile, self.settings.threshold = quantile, float(np.quantile(finite, quantile))
        return self.settings.threshold

    # ------------------------------------------------------------------ persistence
    def save(self, export: str | Path) -> Path:
        """Write ``detector.json`` into the export folder (temp file + rename)."""
        path = Path(export) / DETECTOR_FILE
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"columns": self.columns, **asdict(self.settings)}, indent=1) + "\n")
        return path

    @staticmethod
    def load_settings(export: str | Path) -> DetectorSettings:
        """The settings saved by ``save``; ValueError naming the file when there are none."""
        path = Path(export) / DETECTOR_FILE
        if not path.is_file():
            raise ValueError(f"{path} not found: calibrate the detector first (sciddpm detect --calibrate "
                             "ATTACK_FREE.csv)")
        values = json.loads(path.read_text())
        values.pop("columns", None)
        return DetectorSettings(**values)

    # ------------------------------------------------------------------ streaming
    def stream(self, reader: PlantReader) -> Iterator[dict[str, Any]]:
        """Score rows as they arrive: one dict per row (time, score or None while warming up, alarm, top sensors).
        A time gap (≠ step_hours) or a row the reader refuses restarts nothing silently: a gap empties the
        history and is logged; a bad row raises the reader's one-line ValueError."""
        length, step = self.domain.history, self.settings.step_hours
        buf: deque[np.ndarray] = deque(maxlen=length)
        raw_recent: deque[float] = deque(maxlen=self.settings.smooth)
        last_hour = None
        for stamp, hour, values, label in reader:
            z = self.domain.normaliser.apply(values)
            if last_hour is not None and abs(hour - last_hour - step) > 1e-6 * max(step, 1.0):
                log.warning("%s: %g h gap before %s; the history restarts", reader.source, hour - last_hour, stamp)
                buf.clear()
            last_hour = hour
            row: dict[str, Any] = {"time": stamp, "label": label, "score": None, "alarm": False, "top": []}
            raw = math.nan
            if len(buf) == length:
                hist = torch.as_tensor(np.stack(buf)[None], dtype=torch.float32)
                mask = torch.isfinite(hist).float()
                forecast = self.forecaster(torch.nan_to_num(hist, nan=0.0), mask,
                                           torch.tensor([int(round(hour))]))[:, :, 0]
                sensor = self.normalise(crps_ensemble(forecast.double(), torch.as_tensor(z[None])).numpy())
                raw = float(self.aggregate(sensor)[0])
                row["sensor"] = sensor[0]
            raw_recent.append(raw)  # warm-up and unscored rows occupy the smoothing window, as in ``score``
            if math.isfinite(raw):
                row["score"] = float(np.nanmean(np.asarray(raw_recent)))
                row["alarm"] = row["score"] > self.settings.threshold
                order = np.argsort(-np.nan_to_num(row["sensor"], nan=-np.inf))[:self.settings.top_k]
                row["top"] = [self.columns[j] for j in order]
            elif len(buf) == length:
                log.warning("%s: row %s has no observed trained sensor; not scored", reader.source, stamp)
            buf.append(z)
            yield row


def open_reader(domain: Any, path: Any) -> PlantReader:
    """A row-by-row reader of a plant CSV (or ``-`` for stdin) with the domain's names and trained columns."""
    stream, source = open_source(path)
    o = domain.options
    return PlantReader(stream, source, o.get("time_column", DEFAULT_TIME_COLUMN),
                       o.get("label_column", DEFAULT_LABEL_COLUMN), o.get("time_format", DEFAULT_TIME_FORMAT),
                       list(o["columns"]))
