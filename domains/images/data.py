"""IDX files (LeCun et al., the MNIST format) and the Fashion-MNIST loader (Xiao, Rasul & Vollgraf 2017).

IDX layout: a big-endian 4-byte magic ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32
dimension sizes, then the data in C order, big-endian. Files may be gzip-compressed (``.gz``, detected by
content, not by name). Pixel scaling for the model is x = 2k/255 − 1 ∈ [−1, 1] (Ho et al. 2020); uniform
dequantisation for likelihoods is :func:`sciddpm.likelihood.dequantize` (256 bins over [−1, 1]).
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch

# IDX dtype codes → big-endian numpy dtypes.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
_CODE_OF = {dt.str: code for code, dt in IDX_DTYPES.items()}

FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
    try:
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:  # corrupt or truncated gzip stream
        raise ValueError(f"{path}: cannot read IDX data ({err})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzip) into an array of its native dtype (converted to native byte order)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header} for {ndim} dims)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX dims {dims} need {expected} data bytes, file has {len(raw) - header}"
                         + (" (truncated)" if len(raw) - header < expected else ""))
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write an array as IDX (gzip if ``compress`` or, by default, if the name ends in ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    be = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = _CODE_OF.get(np.dtype(be).str)
    if code is None:
        raise ValueError(f"dtype {array.dtype} has no IDX code; use one of uint8, int8, int16, int32, float32, float64")
    if array.ndim < 1 or array.ndim > 255:
        raise ValueError(f"IDX needs 1..255 dims, got {array.ndim}")
    payload = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
               + np.ascontiguousarray(array, dtype=be).tobytes())
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


def load_fashion_mnist(root: str | Path, split: Literal["train", "test"] = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split from the standard IDX ``.gz`` files in ``root``.

    Returns (images uint8 [N, 28, 28], labels int64 [N]). Uncompressed files (the same names without
    ``.gz``) are accepted too.
    """
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST folder not found: {root}")
    paths = []
    for name in FASHION_MNIST_FILES[split]:
        path = root / name
        if not path.is_file() and (root / name[:-3]).is_file():
            path = root / name[:-3]
        if not path.is_file():
            raise FileNotFoundError(f"Fashion-MNIST {split} file missing: expected {root / name}")
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{paths[0]}: expected uint8 images [N, 28, 28], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{paths[1]}: expected {images.shape[0]} labels, got shape {labels.shape}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{paths[1]}: labels outside 0..9")
    return images, labels


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W] (or [N, C, H, W]) → float32 [N, C, H, W] in [−1, 1]: x = 2k/255 − 1."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x.to(torch.float32) * (2.0 / 255.0) - 1.0


def from_model_range(x: torch.Tensor) -> torch.Tensor:
    """[−1, 1] → uint8 pixels: k = round((x + 1)·127.5), clipped to 0..255."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
