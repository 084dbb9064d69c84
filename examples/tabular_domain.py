"""A new modality in one page: hourly SCADA sensor vectors of the BATADAL water network (Taormina et al. 2018).

State: one standardised row of continuous sensor readings (tank levels, flows, pressures) in a DenseSpace
[B, F]. Backbone: an MLP with a sinusoidal time embedding. Metrics: per-column mean/std error (in standard
units) and sliced-W₂ to held-out rows. Options (``data:`` in the config): ``path`` (CSV with a header line of
column names, required, and numeric columns; default: the bundled BATADAL subset), ``val_fraction``, ``split_seed``. Backbone keys (``backbone:``):
``TimeMLP``'s ``hidden``, ``layers``, ``t_scale``, ``emb``.

Registered through the ``sciddpm.domains`` entry point ``tabular = "examples.tabular_domain:TabularDomain"`` in this
project's pyproject.toml (``--domain examples.tabular_domain:TabularDomain`` works without it).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from sciddpm.domain import Domain, constructor_keys
from sciddpm.network_time import require_schedule
from sciddpm.oracle import sliced_wasserstein2
from sciddpm.outputs import atomic_path, require_suffix
from sciddpm.schedules import NoiseSchedule
from sciddpm.spaces import DenseSpace

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "tests" / "data" / "batadal_subset.csv"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class TimeMLP(nn.Module):
    """ε̂(x, t) = MLP([x, sin/cos(250 c_noise(t)·ω_k)]) with geometric frequencies ω_k (Vaswani et al. 2017) and
    c_noise(t) = ¼ ln(σ_t/α_t) of ``schedule`` (Karras et al. 2022): the time input is the noise level."""

    def __init__(self, features: int, hidden: int = 128, layers: int = 3, emb: int = 32, *,
                 schedule: NoiseSchedule | None = None):
        super().__init__()
        self.schedule, self.emb = require_schedule(schedule, "TimeMLP"), emb
        dims = [features + emb] + [hidden] * layers
        self.body = nn.Sequential(*[m for a, b in zip(dims, dims[1:]) for m in (nn.Linear(a, b), nn.SiLU())])
        self.out = nn.Linear(hidden, features)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        freqs = torch.exp(-math.log(1e4) * torch.arange(self.emb // 2, device=x.device) / (self.emb // 2))
        angle = (250.0 * self.schedule.c_noise(t)).to(torch.float32)[:, None] * freqs
        return self.out(self.body(torch.cat([x, angle.sin().to(x.dtype), angle.cos().to(x.dtype)], dim=1)))


class TabularDomain(Domain):
    """Standardised rows of a numeric CSV in a DenseSpace [B, F]; unconditional."""

    name = "tabular"
    sample_suffixes = (".csv",)
    min_eval_samples = 2  # the per-column standard deviations

    def data_keys(self) -> tuple[str, ...]:
        return ("path", "val_fraction", "split_seed")

    def backbone_keys(self, config: dict[str, Any]) -> tuple[str, ...]:
        return constructor_keys(TimeMLP, exclude=("features",))

    def _load(self, options: dict[str, Any]) -> tuple[Tensor, Tensor]:
        path = Path(options.get("path", DEFAULT_PATH))
        if not path.is_file():
            raise ValueError(f"tabular data file not found: {path}")
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows or all(_is_number(v) for v in rows[0]):
            raise ValueError(f"{path}: the first line must be a header of column names (it is empty or numbers)")
        self.columns = self.options["columns"] = rows[0]
        for line, r in enumerate(rows[1:], start=2):
            if r and len(r) != len(rows[0]):
                raise ValueError(f"{path}: line {line} has {len(r)} values; the header names {len(rows[0])} columns")
        try:
            data = torch.tensor([[float(v) for v in r] for r in rows[1:] if r], dtype=torch.float32)
        except ValueError as exc:
            raise ValueError(f"{path}: non-numeric value ({exc})") from None
        if data.ndim != 2 or len(data) < 4 or not torch.isfinite(data).all():
            raise ValueError(f"{path}: need >= 4 rows of finite numbers (found NaN/inf or too few rows)")
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(options.get("split_seed", 0)))
        n_val = max(1, int(len(data) * options.get("val_fraction", 0.2)))
        train, val = data[perm[n_val:]], data[perm[:n_val]]
        self.mean, self.std = train.mean(0), train.std(0).clamp_min(1e-6)
        return (train - self.mean) / self.std, (val - self.mean) / self.std

    def train_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return TensorDataset(self._load(options)[0])

    def val_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return TensorDataset(self._load(options)[1])

    def collate(self, items: list[Any]) -> Tensor:
        return torch.stack([item[0] for item in items])

    def build_backbone(self, config: dict[str, Any], schedule: NoiseSchedule | None = None) -> nn.Module:
        return TimeMLP(len(self.mean), **config, schedule=schedule)

    def space_for(self, batch: Tensor) -> DenseSpace:
        return DenseSpace(batch.shape, device=batch.device)

    def state_from(self, batch: Tensor) -> Tensor:
        return batch

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> DenseSpace:
        self.check_conditions(conditions)  # an unconditional model: any condition is an error
        return DenseSpace((n, len(self.mean)))

    def state_tensors(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "std": self.std}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.mean, self.std = tensors["mean"], tensors["std"]
        self.columns = self.options.get("columns", [f"x{i}" for i in range(len(self.mean))])

    def write_samples(self, path: Path, samples: Tensor, space: Any = None) -> None:
        require_suffix(path, self.sample_suffixes)
        if samples.dim() != 2 or samples.shape[1] != len(self.columns) or len(self.columns) != len(self.mean):
            raise ValueError(f"{path}: samples of shape {tuple(samples.shape)} do not match the model's "
                             f"{len(self.columns)} column names and {len(self.mean)} features")
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            csv.writer(fh).writerows([self.columns] + (samples.cpu().float() * self.std + self.mean).tolist())

    def plot_samples(self, path: Path, samples: Tensor, space: Any = None) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure  # the object API: no pyplot state machine, a faster start-up

        val = self.val_dataset(self.options).tensors[0]
        fig = Figure(figsize=(9, 4))
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 2)
        axes[0].scatter(val[:, 0], val[:, 1], s=4, label="held-out")
        axes[0].scatter(samples[:, 0].cpu(), samples[:, 1].cpu(), s=4, alpha=0.5, label="samples")
        axes[0].set(xlabel=self.columns[0], ylabel=self.columns[1]), axes[0].legend()
        axes[1].boxplot(samples.cpu().float().numpy(), showfliers=False)
        axes[1].set_title("standardised sample columns")
        fig.subplots_adjust(left=0.08, right=0.98, bottom=0.12, top=0.92, wspace=0.25)  # no tight_layout: one draw
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")

    def evaluate(self, samples: Tensor, space: Any = None) -> dict[str, float]:
        self.check_eval_count(len(samples))
        val, s = self.val_dataset(self.options).tensors[0].double(), samples.detach().cpu().double()
        m = min(len(val), len(s))
        return {"mean_abs_error": float((s.mean(0) - val.mean(0)).abs().mean()),
                "std_abs_error": float((s.std(0) - val.std(0)).abs().mean()),
                "sliced_w2_heldout": float(sliced_wasserstein2(s[:m], val[:m], generator=torch.Generator().manual_seed(0)))}
