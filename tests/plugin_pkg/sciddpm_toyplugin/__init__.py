"""A throw-away third-party domain package for the plug-in tests (not part of sciddpm).

It registers itself only through packaging metadata: the tests write a ``.dist-info`` with an ``entry_points.txt``
(group ``sciddpm.domains``, ``toyplugin = sciddpm_toyplugin:ToyDomain``) next to this package on PYTHONPATH, which
is how ``pip install`` registers any package's entry points. The data: two 2-D Gaussian blobs N((∓2, 0), 0.5² I)
labelled y = 0 / 1, generated in code; the network is class-conditional with a null label (y = 2) trained by label
dropout, so classifier-free guidance applies (Ho & Salimans 2021).
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
from sciddpm.schedules import NoiseSchedule
from sciddpm.spaces import DenseSpace

NULL = 2  # the unconditional label


class ToyNet(nn.Module):
    """ε̂(x, t, y) = MLP([x, sin/cos(t ω_k), embed(y)]), y ∈ {0, 1, NULL}."""

    def __init__(self, hidden: int = 64, emb: int = 16, num_steps: int = 1000) -> None:
        super().__init__()
        self.emb, self.num_steps = emb, num_steps
        self.label = nn.Embedding(3, emb)
        self.body = nn.Sequential(nn.Linear(2 + 2 * emb, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, 2))

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        freqs = torch.exp(-math.log(1e4) * torch.arange(self.emb // 2, device=x.device) / (self.emb // 2))
        angle = (t.to(torch.float32) / self.num_steps * 1000.0)[:, None] * freqs
        return self.body(torch.cat([x, angle.sin(), angle.cos(), self.label(y.long())], dim=1))


class ToyDomain(Domain):
    name = "toyplugin"

    def data_keys(self) -> tuple[str, ...]:
        return ("n", "seed")

    def backbone_keys(self, config: dict[str, Any]) -> tuple[str, ...]:
        return constructor_keys(ToyNet)

    def _data(self, options: dict[str, Any], split: int) -> TensorDataset:
        n = int(options.get("n", 512))
        gen = torch.Generator().manual_seed(int(options.get("seed", 0)) * 2 + split)
        y = torch.randint(0, 2, (n,), generator=gen)
        x = 0.5 * torch.randn(n, 2, generator=gen)
        x[:, 0] += 4.0 * y - 2.0
        return TensorDataset(x, y)

    def train_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return self._data(options, 0)

    def val_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return self._data(options, 1)

    def build_backbone(self, config: dict[str, Any], schedule: NoiseSchedule | None = None) -> nn.Module:
        return ToyNet(**config)

    def space_for(self, batch: Any) -> DenseSpace:
        x, y = batch
        return DenseSpace(x.shape, device=x.device).with_condition({"y": y})

    def state_from(self, batch: Any) -> Tensor:
        return batch[0]

    def training_condition(self, space: Any, generator: torch.Generator | None = None) -> dict[str, Any]:
        y = space.condition["y"]
        drop = torch.rand(y.shape, generator=generator, device=y.device) < 0.2
        return {"y": torch.where(drop, torch.full_like(y, NULL), y)}

    def null_condition(self, space: Any) -> dict[str, Any]:
        return {"y": torch.full_like(space.condition["y"], NULL)}

    def condition_keys(self) -> tuple[str, ...]:
        return ("y",)

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> DenseSpace:
        given = self.check_conditions(conditions)
        if "y" in given:
            y = torch.as_tensor(given["y"]).long().reshape(-1).expand(n) if torch.as_tensor(given["y"]).numel() == 1 \
                else torch.as_tensor(given["y"]).long()
            if y.shape != (n,) or not ((y == 0) | (y == 1)).all():
                raise ValueError(f"condition 'y' must be 0 or 1, one label or {n}")
        else:
            y = torch.randint(0, 2, (n,), generator=generator)
        return DenseSpace((n, 2)).with_condition({"y": y.clone()})

    def write_samples(self, path: Path, samples: Tensor, space: Any = None) -> None:
        labels = space.condition["y"].tolist() if space is not None else [""] * len(samples)
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([["x0", "x1", "y"]] + [[*r, l] for r, l in zip(samples.tolist(), labels)])

    def plot_samples(self, path: Path, samples: Tensor, space: Any = None) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(3, 3))
        FigureCanvasAgg(fig)
        fig.subplots().scatter(samples[:, 0].cpu(), samples[:, 1].cpu(), s=3)
        fig.savefig(path, dpi=50, format="png")

    def evaluate(self, samples: Tensor, space: Any = None) -> dict[str, float]:
        y = space.condition["y"].cpu()
        out = {"n": float(len(samples))}
        for label in (0, 1):
            if (y == label).any():
                out[f"mean_x0_label{label}"] = float(samples[y == label, 0].mean())
        return out
