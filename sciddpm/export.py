"""Exported models: ``model.safetensors`` (EMA weights, domain statistics, optional variance tables) and
``config.json`` (domain, schedule, parameterization, backbone hyper-parameters). ``load`` rebuilds a model from
an export folder or a Lightning checkpoint without unpickling anything.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from .domain import Domain, domain_class
from .objectives import PARAMETERIZATIONS
from .schedules import NoiseSchedule, schedule_from_config
from .training import DiffusionModel, DiffusionModule, config_from_dict

EXPORT_FORMAT = "sciddpm-export"
EXPORT_VERSION = 1


def export_model(module: DiffusionModule, path: Path, variances: dict[str, Tensor] | None = None) -> Path:
    """Write ``path/model.safetensors`` (EMA weights ``net.*``, domain statistics ``domain.*``, variance tables
    ``variance.*``) and ``path/config.json``; written to a temporary folder and renamed into place."""
    tensors = {f"net.{k}": v for k, v in module.ema.state_dict().items()}
    tensors.update({f"domain.{k}": v for k, v in module.domain.state_tensors().items()})
    tensors.update({f"variance.{k}": v for k, v in (variances or {}).items()})
    config = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "domain": module.domain.name,
              "domain_options": module.domain.options, "schedule": module.schedule.config(),
              "parameterization": module.cfg.parameterization, "backbone": module.cfg.backbone,
              "train_config": asdict(module.cfg)}
    return _write_export(Path(path), tensors, config)


def save_variances(path: str | Path, variances: dict[str, Tensor]) -> Path:
    """Add (or replace) ``variance.*`` tensors, e.g. an Analytic-DPM Γ table, in an export folder: the weights file
    and its checksum in ``config.json`` are rewritten together through a temporary folder."""
    from safetensors.torch import load_file

    path = Path(path)
    load(path)  # validates the export (format, checksum, weights) before anything is rewritten
    tensors = {k: v for k, v in load_file(str(path / "model.safetensors")).items() if not k.startswith("variance.")}
    tensors.update({f"variance.{k}": v for k, v in variances.items()})
    return _write_export(path, tensors, json.loads((path / "config.json").read_text()))


def _write_export(path: Path, tensors: dict[str, Tensor], config: dict) -> Path:
    """Write weights + config (with the weights' SHA-256) to a temporary folder, then swap it into ``path``."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": EXPORT_FORMAT})
    config = {**config, "weights_sha256": _sha256(tmp / "model.safetensors")}
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _build(domain_name: str, options: dict, domain_tensors: dict[str, Tensor], backbone: dict,
           net_state: dict[str, Tensor], source: Path, schedule: NoiseSchedule) -> tuple[Domain, nn.Module]:
    domain = domain_class(domain_name)(options)
    domain.load_state_tensors(domain_tensors)
    net = domain.build_backbone(backbone, schedule)
    try:
        net.load_state_dict(net_state)
    except RuntimeError as exc:
        raise ValueError(f"{source}: weights do not match the backbone ({str(exc).splitlines()[0]})") from None
    return domain, net.eval()


def load(path: str | Path) -> DiffusionModel:
    """Rebuild a model from an export folder (``config.json`` + ``model.safetensors``) or a Lightning
    checkpoint (``.ckpt``, read with ``torch.load(weights_only=True)``); ValueError naming a bad file."""
    path = Path(path)
    if path.suffix == ".ckpt":
        return _load_checkpoint(path)
    cfg_file, weights = path / "config.json", path / "model.safetensors"
    for f in (cfg_file, weights):
        if not f.is_file():
            raise ValueError(f"not a sciddpm export: {f} is missing")
    try:
        config = json.loads(cfg_file.read_text())
        if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
            raise ValueError("not a sciddpm export config")
        keys = ("domain", "domain_options", "schedule", "parameterization", "backbone", "train_config")
        missing = [k for k in keys if k not in config]
        if missing:
            raise ValueError(f"missing keys {missing}")
        schedule = schedule_from_config(config["schedule"])
        if config["parameterization"] not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {config['parameterization']!r}")
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"corrupt config {cfg_file}: {str(exc).splitlines()[0]}") from None
    from safetensors.torch import load_file

    if config.get("weights_sha256") not in (None, _sha256(weights)):
        raise ValueError(f"corrupt weights file {weights}: SHA-256 does not match {cfg_file} (tampered or truncated)")
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises SafetensorError / OSError on truncation and tampering
        raise ValueError(f"corrupt weights file {weights}: {str(exc).splitlines()[0]}") from None

    def part(prefix: str) -> dict[str, Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        domain, net = _build(config["domain"], config["domain_options"], part("domain."), config["backbone"],
                             part("net."), weights, schedule)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: export does not match its domain ({exc})") from None
    return DiffusionModel(domain, net, schedule, config["parameterization"], config["train_config"], part("variance."))


def _load_checkpoint(path: Path) -> DiffusionModel:
    if not path.is_file():
        raise ValueError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = config_from_dict(ckpt["hyper_parameters"]["config"], str(path))
        net_state, dom = ckpt["ema_state"], ckpt["domain_tensors"]
        options = ckpt.get("domain_options", cfg.data)
    except ValueError:
        raise
    except Exception as exc:  # unpickling errors, EOF on truncation, missing keys
        raise ValueError(f"corrupt checkpoint {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    domain_cls = domain_class(cfg.domain)
    schedule = schedule_from_config(cfg.schedule or domain_cls.default_schedule)
    domain, net = _build(cfg.domain, options, dom, cfg.backbone, net_state, path, schedule)
    return DiffusionModel(domain, net, schedule, cfg.parameterization, asdict(cfg))


__all__ = ["export_model", "load", "save_variances", "EXPORT_FORMAT", "EXPORT_VERSION"]
