"""Make the small committed QM9 subset used by the molecules tests (seeded, reproducible).

Picks 300 molecules uniformly at random (``numpy.random.default_rng(20240)``) from the full
``qm9.npz`` and writes ``qm9_subset.npz`` (same fields as the full file, in QM9-id order) and
``qm9_subset_smiles.txt`` beside this script.

Usage: ``python tests/data/make_qm9_subset.py [--data ../shared/data/qm9]`` (relative to the repo root).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

N_MOLECULES = 300
SEED = 20240
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/qm9", help="folder holding qm9.npz and qm9_smiles.txt")
    args = parser.parse_args()
    folder = Path(args.data) if Path(args.data).is_absolute() else REPO / args.data
    full = np.load(folder / "qm9.npz")
    smiles = (folder / "qm9_smiles.txt").read_text().splitlines()
    n_atoms = full["n_atoms"].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    pick = np.sort(np.random.default_rng(SEED).choice(len(n_atoms), N_MOLECULES, replace=False))
    atoms = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in pick])
    out = {}
    for name in full.files:
        out[name] = full[name][atoms] if name in ("pos", "z") else full[name][pick]
    np.savez_compressed(HERE / "qm9_subset.npz", **out)
    (HERE / "qm9_subset_smiles.txt").write_text("\n".join(smiles[i] for i in pick) + "\n")
    print(f"wrote {N_MOLECULES} molecules, {len(atoms)} atoms to {HERE}")


if __name__ == "__main__":
    main()
