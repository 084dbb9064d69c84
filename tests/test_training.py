"""The training engine on the tabular example domain: loss, EMA export/load, resume after SIGKILL, DDP."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from sciddpm.export import load
from sciddpm.training import TrainConfig, config_from_dict, fit, load_config

ROOT = Path(__file__).resolve().parents[1]
SCIDDPM = [sys.executable, "-m", "sciddpm.cli"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """60 steps of the tabular domain on CPU (about 8 s)."""
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(domain="tabular", max_steps=60, batch_size=32, lr=3e-3, warmup_steps=5, log_every=5,
                      checkpoint_every=30, ema_decay=0.9, backbone={"hidden": 64})
    module = fit(cfg, out, progress=False)
    return module, out


def test_loss_decreases(trained):
    _, out = trained
    with open(out / "logs" / "version_0" / "metrics.csv") as fh:
        losses = [float(r["train_loss"]) for r in csv.DictReader(fh) if r.get("train_loss")]
    assert len(losses) >= 10
    assert sum(losses[-4:]) / 4 < 0.9 * sum(losses[:4]) / 4, losses
    assert (out / "loss.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "checkpoints").glob("*.ckpt")) == ["step=30.ckpt", "step=60.ckpt"]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_export_load_sample_bit_identical(trained, sampler):
    module, out = trained
    in_memory = module.ema_model().sample(64, sampler=sampler, steps=20, seed=7)
    loaded = load(out / "export").sample(64, sampler=sampler, steps=20, seed=7)
    assert torch.equal(in_memory.sample, loaded.sample)
    assert torch.isfinite(loaded.sample).all()
    # the Lightning checkpoint holds only tensors and primitives, and rebuilds the same EMA model
    ckpt = torch.load(out / "checkpoints" / "step=60.ckpt", weights_only=True)
    assert ckpt["global_step"] == 60
    from_ckpt = load(out / "checkpoints" / "step=60.ckpt").sample(64, sampler=sampler, steps=20, seed=7)
    assert torch.equal(from_ckpt.sample, loaded.sample)


def test_evaluate_metrics(trained):
    module, _ = trained
    model = module.ema_model()
    metrics = model.domain.evaluate(model.sample(60, steps=20, seed=0).sample)
    assert set(metrics) == {"mean_abs_error", "std_abs_error", "sliced_w2_heldout"}
    assert all(v >= 0 for v in metrics.values())


def test_config_validation(tmp_path):
    good = tmp_path / "c.toml"
    good.write_text('domain = "tabular"\nlr = 1\n[schedule]\ntype = "cosine"\nnum_steps = 100\n')
    cfg = load_config(good, {"max_steps": 7})
    assert cfg.lr == 1.0 and cfg.max_steps == 7 and cfg.schedule["type"] == "cosine"
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: tabular\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown config key 'learning_rate' in .*bad\.yaml"):
        load_config(bad)
    with pytest.raises(ValueError, match="config field 'batch_size'"):
        config_from_dict({"domain": "tabular", "batch_size": "sixty-four"})
    with pytest.raises(ValueError, match="config field 'max_steps'"):
        config_from_dict({"domain": "tabular", "max_steps": True})
    with pytest.raises(ValueError, match="parameterization"):
        config_from_dict({"domain": "tabular", "parameterization": "x1"})
    assert config_from_dict(asdict(TrainConfig(domain="tabular"))) == TrainConfig(domain="tabular")


def _ckpts(folder: Path) -> list[Path]:
    return sorted(folder.glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]))


def test_resume_after_sigkill(tmp_path):
    """Kill a training run mid-way; ``--resume`` restores the global step, optimiser and EMA state."""
    out = tmp_path / "run"
    args = ["train", "--domain", "tabular", "--output", str(out), "--max-steps", "100000", "--checkpoint-every", "10",
            "--batch-size", "16", "--no-progress"]
    log = tmp_path / "first.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(SCIDDPM + args, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while len(_ckpts(out / "checkpoints")) < 2:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    audit = tmp_path / "audit.safetensors"
    latest = _ckpts(out / "checkpoints")[-1]
    step = int(latest.stem.split("=")[1])
    res = subprocess.run(SCIDDPM + ["train", "--output", str(out), "--resume", "--max-steps", str(step + 10),
                                    "--no-progress"], env={**_env(), "SCIDDPM_RESUME_AUDIT": str(audit)},
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    from safetensors import safe_open

    with safe_open(str(audit), "pt") as fh:
        meta = fh.metadata()
        seen = {k: fh.get_tensor(k) for k in fh.keys()}
    used = Path(meta["ckpt_path"])
    ckpt = torch.load(used, weights_only=True)
    assert used.parent == out / "checkpoints" and int(meta["global_step"]) == ckpt["global_step"] >= step
    for k, v in ckpt["ema_state"].items():
        assert torch.equal(seen[f"ema.{k}"], v), k
    state = ckpt["optimizer_states"][0]["state"]
    assert state, "optimiser state missing from checkpoint"
    for pid, st in state.items():
        for k, v in st.items():
            assert torch.equal(seen[f"opt.{pid}.{k}"], torch.as_tensor(v).reshape(-1)), (pid, k)
    final = torch.load(_ckpts(out / "checkpoints")[-1], weights_only=True)
    assert final["global_step"] == step + 10


def test_ddp_two_processes_match_doubled_batch(tmp_path):
    """2 CPU processes (gloo) x batch 16 == 1 process x batch 32: same data (no shuffle), same noise
    (noise_shards=2 gives every half of the global batch its own seeded stream). Tolerance: exact up to 1e-6."""
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text("domain: tabular\nshuffle: false\nnoise_shards: 2\nlr: 0.003\ncheckpoint_every: 5\nmax_steps: 5\n"
                   "accelerator: cpu\nbackbone: {hidden: 32}\n")
    runs = {"single": ["--batch-size", "32"], "ddp": ["--batch-size", "16", "--devices", "2", "--strategy", "ddp"]}
    for name, extra in runs.items():
        res = subprocess.run(SCIDDPM + ["train", "--config", str(cfg), "--output", str(tmp_path / name),
                                        "--no-progress"] + extra, env=_env(), cwd=tmp_path, capture_output=True,
                             text=True, timeout=180)
        assert res.returncode == 0, res.stderr[-3000:]
    a, b = (torch.load(tmp_path / n / "checkpoints" / "step=5.ckpt", weights_only=True) for n in runs)
    assert a["global_step"] == b["global_step"] == 5
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v, rtol=0, atol=1e-6)
    assert any((v != a["state_dict"][k.replace("net.", "ema.")]).any() for k, v in a["state_dict"].items()
               if k.startswith("net."))


def test_validation_logs_domain_metrics(tmp_path):
    """With validate_every, the EMA model is sampled during training and the domain's metrics land in the CSV log."""
    import csv

    cfg = TrainConfig(domain="tabular", max_steps=6, checkpoint_every=6, batch_size=16, backbone={"hidden": 16}, log_every=1,
                      validate_every=3, validate_steps=5, validate_n=16)
    fit(cfg, tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "logs" / "version_0" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    logged = [r for r in rows if r.get("val/sliced_w2_heldout")]
    assert [int(r["step"]) for r in logged] == [3, 6]
    assert all(float(r["val/sliced_w2_heldout"]) > 0 for r in logged)
    with pytest.raises(ValueError, match="unknown sampler"):
        config_from_dict({"domain": "tabular", "validate_sampler": "nope"}, "test")


def test_compile_network_compiles_a_backbone_without_core_whole():
    """A backbone with no ``compile_core`` (the tabular MLP) is compiled whole by ``compile_network`` (``compile:
    true``): one captured graph, the eager output, and the same parameters and checkpoint keys. The backend is
    dynamo's frame counter, so this checks what reaches the compiler, not Inductor."""
    from torch._dynamo.testing import CompileCounter

    from examples.tabular_domain import TimeMLP
    from sciddpm.schedules import LinearSchedule
    from sciddpm.training import compile_network

    torch.manual_seed(0)
    eager = TimeMLP(features=2, hidden=16, schedule=LinearSchedule(1000))
    compiled = TimeMLP(features=2, hidden=16, schedule=LinearSchedule(1000))
    compiled.load_state_dict(eager.state_dict())
    counter = CompileCounter()
    torch._dynamo.reset()
    compile_network(compiled, backend=counter)
    x, t = torch.randn(9, 2), torch.linspace(0.0, 999.0, 9)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t), eager(x, t), rtol=0, atol=0)
    assert counter.frame_count == 1
    assert list(compiled.state_dict()) == list(eager.state_dict())
    torch._dynamo.reset()


def test_default_split_batch_shards_tensors_and_tuples_of_tensors():
    """Domain.split_batch (device-count-invariant noise): rows k::parts of a tensor or of every tensor of a tuple
    (x₀, labels), kept together; tensors of different lengths or non-tensor batches are refused in one line."""
    from examples.tabular_domain import TabularDomain

    domain = TabularDomain({})
    x, y = torch.arange(10.0).reshape(5, 2), torch.arange(5)
    shards = domain.split_batch((x, y), 2)
    assert [type(s) for s in shards] == [tuple, tuple]
    assert torch.equal(shards[0][0], x[0::2]) and torch.equal(shards[0][1], y[0::2])
    assert torch.equal(shards[1][0], x[1::2]) and torch.equal(shards[1][1], y[1::2])
    assert [torch.equal(a, b) for a, b in zip(domain.split_batch(x, 3), (x[0::3], x[1::3], x[2::3]))] == [True] * 3
    for bad in ((x, y[:4]), {"x": x}, ()):
        with pytest.raises(ValueError, match="cannot split its batches") as err:
            domain.split_batch(bad, 2)
        assert "\n" not in str(err.value)
