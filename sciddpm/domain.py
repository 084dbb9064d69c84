"""The Domain contract: what a modality gives the engine (data, backbone, state space, I/O, metrics).

The core never imports a domain and names none. A package registers a domain through a Python entry point of
the ``sciddpm.domains`` group (``name = "package.module:DomainClass"``; this project's own domains are registered
that way in its pyproject.toml), or a user names the class directly (``--domain package.module:DomainClass``);
``domain_class`` imports it on first use. ``@register_domain`` registers a class already imported. The engine
(``sciddpm.training``) then only talks to the object through this contract.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .schedules import NoiseSchedule
from .spaces import Space


class Domain(ABC):
    """One modality. ``options`` are the domain's own settings (``TrainConfig.data``), e.g. a data path.

    Life cycle: the engine calls ``train_dataset`` (which may fit normalisation statistics) before
    ``build_backbone``; a loaded model instead calls ``load_state_tensors`` with what ``state_tensors``
    returned at export time, so that sampling and writing samples need no data.
    """

    #: Registry name, used by ``--domain`` and stored in exported configs.
    name: str = ""
    #: The noise schedule used when a training config names none (``schedules.schedule_from_config`` form).
    default_schedule: dict[str, Any] = {"type": "linear", "num_steps": 1000}

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    @abstractmethod
    def build_backbone(self, config: dict[str, Any], schedule: NoiseSchedule | None = None) -> nn.Module:
        """The network, called as ``net(x_t, t, **condition)`` with t float64 [B] in the schedule's units.

        ``schedule`` is the model's noise schedule (required: a backbone raises ValueError for None, never assumes a
        default); a backbone reads t only through ``schedule.c_noise(t)``, never through a guessed time scale."""

    @abstractmethod
    def space_for(self, batch: Any) -> Space:
        """The state space bound to a collated data batch, carrying the batch's own conditions (``Space.condition``:
        its labels, low-resolution images, property targets …) exactly as recorded in the data."""

    @abstractmethod
    def state_from(self, batch: Any) -> Tensor:
        """The clean state x₀ of a collated data batch (a tensor in ``space_for(batch)``)."""

    def network_condition(self, space: Space) -> dict[str, Any]:
        """The network's keyword inputs for states in ``space``: ``net(x_t, t, **network_condition(space))``.

        One path for training, Γ estimation, likelihoods and sampling: everything comes from the space (its layout
        and its ``condition``). Default: the space's condition as it is; domains whose condition also holds
        non-network entries (evaluation references) or whose network needs layout tensors override this."""
        return dict(space.condition)

    def training_condition(self, space: Space, generator: torch.Generator | None = None) -> dict[str, Any]:
        """The network inputs used by the training loss; default ``network_condition``. A domain that trains an
        unconditional mode alongside (classifier-free guidance's condition dropout) replaces conditions here."""
        return self.network_condition(space)

    def null_condition(self, space: Space) -> dict[str, Any] | None:
        """The network inputs of the *unconditional* model for ``space`` (conditions replaced by the null token), as
        classifier-free guidance needs (Ho & Salimans 2021); None where the domain has no unconditional mode."""
        return None

    #: Optional per-channel data box (a, b) for Analytic-DPM's upper bound, and the data resolution that caps
    #: the last reverse step (Bao et al. 2022); None where the domain has no such bound.
    data_range: tuple[Any, Any] | None = None
    resolution: float | None = None
    #: True where every sample must lie in the scalar ``data_range`` (pixels): ``DiffusionModel.sample`` then gives
    #: samplers that threshold x̂₀ (ddpm, ddim, DPM-Solver++, UniPC) ``clip_x0 = data_range`` unless the caller
    #: passes its own (``clip_x0=None`` turns it off; ``dynamic_threshold=p`` makes it Imagen's dynamic one).
    threshold_x0: bool = False
    #: The file extensions ``write_samples`` writes, each its own format (the CLI checks an output path against
    #: them before sampling); None: the domain does not declare them (unchecked).
    sample_suffixes: tuple[str, ...] | None = None
    #: The fewest samples ``evaluate`` accepts (2 where a metric needs a standard deviation or a covariance).
    min_eval_samples: int = 1

    def check_eval_count(self, n: int) -> None:
        """One-line ValueError when ``n`` samples are too few for ``evaluate``'s metrics (``min_eval_samples``)."""
        if n < self.min_eval_samples:
            raise ValueError(f"domain {self.name!r}: evaluate needs at least {self.min_eval_samples} samples "
                             f"(its metrics include spreads of the samples), got n={n}")

    @abstractmethod
    def train_dataset(self, options: dict[str, Any]) -> Dataset:
        """The training set (ValueError for a missing or malformed data path, or non-finite data)."""

    @abstractmethod
    def val_dataset(self, options: dict[str, Any]) -> Dataset:
        """The held-out set used by ``evaluate``."""

    def collate(self, items: list[Any]) -> Any:
        """Collate dataset items into a batch (default: stack tensors)."""
        return torch.utils.data.default_collate(items)

    def split_batch(self, batch: Any, parts: int) -> list[Any]:
        """Split a batch into ``parts`` interleaved shards (rows k::parts); used for device-count-invariant noise.
        A tensor, or a tuple/list of tensors with a common leading (sample) axis, e.g. (x₀, labels); other batch
        types (graphs) need the domain's own split."""
        if isinstance(batch, Tensor):
            return [batch[k::parts] for k in range(parts)]
        if isinstance(batch, (tuple, list)) and batch and all(isinstance(b, Tensor) for b in batch) \
                and len({len(b) for b in batch}) == 1:
            return [type(batch)(b[k::parts] for b in batch) for k in range(parts)]
        raise ValueError(f"domain {self.name!r} cannot split its batches; set noise_shards: 1")

    @abstractmethod
    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> Space:
        """The space of ``n`` new samples, carrying their conditions (``Space.condition``).

        ``conditions`` are user-given per-sample conditions (class labels, low-resolution inputs, property targets,
        temperatures …; names and forms are the domain's, documented on the domain class), a scalar meaning the
        same for every sample; ValueError naming an unknown or malformed one. What is not given is drawn from
        ``generator`` or set by the domain's defaults. The domain keeps no sampling state: whatever ``evaluate`` and
        ``write_samples`` need later travels in the returned space."""

    def condition_keys(self) -> tuple[str, ...]:
        """The names ``sample_space`` accepts in ``conditions`` (none by default)."""
        return ()

    def check_conditions(self, conditions: dict[str, Any] | None) -> dict[str, Any]:
        """``conditions`` as a dict, refusing names outside ``condition_keys()`` with a one-line ValueError."""
        conditions = dict(conditions or {})
        unknown = sorted(set(conditions) - set(self.condition_keys()))
        if unknown:
            valid = ", ".join(self.condition_keys()) or "none"
            raise ValueError(f"unknown condition {unknown[0]!r} for domain {self.name!r}; valid conditions: {valid}")
        return conditions

    def data_keys(self) -> tuple[str, ...] | None:
        """The keys this domain reads from ``data:`` (``TrainConfig.data``); the engine refuses others with a
        one-line error listing these. None (default): the domain declares none and its ``data:`` is unchecked."""
        return None

    def backbone_keys(self, config: dict[str, Any]) -> tuple[str, ...] | None:
        """The keys ``build_backbone`` accepts in ``config`` (``backbone:``; may depend on e.g. its ``type``), e.g.
        ``constructor_keys(MyNet, exclude=("features",))``. None (default): unchecked."""
        return None

    def state_tensors(self) -> dict[str, Tensor]:
        """Tensors the domain needs after training (normalisation statistics); saved with the model."""
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what ``state_tensors`` returned."""

    # The three output methods get the samples' ``space`` (``SamplerOutput.space``) where the engine has it: a
    # domain whose states have a variable layout (graphs) decodes them with it; fixed-shape domains ignore it.
    @abstractmethod
    def write_samples(self, path: Path, samples: Tensor, space: Space | None = None) -> None:
        """Write samples in the format that ``path``'s extension names (one of ``sample_suffixes``; another is a
        ValueError), through ``sciddpm.outputs.atomic_path`` so that no half-written file is ever left."""

    @abstractmethod
    def plot_samples(self, path: Path, samples: Tensor, space: Space | None = None) -> None:
        """Draw samples to a PNG (written through ``sciddpm.outputs.atomic_path``)."""

    @abstractmethod
    def evaluate(self, samples: Tensor, space: Space | None = None) -> dict[str, float]:
        """The domain's metrics of generated samples (against its held-out data)."""


_DOMAINS: dict[str, type[Domain]] = {}

#: The entry-point group through which packages (this project's own domains included) register a domain:
#: ``[project.entry-points."sciddpm.domains"] name = "package.module:DomainClass"``.
ENTRY_POINT_GROUP = "sciddpm.domains"


def per_sample_integers(value: Any, n: int, key: str, what: str = "values", items: str = "samples") -> Tensor:
    """A condition of one integer per sample, long [n], from one int (all n samples) or n ints (a list, array or
    tensor), e.g. class labels or atom counts given to ``sample_space(n, conditions={key: value})``.

    Non-integral numbers and a count other than 1 or n are a one-line ValueError naming ``key`` (``what`` and
    ``items`` word the count error: "condition 'y' holds 3 labels for 4 samples").
    """
    ints = torch.as_tensor(value)
    if ints.is_floating_point() and bool((ints != ints.round()).any()):
        raise ValueError(f"condition {key!r} must hold integers, got {value!r}")
    ints = ints.long().reshape(-1)
    ints = ints.expand(n).clone() if ints.numel() == 1 else ints
    if ints.numel() != n:
        raise ValueError(f"condition {key!r} holds {ints.numel()} {what} for {n} {items}")
    return ints


def register_domain(cls: type[Domain]) -> type[Domain]:
    """Class decorator: register a Domain subclass under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"domain class {cls.__name__} has no name")
    _DOMAINS[cls.name] = cls
    return cls


def _entry_points() -> dict[str, Any]:
    """The installed ``sciddpm.domains`` entry points by name (read through ``importlib.metadata``, nothing imported)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_domains() -> list[str]:
    """Names that are registered or installed as ``sciddpm.domains`` entry points."""
    return sorted(set(_DOMAINS) | set(_entry_points()))


def domain_spec(cls: type[Domain]) -> str:
    """``package.module:Class`` of a domain class, as ``--domain`` accepts it (saved in exports)."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _load_object(spec: str, what: str) -> type[Domain]:
    """Import ``package.module:Class`` and check it is a Domain subclass; ValueError naming ``spec`` otherwise."""
    import importlib

    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what} {spec!r} cannot be imported: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, Domain)):
        raise ValueError(f"{what} {spec!r} is not a sciddpm.domain.Domain subclass")
    return obj


def domain_class(spec: str) -> type[Domain]:
    """The Domain class for ``spec``: a registered name, an installed ``sciddpm.domains`` entry point (imported on
    first use, so the core imports no domain at load) or ``package.module:Class``; ValueError listing the known
    domains otherwise."""
    if spec in _DOMAINS:
        return _DOMAINS[spec]
    if ":" in spec:
        cls = _load_object(spec, "domain class")
        _DOMAINS.setdefault(cls.name or spec, cls)
        return cls
    entry = _entry_points().get(spec)
    if entry is None:
        raise ValueError(f"unknown domain {spec!r}; known domains: {', '.join(known_domains()) or 'none'} "
                         f"(or give package.module:Class)")
    cls = _load_object(entry.value, f"entry point {spec!r} ({ENTRY_POINT_GROUP})")
    if cls.name != spec:
        raise ValueError(f"entry point {spec!r} ({ENTRY_POINT_GROUP}) names {entry.value}, whose name is {cls.name!r}")
    _DOMAINS[spec] = cls
    return cls


def get_domain(name: str) -> type[Domain]:
    """The Domain class called ``name`` (same as ``domain_class``)."""
    return domain_class(name)


def constructor_keys(cls: type, exclude: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The keyword parameters of ``cls.__init__`` minus ``exclude`` (those the domain fills itself) and minus
    ``schedule`` (the engine passes the model's schedule): the ``backbone:`` keys of a domain whose backbone is
    ``cls(**config, schedule=schedule)``."""
    import inspect

    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.name not in ("self", "schedule") and p.name not in exclude
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
