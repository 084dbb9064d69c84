"""EDM's molecule metrics for QM9: bond orders from distances, atom/molecule stability, RDKit validity.

The definitions follow Hoogeboom et al., "Equivariant Diffusion for Molecule Generation in 3D"
(EDM, ICML 2022), and its reference code (``qm9/bond_analyze.py``, ``qm9/analyze.py``,
``qm9/rdkit_functions.py`` in github.com/ehoogeboom/e3_diffusion_for_molecules):

* a pair of atoms at distance ``d`` (Angstrom) gets bond order 1, 2 or 3 when ``100 * d`` (pm) is
  below the tabulated single/double/triple bond length plus a margin (10, 5, 3 pm); the double
  (triple) test is made only when the pair has a double (triple) entry and the lower order passed;
* an atom is stable when the sum of its bond orders equals its valency (H 1, C 4, N 3, O 2, F 1);
  a molecule is stable when all its atoms are; atom stability is atom-weighted over all atoms;
* validity: an RDKit molecule built from those bonds passes ``Chem.SanitizeMol`` (implicit
  hydrogens may fill missing valence); the canonical SMILES of its largest fragment is kept;
  uniqueness = distinct SMILES / valid; novelty = unique SMILES absent from the training SMILES.

We add a stricter validity: RDKit's ``rdDetermineBonds.DetermineBonds`` (total charge 0) on the
XYZ block must succeed, i.e. a connectivity from covalent radii must admit a full-valence,
net-neutral bond-order assignment (no implicit hydrogens).
"""
from __future__ import annotations

import multiprocessing as mp
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F")
ATOMIC_NUMBERS: dict[str, int] = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
SYMBOLS: dict[int, str] = {v: k for k, v in ATOMIC_NUMBERS.items()}

# Typical bond lengths in pm, as tabulated by EDM (qm9/bond_analyze.py, citing wiredchemist.com and
# chemistry-reference.com), restricted to the QM9 elements H, C, N, O, F.
SINGLE_BOND_PM: dict[str, dict[str, int]] = {
    "H": {"H": 74, "C": 109, "N": 101, "O": 96, "F": 92},
    "C": {"H": 109, "C": 154, "N": 147, "O": 143, "F": 135},
    "N": {"H": 101, "C": 147, "N": 145, "O": 140, "F": 136},
    "O": {"H": 96, "C": 143, "N": 140, "O": 148, "F": 142},
    "F": {"H": 92, "C": 135, "N": 136, "O": 142, "F": 142},
}
DOUBLE_BOND_PM: dict[str, dict[str, int]] = {
    "C": {"C": 134, "N": 129, "O": 120},
    "N": {"C": 129, "N": 125, "O": 121},
    "O": {"C": 120, "N": 121, "O": 121},
}
TRIPLE_BOND_PM: dict[str, dict[str, int]] = {
    "C": {"C": 120, "N": 116, "O": 113},
    "N": {"C": 116, "N": 110},
    "O": {"C": 113},
}
# EDM's margins (pm) added to the single/double/triple lengths, tuned by EDM on QM9.
MARGINS_PM: tuple[int, int, int] = (10, 5, 3)
# EDM's allowed valencies for the QM9 elements.
ALLOWED_VALENCE: dict[str, int] = {"H": 1, "C": 4, "N": 3, "O": 2, "F": 1}


def check_bond_tables() -> None:
    """Check EDM's bond tables: every H/C/N/O/F pair has a single length, all tables are symmetric,
    and double < single, triple < double wherever defined. Raises ``ValueError`` on a violation."""
    for a in ELEMENTS:
        for b in ELEMENTS:
            if b not in SINGLE_BOND_PM.get(a, {}):
                raise ValueError(f"single-bond table lacks the pair {a}-{b}")
    for name, table in (("single", SINGLE_BOND_PM), ("double", DOUBLE_BOND_PM), ("triple", TRIPLE_BOND_PM)):
        for a, row in table.items():
            for b, length in row.items():
                if table.get(b, {}).get(a) != length:
                    raise ValueError(f"{name}-bond table is not symmetric for {a}-{b}")
    for longer, shorter, what in ((SINGLE_BOND_PM, DOUBLE_BOND_PM, "double"), (DOUBLE_BOND_PM, TRIPLE_BOND_PM, "triple")):
        for a, row in shorter.items():
            for b, length in row.items():
                if b not in longer.get(a, {}):
                    raise ValueError(f"{what} bond {a}-{b} has no lower-order entry")
                if not length < longer[a][b]:
                    raise ValueError(f"{what} bond {a}-{b} ({length} pm) is not shorter than the lower order")


def _symbol(element: str | int) -> str:
    if isinstance(element, str):
        if element not in ATOMIC_NUMBERS:
            raise ValueError(f"unknown element {element!r}; expected one of {', '.join(ELEMENTS)}")
        return element
    number = int(element)
    if number not in SYMBOLS:
        raise ValueError(f"unknown atomic number {number}; expected one of {sorted(SYMBOLS)}")
    return SYMBOLS[number]


def bond_order(el1: str | int, el2: str | int, distance_angstrom: float) -> int:
    """EDM's bond order (0-3) of two atoms (symbols or atomic numbers) at a distance in Angstrom.

    Implements ``get_bond_order`` of EDM's qm9/bond_analyze.py: ``d = 100 * distance`` (pm); no bond
    unless ``d < single + 10``; then double if the pair has a double length and ``d < double + 5``;
    then triple if it has a triple length and ``d < triple + 3``.
    """
    a, b = _symbol(el1), _symbol(el2)
    d = 100.0 * float(distance_angstrom)
    m1, m2, m3 = MARGINS_PM
    if not d < SINGLE_BOND_PM[a][b] + m1:
        return 0
    double = DOUBLE_BOND_PM.get(a, {}).get(b)
    if double is None or not d < double + m2:
        return 1
    triple = TRIPLE_BOND_PM.get(a, {}).get(b)
    if triple is None or not d < triple + m3:
        return 2
    return 3


def _threshold_matrix(table: dict[str, dict[str, int]], margin: int) -> np.ndarray:
    out = np.full((len(ELEMENTS), len(ELEMENTS)), -np.inf)
    for i, a in enumerate(ELEMENTS):
        for j, b in enumerate(ELEMENTS):
            if b in table.get(a, {}):
                out[i, j] = (table[a][b] + margin) / 100.0  # Angstrom
    return out


# Distance thresholds in Angstrom indexed by element type (H, C, N, O, F); -inf = order not defined.
_T1 = _threshold_matrix(SINGLE_BOND_PM, MARGINS_PM[0])
_T2 = _threshold_matrix(DOUBLE_BOND_PM, MARGINS_PM[1])
_T3 = _threshold_matrix(TRIPLE_BOND_PM, MARGINS_PM[2])
_VALENCE = np.array([ALLOWED_VALENCE[e] for e in ELEMENTS])
_TYPE_OF_Z = np.full(256, -1, dtype=np.int64)
for _k, _e in enumerate(ELEMENTS):
    _TYPE_OF_Z[ATOMIC_NUMBERS[_e]] = _k


def element_types(z: Any) -> np.ndarray:
    """Map atomic numbers (H, C, N, O, F) to EDM's type indices 0..4; ``ValueError`` on others."""
    z = np.asarray(z).astype(np.int64).reshape(-1)
    bad = (z < 0) | (z > 255)
    types = np.where(bad, -1, _TYPE_OF_Z[np.clip(z, 0, 255)])
    if (types < 0).any():
        raise ValueError(f"unknown atomic number {int(z[np.argmax(types < 0)])}; expected one of {sorted(SYMBOLS)}")
    return types


def _orders_batched(types: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Bond orders [B, n, n] (int8) for B molecules of n atoms: ``types`` [B, n], ``pos`` [B, n, 3]."""
    pos = pos.astype(np.float64)
    diff = pos[:, :, None, :] - pos[:, None, :, :]
    dist = np.sqrt(np.einsum("bijk,bijk->bij", diff, diff))
    ti, tj = types[:, :, None], types[:, None, :]
    single = dist < _T1[ti, tj]
    double = single & (dist < _T2[ti, tj])
    triple = double & (dist < _T3[ti, tj])
    orders = single.astype(np.int8) + double + triple
    n = types.shape[1]
    orders[:, np.arange(n), np.arange(n)] = 0
    return orders


def bond_order_matrix(z: Any, pos: Any) -> np.ndarray:
    """EDM bond orders (symmetric [n, n] int matrix, zero diagonal) of one molecule.

    ``z``: atomic numbers [n]; ``pos``: coordinates [n, 3] in Angstrom (numpy or torch)."""
    types = element_types(z)
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    if len(types) != len(pos):
        raise ValueError(f"z has {len(types)} atoms but pos has {len(pos)} rows")
    return _orders_batched(types[None], pos[None])[0].astype(np.int64)


def atom_stability(z: Any, pos: Any) -> np.ndarray:
    """Per-atom stability (bool [n]) as EDM's ``check_stability``: the sum of the EDM bond orders
    of an atom equals its allowed valency (H 1, C 4, N 3, O 2, F 1)."""
    types = element_types(z)
    return bond_order_matrix(z, pos).sum(axis=1) == _VALENCE[types]


def molecule_stability(z: Any, pos: Any) -> bool:
    """EDM's molecule stability: every atom of the molecule is stable."""
    return bool(atom_stability(z, pos).all())


# ----------------------------------------------------------------------------------------------
# RDKit molecules


def build_rdkit_mol(z: Any, pos: Any | None = None, orders: np.ndarray | None = None) -> Any:
    """An unsanitized RDKit ``Mol`` with one atom per entry of ``z`` and EDM's single/double/triple
    bonds (as EDM's ``build_molecule``); a 3D conformer is attached when ``pos`` is given."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    types = element_types(z)
    if orders is None:
        if pos is None:
            raise ValueError("build_rdkit_mol needs pos or orders")
        orders = bond_order_matrix(z, pos)
    bond_types = (None, Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE)
    mol = Chem.RWMol()
    for t in types:
        mol.AddAtom(Chem.Atom(ATOMIC_NUMBERS[ELEMENTS[t]]))
    ii, jj = np.nonzero(np.triu(orders, 1))
    for i, j in zip(ii.tolist(), jj.tolist()):
        mol.AddBond(i, j, bond_types[int(orders[i, j])])
    if pos is not None:
        xyz = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
        conf = Chem.Conformer(len(types))
        for k, (x, y, zc) in enumerate(xyz.tolist()):
            conf.SetAtomPosition(k, Point3D(x, y, zc))
        conf.Set3D(True)
        mol.AddConformer(conf, assignId=True)
    return mol.GetMol()


def edm_smiles(mol: Any, largest_fragment: bool = True) -> str | None:
    """EDM's ``mol2smiles`` (+ largest fragment, as in ``compute_validity``): sanitize the molecule
    in place; ``None`` if RDKit rejects it, else the canonical SMILES of its largest fragment."""
    from rdkit import Chem

    try:
        Chem.SanitizeMol(mol)
    except ValueError:  # AtomValenceException, KekulizeException, ... derive from ValueError
        return None
    if largest_fragment:
        frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
        if len(frags) > 1:
            mol = max(frags, key=lambda m: m.GetNumAtoms())
    return Chem.MolToSmiles(mol)


def xyz_block(z: Any, pos: Any, comment: str = "") -> str:
    """The XYZ-format text of a molecule (atomic numbers H, C, N, O, F; Angstrom)."""
    types = element_types(z)
    xyz = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    lines = [str(len(types)), comment.replace("\n", " ")]
    lines += [f"{ELEMENTS[t]} {x:.6f} {y:.6f} {zc:.6f}" for t, (x, y, zc) in zip(types, xyz.tolist())]
    return "\n".join(lines) + "\n"


def determine_bonds_valid(z: Any, pos: Any, charge: int = 0) -> bool:
    """Stricter validity: RDKit ``rdDetermineBonds.DetermineBonds(mol, charge=0)`` on the XYZ block
    succeeds (connectivity from covalent radii, then a full-valence bond-order assignment)."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    mol = Chem.MolFromXYZBlock(xyz_block(z, pos))
    if mol is None:
        return False
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=charge)
    except (ValueError, RuntimeError):
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Batched evaluation


@dataclass
class MoleculeRecords:
    """Per-molecule results of :func:`evaluate_flat` (aligned arrays / list over molecules)."""

    n_atoms: np.ndarray  # int [M]
    n_stable_atoms: np.ndarray  # int [M]
    valid: np.ndarray  # bool [M]
    smiles: list[str | None]  # largest-fragment canonical SMILES of valid molecules, else None
    n_fragments: np.ndarray  # int [M], bond-graph fragments (0 if invalid)
    valid_determine_bonds: np.ndarray  # bool [M]; all False if not computed

    @property
    def mol_stable(self) -> np.ndarray:
        """Bool [M]: every atom of the molecule is stable."""
        return self.n_stable_atoms == self.n_atoms


def _evaluate_chunk(args: tuple[np.ndarray, np.ndarray, np.ndarray, bool]) -> tuple:
    from rdkit import Chem, rdBase

    z, pos, n_atoms, determine_bonds = args
    types = element_types(z)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    m = len(n_atoms)
    n_stable = np.zeros(m, dtype=np.int64)
    valid = np.zeros(m, dtype=bool)
    n_frag = np.zeros(m, dtype=np.int64)
    db_valid = np.zeros(m, dtype=bool)
    smiles: list[str | None] = [None] * m
    # Group molecules by size so that pairwise distances are computed as one [B, n, n] array.
    with rdBase.BlockLogs():
        for n in np.unique(n_atoms):
            mols = np.nonzero(n_atoms == n)[0]
            for start in range(0, len(mols), 4096):
                batch = mols[start : start + 4096]
                idx = offsets[batch][:, None] + np.arange(n)[None, :]
                t, p = types[idx], pos[idx]
                orders = _orders_batched(t, p)
                stable = orders.sum(axis=2, dtype=np.int64) == _VALENCE[t]
                n_stable[batch] = stable.sum(axis=1)
                for k, mi in enumerate(batch.tolist()):
                    mol = build_rdkit_mol(z[idx[k]], orders=orders[k])
                    s = edm_smiles(mol)
                    if s is not None:
                        valid[mi], smiles[mi] = True, s
                        n_frag[mi] = len(Chem.GetMolFrags(mol))
                    if determine_bonds:
                        db_valid[mi] = determine_bonds_valid(z[idx[k]], p[k])
    return n_stable, valid, smiles, n_frag, db_valid


def evaluate_flat(
    z: np.ndarray,
    pos: np.ndarray,
    n_atoms: np.ndarray,
    *,
    determine_bonds: bool = True,
    n_workers: int = 1,
    chunk_size: int = 8192,
    mp_context: str | None = None,
) -> MoleculeRecords:
    """EDM stability/validity per molecule for molecules given as flat arrays (atoms of molecule 0,
    then molecule 1, ...): ``z`` [N] atomic numbers, ``pos`` [N, 3] Angstrom, ``n_atoms`` [M].

    ``n_workers > 1`` spreads chunks of ``chunk_size`` molecules over a process pool (``mp_context``:
    default "fork" on Python < 3.12 where available, since workers use only numpy and RDKit, else
    "forkserver"/"spawn", which avoid forking a multi-threaded parent).
    """
    z = np.asarray(z).astype(np.int64).reshape(-1)
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    n_atoms = np.asarray(n_atoms).astype(np.int64).reshape(-1)
    if int(n_atoms.sum()) != len(z) or len(z) != len(pos):
        raise ValueError(f"sum(n_atoms)={int(n_atoms.sum())}, len(z)={len(z)}, len(pos)={len(pos)} disagree")
    if (n_atoms <= 0).any():
        raise ValueError(f"molecule {int(np.argmax(n_atoms <= 0))} has no atoms")
    if not np.isfinite(pos).all():
        bad = int(np.searchsorted(np.cumsum(n_atoms), np.argmax(~np.isfinite(pos).all(axis=1)), side="right"))
        raise ValueError(f"molecule {bad} has non-finite coordinates")
    element_types(z)  # raises on unknown elements before work is spread out
    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    chunks = []
    for s in range(0, len(n_atoms), chunk_size):
        e = min(s + chunk_size, len(n_atoms))
        a, b = offsets[s], offsets[e]
        chunks.append((z[a:b], pos[a:b], n_atoms[s:e], determine_bonds))
    if n_workers > 1 and len(chunks) > 1:
        methods = mp.get_all_start_methods()
        method = mp_context or next(
            m for m in (("fork",) if sys.version_info < (3, 12) else ()) + ("forkserver", "spawn") if m in methods
        )
        with mp.get_context(method).Pool(n_workers) as pool:
            parts = pool.map(_evaluate_chunk, chunks)
    else:
        parts = [_evaluate_chunk(c) for c in chunks]
    return MoleculeRecords(
        n_atoms=n_atoms,
        n_stable_atoms=np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64),
        valid=np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, bool),
        smiles=[s for p in parts for s in p[2]],
        n_fragments=np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, np.int64),
        valid_determine_bonds=np.concatenate([p[4] for p in parts]) if parts else np.zeros(0, bool),
    )


def summarize(
    records: MoleculeRecords,
    indices: np.ndarray | None = None,
    train_smiles: Iterable[str] | None = None,
    determine_bonds: bool = True,
) -> dict[str, float | int | None]:
    """EDM's aggregate metrics over ``records`` (optionally only the molecules in ``indices``).

    atom_stability is atom-weighted (stable atoms / all atoms); mol_stability, validity and
    validity_determine_bonds are fractions of molecules; uniqueness = distinct SMILES / valid;
    novelty = unique SMILES not in ``train_smiles`` / unique (``None`` without ``train_smiles``).
    """
    sel = np.arange(len(records.n_atoms)) if indices is None else np.asarray(indices, dtype=np.int64)
    n = len(sel)
    if n == 0:
        raise ValueError("cannot summarize zero molecules")
    valid_smiles = [records.smiles[i] for i in sel.tolist() if records.smiles[i] is not None]
    unique = set(valid_smiles)
    out: dict[str, float | int | None] = {
        "n": n,
        "atom_stability": float(records.n_stable_atoms[sel].sum() / records.n_atoms[sel].sum()),
        "mol_stability": float(records.mol_stable[sel].mean()),
        "validity": len(valid_smiles) / n,
        "uniqueness": len(unique) / len(valid_smiles) if valid_smiles else 0.0,
        "novelty": None,
    }
    if train_smiles is not None and unique:
        train = train_smiles if isinstance(train_smiles, (set, frozenset)) else set(train_smiles)
        out["novelty"] = sum(s not in train for s in unique) / len(unique)
    out["validity_determine_bonds"] = float(records.valid_determine_bonds[sel].mean()) if determine_bonds else None
    return out


def _flatten(molecules: Sequence[tuple[Any, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if len(molecules) == 0:
        raise ValueError("no molecules given")
    zs, ps, ns = [], [], []
    for k, (z, pos) in enumerate(molecules):
        z = np.asarray(z).reshape(-1)
        pos = np.asarray(pos, dtype=np.float64)
        if pos.ndim != 2 or pos.shape != (len(z), 3):
            raise ValueError(f"molecule {k}: pos has shape {tuple(pos.shape)}, expected ({len(z)}, 3)")
        zs.append(z)
        ps.append(pos)
        ns.append(len(z))
    return np.concatenate(zs), np.concatenate(ps), np.asarray(ns)


def evaluate_molecules(
    molecules: Sequence[tuple[Any, Any]],
    train_smiles: Iterable[str] | None = None,
    *,
    determine_bonds: bool = True,
    n_workers: int = 1,
) -> dict[str, float | int | None]:
    """EDM's QM9 metrics for a list of ``(z, pos)`` molecules (atomic numbers, Angstrom).

    Returns ``{n, atom_stability, mol_stability, validity, uniqueness, novelty,
    validity_determine_bonds}``; see :func:`summarize`. ``train_smiles`` should be produced the
    same way (:func:`smiles_of`), e.g. from the training split.
    """
    z, pos, n_atoms = _flatten(molecules)
    records = evaluate_flat(z, pos, n_atoms, determine_bonds=determine_bonds, n_workers=n_workers)
    return summarize(records, train_smiles=train_smiles, determine_bonds=determine_bonds)


def smiles_of(z: np.ndarray, pos: np.ndarray, n_atoms: np.ndarray, n_workers: int = 1) -> list[str]:
    """Largest-fragment canonical SMILES of the valid molecules among flat-array molecules, as used
    for novelty (EDM builds its training SMILES list with the same bond rules)."""
    rec = evaluate_flat(z, pos, n_atoms, determine_bonds=False, n_workers=n_workers)
    return [s for s in rec.smiles if s is not None]


def write_sdf(path: str | Path, molecules: Sequence[tuple[Any, Any]],
              properties: Sequence[dict[str, float]] | None = None) -> Path:
    """Write molecules ``(z, pos)`` to an SDF file with RDKit's ``SDWriter``: EDM bonds, a 3D
    conformer from ``pos`` (Angstrom). Molecules RDKit cannot sanitize are written unsanitized
    (valence is not checked), so unstable samples can still be inspected. ``properties`` (one dict per
    molecule) become SDF data fields (``> <name>``), e.g. a conditional sample's target values."""
    if properties is not None and len(properties) != len(molecules):
        raise ValueError(f"{path}: {len(properties)} property records for {len(molecules)} molecules")
    from rdkit import Chem, rdBase

    path = Path(path)
    mols = []
    for k, (z, pos) in enumerate(molecules):
        try:
            zz = np.asarray(z).reshape(-1)
            pp = np.asarray(pos, dtype=np.float64)
            if pp.shape != (len(zz), 3):
                raise ValueError(f"pos has shape {tuple(pp.shape)}, expected ({len(zz)}, 3)")
            if not np.isfinite(pp).all():
                raise ValueError("non-finite coordinates")
            mol = build_rdkit_mol(zz, pp)
        except ValueError as err:
            raise ValueError(f"{path}: molecule {k} cannot be built: {err}") from None
        for name, value in (properties[k] if properties is not None else {}).items():
            mol.SetDoubleProp(name, float(value))
        mols.append(mol)
    with rdBase.BlockLogs():
        writer = Chem.SDWriter(str(path))
        writer.SetKekulize(False)
        try:
            for mol in mols:
                mol.UpdatePropertyCache(strict=False)
                writer.write(mol)
        finally:
            writer.close()
    return path
