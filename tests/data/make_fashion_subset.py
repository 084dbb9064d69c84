"""Make the committed Fashion-MNIST test subset (seeded): 200 train + 100 test images, 20/10 per class.

Run: python tests/data/make_fashion_subset.py [/path/to/fashion_mnist]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from sciddpm.domains.images.data import FASHION_MNIST_FILES, load_fashion_mnist, write_idx

SOURCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "fashion_mnist"
OUT = Path(__file__).resolve().parent / "fashion_mnist_subset"
PER_CLASS = {"train": 20, "test": 10}


def main(source: Path = SOURCE) -> None:
    rng = np.random.default_rng(0)
    OUT.mkdir(exist_ok=True)
    for split, per_class in PER_CLASS.items():
        images, labels = load_fashion_mnist(source, split)
        idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                                      for c in range(10)]))
        img_name, lab_name = FASHION_MNIST_FILES[split]
        write_idx(OUT / img_name, images[idx])
        write_idx(OUT / lab_name, labels[idx].astype(np.uint8))
        print(split, len(idx))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
