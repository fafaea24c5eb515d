"""A day restated upstream is picked up by the next daily re-read (`sync-now` re-reads the trailing window)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from .procs import Simulator, Worker, diff, window

pytestmark = pytest.mark.slow


def test_restated_day_in_trailing_window_is_reread(sim: Simulator, make_worker: Callable[..., Worker]) -> None:
    """Yesterday's numbers change upstream; the next sync-now stores the new numbers exactly."""
    worker = make_worker(sim)
    worker.connect(sim.keys[0], "free")
    worker.run("sync-now")
    since, until = window(sim.today(), 30)
    day = sim.today() - timedelta(days=1)
    old = sim.truth(0, day, day)
    sim.fault(f"restate:org=0,day={day.isoformat()}")
    new = sim.truth(0, day, day)
    assert new != old  # the restatement really changed the day
    assert diff(worker.report(day, day), old) == []
    worker.run("sync-now")
    assert diff(worker.report(day, day), new) == []
    assert diff(worker.report(since, until), sim.truth(0, since, until)) == []
