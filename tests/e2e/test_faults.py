"""Every fault type ends in exact data, or in a non-zero exit and an `error` status with a clear
message: never in silently missing days."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .procs import Simulator, Worker, diff, window

pytestmark = pytest.mark.slow


def _exact(sim: Simulator, worker: Worker, days: int = 30) -> list[str]:
    since, until = window(sim.today(), days)
    return diff(worker.report(since, until), sim.truth(0, since, until))


@pytest.mark.parametrize("spec", [
    "500:count=2", "504:count=1", "529:count=2,path=usage_report", "429:count=2",
    "cutoff:count=2", "cutoff:count=1,fraction=0.05", "500:rate=0.2",
])
def test_transient_fault_ends_in_exact_data(sim: Simulator, make_worker: Callable[..., Worker],
                                            spec: str) -> None:
    """Retried faults (5xx, 529, 429, cut-off bodies) leave the stored days equal to the truth."""
    worker = make_worker(sim)
    worker.connect(sim.keys[0], "free")
    sim.fault(spec)
    worker.run("sync-now")
    assert _exact(sim, worker) == []
    assert worker.integrations()[0]["status"] == "ok"


@pytest.mark.parametrize(("spec", "words"), [
    ("no-next-page:count=1", "next_page"),
    ("revoke", "revoked"),
    ("529:count=100", "529"),
])
def test_fatal_fault_is_an_error_then_recovers(sim: Simulator, make_worker: Callable[..., Worker],
                                               spec: str, words: str) -> None:
    """A fault the worker cannot get past: exit 1, status error with a clear last_error; once it is
    gone, the next sync-now completes the same window exactly."""
    worker = make_worker(sim, max_attempts=3)
    worker.connect(sim.keys[0], "free")
    sim.fault(spec)
    result = worker.run("sync-now", check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "FAILED" in result.stdout
    [item] = worker.integrations()
    assert item["status"] == "error"
    assert words in item["last_error"].lower(), item["last_error"]
    assert item["backfill_done"] is False  # never marked complete over a gap
    sim.clear_faults()
    sim.fault("restore")
    worker.run("sync-now")
    assert _exact(sim, worker) == []
    assert worker.integrations()[0]["status"] == "ok"


def test_result_cap_shrinks_pages_and_stays_exact(make_worker: Callable[..., Worker]) -> None:
    """'Response too large' (400) halves the page size; the 365 days still equal the truth."""
    with Simulator("--requests-per-minute", "900", "--max-results", "500") as sim:
        worker = make_worker(sim)
        worker.connect(sim.keys[0], "pro")
        worker.run("sync-now")
        assert _exact(sim, worker, 365) == []


def test_result_cap_below_one_day_is_a_clear_error(tmp_path: Path, make_worker: Callable[..., Worker]) -> None:
    """A cap even a one-day page exceeds: connect exits 1 with a 'too large' message, nothing stored."""
    with Simulator("--requests-per-minute", "900", "--max-results", "5") as sim:
        worker = make_worker(sim)
        result = worker.run("connect", key=sim.keys[0], check=False)
        assert result.returncode == 1
        assert "too large" in result.stderr
        assert worker.integrations() == []
