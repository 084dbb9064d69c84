"""A third-party domain plugs in without any edit to sciddpm/: through a ``sciddpm.domains`` entry point of an
installed distribution (real discovery through importlib.metadata), or as ``--domain package.module:Class``.

The throw-away package is ``tests/plugin_pkg/sciddpm_toyplugin`` (two labelled 2-D blobs at x0 = ∓2, a
class-conditional network with a null label). "Installing" it writes what ``pip install`` writes for entry points —
a ``.dist-info`` folder with ``METADATA`` and ``entry_points.txt`` — next to a copy of the package in a temporary
folder on PYTHONPATH; the CLI then runs in its own processes.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugin_pkg" / "sciddpm_toyplugin"


def _install(site: Path) -> None:
    """The plug-in package + its dist-info (entry point ``toyplugin``) in ``site``."""
    shutil.copytree(PLUGIN, site / "sciddpm_toyplugin")
    info = site / "sciddpm_toyplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sciddpm-toyplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sciddpm.domains]\ntoyplugin = sciddpm_toyplugin:ToyDomain\n")


def _cli(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sciddpm.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory) -> tuple[Path, Path]:
    """The plug-in trained through `sciddpm train --domain toyplugin` (300 CPU steps)."""
    tmp = tmp_path_factory.mktemp("plugin")
    site = tmp / "site"
    site.mkdir()
    _install(site)
    config = tmp / "run.yaml"
    config.write_text("domain: toyplugin\nlr: 3e-3\nmax_steps: 3e2\nbatch_size: 64\nema_decay: 0.99\n"
                      "checkpoint_every: 300\nlog_every: 50\ndata:\n  n: 1024\nbackbone:\n  hidden: 64\n")
    res = _cli(["train", "--config", str(config), "--output", str(tmp / "run"), "--no-progress"], site, tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    return site, tmp / "run"


def test_entry_point_domain_trains_samples_and_evaluates(plugin_run, tmp_path):
    site, run = plugin_run
    export = run / "export"
    saved = json.loads((export / "config.json").read_text())
    assert saved["domain"] == "toyplugin" and saved["domain_class"] == "sciddpm_toyplugin:ToyDomain"
    # sample with a condition: every sample carries label 1 and lies on the x0 = +2 blob's side
    res = _cli(["sample", str(export), "--n", "200", "--steps", "50", "--sampler", "ddim", "--condition", "y=1",
                "--output", str(tmp_path / "s.csv")], site, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "s.csv").read_text().splitlines()))
    assert len(rows) == 200 and {r["y"] for r in rows} == {"1"}
    mean_x0 = sum(float(r["x0"]) for r in rows) / len(rows)
    assert mean_x0 > 1.0, mean_x0  # the data mean of label 1 is +2; label 0's is -2
    assert (tmp_path / "s.png").is_file()
    # evaluate with classifier-free guidance towards label 0
    res = _cli(["evaluate", str(export), "--n", "200", "--steps", "50", "--sampler", "ddim", "--condition", "y=0",
                "--guidance-scale", "2", "--output", str(tmp_path / "m.json")], site, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["guidance_scale"] == 2.0 and metrics["conditions"] == ["y=0"]
    assert set(metrics["metrics"]) == {"n", "mean_x0_label0"} and metrics["metrics"]["mean_x0_label0"] < -1.0


def test_entry_point_domain_is_listed_and_checked(plugin_run, tmp_path):
    """The installed plug-in is a known domain; its data:/backbone: keys and conditions are its own."""
    site, run = plugin_run
    res = _cli(["train", "--domain", "tabulr", "--output", str(tmp_path / "r")], site, tmp_path)
    assert res.returncode == 2 and "toyplugin" in res.stderr.split("known domains:")[1]
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: toyplugin\nbackbone:\n  hiden: 8\n")
    res = _cli(["train", "--config", str(bad), "--output", str(tmp_path / "r")], site, tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == (
        f"sciddpm: error: unknown backbone key 'hiden' in config (domain 'toyplugin'); valid keys: emb, hidden, "
        f"num_steps")
    res = _cli(["sample", str(run / "export"), "--n", "4", "--condition", "label=1", "--output",
                str(tmp_path / "s.csv")], site, tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == (
        "sciddpm: error: unknown condition 'label' for domain 'toyplugin'; valid conditions: y")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s.csv").exists()


def test_domain_given_as_module_and_class(tmp_path, monkeypatch):
    """`--domain package.module:Class` needs no entry point; the export records the class, so it loads again."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "plugin_pkg"))
    from sciddpm.cli import main
    from sciddpm.export import load

    assert main(["train", "--domain", "sciddpm_toyplugin:ToyDomain", "--max-steps", "2", "--batch-size", "16",
                 "--checkpoint-every", "2", "--output", str(tmp_path / "run"), "--no-progress"]) == 0
    import sciddpm.domain

    monkeypatch.delitem(sciddpm.domain._DOMAINS, "toyplugin")  # a fresh process: the name is neither registered
    assert "toyplugin" not in sciddpm.domain.known_domains()    # nor an installed entry point here
    model = load(tmp_path / "run" / "export")  # found through the export's domain_class
    assert type(model.domain).__name__ == "ToyDomain"
    out = model.sample(3, steps=2, conditions={"y": 1})
    assert out.sample.shape == (3, 2) and out.space.condition["y"].tolist() == [1, 1, 1]
