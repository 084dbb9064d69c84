"""Loaders, bad files and the seeded partial views (``domains/pointclouds/data.py``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sciddpm.domains.pointclouds.completion import write_ply
from sciddpm.domains.pointclouds.data import (hidden_point_removal, load_shapes, make_partials, partial_view,
                                              read_cloud, viewpoint_crop)

TINY = Path(__file__).resolve().parents[2] / "data" / "modelnet40_tiny.npz"
FULL = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "modelnet40_pc" / "modelnet40_1024.npz"


def fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi, z = np.pi * (1 + 5 ** 0.5) * i, 1 - 2 * i / n
    r = np.sqrt(1 - z ** 2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def test_hidden_point_removal_on_a_sphere():
    """From a camera at distance 3 on +z the truly visible cap is z > 1/3 (a third of the sphere): HPR keeps no point
    of the far hemisphere and about that share of points."""
    pts = fibonacci_sphere(2000)
    kept = hidden_point_removal(pts, np.array([0.0, 0.0, 3.0]), gamma=1.5)
    assert pts[kept, 2].min() > 0.0
    assert 0.2 < len(kept) / len(pts) < 0.5
    assert (pts[kept, 2] > 1 / 3).mean() > 0.8


def test_viewpoint_crop_removes_the_nearest_points():
    pts = fibonacci_sphere(200)
    v = np.array([1.0, 0.0, 0.0])
    kept = viewpoint_crop(pts, v, 0.25)
    assert len(kept) == 150
    removed = np.setdiff1d(np.arange(200), kept)
    dist = np.linalg.norm(pts - v, axis=1)
    assert dist[removed].max() <= dist[kept].min()


def test_partials_are_seeded_and_report_the_fraction_kept():
    shapes = load_shapes(TINY)
    a = make_partials(shapes.points[:3], 64, ("hpr", "crop"), 2, seed=7)
    b = make_partials(shapes.points[:3], 64, ("hpr", "crop"), 2, seed=7)
    c = make_partials(shapes.points[:3], 64, ("hpr", "crop"), 2, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not np.array_equal(a[0], c[0])
    assert a[0].shape == (6, 64, 3) and list(a[1]) == [0, 0, 1, 1, 2, 2]
    assert list(a[3]) == ["hpr", "crop", "crop", "hpr", "hpr", "crop"]
    crop = a[3] == "crop"
    assert np.allclose(a[2][crop], 0.5) and (0 < a[2][~crop]).all() and (a[2][~crop] < 1).all()
    part, frac = partial_view(shapes.points[0], 64, "crop", seed=3, crop=0.75)
    assert frac == 0.25
    assert all(np.isin(p, shapes.points[0]).all() for p in part)  # every partial point is a point of the shape


def test_loaders_npz_folder_and_files(tmp_path: Path):
    shapes = load_shapes(TINY, n_points=256)
    assert shapes.points.shape == (24, 256, 3) and shapes.classes == ["airplane", "chair", "lamp", "table"]
    assert shapes.is_train.sum() == 16
    cloud = shapes.points[0]
    (tmp_path / "chair" / "train").mkdir(parents=True)
    np.save(tmp_path / "chair" / "train" / "a.npy", cloud)
    np.savetxt(tmp_path / "desk_0001.xyz", cloud)
    write_ply(tmp_path / "lamp_0002.ply", cloud)
    (tmp_path / "test").mkdir()
    ascii_ply = "ply\nformat ascii 1.0\nelement vertex 256\nproperty float x\nproperty float y\nproperty float z\n" \
                "property uchar red\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n" + \
                "".join(f"{x} {y} {z} 7\n" for x, y, z in cloud)
    (tmp_path / "test" / "sofa_0003.ply").write_text(ascii_ply)
    folder = load_shapes(tmp_path)
    assert folder.classes == ["chair", "desk", "lamp", "sofa"] and list(folder.is_train) == [True, True, True, False]
    for p in folder.points:
        np.testing.assert_allclose(p, cloud, atol=1e-6)


@pytest.mark.parametrize("name, content, message", [
    ("nan.npy", np.array([[np.nan, 0, 0]] + [[0.0, 0, 0]] * 40), "non-finite coordinate"),
    ("few.xyz", "\n".join("0 0 0" for _ in range(10)), "10 points; a cloud needs at least 32"),
    ("cols.xyz", "\n".join("0 0 0 1" for _ in range(40)), "expected 3 columns"),
    ("empty.ply", "", "empty file"),
    ("flat.npy", np.zeros((40, 2)), "expected N x 3"),
    ("bad.ply", "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nend_header\n1\n2\n", "no vertex element"),
])
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path: Path, name, content, message):
    path = tmp_path / name
    if isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_cloud(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(not FULL.is_file(), reason="needs ../shared/data/modelnet40_pc")
def test_full_modelnet40_loads():
    shapes = load_shapes(FULL, n_points=64)
    assert shapes.points.shape == (12311, 64, 3) and int(shapes.is_train.sum()) == 9843 and len(shapes.classes) == 40


def test_bad_npz_is_a_one_line_error(tmp_path: Path):
    np.savez(tmp_path / "no_label.npz", points=np.zeros((2, 64, 3), np.float32), classes=np.array(["a"]))
    with pytest.raises(ValueError, match=r"no_label.npz: missing array 'label'"):
        load_shapes(tmp_path / "no_label.npz")
    np.savez(tmp_path / "nan.npz", points=np.full((2, 64, 3), np.nan, np.float32), label=np.zeros(2, np.int8),
             classes=np.array(["a"]))
    with pytest.raises(ValueError, match=r"nan.npz: 'points' holds non-finite values"):
        load_shapes(tmp_path / "nan.npz")
