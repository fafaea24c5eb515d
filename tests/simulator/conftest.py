"""Fixtures: simulators running in a background thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.simulator import SimulatorHandle, running_simulator

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
