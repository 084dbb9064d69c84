"""Image metrics with an in-project evaluation classifier: FD-classifier and classifier accuracy.

Inception weights cannot be downloaded here, so the Fréchet distance is computed on the penultimate
features of a small CNN trained on Fashion-MNIST by ``benchmarks/train_eval_classifier.py``. It is the
FID *formula* (Heusel et al. 2017) on different features, so it is called **FD-classifier**, never FID, and
its numbers are not comparable with published FIDs:

    FD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}).

Weights are stored as safetensors only (never pickle); the architecture config travels in the file's
metadata, and a side-car JSON (``*.config.json``) pins the file's SHA-256 so a changed file is refused.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

from .data import to_model_range

DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "benchmarks" / "weights" / "fashion_eval_classifier.safetensors"


class EvalClassifier(nn.Module):
    """Small CNN for 28×28 greyscale images in [−1, 1]: 3 conv blocks (conv-BN-ReLU-maxpool) → FC → 10 logits.

    ``features(x)`` is the penultimate (post-ReLU FC) activation used by the FD-classifier.
    """

    def __init__(self, channels: tuple[int, int, int] = (16, 32, 64), feature_dim: int = 128,
                 num_classes: int = 10, in_channels: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        self._config = {"channels": list(channels), "feature_dim": feature_dim, "num_classes": num_classes,
                        "in_channels": in_channels, "dropout": dropout}
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c
        self.conv = nn.Sequential(*layers)  # 28 → 14 → 7 → 3
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 3 * 3, feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "EvalClassifier":
        return cls(**{**config, "channels": tuple(config["channels"])})

    def features(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def config_path_for(weights: str | Path) -> Path:
    weights = Path(weights)
    return weights.with_name(weights.name.removesuffix(".safetensors") + ".config.json")


def save_eval_classifier(model: EvalClassifier, path: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Save weights (safetensors, config in metadata) and ``*.config.json`` (config, SHA-256, ``info``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(model.config())})
    side = {"config": model.config(), "sha256": sha256_file(path), **(info or {})}
    config_path_for(path).write_text(json.dumps(side, indent=2) + "\n")
    return path


def load_eval_classifier(path: str | Path = DEFAULT_WEIGHTS, device: torch.device | str = "cpu") -> EvalClassifier:
    """Load the evaluation classifier (eval mode) from safetensors; verify the side-car SHA-256 if present.

    Raises a one-line ValueError naming the file if it is missing, unreadable, changed or mismatched.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: evaluation classifier weights not found "
                         f"(run `python benchmarks/train_eval_classifier.py`)")
    side = config_path_for(path)
    if side.is_file():
        expected = json.loads(side.read_text()).get("sha256")
        if expected and sha256_file(path) != expected:
            raise ValueError(f"{path}: SHA-256 does not match {side.name}; the weights file was changed")
    try:
        with safe_open(str(path), framework="pt") as f:
            config = json.loads((f.metadata() or {})["config"])
            state = {k: f.get_tensor(k) for k in f.keys()}
        model = EvalClassifier.from_config(config)
        model.load_state_dict(state, strict=True)
    except Exception as err:  # noqa: BLE001 - any failure means an unusable file; report it in one line
        msg = " ".join(str(err).split())[:200]
        raise ValueError(f"{path}: not a valid evaluation-classifier safetensors file ({type(err).__name__}: {msg})") from None
    return model.to(device).eval()


def _as_images(x: Tensor | np.ndarray) -> Tensor:
    """uint8 images → [−1, 1]; float tensors are taken as already in model range; output [N, 1, 28, 28]."""
    if isinstance(x, np.ndarray) or (isinstance(x, Tensor) and x.dtype == torch.uint8):
        return to_model_range(x)
    x = x.float()
    return x.unsqueeze(1) if x.dim() == 3 else x


@torch.no_grad()
def classifier_features(images: Tensor | np.ndarray, classifier: EvalClassifier, batch_size: int = 1000) -> np.ndarray:
    """Penultimate features [N, feature_dim] (float64) of the classifier in eval mode."""
    classifier.eval()
    device = next(classifier.parameters()).device
    x = _as_images(images)
    out = [classifier.features(x[i:i + batch_size].to(device)).double().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2}) (Dowson & Landau 1982; the FID formula of Heusel et al. 2017).

    The matrix square root is scipy.linalg.sqrtm, real part taken. As in the reference FID code, if Σ₁Σ₂ is
    singular (e.g. dead ReLU features) 1e-6·I is added to both covariances (here also inside the traces,
    so identical inputs still give 0).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if caught or not np.isfinite(covmean).all():  # singular product: regularise both Gaussians alike
        offset = np.eye(sigma1.shape[0]) * 1e-6
        sigma1, sigma2 = sigma1 + offset, sigma2 + offset
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fd_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FD between Gaussians fitted (mean, unbiased covariance) to two feature sets [N, D]."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 2:
        raise ValueError(f"need feature sets [N>=2, D] with equal D, got {f1.shape} and {f2.shape}")
    return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))


def fd_classifier(samples: Tensor | np.ndarray, reference: Tensor | np.ndarray,
                  classifier: EvalClassifier | None = None, batch_size: int = 1000) -> float:
    """FD-classifier between two image sets (float in [−1, 1] or uint8), on the eval classifier's features."""
    classifier = classifier if classifier is not None else load_eval_classifier()
    return fd_from_features(classifier_features(samples, classifier, batch_size),
                            classifier_features(reference, classifier, batch_size))


@torch.no_grad()
def classifier_accuracy(samples: Tensor | np.ndarray, labels: Tensor | np.ndarray,
                        classifier: EvalClassifier | None = None, batch_size: int = 1000) -> float:
    """Fraction of samples the eval classifier assigns to their intended label (class-conditional fidelity)."""
    classifier = classifier if classifier is not None else load_eval_classifier()
    classifier.eval()
    device = next(classifier.parameters()).device
    x, y = _as_images(samples), torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} samples but {len(y)} labels")
    pred = torch.cat([classifier(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    return float((pred == y).double().mean())


# ==================================================================================================
# Full-reference metrics for super-resolution: PSNR and SSIM
# ==================================================================================================
def _pixel_batch(x: Tensor | np.ndarray, name: str) -> Tensor:
    """Images [N, H, W] or [N, 1, H, W] (or one [H, W] image) → float64 CPU tensor [N, H, W]."""
    t = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x).detach().cpu()
    if t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    elif t.dim() == 2:
        t = t[None]
    if t.dim() != 3 or t.shape[0] < 1:
        raise ValueError(f"{name} must be greyscale images [N, H, W] or [N, 1, H, W], got {tuple(t.shape)}")
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _pair(x: Tensor | np.ndarray, ref: Tensor | np.ndarray, data_range: float) -> tuple[Tensor, Tensor, float]:
    a, b = _pixel_batch(x, "x"), _pixel_batch(ref, "ref")
    if a.shape != b.shape:
        raise ValueError(f"x {tuple(a.shape)} and ref {tuple(b.shape)} must have the same shape")
    if not (isinstance(data_range, (int, float)) and not isinstance(data_range, bool) and data_range > 0):
        raise ValueError(f"data_range must be a number > 0, got {data_range!r}")
    return a, b, float(data_range)


def psnr(x: Tensor | np.ndarray, ref: Tensor | np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio, per image then averaged over images (the SR convention, e.g. SR3 Table 1):

        PSNR_i = 10 log₁₀(L² / MSE_i),   MSE_i = mean over pixels of (x − ref)²,   L = ``data_range``.

    Project convention: computed on 8-bit pixel values (L = 255) after rounding model outputs with
    ``data.from_model_range`` (clamp to [−1, 1], k = round((x + 1)·127.5)). An identical image has PSNR = +inf,
    so the mean is +inf if any image is reproduced exactly. Images: [N, H, W] or [N, 1, H, W] (or one [H, W]).
    """
    a, b, peak = _pair(x, ref, data_range)
    mse = ((a - b) ** 2).mean(dim=(1, 2))
    with np.errstate(divide="ignore"):
        per_image = 10.0 * np.log10(peak**2 / mse.numpy())
    return float(per_image.mean())


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 1-D Gaussian w_k ∝ exp(−k²/(2σ²)), k = −(size−1)/2 … (size−1)/2 (float64). For σ = 1.5 and
    size 11 this equals scipy's ``gaussian_filter`` kernel with truncate = 3.5 used by skimage's SSIM."""
    if size < 1 or size % 2 == 0 or sigma <= 0:
        raise ValueError(f"window size must be odd and >= 1 and sigma > 0, got size={size}, sigma={sigma}")
    k = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-0.5 * (k / sigma) ** 2)
    return w / w.sum()


def ssim(x: Tensor | np.ndarray, ref: Tensor | np.ndarray, data_range: float = 255.0, *, win_size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> float:
    """Structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004, eq. 13), mean over images of the mean SSIM map:

        SSIM(x, y) = (2 μ_x μ_y + C₁)(2 σ_xy + C₂) / ((μ_x² + μ_y² + C₁)(σ_x² + σ_y² + C₂)),
        C₁ = (K₁ L)², C₂ = (K₂ L)², K₁ = 0.01, K₂ = 0.03, L = ``data_range``,

    with local statistics under an 11×11 circular-symmetric Gaussian window (σ = 1.5, normalised, the paper's
    §III-C choice): μ = w∗x, σ_x² = w∗x² − μ_x², σ_xy = w∗(xy) − μ_x μ_y (population, not sample, covariance). The map
    is evaluated only where the window fits inside the image ("valid" convolution, as in Wang et al.'s MATLAB code
    and skimage's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``, which
    crops (win_size − 1)/2 border pixels): an 18×18 map for 28×28 images. Project convention as ``psnr``: 8-bit
    pixel values (L = 255) after rounding model outputs. Identical images give exactly 1.
    """
    a, b, peak = _pair(x, ref, data_range)
    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"images of size {tuple(a.shape[-2:])} are smaller than the SSIM window {win_size}")
    w = gaussian_window(win_size, sigma)
    wr, wc = w.reshape(1, 1, -1, 1), w.reshape(1, 1, 1, -1)

    def blur(img: Tensor) -> Tensor:  # separable valid convolution (the window is symmetric)
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(img[:, None], wr), wc)[:, 0]

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (k1 * peak) ** 2, (k2 * peak) ** 2
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(smap.mean(dim=(1, 2)).mean())
