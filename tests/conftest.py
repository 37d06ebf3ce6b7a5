"""Shared test settings: hypothesis profiles sized for a 2-core CI machine, and fixtures that
run tiny models on one intra-op thread."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", deadline=None, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _single_thread() -> Iterator[None]:
    # Tiny models spend their time handing work between OpenMP threads: one thread was 2-5x
    # faster per forward on the shared 2-core machine (measured when the model tests were
    # written), and two intra-op threads only contend there.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the test, restored after it."""
    yield from _single_thread()


@pytest.fixture(scope="module")
def one_thread_module() -> Iterator[None]:
    """torch on one intra-op thread for a whole test module, restored after it."""
    yield from _single_thread()
