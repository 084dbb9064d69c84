"""Training configs: ``TrainConfig``, read from YAML/TOML/JSON and validated before anything runs.

Kept apart from the engine (``sciddpm.training``, which imports Lightning) so that exports, ``sciddpm.load`` and
the CLI's inference commands read configs without importing the trainer.

Validation is strict and one-line: an unknown key anywhere (top level, ``data:``, ``backbone:``) is a ValueError
that names the key and lists the valid ones; the valid ``data:`` and ``backbone:`` keys belong to the domain
(``Domain.data_keys`` / ``Domain.backbone_keys``). Numbers are accepted as people write them: YAML 1.1 reads
``lr: 1e-3`` as the *string* "1e-3", so numeric strings are converted for numeric fields (``int`` fields take
integral values such as ``1e3`` or ``1_000``); booleans are never numbers.
"""
from __future__ import annotations

import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

from .objectives import PARAMETERIZATIONS, WEIGHTINGS
from .schedules import schedule_from_config


@dataclass
class TrainConfig:
    """Everything a training run needs; ``data`` and ``backbone`` are passed through to the domain.

    ``domain`` is a registered name (an entry point of the ``sciddpm.domains`` group) or ``package.module:Class``;
    there is no default domain."""

    domain: str = ""
    data: dict = field(default_factory=dict)
    backbone: dict = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)  # empty: the domain's ``default_schedule``
    parameterization: str = "eps"
    weighting: str = "simple"
    importance_sampling: bool = False
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    max_steps: int = 1000
    max_time: str | None = None
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    precision: str = "32"
    compile: bool = False  # torch.compile the training network (see compile_network); the EMA stays eager
    seed: int = 0
    shuffle: bool = True
    noise_shards: int = 1
    num_workers: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    validate_every: int = 0  # sample + domain metrics every N steps (0: off)
    validate_sampler: str = "ddpm"
    validate_steps: int = 50
    validate_n: int = 64
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"

    def validate(self) -> "TrainConfig":
        """Range checks that types cannot express; ValueError naming the field."""
        if not self.domain:
            raise ValueError("config field 'domain' is required (a registered domain name or package.module:Class)")
        for name in ("batch_size", "max_steps", "noise_shards", "checkpoint_every", "log_every", "devices", "num_nodes",
                     "validate_steps", "validate_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")
        checks = {"parameterization": PARAMETERIZATIONS, "weighting": WEIGHTINGS, "precision": ("32", "bf16"),
                  "lr_schedule": ("cosine", "constant")}
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config field {name!r} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if self.validate_every < 0:
            raise ValueError(f"config field 'validate_every' must be >= 0, got {self.validate_every}")
        from .samplers import get_sampler

        get_sampler(self.validate_sampler)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"config field 'ema_decay' must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError("config fields 'lr' > 0, 'warmup_steps' >= 0 and 'grad_clip' >= 0 are required")
        if self.schedule:
            schedule_from_config(self.schedule)
        return self


def config_keys() -> tuple[str, ...]:
    """The top-level keys of a training config (the fields of ``TrainConfig``)."""
    return tuple(f.name for f in fields(TrainConfig))


def check_keys(given: Iterable[str], valid: Iterable[str], section: str, source: str) -> None:
    """One-line ValueError for the first key of ``given`` outside ``valid``: "unknown <section> key 'k' in
    <source>; valid keys: a, b, c" (``section``: config, data, backbone, sampler option …)."""
    valid = tuple(valid)
    unknown = [k for k in given if k not in valid]
    if unknown:
        raise ValueError(f"unknown {section} key {unknown[0]!r} in {source}; valid keys: "
                         f"{', '.join(sorted(valid)) or 'none'}")


def as_number(value: Any, kind: type) -> Any:
    """``value`` as an ``int`` or ``float`` where it is one written as people write numbers (``1e-3``, ``1e3``,
    ``1_000``, YAML 1.1's strings for them; integral floats for ints); ``value`` unchanged otherwise (the type
    check then rejects it). Booleans are not numbers."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return value
    if isinstance(value, (int, float)) and math.isfinite(value):
        if kind is float:
            return float(value)
        if kind is int and float(value).is_integer():
            return int(value)
    return value


def _numeric_kind(tp: Any) -> type | None:
    """``int`` or ``float`` if the field type admits one (``float``, ``int | None`` …), else None."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    for kind in (float, int):
        if kind in args:
            return kind
    return None


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or tp)


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A validated TrainConfig from a mapping; ValueError naming an unknown key (with the valid ones) or a
    mistyped field."""
    hints = typing.get_type_hints(TrainConfig)
    check_keys(values, config_keys(), "config", source)
    out: dict[str, Any] = {}
    for key, value in values.items():
        kind = _numeric_kind(hints[key])
        if kind is not None:
            value = as_number(value, kind)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"config field {key!r} in {source} must be a finite number, got {value!r}")
        if not _type_ok(value, hints[key]):
            raise ValueError(f"config field {key!r} in {source} must be {hints[key]}, got {type(value).__name__} {value!r}")
        out[key] = float(value) if hints[key] is float else value
    return TrainConfig(**out).validate()


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML (.yaml/.yml), TOML (.toml) or JSON file; ValueError naming the file otherwise."""
    path = Path(path)
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ValueError(f"config file {path} must end in .yaml, .yml, .json or .toml")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text) or {}
    except Exception as exc:  # tomllib.TOMLDecodeError, yaml.YAMLError
        raise ValueError(f"cannot parse config file {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values")
    return values


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from an optional file plus command-line overrides (overrides win); a key unknown in the file is
    reported against the file."""
    values = read_config_file(path) if path is not None else {}
    check_keys(values, config_keys(), "config", str(path or "flags"))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(values, f"{path} + flags" if path else "flags")


def check_domain_config(cfg: TrainConfig, domain: Any, source: str = "config") -> None:
    """The domain's sections of ``cfg``: ``data:`` keys against ``domain.data_keys()`` and ``backbone:`` keys
    against ``domain.backbone_keys(cfg.backbone)`` (None: the domain declares none, unchecked), and a named
    ``data.path`` that does not exist is an error (never a fallback to bundled data)."""
    data_keys = domain.data_keys()
    if data_keys is not None:
        check_keys(cfg.data, data_keys, "data", f"{source} (domain {domain.name!r})")
    backbone_keys = domain.backbone_keys(cfg.backbone)
    if backbone_keys is not None:
        check_keys(cfg.backbone, backbone_keys, "backbone", f"{source} (domain {domain.name!r})")
    if "path" in cfg.data:
        path = cfg.data["path"]
        if not isinstance(path, (str, Path)) or not str(path):
            raise ValueError(f"data.path in {source} must be a file or folder name, got {path!r}")
        if not Path(path).expanduser().exists():
            raise ValueError(f"data path not found: {path} (data.path in {source})")


__all__ = ["TrainConfig", "as_number", "check_domain_config", "check_keys", "config_from_dict", "config_keys",
           "load_config", "read_config_file"]
