"""Lightning callbacks and the logger of a run a user can trust (imported by ``sciddpm.training`` only).

* ``GracefulStop``: SIGINT/SIGTERM finish the current step, write a checkpoint, raise ``TrainingInterrupted``.
* ``TrainProgress``: the training report (``sciddpm.progress.Progress``).
* ``RunLogger``: Lightning's ``CSVLogger``, but one ``metrics.csv`` across resumes.
"""
from __future__ import annotations

import csv
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from .progress import Progress


class TrainingInterrupted(BaseException):
    """Training stopped on SIGINT/SIGTERM after finishing its current step; ``checkpoint`` holds that step.
    A ``BaseException`` (like ``KeyboardInterrupt``): ``except Exception`` does not swallow an interrupt."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.signum, self.step, self.checkpoint = int(signum), int(step), Path(checkpoint)
        super().__init__(f"{signal.Signals(signum).name} at step {step}; checkpoint {checkpoint}")


class GracefulStop(Callback):
    """SIGINT (Ctrl-C) and SIGTERM (batch schedulers) end training cleanly, through Lightning's own stopping paths:
    the current optimiser step finishes (with its log row and learning-rate update), then SIGINT sets
    ``trainer.should_stop`` (the loop ends, ``on_train_end``) and SIGTERM takes Lightning's end-of-step
    ``SIGTERMException`` (``on_exception``); in either hook ``step=N.ckpt`` is written through the trainer (atomic
    checkpoint I/O). ``fit`` then raises ``TrainingInterrupted``: Lightning alone would exit 0 on SIGTERM and, on
    SIGINT, stop mid-step with status 1 and no checkpoint. A second signal stops at once (``KeyboardInterrupt``);
    the checkpoints already written stay. Lightning's SIGTERM handler is kept (it composes with this one)."""

    def __init__(self, dirpath: Path) -> None:
        self.dirpath = Path(dirpath)
        self.signum: int | None = None
        self.checkpoint: Path | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Install the handlers (main thread only; call before ``Trainer.fit``, so Lightning composes its own)."""
        if threading.current_thread() is threading.main_thread():  # a signal ignored by the parent stays ignored
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)
                              if signal.getsignal(sig) is not signal.SIG_IGN}

    def uninstall(self) -> None:
        """Restore the handlers found by ``install``."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"sciddpm: {signal.Signals(signum).name} received: finishing the current step and writing a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.signum is not None:
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.signum is not None:
            self.save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.signum is not None and isinstance(exception, SIGTERMException):
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> Path:
        """Write ``step=N.ckpt`` for the trainer's current step (unless it exists); returns its path."""
        path = self.dirpath / f"step={trainer.global_step}.ckpt"
        if not path.is_file():
            trainer.save_checkpoint(path, weights_only=False)  # the full state: optimiser, loops, callbacks
        self.checkpoint = path
        return path


class TrainProgress(Callback):
    """The training report (``sciddpm.progress.Progress``): global step / ``max_steps``, loss, steps per second and
    time left; a bar on a terminal, a line every few seconds in a log. A resumed run starts at its step."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.report, self._loss_time = enabled, None, 0.0
        self._loss: Tensor | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report = Progress(trainer.max_steps, "train", start=trainer.global_step,
                               enabled=self.enabled and trainer.is_global_zero)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.report is None or not self.report.enabled:
            return
        fields = {}
        now = time.monotonic()
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):
            self._loss = loss.detach()
            if now - self._loss_time >= 0.5:  # .item() syncs a GPU: not every step
                fields["loss"], self._loss_time = float(self._loss), now
        self.report.update(trainer.global_step, **fields)

    def _close(self) -> None:
        if self.report is not None:
            if self._loss is not None:
                self.report.fields["loss"] = float(self._loss)  # the last line shows the last loss
            self.report.close()
            self.report = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued (Lightning deletes it)."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                self.metrics_keys = next(csv.reader(fh), [])  # appended rows follow the header as written


class RunLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` is one history across resumes (see ``sciddpm.runs.trim_history``)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


__all__ = ["GracefulStop", "TrainingInterrupted", "TrainProgress", "RunLogger"]
