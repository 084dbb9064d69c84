"""``check_domain``: the contract test a domain author runs in their own test suite.

A :class:`~sciddpm.domain.Domain` is correct when the engine, the samplers and an exported model can use it
without knowing anything about it. ``check_domain(domain)`` exercises that contract on a tiny backbone in a few
seconds on one CPU thread:

1. ``sample_space``: ``sample_space(n, generator, conditions)`` gives a space of n samples whose prior draw is
   finite and whose shape is what the backbone returns for it (with ``network_condition(space)``, and with
   ``null_condition(space)`` where the domain has an unconditional mode);
2. ``data_batch``: a collated training batch (``train_dataset`` → ``collate`` → ``space_for``/``state_from``)
   lies in its space, the network accepts it, ``network_condition`` gives the same keywords for data and for
   sampled spaces, and ``training_condition``'s keywords are ones the network accepts;
3. ``conditions``: each given condition set is carried by the space (``sample_space`` built twice from the same
   seed gives equal spaces; different condition sets give different spaces; ``space.to`` keeps the condition),
   and ``check_conditions`` refuses an unknown name with a one-line ValueError;
4. ``determinism``: ``DiffusionModel.sample`` with one seed gives identical samples twice, another seed different ones;
5. ``export_load``: export → ``sciddpm.load`` → sample equals sampling the in-memory model, condition by condition;
6. ``sampling_state``: sampling condition sets A then B, or B then A, from one domain object gives the same
   samples, the same ``write_samples`` files and ``evaluate`` metrics for each, and leaves the domain's
   attributes the same (the domain keeps no sampling state: everything travels in ``SamplerOutput.space``);
7. ``equivariance`` (with ``group_action``): f(g·x) = g·f(x) for the network f, within tolerance
   (numerical equivariance test in the style of e3nn; Geiger & Smidt 2022);
8. ``outputs``: ``write_samples`` and ``evaluate`` accept the sampled ``SamplerOutput.space``.

A failed check raises :class:`DomainCheckError` (an ``AssertionError``) whose one line starts with
``check_domain[<check>]``; bad arguments to ``check_domain`` itself are a ``ValueError``.
"""
from __future__ import annotations

import inspect
import math
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .domain import Domain, domain_class
from .samplers import SamplerOutput, get_sampler, prior_sample, time_grid
from .schedules import NoiseSchedule, schedule_from_config
from .spaces import Space

#: ``group_action(x, space) -> x'``: one fixed group element g acting on a state (applied to the network's input
#: and to its output, so it must be deterministic).
GroupAction = Callable[[Tensor, Space], Tensor]
#: A name ``check_conditions`` must refuse.
UNKNOWN_CONDITION = "__check_domain_unknown__"


class DomainCheckError(AssertionError):
    """A domain broke its contract; the message is one line ``check_domain[<check>]: <what failed>``."""


@contextmanager
def registered_domains(*classes: type[Domain]) -> Iterator[None]:
    """Register Domain classes under their ``name`` for the duration of a with-block (``sciddpm.load`` of an export
    finds a domain by name), then restore the registry as it was: test domains do not leak into the CLI's list."""
    from . import domain as registry

    before = dict(registry._DOMAINS)
    try:
        for cls in classes:
            registry.register_domain(cls)
        yield
    finally:
        registry._DOMAINS.clear()
        registry._DOMAINS.update(before)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(check: str, message: str) -> None:
    raise DomainCheckError(f"check_domain[{check}]: {_one_line(message)}")


@contextmanager
def _checking(check: str) -> Iterator[None]:
    """Run one check: an exception raised by the domain becomes a one-line DomainCheckError naming the check."""
    try:
        yield
    except DomainCheckError:
        raise
    except Exception as exc:  # the domain's own error, whatever its type: name the check that hit it
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DomainCheckError(f"check_domain[{check}]: {type(exc).__name__}: {_one_line(first)}") from exc


def _same(a: Any, b: Any) -> bool:
    """Exact equality of condition values (tensors: same shape, dtype and values; NaN equal to NaN)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype):
            return False
        a, b = a.detach().cpu(), b.detach().cpu()
        return bool(torch.equal(a, b) or a.is_floating_point() and ((a == b) | (a.isnan() & b.isnan())).all())
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


def same_space(a: Space, b: Space) -> bool:
    """True when two spaces describe the same batch: type, shape, layout (``element_owner``) and condition."""
    return (type(a) is type(b) and tuple(a.shape) == tuple(b.shape)
            and bool(torch.equal(a.element_owner().cpu(), b.element_owner().cpu()))
            and _same(dict(a.condition), dict(b.condition)))


def _accepted_keywords(net: nn.Module) -> set[str] | None:
    """The keyword names ``net.forward`` takes after (x_t, t); None when it takes ``**kwargs``."""
    params = list(inspect.signature(net.forward).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params[2:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _mid_time(schedule: NoiseSchedule, n: int) -> Tensor:
    """[n] float64: the middle of a two-interval grid (an integer step for a discrete schedule)."""
    return time_grid(schedule, 2)[1].expand(n).clone()


@torch.no_grad()
def _network_output(check: str, net: nn.Module, x: Tensor, t: Tensor, space: Space, condition: dict[str, Any],
                    what: str) -> Tensor:
    """net(x, t, **condition), checked: a tensor of the space's shape, finite."""
    out = net(x, t, **condition)
    if not isinstance(out, Tensor) or tuple(out.shape) != tuple(space.shape):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        _fail(check, f"backbone output shape {shape} disagrees with the space shape {tuple(space.shape)} ({what})")
    if not torch.isfinite(out).all():
        _fail(check, f"backbone output is not finite ({what})")
    return out


def _instance(domain: Domain | type[Domain] | str, options: dict[str, Any] | None) -> Domain:
    if isinstance(domain, Domain):
        if options is not None:
            raise ValueError("check_domain: options are for a domain class or name; a Domain object has its own")
        return domain
    if isinstance(domain, str):
        domain = domain_class(domain)
    if not (isinstance(domain, type) and issubclass(domain, Domain)):
        raise ValueError(f"check_domain: expected a Domain, a Domain class or a registered name, got {domain!r}")
    return domain(options)


def check_domain(domain: Domain | type[Domain] | str, *, options: dict[str, Any] | None = None,
                 backbone: dict[str, Any] | None = None, conditions: Sequence[dict[str, Any]] = (),
                 group_action: GroupAction | None = None, n: int = 4, steps: int = 3, sampler: str = "ddim",
                 tmp_dir: str | Path | None = None, seed: int = 0, tolerance: float = 1e-4,
                 evaluate: bool = True) -> dict[str, Any]:
    """Check that ``domain`` keeps the Domain contract (the module docstring lists the checks); return a report.

    ``domain``: a Domain object, class or registered name (``options`` build the latter two). ``backbone``: a small
    backbone config (``build_backbone(backbone, schedule)``) so that the checks run in seconds on a CPU; its
    untrained output must depend on its input (turn off zero-initialised output layers), else conditions and
    equivariance cannot be seen. ``conditions``: condition sets for ``sample_space`` (pairwise different in
    effect, e.g. ``[{"y": 3}, {"y": [0, 1, 2, 3]}]``); none: the domain's defaults. ``group_action(x, space)``: one
    fixed group element g; the network f must satisfy max|f(g·x) − g·f(x)| ≤ tolerance·(1 + max|f(x)|) at a
    prior sample (Geiger & Smidt 2022, e3nn's numerical equivariance test). ``n`` samples, ``steps`` steps of
    ``sampler`` (seeds ``seed`` and ``seed + 1``); export → load must reproduce the in-memory samples to within
    ``tolerance``·(1 + max|x|). ``evaluate``: also compare ``evaluate`` metrics in the no-sampling-state check
    (``write_samples``/``evaluate`` on the sampled space run in any case). Files go to ``tmp_dir`` (default: a
    temporary folder, removed afterwards).

    Returns ``{"domain", "checks": {check: details}, "seconds"}``. A broken contract raises
    :class:`DomainCheckError` (an AssertionError) with one line ``check_domain[<check>]: …``.
    """
    if n < 2:
        raise ValueError(f"check_domain: n must be >= 2 (a batch of one cannot show per-sample conditions), got {n}")
    if steps < 1:
        raise ValueError(f"check_domain: steps must be >= 1, got {steps}")
    if tolerance <= 0:
        raise ValueError(f"check_domain: tolerance must be > 0, got {tolerance}")
    if isinstance(conditions, dict) or not all(isinstance(c, dict) for c in conditions):
        raise ValueError("check_domain: conditions must be a sequence of dicts (condition sets), e.g. [{'y': 3}]")
    get_sampler(sampler)  # ValueError naming the valid samplers
    start = time.perf_counter()
    domain = _instance(domain, options)
    folder = tempfile.TemporaryDirectory(prefix="check_domain_") if tmp_dir is None else nullcontext(str(tmp_dir))
    with folder as tmp:
        return _run(domain, dict(backbone or {}), list(conditions) or [{}], group_action, n, steps, sampler,
                    Path(tmp), seed, tolerance, evaluate, start)


def _run(domain: Domain, backbone: dict[str, Any], conditions: list[dict[str, Any]], group_action: GroupAction | None,
         n: int, steps: int, sampler: str, tmp: Path, seed: int, tol: float, evaluate: bool,
         start: float) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    with _checking("data_batch"):
        dataset = domain.train_dataset(domain.options)  # the engine's order: data (statistics) before the backbone
    with _checking("sample_space"):
        schedule = schedule_from_config(domain.default_schedule)
        net = domain.build_backbone(backbone, schedule).eval()
    checks["sample_space"] = _check_sample_space(domain, net, schedule, conditions, n, seed)
    checks["data_batch"] = _check_data_batch(domain, net, schedule, dataset, conditions[0], n, seed)
    checks["conditions"] = _check_conditions(domain, conditions, n, seed)
    with _checking("export_load"):
        model, loaded = export_and_load(domain, backbone, tmp / "export")
    checks["determinism"] = _check_determinism(model, conditions[0], n, steps, sampler, seed)
    checks["export_load"] = _check_export(model, loaded, conditions, n, steps, sampler, seed, tol)
    checks["sampling_state"] = _check_sampling_state(model, conditions, n, steps, sampler, seed, tmp, evaluate)
    if group_action is not None:
        checks["equivariance"] = _check_equivariance(domain, model.net, schedule, group_action, conditions[0], n,
                                                     seed, tol)
    checks["outputs"] = _check_outputs(model, conditions[0], n, steps, sampler, seed, tmp)
    return {"domain": domain.name, "checks": checks, "seconds": time.perf_counter() - start}


def export_and_load(domain: Domain, backbone: dict[str, Any], path: Path) -> tuple[Any, Any]:
    """(in-memory ``DiffusionModel``, the same model exported to ``path`` and read back by ``sciddpm.load``).

    The model is built as the engine builds it (validated ``TrainConfig``, the domain's default schedule, its
    ``build_backbone``; untrained weights, which is all the round trip needs), without Lightning, and written with
    ``sciddpm.export.export_model``."""
    from .config import config_from_dict
    from .export import export_model, load
    from .model import DiffusionModel
    from .schedules import schedule_from_config

    cfg = config_from_dict({"domain": domain.name, "data": dict(domain.options), "backbone": dict(backbone)},
                           "check_domain config")
    schedule = schedule_from_config(cfg.schedule or domain.default_schedule)
    net = domain.build_backbone(cfg.backbone, schedule).eval()
    model = DiffusionModel(domain, net, schedule, cfg.parameterization, asdict(cfg))
    export_model(model, path)
    return model, load(path)


def _prior(domain: Domain, schedule: NoiseSchedule, conditions: dict[str, Any], n: int,
           seed: int) -> tuple[Space, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    space = domain.sample_space(n, gen, conditions)
    return space, prior_sample(schedule, space, gen, torch.float32)


def _check_sample_space(domain: Domain, net: nn.Module, schedule: NoiseSchedule, conditions: list[dict[str, Any]],
                        n: int, seed: int) -> dict[str, Any]:
    check, shapes = "sample_space", []
    with _checking(check):
        for i, cond in enumerate(conditions):
            space, x_T = _prior(domain, schedule, cond, n, seed)
            if not isinstance(space, Space):
                _fail(check, f"sample_space returned {type(space).__name__}, not a Space (condition set #{i})")
            if space.batch_size != n:
                _fail(check, f"sample_space({n}) has batch size {space.batch_size} (condition set #{i})")
            if tuple(x_T.shape) != tuple(space.shape) or not torch.isfinite(x_T).all():
                _fail(check, f"prior sample of shape {tuple(x_T.shape)} is not a finite state of the space "
                             f"{tuple(space.shape)} (condition set #{i})")
            out = _network_output(check, net, x_T, _mid_time(schedule, n), space, domain.network_condition(space),
                                  f"prior sample, condition set #{i}")
            if not out.abs().max() > 0:
                _fail(check, "backbone output is identically zero: pass a backbone config without zero-initialised "
                             "output layers so the checks can see conditions and symmetries")
            null = domain.null_condition(space)
            if null is not None:
                _network_output(check, net, x_T, _mid_time(schedule, n), space, null,
                                f"null_condition, condition set #{i}")
            shapes.append(tuple(space.shape))
    return {"shapes": shapes}


def _check_data_batch(domain: Domain, net: nn.Module, schedule: NoiseSchedule, dataset: Any,
                      conditions: dict[str, Any], n: int, seed: int) -> dict[str, Any]:
    from .objectives import forward_noise

    check = "data_batch"
    with _checking(check):
        if len(dataset) < 1:
            _fail(check, "train_dataset is empty")
        batch = domain.collate([dataset[i] for i in range(min(n, len(dataset)))])
        space, x0 = domain.space_for(batch), domain.state_from(batch)
        if tuple(x0.shape) != tuple(space.shape):
            _fail(check, f"state_from(batch) has shape {tuple(x0.shape)} but space_for(batch) has {tuple(space.shape)}")
        if not torch.isfinite(x0).all():
            _fail(check, "state_from(batch) is not finite")
        off = float((space.project(x0) - x0).abs().max())
        if off > 1e-4 * (1.0 + float(x0.abs().max())):
            _fail(check, f"the data state is not in its space: project(x0) moves it by {off:.3g}")
        gen = torch.Generator().manual_seed(seed)
        t = _mid_time(schedule, space.batch_size)
        x_t, _ = forward_noise(schedule, space, x0, t, generator=gen)
        cond = domain.network_condition(space)
        _network_output(check, net, x_t, t, space, cond, "data batch")
        sampled = domain.network_condition(domain.sample_space(n, torch.Generator().manual_seed(seed), conditions))
        if set(cond) != set(sampled):
            _fail(check, f"network_condition gives keywords {sorted(cond)} for a data batch but {sorted(sampled)} "
                         "for a sampled space")
        train = domain.training_condition(space, torch.Generator().manual_seed(seed))
        accepted = _accepted_keywords(net)
        if accepted is not None and set(train) - accepted:
            _fail(check, f"training_condition keyword {sorted(set(train) - accepted)[0]!r} is not an input of the "
                         f"network (it takes {sorted(accepted)})")
        _network_output(check, net, x_t, t, space, train, "training_condition")
    return {"batch_shape": tuple(space.shape), "network_keywords": sorted(cond), "training_keywords": sorted(train)}


def _check_conditions(domain: Domain, conditions: list[dict[str, Any]], n: int, seed: int) -> dict[str, Any]:
    check = "conditions"
    with _checking(check):
        spaces = []
        for i, cond in enumerate(conditions):
            a = domain.sample_space(n, torch.Generator().manual_seed(seed), cond)
            b = domain.sample_space(n, torch.Generator().manual_seed(seed), cond)
            if not same_space(a, b):
                _fail(check, f"sample_space with one seed and condition set #{i} gives two different spaces")
            if not same_space(a, a.to("cpu")):
                _fail(check, f"space.to('cpu') changes the space of condition set #{i} (a condition is lost)")
            spaces.append(a)
        for i in range(len(spaces)):
            for j in range(i + 1, len(spaces)):
                if same_space(spaces[i], spaces[j]):
                    _fail(check, f"condition sets #{i} and #{j} give the same space: a condition is not carried by "
                                 "space.condition (or the sets do not differ)")
    try:
        domain.check_conditions({UNKNOWN_CONDITION: 0})
    except ValueError as exc:
        if len(str(exc).splitlines()) != 1 or UNKNOWN_CONDITION not in str(exc):
            _fail(check, f"check_conditions' error for an unknown condition is not one line naming it: {exc!r}")
    except Exception as exc:
        _fail(check, f"check_conditions raised {type(exc).__name__}, not ValueError, for an unknown condition")
    else:
        _fail(check, f"check_conditions accepted the unknown condition {UNKNOWN_CONDITION!r}")
    try:
        domain.sample_space(n, torch.Generator().manual_seed(seed), {UNKNOWN_CONDITION: 0})
    except ValueError:
        pass
    else:
        _fail(check, f"sample_space accepted the unknown condition {UNKNOWN_CONDITION!r} (call check_conditions)")
    return {"condition_sets": len(conditions), "keys": [sorted(s.condition) for s in spaces]}


def _sample(model: Any, conditions: dict[str, Any], n: int, steps: int, sampler: str, seed: int) -> SamplerOutput:
    return model.sample(n, sampler=sampler, steps=steps, seed=seed, conditions=conditions)


def _check_determinism(model: Any, conditions: dict[str, Any], n: int, steps: int, sampler: str,
                       seed: int) -> dict[str, Any]:
    check = "determinism"
    with _checking(check):
        a, b = (_sample(model, conditions, n, steps, sampler, seed) for _ in range(2))
        if not (a.sample.shape == b.sample.shape and torch.equal(a.sample, b.sample)):
            _fail(check, f"two samples with seed {seed} differ (randomness not drawn from the seeded generator)")
        if not torch.isfinite(a.sample).all():
            _fail(check, f"{sampler} samples are not finite")
        c = _sample(model, conditions, n, steps, sampler, seed + 1)
        if c.sample.shape == a.sample.shape and torch.allclose(c.sample, a.sample):
            _fail(check, f"seeds {seed} and {seed + 1} give the same samples (the seed is ignored)")
    return {"seeds": [seed, seed + 1], "sampler": sampler, "steps": steps, "nfe": a.nfe}


def _check_export(model: Any, loaded: Any, conditions: list[dict[str, Any]], n: int, steps: int, sampler: str,
                  seed: int, tol: float) -> dict[str, Any]:
    check, worst = "export_load", 0.0
    with _checking(check):
        for i, cond in enumerate(conditions):
            a = _sample(model, cond, n, steps, sampler, seed)
            b = _sample(loaded, cond, n, steps, sampler, seed)
            if not same_space(a.space, b.space):
                _fail(check, f"the loaded model builds a different space for condition set #{i} (domain statistics "
                             "missing from state_tensors?)")
            err = float((a.sample - b.sample).abs().max())
            if not err <= tol * (1.0 + float(a.sample.abs().max())):
                _fail(check, f"samples of the loaded model differ from the in-memory model's by {err:.3g} "
                             f"(condition set #{i})")
            worst = max(worst, err)
    return {"max_abs_difference": worst}


def _order_outputs(model: Any, first: tuple[int, dict[str, Any]], second: tuple[int, dict[str, Any]], n: int,
                   steps: int, sampler: str, seed: int, folder: Path, evaluate: bool) -> dict[int, tuple]:
    """Sample ``first`` then ``second`` (each (index, conditions), seeds seed + index); then write and score
    each: {index: (samples, file bytes, metrics)}."""
    outs = {i: _sample(model, cond, n, steps, sampler, seed + i) for i, cond in (first, second)}
    folder.mkdir(parents=True, exist_ok=True)
    result = {}
    for i, out in outs.items():
        path = folder / f"set{i}{getattr(model.domain, 'sample_suffix', '.csv')}"
        model.domain.write_samples(path, out.sample, out.space)
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith(f"set{i}")}
        metrics = model.domain.evaluate(out.sample, out.space) if evaluate else {}
        result[i] = (out.sample, files, metrics)
    return result


class _Snapshot:
    """A domain attribute as the no-sampling-state check compares it: tensors, arrays, numbers and strings by value,
    containers item by item, any other object by identity (a lazily built cache keeps its identity)."""

    def __init__(self, value: Any, depth: int = 0) -> None:
        if isinstance(value, dict) and depth < 4:
            self.kind, self.value = "dict", {k: _Snapshot(v, depth + 1) for k, v in value.items()}
        elif isinstance(value, (list, tuple)) and depth < 4:
            self.kind, self.value = type(value).__name__, [_Snapshot(v, depth + 1) for v in value]
        elif isinstance(value, Tensor):
            self.kind, self.value = "value", value.detach().cpu().clone()
        elif isinstance(value, np.ndarray):
            self.kind, self.value = "array", value.copy()
        elif value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
            self.kind, self.value = "value", value
        else:
            self.kind, self.value = "object", value  # kept alive, so identity is meaningful

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Snapshot) or self.kind != other.kind:
            return False
        if self.kind == "object":
            return self.value is other.value
        if self.kind == "array":
            return self.value.shape == other.value.shape and bool(np.array_equal(self.value, other.value))
        return _same(self.value, other.value) if self.kind == "value" else self.value == other.value

    __hash__ = None  # type: ignore[assignment]


def _attributes(domain: Domain) -> dict[str, _Snapshot]:
    return {k: _Snapshot(v) for k, v in vars(domain).items()}


def _changed_attribute(before: dict[str, _Snapshot], after: dict[str, _Snapshot]) -> str | None:
    """The first attribute (by name) that appeared, disappeared or changed; None if none did."""
    return next((k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)), None)


def _check_sampling_state(model: Any, conditions: list[dict[str, Any]], n: int, steps: int, sampler: str, seed: int,
                          tmp: Path, evaluate: bool) -> dict[str, Any]:
    """Sample (and write, and score) A then B, then B then A: each set's results must not depend on the order, and
    the domain's attributes must be the same after either order (what changes with the last sample is state)."""
    check = "sampling_state"
    sets = conditions if len(conditions) > 1 else conditions * 2  # one set: two seeds of it
    pairs = [(i, i + 1) for i in range(len(sets) - 1)]
    with _checking(check):
        for i, j in pairs:
            ab = _order_outputs(model, (i, sets[i]), (j, sets[j]), n, steps, sampler, seed, tmp / f"order_{i}{j}",
                                evaluate)
            state = _attributes(model.domain)
            ba = _order_outputs(model, (j, sets[j]), (i, sets[i]), n, steps, sampler, seed, tmp / f"order_{j}{i}",
                                evaluate)
            for k in (i, j):
                (xa, fa, ma), (xb, fb, mb) = ab[k], ba[k]
                if not (xa.shape == xb.shape and torch.equal(xa, xb)):
                    _fail(check, f"condition set #{k} gives different samples when sampled before or after set "
                                 f"#{i + j - k}: the domain keeps sampling state")
                if fa != fb:
                    _fail(check, f"write_samples of condition set #{k} writes different files depending on what was "
                                 "sampled last: the domain keeps sampling state (use the space's condition)")
                if not _same(ma, mb):
                    _fail(check, f"evaluate of condition set #{k} gives different metrics depending on what was "
                                 "sampled last: the domain keeps sampling state (use the space's condition)")
            changed = _changed_attribute(state, _attributes(model.domain))
            if changed is not None:
                _fail(check, f"domain attribute {changed!r} depends on which condition set was sampled last (#{j} or "
                             f"#{i}): the domain keeps sampling state (carry it in the space's condition)")
    return {"pairs": pairs, "compared": ["samples", "write_samples"] + (["evaluate"] if evaluate else []) +
            ["domain attributes"]}


def _check_equivariance(domain: Domain, net: nn.Module, schedule: NoiseSchedule, action: GroupAction,
                        conditions: dict[str, Any], n: int, seed: int, tol: float) -> dict[str, Any]:
    check = "equivariance"
    with _checking(check):
        space, x = _prior(domain, schedule, conditions, n, seed)
        t, cond = _mid_time(schedule, n), domain.network_condition(space)
        gx = action(x, space)
        if not isinstance(gx, Tensor) or gx.shape != x.shape:
            _fail(check, "group_action(x, space) must return a tensor of the state's shape")
        if torch.allclose(gx, x):
            _fail(check, "group_action leaves the prior sample unchanged: nothing would be checked")
        out = _network_output(check, net, x, t, space, cond, "equivariance input")
        f_gx = _network_output(check, net, gx, t, space, cond, "transformed input")
        g_fx = action(out, space)
        err, scale = float((f_gx - g_fx).abs().max()), 1.0 + float(out.abs().max())
        if not err <= tol * scale:
            _fail(check, f"the network is not equivariant under group_action: max |f(g·x) − g·f(x)| = {err:.3g} > "
                         f"{tol:g}·(1 + max|f(x)|) = {tol * scale:.3g}")
    return {"max_abs_error": err, "bound": tol * scale}


def _check_outputs(model: Any, conditions: dict[str, Any], n: int, steps: int, sampler: str, seed: int,
                   tmp: Path) -> dict[str, Any]:
    check = "outputs"
    with _checking(check):
        out = _sample(model, conditions, n, steps, sampler, seed)
        path = tmp / f"samples{getattr(model.domain, 'sample_suffix', '.csv')}"
        model.domain.write_samples(path, out.sample, out.space)
        if not path.is_file():
            _fail(check, f"write_samples wrote no file at {path.name}")
        metrics = model.domain.evaluate(out.sample, out.space)
        if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
            _fail(check, f"evaluate must return a dict of numbers, got {metrics!r}")
    return {"metrics": {k: float(v) for k, v in metrics.items()}}


__all__ = ["check_domain", "DomainCheckError", "GroupAction", "export_and_load", "registered_domains", "same_space"]
