"""Exported models: ``model.safetensors`` (EMA weights, domain statistics, optional variance tables) and
``config.json`` (format version, domain, schedule, parameterization, backbone hyper-parameters). ``load`` rebuilds a
``DiffusionModel`` from an export folder or a Lightning checkpoint without unpickling anything, and without importing
Lightning (the engine, ``sciddpm.training``, is only imported by training).

Format versions: 2 (this library) changed the backbones' time conditioning, so version-1 weights mean something
else: a version-1 export is refused (re-export it), and so is a version newer than ``EXPORT_VERSION``.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn

from .config import check_keys, config_from_dict
from .domain import Domain, domain_class, domain_spec
from .model import DiffusionModel
from .objectives import PARAMETERIZATIONS
from .outputs import atomic_folder
from .schedules import NoiseSchedule, schedule_from_config

EXPORT_FORMAT = "sciddpm-export"
EXPORT_VERSION = 2
#: The keys of an export's ``config.json`` (required, then optional).
EXPORT_KEYS = ("format", "version", "domain", "domain_options", "schedule", "parameterization", "backbone",
               "train_config")
EXPORT_OPTIONAL_KEYS = ("domain_class", "weights_sha256")


def export_model(model: DiffusionModel, path: Path, variances: dict[str, Tensor] | None = None) -> Path:
    """Write ``path/model.safetensors`` (the model's network weights ``net.*`` — the EMA weights for a trained
    model —, domain statistics ``domain.*``, variance tables ``variance.*``, the model's own and ``variances``) and
    ``path/config.json``; written to a temporary folder and renamed into place. A training ``DiffusionModule`` is
    exported through its ``ema_model()``."""
    if not isinstance(model, DiffusionModel) and callable(getattr(model, "ema_model", None)):
        model = model.ema_model()
    tensors = {f"net.{k}": v for k, v in model.net.state_dict().items()}
    tensors.update({f"domain.{k}": v for k, v in model.domain.state_tensors().items()})
    tensors.update({f"variance.{k}": v for k, v in {**model.variances, **(variances or {})}.items()})
    train_config = dict(model.config)
    config = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "domain": model.domain.name,
              "domain_class": domain_spec(type(model.domain)), "domain_options": model.domain.options,
              "schedule": model.schedule.config(), "parameterization": model.parameterization,
              "backbone": train_config.get("backbone", {}), "train_config": train_config}
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
    with atomic_folder(path) as tmp:  # removed again if anything below fails; files get the ordinary mode
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": EXPORT_FORMAT})
        config = {**config, "weights_sha256": _sha256(tmp / "model.safetensors")}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_version(version: object, source: Path) -> None:
    """Refuse an export whose format ``version`` is not this library's ``EXPORT_VERSION`` (one-line ValueError)."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"corrupt config {source}: format version must be a positive integer, got {version!r}")
    if version > EXPORT_VERSION:
        raise ValueError(f"{source}: format {version} is newer than this library's {EXPORT_VERSION}; upgrade sciddpm")
    if version < EXPORT_VERSION:
        raise ValueError(f"{source}: exported by sciddpm format {version}; re-export it with this version (format "
                         f"{EXPORT_VERSION} changed the backbones' time conditioning, so retrain and export again)")


def _domain_for(name: str, spec: str | None) -> type[Domain]:
    """The domain class by registered/entry-point name, else by the ``package.module:Class`` saved in the export."""
    try:
        return domain_class(name)
    except ValueError:
        if not spec:
            raise
        return domain_class(spec)


def _build(domain_cls: type[Domain], options: dict, domain_tensors: dict[str, Tensor], backbone: dict,
           net_state: dict[str, Tensor], source: Path, schedule: NoiseSchedule) -> tuple[Domain, nn.Module]:
    domain = domain_cls(options)
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
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"corrupt config {cfg_file}: {str(exc).splitlines()[0]}") from None
    check_version(config.get("version"), cfg_file)
    check_keys(config, EXPORT_KEYS + EXPORT_OPTIONAL_KEYS, "export", str(cfg_file))
    try:
        missing = [k for k in EXPORT_KEYS if k not in config]
        if missing:
            raise ValueError(f"missing keys {missing}")
        if not isinstance(config["train_config"], dict):
            raise ValueError("train_config must be a mapping")
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

    train_config = config_from_dict(config["train_config"], f"{cfg_file} train_config")
    domain_cls = _domain_for(config["domain"], config.get("domain_class"))
    try:
        domain, net = _build(domain_cls, config["domain_options"], part("domain."), config["backbone"],
                             part("net."), weights, schedule)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: export does not match its domain ({exc})") from None
    return DiffusionModel(domain, net, schedule, config["parameterization"], asdict(train_config), part("variance."))


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
    domain, net = _build(domain_cls, options, dom, cfg.backbone, net_state, path, schedule)
    return DiffusionModel(domain, net, schedule, cfg.parameterization, asdict(cfg))


__all__ = ["export_model", "load", "save_variances", "check_version", "EXPORT_FORMAT", "EXPORT_VERSION"]
