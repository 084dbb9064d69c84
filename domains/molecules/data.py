"""QM9 loading (flat arrays + offsets), EDM's train/validation/test split, molecule-size sampling
and XYZ reading/writing.

The dataset file is ``qm9.npz`` (see :func:`load_qm9`): the 130,831 QM9 molecules that remain after
removing the 3,054 "uncharacterized" ones (Ramakrishnan et al. 2014), the same set EDM
(Hoogeboom et al., ICML 2022) trains on through Cormorant's preprocessing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sciddpm.inputs import read_npz

from .metrics import ATOMIC_NUMBERS, ELEMENTS

REQUIRED_FIELDS: tuple[str, ...] = ("pos", "z", "n_atoms", "index")
PROPERTY_FIELDS: tuple[str, ...] = (
    "mu_debye", "alpha_bohr3", "homo_hartree", "lumo_hartree", "gap_hartree",
    "r2_bohr2", "zpve_hartree", "u0_hartree", "cv_cal_mol_k",
)
# EDM/Cormorant split sizes for the 130,831 molecules: 100k train, 10% test, the rest validation.
EDM_SPLIT_SIZES: dict[str, int] = {"train": 100_000, "valid": 17_748, "test": 13_083}
N_QM9 = 130_831
_SPLIT_NAMES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid", "test": "test"}

_Z_TO_TYPE = np.full(256, -1, dtype=np.int64)
for _k, _e in enumerate(ELEMENTS):
    _Z_TO_TYPE[ATOMIC_NUMBERS[_e]] = _k


def split_sizes(n_molecules: int) -> dict[str, int]:
    """Split sizes: EDM's 100,000 / 17,748 / 13,083 for all 130,831 molecules; for other sizes the
    same rule scaled (test = int(0.1 n), train = round(n * 100000 / 130831), valid = the rest)."""
    n_test = int(0.1 * n_molecules)
    n_train = min(100_000, int(round(n_molecules * 100_000 / N_QM9)))
    return {"train": n_train, "valid": n_molecules - n_train - n_test, "test": n_test}


def split_indices(
    n_molecules: int, seed: int = 0, scheme: Literal["default_rng", "edm"] = "default_rng"
) -> dict[str, np.ndarray]:
    """Train/valid/test molecule indices (positions 0..n-1) from one fixed seeded permutation.

    ``scheme="default_rng"`` (default): ``np.random.default_rng(seed).permutation(n)`` split into
    consecutive blocks of :func:`split_sizes` (train, then valid, then test).
    ``scheme="edm"``: the legacy ``np.random.seed(seed); np.random.permutation(n)`` of Cormorant's
    ``gen_splits_gdb9`` that EDM uses; with seed 0 and the molecules in QM9-id order (as in
    ``qm9.npz``) this gives EDM's split, assuming Cormorant's tar archive lists files in id order.
    Each returned array is sorted.
    """
    if scheme == "default_rng":
        perm = np.random.default_rng(seed).permutation(n_molecules)
    elif scheme == "edm":
        perm = np.random.RandomState(seed).permutation(n_molecules)
    else:
        raise ValueError(f"unknown split scheme {scheme!r}; expected 'default_rng' or 'edm'")
    sizes = split_sizes(n_molecules)
    a, b = sizes["train"], sizes["train"] + sizes["valid"]
    return {"train": np.sort(perm[:a]), "valid": np.sort(perm[a:b]), "test": np.sort(perm[b:])}


def _resolve_npz(path: str | Path) -> Path:
    path = Path(path)
    return path / "qm9.npz" if path.is_dir() else path


def _default_smiles_path(npz: Path) -> Path:
    return npz.with_name(npz.stem + "_smiles.txt")


@dataclass(eq=False, repr=False)
class QM9Dataset:
    """QM9 molecules stored as flat arrays (atoms of all molecules concatenated) plus offsets.

    ``dataset[i]`` is a ``torch_geometric.data.Data`` with ``pos`` [n, 3] float32 Angstrom,
    ``one_hot`` [n, 5] over (H, C, N, O, F), ``charges`` [n, 1] (atomic number as float), ``z`` [n],
    ``num_atoms``, each property as a [1] float64 tensor, ``smiles`` (if known) and ``idx`` (QM9 id).
    A dataset may be a view (``subset``) on a selection of molecules of the arrays it shares.
    """

    pos: np.ndarray  # float32 [N_atoms, 3]
    z: np.ndarray  # uint8 [N_atoms]
    n_atoms: np.ndarray  # int64 [M]
    index: np.ndarray  # int64 [M], QM9 ids
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    smiles: list[str] | None = None
    offsets: np.ndarray = field(init=False)
    selection: np.ndarray | None = None  # rows of the arrays that this view exposes (None = all)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self.n_atoms, dtype=np.int64)])

    def __repr__(self) -> str:
        return f"QM9Dataset({len(self)} molecules, {int(self.n_atoms[self._rows()].sum())} atoms, source={self.source!r})"

    def _rows(self) -> np.ndarray:
        return np.arange(len(self.n_atoms)) if self.selection is None else self.selection

    def __len__(self) -> int:
        return len(self.n_atoms) if self.selection is None else len(self.selection)

    def molecule(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Atomic numbers [n] and positions [n, 3] (Angstrom) of molecule ``i`` of this view."""
        row = self._row(i)
        a, b = self.offsets[row], self.offsets[row + 1]
        return self.z[a:b], self.pos[a:b]

    def _row(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"molecule index {i} out of range for {n} molecules")
        i %= n
        return int(i if self.selection is None else self.selection[i])

    def __getitem__(self, i: int) -> Any:
        from torch_geometric.data import Data

        row = self._row(int(i))
        a, b = self.offsets[row], self.offsets[row + 1]
        z = torch.from_numpy(self.z[a:b].astype(np.int64))
        types = torch.from_numpy(_Z_TO_TYPE[self.z[a:b]])
        data = Data(
            pos=torch.from_numpy(np.ascontiguousarray(self.pos[a:b], dtype=np.float32)),
            z=z,
            one_hot=torch.nn.functional.one_hot(types, len(ELEMENTS)).to(torch.float32),
            charges=z.to(torch.float32).unsqueeze(1),
            num_atoms=int(b - a),
            idx=int(self.index[row]),
        )
        for name, values in self.properties.items():
            data[name] = torch.tensor([values[row]], dtype=torch.float64)
        if self.smiles is not None:
            data.smiles = self.smiles[row]
        return data

    def subset(self, indices: Any) -> "QM9Dataset":
        """A view on molecules ``indices`` (positions in this view); arrays are shared, not copied."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset indices out of range for {len(self)} molecules")
        view = QM9Dataset(self.pos, self.z, self.n_atoms, self.index, self.properties, self.smiles,
                          selection=self._rows()[idx], source=self.source)
        view.offsets = self.offsets
        return view

    def split_indices(
        self, seed: int = 0, scheme: Literal["default_rng", "edm"] = "default_rng"
    ) -> dict[str, np.ndarray]:
        """Train/valid/test positions in this view: see the module function :func:`split_indices`."""
        return split_indices(len(self), seed=seed, scheme=scheme)

    def split(self, name: str, seed: int = 0, scheme: Literal["default_rng", "edm"] = "default_rng",
              as_view: bool = False) -> "np.ndarray | QM9Dataset":
        """Indices (or, with ``as_view``, a subset view) of split ``name`` ('train', 'valid' or
        'validation', 'test'). On all 130,831 molecules the sizes are EDM's 100,000/17,748/13,083."""
        if name not in _SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; expected 'train', 'valid' or 'test'")
        idx = self.split_indices(seed=seed, scheme=scheme)[_SPLIT_NAMES[name]]
        return self.subset(idx) if as_view else idx

    def flat(self, indices: Any | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat ``(z, pos, n_atoms)`` arrays of molecules ``indices`` (default: the whole view)."""
        rows = self._rows() if indices is None else self._rows()[np.asarray(indices, dtype=np.int64)]
        n = self.n_atoms[rows]
        if self.selection is None and indices is None:
            return self.z, self.pos, n
        atom_idx = np.repeat(self.offsets[rows] - np.cumsum(n) + n, n) + np.arange(int(n.sum()))
        return self.z[atom_idx], self.pos[atom_idx], n

    def atom_count_histogram(self, indices: Any | None = None) -> np.ndarray:
        """Counts of molecules per atom count (``hist[k]`` = molecules with k atoms, H included) over
        molecules ``indices`` of this view (default all); EDM samples molecule sizes from the
        training-set histogram."""
        rows = self._rows() if indices is None else self._rows()[np.asarray(indices, dtype=np.int64)]
        return np.bincount(self.n_atoms[rows], minlength=int(self.n_atoms.max()) + 1)


def _validated(arrays: dict[str, np.ndarray], source: str, smiles: list[str] | None) -> QM9Dataset:
    """Check the arrays of a QM9 file (one-line ``ValueError`` naming ``source`` and the field)."""
    for name in REQUIRED_FIELDS:
        if name not in arrays:
            raise ValueError(f"{source}: field '{name}' missing (has {', '.join(arrays)})")
    arrays = dict(arrays)
    pos, z, n_atoms, index = (arrays.pop(k) for k in REQUIRED_FIELDS)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"{source}: field 'pos' has shape {pos.shape}, expected [N, 3]")
    if z.ndim != 1 or len(z) != len(pos):
        raise ValueError(f"{source}: field 'z' has shape {z.shape} but 'pos' has {len(pos)} atoms")
    if n_atoms.ndim != 1 or index.shape != n_atoms.shape:
        raise ValueError(f"{source}: field 'index' has shape {index.shape} but 'n_atoms' has {n_atoms.shape}")
    n_atoms = n_atoms.astype(np.int64)
    if (n_atoms <= 0).any():
        bad = int(np.argmax(n_atoms <= 0))
        raise ValueError(f"{source}: field 'n_atoms': molecule {bad} (QM9 id {int(index[bad])}) is empty")
    if int(n_atoms.sum()) != len(pos):
        raise ValueError(f"{source}: field 'n_atoms' sums to {int(n_atoms.sum())} but 'pos' has {len(pos)} atoms")
    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    known = np.isin(z, [ATOMIC_NUMBERS[e] for e in ELEMENTS])
    if not known.all():
        atom = int(np.argmax(~known))
        mol = int(np.searchsorted(offsets, atom, side="right") - 1)
        raise ValueError(f"{source}: field 'z': unknown element {int(z[atom])} in molecule {mol} "
                         f"(QM9 id {int(index[mol])}); expected H, C, N, O, F")
    finite = np.isfinite(pos).all(axis=1)
    if not finite.all():
        atom = int(np.argmax(~finite))
        mol = int(np.searchsorted(offsets, atom, side="right") - 1)
        raise ValueError(f"{source}: field 'pos': non-finite coordinates in molecule {mol} (QM9 id {int(index[mol])})")
    for name, values in arrays.items():
        if values.shape != n_atoms.shape:
            raise ValueError(f"{source}: field '{name}' has shape {values.shape}, expected ({len(n_atoms)},)")
    return QM9Dataset(pos=pos.astype(np.float32, copy=False), z=z.astype(np.uint8, copy=False), n_atoms=n_atoms,
                      index=index.astype(np.int64), properties=arrays, smiles=smiles, source=source)


def load_qm9(path: str | Path, smiles_path: str | Path | None = None) -> QM9Dataset:
    """Load and validate ``qm9.npz`` (``path``: the file or its folder).

    Required arrays: ``pos`` [N, 3] (Angstrom), ``z`` [N] (1, 6, 7, 8 or 9), ``n_atoms`` [M] (> 0,
    summing to N), ``index`` [M] (QM9 ids); every other array is a per-molecule property of length
    M. SMILES are read from ``smiles_path`` or, if present, ``<stem>_smiles.txt`` beside the file
    (one per molecule). Raises a one-line ``ValueError`` naming the file and field on bad input.
    """
    npz = _resolve_npz(path)
    arrays = read_npz(npz, "QM9")
    smiles = None
    spath = Path(smiles_path) if smiles_path is not None else _default_smiles_path(npz)
    if smiles_path is not None and not spath.is_file():
        raise ValueError(f"{spath}: SMILES file not found")
    if spath.is_file():
        smiles = spath.read_text().splitlines()
        n_mol = len(arrays["n_atoms"]) if "n_atoms" in arrays else len(smiles)
        if len(smiles) != n_mol:
            raise ValueError(f"{spath}: {len(smiles)} SMILES lines for {n_mol} molecules in {npz.name}")
    return _validated(arrays, str(npz), smiles)


# Columns of the CSV files shipped in the ``qm9pack`` wheel (1.0.3) -> our property names.
QM9PACK_PROPERTY_COLUMNS: dict[str, str] = {
    "Dipole_debye": "mu_debye", "Polarizability_bohr3": "alpha_bohr3", "HOMO_au": "homo_hartree",
    "LUMO_au": "lumo_hartree", "HOMO_LUMO_gap_au": "gap_hartree", "R2_bohr2": "r2_bohr2",
    "ZPVE_au": "zpve_hartree", "InternalEnergy_0K_au": "u0_hartree", "Heatcapacity_Cv_cal_mol_K": "cv_cal_mol_k",
}


def load_qm9_csv(paths: str | Path | list[str | Path]) -> QM9Dataset:
    """Load QM9 from the CSV files of the ``qm9pack`` wheel (``qm9_part1.csv`` ... ``qm9_part3.csv``;
    a folder means all ``qm9_part*.csv`` in it, in name order): columns ``Index``, ``SMILES``,
    ``N_atoms``, ``Elements`` (e.g. ``['C','H']``), ``XYZ_Ang`` (``[[x,y,z],...]``) and the
    properties of :data:`QM9PACK_PROPERTY_COLUMNS`. Molecules are sorted by QM9 id, as in ``qm9.npz``.
    """
    import csv
    import re

    if isinstance(paths, (str, Path)) and Path(paths).is_dir():
        files = sorted(Path(paths).glob("qm9_part*.csv"))
        if not files:
            raise ValueError(f"{paths}: no qm9_part*.csv files found")
    else:
        files = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    ids, smiles, counts, zs, xyzs = [], [], [], [], []
    props: dict[str, list[float]] = {v: [] for v in QM9PACK_PROPERTY_COLUMNS.values()}
    for f in files:
        if not f.is_file():
            raise ValueError(f"{f}: QM9 CSV file not found")
        with f.open(newline="") as handle:
            reader = csv.DictReader(handle)
            needed = ["Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang", *QM9PACK_PROPERTY_COLUMNS]
            missing = [c for c in needed if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{f}: column '{missing[0]}' missing")
            for line, row in enumerate(reader, start=2):
                try:
                    symbols = [s.strip().strip("'\"") for s in row["Elements"].strip("[]").split(",")]
                    unknown = [s for s in symbols if s not in ATOMIC_NUMBERS]
                    if unknown:
                        raise ValueError(f"unknown element symbol {unknown[0]!r}")
                    z = [ATOMIC_NUMBERS[s] for s in symbols]
                    flat = [float(v.replace("*^", "e")) for v in re.split(r"[\[\],\s]+", row["XYZ_Ang"]) if v]
                    if len(flat) % 3:
                        raise ValueError(f"{len(flat)} coordinates are not a multiple of 3")
                    xyz = [flat[k : k + 3] for k in range(0, len(flat), 3)]
                    n = int(row["N_atoms"])
                    values = {v: float(row[c]) for c, v in QM9PACK_PROPERTY_COLUMNS.items()}
                except (ValueError, TypeError) as err:
                    raise ValueError(f"{f}: line {line}: cannot parse ({err})") from None
                if len(z) != n or len(xyz) != n:
                    raise ValueError(f"{f}: line {line}: N_atoms={n} but {len(z)} elements and {len(xyz)} positions")
                ids.append(int(row["Index"]))
                smiles.append(row["SMILES"])
                counts.append(n)
                zs.extend(z)
                xyzs.extend(xyz)
                for k, v in values.items():
                    props[k].append(v)
    if not ids:
        raise ValueError(f"{', '.join(map(str, files))}: no molecules")
    source = str(files[0].parent / "qm9_part*.csv") if len(files) > 1 else str(files[0])
    counts_arr = np.asarray(counts, dtype=np.int64)
    order = np.argsort(np.asarray(ids), kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts_arr)])[:-1][order]
    atom_idx = np.repeat(starts - np.cumsum(counts_arr[order]) + counts_arr[order], counts_arr[order])
    atom_idx = atom_idx + np.arange(int(counts_arr.sum()))
    arrays = {"pos": np.asarray(xyzs, dtype=np.float32).reshape(-1, 3)[atom_idx],
              "z": np.asarray(zs, dtype=np.uint8)[atom_idx], "n_atoms": counts_arr[order],
              "index": np.asarray(ids, dtype=np.int64)[order]}
    arrays.update({k: np.asarray(v, dtype=np.float64)[order] for k, v in props.items()})
    return _validated(arrays, source, [smiles[i] for i in order.tolist()])


def save_qm9_npz(dataset: QM9Dataset, path: str | Path) -> Path:
    """Write a dataset (all its molecules, or the selection of a view) as ``qm9.npz`` plus
    ``<stem>_smiles.txt`` when SMILES are known, readable by :func:`load_qm9`."""
    path = Path(path)
    rows = dataset._rows()
    z, pos, n = dataset.flat()
    arrays = {"pos": pos, "z": z, "n_atoms": n.astype(np.uint8 if n.max() < 256 else np.int64),
              "index": dataset.index[rows].astype(np.int32)}
    arrays.update({k: v[rows] for k, v in dataset.properties.items()})
    np.savez_compressed(path, **arrays)
    if dataset.smiles is not None:
        _default_smiles_path(path).write_text("".join(dataset.smiles[i] + "\n" for i in rows.tolist()))
    return path


class MoleculeSizeSampler:
    """Samples molecule sizes (atom counts) from an atom-count histogram, as EDM's
    ``DistributionNodes`` does with the training-set histogram."""

    def __init__(self, histogram: Any) -> None:
        counts = torch.as_tensor(np.asarray(histogram), dtype=torch.float64).reshape(-1)
        if counts.numel() == 0 or (counts < 0).any() or counts.sum() <= 0:
            raise ValueError("histogram must be non-negative with a positive total")
        self.probs = counts / counts.sum()

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num`` atom counts (int64 tensor) drawn with replacement, reproducible with ``generator``."""
        return torch.multinomial(self.probs, num, replacement=True, generator=generator)

    def log_prob(self, n_atoms: Any) -> torch.Tensor:
        """Log-probability of the given atom counts (-inf where the histogram is zero or out of range)."""
        n = torch.as_tensor(n_atoms, dtype=torch.int64)
        inside = (n >= 0) & (n < self.probs.numel())
        p = torch.where(inside, self.probs[n.clamp(0, self.probs.numel() - 1)], torch.zeros((), dtype=torch.float64))
        return torch.log(p)


# ----------------------------------------------------------------------------------------------
# XYZ files

_PERIODIC = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm "
    "Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No "
    "Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()
SYMBOL_TO_Z: dict[str, int] = {s: k + 1 for k, s in enumerate(_PERIODIC)}


def read_xyz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one molecule from an XYZ file: atom count, comment, then ``symbol x y z [extra]`` lines.

    Returns atomic numbers (int64 [n]) and positions (float64 [n, 3], the file's units, normally
    Angstrom). QM9's ``*^`` exponent notation is accepted. Raises a one-line ``ValueError`` naming
    the file and line on a bad count line, missing atoms, unknown element or non-numeric coordinate.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: XYZ file not found")
    lines = path.read_text().splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}: line 1: empty; expected the atom count")
    try:
        n = int(lines[0].split()[0])
    except ValueError:
        raise ValueError(f"{path}: line 1: atom count {lines[0].strip()!r} is not an integer") from None
    if n <= 0:
        raise ValueError(f"{path}: line 1: atom count {n} must be positive")
    atom_lines = lines[2 : 2 + n]
    if len(atom_lines) < n or any(not line.strip() for line in atom_lines):
        n_found = sum(1 for line in atom_lines if line.strip())
        raise ValueError(f"{path}: line 1 declares {n} atoms but {n_found} atom lines follow")
    z = np.zeros(n, dtype=np.int64)
    pos = np.zeros((n, 3), dtype=np.float64)
    for k, line in enumerate(atom_lines):
        parts = line.split()
        if len(parts) < 4:
            raise ValueError(f"{path}: line {k + 3}: expected 'symbol x y z', got {line.strip()!r}")
        symbol = parts[0]
        if symbol.isdigit():
            z[k] = int(symbol)
            if not 1 <= z[k] <= len(_PERIODIC):
                raise ValueError(f"{path}: line {k + 3}: unknown atomic number {symbol!r}")
        else:
            symbol = symbol[:1].upper() + symbol[1:].lower()
            if symbol not in SYMBOL_TO_Z:
                raise ValueError(f"{path}: line {k + 3}: unknown element symbol {parts[0]!r}")
            z[k] = SYMBOL_TO_Z[symbol]
        try:
            pos[k] = [float(v.replace("*^", "e")) for v in parts[1:4]]
        except ValueError:
            raise ValueError(f"{path}: line {k + 3}: non-numeric coordinate in {line.strip()!r}") from None
        if not np.isfinite(pos[k]).all():
            raise ValueError(f"{path}: line {k + 3}: non-finite coordinate in {line.strip()!r}")
    return z, pos


def write_xyz(path: str | Path, z: Any, pos: Any, comment: str = "") -> Path:
    """Write one molecule (atomic numbers ``z`` [n], positions ``pos`` [n, 3]) as an XYZ file."""
    path = Path(path)
    z = np.asarray(z).astype(np.int64).reshape(-1)
    pos = np.asarray(pos, dtype=np.float64)
    if pos.shape != (len(z), 3):
        raise ValueError(f"{path}: pos has shape {tuple(pos.shape)}, expected ({len(z)}, 3)")
    if ((z < 1) | (z > len(_PERIODIC))).any():
        raise ValueError(f"{path}: unknown atomic number {int(z[(z < 1) | (z > len(_PERIODIC))][0])}")
    if not np.isfinite(pos).all():
        raise ValueError(f"{path}: non-finite coordinates")
    lines = [str(len(z)), comment.replace("\n", " ")]
    lines += [f"{_PERIODIC[a - 1]:<2s} {x:14.8f} {y:14.8f} {w:14.8f}" for a, (x, y, w) in zip(z.tolist(), pos.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return path
