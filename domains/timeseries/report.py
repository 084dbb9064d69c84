"""``sciddpm detect``: score a plant CSV (or stdin, row by row) with a trained timeseries export, write per-row
scores, alarms and top sensors, and draw the traces with the score below.

The core CLI only dispatches: it loads the export and calls the domain's ``detect`` (this module's ``run_detect``).
"""
from __future__ import annotations

import csv
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sciddpm.outputs import atomic_path, check_output

from .data import PlantTable
from .detect import Detector, DetectorSettings, DiffusionForecaster, open_reader
from .metrics import attack_intervals


def build_detector(model: Any, export: Path | None, overrides: dict[str, Any] | None = None,
                   need_calibration: bool = True) -> Detector:
    """The diffusion detector of an export: settings from its ``detector.json`` (unless ``need_calibration`` is
    False and there is none), with ``overrides`` (samples, steps, sampler, seed, top_k, smooth)."""
    if export is not None and (need_calibration or (Path(export) / "detector.json").is_file()):
        settings = Detector.load_settings(export)
    else:
        settings = DetectorSettings()
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(settings, key, value)
    forecaster = DiffusionForecaster(model, settings.samples, settings.steps, settings.sampler, settings.seed)
    return Detector(model.domain, forecaster, settings)


def calibrate_export(model: Any, export: Path, readings: str | Path, quantile: float,
                     overrides: dict[str, Any] | None = None) -> Detector:
    """Calibrate on the attack-free rows of a plant CSV (the domain's held-out calibration rows of that file, after
    its ``train_rows``; all rows past the first ``history`` when the file is shorter) and save ``detector.json``."""
    detector = build_detector(model, export, overrides, need_calibration=False)
    domain = model.domain
    table = domain.read(readings, list(domain.options["columns"]))
    try:
        end, split = domain.fit_rows(table)
    except ValueError:
        end, split = len(table), domain.history
    table = table.rows(max(0, split - domain.history), end)
    detector.settings.step_hours = float(np.median(np.diff(table.hours))) if len(table) > 1 else 1.0
    detector.calibrate(table, scored_from=min(domain.history, split), quantile=quantile)
    detector.save(export)
    return detector


def write_scores(path: Path, stamps: Sequence[str], result: dict[str, np.ndarray], columns: Sequence[str],
                 top_k: int, threshold: float) -> None:
    """CSV: time, score (empty while warming up), threshold, alarm (0/1), status, top sensors (temp file + rename)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["time", "score", "threshold", "alarm", "status", *[f"top{i + 1}" for i in range(top_k)]])
        for i, stamp in enumerate(stamps):
            score = result["score"][i]
            if not math.isfinite(score):
                out.writerow([stamp, "", f"{threshold:.6g}", 0, "warmup", *[""] * top_k])
                continue
            sensor = np.nan_to_num(result["sensor"][i], nan=-np.inf)
            top = [columns[j] for j in np.argsort(-sensor)[:top_k]]
            out.writerow([stamp, f"{score:.6g}", f"{threshold:.6g}", int(result["alarm"][i]), "ok", *top])


def plot_detection(path: Path, table: PlantTable, result: dict[str, np.ndarray], threshold: float,
                   title: str = "", sensors: Sequence[str] | None = None) -> None:
    """PNG: a few sensor traces (default: the most often top-scored during alarms) with labelled attacks shaded
    red (alarms shaded blue when the file has no labels), and the score with its threshold below."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    alarm = result["alarm"].astype(bool)
    if sensors is None:
        weight = np.nan_to_num(result["sensor"][alarm if alarm.any() else slice(None)], nan=0.0).clip(min=0).sum(0)
        sensors = [table.columns[j] for j in np.argsort(-weight)[:3]]
    fig = Figure(figsize=(12, 2.0 * (len(sensors) + 1.5)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(sensors) + 1, 1, sharex=True,
                        gridspec_kw={"height_ratios": [1] * len(sensors) + [1.5]})
    x = np.arange(len(table))
    shade = table.labels if table.labels is not None else alarm.astype(int)
    for ax, name in zip(axes[:-1], sensors):
        ax.plot(x, table.values[:, table.columns.index(name)], lw=0.7, color="k")
        ax.set_ylabel(name, fontsize=8)
    for ax in axes:
        for a, b in attack_intervals(shade):
            ax.axvspan(a, b, color="red" if table.labels is not None else "C0", alpha=0.15, lw=0)
    ax = axes[-1]
    ax.plot(x, result["score"], lw=0.7, color="C1", label="score")
    ax.axhline(threshold, color="k", ls="--", lw=0.8, label="threshold")
    if table.labels is not None:
        ax.plot(x[alarm], np.full(alarm.sum(), threshold), "|", color="C0", ms=6, label="alarm")
    ax.set_yscale("symlog")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_xlabel("row (hours)")
    fig.suptitle(title or f"{table.source}: shaded = {'labelled attacks' if table.labels is not None else 'alarms'}",
                 fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")


def run_detect(model: Any, export: Path, readings: str, output: Path, calibrate: str | None = None,
               quantile: float = 0.99, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``sciddpm detect`` command: optional calibration, then a file scored in one batch (CSV + PNG next to
    it) or stdin (``-``) scored row by row, each output line flushed as its row arrives. Returns a summary."""
    if calibrate is not None:
        calibrate_export(model, export, calibrate, quantile, overrides)
    output = Path(output)
    if str(output) != "-":  # checked before any scoring: extension, folder, writable
        check_output(output, (".csv",), what="scores")
        if str(readings) != "-":
            check_output(output.with_suffix(".png"), (".png",), what="plot")
    detector = build_detector(model, export, overrides)
    if str(readings) == "-":
        return _stream(detector, readings, output)
    table = model.domain.read(readings, list(model.domain.options["columns"]))
    start = time.perf_counter()
    result = detector.score(table)
    seconds = time.perf_counter() - start
    write_scores(output, table.stamps, result, detector.columns, detector.settings.top_k, detector.settings.threshold)
    plot_detection(output.with_suffix(".png"), table, result, detector.settings.threshold)
    return {"rows": len(table), "alarms": int(result["alarm"].sum()), "seconds": seconds,
            "seconds_per_row": seconds / len(table)}


def _stream(detector: Detector, readings: str, output: Path) -> dict[str, Any]:
    """stdin, row by row: one flushed CSV line per row (the file grows as rows arrive; it is a log, not a
    rename-at-the-end result)."""
    reader = open_reader(detector.domain, readings)
    k, rows, alarms, seconds = detector.settings.top_k, 0, 0, 0.0
    with (nullcontext(sys.stdout) if str(output) == "-" else open(output, "w", newline="")) as fh:
        out = csv.writer(fh)
        out.writerow(["time", "score", "threshold", "alarm", "status", *[f"top{i + 1}" for i in range(k)]])
        start = time.perf_counter()
        for row in detector.stream(reader):
            seconds += time.perf_counter() - start
            score = row["score"]
            out.writerow([row["time"], "" if score is None else f"{score:.6g}", f"{detector.settings.threshold:.6g}",
                          int(row["alarm"]), "warmup" if score is None else "ok", *(row["top"] + [""] * k)[:k]])
            fh.flush()
            rows, alarms = rows + 1, alarms + int(row["alarm"])
            start = time.perf_counter()
    return {"rows": rows, "alarms": alarms, "seconds": seconds, "seconds_per_row": seconds / max(rows, 1)}
