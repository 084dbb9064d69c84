"""Exports: format version 2 (v1 and newer versions refused), strict config.json keys, export/load from a
DiffusionModel, and inference (``import sciddpm; sciddpm.load``; ``sciddpm sample``) without Lightning."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sciddpm
from sciddpm.config import TrainConfig
from sciddpm.export import EXPORT_KEYS, EXPORT_OPTIONAL_KEYS, EXPORT_VERSION, export_model, load

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    from sciddpm.training import fit

    out = tmp_path_factory.mktemp("export") / "run"
    fit(TrainConfig(domain="tabular", max_steps=3, checkpoint_every=3, batch_size=16, backbone={"hidden": 16}), out,
        progress=False)
    return out / "export"


def _edit(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key)
        else:
            cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_format_version_is_2_and_other_versions_are_refused(export, tmp_path):
    assert EXPORT_VERSION == 2 and json.loads((export / "config.json").read_text())["version"] == 2
    old = _edit(export, tmp_path / "v1", version=1)
    with pytest.raises(ValueError, match=r"^.*v1/config\.json: exported by sciddpm format 1; re-export it"):
        load(old)
    new = _edit(export, tmp_path / "v99", version=99)
    with pytest.raises(ValueError, match=r"v99/config\.json: format 99 is newer than this library's 2; upgrade sciddpm$"):
        load(new)
    for name, bad in (("str", "2"), ("bool", True), ("none", None)):
        with pytest.raises(ValueError, match=r"corrupt config .*: format version must be a positive integer"):
            load(_edit(export, tmp_path / name, version=bad))


def test_unknown_export_keys_are_refused(export, tmp_path):
    bad = _edit(export, tmp_path / "typo", backbon={"hidden": 16})
    valid = ", ".join(sorted(EXPORT_KEYS + EXPORT_OPTIONAL_KEYS))
    with pytest.raises(ValueError) as info:
        load(bad)
    assert str(info.value) == f"unknown export key 'backbon' in {bad / 'config.json'}; valid keys: {valid}"
    train_config = json.loads((export / "config.json").read_text())["train_config"]
    bad = _edit(export, tmp_path / "typo2", train_config={**train_config, "lr_shedule": "cosine"})
    with pytest.raises(ValueError, match=r"^unknown config key 'lr_shedule' in .*typo2/config\.json train_config; "
                                         r"valid keys: accelerator, backbone,"):
        load(bad)
    with pytest.raises(ValueError, match=r"corrupt config .*missing keys \['schedule'\]"):
        load(_edit(export, tmp_path / "noschedule", schedule=None))


def test_export_and_load_work_from_a_diffusion_model(export, tmp_path):
    """load → export_model → load gives the same weights, statistics and samples (a DiffusionModel round trip)."""
    model = load(export)
    assert isinstance(model, sciddpm.DiffusionModel)
    again = load(export_model(model, tmp_path / "again"))
    for (k, a), (k2, b) in zip(model.net.state_dict().items(), again.net.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert torch.equal(model.domain.mean, again.domain.mean) and model.config == again.config
    assert torch.equal(model.sample(5, steps=4, seed=3).sample, again.sample(5, steps=4, seed=3).sample)
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert saved["domain_class"] == "examples.tabular_domain:TabularDomain"


_NO_LIGHTNING = """
import sys, time
start = time.perf_counter()
import sciddpm
model = sciddpm.load(sys.argv[1])
from sciddpm.cli import main
assert main(["sample", sys.argv[1], "--n", "10", "--steps", "10", "--output", sys.argv[2]]) == 0
assert main(["evaluate", sys.argv[1], "--n", "10", "--steps", "10", "--output", sys.argv[3]]) == 0
heavy = sorted(m for m in ("lightning", "pytorch_lightning", "torchmetrics", "torch_geometric", "e3nn", "rdkit",
                           "mdtraj", "scipy") if m in sys.modules)
print(heavy)
"""


def test_inference_does_not_import_lightning(export, tmp_path):
    """`import sciddpm`, `sciddpm.load` and the CLI's sample/evaluate leave Lightning (and every heavy domain library)
    out of sys.modules: a fresh interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", _NO_LIGHTNING, str(export), str(tmp_path / "s.csv"),
                          str(tmp_path / "m.json")], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "s.csv").is_file() and (tmp_path / "m.json").is_file()
