"""Point-cloud data: loaders (ModelNet40 ``.npz``, a folder of ``.npy``/``.xyz``/``.ply`` shapes, one file) and the
seeded partial views that point-cloud completion trains and tests on.

Partial views, the way PCN (Yuan et al. 2018) and MVP (Pan et al. 2021) made them but from points instead of a mesh:

* ``hpr``: a virtual single-view scan. A camera C is drawn uniformly on a sphere of radius ``camera_distance``
  around the (unit-sphere) shape, and only the points visible from C are kept by hidden-point removal (Katz, Tal &
  Basri, *Direct visibility of point sets*, SIGGRAPH 2007): with p_i ← p_i − C, the spherical flip
  p̂_i = p_i + 2(R − ‖p_i‖) p_i/‖p_i‖, R = ‖p‖_max · 10^γ, and p_i is visible iff p̂_i is a vertex of the convex hull
  of {p̂_i} ∪ {0}.
* ``crop``: the viewpoint crop of ShapeNet-55/34 (Yu et al., PoinTr, ICCV 2021): a viewpoint V on the unit sphere,
  the fraction ``crop`` of points nearest to V removed, the rest kept.

A kept set is brought to a fixed size M by random subsampling or by repeating random kept points (PCN's practice
for its partial inputs); the fraction of the shape's points kept is returned with it. Every view is a function of
(seed, shape index, view index) only, so each run sees the same pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sciddpm.inputs import read_npz

#: The fewest points a cloud read from a file may have.
MIN_POINTS = 32
CLOUD_SUFFIXES = (".npy", ".xyz", ".ply")
_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


@dataclass
class ShapeSet:
    """Complete shapes: ``points`` float32 [S, N, 3], ``label`` int64 [S] (index into ``classes``), ``is_train`` bool
    [S], ``name`` [S] and the class names."""

    points: np.ndarray
    label: np.ndarray
    is_train: np.ndarray
    name: np.ndarray
    classes: list[str]
    source: str

    def select(self, mask: np.ndarray) -> "ShapeSet":
        """The shapes where ``mask`` is true (same classes)."""
        return ShapeSet(self.points[mask], self.label[mask], self.is_train[mask], self.name[mask], self.classes,
                        self.source)


def _check_cloud(points: np.ndarray, source: str) -> np.ndarray:
    """float32 [N, 3], finite, with at least MIN_POINTS points; one-line ValueError naming ``source`` otherwise."""
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{source}: expected N x 3 coordinates (x y z columns), got shape {points.shape}")
    if len(points) < MIN_POINTS:
        raise ValueError(f"{source}: {len(points)} points; a cloud needs at least {MIN_POINTS}")
    if not np.isfinite(points).all():
        bad = int(np.argwhere(~np.isfinite(points))[0, 0])
        raise ValueError(f"{source}: non-finite coordinate (NaN or inf) in point {bad}")
    return points.astype(np.float32)


def read_ply(path: Path) -> np.ndarray:
    """x, y, z of the ``vertex`` element of a PLY file (ascii, binary_little_endian or binary_big_endian; the vertex
    element must come first in a binary file). float64 [N, 3]."""
    with open(path, "rb") as fh:
        if fh.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file (no 'ply' magic line)")
        fmt, count, props, in_vertex, first = None, None, [], False, None
        while True:
            line = fh.readline()
            if not line:
                raise ValueError(f"{path}: PLY header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                in_vertex = words[1] == "vertex"
                first = words[1] if first is None else first
                if in_vertex:
                    count = int(words[2])
            elif words[0] == "property" and in_vertex:
                if words[1] == "list" or words[1] not in _PLY_TYPES:
                    raise ValueError(f"{path}: unsupported vertex property type {' '.join(words[1:-1])!r}")
                props.append((words[2], _PLY_TYPES[words[1]]))
        names = [p[0] for p in props]
        if count is None or not {"x", "y", "z"} <= set(names):
            raise ValueError(f"{path}: PLY has no vertex element with x, y, z properties")
        if fmt == "ascii":
            rows = [fh.readline().split() for _ in range(count)]
            if any(len(r) != len(props) for r in rows):
                raise ValueError(f"{path}: an ascii vertex line does not hold {len(props)} values")
            table = np.array(rows, dtype=np.float64).reshape(count, len(props))
            return table[:, [names.index(c) for c in "xyz"]]
        if fmt not in ("binary_little_endian", "binary_big_endian") or first != "vertex":
            raise ValueError(f"{path}: unsupported PLY format {fmt!r} (binary files must list the vertex element first)")
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(n, order + t) for n, t in props])
        data = fh.read(dtype.itemsize * count)
        if len(data) < dtype.itemsize * count:
            raise ValueError(f"{path}: PLY vertex data is truncated ({len(data)} of {dtype.itemsize * count} bytes)")
        table = np.frombuffer(data, dtype=dtype, count=count)
        return np.stack([table[c].astype(np.float64) for c in "xyz"], axis=1)


def read_cloud(path: str | Path) -> np.ndarray:
    """One cloud from ``.npy`` ([N, 3]), ``.xyz`` (text, three whitespace-separated columns) or ``.ply``: float32
    [N, 3]. Empty, non-finite, too small (< MIN_POINTS) or wrongly shaped files are a one-line ValueError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CLOUD_SUFFIXES:
        raise ValueError(f"{path}: unknown point-cloud format {suffix!r}; expected one of {', '.join(CLOUD_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file")
    try:
        if suffix == ".npy":
            points = np.load(path, allow_pickle=False)
        elif suffix == ".xyz":
            rows = [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
            widths = sorted({len(r) for r in rows})
            if not rows:
                raise ValueError(f"{path}: no points in the file")
            if widths != [3]:
                raise ValueError(f"{path}: expected 3 columns (x y z) on every line, found {widths}")
            points = np.array(rows, dtype=np.float64)
        else:
            points = read_ply(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read ({exc})") from None
    except ValueError as exc:
        text = str(exc)
        raise ValueError(text if text.startswith(str(path)) else f"{path}: {text}") from None
    return _check_cloud(np.asarray(points, dtype=np.float64), str(path))


def load_shapes(path: str | Path, n_points: int | None = None) -> ShapeSet:
    """Complete shapes from the ModelNet40 ``.npz`` (``points``, ``label``, ``is_train``, ``name``, ``classes``; see
    ../shared/data/README.md) or from a folder of per-shape files (``CLASS/NAME.ext`` or ``NAME.ext`` with class
    ``NAME`` up to its last ``_``; ``train/`` or ``test/`` anywhere in the path sets the split, default train).
    ``n_points``: keep the first that many points of each shape (ModelNet40's points are in random order)."""
    path = Path(path)
    if path.is_dir():
        shapes = _load_folder(path)
    elif path.suffix == ".npz":
        shapes = _load_npz(path)
    else:
        raise ValueError(f"{path}: expected a .npz file or a folder of {'/'.join(CLOUD_SUFFIXES)} files")
    if n_points is not None:
        if not MIN_POINTS <= n_points <= shapes.points.shape[1]:
            raise ValueError(f"{path}: n_points = {n_points} must lie in [{MIN_POINTS}, {shapes.points.shape[1]}]")
        shapes.points = np.ascontiguousarray(shapes.points[:, :n_points])
    return shapes


def _load_npz(path: Path) -> ShapeSet:
    d = read_npz(path, "point-cloud")
    missing = [k for k in ("points", "label", "classes") if k not in d]
    if missing:
        raise ValueError(f"{path}: missing array {missing[0]!r} (need points, label, classes)")
    points = d["points"].astype(np.float32)
    s = len(points)
    is_train = d["is_train"].astype(bool) if "is_train" in d else np.ones(s, bool)
    name = d["name"] if "name" in d else np.array([f"shape_{i:05d}" for i in range(s)])
    label, classes = d["label"].astype(np.int64), [str(c) for c in d["classes"]]
    if points.ndim != 3 or points.shape[2] != 3:
        raise ValueError(f"{path}: 'points' must be [S, N, 3], got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError(f"{path}: 'points' holds non-finite values (shape {int(np.argwhere(~np.isfinite(points))[0, 0])})")
    if label.shape != (s,) or is_train.shape != (s,) or len(name) != s:
        raise ValueError(f"{path}: 'label', 'is_train' and 'name' must each hold {s} entries")
    if len(label) and (label.min() < 0 or label.max() >= len(classes)):
        raise ValueError(f"{path}: 'label' holds indices outside the {len(classes)} classes")
    return ShapeSet(points, label, is_train, np.asarray(name), classes, str(path))


def _load_folder(path: Path) -> ShapeSet:
    files = sorted(f for f in path.rglob("*") if f.suffix.lower() in CLOUD_SUFFIXES and f.is_file())
    if not files:
        raise ValueError(f"{path}: no {'/'.join(CLOUD_SUFFIXES)} files in the folder")
    clouds = [read_cloud(f) for f in files]
    sizes = sorted({len(c) for c in clouds})
    n = sizes[0]
    rng = np.random.default_rng(0)  # shapes of different sizes are subsampled to the smallest, reproducibly
    clouds = [c if len(c) == n else c[np.sort(rng.choice(len(c), n, replace=False))] for c in clouds]
    rel = [f.relative_to(path) for f in files]
    folders = [[part for part in r.parts[:-1] if part not in ("train", "test")] for r in rel]
    cls = [f[-1] if f else r.stem.rsplit("_", 1)[0] for f, r in zip(folders, rel)]
    classes = sorted(set(cls))
    return ShapeSet(np.stack(clouds), np.array([classes.index(c) for c in cls]),
                    np.array(["test" not in r.parts for r in rel]), np.array([r.stem for r in rel]), classes, str(path))


def hidden_point_removal(points: np.ndarray, camera: np.ndarray, gamma: float = 2.0) -> np.ndarray:
    """Indices of the points visible from ``camera`` (Katz, Tal & Basri 2007): spherical flip
    p̂ = p + 2(R − ‖p‖)p/‖p‖ of p = x − C with R = ‖p‖_max·10^γ; x is visible iff p̂ is a convex-hull vertex of
    {p̂} ∪ {0}. Larger γ keeps fewer points behind edges (Katz et al. use γ of a few units)."""
    from scipy.spatial import ConvexHull

    p = np.asarray(points, np.float64) - np.asarray(camera, np.float64)
    norm = np.linalg.norm(p, axis=1, keepdims=True)
    if (norm < 1e-12).any():
        raise ValueError("hidden_point_removal: the camera lies on a point of the cloud")
    radius = norm.max() * 10.0 ** gamma
    flipped = p + 2.0 * (radius - norm) * p / norm
    hull = ConvexHull(np.vstack([flipped, np.zeros((1, 3))]))
    return np.sort(hull.vertices[hull.vertices < len(p)])


def viewpoint_crop(points: np.ndarray, viewpoint: np.ndarray, crop: float) -> np.ndarray:
    """Indices kept by PoinTr's viewpoint crop: the ⌊crop·N⌋ points nearest to ``viewpoint`` are removed."""
    if not 0.0 < crop < 1.0:
        raise ValueError(f"viewpoint_crop: crop must lie in (0, 1), got {crop}")
    dist = np.linalg.norm(np.asarray(points, np.float64) - viewpoint, axis=1)
    removed = int(np.floor(crop * len(points)))
    return np.sort(np.argsort(dist, kind="stable")[removed:])


def unit_direction(rng: np.random.Generator) -> np.ndarray:
    """A direction uniform on S² (a normalised standard normal, Muller 1959)."""
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def partial_view(points: np.ndarray, n_out: int, kind: str, seed: int, camera_distance: float = 3.0,
                 gamma: float = 2.0, crop: float = 0.5) -> tuple[np.ndarray, float]:
    """(partial cloud float32 [n_out, 3], fraction of the shape's points kept) for one seeded view of ``kind``
    (``hpr`` or ``crop``, see the module docstring); kept sets are resampled to ``n_out`` points."""
    rng = np.random.default_rng(seed)
    direction = unit_direction(rng)
    if kind == "hpr":
        kept = hidden_point_removal(points, camera_distance * direction, gamma)
    elif kind == "crop":
        kept = viewpoint_crop(points, direction, crop)
    else:
        raise ValueError(f"unknown partial kind {kind!r}; expected 'hpr' or 'crop'")
    pick = rng.choice(len(kept), n_out, replace=len(kept) < n_out)
    return points[kept[pick]].astype(np.float32), len(kept) / len(points)


def make_partials(points: np.ndarray, n_out: int, kinds: tuple[str, ...], views: int, seed: int,
                  **view_options: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``views`` partial views per shape, kinds taken in turn (view v of shape s is of kind (s + v) mod #kinds, so
    one view per shape still alternates kinds across shapes): (partials float32 [S·views, n_out, 3], the shape index
    of each [S·views], fraction kept of each, kind of each). View v of shape s uses seed (seed, s, v) only."""
    parts, owner, kept, kind_of = [], [], [], []
    for s, shape in enumerate(points):
        for v in range(views):
            kind = kinds[(s + v) % len(kinds)]
            kind_of.append(kind)
            part, frac = partial_view(shape, n_out, kind, int(np.random.SeedSequence([seed, s, v]).generate_state(1)[0]),
                                      **view_options)
            parts.append(part)
            owner.append(s)
            kept.append(frac)
    return np.stack(parts), np.array(owner), np.array(kept), np.array(kind_of)
