"""EDM's molecule metrics on the real QM9 molecules, compared with EDM's 'Data' row.

Runs :func:`sciddpm.domains.molecules.metrics.evaluate_flat` (EDM bond rules, RDKit validity,
RDKit DetermineBonds validity) over all 130,831 molecules of ``qm9.npz`` and aggregates it over
the whole set, EDM's training split (Cormorant's legacy seed-0 permutation), our default split
(``default_rng(0)``) and EDM's test split (with novelty against the EDM training SMILES).
Reference: Hoogeboom et al., ICML 2022, Table 1/3 'Data' row (atom 99.0, molecule 95.2, valid 97.7).

Usage: ``python benchmarks/qm9_data_metrics.py [--data ../shared/data/qm9] [--workers 2]``
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

try:  # installed package (pip install -e .)
    from sciddpm.domains.molecules.data import load_qm9, split_indices
    from sciddpm.domains.molecules.metrics import ELEMENTS, ATOMIC_NUMBERS, evaluate_flat, summarize
except ImportError:  # plain checkout: the domains folder is importable from the repository root
    from domains.molecules.data import load_qm9, split_indices
    from domains.molecules.metrics import ELEMENTS, ATOMIC_NUMBERS, evaluate_flat, summarize
from benchmarks._report import write_results

EDM_REPORTED = {"atom_stability": 99.0, "mol_stability": 95.2, "validity": 97.7}


def _pct(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 2)


def _row(source: str, summary: dict) -> dict:
    return {
        "source": source,
        "n": summary["n"],
        "atom_stability": _pct(summary["atom_stability"]),
        "mol_stability": _pct(summary["mol_stability"]),
        "validity": _pct(summary["validity"]),
        "validity_determine_bonds": _pct(summary["validity_determine_bonds"]),
        "uniqueness": _pct(summary["uniqueness"]),
        "novelty": _pct(summary["novelty"]),
    }


def per_element_stability(ds, every: int = 1) -> tuple[dict[str, float], float]:
    """Percent of stable atoms per element and over heavy atoms (every ``every``-th molecule)."""
    try:
        from sciddpm.domains.molecules.metrics import atom_stability
    except ImportError:
        from domains.molecules.metrics import atom_stability
    zs, oks = [], []
    for i in range(0, len(ds), every):
        z, pos = ds.molecule(i)
        zs.append(z)
        oks.append(atom_stability(z, pos))
    z, ok = np.concatenate(zs), np.concatenate(oks)
    by_element = {e: round(100.0 * float(ok[z == ATOMIC_NUMBERS[e]].mean()), 2) for e in ELEMENTS}
    return by_element, round(100.0 * float(ok[z != 1].mean()), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/qm9", help="qm9.npz or its folder (relative to the repo root)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    data = Path(args.data)
    data = data if data.is_absolute() else (REPO / data)

    t0 = time.perf_counter()
    ds = load_qm9(data)
    t_load = time.perf_counter() - t0
    z, pos, n_atoms = ds.flat()
    t0 = time.perf_counter()
    rec = evaluate_flat(z, pos, n_atoms, n_workers=args.workers)
    t_eval = time.perf_counter() - t0

    edm = split_indices(len(ds), seed=0, scheme="edm")
    ours = split_indices(len(ds), seed=0, scheme="default_rng")
    edm_train_smiles = {rec.smiles[i] for i in edm["train"].tolist() if rec.smiles[i] is not None}
    rows = [
        _row(f"QM9 data (all {len(ds):,})", summarize(rec)),
        _row("QM9 EDM train split (Cormorant seed-0 permutation)", summarize(rec, edm["train"])),
        _row("QM9 train split, default_rng(0) (sciddpm default)", summarize(rec, ours["train"])),
        _row("QM9 EDM test split (novelty vs EDM train)", summarize(rec, edm["test"], train_smiles=edm_train_smiles)),
        {"source": "EDM paper (Hoogeboom et al. 2022, Table 1 'Data')", "n": None, **EDM_REPORTED,
         "validity_determine_bonds": None, "uniqueness": None, "novelty": None},
    ]

    # Diagnostics behind the notes.
    n_unstable_mols = int((~rec.mol_stable).sum())
    n_unstable_atoms = int((rec.n_atoms - rec.n_stable_atoms).sum())
    per_mol_mean = float((rec.n_stable_atoms / rec.n_atoms).mean())
    elements, heavy = per_element_stability(ds, every=4)
    needed = (1 - EDM_REPORTED['atom_stability'] / 100) * float(rec.n_atoms.mean()) / (1 - EDM_REPORTED['mol_stability'] / 100)
    diagnostics = {
        "seconds_load": round(t_load, 1),
        "seconds_evaluate": round(t_eval, 1),
        "workers": args.workers,
        "unstable_molecules": n_unstable_mols,
        "unstable_atoms": n_unstable_atoms,
        "unstable_atoms_per_unstable_molecule": round(n_unstable_atoms / max(n_unstable_mols, 1), 2),
        "atom_stability_per_molecule_mean_pct": round(100 * per_mol_mean, 2),
        "atom_stability_by_element_pct_every_4th_molecule": elements,
        "atom_stability_heavy_atoms_pct_every_4th_molecule": heavy,
        "valid_with_several_fragments": int((rec.n_fragments > 1).sum()),
        "unstable_but_valid": int((~rec.mol_stable & rec.valid).sum()),
        "stable_but_invalid": int((rec.mol_stable & ~rec.valid).sum()),
        "valid_determine_bonds_but_not_edm_valid": int((rec.valid_determine_bonds & ~rec.valid).sum()),
    }
    if ds.smiles is not None:
        from rdkit import Chem, rdBase

        with rdBase.BlockLogs():
            mols = [Chem.MolFromSmiles(ds.smiles[i]) for i in np.nonzero(~rec.mol_stable)[0].tolist()]
        aromatic = sum(m is not None and any(a.GetIsAromatic() for a in m.GetAtoms()) for m in mols)
        diagnostics["unstable_with_aromatic_ring_pct"] = round(100.0 * aromatic / max(len(mols), 1), 1)
    all_row = rows[0]
    gap = {k: round(all_row[k] - v, 2) for k, v in EDM_REPORTED.items()}
    notes = f"""
All values in %. Atom stability is atom-weighted (stable atoms / all atoms, as EDM's
`analyze_stability_for_molecules`); the other columns are fractions of molecules (uniqueness of
valid, novelty of unique valid). Bond orders from EDM's tables and margins (10/5/3 pm); validity =
RDKit SanitizeMol on the EDM bond graph (implicit H may fill missing valence), largest fragment;
validity_determine_bonds = RDKit `DetermineBonds(charge=0)` on the XYZ block succeeds.
Evaluation of all molecules: {t_eval:.0f} s with {args.workers} workers (load {t_load:.1f} s).

**Comparison with EDM (all molecules minus EDM):** atom stability {gap['atom_stability']:+.2f}, molecule
stability {gap['mol_stability']:+.2f}, validity {gap['validity']:+.2f} points. Molecule stability and
validity reproduce EDM's 95.2 / 97.7 to within 0.1 point on the whole set and on either training
split, so the molecule set (130,831 = 133,885 minus the 3,054 uncharacterized, as EDM/Cormorant),
the bond tables, the margins and the H handling (H atoms explicit, counted in every metric) agree.
Which split is used makes < 0.1 point of difference.

Atom stability is {all_row['atom_stability']:.2f} against EDM's 99.0 (within 0.5 point). EDM's own pair of
numbers is hard to reconcile with one definition: with 95.2% stable molecules ({rec.n_atoms.mean():.1f} atoms each), 99.0%
atom stability needs ~{needed:.1f} unstable atoms per unstable molecule, while the data
have {diagnostics['unstable_atoms_per_unstable_molecule']} (a wrong C/N bond order typically breaks the
two atoms of that bond). Other aggregations do not give 99.0 either: the per-molecule mean is
{diagnostics['atom_stability_per_molecule_mean_pct']:.2f}, heavy atoms only {heavy:.2f} (by element: {', '.join(f'{e} {v}' for e, v in elements.items())}). We keep the definition of EDM's released code and could not
find what produced the paper's 99.0; the gap is below the 0.5-point tolerance.

Instability comes mostly from conjugated rings ({diagnostics.get('unstable_with_aromatic_ring_pct')}% of the unstable
molecules have an aromatic ring in their QM9 SMILES), whose C-C / C-N lengths fall between EDM's
single and double thresholds, leaving C and N atoms under- or over-bonded; {diagnostics['unstable_but_valid']} unstable molecules are still RDKit-valid because
RDKit adds implicit H to under-bonded atoms, and {diagnostics['stable_but_invalid']} stable molecules are
invalid. The DetermineBonds validity is stricter ({all_row['validity_determine_bonds']:.2f}%): it requires a
full-valence neutral assignment from covalent-radius connectivity, with no implicit H.
EDM's split: Cormorant's `np.random.seed(0); np.random.permutation(130831)` split 100,000 / 17,748 /
13,083 over molecules in QM9-id order (assumes Cormorant's tar archive lists files in id order).
"""
    write_results("qm9_data_metrics", rows, title="EDM molecule metrics on the QM9 data vs EDM's 'Data' row",
                  notes=notes, extra={"diagnostics": diagnostics})


if __name__ == "__main__":
    main()
