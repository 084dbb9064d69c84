"""``sciddpm.testing.check_domain`` passes on a correct domain and catches each kind of broken one with a one-line
error naming the check.

The toy domain: states x ∈ R³ (a DenseSpace [B, 3]) with a per-sample condition ``shift`` ∈ {0, 1, 2}; its
network f(x, t, shift) = tanh(W x) · (1 + 0.1·shift + t/1000) has no bias, so f is odd in x: f(−x) = −f(x), the
group action used by the equivariance check. Each broken variant changes one thing.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from sciddpm.domain import Domain
from sciddpm.schedules import NoiseSchedule
from sciddpm.spaces import DenseSpace
from sciddpm.testing import DomainCheckError, check_domain, registered_domains, same_space

#: The test domains, registered (for export → load) only while this module's tests run.
LOCAL_DOMAINS: list[type[Domain]] = []


def local_domain(cls: type[Domain]) -> type[Domain]:
    LOCAL_DOMAINS.append(cls)
    return cls


@pytest.fixture(scope="module", autouse=True)
def _registered():
    with registered_domains(*LOCAL_DOMAINS):
        yield


pytestmark = pytest.mark.usefixtures("one_thread")


class ToyNet(nn.Module):
    """f(x, t, shift) = tanh(W x + b) · (1 + 0.1·shift + t/1000); odd in x when b = 0."""

    def __init__(self, features: int = 3, out_features: int | None = None, bias: bool = False,
                 scale: float = 1.0) -> None:
        super().__init__()
        self.lin = nn.Linear(features, out_features or features, bias=bias)
        with torch.no_grad():
            self.lin.weight.mul_(scale)

    def forward(self, x: Tensor, t: Tensor, shift: Tensor | None = None) -> Tensor:
        s = torch.zeros(x.shape[0]) if shift is None else shift.to(x.dtype)
        return torch.tanh(self.lin(x)) * (1 + 0.1 * s[:, None] + t.to(x.dtype)[:, None] / 1000)


@local_domain
class ToyDomain(Domain):
    """A correct domain: everything ``evaluate`` and ``write_samples`` need travels in the space."""

    name = "toy_check"
    net_options: dict[str, Any] = {}

    def _data(self) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(0)
        return torch.randn(16, 3, generator=gen), torch.randint(0, 3, (16,), generator=gen).float()

    def train_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return TensorDataset(*self._data())

    def val_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return TensorDataset(*self._data())

    def collate(self, items: list[Any]) -> tuple[Tensor, Tensor]:
        return torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items])

    def build_backbone(self, config: dict[str, Any], schedule: NoiseSchedule | None = None) -> nn.Module:
        return ToyNet(**{**self.net_options, **config})

    def space_for(self, batch: Any) -> DenseSpace:
        return DenseSpace(batch[0].shape).with_condition({"shift": batch[1]})

    def state_from(self, batch: Any) -> Tensor:
        return batch[0]

    def condition_keys(self) -> tuple[str, ...]:
        return ("shift",)

    def default_shift(self, n: int, generator: torch.Generator | None) -> Tensor:
        return torch.randint(0, 3, (n,), generator=generator).float()

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> DenseSpace:
        given = self.check_conditions(conditions)
        shift = given.get("shift")
        shift = self.default_shift(n, generator) if shift is None else torch.as_tensor(shift).float().expand(n).clone()
        return self.make_space(n).with_condition({"shift": shift})

    def make_space(self, n: int) -> DenseSpace:
        return DenseSpace((n, 3))

    def write_samples(self, path: Path, samples: Tensor, space: Any = None) -> None:
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([["x0", "x1", "x2", "shift"]] + torch.cat(
                [samples, self.shift_of(space)[:, None]], 1).tolist())

    def plot_samples(self, path: Path, samples: Tensor, space: Any = None) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.scatter(samples[:, 0], samples[:, 1], c=self.shift_of(space))
        fig.savefig(path), plt.close(fig)

    def evaluate(self, samples: Tensor, space: Any = None) -> dict[str, float]:
        return {"mean_minus_shift": float((samples.mean(1) - self.shift_of(space)).mean())}

    def shift_of(self, space: Any) -> Tensor:
        return space.condition["shift"]


CONDITIONS = [{"shift": 1.0}, {"shift": [0.0, 1.0, 2.0, 2.0]}]


def negate(x: Tensor, space: Any) -> Tensor:
    """The group element g: x → −x (the toy network is odd in x)."""
    return -x


def fails(domain: Domain, match: str, **kwargs: Any) -> str:
    """check_domain raises a one-line DomainCheckError matching ``match``; returns the message."""
    kwargs.setdefault("conditions", CONDITIONS)
    with pytest.raises(DomainCheckError, match=match) as info:
        check_domain(domain, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith("check_domain[")
    return message


def test_passes_on_a_correct_domain(tmp_path):
    report = check_domain(ToyDomain(), conditions=CONDITIONS, group_action=negate, tmp_dir=tmp_path)
    checks = report["checks"]
    assert list(checks) == ["sample_space", "data_batch", "conditions", "determinism", "export_load",
                            "sampling_state", "equivariance", "outputs"]
    assert checks["sample_space"]["shapes"] == [(4, 3), (4, 3)]
    assert checks["data_batch"]["network_keywords"] == ["shift"]
    assert checks["export_load"]["max_abs_difference"] == 0.0  # same weights, same CPU kernels: bit-identical
    assert checks["equivariance"]["max_abs_error"] <= 1e-6  # tanh is odd to float32 rounding
    assert checks["sampling_state"]["pairs"] == [(0, 1)]
    assert (tmp_path / "samples.csv").is_file() and "mean_minus_shift" in checks["outputs"]["metrics"]
    assert report["seconds"] < 20


def test_accepts_a_class_or_name_and_default_conditions():
    assert check_domain("toy_check", options={})["domain"] == "toy_check"
    assert check_domain(ToyDomain, n=3)["checks"]["sample_space"]["shapes"] == [(3, 3)]


@local_domain
class WrongShapeDomain(ToyDomain):
    name = "toy_check_wrong_shape"
    net_options = {"out_features": 2}


def test_catches_backbone_shape_disagreement():
    fails(WrongShapeDomain(), r"check_domain\[sample_space\]: backbone output shape \(4, 2\) disagrees with the "
                              r"space shape \(4, 3\) \(prior sample, condition set #0\)")


@local_domain
class ZeroNetDomain(ToyDomain):
    name = "toy_check_zero_net"
    net_options = {"scale": 0.0}


def test_catches_a_zero_output_backbone():
    fails(ZeroNetDomain(), r"\[sample_space\]: backbone output is identically zero")


@local_domain
class StatefulEvaluateDomain(ToyDomain):
    """The old images bug: ``sample_space`` remembers the last conditions and ``evaluate`` reads them."""

    name = "toy_check_stateful_evaluate"

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> DenseSpace:
        space = super().sample_space(n, generator, conditions)
        self._last_shift = space.condition["shift"]
        return space

    def evaluate(self, samples: Tensor, space: Any = None) -> dict[str, float]:
        return {"mean_minus_shift": float((samples.mean(1) - self._last_shift).mean())}


@local_domain
class StatefulWriterDomain(StatefulEvaluateDomain):
    name = "toy_check_stateful_writer"

    def shift_of(self, space: Any) -> Tensor:
        return self._last_shift


def test_catches_sampling_state():
    fails(StatefulEvaluateDomain(), r"\[sampling_state\]: evaluate of condition set #0 gives different metrics "
                                    "depending on what was sampled last: the domain keeps sampling state")
    fails(StatefulWriterDomain(), r"\[sampling_state\]: write_samples of condition set #0 writes different files")
    # Without evaluate in the comparison (or with a metric blind to the state) the stored attribute still shows.
    fails(StatefulEvaluateDomain(), r"\[sampling_state\]: domain attribute '_last_shift' depends on which condition "
                                    r"set was sampled last \(#1 or #0\): the domain keeps sampling state",
          evaluate=False)


class GlobalNoiseSpace(DenseSpace):
    """Noise from torch's global generator: the seed passed by the sampler is ignored."""

    def _to(self, device: Any) -> "GlobalNoiseSpace":
        return GlobalNoiseSpace(self.shape, device)

    def noise(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.randn(self.shape, dtype=dtype)


class FixedNoiseSpace(GlobalNoiseSpace):
    """Noise from a generator seeded afresh every call: every seed gives the same samples."""

    def _to(self, device: Any) -> "FixedNoiseSpace":
        return FixedNoiseSpace(self.shape, device)

    def noise(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.randn(self.shape, dtype=dtype, generator=torch.Generator().manual_seed(0))


@local_domain
class NonDeterministicDomain(ToyDomain):
    name = "toy_check_nondeterministic"

    def make_space(self, n: int) -> DenseSpace:
        return GlobalNoiseSpace((n, 3))


@local_domain
class SeedBlindDomain(ToyDomain):
    name = "toy_check_seed_blind"

    def make_space(self, n: int) -> DenseSpace:
        return FixedNoiseSpace((n, 3))


def test_catches_a_non_deterministic_sampler():
    fails(NonDeterministicDomain(), r"\[determinism\]: two samples with seed 0 differ")
    fails(SeedBlindDomain(), r"\[determinism\]: seeds 0 and 1 give the same samples")


@local_domain
class OwnGeneratorDomain(ToyDomain):
    """Defaults drawn from a generator the domain holds (sampling state), not the one passed in."""

    name = "toy_check_own_generator"

    def default_shift(self, n: int, generator: torch.Generator | None) -> Tensor:
        if not hasattr(self, "_gen"):
            self._gen = torch.Generator().manual_seed(0)
        return super().default_shift(n, self._gen)


def test_catches_defaults_not_drawn_from_the_generator():
    fails(OwnGeneratorDomain(), r"\[conditions\]: sample_space with one seed and condition set #0 gives two "
                                "different spaces", conditions=[{}])


@local_domain
class DroppedConditionDomain(ToyDomain):
    """``sample_space`` ignores the given shift: the condition does not round-trip."""

    name = "toy_check_dropped_condition"

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> DenseSpace:
        self.check_conditions(conditions)
        return DenseSpace((n, 3)).with_condition({"shift": torch.zeros(n)})


@local_domain
class LaxConditionsDomain(ToyDomain):
    """``check_conditions`` accepts any name."""

    name = "toy_check_lax_conditions"

    def check_conditions(self, conditions: dict[str, Any] | None) -> dict[str, Any]:
        return dict(conditions or {})


class NoMoveSpace(DenseSpace):
    """Inherits DenseSpace's ``_to``, which returns a DenseSpace."""


@local_domain
class LostOnMoveDomain(ToyDomain):
    """A space subclass without ``_to``: moving it returns a plain DenseSpace."""

    name = "toy_check_lost_on_move"

    def make_space(self, n: int) -> DenseSpace:
        return NoMoveSpace((n, 3))


def test_catches_a_condition_that_does_not_round_trip():
    fails(DroppedConditionDomain(), r"\[conditions\]: condition sets #0 and #1 give the same space: a condition is "
                                    r"not carried by space.condition")
    fails(LaxConditionsDomain(), r"\[conditions\]: check_conditions accepted the unknown condition")
    fails(LostOnMoveDomain(), r"\[conditions\]: space.to\('cpu'\) changes the space of condition set #0")


@local_domain
class BiasDomain(ToyDomain):
    name = "toy_check_bias"
    net_options = {"bias": True}


def test_catches_broken_equivariance():
    message = fails(BiasDomain(), r"\[equivariance\]: the network is not equivariant under group_action: "
                                  r"max \|f\(g·x\) − g·f\(x\)\| = ", group_action=negate)
    assert float(message.split("= ")[1].split(" >")[0]) > 1e-2  # a bias of size ~0.3 breaks oddness by O(0.1)
    fails(ToyDomain(), r"\[equivariance\]: group_action leaves the prior sample unchanged",
          group_action=lambda x, space: x)


@local_domain
class ForgetfulDomain(ToyDomain):
    """A statistic fitted in ``train_dataset`` and used by ``sample_space`` but not saved by ``state_tensors``."""

    name = "toy_check_forgetful"

    def train_dataset(self, options: dict[str, Any]) -> TensorDataset:
        self.offset = 2.0
        return super().train_dataset(options)

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> DenseSpace:
        space = super().sample_space(n, generator, conditions)
        return space.with_condition({"shift": space.condition["shift"] + getattr(self, "offset", 0.0)})


def test_catches_a_statistic_missing_from_the_export():
    fails(ForgetfulDomain(), r"\[export_load\]: the loaded model builds a different space for condition set #0")


@local_domain
class OffSpaceDataDomain(ToyDomain):
    """Data states outside their space: a zero-centre-of-mass space whose data are not centred."""

    name = "toy_check_off_space"

    def space_for(self, batch: Any) -> Any:
        from sciddpm.spaces import ZeroCoMSpace

        return ZeroCoMSpace(DenseSpace(batch[0][:, :, None].shape)).with_condition({"shift": batch[1]})

    def state_from(self, batch: Any) -> Tensor:
        return batch[0][:, :, None] + 1.0


@local_domain
class TrainingKeywordDomain(ToyDomain):
    name = "toy_check_training_keyword"

    def training_condition(self, space: Any, generator: torch.Generator | None = None) -> dict[str, Any]:
        return {**self.network_condition(space), "label": space.condition["shift"]}


class KeywordsNet(ToyNet):
    """ToyNet that accepts (and ignores) any further keyword."""

    def forward(self, x: Tensor, t: Tensor, shift: Tensor | None = None, **extra: Any) -> Tensor:
        return super().forward(x, t, shift)


@local_domain
class DataKeywordDomain(ToyDomain):
    """Data spaces carry a network input (``weight``) that sampled spaces lack."""

    name = "toy_check_data_keyword"

    def build_backbone(self, config: dict[str, Any], schedule: NoiseSchedule | None = None) -> nn.Module:
        return KeywordsNet(**config)

    def space_for(self, batch: Any) -> DenseSpace:
        return DenseSpace(batch[0].shape).with_condition({"shift": batch[1], "weight": torch.ones(len(batch[1]))})


def test_catches_a_bad_data_batch():
    fails(OffSpaceDataDomain(), r"\[data_batch\]: the data state is not in its space: project\(x0\) moves it by \d")
    fails(TrainingKeywordDomain(), r"\[data_batch\]: training_condition keyword 'label' is not an input of the "
                                   r"network \(it takes \['shift'\]\)")
    fails(DataKeywordDomain(), r"\[data_batch\]: network_condition gives keywords \['shift', 'weight'\] for a data "
                               r"batch but \['shift'\] for a sampled space")


@local_domain
class BadNullDomain(ToyDomain):
    """Classifier-free guidance's unconditional inputs under a name the network does not take."""

    name = "toy_check_bad_null"

    def null_condition(self, space: Any) -> dict[str, Any] | None:
        return {"label": torch.full((space.batch_size,), -1)}


def test_catches_a_null_condition_the_network_does_not_take():
    fails(BadNullDomain(), r"check_domain\[sample_space\]: TypeError: .*unexpected keyword argument 'label'")


def test_a_domain_error_becomes_one_line_naming_the_check():
    """An exception raised inside the domain (a malformed condition value) is reported with the check it hit."""
    fails(ToyDomain(), r"check_domain\[sample_space\]: RuntimeError: ", conditions=[{"shift": [1.0, 2.0]}])


def test_same_space():
    a = DenseSpace((2, 3)).with_condition({"shift": torch.tensor([1.0, 2.0])})
    assert same_space(a, DenseSpace((2, 3)).with_condition({"shift": torch.tensor([1.0, 2.0])}))
    assert not same_space(a, DenseSpace((2, 3)).with_condition({"shift": torch.tensor([1.0, 3.0])}))
    assert not same_space(a, DenseSpace((2, 3)).with_condition({"shift": torch.tensor([1, 2])}))  # dtype
    assert not same_space(a, DenseSpace((2, 3)))
    assert not same_space(DenseSpace((2, 3)), DenseSpace((3, 2)))
    nan = DenseSpace((2, 3)).with_condition({"target": torch.tensor([float("nan"), 1.0])})
    assert same_space(nan, DenseSpace((2, 3)).with_condition({"target": torch.tensor([float("nan"), 1.0])}))
    assert not same_space(nan, DenseSpace((2, 3)).with_condition({"target": torch.tensor([1.0, float("nan")])}))


def test_bad_arguments():
    with pytest.raises(ValueError, match="check_domain: n must be >= 2"):
        check_domain(ToyDomain(), n=1)
    with pytest.raises(ValueError, match="check_domain: conditions must be a sequence of dicts"):
        check_domain(ToyDomain(), conditions={"shift": 1.0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="check_domain: options are for a domain class or name"):
        check_domain(ToyDomain(), options={})
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        check_domain(ToyDomain(), sampler="euler")
    with pytest.raises(ValueError, match="unknown domain 'no_such_domain'"):
        check_domain("no_such_domain")


def test_registered_domains_restores_the_registry():
    from sciddpm.domain import get_domain, known_domains

    class Temporary(ToyDomain):
        name = "toy_check_temporary"

    with registered_domains(Temporary):
        assert get_domain("toy_check_temporary") is Temporary
    assert "toy_check_temporary" not in known_domains()
    with pytest.raises(ValueError, match="unknown domain 'toy_check_temporary'"):
        get_domain("toy_check_temporary")
