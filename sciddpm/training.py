"""The training engine: Lightning glue around the core's denoising loss, EMA, checkpoints and exports.

* configs (``TrainConfig``, ``load_config``) live in ``sciddpm.config`` (re-exported here); ``fit`` checks the
  domain's ``data:`` / ``backbone:`` keys and a named data path before anything is written.
* ``DiffusionModule``: trains any domain's backbone with ``objectives.denoising_loss`` (schedule,
  parameterization, weighting from the config), keeps EMA weights (saved in Lightning checkpoints and
  restored on resume), optional bf16 autocast around the network and ``torch.compile`` (``compile``), AdamW
  (fused on CUDA) with linear warm-up and cosine decay (``WarmupCosine``, continuous across a resume that changes
  ``max_steps``).
* ``fit``: builds the Trainer (CSV loss log appended across resumes, atomic periodic checkpoints, gradient
  clipping, DDP) and runs it; refuses a non-empty fresh run folder and a resume config that changes the model
  (``sciddpm.runs``); SIGINT/SIGTERM stop after the current step with a checkpoint (``sciddpm.train_callbacks``).
* exports and ``load`` live in ``sciddpm.export`` (safetensors + JSON, never unpickled).

Random draws of the loss (t and ε) come from a generator seeded by (seed, global step, shard): with
``noise_shards`` = S the global batch is split into S interleaved shards with their own streams, so a run on
k devices (S divisible by k) draws exactly the noise of a 1-device run with a k-times larger batch.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import signal
import warnings
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .config import TrainConfig, check_domain_config, config_from_dict, load_config, read_config_file
from .domain import Domain, domain_class
from .model import DiffusionModel
from .objectives import denoising_loss
from .outputs import atomic_path
from .runs import METRICS_CSV, check_resume_config, check_run_folder, stored_config, trim_history, write_config
from .schedules import schedule_from_config
from .train_callbacks import GracefulStop, RunLogger, TrainingInterrupted, TrainProgress

# ==================================================================================================
# Lightning module and data
# ==================================================================================================
def _shard_seed(seed: int, step: int, shard: int) -> int:
    return (seed * 1_000_003 + step * 7919 + shard * 104_729) % (2**63 - 1)


def compile_network(net: torch.nn.Module, **options: Any) -> None:
    """``torch.compile`` a backbone in place, for training speed: the first of its modules that offers
    ``compile_core()`` (a tensor-only core with dynamic shapes, e.g. the molecules' EGNN) compiles that; any other
    network is compiled whole (``nn.Module.compile(dynamic=True)``). Parameters and checkpoint keys are unchanged.
    On a GPU this fuses element-wise kernels (fewer launches per step); the first step pays the compilation.
    ``options`` go to ``torch.compile`` (e.g. ``backend``, ``mode``)."""
    for module in net.modules():
        if callable(getattr(module, "compile_core", None)):
            module.compile_core(**options)
            return
    net.compile(dynamic=True, **options)


class DiffusionModule(L.LightningModule):
    """Trains ``domain.build_backbone(config.backbone)`` with the core's denoising loss; keeps EMA weights."""

    def __init__(self, config: dict[str, Any], domain: Domain | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["domain"])
        self.cfg = config_from_dict(config, "module config")
        if domain is None:  # rebuilt from a checkpoint: statistics come from on_load_checkpoint/load()
            raise ValueError("DiffusionModule needs a prepared domain; use sciddpm.training.load for checkpoints")
        self.domain = domain
        self.schedule = schedule_from_config(self.cfg.schedule or domain.default_schedule)
        self.net = domain.build_backbone(self.cfg.backbone, self.schedule)
        self.ema = copy.deepcopy(self.net).requires_grad_(False).eval()
        if self.cfg.compile:
            compile_network(self.net)

    def forward(self, x: Tensor, t: Tensor, **condition: Any) -> Tensor:
        bf16 = self.cfg.precision == "bf16"
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self.net(x, t, **condition)
        return out.to(x.dtype)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        if self.cfg.noise_shards % world:
            raise ValueError(f"noise_shards ({self.cfg.noise_shards}) must be divisible by the world size ({world})")
        local = self.cfg.noise_shards // world
        shards = [batch] if local == 1 else self.domain.split_batch(batch, local)
        total = 0.0
        for j, shard in enumerate(shards):
            space, x0 = self.domain.space_for(shard), self.domain.state_from(shard)
            gen = None
            if space.device.type == "cpu":  # accelerator RNG streams differ; there the global seed is used
                gen = torch.Generator().manual_seed(_shard_seed(self.cfg.seed, self.global_step, rank + world * j))
            out = denoising_loss(self, self.schedule, space, x0, parameterization=self.cfg.parameterization,
                                 weighting=self.cfg.weighting, importance_sampling=self.cfg.importance_sampling,
                                 generator=gen, **self.domain.training_condition(space, gen))
            total = total + out.loss / len(shards)
        self.log("train_loss", total, on_step=True, prog_bar=True, batch_size=self.cfg.batch_size)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, batch_size=self.cfg.batch_size)
        return total

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.update_ema()  # here, not in on_train_batch_end: checkpoint callbacks run before that hook

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA: θ̄ ← d θ̄ + (1 − d) θ with d = min(decay, (1 + n)/(10 + n)) after optimiser step n."""
        n = self.global_step
        decay = min(self.cfg.ema_decay, (1 + n) / (10 + n))
        ema, params = list(self.ema.parameters()), [p.detach() for p in self.net.parameters()]
        torch._foreach_lerp_(ema, params, 1.0 - decay)  # one fused call, not one kernel per tensor
        for e, b in zip(self.ema.buffers(), self.net.buffers()):
            e.copy_(b)

    def configure_optimizers(self) -> dict:
        # Lightning moves the module to its device before this hook: on CUDA the fused AdamW is one kernel.
        fused = all(p.is_cuda for p in self.net.parameters())
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                fused=fused or None)
        factor = WarmupCosine(self.cfg.warmup_steps, self.cfg.max_steps, self.cfg.min_lr_ratio,
                              self.cfg.lr_schedule == "cosine")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)  # saves factor's state in checkpoints
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_start(self) -> None:
        """After a checkpoint is restored (``LambdaLR`` restores ``WarmupCosine``'s state): move λ's horizon to the
        current ``max_steps`` (``WarmupCosine.retarget``), so a longer run continues the rate without a jump."""
        sched = self.lr_schedulers()
        if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
            for factor in sched.lr_lambdas:
                if isinstance(factor, WarmupCosine):
                    factor.retarget(self.global_step, self.cfg.max_steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ema_state"] = {k: v.detach().clone() for k, v in self.ema.state_dict().items()}
        checkpoint["domain_tensors"] = {k: v.detach().clone() for k, v in self.domain.state_tensors().items()}
        checkpoint["domain_options"] = dict(self.domain.options)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ema_state" not in checkpoint:
            raise ValueError("checkpoint has no EMA state (not written by sciddpm)")
        self.ema.load_state_dict(checkpoint["ema_state"])

    def ema_model(self) -> DiffusionModel:
        """The EMA network as a samplable model (shares the module's EMA weights)."""
        return DiffusionModel(self.domain, self.ema, self.schedule, self.cfg.parameterization, asdict(self.cfg))


class WarmupCosine:
    """The learning-rate factor λ(s) of optimiser step s (0-based): linear warm-up λ = (s + 1)/W for s < W, then a
    half cosine from 1 down to the floor m = ``min_lr_ratio`` at the horizon T = ``max_steps`` (Loshchilov &
    Hutter 2017, SGDR, without restarts): λ = m + (1 − m)·½(1 + cos(π·min(1, (s − W)/(T − W)))); ``cosine=False``:
    λ = 1 after warm-up.

    A resume that changes T (``retarget(s₀, T′)``, e.g. a longer ``--max-steps``) never makes the rate jump: from
    s₀ on, λ(s) = m + (λ(s₀) − m)·½(1 + cos(π·min(1, (s − s₀)/(T′ − s₀)))), a new half cosine that starts at the
    rate reached at s₀ and ends at the floor at T′. A retarget during warm-up only moves T (the cosine has not
    started; warm-up is untouched). A callable object, so ``LambdaLR`` stores this state in checkpoints."""

    def __init__(self, warmup: int, total: int, floor: float, cosine: bool = True) -> None:
        self.warmup, self.total, self.floor, self.cosine = int(warmup), int(total), float(floor), bool(cosine)
        self.first_total = self.total  # the horizon of the first cosine
        self.segments: list[list[float]] = []  # [s₀, λ(s₀), T′] of each retarget after warm-up

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if not self.cosine:
            return 1.0
        start, top, total = self.warmup, 1.0, self.first_total
        for s0, f0, t in self.segments:
            if step >= s0:
                start, top, total = int(s0), float(f0), int(t)
        progress = min(1.0, (step - start) / max(1, total - start))
        return self.floor + (top - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def retarget(self, step: int, total: int) -> None:
        """Move the horizon to ``total`` at optimiser step ``step`` (see the class text); a no-op if unchanged."""
        if total == self.total:
            return
        if self.cosine and step > self.warmup:
            self.segments.append([int(step), self(step), int(total)])
        elif not self.segments:
            self.first_total = int(total)
        self.total = int(total)


class SampleValidation(Callback):
    """Every ``validate_every`` steps, on rank 0: sample ``validate_n`` states with the EMA model (``validate_sampler``
    at ``validate_steps`` steps) and log the domain's own metrics as ``val/<metric>`` in the CSV log."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step, cfg = trainer.global_step, self.cfg
        if cfg.validate_every <= 0 or step == 0 or step % cfg.validate_every or not trainer.is_global_zero:
            return
        out = pl_module.ema_model().sample(cfg.validate_n, sampler=cfg.validate_sampler, steps=cfg.validate_steps,
                                           seed=cfg.seed)
        metrics = pl_module.domain.evaluate(out.sample, out.space)
        numeric = {f"val/{k}": float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        if numeric and trainer.logger is not None:
            trainer.logger.log_metrics(numeric, step=step)


class DomainDataModule(L.LightningDataModule):
    """The domain's training set behind a DataLoader (the domain's collate; seeded shuffling)."""

    def __init__(self, domain: Domain, cfg: TrainConfig, train_set: Dataset | None = None) -> None:
        super().__init__()
        self.domain, self.cfg = domain, cfg
        self.train_set = train_set if train_set is not None else domain.train_dataset(cfg.data)

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.cfg.batch_size:  # type: ignore[arg-type]
            raise ValueError(f"batch_size {self.cfg.batch_size} exceeds the {len(self.train_set)} training items")  # type: ignore[arg-type]
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        if world > 1:  # our own sampler: Lightning's always shuffles; rank r gets items r::world (+ seeded shuffle)
            sampler = DistributedSampler(self.train_set, num_replicas=world, rank=trainer.global_rank,  # type: ignore
                                         shuffle=self.cfg.shuffle, seed=self.cfg.seed, drop_last=True)
            loader_args: dict[str, Any] = {"sampler": sampler}
        else:
            loader_args = {"shuffle": self.cfg.shuffle, "generator": torch.Generator().manual_seed(self.cfg.seed)}
        return DataLoader(self.train_set, batch_size=self.cfg.batch_size, drop_last=True,
                          collate_fn=self.domain.collate, num_workers=self.cfg.num_workers,
                          persistent_workers=self.cfg.num_workers > 0, **loader_args)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, but written to ``PATH.tmp`` and renamed: a kill never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        tmp = f"{path}.tmp"
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class ResumeAudit(Callback):
    """Writes the state found at train start (step, EMA, optimiser tensors) to a safetensors file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from safetensors.torch import save_file

        tensors = {f"ema.{k}": v.detach().cpu().clone().contiguous() for k, v in pl_module.ema.state_dict().items()}
        for pid, st in trainer.optimizers[0].state_dict()["state"].items():
            tensors.update({f"opt.{pid}.{k}": torch.as_tensor(v).detach().cpu().clone().reshape(-1)
                            for k, v in st.items()})
        if trainer.is_global_zero:
            save_file(tensors, str(self.path), metadata={"global_step": str(trainer.global_step),
                                                         "ckpt_path": str(trainer.ckpt_path)})


def checkpoint_step(path: Path) -> int:
    """The global step in a checkpoint file name ``step=N.ckpt``."""
    try:
        return int(Path(path).stem.split("=")[-1])
    except ValueError:
        return -1


def latest_checkpoint(output: Path) -> Path:
    """The newest ``step=N.ckpt`` under OUTPUT/checkpoints; ValueError if there is none."""
    ckpts = sorted((output / "checkpoints").glob("step=*.ckpt"), key=checkpoint_step)
    if not ckpts:
        raise ValueError(f"no checkpoint to resume from in {output / 'checkpoints'}")
    return ckpts[-1]


def resume_point(output: Path) -> Path | None:
    """The newest checkpoint of a run folder to resume from, or None for a fresh run (no checkpoint yet)."""
    try:
        return latest_checkpoint(Path(output)) if (Path(output) / "checkpoints").is_dir() else None
    except ValueError:
        return None


def _max_time(value: str | None) -> str | timedelta | None:
    if value is None:
        return None
    try:
        return timedelta(seconds=float(value))
    except ValueError:
        return value  # Lightning's "DD:HH:MM:SS"


def is_main_process() -> bool:
    """True outside DDP worker processes (rank 0 of node 0)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _checkpoint_config(path: Path) -> dict[str, Any]:
    try:
        return dict(torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]["config"])
    except Exception as exc:  # unpickling errors, truncation, missing keys
        raise ValueError(f"cannot read the config of checkpoint {path}: {str(exc).splitlines()[0]}") from None


def fit(cfg: TrainConfig, output: Path, resume: Path | None = None, progress: bool = True,
        callbacks: list[Callback] | None = None, overwrite: bool = False) -> DiffusionModule:
    """Train ``cfg`` into ``output`` (checkpoints/, logs/, export/, loss.png); resume from a checkpoint path.

    A fresh run refuses a non-empty ``output`` unless ``overwrite``; a resumed one refuses a config that differs
    from the run's (``sciddpm.runs.check_resume_config``), continues the loss log and the learning-rate schedule
    (``WarmupCosine.retarget``). SIGINT/SIGTERM end training after the current step with a checkpoint and raise
    ``TrainingInterrupted`` (``GracefulStop``); nothing already written is removed. ``progress``: the training
    report (a bar on a terminal, lines in a log)."""
    output = Path(output)
    main = is_main_process()
    if main:
        check_run_folder(output, resume is not None and (output / "config.json").is_file(), overwrite)
        if resume is not None:
            stored = (stored_config(output) if (output / "config.json").is_file()
                      else _checkpoint_config(Path(resume)))
            check_resume_config(stored, asdict(cfg), output / "config.json")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    domain = domain_class(cfg.domain)(cfg.data)
    check_domain_config(cfg, domain)
    train_set = domain.train_dataset(cfg.data)
    module = DiffusionModule(asdict(cfg), domain=domain)
    data = DomainDataModule(domain, cfg, train_set)
    if main:
        output.mkdir(parents=True, exist_ok=True)
        write_config(output, asdict(cfg))
        if resume is not None:
            trim_history(output / METRICS_CSV, checkpoint_step(Path(resume)))
    ckpt = ModelCheckpoint(dirpath=output / "checkpoints", filename="{step}", every_n_train_steps=cfg.checkpoint_every,
                           save_top_k=-1, save_last=False, auto_insert_metric_name=True)
    stop = GracefulStop(output / "checkpoints")
    callbacks = [ckpt, stop, TrainProgress(progress), SampleValidation(cfg)] + list(callbacks or [])
    if os.environ.get("SCIDDPM_RESUME_AUDIT"):
        callbacks.append(ResumeAudit(Path(os.environ["SCIDDPM_RESUME_AUDIT"])))
    if not progress:
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        from lightning.fabric.utilities.warnings import PossibleUserWarning

        warnings.filterwarnings("ignore", category=PossibleUserWarning)
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*(srun|does not have many workers|smaller than the logging).*")
        trainer = L.Trainer(max_steps=cfg.max_steps, max_time=_max_time(cfg.max_time), accelerator=cfg.accelerator,
                            devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=cfg.strategy,
                            gradient_clip_val=cfg.grad_clip or None, precision="32-true",
                            logger=RunLogger(str(output), name="logs", version=0), callbacks=callbacks,
                            plugins=[AtomicCheckpointIO()], enable_progress_bar=False,
                            enable_model_summary=False, log_every_n_steps=cfg.log_every, limit_val_batches=0,
                            num_sanity_val_steps=0, max_epochs=-1, use_distributed_sampler=False)
        stop.install()
        try:
            trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None,
                        weights_only=True)  # resume never unpickles objects
        except SIGTERMException:  # Lightning's end-of-step exit on SIGTERM (a SystemExit with status 0)
            if stop.checkpoint is None:
                raise
        finally:
            stop.uninstall()
    if stop.checkpoint is not None:
        raise TrainingInterrupted(stop.signum or signal.SIGTERM, checkpoint_step(stop.checkpoint), stop.checkpoint)
    if trainer.is_global_zero:
        from .export import export_model

        export_model(module.ema_model(), output / "export")
        plot_loss(output / METRICS_CSV, output / "loss.png")
    return module


def plot_loss(metrics_csv: Path, png: Path) -> None:
    """The training-loss curve from Lightning's CSV log (skipped if there is no log yet)."""
    import csv

    if not metrics_csv.is_file():
        return
    with open(metrics_csv, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("train_loss")]
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([int(r["step"]) for r in rows], [float(r["train_loss"]) for r in rows])
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="denoising loss")
    fig.tight_layout()
    try:
        with atomic_path(png) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)


__all__ = ["TrainConfig", "DiffusionModule", "DiffusionModel", "DomainDataModule", "config_from_dict", "compile_network",
           "load_config", "read_config_file", "fit", "latest_checkpoint", "checkpoint_step", "TrainingInterrupted",
           "WarmupCosine"]
