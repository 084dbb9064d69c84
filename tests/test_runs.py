"""Never lose a run (issue 21): interrupts keep checkpoints and exit 130/143, run folders and resume configs are
checked, the learning rate and the loss log continue across resumes, outputs are whole files in the format their
extension names, checked before sampling, and progress reaches a log file."""
from __future__ import annotations

import csv
import io
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from sciddpm.cli import main
from sciddpm.outputs import atomic_folder, atomic_path, check_output
from sciddpm.progress import Progress
from sciddpm.runs import trim_history
from sciddpm.training import TrainConfig, TrainingInterrupted, WarmupCosine, fit

ROOT = Path(__file__).resolve().parents[1]
SCIDDPM = [sys.executable, "-m", "sciddpm.cli"]
METRICS = Path("logs") / "version_0" / "metrics.csv"


def _cfg(**kw) -> TrainConfig:
    base = dict(domain="tabular", max_steps=12, checkpoint_every=5, batch_size=16, backbone={"hidden": 16},
                log_every=1, lr=2e-3, warmup_steps=3, min_lr_ratio=0.1)
    return TrainConfig(**{**base, **kw})


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / METRICS, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("train_loss")]


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("sciddpm: error: ")]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    torch.set_num_threads(1)
    fit(_cfg(max_steps=4, checkpoint_every=4), out, progress=False)
    return out / "export"


# ------------------------------------------------------------------------------------------- interrupts
class _SignalAt(L.Callback):
    """Sends ``signum`` to this process when the batch after global step ``step`` starts."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.fixture
def interactive_signals():
    """The handlers an interactive process has. A shell's background job (``cmd &``) inherits SIGINT ignored, and
    GracefulStop rightly leaves an ignored signal ignored; this test is about a signal that is delivered."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_finishes_the_step_keeps_everything_and_resumes(tmp_path, one_thread, interactive_signals, signum):
    """In process: a signal during step 8 of a 12-step run (checkpoints every 5) ends training after that step with
    step=8.ckpt beside step=5.ckpt; nothing is removed; the handlers are restored; resuming with a larger
    max_steps continues from step 8, the loss log is one step-ordered history without duplicates, and every logged
    learning rate is base·λ(s) of the documented rule (WarmupCosine with the horizon moved at s₀ = 8)."""
    run = tmp_path / "run"
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(TrainingInterrupted) as info:
        fit(_cfg(), run, progress=False, callbacks=[_SignalAt(7, signum)])
    stop = info.value
    assert (stop.signum, stop.step, stop.checkpoint.name) == (signum, 8, "step=8.ckpt")
    assert {s: signal.getsignal(s) for s in before} == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step=5.ckpt", "step=8.ckpt"]
    assert torch.load(stop.checkpoint, weights_only=True)["global_step"] == 8
    assert [int(r["step"]) for r in _rows(run)] == list(range(8))
    # a crash between a log write and the next checkpoint: rows the checkpoint never saw are in the log
    with open(run / METRICS, "a", newline="") as fh:
        fh.write(f"0,0.5,8,9.9\n0,0.5,9,9.9\n")
    fit(_cfg(max_steps=20), run, resume=stop.checkpoint, progress=False)
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == list(range(20)), "one history: ordered, complete, no duplicates"
    assert all(float(r["train_loss"]) != 9.9 for r in rows)
    rule = WarmupCosine(3, 12, 0.1)
    rule.retarget(8, 20)
    for r in rows:
        # the log holds float32 values (Lightning logs tensors): relative tolerance 1e-6 > 2^-24
        assert float(r["lr"]) == pytest.approx(2e-3 * rule(int(r["step"])), rel=1e-6, abs=0), r["step"]
    assert (run / "export" / "model.safetensors").is_file() and (run / "loss.png").stat().st_size > 0


def test_resume_from_a_periodic_checkpoint_keeps_the_schedule(tmp_path, one_thread):
    """Lightning saves periodic checkpoints before the step's learning-rate update; a resume from one still uses
    base·λ(s) at every step s (no off-by-one), and the log rows after the checkpoint are replaced, not doubled."""
    run = tmp_path / "run"
    fit(_cfg(max_steps=10), run, progress=False)
    fit(_cfg(max_steps=10), run, resume=run / "checkpoints" / "step=5.ckpt", progress=False)
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == list(range(10))
    rule = WarmupCosine(3, 10, 0.1)
    for r in rows:
        assert float(r["lr"]) == pytest.approx(2e-3 * rule(int(r["step"])), rel=1e-6, abs=0), r["step"]


def _ckpts(folder: Path) -> list[Path]:
    return sorted(folder.glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]))


def test_sigterm_subprocess_exits_143_and_resume_continues(tmp_path):
    """A real `sciddpm train` gets SIGTERM once its first checkpoint exists: exit 143, the checkpoints survive,
    stderr names the `--resume` command and shows progress lines (stderr is a file); `--resume` continues from
    the newest checkpoint with the loss history intact."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCIDDPM_PROGRESS_EVERY": "0.5",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = ["train", "--domain", "tabular", "--output", str(out), "--max-steps", "1000000", "--checkpoint-every",
            "20", "--batch-size", "16", "--log-every", "5"]
    log = tmp_path / "first.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(SCIDDPM + args, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120  # generous: the machine may be loaded
        while not _ckpts(out / "checkpoints"):
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert rc == 143, text[-2000:]
    assert f"continue with: sciddpm train --output {out} --resume" in text
    assert "[train] step " in text and "step/s" in text
    ckpts = _ckpts(out / "checkpoints")
    step = int(ckpts[-1].stem.split("=")[1])
    assert ckpts[0].name == "step=20.ckpt" and step >= 20
    assert torch.load(ckpts[-1], weights_only=True)["global_step"] == step
    before = [int(r["step"]) for r in _rows(out)]
    assert before and before[-1] >= step - 5
    res = subprocess.run(SCIDDPM + ["train", "--output", str(out), "--resume", "--max-steps", str(step + 10),
                                    "--log-every", "1", "--no-progress"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    steps = [int(r["step"]) for r in _rows(out)]
    assert steps == sorted(set(steps)) and steps[-10:] == list(range(step, step + 10))
    assert [s for s in steps if s < step] == [s for s in before if s < step], "history before the checkpoint kept"
    assert (out / "export" / "model.safetensors").is_file() and ckpts == _ckpts(out / "checkpoints")[:len(ckpts)]


# ------------------------------------------------------------------------------------------- run folders
def test_fresh_run_refuses_a_used_folder(export, tmp_path, capsys):
    run = export.parent
    err = _error(capsys, ["train", "--domain", "tabular", "--output", str(run), "--max-steps", "2"])
    assert "already holds a run" in err and f"sciddpm train --output {run} --resume" in err and "new --output" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step=4.ckpt"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert "already holds files" in _error(capsys, ["train", "--domain", "tabular", "--output", str(other)])
    assert "is a file" in _error(capsys, ["train", "--domain", "tabular", "--output", str(other / "notes.txt")])


def test_overwrite_starts_over_and_keeps_other_files(tmp_path, one_thread):
    run = tmp_path / "run"
    fit(_cfg(max_steps=5), run, progress=False)
    (run / "notes.txt").write_text("mine")
    fit(_cfg(max_steps=4, checkpoint_every=2), run, progress=False, overwrite=True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step=2.ckpt", "step=4.ckpt"]
    assert (run / "notes.txt").read_text() == "mine" and [int(r["step"]) for r in _rows(run)] == [0, 1, 2, 3]


def test_resume_refuses_a_changed_config(export, capsys):
    run = export.parent
    err = _error(capsys, ["train", "--output", str(run), "--resume", "--lr", "0.5", "--seed", "3"])
    assert "lr: 0.002 -> 0.5" in err and "seed: 0 -> 3" in err and "max_steps" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step=4.ckpt"]


def test_lr_schedule_is_continuous_when_max_steps_changes():
    """WarmupCosine: retarget(s₀, T′) keeps λ(s₀), reaches the floor exactly at T′, is the documented half cosine
    in between, never jumps by more than a fresh schedule's largest step; a retarget in warm-up only moves T.
    Its state travels through LambdaLR's state_dict (the checkpoint)."""
    old = WarmupCosine(10, 100, 0.1)
    new = WarmupCosine(10, 100, 0.1)
    new.retarget(60, 300)
    f0 = old(60)
    assert new(60) == pytest.approx(f0, rel=1e-15) and all(new(s) == old(s) for s in range(60))
    assert new(180) == pytest.approx(0.1 + (f0 - 0.1) * 0.5, abs=1e-15) and new(300) == pytest.approx(0.1, abs=1e-15)
    assert new(400) == pytest.approx(0.1, abs=1e-15)
    steps = [abs(new(s + 1) - new(s)) for s in range(10, 320)]
    assert max(steps) <= math.pi / 2 * 0.9 / 90 + 1e-12  # the fresh schedule's largest slope (1 − m)·π/(2(T − W))
    # without the rule the rate would jump from λ_old(60) to the fresh T′ = 300 schedule's value at 60
    assert WarmupCosine(10, 300, 0.1)(60) - f0 > 0.3
    early = WarmupCosine(10, 100, 0.1)
    early.retarget(5, 300)
    fresh = WarmupCosine(10, 300, 0.1)
    assert all(early(s) == fresh(s) for s in range(300))
    twice = WarmupCosine(10, 100, 0.1)
    twice.retarget(60, 300)
    twice.retarget(200, 250)
    assert twice(200) == pytest.approx(new(200), rel=1e-15) and twice(250) == pytest.approx(0.1, abs=1e-15)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    saved = torch.optim.lr_scheduler.LambdaLR(opt, twice).state_dict()
    restored = WarmupCosine(10, 100, 0.1)
    torch.optim.lr_scheduler.LambdaLR(opt, restored).load_state_dict(saved)
    assert all(restored(s) == twice(s) for s in range(0, 300, 7))


def test_trim_history_keeps_only_what_the_checkpoint_saw(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,lr,step,train_loss,val/x\n0,1,8,0.5,\n0,1,9,0.4,\n,,10,,0.7\n0,1,10,0.3,\n,,11,,0.6\n")
    assert trim_history(path, 10) == 2
    assert [line.split(",")[2] for line in path.read_text().splitlines()[1:]] == ["8", "9", "10"]
    assert trim_history(tmp_path / "none.csv", 3) == 0 and not (tmp_path / "none.csv").exists()


# ------------------------------------------------------------------------------------------- output files
def test_atomic_writers_leave_whole_files_only(tmp_path):
    target = tmp_path / "a.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".csv" and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]
    with atomic_path(target) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors and mkstemp create files
        os.write(fd, b"new")
        os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    folder = tmp_path / "export"
    with pytest.raises(RuntimeError):
        with atomic_folder(folder) as tmp:
            (tmp / "x").write_text("1")
            raise RuntimeError("export failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


def test_export_modes_and_failed_export_leaves_nothing(export, monkeypatch, tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((export / name).stat().st_mode) == 0o666 & ~mask, name
    from sciddpm import export as export_module
    from sciddpm.export import load, save_variances

    before = {p.name: p.read_bytes() for p in export.iterdir()}
    monkeypatch.setattr(export_module, "_sha256", lambda path: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        save_variances(export, {"gamma": torch.ones(3)})
    monkeypatch.undo()
    assert sorted(p.name for p in export.parent.iterdir() if p.name.startswith(".")) == []
    assert {p.name: p.read_bytes() for p in export.iterdir()} == before
    load(export)


def test_output_paths_are_checked_before_sampling(export, tmp_path, capsys, monkeypatch):
    from sciddpm.model import DiffusionModel

    monkeypatch.setattr(DiffusionModel, "sample", lambda *a, **k: pytest.fail("sampled before checking the output"))
    (tmp_path / "file").write_text("")
    (tmp_path / "folder").mkdir()
    cases = {"x.xyz": "has extension '.xyz'; this writer writes .csv", "file/x.csv": "is a file, not a folder",
             "folder": "is an existing folder"}
    for name, message in cases.items():
        assert message in _error(capsys, ["sample", str(export), "--output", str(tmp_path / name)]), name
    assert "is an existing folder" in _error(capsys, ["evaluate", str(export), "--output", str(tmp_path / "folder")])
    assert "evaluate needs at least 2 samples" in _error(
        capsys, ["evaluate", str(export), "--n", "1", "--output", str(tmp_path / "m.json")])
    if os.path.isdir("/proc/self"):  # a folder nobody can create files in, even root
        assert "is not writable" in _error(capsys, ["sample", str(export), "--output", "/proc/self/x.csv"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder"]


def test_tabular_csv_header_and_columns(export, tmp_path, capsys):
    from sciddpm.export import load

    headerless = tmp_path / "nohead.csv"
    headerless.write_text("1,2\n3,4\n5,6\n7,8\n9,10\n")
    err = _error(capsys, ["train", "--domain", "tabular", "--data-path", str(headerless), "--output",
                          str(tmp_path / "r1")])
    assert "nohead.csv: the first line must be a header" in err
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3\n5,6\n7,8\n")
    assert "ragged.csv: line 3 has 1 values; the header names 2 columns" in _error(
        capsys, ["train", "--domain", "tabular", "--data-path", str(ragged), "--output", str(tmp_path / "r2")])
    model = load(export)
    model.domain.columns = model.domain.columns[:-1]  # an export whose column list is shorter than the data
    x = torch.zeros(3, len(model.domain.mean))
    with pytest.raises(ValueError, match=r"s\.csv: samples of shape \(3, \d+\) do not match"):
        model.domain.write_samples(tmp_path / "s.csv", x)
    assert not (tmp_path / "s.csv").exists()


# ------------------------------------------------------------------------------------------- progress
def test_progress_lines_in_a_log():
    """Not a terminal: one line per `every` seconds (every=0: each update), a last line at the end; the line holds
    position/total, percent, fields, rate and time left."""
    stream = io.StringIO()
    with Progress(10, "train", start=2, stream=stream, every=0) as report:
        for n in range(3, 11):
            report.update(n, loss=0.25)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 8 and lines[0].startswith("[train] step 3/10 (30%) loss=0.25 | ")
    assert " step/s | elapsed " in lines[0] and "| left " in lines[0] and lines[-1].startswith("[train] step 10/10")
    stream = io.StringIO()
    with Progress(100, "sampling", stream=stream, every=3600) as report:
        for n in range(1, 101):
            report.update(n)
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["[sampling] step 1/100", "[sampling] step 100/100"]
    silent = io.StringIO()
    with Progress(5, "x", stream=silent, every=0, enabled=False) as report:
        report.update(5)
    assert silent.getvalue() == ""


def test_sampling_and_gamma_estimation_report_progress(export, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SCIDDPM_PROGRESS_EVERY", "3600")  # first and last line only
    assert main(["sample", str(export), "--n", "4", "--steps", "7", "--output", str(tmp_path / "s.csv")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in err if line.startswith("[")] == [
        "[ddpm sampling] step 1/7", "[ddpm sampling] step 7/7"]
    assert main(["estimate-variance", str(export), "--batches", "2", "--batch-size", "8", "--num-times", "5"]) == 0
    err = capsys.readouterr().err
    assert "[estimate Gamma] eval 20/20 (100%)" in err  # 2 batches x 5 times x antithetic pair and "eval/s" in err


def test_demo_reports_progress_to_a_file(tmp_path, capsys, one_thread):
    """`make demo > log`: training, sampling report lines on stderr although it is not a terminal."""
    assert main(["demo", "--domain", "tabular", "--output", str(tmp_path), "--max-steps", "3", "--n-samples", "8",
                 "--n", "20"]) == 0
    err = capsys.readouterr().err
    assert "[train] step 3/3 (100%)" in err and "[ddpm sampling] step 100/100 (100%)" in err
    assert main(["demo", "--domain", "tabular", "--output", str(tmp_path), "--max-steps", "2", "--n-samples", "8",
                 "--n", "20"]) == 0, "a rerun of the demo starts over in its scratch folder"
