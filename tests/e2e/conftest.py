"""End-to-end fixtures: a simulator process per test and worker commands as processes.

Both sides run an accelerated budget so nothing waits long: the worker RPM requests per minute, the
simulator SIM_RPM (at equal budgets the jitter between reserving a slot and the request reaching the
server draws 429s, whose whole-second `retry-after` would dominate at this speed; bench/rate_floor.py
measures that at 60 per minute).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .procs import Simulator, Worker

RPM = 600
SIM_RPM = 900


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A `cost-worker simulate` process: one organization, seed 0, SIM_RPM requests per minute."""
    with Simulator("--requests-per-minute", str(SIM_RPM)) as handle:
        yield handle


@pytest.fixture
def make_worker(tmp_path: Path) -> Callable[..., Worker]:
    def make(sim: Simulator, *, requests_per_minute: float = RPM, burst: int = 1, database_url: str | None = None,
             **settings: object) -> Worker:
        return Worker(tmp_path, sim.base_url, requests_per_minute=requests_per_minute, burst=burst,
                      database_url=database_url, **settings)
    return make
