"""The time-series Domain: a conditional diffusion forecaster of plant sensors (TFDPM, Yan et al. 2022).

State: the next h standardised readings of F sensors, x₀ ∈ R^{h×F}, in a ``DenseSpace`` [B, h, F]. Condition
(``Space.condition``): the L previous readings ``history`` [B, L, F] (standardised, 0 where missing) and their
``history_mask`` (1 = observed), plus an optional ``reference`` future (standardised) used only by ``evaluate``.
So the history window travels with the space exactly like a class label or a low-resolution image.

Data options (``data:``): ``path`` (a plant CSV, see ``data.py``; default the bundled BATADAL excerpt
``tests/data/batadal_excerpt.csv``), ``time_column``, ``label_column``, ``time_format``, ``columns`` (sensor subset;
default all), ``history`` L (24), ``horizon`` h (3), ``train_rows`` (the rows that may be used for fitting; default
the first contiguous segment of the file: BATADAL's attack-free dataset03), ``calib_fraction`` (0.15: the last part
of those rows is held out as the attack-free validation/calibration set, ``val_dataset``). Windows that touch a
labelled attack row or a missing target value are never trained on. Conditions for ``sample_space``: ``history``
(raw units, [L, F] for all samples or [n, L, F]; NaN = missing) and ``future`` (raw units, [h, F] or [n, h, F], the
observed continuation for ``evaluate``); without them the samples continue a bank of held-out windows saved with
the model, so sampling needs no data file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from sciddpm.domain import Domain, constructor_keys
from sciddpm.outputs import atomic_path, require_suffix
from sciddpm.schedules import NoiseSchedule
from sciddpm.spaces import DenseSpace, Space

from .backbone import TFDPMNet
from .data import (DEFAULT_LABEL_COLUMN, DEFAULT_TIME_COLUMN, DEFAULT_TIME_FORMAT, Normaliser, PlantTable,
                   read_plant_csv, window_starts)

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "tests" / "data" / "batadal_excerpt.csv"
#: Held-out windows saved with the model as the default condition of ``sample_space``.
BANK_SIZE = 8


def _as_windows(value: Any, n: int, shape: tuple[int, int], key: str) -> np.ndarray:
    """A condition of raw readings as float64 [n, *shape] from [*shape] (all samples) or [n, *shape]."""
    arr = np.asarray(value.cpu() if isinstance(value, Tensor) else value, dtype=np.float64)
    if arr.shape == shape:
        arr = np.broadcast_to(arr, (n, *shape))
    if arr.shape != (n, *shape):
        raise ValueError(f"condition {key!r} has shape {arr.shape}; expected {shape} or ({n}, {shape[0]}, {shape[1]})")
    return arr


class TimeSeriesDomain(Domain):
    """Next-h-step forecasts of plant sensors conditioned on the last L readings (see the module docstring)."""

    name = "timeseries"
    sample_suffix = ".csv"
    sample_suffixes = (".csv",)
    default_schedule: dict[str, Any] = {"type": "cosine", "num_steps": 1000}

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.normaliser: Normaliser | None = None
        self._cache: tuple[Any, ...] | None = None

    # ---------------------------------------------------------------- options and data
    def data_keys(self) -> tuple[str, ...]:
        return ("path", "time_column", "label_column", "time_format", "columns", "history", "horizon",
                "train_rows", "calib_fraction")

    def backbone_keys(self, config: dict[str, Any]) -> tuple[str, ...]:
        return constructor_keys(TFDPMNet, exclude=("sensors", "horizon", "history"))

    @property
    def history(self) -> int:
        return int(self.options.get("history", 24))

    @property
    def horizon(self) -> int:
        return int(self.options.get("horizon", 3))

    def read(self, path: Any, columns: list[str] | None = None) -> PlantTable:
        """A plant CSV with this domain's column names and time format (``columns``: the trained sensors)."""
        o = self.options
        return read_plant_csv(path, o.get("time_column", DEFAULT_TIME_COLUMN), o.get("label_column", DEFAULT_LABEL_COLUMN),
                              o.get("time_format", DEFAULT_TIME_FORMAT), columns)

    def fit_rows(self, table: PlantTable) -> tuple[int, int]:
        """(end of the fitting rows, start of the calibration rows): ``train_rows`` or the first segment, the last
        ``calib_fraction`` of it held out."""
        end = int(self.options.get("train_rows", table.segments()[0][1]))
        if not self.history + self.horizon < end <= len(table):
            raise ValueError(f"{table.source}: train_rows = {end} must lie in ({self.history + self.horizon}, "
                             f"{len(table)}]")
        split = end - max(self.history + self.horizon, int(round(end * float(self.options.get("calib_fraction", 0.15)))))
        return end, split

    def _load(self, options: dict[str, Any]) -> tuple[TensorDataset, TensorDataset]:
        key = (str(options.get("path", DEFAULT_PATH)), self.history, self.horizon)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        table = self.read(options.get("path", DEFAULT_PATH), options.get("columns"))
        end, split = self.fit_rows(table)
        if self.normaliser is None or "columns" not in self.options:
            self.normaliser = Normaliser.fit(table.values[:split], table.columns, table.source)
            self.options["columns"] = list(table.columns)
        z = self.normaliser.apply(table.select(self.options["columns"]).values)
        sets = []
        for a, b in ((0, split), (split, end)):
            part = table.rows(a, b)
            bad = ~np.isfinite(z[a:b]).all(axis=1)  # a missing target value: no window ends on it
            if part.labels is not None:
                bad |= part.labels.astype(bool)
            segs = [(max(s, a) - a, min(e, b) - a) for s, e in table.segments() if s < b and e > a]
            starts = window_starts(b - a, segs, self.history + self.horizon)
            starts = starts[[not bad[s + self.history:s + self.history + self.horizon].any()
                             and not (part.labels is not None and part.labels[s:s + self.history].any())
                             for s in starts]] if len(starts) else starts
            if not len(starts):
                raise ValueError(f"{table.source}: no complete window of {self.history}+{self.horizon} rows in rows "
                                 f"{a}..{b}")
            sets.append(TensorDataset(*self._windows(z[a:b], starts)))
        self._cache = (key, sets[0], sets[1])
        return sets[0], sets[1]

    def _windows(self, z: np.ndarray, starts: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """(future [N, h, F], history [N, L, F] with 0 where missing, mask [N, L, F]) for window starts."""
        idx = starts[:, None] + np.arange(self.history + self.horizon)[None]
        w = torch.as_tensor(z[idx], dtype=torch.float32)
        hist, fut = w[:, :self.history], w[:, self.history:]
        mask = torch.isfinite(hist).float()
        return fut, torch.nan_to_num(hist, nan=0.0), mask

    def train_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return self._load(options)[0]

    def val_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return self._load(options)[1]

    # ---------------------------------------------------------------- the model's view
    def build_backbone(self, config: dict[str, Any], schedule: NoiseSchedule | None = None) -> nn.Module:
        return TFDPMNet(len(self.options["columns"]), self.horizon, self.history, **config, schedule=schedule)

    def space_for(self, batch: Any) -> DenseSpace:
        future, history, mask = batch
        return DenseSpace(future.shape, device=future.device).with_condition(history=history, history_mask=mask)

    def state_from(self, batch: Any) -> Tensor:
        return batch[0]

    def network_condition(self, space: Space) -> dict[str, Any]:
        return {"history": space.condition["history"], "history_mask": space.condition["history_mask"]}

    def condition_keys(self) -> tuple[str, ...]:
        return ("history", "future")

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> DenseSpace:
        """n forecasts [n, h, F] continuing the given ``history`` (raw units) or the saved held-out windows."""
        given = self.check_conditions(conditions)
        f = len(self.options["columns"])
        if "history" in given:
            z = self.normaliser.apply(_as_windows(given["history"], n, (self.history, f), "history"))
            hist = torch.as_tensor(z, dtype=torch.float32)
            mask = torch.isfinite(hist).float()
            cond = {"history": torch.nan_to_num(hist, nan=0.0), "history_mask": mask}
            if "future" in given:
                fut = self.normaliser.apply(_as_windows(given["future"], n, (self.horizon, f), "future"))
                cond["reference"] = torch.as_tensor(fut, dtype=torch.float32)
        else:
            if "future" in given:
                raise ValueError("condition 'future' needs the 'history' it continues")
            pick = torch.arange(n) % len(self.bank["history"])
            cond = {key: self.bank[key][pick].clone() for key in ("history", "history_mask", "reference")}
        return DenseSpace((n, self.horizon, f)).with_condition(cond)

    # ---------------------------------------------------------------- state saved with the model
    @property
    def bank(self) -> dict[str, Tensor]:
        if getattr(self, "_bank", None) is None:
            val = self.val_dataset(self.options)
            pick = torch.linspace(0, len(val) - 1, BANK_SIZE).round().long()
            fut, hist, mask = (t[pick] for t in val.tensors)
            self._bank = {"history": hist, "history_mask": mask, "reference": fut}
        return self._bank

    def state_tensors(self) -> dict[str, Tensor]:
        nm = self.normaliser
        out = {k: torch.as_tensor(getattr(nm, k), dtype=torch.float64) for k in ("mean", "scale", "binary", "constant")}
        out.update({f"bank_{k}": v for k, v in self.bank.items()})
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.normaliser = Normaliser(list(self.options["columns"]), tensors["mean"].numpy(), tensors["scale"].numpy(),
                                     tensors["binary"].numpy().astype(bool), tensors["constant"].numpy().astype(bool))
        self._bank = {k: tensors[f"bank_{k}"] for k in ("history", "history_mask", "reference")}

    # ---------------------------------------------------------------- attack detection (``sciddpm detect``)
    def detect(self, model: Any, export: Path, readings: str, output: Path, calibrate: str | None = None,
               quantile: float = 0.99, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Score a plant CSV or stdin with this model (``report.run_detect``; the CLI only dispatches here)."""
        from .report import run_detect

        return run_detect(model, export, readings, output, calibrate, quantile, overrides)

    # ---------------------------------------------------------------- outputs
    def write_samples(self, path: Path, samples: Tensor, space: Space | None = None) -> None:
        """CSV: one row per (sample, future step) with the forecast in raw units."""
        import csv

        require_suffix(path, self.sample_suffixes)
        raw = self.normaliser.invert(samples.detach().cpu().double().numpy())
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["sample", "step", *self.options["columns"]])
            for i, forecast in enumerate(raw):
                for k, row in enumerate(forecast):
                    out.writerow([i, k + 1, *(f"{v:.6g}" for v in row)])

    def plot_samples(self, path: Path, samples: Tensor, space: Space | None = None) -> None:
        """The first four sensors: history (line) and the sampled forecasts (dots) of the first window."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 5))
        FigureCanvasAgg(fig)
        axes = fig.subplots(2, 2).ravel()
        hist = space.condition["history"][0].cpu() if space is not None else None
        steps = np.arange(self.history, self.history + self.horizon)
        for j, ax in enumerate(axes[:min(4, samples.shape[2])]):
            if hist is not None:
                ax.plot(np.arange(self.history), hist[:, j], "k-", lw=1, label="history")
            for s in samples[: min(16, len(samples))].cpu():
                ax.plot(steps, s[:, j], ".", color="C1", alpha=0.5)
            ax.set_title(self.options["columns"][j], fontsize=9)
        fig.subplots_adjust(hspace=0.35)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")

    def evaluate(self, samples: Tensor, space: Space | None = None) -> dict[str, float]:
        """Forecast error against the observed continuation (standard units): MAE and RMSE of the samples and of
        their mean, and the mean sample spread. Empty where the space carries no ``reference``."""
        if space is None or "reference" not in space.condition:
            return {}
        ref, s = space.condition["reference"].double().cpu(), samples.detach().double().cpu()
        return {"mae": float((s - ref).abs().mean()), "rmse": float((s - ref).pow(2).mean().sqrt()),
                "spread": float(s.std(0).mean()) if len(s) > 1 else 0.0}
