"""The images domain: Fashion-MNIST (Xiao et al. 2017) with an ADM-style UNet, wired to the core.

State: images scaled to x = 2k/255 − 1 ∈ [−1, 1], shape [B, 1, 28, 28], in a ``DenseSpace`` (d = 784).
Backbone: :class:`~sciddpm.domains.images.backbone.UNet` built from the config (default ``SMALL_UNET``, CPU-sized);
with ``class_conditional`` it gets ``num_classes = 10`` and a learned null token (index 10).
Metrics: FD-classifier of samples vs the test images (``n_reference`` of them, default 2,000) on the in-project
evaluation classifier (NOT FID), plus classifier accuracy of class-conditional samples against their labels.

Options (``data:``): ``path`` (folder of the four IDX ``.gz`` files; default the committed subset
``tests/data/fashion_mnist_subset``, real runs ``../shared/data/fashion_mnist``), ``max_train`` (optional cap on
training images, first N), ``n_reference`` (test images for FD, default 2000), ``class_conditional`` (bool),
``p_uncond`` (label dropout to the null token during training, default 0.1, so that one network is also the
unconditional model: classifier-free guidance, Ho & Salimans 2022), ``classifier`` (evaluation-classifier weights;
default the committed ones), ``super_resolution`` (an int factor f ≥ 2 dividing 28, default off: SR3, Saharia et
al. 2021, see ``sr3.py``).

Conditions (``DiffusionModel.sample(conditions=...)``, ``sciddpm sample --condition``), carried by the sampling
space (``Space.condition``), so the domain keeps no sampling state:

- ``y``: class labels of a class-conditional model, an int (all samples) or n ints in 0..9; default: classes
  cycling 0..9. Classifier-free guidance is a sampling hook: ``sample(guidance=sciddpm.guidance.ClassifierFree(λ))``
  gives ε̃ = ε(x|∅) + λ(ε(x|c) − ε(x|∅)) with ``null_condition`` (the null token, index 10).
- ``low_res``: the LR inputs [n, 1, 28/f, 28/f] in [−1, 1] of a super-resolution model (SR3: the UNet gets
  ``cond_channels = 1`` and is trained on ε(x_t, t | x_LR) with x_LR = ``sr3.downsample(x₀, f)``); default: the LR
  versions of the **first n test images**, whose HR images then travel as ``reference``.
- ``reference``: HR images [n, 1, 28, 28] to score super-resolved samples against; ``evaluate`` then adds PSNR and
  SSIM (8-bit pixels) of the samples and of bicubic upsampling of the same LR inputs.

``evaluate`` scores class-conditional samples' accuracy against the labels their space carries (or an explicit
``(samples, labels)`` tuple).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from sciddpm.domain import Domain, constructor_keys, per_sample_integers, register_domain
from sciddpm.network_time import refuse_raw_time_config, require_schedule
from sciddpm.outputs import atomic_path, require_suffix
from sciddpm.schedules import NoiseSchedule
from sciddpm.spaces import DenseSpace

from .backbone import UNet
from .data import from_model_range, load_fashion_mnist, to_model_range
from .sr3 import downsample, sr_metrics

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "tests" / "data" / "fashion_mnist_subset"
#: The default (CPU-sized) UNet: 2 levels (28, 14), one res block each, attention only in the middle.
SMALL_UNET: dict[str, Any] = {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
                              "attention_resolutions": [], "dropout": 0.0, "norm_groups": 8}
NUM_CLASSES = 10


@register_domain
class ImagesDomain(Domain):
    name = "images"
    data_range = (-1.0, 1.0)
    resolution = 2.0 / 255.0
    threshold_x0 = True  # x̂₀ clipped to [−1, 1] by every thresholding sampler unless the caller says otherwise
    sample_suffix = ".npy"
    sample_suffixes = (".npy", ".npz", ".png")
    min_eval_samples = 2  # the Fréchet distance needs the samples' covariance

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.conditional = bool(self.options.get("class_conditional", False))
        self.p_uncond = float(self.options.get("p_uncond", 0.1))
        if not 0.0 <= self.p_uncond <= 1.0:
            raise ValueError(f"p_uncond must be in [0, 1], got {self.p_uncond}")
        sr = self.options.get("super_resolution")
        if sr not in (None, 0, False) and (isinstance(sr, bool) or not isinstance(sr, int) or sr < 2 or 28 % sr):
            raise ValueError(f"super_resolution must be an int factor >= 2 dividing 28 (e.g. 2), got {sr!r}")
        self.sr_factor: int = int(sr or 0)
        self._cache: dict[str, TensorDataset] = {}
        self._classifier = None

    # -- data -------------------------------------------------------------------------------------
    def _split(self, options: dict[str, Any], split: str) -> TensorDataset:
        key = f"{split}:{options.get('path', DEFAULT_PATH)}:{options.get('max_train')}"
        if key not in self._cache:
            path = Path(options.get("path", DEFAULT_PATH))
            try:
                images, labels = load_fashion_mnist(path, split)  # type: ignore[arg-type]
            except FileNotFoundError as exc:
                raise ValueError(str(exc)) from None
            if split == "train" and options.get("max_train"):
                images, labels = images[: int(options["max_train"])], labels[: int(options["max_train"])]
            if len(images) == 0:
                raise ValueError(f"{path}: the {split} split holds no images")
            self._cache[key] = TensorDataset(to_model_range(images), torch.as_tensor(labels))
        return self._cache[key]

    def train_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return self._split(options, "train")

    def val_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return self._split(options, "test")

    def collate(self, items: list[Any]) -> tuple[Tensor, Tensor]:
        return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])

    # -- model ------------------------------------------------------------------------------------
    def build_backbone(self, config: dict[str, Any], schedule: NoiseSchedule | None = None) -> nn.Module:
        """The UNet of ``config`` (over ``SMALL_UNET``) reading t through ``schedule.c_noise`` (required)."""
        refuse_raw_time_config(config, "images backbone")
        cfg = {**SMALL_UNET, **config}
        if self.conditional:
            cfg["num_classes"] = NUM_CLASSES
        if self.sr_factor:
            cfg["cond_channels"] = cfg.get("in_channels", 1)
        return UNet(**cfg, schedule=require_schedule(schedule, "ImagesDomain.build_backbone"))

    def space_for(self, batch: Any) -> DenseSpace:
        """The images' space carrying their labels (``y``, class-conditional) and LR inputs (``cond_image``, SR3:
        ``sr3.downsample(x₀, f)``) with the HR images themselves as ``reference``."""
        x = batch[0]
        return DenseSpace(x.shape, device=x.device).with_condition(self._data_condition(x, batch[1]))

    def _data_condition(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        cond: dict[str, Tensor] = {}
        if self.conditional:
            cond["y"] = y.long()
        if self.sr_factor:
            cond["cond_image"], cond["reference"] = downsample(x, self.sr_factor), x
        return cond

    def state_from(self, batch: Any) -> Tensor:
        return batch[0]

    def network_condition(self, space: Any) -> dict[str, Any]:
        """{"y": labels} (class-conditional) and {"cond_image": x_LR} (SR3) from the space's condition."""
        return {k: v for k, v in space.condition.items() if k in ("y", "cond_image")}

    def training_condition(self, space: Any, generator: torch.Generator | None = None) -> dict[str, Any]:
        """The network inputs with each label replaced by the null token (index 10) with probability ``p_uncond``
        (condition dropout: the same network learns ε(x|∅), Ho & Salimans 2022)."""
        cond = self.network_condition(space)
        if "y" in cond:
            y = cond["y"]
            u = torch.rand(y.shape, generator=generator, device=generator.device if generator is not None else y.device)
            cond["y"] = torch.where(u.to(y.device) < self.p_uncond, torch.full_like(y, NUM_CLASSES), y)
        return cond

    def null_condition(self, space: Any) -> dict[str, Any] | None:
        """The unconditional model's inputs: every label set to the null token (the LR input, if any, is kept)."""
        if not self.conditional:
            return None
        cond = self.network_condition(space)
        cond["y"] = torch.full_like(cond["y"], NUM_CLASSES)
        return cond

    def condition_keys(self) -> tuple[str, ...]:
        return (("y",) if self.conditional else ()) + (("low_res", "reference") if self.sr_factor else ())

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> DenseSpace:
        """n images [n, 1, 28, 28] carrying their labels and LR inputs (see the module docstring)."""
        given = self.check_conditions(conditions)
        cond: dict[str, Tensor] = {}
        if self.conditional:
            cond["y"] = _labels(given.get("y"), n)
        if self.sr_factor:
            cond.update(self._sr_condition(n, given.get("low_res"), given.get("reference")))
        return DenseSpace((n, 1, 28, 28)).with_condition(cond)

    def _sr_condition(self, n: int, low: Any, reference: Any) -> dict[str, Tensor]:
        size = 28 // self.sr_factor
        if low is None:
            high = self.val_dataset(self.options).tensors[0]
            if reference is not None:
                raise ValueError("condition 'reference' needs the 'low_res' inputs it belongs to")
            if n > len(high):
                raise ValueError(f"super-resolution of the test images samples the first n of them; n = {n} > "
                                 f"{len(high)} in the split (give condition 'low_res' instead)")
            return {"cond_image": downsample(high[:n], self.sr_factor), "reference": high[:n]}
        out = {"cond_image": _images(low, "low_res", n, size)}
        if reference is not None:
            out["reference"] = _images(reference, "reference", n, 28)
        return out

    def data_keys(self) -> tuple[str, ...]:
        return ("path", "max_train", "class_conditional", "p_uncond", "super_resolution", "classifier", "n_reference")

    def backbone_keys(self, config: dict[str, Any]) -> tuple[str, ...]:
        return constructor_keys(UNet, exclude=("num_classes", "cond_channels"))  # set from data: options

    # -- output -----------------------------------------------------------------------------------
    def write_samples(self, path: Path, samples: Tensor, space: Any = None) -> None:
        """``path`` by its extension: ``.npy`` the samples as a float32 array [N, 1, 28, 28] in [−1, 1], ``.npz`` the
        same array named ``samples`` (with the labels ``y`` of a class-conditional space), ``.png`` the 8-bit grid
        of the first 100; any other extension is refused. Written to a temporary name, then renamed."""
        suffix = require_suffix(path, self.sample_suffixes)
        if suffix == ".png":
            self.plot_samples(path, samples, space)
            return
        x = samples.detach().cpu().float().numpy()
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            if suffix == ".npy":
                np.save(fh, x)
            else:
                y = (getattr(space, "condition", None) or {}).get("y")
                np.savez(fh, samples=x, **({} if y is None else {"y": y.detach().cpu().numpy()}))

    def plot_samples(self, path: Path, samples: Tensor, space: Any = None, nrow: int = 10) -> None:
        """A grid of up to nrow² samples as an 8-bit greyscale PNG (pixels k = round((x + 1)·127.5))."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        grid = image_grid(samples[: nrow * nrow], nrow)
        with atomic_path(path) as tmp:
            plt.imsave(str(tmp), grid, cmap="gray", vmin=0, vmax=255, format="png")

    def _eval_classifier(self):
        if self._classifier is None:
            from .metrics import DEFAULT_WEIGHTS, load_eval_classifier

            self._classifier = load_eval_classifier(self.options.get("classifier", DEFAULT_WEIGHTS))
        return self._classifier

    def evaluate(self, samples: Any, space: Any = None) -> dict[str, float]:
        """FD-classifier vs the first ``n_reference`` test images; accuracy of conditional samples against the
        labels their space carries (or an explicit ``(samples, labels)`` tuple); with ``super_resolution`` and a
        ``reference`` in the space, PSNR/SSIM of the samples and of the bicubic baseline against it."""
        from .metrics import classifier_accuracy, fd_classifier

        labels = None
        condition = getattr(space, "condition", {}) or {}
        if isinstance(samples, (tuple, list)):
            samples, labels = samples
        elif "y" in condition:
            labels = condition["y"].cpu()
        self.check_eval_count(len(samples))
        x = samples.detach().cpu().float().clamp(-1, 1)
        ref = self.val_dataset(self.options).tensors[0][: int(self.options.get("n_reference", 2000))]
        clf = self._eval_classifier()
        out = {"fd_classifier": fd_classifier(x, ref, clf), "n_samples": float(len(x)), "n_reference": float(len(ref))}
        if labels is not None:
            out["classifier_accuracy"] = classifier_accuracy(x, labels, clf)
        if self.sr_factor and "reference" in condition:
            out.update(sr_metrics(x, condition["reference"].cpu(), condition["cond_image"].cpu()))
        return out


def _labels(value: Any, n: int) -> Tensor:
    """Class labels [n] from an int (all samples) or n ints in 0..9 (default: classes cycling 0..9)."""
    if value is None:
        return torch.arange(n) % NUM_CLASSES
    y = per_sample_integers(value, n, "y", "labels")
    if bool(((y < 0) | (y >= NUM_CLASSES)).any()):
        raise ValueError(f"condition 'y' must lie in 0..{NUM_CLASSES - 1}, got {sorted(set(y.tolist()))}")
    return y


def _images(value: Any, name: str, n: int, size: int) -> Tensor:
    """Images [n, 1, size, size] in [−1, 1] (a tensor or array); one-line ValueError naming ``name`` otherwise."""
    x = torch.as_tensor(value, dtype=torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if tuple(x.shape) != (n, 1, size, size):
        raise ValueError(f"condition {name!r} has shape {tuple(x.shape)}; expected ({n}, 1, {size}, {size})")
    if not bool(torch.isfinite(x).all()) or float(x.abs().max()) > 1.0 + 1e-6:
        raise ValueError(f"condition {name!r} must hold finite values in [-1, 1]")
    return x


def image_grid(samples: Tensor, nrow: int = 10) -> np.ndarray:
    """[N, 1, H, W] in [−1, 1] → a uint8 [rows·(H+2), nrow·(W+2)] mosaic with 2-pixel black borders."""
    px = from_model_range(samples.detach().cpu()).numpy()[:, 0]
    n, h, w = px.shape
    rows = max(1, -(-n // nrow))
    grid = np.zeros((rows * (h + 2), min(n, nrow) * (w + 2)), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[r * (h + 2) + 1: r * (h + 2) + 1 + h, c * (w + 2) + 1: c * (w + 2) + 1 + w] = px[i]
    return grid
