"""Tests of the QM9 loader, EDM's splits, the size sampler and the XYZ helpers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sciddpm.domains.molecules.data import (
    EDM_SPLIT_SIZES,
    MoleculeSizeSampler,
    load_qm9,
    load_qm9_csv,
    read_xyz,
    save_qm9_npz,
    split_indices,
    write_xyz,
)

SUBSET = Path(__file__).resolve().parents[2] / "data" / "qm9_subset.npz"
FULL = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "qm9"


def _tiny_arrays() -> dict[str, np.ndarray]:
    """Two molecules: methane (5 atoms) and water (3 atoms)."""
    pos = np.array([[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63],
                    [0, 0, 0], [0.76, 0.59, 0], [-0.76, 0.59, 0]], dtype=np.float32)
    return {"pos": pos, "z": np.array([6, 1, 1, 1, 1, 8, 1, 1], dtype=np.uint8),
            "n_atoms": np.array([5, 3], dtype=np.uint8), "index": np.array([1, 3], dtype=np.int32),
            "mu_debye": np.array([0.0, 1.85])}


def _write(tmp_path: Path, **changes) -> Path:
    arrays = _tiny_arrays()
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


def test_subset_loads_with_expected_fields() -> None:
    ds = load_qm9(SUBSET)
    assert len(ds) == 300
    assert ds.smiles is not None and len(ds.smiles) == 300
    item = ds[7]
    n = item.num_atoms
    assert item.pos.shape == (n, 3) and item.pos.dtype == torch.float32
    assert item.one_hot.shape == (n, 5)
    assert torch.equal(item.one_hot.sum(1), torch.ones(n))
    order = torch.tensor([1, 6, 7, 8, 9])
    assert torch.equal(order[item.one_hot.argmax(1)], item.z)
    assert item.charges.shape == (n, 1) and torch.equal(item.charges[:, 0], item.z.float())
    for name in ("mu_debye", "alpha_bohr3", "homo_hartree", "lumo_hartree", "gap_hartree", "r2_bohr2",
                 "zpve_hartree", "u0_hartree", "cv_cal_mol_k"):
        assert item[name].shape == (1,) and item[name].dtype == torch.float64
    assert isinstance(item.smiles, str) and isinstance(item.idx, int) and 1 <= item.idx <= 133_885
    assert ds[-1].idx == int(ds.index[-1])
    with pytest.raises(IndexError):
        ds[300]


def test_folder_path_and_default_smiles(tmp_path: Path) -> None:
    arrays = _tiny_arrays()
    np.savez(tmp_path / "qm9.npz", **arrays)
    (tmp_path / "qm9_smiles.txt").write_text("C\nO\n")
    ds = load_qm9(tmp_path)
    assert len(ds) == 2 and ds[1].smiles == "O" and ds[1].idx == 3
    assert torch.allclose(ds[1].mu_debye, torch.tensor([1.85], dtype=torch.float64))
    (tmp_path / "qm9_smiles.txt").write_text("C\n")
    with pytest.raises(ValueError, match=r"qm9_smiles\.txt: 1 SMILES lines for 2 molecules"):
        load_qm9(tmp_path)


def test_subset_view_and_flat_arrays() -> None:
    ds = load_qm9(SUBSET)
    view = ds.subset([5, 2, 9])
    assert len(view) == 3 and view[0].idx == ds[5].idx and view[2].idx == ds[9].idx
    z, pos, n = view.flat()
    assert n.tolist() == [ds[5].num_atoms, ds[2].num_atoms, ds[9].num_atoms]
    assert np.array_equal(z[: n[0]], ds.molecule(5)[0]) and np.array_equal(pos[-n[2]:], ds.molecule(9)[1])
    assert view.subset([1])[0].idx == ds[2].idx


def test_split_is_seeded_disjoint_and_complete() -> None:
    a, b = split_indices(300, seed=0), split_indices(300, seed=0)
    for name in ("train", "valid", "test"):
        assert np.array_equal(a[name], b[name])
    assert not np.array_equal(split_indices(300, seed=1)["train"], a["train"])
    every = np.concatenate([a["train"], a["valid"], a["test"]])
    assert np.array_equal(np.sort(every), np.arange(300))
    assert [len(a[k]) for k in ("train", "valid", "test")] == [229, 41, 30]
    ds = load_qm9(SUBSET)
    assert np.array_equal(ds.split("train"), a["train"])
    assert np.array_equal(ds.split("validation"), a["valid"])
    view = ds.split("test", as_view=True)
    assert len(view) == 30 and view[0].idx == ds[int(a["test"][0])].idx
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        ds.split("dev")
    with pytest.raises(ValueError, match="unknown split scheme"):
        split_indices(10, scheme="other")


@pytest.mark.skipif(not (FULL / "qm9.npz").is_file(), reason="full QM9 data (../shared/data/qm9) not present")
def test_full_dataset_has_edm_split_sizes() -> None:
    ds = load_qm9(FULL)
    assert len(ds) == 130_831 and int(ds.n_atoms.sum()) == 2_359_210
    for scheme in ("default_rng", "edm"):
        split = ds.split_indices(scheme=scheme)
        assert {k: len(v) for k, v in split.items()} == EDM_SPLIT_SIZES
        assert len(np.unique(np.concatenate(list(split.values())))) == 130_831
    expected = np.sort(np.random.default_rng(0).permutation(130_831)[:100_000])
    assert np.array_equal(ds.split("train"), expected)
    hist = ds.atom_count_histogram(ds.split("train"))
    assert hist.sum() == 100_000 and hist[:3].sum() == 0 and len(hist) == 30


def test_histogram_and_size_sampler() -> None:
    ds = load_qm9(SUBSET)
    hist = ds.atom_count_histogram()
    assert hist.sum() == len(ds)
    assert np.array_equal(np.nonzero(hist)[0], np.unique(ds.n_atoms))
    train = ds.split("train")
    train_hist = ds.atom_count_histogram(train)
    assert train_hist.sum() == len(train)
    sampler = MoleculeSizeSampler(train_hist)
    s1 = sampler.sample(1000, generator=torch.Generator().manual_seed(3))
    s2 = sampler.sample(1000, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and s1.dtype == torch.int64
    assert set(s1.tolist()) <= set(np.nonzero(train_hist)[0].tolist())
    assert torch.isinf(sampler.log_prob(torch.tensor([0, 200]))).all()
    assert torch.isfinite(sampler.log_prob(s1)).all()
    with pytest.raises(ValueError, match="positive total"):
        MoleculeSizeSampler(np.zeros(5))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"z": None}, r"bad\.npz: field 'z' missing"),
        ({"index": None}, r"bad\.npz: field 'index' missing"),
        ({"n_atoms": np.array([5, 2], dtype=np.uint8)}, r"bad\.npz: field 'n_atoms' sums to 7 but 'pos' has 8 atoms"),
        ({"n_atoms": np.array([8, 0], dtype=np.uint8)}, r"bad\.npz: field 'n_atoms': molecule 1 \(QM9 id 3\) is empty"),
        ({"z": np.array([6, 1, 1, 1, 1, 16, 1, 1], dtype=np.uint8)}, r"bad\.npz: field 'z': unknown element 16 in molecule 1"),
        ({"mu_debye": np.array([0.0])}, r"bad\.npz: field 'mu_debye' has shape \(1,\), expected \(2,\)"),
        ({"index": np.array([1])}, r"bad\.npz: field 'index' has shape"),
        ({"pos": np.zeros((8, 2), np.float32)}, r"bad\.npz: field 'pos' has shape"),
    ],
)
def test_bad_npz_errors_name_file_and_field(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_qm9(_write(tmp_path, **changes))


def test_nan_coordinates_name_the_molecule(tmp_path: Path) -> None:
    pos = _tiny_arrays()["pos"].copy()
    pos[6, 1] = np.nan
    with pytest.raises(ValueError, match=r"bad\.npz: field 'pos': non-finite coordinates in molecule 1 \(QM9 id 3\)"):
        load_qm9(_write(tmp_path, pos=pos))
    pos[6, 1] = np.inf
    with pytest.raises(ValueError, match="molecule 1"):
        load_qm9(_write(tmp_path, pos=pos))


def test_missing_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"QM9 file not found: .*qm9\.npz"):
        load_qm9(tmp_path)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match=r"junk\.npz: not a readable \.npz file"):
        load_qm9(tmp_path / "junk.npz")


def test_xyz_round_trip(tmp_path: Path) -> None:
    ds = load_qm9(SUBSET)
    z, pos = ds.molecule(11)
    path = write_xyz(tmp_path / "m.xyz", z, pos, comment="QM9 id")
    z2, pos2 = read_xyz(path)
    assert np.array_equal(z2, z.astype(np.int64))
    assert np.allclose(pos2, pos, atol=1e-6)


def test_read_xyz_accepts_qm9_format(tmp_path: Path) -> None:
    text = "3\ngdb 3 799.58 437.90 282.94\nO -0.0343 0.9775 0.0076 -0.589\nH 0.0647 0.0205 0.0015 0.29\nH 0.8717 1.3008 -2.3*^-5 0.29\n"
    (tmp_path / "w.xyz").write_text(text)
    z, pos = read_xyz(tmp_path / "w.xyz")
    assert z.tolist() == [8, 1, 1] and pos[2, 2] == pytest.approx(-2.3e-5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("three\n\nC 0 0 0\n", r"line 1: atom count 'three' is not an integer"),
        ("3\n\nC 0 0 0\nH 1 0 0\n", r"line 1 declares 3 atoms but 2 atom lines follow"),
        ("", r"line 1: empty"),
        ("2\n\nC 0 0 0\nXx 1 0 0\n", r"line 4: unknown element symbol 'Xx'"),
        ("2\n\nC 0 0 0\nH 1 a 0\n", r"line 4: non-numeric coordinate"),
        ("2\n\nC 0 0 0\nH 1 0\n", r"line 4: expected 'symbol x y z'"),
        ("1\n\nC nan 0 0\n", r"line 3: non-finite coordinate"),
    ],
)
def test_malformed_xyz_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"bad\.xyz: " + message):
        read_xyz(path)


def test_write_xyz_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"x\.xyz: pos has shape \(2, 2\)"):
        write_xyz(tmp_path / "x.xyz", [6, 1], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        write_xyz(tmp_path / "x.xyz", [6], np.full((1, 3), np.nan))


_CSV_HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,Harmonic_Freq_cmi,"
    "RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,HOMO_au,LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,"
    "ZPVE_au,InternalEnergy_0K_au,InternalEnergy_298K_au,Enthalphy_298K_au,GibbsFreeEnergy_298K_au,"
    "Heatcapacity_Cv_cal_mol_K\n"
)
_CSV_ROWS = [  # qm9pack's layout; molecule 4 is written before molecule 3 to check the sort by id
    '"dsgdb9nsd_000004.xyz",4,"C#C","x",4,"[2,2,0,0,0]","[\'C\',\'C\',\'H\',\'H\']",'
    '"[[0.5995394918,0.,1.],[-0.5995394918,0.,1.],[-1.6616385861,0.,1.],[1.6616385861,0.,1.]]","[0]","[0]",'
    '0.,35.61,35.61,0.,16.28,-0.2845,0.0506,0.3351,59.5248,0.026841,-77.308427,-77.3,-77.3,-77.3,6.413\n',
    '"dsgdb9nsd_000003.xyz",3,"O","x",3,"[2,0,0,1,0]","[\'O\',\'H\',\'H\']",'
    '"[[-0.0343604951,0.9775395708,0.0076015923],[0.0647664923,0.0205721989,0.0015346341],'
    '[0.8717903736,1.3007924048,0.0006931336]]","[0]","[0]",'
    '799.58,437.9,282.95,1.8511,6.31,-0.2928,0.0687,0.3615,19.0002,0.021375,-76.404702,-76.4,-76.4,-76.4,6.002\n',
]


def test_qm9pack_csv_loader(tmp_path: Path) -> None:
    (tmp_path / "qm9_part1.csv").write_text(_CSV_HEADER + _CSV_ROWS[0])
    (tmp_path / "qm9_part2.csv").write_text(_CSV_HEADER + _CSV_ROWS[1])
    ds = load_qm9_csv(tmp_path)
    assert ds.index.tolist() == [3, 4] and ds.n_atoms.tolist() == [3, 4] and ds.smiles == ["O", "C#C"]
    assert ds.z.tolist() == [8, 1, 1, 6, 6, 1, 1]
    assert ds.pos[3].tolist() == pytest.approx([0.5995394918, 0.0, 1.0])
    assert ds.properties["mu_debye"].tolist() == [1.8511, 0.0]
    assert ds.properties["u0_hartree"][1] == -77.308427
    # converting to npz and back keeps everything
    out = save_qm9_npz(ds, tmp_path / "conv.npz")
    back = load_qm9(out)
    assert back.smiles == ds.smiles and np.array_equal(back.pos, ds.pos) and np.array_equal(back.index, ds.index)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_CSV_HEADER.replace("XYZ_Ang,", "") + "\n", r"bad\.csv: column 'XYZ_Ang' missing"),
        (_CSV_HEADER + _CSV_ROWS[1].replace(",3,\"[2,0,0,1,0]", ",4,\"[2,0,0,1,0]"),
         r"bad\.csv: line 2: N_atoms=4 but 3 elements and 3 positions"),
        (_CSV_HEADER + _CSV_ROWS[1].replace("\'O\'", "\'S\'"), r"bad\.csv: line 2: cannot parse \(unknown element symbol 'S'\)"),
    ],
)
def test_qm9pack_csv_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        load_qm9_csv(tmp_path / "bad.csv")


def test_save_view_as_npz(tmp_path: Path) -> None:
    ds = load_qm9(SUBSET)
    view = ds.subset([4, 1])
    back = load_qm9(save_qm9_npz(view, tmp_path / "two.npz"))
    assert len(back) == 2 and back.smiles == [ds.smiles[4], ds.smiles[1]]
    assert np.array_equal(back.molecule(1)[1], ds.molecule(1)[1])
    assert back[0].gap_hartree.item() == ds[4].gap_hartree.item()
