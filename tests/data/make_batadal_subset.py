"""Make ``batadal_subset.csv``: a small, seeded subset of the BATADAL training data (Taormina et al. 2018).

Keeps the continuous SCADA readings (tank levels L_T*, pump/valve flows F_PU*/F_V2, junction pressures
P_J*), drops the binary pump status columns S_*, the timestamp and the attack flag, and drops columns that
are constant over the whole file (pumps that never run). 300 rows are drawn without replacement with a fixed
seed and written in file order, rounded to 4 significant digits to keep the file under 100 KB.

    python tests/data/make_batadal_subset.py /work/shared/data/batadal/training_dataset_1.csv
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

ROWS, SEED = 300, 20240601


def main(source: str, target: Path = Path(__file__).with_name("batadal_subset.csv")) -> None:
    with open(source, newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader)]
        rows = [r for r in reader if r]
    keep = [i for i, h in enumerate(header) if h.startswith(("L_T", "F_PU", "F_V", "P_J"))]
    data = np.array([[float(r[i]) for i in keep] for r in rows])
    varying = data.std(axis=0) > 0
    keep = [k for k, v in zip(keep, varying) if v]
    data = data[:, varying]
    idx = np.sort(np.random.default_rng(SEED).choice(len(data), ROWS, replace=False))
    with open(target, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([header[i] for i in keep])
        for row in data[idx]:
            writer.writerow([f"{v:.4g}" for v in row])
    print(f"wrote {target}: {ROWS} rows x {len(keep)} columns, {target.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/batadal/training_dataset_1.csv")
