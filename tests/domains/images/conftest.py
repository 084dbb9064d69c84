"""Shared by the images tests: one torch thread per test (tiny UNets are slowest when the shared CPUs are
oversubscribed); the previous thread count is restored afterwards."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every images test runs on one torch thread (``one_thread`` in tests/conftest.py)."""
    yield
