"""Input files a user can trust to be refused clearly: the readers shared by the domains' loaders."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def read_npz(path: str | Path, what: str = "data") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read without unpickling (``allow_pickle=False``), as a dict by name.

    One-line ValueError naming the file for a missing file or one numpy cannot read as an ``.npz`` (``what``
    names the kind of file in the message, e.g. "QM9", "Ising lattice")."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path}: not a readable .npz file ({first})") from None
