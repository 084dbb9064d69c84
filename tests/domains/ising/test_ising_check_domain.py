"""The Ising domain keeps the Domain contract (``sciddpm.testing.check_domain``): temperatures travel in the space
(given one for all, per sample, or the training temperatures by default), the circular-padded UNet commutes with
lattice translations by its stride, and the unit-prior ablation keeps the contract too."""
from __future__ import annotations

import pytest
import torch

from sciddpm.domains.ising.adapter import IsingDomain
from sciddpm.testing import check_domain

#: Two levels (stride 2), 8 channels, without zero-initialised output convs (its output must depend on T).
TINY = {"model_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "norm_groups": 4, "zero_init": False}


def shift(x: torch.Tensor, space) -> torch.Tensor:
    """A lattice translation by (2, −4) sites: a multiple of the UNet's stride 2, on a periodic lattice."""
    return torch.roll(x, (2, -4), dims=(-2, -1))


@pytest.mark.parametrize("prior", ["thermo", "unit"])
def test_ising_keeps_the_contract(prior: str) -> None:
    report = check_domain(IsingDomain({"prior": prior}), backbone=TINY, group_action=shift,
                          conditions=[{"temperature": 2.0}, {"temperature": [1.0, 2.5, 3.0, 4.0]}, {}])
    checks = report["checks"]
    assert checks["sample_space"]["shapes"] == [(4, 1, 8, 8)] * 3
    assert checks["data_batch"]["network_keywords"] == ["cond_image"]
    assert checks["export_load"]["max_abs_difference"] == 0.0
    assert checks["equivariance"]["max_abs_error"] <= checks["equivariance"]["bound"]
    assert {"energy_abs_error", "ambiguous_fraction"} <= set(checks["outputs"]["metrics"])


def test_thermo_prior_has_variance_t_and_the_ablation_unit() -> None:
    """The sampling space's prior draw has per-sample variance T·prior_std² (thermo) or 1 (unit)."""
    for prior, expected in (("thermo", torch.tensor([0.5, 4.0])), ("unit", torch.ones(2))):
        domain = IsingDomain({"prior": prior})
        domain.train_dataset(domain.options)
        space = domain.sample_space(2, conditions={"temperature": [0.5, 4.0]})
        x = space.noise(torch.Generator().manual_seed(0), torch.float64)
        torch.testing.assert_close(space.mean_square_per_sample(x), expected.double(), rtol=0.35, atol=0)
        assert torch.equal(space.condition["temperature"], torch.tensor([0.5, 4.0], dtype=torch.float64))


@pytest.mark.parametrize("bad", [0.0, -1.0, [1.0, 2.0, 3.0]])
def test_bad_temperatures_are_one_line_errors(bad) -> None:
    domain = IsingDomain()
    domain.train_dataset(domain.options)
    with pytest.raises(ValueError) as err:
        domain.sample_space(2, conditions={"temperature": bad})
    assert "\n" not in str(err.value) and ("temperature" in str(err.value) or "values for 2" in str(err.value))


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match="prior"):
        IsingDomain({"prior": "gaussian"})
    with pytest.raises(ValueError, match="no lattices at temperature 2.5"):
        IsingDomain().train_dataset({"temperatures": [1.5, 2.5]})
