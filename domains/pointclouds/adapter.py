"""The point-cloud completion Domain: a conditional DDPM from a partial scan to the complete shape (PDR, Lyu et al.
ICLR 2022), with PDR's one-pass refinement as an optional second stage saved with the model.

State: the complete cloud x₀ ∈ R^{N×3} (shapes centred in the unit sphere), a ``DenseSpace`` [B, N, 3]. Condition
(``Space.condition``): ``partial`` [B, M, 3], the partial cloud the network is conditioned on, and optionally
``reference`` [B, N', 3], the complete shape, used only by ``evaluate``. So the partial travels with the space like a
class label or a low-resolution image.

Data options (``data:``): ``path`` (the ModelNet40 ``.npz`` or a folder of shapes, see ``data.py``; default the
bundled subset ``tests/data/modelnet40_tiny.npz``), ``classes`` (training classes; default all in the file),
``per_class`` (at most this many shapes per class and split; default all; ``per_class_test`` for the test split), ``n_points`` N (256), ``n_partial`` M
(128), ``views`` per training shape (4; the test set gets one fixed view per shape), ``partial_kinds``
(``["hpr", "crop"]``, taken in turn), ``gamma`` (HPR, 1.5), ``camera_distance`` (3.0), ``crop`` (0.5), ``seed`` (0), ``clip`` (1.0: the box that
every thresholding sampler clips x̂₀ to by default, ``Domain.threshold_x0``; 0 = off).
Conditions for ``sample_space``: ``partial`` ([M', 3] for all samples or [n, M', 3]; any M') and ``reference``
([N', 3] or [n, N', 3]); without them the samples complete a bank of held-out partials saved with the model.
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
from sciddpm.schedules import NoiseSchedule, schedule_from_config
from sciddpm.spaces import DenseSpace, Space

from .backbone import PointDiffusionNet
from .completion import plot_completion, write_ply
from .data import ShapeSet, load_shapes, make_partials
from .metrics import completion_metrics

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "tests" / "data" / "modelnet40_tiny.npz"
BANK_SIZE = 8
#: Seed offset of the fixed test views (training views use ``seed``).
TEST_VIEW_SEED = 1_000_003


def _clouds(value: Any, n: int, key: str) -> Tensor:
    """A condition of clouds as float32 [n, P, 3] from [P, 3] (all samples) or [n, P, 3]; finite."""
    arr = torch.as_tensor(np.asarray(value.cpu() if isinstance(value, Tensor) else value, dtype=np.float32))
    if arr.dim() == 2:
        arr = arr[None].expand(n, -1, -1)
    if arr.dim() != 3 or arr.shape[0] != n or arr.shape[2] != 3 or arr.shape[1] < 1:
        raise ValueError(f"condition {key!r} has shape {tuple(arr.shape)}; expected (P, 3) or ({n}, P, 3)")
    if not torch.isfinite(arr).all():
        raise ValueError(f"condition {key!r} holds non-finite coordinates")
    return arr.contiguous()


class PointCloudDomain(Domain):
    """Complete shapes [N, 3] conditioned on partial clouds [M, 3] (see the module docstring)."""

    name = "pointclouds"
    sample_suffix = ".ply"
    sample_suffixes = (".ply", ".npy")
    default_schedule: dict[str, Any] = {"type": "linear", "num_steps": 1000}
    threshold_x0 = True  # every thresholding sampler clips x̂₀ to ``data_range`` (the ``clip`` box) by default

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self._cache: tuple[Any, ...] | None = None
        self._bank: dict[str, Tensor] | None = None
        self.refiner: nn.Module | None = None

    # ---------------------------------------------------------------- options and data
    def data_keys(self) -> tuple[str, ...]:
        return ("path", "classes", "per_class", "per_class_test", "n_points", "n_partial", "views", "partial_kinds", "gamma",
                "camera_distance", "crop", "seed", "clip", "refiner")

    def backbone_keys(self, config: dict[str, Any]) -> tuple[str, ...]:
        return constructor_keys(PointDiffusionNet)

    @property
    def n_points(self) -> int:
        return int(self.options.get("n_points", 256))

    @property
    def clip_box(self) -> float | None:
        """Half-width c of the box [−c, c]³ that DDPM/DDIM clip their x̂₀ predictions to (Ho et al. 2020 clip to the
        data range): option ``clip`` (default 1.0, the unit sphere's box; 0 turns it off)."""
        value = float(self.options.get("clip", 1.0))
        return value if value > 0 else None

    @property
    def data_range(self) -> tuple[float, float] | None:  # type: ignore[override]
        """[−c, c] per coordinate (the ``clip`` box; None when it is off): the x̂₀ box of ``threshold_x0`` and
        Analytic-DPM's data bound."""
        c = self.clip_box
        return None if c is None else (-c, c)

    def view_options(self) -> dict[str, float]:
        o = self.options
        return {"gamma": float(o.get("gamma", 1.5)), "camera_distance": float(o.get("camera_distance", 3.0)),
                "crop": float(o.get("crop", 0.5))}

    def shapes(self, options: dict[str, Any], train: bool, classes: list[str] | None = None) -> ShapeSet:
        """The complete shapes of one split, of ``classes`` (default the ``classes`` option, else all), at most
        ``per_class`` per class (the first ones in file order)."""
        shapes = load_shapes(options.get("path", DEFAULT_PATH), self.n_points)
        names = classes if classes is not None else options.get("classes") or shapes.classes
        unknown = [c for c in names if c not in shapes.classes]
        if unknown:
            raise ValueError(f"{shapes.source}: unknown class {unknown[0]!r}; classes: {', '.join(shapes.classes)}")
        wanted = np.isin(shapes.label, [shapes.classes.index(c) for c in names]) & (shapes.is_train == train)
        per_class = options.get("per_class" if train else "per_class_test", options.get("per_class"))
        if per_class is not None:
            rank = np.zeros(len(wanted), bool)
            for c in names:
                rank[np.flatnonzero(wanted & (shapes.label == shapes.classes.index(c)))[:int(per_class)]] = True
            wanted &= rank
        if not wanted.any():
            raise ValueError(f"{shapes.source}: no {'training' if train else 'test'} shapes of classes {names}")
        return shapes.select(wanted)

    def pairs(self, shapes: ShapeSet, views: int, seed: int) -> tuple[Tensor, Tensor, np.ndarray, np.ndarray,
                                                                       np.ndarray]:
        """(complete [V, N, 3], partial [V, M, 3], shape index [V], fraction kept [V], kind [V]) with ``views``
        seeded views per shape, kinds in turn (``data.make_partials``)."""
        kinds = tuple(self.options.get("partial_kinds", ("hpr", "crop")))
        part, owner, kept, kind = make_partials(shapes.points, int(self.options.get("n_partial", 128)), kinds, views,
                                                seed, **self.view_options())
        return torch.as_tensor(shapes.points[owner]), torch.as_tensor(part), owner, kept, kind

    def _load(self, options: dict[str, Any]) -> tuple[TensorDataset, TensorDataset]:
        key = repr(sorted((k, v) for k, v in options.items() if k != "refiner"))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        seed = int(options.get("seed", 0))
        train = self.pairs(self.shapes(options, True), int(options.get("views", 4)), seed)
        test = self.pairs(self.shapes(options, False), 1, seed + TEST_VIEW_SEED)
        self.kept_fraction = {f"{split}_{kind}": float(pairs[3][pairs[4] == kind].mean())
                              for split, pairs in (("train", train), ("test", test)) for kind in sorted(set(pairs[4]))}
        sets = (TensorDataset(train[0], train[1]), TensorDataset(test[0], test[1]))
        self._cache = (key, *sets)
        return sets

    def train_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return self._load(options)[0]

    def val_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return self._load(options)[1]

    # ---------------------------------------------------------------- the model's view
    def build_backbone(self, config: dict[str, Any], schedule: NoiseSchedule | None = None) -> nn.Module:
        return PointDiffusionNet(**config, schedule=schedule)

    def space_for(self, batch: Any) -> DenseSpace:
        complete, partial = batch
        return DenseSpace(complete.shape, device=complete.device).with_condition(partial=partial)

    def state_from(self, batch: Any) -> Tensor:
        return batch[0]

    def network_condition(self, space: Space) -> dict[str, Any]:
        return {"partial": space.condition["partial"]}

    def condition_keys(self) -> tuple[str, ...]:
        return ("partial", "reference")

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> DenseSpace:
        """n completions [n, N, 3] of the given ``partial`` clouds or of the saved held-out partials."""
        given = self.check_conditions(conditions)
        if "partial" in given:
            cond = {"partial": _clouds(given["partial"], n, "partial")}
            if "reference" in given:
                cond["reference"] = _clouds(given["reference"], n, "reference")
        else:
            if "reference" in given:
                raise ValueError("condition 'reference' needs the 'partial' it completes")
            pick = torch.arange(n) % len(self.bank["partial"])
            cond = {key: value[pick].clone() for key, value in self.bank.items()}
        return DenseSpace((n, self.n_points, 3)).with_condition(cond)

    # ---------------------------------------------------------------- the refinement stage
    def attach_refiner(self, refiner: nn.Module, backbone: dict[str, Any], schedule: NoiseSchedule) -> None:
        """Keep PDR's refinement network (``refine.OnePassNet``) with the domain, so it is exported with the model
        (``refiner.*`` tensors; its backbone and schedule in the ``refiner`` option)."""
        self.refiner = refiner.eval()
        self.options["refiner"] = {"backbone": dict(backbone), "schedule": schedule.config()}

    @torch.no_grad()
    def refine(self, samples: Tensor, space: Space) -> Tensor:
        """The refined completions y = x + f(x, t*, partial) when a refiner is attached, else ``samples``."""
        if self.refiner is None:
            return samples
        self.refiner.to(samples.device)
        return self.refiner(space.condition["partial"].to(samples.device), samples)

    # ---------------------------------------------------------------- state saved with the model
    @property
    def bank(self) -> dict[str, Tensor]:
        if self._bank is None:
            complete, partial = self.val_dataset(self.options).tensors
            pick = torch.linspace(0, len(partial) - 1, BANK_SIZE).round().long()
            self._bank = {"partial": partial[pick].clone(), "reference": complete[pick].clone()}
        return self._bank

    def state_tensors(self) -> dict[str, Tensor]:
        out = {f"bank_{k}": v for k, v in self.bank.items()}
        if self.refiner is not None:
            out.update({f"refiner.{k}": v for k, v in self.refiner.state_dict().items()})
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self._bank = {k: tensors[f"bank_{k}"] for k in ("partial", "reference")}
        spec = self.options.get("refiner")
        if spec:
            from .refine import OnePassNet

            state = {k[len("refiner."):]: v for k, v in tensors.items() if k.startswith("refiner.")}
            net = OnePassNet(schedule_from_config(spec["schedule"]), spec["backbone"],
                             template_points=len(state.get("template", ())))
            net.load_state_dict(state)
            self.refiner = net.eval()

    # ---------------------------------------------------------------- completion of a user's scan
    def complete(self, model: Any, partial: str, output: Path, samples: int = 8, steps: int = 50,
                 sampler: str = "ddim", seed: int = 0, reference: str | None = None) -> dict[str, Any]:
        """``sciddpm complete``: read a partial cloud file, K completions, medoid + per-point uncertainty to
        ``output`` (``completion.run_complete``; the CLI only dispatches here)."""
        from .completion import run_complete
        from .data import read_cloud

        cloud = read_cloud(partial)
        ref = read_cloud(reference) if reference is not None else None
        return run_complete(model, cloud, Path(output), samples, steps, sampler, seed, ref, source=str(partial))

    # ---------------------------------------------------------------- outputs
    def write_samples(self, path: Path, samples: Tensor, space: Space | None = None) -> None:
        """``.npy``: float32 [n, N, 3]; ``.ply``: all samples' points with a ``sample`` vertex property."""
        suffix = require_suffix(path, self.sample_suffixes)
        pts = samples.detach().cpu().float().numpy()
        if suffix == ".npy":
            with atomic_path(path) as tmp:
                np.save(tmp, pts)
        else:
            owner = np.repeat(np.arange(len(pts)), pts.shape[1]).astype(np.float32)
            write_ply(path, pts.reshape(-1, 3), sample=owner)

    def plot_samples(self, path: Path, samples: Tensor, space: Space | None = None) -> None:
        """The first sample: its partial / completion / reference from three views."""
        cond = space.condition if space is not None else {}
        partial = cond["partial"][0].cpu().numpy() if "partial" in cond else np.zeros((0, 3))
        ref = cond["reference"][0].cpu().numpy() if "reference" in cond else None
        plot_completion(path, partial, samples[0].detach().cpu().numpy(), ref)

    def evaluate(self, samples: Tensor, space: Space | None = None) -> dict[str, float]:
        """Mean CD-L1 (×10³), CD-L2 (×10⁴), F-score@0.01 and exact EMD (×10², equal sizes only) against the
        ``reference`` clouds of the space; empty where it carries none."""
        if space is None or "reference" not in space.condition:
            return {}
        ref = space.condition["reference"].detach().double().cpu()
        s = samples.detach().double().cpu()
        scores = completion_metrics(s, ref, emd=ref.shape[1] == s.shape[1])
        return {k: float(np.mean(v)) for k, v in scores.items()}
