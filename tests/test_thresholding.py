"""x̂₀ thresholding in every sampler that forms x̂₀ (issue 19, item 2).

* ``x0_threshold``: static clipping and Imagen's dynamic thresholding (Saharia et al. 2022, §2.3) against values
  computed by hand, on [−1, 1] and on a shifted range; its one-line errors.
* Exactness where the answer is known: data inside the box has every exact posterior mean E[x₀ | x_t] inside the
  box (a convex combination of data points), so with the oracle's exact ε thresholding must change nothing, for
  every sampler and both kinds; with a biased ε that throws x̂₀ out of the box, every x̂₀ a sampler reports is
  inside it, and the samplers' results differ from the unthresholded ones.
* The domain default: an images model (``threshold_x0``) clips unless told ``clip_x0=None``.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sciddpm import samplers as S
from sciddpm.oracle import GaussianMixture
from sciddpm.sampler_base import x0_threshold
from sciddpm.schedules import LinearSchedule
from sciddpm.spaces import DenseSpace

F64 = torch.float64
THRESHOLDING = ("ddpm", "ddim", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc")
# two narrow modes well inside [−1, 1]: the exact x̂₀ = E[x₀ | x_t] never leaves the box
INSIDE = GaussianMixture(torch.tensor([0.5, 0.5]), torch.tensor([[-0.5, 0.3], [0.5, -0.2]]),
                         torch.tensor([[0.01, 0.02], [0.02, 0.01]]), diagonal=True)


def test_static_and_dynamic_thresholds_by_hand() -> None:
    x0 = torch.tensor([[-3.0, -0.5, 0.25, 2.0], [0.1, -0.2, 0.3, 0.9]], dtype=F64)
    static = x0_threshold((-1, 1))
    assert torch.equal(static(x0), x0.clamp(-1, 1))
    # p = 0.5 over |y| = (3, .5, .25, 2): the median is (0.5 + 2)/2 = 1.25 → s = 1.25; row 2's median 0.25 → s = 1
    dyn = x0_threshold((-1, 1), dynamic_threshold=0.5)
    expect = torch.tensor([[-1.0, -0.4, 0.2, 1.0], [0.1, -0.2, 0.3, 0.9]], dtype=F64)
    assert torch.allclose(dyn(x0), expect, atol=1e-12)
    # on [0, 1]: y = 2x − 1, the same rule, mapped back (x = (y + 1)/2)
    shifted = x0_threshold((0, 1), dynamic_threshold=0.5)
    assert torch.allclose(shifted((x0 + 1) / 2), (expect + 1) / 2, atol=1e-12)
    # p → 1 with one element beyond the box: s = max|y| and the sample is scaled into the box, not clipped
    top = x0_threshold((-1, 1), dynamic_threshold=0.999999)(torch.tensor([[4.0, 2.0, -1.0]], dtype=F64))
    assert torch.allclose(top, torch.tensor([[1.0, 0.5, -0.25]], dtype=F64), atol=1e-5)
    assert x0_threshold(None) is None


@pytest.mark.parametrize("kwargs, match", [({"clip_x0": (1, 1)}, "finite a < b"),
                                           ({"clip_x0": (0, float("inf"))}, "finite a < b"),
                                           ({"clip_x0": "ab"}, "two numbers"),
                                           ({"clip_x0": (-1, 1), "dynamic_threshold": 1.0}, r"in \(0, 1\)"),
                                           ({"dynamic_threshold": 0.9}, "needs clip_x0")])
def test_threshold_errors_are_one_line(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match) as err:
        x0_threshold(**kwargs)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=match):  # the samplers refuse the same before any evaluation
        sch = LinearSchedule(100)
        S.get_sampler("unipc")(lambda x, t: x, sch, DenseSpace((2, 2)), torch.zeros(2, 2), S.time_grid(sch, 3),
                               **kwargs)


def _run(name: str, eps_fn, steps: int, x0s: list | None = None, **kwargs) -> torch.Tensor:
    sch = LinearSchedule(1000)
    space = DenseSpace((256, 2))
    x_T = S.prior_sample(sch, space, torch.Generator().manual_seed(0), F64)
    extra = {"generator": torch.Generator().manual_seed(1)} if name == "ddpm" else {}
    callback = (lambda step: x0s.append(step.x0)) if x0s is not None else None
    return S.get_sampler(name)(eps_fn, sch, space, x_T, S.time_grid(sch, steps, "quadratic"), callback=callback,
                               **extra, **kwargs).sample


@pytest.mark.parametrize("name", THRESHOLDING)
def test_exact_eps_inside_the_box_is_unchanged(name: str) -> None:
    eps = INSIDE.eps_fn(LinearSchedule(1000))
    plain = _run(name, eps, 20)
    for kwargs in ({"clip_x0": (-1, 1)}, {"clip_x0": (-1, 1), "dynamic_threshold": 0.995}):
        assert torch.allclose(_run(name, eps, 20, **kwargs), plain, atol=1e-10), kwargs


@pytest.mark.parametrize("name", THRESHOLDING)
def test_biased_eps_keeps_every_x0_in_the_box(name: str) -> None:
    exact = INSIDE.eps_fn(LinearSchedule(1000))

    def biased(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # x̂₀ = (x − σ ε̂)/α overshoots the box
        return 0.3 * exact(x, t)

    for kwargs in ({"clip_x0": (-1, 1)}, {"clip_x0": (-1, 1), "dynamic_threshold": 0.9}):
        seen: list = []
        out = _run(name, biased, 8, seen, **kwargs)
        assert all(bool((x0.abs() <= 1 + 1e-9).all()) for x0 in seen), kwargs
        assert bool((out.abs() <= 1 + 1e-6).all())  # K = 8 < 15: the last step is α₀ x̂₀ (lower_order_final)
    raw: list = []
    unclipped = _run(name, biased, 8, raw)
    assert max(float(x0.abs().max()) for x0 in raw) > 2 and float(unclipped.abs().max()) > 1.05


class _Overshoot(nn.Module):
    """A stand-in network whose ε̂ = −3 everywhere makes x̂₀ = (x_t + 3σ_t)/α_t leave [−1, 1]."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, **condition) -> torch.Tensor:
        return torch.full_like(x, -3.0)


def test_images_model_clips_by_default_and_not_when_told(tmp_path) -> None:
    from sciddpm.domains.images.adapter import ImagesDomain
    from sciddpm.testing import export_and_load
    from tests.domains.images.common import TINY_UNET

    domain = ImagesDomain({"max_train": 16, "n_reference": 8})
    assert domain.threshold_x0 and domain.data_range == (-1.0, 1.0)
    domain.train_dataset(domain.options)
    _, model = export_and_load(domain, {**TINY_UNET, "zero_init": False}, tmp_path / "export")
    model.net = _Overshoot()
    for sampler in ("ddim", "unipc"):
        default = model.sample(3, sampler=sampler, steps=5, seed=0).sample
        assert float(default.abs().max()) <= 1 + 1e-6, sampler
        off = model.sample(3, sampler=sampler, steps=5, seed=0, clip_x0=None).sample
        assert float(off.max()) > 1.5, sampler


def test_sampler_options_from_the_command_line() -> None:
    """``--sampler-option clip_x0=none`` turns the domain default off; bare words are strings (``variant=bh1``);
    conditions (arrays=True) still refuse words."""
    from sciddpm.cli import parse_value

    assert parse_value("none", "--sampler-option", "clip_x0", arrays=False) is None
    assert parse_value("bh1", "--sampler-option", "variant", arrays=False) == "bh1"
    assert parse_value("0.995", "--sampler-option", "dynamic_threshold", arrays=False) == 0.995
    with pytest.raises(ValueError, match="VALUE must be a number"):
        parse_value("none", "--condition", "y", arrays=True)
