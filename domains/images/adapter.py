"""The images domain: Fashion-MNIST (Xiao et al. 2017) with an ADM-style UNet, wired to the core.

State: images scaled to x = 2k/255 − 1 ∈ [−1, 1], shape [B, 1, 28, 28], in a ``DenseSpace`` (d = 784).
Backbone: :class:`~sciddpm.domains.images.backbone.UNet` built from the config (default ``SMALL_UNET``, CPU-sized);
with ``class_conditional`` it gets ``num_classes = 10`` and a learned null token (index 10).
Metrics: FD-classifier of samples vs the test images (``n_reference`` of them, default 2,000) on the in-project
evaluation classifier (NOT FID), plus classifier accuracy of class-conditional samples against their labels.

Options (``data:``): ``path`` (folder of the four IDX ``.gz`` files; default the committed subset
``tests/data/fashion_mnist_subset``, real runs ``../shared/data/fashion_mnist``), ``max_train`` (optional cap on
training images, first N), ``n_reference`` (test images for FD, default 2000), ``class_conditional`` (bool),
``p_uncond`` (label dropout to the null token during training, default 0.1: classifier-free guidance,
Ho & Salimans 2022), ``guidance_scale`` (λ for sampling a conditional model: ε̃ = ε(x|∅) + λ(ε(x|c) − ε(x|∅));
unset = plain conditional, λ = 1), ``sample_class`` (an int: all samples of this class; default: classes cycle
0..9), ``classifier`` (evaluation-classifier weights; default the committed ones), ``super_resolution`` (an int
factor f ≥ 2 dividing 28, default off: SR3, Saharia et al. 2021, see ``sr3.py``).

Super-resolution (``super_resolution: f``): the UNet gets ``cond_channels = 1`` and is trained on
ε(x_t, t | x_LR) with x_LR = ``sr3.downsample(x₀, f)`` (bicubic, anti-aliased, clamped) of each training batch.
Sampling n images super-resolves the LR versions of the **first n test images** (``sample_space`` stores them in
``self.sr_high`` / ``self.sr_low``; n may not exceed the test split), and ``evaluate`` then adds PSNR and SSIM (8-bit
pixels, ``metrics.psnr``/``metrics.ssim``) of the samples vs those HR test images and of bicubic upsampling of the
same LR inputs (``bicubic_psnr``/``bicubic_ssim``), next to the FD-classifier.

Conditioning and samples: ``DiffusionModel.sample`` calls ``sample_space`` then ``sample_condition``; the labels
drawn for the last ``sample_space`` are kept in ``self.sample_labels`` so that ``evaluate`` can score accuracy.
``evaluate`` also accepts an explicit ``(samples, labels)`` tuple.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from sciddpm.domain import Domain, register_domain
from sciddpm.guidance import batched_pair, classifier_free_guidance
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


class ImagesUNet(UNet):
    """The UNet with classifier-free guidance at call time: ``net(x, t, y, guidance_scale=λ)`` returns
    ε(x|∅) + λ(ε(x|y) − ε(x|∅)) from one doubled batch (``sciddpm.guidance``); same weights as ``UNet``."""

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, cond_image: Tensor | None = None,
                return_features: bool = False, guidance_scale: float | None = None) -> Any:
        if guidance_scale is None or y is None or return_features:
            return super().forward(x, t, y=y, cond_image=cond_image, return_features=return_features)
        null = torch.full_like(torch.as_tensor(y, device=x.device).long(), self.num_classes)
        base = super().forward
        img = {} if cond_image is None else {"cond_image": cond_image}  # SR3: the same LR image in both halves
        pair = batched_pair(lambda x_, t_, **c: base(x_, t_, **c), {"y": y.to(x.device).long(), **img},
                            {"y": null, **img})
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        return classifier_free_guidance(pair, float(guidance_scale))(x, t)


@register_domain
class ImagesDomain(Domain):
    name = "images"
    data_range = (-1.0, 1.0)
    resolution = 2.0 / 255.0
    sample_suffix = ".npy"

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
        self.sr_high: Tensor | None = None
        self.sr_low: Tensor | None = None
        self.sample_labels: Tensor | None = None
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

    def split_batch(self, batch: Any, parts: int) -> list[Any]:
        x, y = batch
        return [(x[k::parts], y[k::parts]) for k in range(parts)]

    # -- model ------------------------------------------------------------------------------------
    def build_backbone(self, config: dict[str, Any], schedule: NoiseSchedule | None = None) -> nn.Module:
        cfg = {**SMALL_UNET, **config}
        if self.conditional:
            cfg["num_classes"] = NUM_CLASSES
        if self.sr_factor:
            cfg["cond_channels"] = cfg.get("in_channels", 1)
        return ImagesUNet(**cfg)

    def space_for(self, batch: Any) -> DenseSpace:
        x = batch[0]
        return DenseSpace(x.shape, device=x.device)

    def state_from(self, batch: Any) -> Tensor:
        return batch[0]

    def condition_from(self, batch: Any) -> dict[str, Any]:
        """{"y": labels} with each label replaced by the null token (index 10) with probability ``p_uncond``;
        with ``super_resolution`` also {"cond_image": sr3.downsample(x₀, f)} (SR3's LR input)."""
        cond: dict[str, Any] = {"cond_image": downsample(batch[0], self.sr_factor)} if self.sr_factor else {}
        if not self.conditional:
            return cond
        y = batch[1].long()
        drop = torch.rand(y.shape, device=y.device) < self.p_uncond
        return {**cond, "y": torch.where(drop, torch.full_like(y, NUM_CLASSES), y)}

    def sr_pair(self, n: int) -> tuple[Tensor, Tensor]:
        """(HR, LR) of the first n test images (CPU, [−1, 1]); stored in ``sr_high``/``sr_low`` for ``evaluate``."""
        high = self.val_dataset(self.options).tensors[0]
        if n > len(high):
            raise ValueError(f"super-resolution samples the first n test images; n = {n} > {len(high)} in the split")
        self.sr_high, self.sr_low = high[:n], downsample(high[:n], self.sr_factor)
        return self.sr_high, self.sr_low

    def sample_space(self, n: int, generator: torch.Generator | None = None) -> DenseSpace:
        if self.conditional:
            cls = self.options.get("sample_class")
            self.sample_labels = (torch.full((n,), int(cls), dtype=torch.long) if cls is not None
                                  else torch.arange(n) % NUM_CLASSES)
        if self.sr_factor:
            self.sr_pair(n)
        return DenseSpace((n, 1, 28, 28))

    def sample_condition(self, space: Any) -> dict[str, Any]:
        cond: dict[str, Any] = {}
        if self.sr_factor:
            low = self.sr_low if self.sr_low is not None and len(self.sr_low) == space.batch_size else None
            cond["cond_image"] = (low if low is not None else self.sr_pair(space.batch_size)[1]).to(space.device)
        if not self.conditional:
            return cond
        labels = self.sample_labels
        if labels is None or len(labels) != space.batch_size:
            labels = torch.arange(space.batch_size) % NUM_CLASSES
            self.sample_labels = labels
        cond["y"] = labels.to(space.device)
        if self.options.get("guidance_scale") is not None:
            cond["guidance_scale"] = float(self.options["guidance_scale"])
        return cond

    # -- output -----------------------------------------------------------------------------------
    def write_samples(self, path: Path, samples: Tensor, space: Any = None) -> None:
        """``path``: the samples as a float32 ``.npy`` array [N, 1, 28, 28] in [−1, 1] (written to exactly this
        name); next to it ``<stem>_grid.png``, an 8-bit grid of the first 100."""
        path = Path(path)
        with open(path, "wb") as fh:
            np.save(fh, samples.detach().cpu().float().numpy())
        self.plot_samples(path.with_name(f"{path.stem}_grid.png"), samples)

    def plot_samples(self, path: Path, samples: Tensor, space: Any = None, nrow: int = 10) -> None:
        """A grid of up to nrow² samples as an 8-bit greyscale PNG (pixels k = round((x + 1)·127.5))."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        grid = image_grid(samples[: nrow * nrow], nrow)
        plt.imsave(str(path), grid, cmap="gray", vmin=0, vmax=255, format="png")

    def _eval_classifier(self):
        if self._classifier is None:
            from .metrics import DEFAULT_WEIGHTS, load_eval_classifier

            self._classifier = load_eval_classifier(self.options.get("classifier", DEFAULT_WEIGHTS))
        return self._classifier

    def evaluate(self, samples: Any, space: Any = None) -> dict[str, float]:
        """FD-classifier vs the first ``n_reference`` test images; accuracy of conditional samples if labelled;
        with ``super_resolution`` also PSNR/SSIM vs the first len(samples) HR test images and the bicubic baseline."""
        from .metrics import classifier_accuracy, fd_classifier

        labels = None
        if isinstance(samples, (tuple, list)):
            samples, labels = samples
        elif self.conditional and self.sample_labels is not None and len(self.sample_labels) == len(samples):
            labels = self.sample_labels
        x = samples.detach().cpu().float().clamp(-1, 1)
        ref = self.val_dataset(self.options).tensors[0][: int(self.options.get("n_reference", 2000))]
        clf = self._eval_classifier()
        out = {"fd_classifier": fd_classifier(x, ref, clf), "n_samples": float(len(x)), "n_reference": float(len(ref))}
        if labels is not None:
            out["classifier_accuracy"] = classifier_accuracy(x, labels, clf)
        if self.sr_factor:
            high, low = ((self.sr_high, self.sr_low) if self.sr_high is not None and len(self.sr_high) == len(x)
                         else self.sr_pair(len(x)))
            out.update(sr_metrics(x, high, low))
        return out


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
