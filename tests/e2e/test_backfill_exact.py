"""Tier backfills, run as processes over HTTP, equal the simulator's ground truth to the cent and token."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from .procs import Simulator, Worker, diff, min_report_requests, window

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("tier", "days"), [("free", 30), ("pro", 365)])
def test_tier_backfill_equals_truth(sim: Simulator, make_worker: Callable[..., Worker], tier: str,
                                    days: int) -> None:
    """connect + sync-now stores exactly the tier's days: every (day, model) cost and token count."""
    worker = make_worker(sim)
    integration = worker.connect(sim.keys[0], tier)
    worker.run("sync-now")
    since, until = window(sim.today(), days)
    got = worker.report(since - timedelta(days=400), until + timedelta(days=5))
    want = sim.truth(0, since, until)
    assert len(want) > days  # several models a day: the comparison is not vacuous
    assert diff(got, want) == []
    assert sum(r["cost_usd"] for r in got.values()) == sum(r["cost_usd"] for r in want.values())
    [item] = worker.integrations()
    assert (item["id"], item["status"], item["backfill_done"], item["last_error"]) == (integration, "ok", True, None)
    assert item["backfill_start"] == since.isoformat()
    used = sim.requests()
    # connect: /me + one small cost report; backfill: the minimum; sync-now's re-read: one page per endpoint.
    assert used["me"] == 1
    assert used["rate_limited"] == 0
    assert used["cost_report"] + used["usage_report"] == 1 + min_report_requests(days) + 2


def test_two_organizations_stay_apart(make_worker: Callable[..., Worker]) -> None:
    """Two orgs synced by one worker: each integration's report equals its own org's truth."""
    with Simulator("--requests-per-minute", "900", "--orgs", "2", "--seed", "3") as sim:
        worker = make_worker(sim)
        ids = [worker.connect(key, "free") for key in sim.keys]
        worker.run("sync-now")
        since, until = window(sim.today(), 30)
        for org, integration in enumerate(ids):
            assert diff(worker.report(since, until, integration), sim.truth(org, since, until)) == []
