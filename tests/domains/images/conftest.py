"""Shared by the images tests: one torch thread per test (tiny UNets are slowest when the shared CPUs are
oversubscribed); the previous thread count is restored afterwards."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
