"""Fixtures: simulators running in a background thread, or in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.simulator import SimulatorHandle, in_process, running_simulator

from .helpers import TODAY


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    """A read-only simulator shared by a module: 3 orgs, no rate limit."""
    with running_simulator(orgs=3, seed=7, today=TODAY, requests_per_minute=0) as handle:
        yield handle


@pytest.fixture
def fresh_sim() -> Iterator[SimulatorHandle]:
    """A simulator of its own, for tests that inject faults or change state."""
    with running_simulator(orgs=3, seed=7, today=TODAY, requests_per_minute=0) as handle:
        yield handle


@pytest.fixture
def local_sim() -> SimulatorHandle:
    """An in-process simulator of its own (3 orgs, no rate limit) that records every request."""
    return in_process(orgs=3, seed=7, today=TODAY, requests_per_minute=0, record_requests=True)
