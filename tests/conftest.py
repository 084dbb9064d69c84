"""Shared fixtures: the Gaussian-mixture oracle problems used across the core tests."""
from __future__ import annotations

import pytest
import torch

from sciddpm.oracle import GaussianMixture
from sciddpm.schedules import (CosineSchedule, LinearSchedule, PolynomialSchedule, SubVPSchedule, VESchedule,
                               VPSchedule)

@pytest.fixture
def one_thread():
    """Run the test on one torch thread (training tests: reproducible and fair to a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ALL_SCHEDULES = {
    "linear": lambda: LinearSchedule(1000),
    "cosine": lambda: CosineSchedule(1000),
    "polynomial": lambda: PolynomialSchedule(1000),
    "vp": lambda: VPSchedule(),
    "subvp": lambda: SubVPSchedule(),
    "ve": lambda: VESchedule(),
}


@pytest.fixture(params=sorted(ALL_SCHEDULES))
def schedule(request):
    """Every schedule of the library, one per test instance."""
    return ALL_SCHEDULES[request.param]()


@pytest.fixture
def mixture2d() -> GaussianMixture:
    """A 2-D, 3-component mixture with unequal weights and correlated full covariances."""
    return GaussianMixture(
        torch.tensor([0.2, 0.5, 0.3]),
        torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]]),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]], [[0.15, 0.0], [0.0, 0.15]]]),
    )
