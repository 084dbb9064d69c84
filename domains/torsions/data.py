"""Backbone torsions (φ, ψ) with temperatures: the parallel-tempering archive, angle files and MD trajectories.

Three ways in, one result (``Torsions``: φ, ψ in degrees wrapped to [−180°, 180°), the temperature of every frame
in K, optional potential energies in kcal/mol and the frame's exchange-iteration block):

* ``load_pt_archive``: the alanine-dipeptide parallel-tempering data of Chodera, Swope, Pitera & Dill (Multiscale
  Model. Simul. 5:1214, 2006) as shipped in pymbar's ``examples/parallel-tempering-2dfes/data`` (a ``.tar.gz`` or its
  unpacked folder): ``temperatures`` (K values, one line), ``backbone-torsions/{k}.phi|psi`` (degrees, one frame a
  line), ``energies/potential-energies`` (row = frame, column = temperature index k, kcal/mol) and
  ``replica-indices`` (row = exchange iteration, column = temperature index: which replica sat there). All files are
  indexed by *temperature*: frame t of ``{k}.phi`` was drawn at temperature k (pymbar's example reads them so), frames
  come every 1 ps, 20 per exchange iteration, so frames within a temperature are correlated within and across
  iterations; errors are estimated by blocks of whole iterations (``Torsions.block``).
* ``load_angles``: ``.npz`` (arrays ``phi``, ``psi`` in degrees, ``temperature`` in K, optional ``energy``) or ``.csv``
  (header ``phi,psi,temperature``), the format ``TorsionsDomain.write_samples`` writes.
* ``trajectory_angles``: any trajectory mdtraj reads (DCD, XTC, H5, multi-frame PDB …) plus a topology; φ/ψ from
  ``mdtraj.compute_phi`` / ``compute_psi`` (McGibbon et al., Biophys. J. 109:1528, 2015).

Angles outside [−180°, 360°), non-finite values, mismatched lengths or a topology without φ/ψ atoms are one-line
ValueErrors naming the file.
"""
from __future__ import annotations

import csv
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sciddpm.inputs import read_npz

#: Frames per exchange iteration in the archive (20 ps between exchange attempts, a frame every 1 ps).
FRAMES_PER_ITERATION = 20
TRAJECTORY_SUFFIXES = (".dcd", ".xtc", ".trr", ".h5", ".pdb", ".nc", ".netcdf", ".gro", ".xyz", ".lammpstrj",
                       ".binpos", ".mdcrd", ".crd", ".arc", ".hdf5", ".lh5", ".dtr", ".pdb.gz")


@dataclass
class Torsions:
    """Frames of (φ, ψ) in degrees [n] each, wrapped to [−180, 180); ``temperature`` [n] in K; ``energy`` [n]
    (kcal/mol) or None; ``block`` [n] int: the correlated block (exchange iteration) of each frame, for block
    bootstrap errors (−1: unknown, every frame its own block)."""

    phi: np.ndarray
    psi: np.ndarray
    temperature: np.ndarray
    energy: np.ndarray | None = None
    block: np.ndarray | None = None

    def at(self, temperature: float) -> "Torsions":
        """The frames recorded at one temperature (matched to 1e-6 K)."""
        keep = np.isclose(self.temperature, temperature, rtol=0.0, atol=1e-6)
        return Torsions(self.phi[keep], self.psi[keep], self.temperature[keep],
                        None if self.energy is None else self.energy[keep],
                        None if self.block is None else self.block[keep])

    @property
    def temperatures(self) -> np.ndarray:
        """The distinct temperatures, ascending."""
        return np.unique(self.temperature)

    def radians(self) -> np.ndarray:
        """(φ, ψ) in radians wrapped to [−π, π), float64 [n, 2]."""
        return np.deg2rad(np.stack([self.phi, self.psi], axis=1))


def check_angles(values: np.ndarray, name: str, where: str) -> np.ndarray:
    """Degrees in [−180, 360) (both common conventions), finite, 1-D → wrapped to [−180, 180) float64; else a
    one-line ValueError naming ``where`` (the file) and ``name`` (the field)."""
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or len(a) == 0:
        raise ValueError(f"{where}: {name} must be a non-empty 1-D array of angles in degrees, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{where}: {name} has {int((~np.isfinite(a)).sum())} non-finite values (NaN/inf)")
    bad = (a < -180.0) | (a >= 360.0)
    if bad.any():
        raise ValueError(f"{where}: {name} has {int(bad.sum())} angles outside [-180, 360) degrees "
                         f"(e.g. {a[bad][0]:g}); give degrees, not radians or unwrapped sums")
    return (a + 180.0) % 360.0 - 180.0


def check_temperatures(values: np.ndarray, n: int, where: str) -> np.ndarray:
    """Temperatures in K: finite, > 0, ``n`` of them (or one, broadcast); else a one-line ValueError."""
    t = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if t.ndim != 1 or len(t) not in (1, n):
        raise ValueError(f"{where}: temperature has {t.size} values for {n} frames (give one or one per frame)")
    if not (np.isfinite(t).all() and (t > 0).all()):
        raise ValueError(f"{where}: temperatures must be finite and > 0 K")
    return np.broadcast_to(t, (n,)).copy()


# ---------------------------------------------------------------------------------------------------------------
# The parallel-tempering archive
# ---------------------------------------------------------------------------------------------------------------
def _archive_reader(path: Path) -> Callable[[str], str]:
    """A function reading one member (relative to the data folder) of a ``.tar.gz`` archive or a folder."""
    if path.is_dir():
        def read_dir(member: str) -> str:
            f = path / member
            if not f.is_file():
                raise ValueError(f"{path}: missing file {member} (not a parallel-tempering data folder)")
            return f.read_text()
        return read_dir
    try:
        tar = tarfile.open(path, "r:*")
        names = {m.name: m for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable tar archive ({exc})") from None
    anchors = [n[: -len("temperatures")] for n in names if n.endswith("temperatures")]
    if len(anchors) != 1:
        raise ValueError(f"{path}: expected exactly one 'temperatures' file in the archive, found {len(anchors)}")

    def read_tar(member: str) -> str:
        m = names.get(anchors[0] + member)
        if m is None:
            raise ValueError(f"{path}: missing member {anchors[0] + member}")
        return tar.extractfile(m).read().decode()
    return read_tar


def _table(text: str, where: str) -> np.ndarray:
    try:
        return np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise ValueError(f"{where}: not a table of numbers ({str(exc).splitlines()[0]})") from None


def load_pt_archive(path: str | Path) -> Torsions:
    """Read the parallel-tempering archive (module docstring) → ``Torsions`` of all K·n frames, grouped by
    temperature, with energies (kcal/mol) and ``block`` = exchange iteration (frame // 20)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"parallel-tempering data not found: {path}")
    read = _archive_reader(path)
    temps = _table(read("temperatures"), f"{path}:temperatures").reshape(-1)
    energies = _table(read("energies/potential-energies"), f"{path}:energies/potential-energies")
    K, n = len(temps), energies.shape[0]
    if energies.shape[1] != K:
        raise ValueError(f"{path}: the temperatures file lists {K} temperatures but energies/potential-energies "
                         f"has {energies.shape[1]} columns")
    if not np.isfinite(energies).all():
        raise ValueError(f"{path}: energies/potential-energies has non-finite values")
    phi, psi = [], []
    for k in range(K):
        for name, out in (("phi", phi), ("psi", psi)):
            member = f"backbone-torsions/{k}.{name}"
            try:
                text = read(member)
            except ValueError:
                raise ValueError(f"{path}: the temperatures file lists {K} temperatures but {member} is missing") from None
            a = check_angles(_table(text, f"{path}:{member}").reshape(-1), name, f"{path}:{member}")
            if len(a) != n:
                raise ValueError(f"{path}:{member} has {len(a)} frames; energies/potential-energies has {n}")
            out.append(a)
    try:
        extra = read(f"backbone-torsions/{K}.phi")
    except ValueError:
        extra = None
    if extra is not None:
        raise ValueError(f"{path}: backbone-torsions/{K}.phi exists but the temperatures file lists only {K} temperatures")
    temperature = check_temperatures(np.repeat(temps, n), K * n, f"{path}:temperatures")
    block = np.tile(np.arange(n) // FRAMES_PER_ITERATION, K)
    return Torsions(np.concatenate(phi), np.concatenate(psi), temperature, energies.T.reshape(-1).copy(), block)


# ---------------------------------------------------------------------------------------------------------------
# Angle files and trajectories
# ---------------------------------------------------------------------------------------------------------------
def load_angles(path: str | Path) -> Torsions:
    """``.npz`` (``phi``, ``psi`` in degrees, ``temperature`` in K, optional ``energy``, ``block``) or ``.csv``
    (header with ``phi``, ``psi``, ``temperature``) → ``Torsions``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"angle file not found: {path}")
    if path.suffix == ".npz":
        cols = read_npz(path, "angle")
    elif path.suffix == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            raise ValueError(f"{path}: empty CSV (expected a header phi,psi,temperature)")
        try:
            body = np.array([[float(v) for v in r] for r in rows[1:] if r], dtype=np.float64).reshape(-1, len(rows[0]))
        except ValueError as exc:
            raise ValueError(f"{path}: non-numeric or ragged rows ({exc})") from None
        cols = {name.strip(): body[:, i] for i, name in enumerate(rows[0])}
    else:
        raise ValueError(f"{path}: angle files are .npz or .csv, got {path.suffix!r}")
    missing = [k for k in ("phi", "psi", "temperature") if k not in cols]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing} (has {sorted(cols)})")
    phi = check_angles(cols["phi"], "phi", str(path))
    psi = check_angles(cols["psi"], "psi", str(path))
    if len(psi) != len(phi):
        raise ValueError(f"{path}: phi has {len(phi)} values but psi has {len(psi)}")
    temperature = check_temperatures(cols["temperature"], len(phi), str(path))
    energy = cols.get("energy")
    if energy is not None and (np.shape(energy) != phi.shape or not np.isfinite(energy).all()):
        raise ValueError(f"{path}: energy must be {len(phi)} finite values")
    block = cols.get("block")
    return Torsions(phi, psi, temperature, None if energy is None else np.asarray(energy, np.float64),
                    None if block is None else np.asarray(block, np.int64))


def trajectory_angles(path: str | Path, topology: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(φ, ψ) in degrees [n_frames] of the first φ and ψ torsions of a trajectory, via ``mdtraj.compute_phi`` /
    ``compute_psi`` (φ = C(i−1)–N–Cα–C, ψ = N–Cα–C–N(i+1)). ``topology``: any file mdtraj reads topologies from
    (e.g. a PDB); optional for self-describing formats (PDB, H5). A dipeptide has exactly one of each; for longer
    chains the first pair is used."""
    import mdtraj

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"trajectory not found: {path}")
    if topology is not None and not Path(topology).is_file():
        raise ValueError(f"topology not found: {topology}")
    try:
        traj = mdtraj.load(str(path), top=None if topology is None else str(topology))
    except Exception as exc:  # mdtraj raises many types for unreadable or mismatched files
        raise ValueError(f"{path}: mdtraj cannot read it{'' if topology is None else f' with topology {topology}'} "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    if phi.shape[1] == 0 or psi.shape[1] == 0:
        raise ValueError(f"{topology or path}: topology has no backbone phi/psi atoms (C-N-CA-C / N-CA-C-N); "
                         f"is it a protein or peptide?")
    where = str(path)
    return (check_angles(np.rad2deg(phi[:, 0]), "phi", where), check_angles(np.rad2deg(psi[:, 0]), "psi", where))


def load_torsions(path: str | Path, topology: str | Path | None = None, temperature: float | None = None) -> Torsions:
    """Any of the three sources by its name: a folder or ``.tar.gz``/``.tgz``/``.tar`` → ``load_pt_archive``;
    ``.npz``/``.csv`` → ``load_angles``; a trajectory (``TRAJECTORY_SUFFIXES``) → ``trajectory_angles`` at the
    given ``temperature`` (required)."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir() or name.endswith((".tar.gz", ".tgz", ".tar")):
        return load_pt_archive(path)
    if path.suffix in (".npz", ".csv"):
        return load_angles(path)
    if name.endswith(TRAJECTORY_SUFFIXES):
        if temperature is None:
            raise ValueError(f"{path}: a trajectory needs the 'temperature' (K) it was simulated at")
        phi, psi = trajectory_angles(path, topology)
        return Torsions(phi, psi, check_temperatures(temperature, len(phi), str(path)))
    raise ValueError(f"{path}: unknown torsion source (a PT folder/.tar.gz, .npz/.csv angles, or a trajectory "
                     f"{TRAJECTORY_SUFFIXES})")
