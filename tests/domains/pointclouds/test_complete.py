"""``sciddpm complete`` end to end on an exported (untrained) model with an attached refinement network: PLY with a
per-point uncertainty property, PNG, metrics against a reference, one-line errors for bad input files; the medoid
and uncertainty by hand; the one-pass (refinement / regression) training lowers the Chamfer loss."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from sciddpm.cli import main
from sciddpm.config import config_from_dict
from sciddpm.domains.pointclouds.adapter import PointCloudDomain
from sciddpm.domains.pointclouds.completion import medoid_and_uncertainty
from sciddpm.domains.pointclouds.data import read_ply
from sciddpm.domains.pointclouds.refine import OnePassNet, chamfer_loss, train_one_pass
from sciddpm.export import export_model, load
from sciddpm.model import DiffusionModel
from sciddpm.schedules import schedule_from_config

from .test_check_domain import OPTIONS, TINY


def test_medoid_and_uncertainty_by_hand():
    """Two equal completions and one shifted by v (small against the point spacing): the medoid is the first
    equal one and every point's uncertainty is (0 + ‖v‖)/2."""
    base = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    v = torch.tensor([0.03, 0.04, 0.0])
    m, u = medoid_and_uncertainty(torch.stack([base + v, base, base]))
    assert m == 1
    torch.testing.assert_close(u, torch.full((4,), 0.025, dtype=torch.float64))
    assert medoid_and_uncertainty(base[None])[1].abs().max() == 0


def _pairs(domain: PointCloudDomain):
    complete, partial = domain.train_dataset(domain.options).tensors
    return complete, partial


def test_one_pass_training_lowers_the_chamfer_loss():
    domain = PointCloudDomain(dict(OPTIONS))
    complete, partial = _pairs(domain)
    torch.manual_seed(0)
    net = OnePassNet(schedule_from_config(domain.default_schedule), TINY, template_points=64)

    def batches(gen: torch.Generator):
        i = torch.randint(len(complete), (8,), generator=gen)
        return partial[i], complete[i], None

    losses = train_one_pass(net, batches, steps=40, lr=3e-3)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    with torch.no_grad():
        assert float(chamfer_loss(net(partial[:4]), complete[:4])) < losses[0]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """An untrained 64-point model with a (briefly trained) refinement network attached, exported."""
    path = tmp_path_factory.mktemp("pc") / "export"
    domain = PointCloudDomain(dict(OPTIONS))
    cfg = config_from_dict({"domain": domain.name, "data": dict(OPTIONS), "backbone": TINY}, "test")
    schedule = schedule_from_config(domain.default_schedule)
    domain.train_dataset(domain.options)
    torch.manual_seed(0)
    model = DiffusionModel(domain, domain.build_backbone(TINY, schedule).eval(), schedule, "eps", asdict(cfg))
    complete, partial = _pairs(domain)
    refiner = OnePassNet(schedule, TINY)
    train_one_pass(refiner, lambda g: (partial[:4], complete[:4], complete[:4] + 0.05 * torch.randn(4, 64, 3,
                                                                                                     generator=g)), 2)
    domain.attach_refiner(refiner, TINY, schedule)
    export_model(model, path)
    return path


def test_refiner_survives_export(export):
    model = load(export)
    assert model.domain.refiner is not None
    out = model.sample(2, steps=2, seed=3)
    refined = model.domain.refine(out.sample, out.space)
    assert refined.shape == out.sample.shape and (refined - out.sample).abs().max() > 0  # a correction, not identity


def test_complete_writes_ply_with_uncertainty_and_png(export, tmp_path, capsys):
    shape = np.load(Path(__file__).resolve().parents[2] / "data" / "modelnet40_tiny.npz")["points"][20, :64]
    np.savetxt(tmp_path / "scan.xyz", shape[:40].astype(np.float32))
    np.save(tmp_path / "full.npy", shape.astype(np.float32))
    out = tmp_path / "done" / "completed.ply"
    assert main(["complete", str(tmp_path / "scan.xyz"), "--model", str(export), "--samples", "3", "--steps", "2",
                 "--output", str(out), "--reference", str(tmp_path / "full.npy")]) == 0
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["refined"] and summary["samples"] == 3 and {"cd_l1", "cd_l2", "emd", "f1"} <= set(summary)
    assert summary["clip_x0"] == [-1.0, 1.0]  # ddim clips x0 to the unit sphere's box by default
    header = out.read_bytes().split(b"end_header")[0].decode()
    assert "property float uncertainty" in header and "element vertex 64" in header
    assert read_ply(out).shape == (64, 3)
    assert (tmp_path / "done" / "completed.png").stat().st_size > 1000
    assert summary["max_uncertainty"] > 0


@pytest.mark.parametrize("content, message", [("nan", "non-finite"), ("few", "at least 32"), ("empty", "empty file")])
def test_complete_bad_partial_is_a_one_line_error(export, tmp_path, capsys, content, message):
    path = tmp_path / "scan.npy"
    if content == "nan":
        np.save(path, np.full((40, 3), np.nan))
    elif content == "few":
        np.save(path, np.zeros((5, 3)))
    else:
        path.write_bytes(b"")
    assert main(["complete", str(path), "--model", str(export), "--output", str(tmp_path / "o.ply")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and message in err
    assert not (tmp_path / "o.ply").exists()
