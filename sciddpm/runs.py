"""Run folders a user can trust (no Lightning import: the CLI checks these before the trainer starts).

* ``check_run_folder``: a fresh run refuses a non-empty folder (``--resume`` or a new folder; ``overwrite``
  removes what an earlier run wrote there, and nothing else). A run folder is otherwise only removed by the user.
* ``check_resume_config``: on resume the given config must equal the stored one except for ``RESUMABLE_KEYS``
  (how long, where and how fast to run; nothing that changes the model, the data, the loss or the optimiser).
* ``trim_history``: on resume from a checkpoint at step s₀ the loss log keeps only what that checkpoint had seen,
  so a crash between a log write and the next checkpoint leaves no duplicate rows once training continues.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .outputs import atomic_path

#: Config fields that may differ on resume: run length, checkpoint/log cadence, validation, devices, data loading
#: and compilation. Everything else (domain, data, backbone, schedule, loss, optimiser, seed …) must match.
RESUMABLE_KEYS = ("max_steps", "max_time", "checkpoint_every", "log_every", "validate_every", "validate_sampler",
                  "validate_steps", "validate_n", "accelerator", "devices", "num_nodes", "strategy", "num_workers",
                  "compile")
#: What the engine writes into a run folder (what ``overwrite`` removes).
RUN_ENTRIES = ("config.json", "checkpoints", "logs", "export", "loss.png")
METRICS_CSV = Path("logs") / "version_0" / "metrics.csv"


def resume_command(output: Path) -> str:
    """The command that continues the run in ``output``."""
    return f"sciddpm train --output {output} --resume"


def check_run_folder(output: Path, resume: bool, overwrite: bool = False) -> None:
    """Refuse to start a fresh run in a non-empty ``output`` (one-line ValueError naming ``--resume`` and a new
    folder); with ``overwrite`` remove the engine's own entries (``RUN_ENTRIES``) first. With ``resume`` the folder
    must hold a run (its ``config.json``)."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file, not a run folder")
    if resume:
        if not (output / "config.json").is_file():
            raise ValueError(f"cannot resume: {output / 'config.json'} not found (not a run folder)")
        return
    if not output.is_dir() or not any(output.iterdir()):
        return
    if not overwrite:
        held = "a run" if (output / "config.json").is_file() else "files"
        raise ValueError(f"--output {output} already holds {held}; continue it with `{resume_command(output)}`, "
                         f"or give a new --output folder (--overwrite starts over in this one)")
    for name in RUN_ENTRIES:
        entry = output / name
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.exists():
            entry.unlink()


def config_differences(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """``"key: stored -> given"`` for every top-level config field whose values differ (fields that only one side
    has, e.g. one added to ``TrainConfig`` after the run started, are not compared)."""
    keys = sorted(set(stored) & set(given))
    return [f"{k}: {stored.get(k)!r} -> {given.get(k)!r}" for k in keys if stored.get(k) != given.get(k)]


def check_resume_config(stored: dict[str, Any], given: dict[str, Any], source: Path) -> None:
    """One-line ValueError listing the differences between the run's stored config (``source``) and the given one
    that may not change on resume (all but ``RESUMABLE_KEYS``)."""
    bad = [d for d in config_differences(stored, given) if d.split(":", 1)[0] not in RESUMABLE_KEYS]
    if bad:
        raise ValueError(f"cannot resume with a config that differs from {source}: {'; '.join(bad)} (only "
                         f"{', '.join(RESUMABLE_KEYS)} may change on resume; start a new run for the others)")


def stored_config(output: Path) -> dict[str, Any]:
    """The run's ``config.json`` as a dict (ValueError naming the file if it is missing or not JSON)."""
    path = Path(output) / "config.json"
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read run config {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ValueError(f"run config {path} is not a mapping")
    return values


def _is_train_row(row: dict[str, str]) -> bool:
    return bool(row.get("train_loss") or row.get("lr"))


def trim_history(metrics_csv: Path, step: int) -> int:
    """Drop the log rows a checkpoint at ``step`` had not seen; returns the number of rows dropped.

    Lightning writes a training row under the 0-based index of its optimiser step (rows 0 … s₀−1 precede a
    checkpoint ``step=s₀``); validation rows carry the step count (≤ s₀ precede it). The file is rewritten
    atomically; a missing file is left missing."""
    metrics_csv = Path(metrics_csv)
    if not metrics_csv.is_file():
        return 0
    with open(metrics_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        header, rows = list(reader.fieldnames or []), list(reader)

    def seen(row: dict[str, str]) -> bool:
        try:
            s = int(float(row.get("step") or "nan"))
        except ValueError:
            return False
        return s < step or (s == step and not _is_train_row(row))

    keep = [r for r in rows if seen(r)]
    if len(keep) < len(rows):
        with atomic_path(metrics_csv) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(keep)
    return len(rows) - len(keep)


def write_config(output: Path, values: dict[str, Any]) -> None:
    """Write the run's ``config.json`` atomically (only on the main process)."""
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        with atomic_path(Path(output) / "config.json") as tmp:
            tmp.write_text(json.dumps(values, indent=2) + "\n")


__all__ = ["RESUMABLE_KEYS", "check_run_folder", "check_resume_config", "config_differences", "resume_command",
           "stored_config", "trim_history", "write_config"]
