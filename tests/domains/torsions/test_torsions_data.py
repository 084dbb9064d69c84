"""Torsion data in: the real parallel-tempering archive (its convention pinned down; skipped without
../shared/data), angle files, mdtraj trajectories (the real PDB; a small multi-frame trajectory written and read
back through mdtraj) and one-line errors for bad input."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sciddpm.domains.torsions.data import (Torsions, check_angles, load_angles, load_pt_archive, load_torsions,
                                           trajectory_angles)
from sciddpm.domains.torsions.metrics import basin_stats

REPO = Path(__file__).resolve().parents[3]
ARCHIVE = REPO.parent / "shared" / "data" / "ala2_pt" / "alanine-dipeptide-pt.tar.gz"
PDB = REPO / "tests" / "data" / "ala2_solute.pdb"
SUBSET = REPO / "tests" / "data" / "ala2_pt_subset.npz"


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.skipif(not ARCHIVE.is_file(), reason="needs ../shared/data/ala2_pt")
def test_real_archive_convention() -> None:
    """40 temperatures 273–600 K, 10,000 frames each, indexed by temperature: at 273 K the extended (C7eq/β + P_II)
    and α_R basins hold > 99 % and α_L < 0.5 %; α_L grows with T (> 1.5 % at 600 K); mean energy rises with T."""
    d = load_pt_archive(ARCHIVE)
    assert len(d.temperatures) == 40 and d.temperatures[0] == 273.0 and d.temperatures[-1] == 600.0
    assert len(d.phi) == 400_000 and d.block.max() == 499
    cold, hot = basin_stats(d.at(273.0).phi, d.at(273.0).psi), basin_stats(d.at(600.0).phi, d.at(600.0).psi)
    p = cold.population
    assert p["C7eq"] + p["PII"] + p["alphaR"] > 0.99 and p["C7eq"] + p["PII"] > 0.8 and p["alphaR"] > 0.05
    assert p["alphaL"] < 0.005 and hot.population["alphaL"] > 0.015
    mean_e = [d.at(t).energy.mean() for t in d.temperatures]
    assert np.all(np.diff(mean_e) > 0)  # each column of potential-energies belongs to its temperature


def _write_archive(path: Path, temps: list[float], n_torsion_files: int, phi_value: float = -60.0) -> None:
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, text: str) -> None:
            data = text.encode()
            info = tarfile.TarInfo(f"pt/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("temperatures", " ".join(str(t) for t in temps))
        add("energies/potential-energies", "\n".join(" ".join(["-100.0"] * len(temps)) for _ in range(3)))
        for k in range(n_torsion_files):
            add(f"backbone-torsions/{k}.phi", f"{phi_value}\n-70.0\n-80.0\n")
            add(f"backbone-torsions/{k}.psi", "140.0\n150.0\n-40.0\n")


def test_archive_reader_and_its_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.tar.gz"
    _write_archive(good, [300.0, 350.0], 2)
    d = load_pt_archive(good)
    assert d.phi.tolist() == [-60.0, -70.0, -80.0] * 2 and d.temperature.tolist() == [300.0] * 3 + [350.0] * 3
    for temps, files, phi, match in (([300.0, 350.0, 400.0], 2, -60.0, "lists 3 temperatures"),
                                     ([300.0], 2, -60.0, "lists only 1 temperatures"),
                                     ([300.0, 350.0], 2, 400.0, r"outside \[-180, 360\)")):
        bad = tmp_path / "bad.tar.gz"
        _write_archive(bad, temps, files, phi)
        with pytest.raises(ValueError, match=match) as err:
            load_pt_archive(bad)
        assert str(bad) in one_line(err)


def test_angle_conventions_and_errors(tmp_path: Path) -> None:
    np.testing.assert_allclose(check_angles(np.array([-180.0, 0.0, 179.9, 180.0, 270.0, 359.0]), "phi", "f"),
                               [-180.0, 0.0, 179.9, -180.0, -90.0, -1.0])
    for bad, match in ((np.array([-181.0]), "outside"), (np.array([360.0]), "outside"), (np.array([np.nan]), "non-finite")):
        with pytest.raises(ValueError, match=match) as err:
            check_angles(bad, "psi", "x.npz")
        assert "x.npz" in one_line(err) and "psi" in str(err.value)
    f = tmp_path / "a.npz"
    np.savez(f, phi=np.array([10.0, 20.0]), psi=np.array([30.0, 40.0]), temperature=np.array([300.0, 300.0, 300.0]))
    with pytest.raises(ValueError, match="3 values for 2 frames") as err:
        load_angles(f)
    assert str(f) in one_line(err)
    np.savez(f, phi=np.array([10.0, 20.0]), psi=np.array([30.0, 40.0]), temperature=np.array(310.0))
    assert load_angles(f).temperature.tolist() == [310.0, 310.0]
    c = tmp_path / "a.csv"
    c.write_text("phi,psi,temperature\n10,20,300\n350,-30,300\n")
    np.testing.assert_allclose(load_angles(c).phi, [10.0, -10.0])
    assert load_angles(SUBSET).temperatures.tolist() == pytest.approx([273.0, 278.568, 284.25, 290.048])


def test_mdtraj_real_pdb_and_a_written_trajectory(tmp_path: Path) -> None:
    """φ/ψ of the real alanine-dipeptide PDB through mdtraj agree with our own dihedral of its C–N–CA–C and
    N–CA–C–N atoms; a 5-frame DCD and a multi-frame PDB written by mdtraj read back with the same angles."""
    import mdtraj

    phi, psi = trajectory_angles(PDB)
    traj = mdtraj.load(str(PDB))
    atoms = {(a.residue.index, a.name): a.index for a in traj.topology.atoms}
    x = traj.xyz[0].astype(np.float64)

    def dihedral(i: int, j: int, k: int, m: int) -> float:  # Blondel & Karplus (1996) atan2 form
        b0, b1, b2 = x[j] - x[i], x[k] - x[j], x[m] - x[k]
        n1, n2 = np.cross(b0, b1), np.cross(b1, b2)
        return float(np.degrees(np.arctan2(np.dot(np.cross(n1, n2), b1 / np.linalg.norm(b1)), np.dot(n1, n2))))

    want_phi = dihedral(atoms[0, "C"], atoms[1, "N"], atoms[1, "CA"], atoms[1, "C"])
    want_psi = dihedral(atoms[1, "N"], atoms[1, "CA"], atoms[1, "C"], atoms[2, "N"])
    assert phi.shape == (1,) and phi[0] == pytest.approx(want_phi, abs=1e-3) and psi[0] == pytest.approx(want_psi, abs=1e-3)
    rng = np.random.default_rng(0)
    frames = mdtraj.Trajectory(traj.xyz[0][None] + rng.normal(0, 0.02, (5, traj.n_atoms, 3)).astype(np.float32),
                               traj.topology)
    _, ref_phi = mdtraj.compute_phi(frames)
    for name in ("five.dcd", "five.pdb"):
        frames.save(str(tmp_path / name))
        got_phi, got_psi = trajectory_angles(tmp_path / name, PDB if name.endswith(".dcd") else None)
        assert got_phi.shape == (5,) and got_psi.shape == (5,)
        # DCD stores float32 nm; PDB rounds to 1e-3 Å, which moves a dihedral of ~1.5 Å bonds by up to ~0.1°
        np.testing.assert_allclose(got_phi, np.degrees(ref_phi[:, 0]), atol=0.01 if name.endswith(".dcd") else 0.2)
    t = load_torsions(tmp_path / "five.dcd", PDB, temperature=320.0)
    assert isinstance(t, Torsions) and t.temperature.tolist() == [320.0] * 5


def test_trajectory_errors(tmp_path: Path) -> None:
    """A water box (no φ/ψ atoms), a missing topology and a trajectory without temperature: one line each."""
    water = tmp_path / "water.pdb"
    water.write_text("".join(f"HETATM{i + 1:5d}  O   HOH A{i + 1:4d}    {i * 3.0:8.3f}{0.0:8.3f}{0.0:8.3f}  1.00  0.00           O\n"
                             for i in range(3)) + "END\n")
    with pytest.raises(ValueError, match="no backbone phi/psi") as err:
        trajectory_angles(water)
    assert str(water) in one_line(err)
    with pytest.raises(ValueError, match="topology not found") as err:
        trajectory_angles(PDB, tmp_path / "missing.pdb")
    one_line(err)
    with pytest.raises(ValueError, match="needs the 'temperature'") as err:
        load_torsions(PDB)
    one_line(err)
    with pytest.raises(ValueError, match="unknown torsion source") as err:
        load_torsions(tmp_path / "x.txt")
    one_line(err)
