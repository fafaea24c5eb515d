"""The issue's done-when, as processes over HTTP: a 90-day backfill of both sources, then
`report --by api_key --source analytics --format json` equals the simulator's truth row for row (to the
fraction of a cent), and `sources compare` names the Priority Tier gap exactly.

The simulator's today is fixed at the real UTC date (the worker runs on the real clock), so its
`data_refreshed_at` does not move while the test runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from .procs import Simulator, Worker, window

pytestmark = pytest.mark.slow

DAYS = 90
MONEY = ("cost_usd", "list_cost_usd")


@pytest.fixture
def asim() -> Iterator[Simulator]:
    """Two organizations; org 1 has HIPAA readiness."""
    today = datetime.now(UTC).date().isoformat()
    with Simulator("--requests-per-minute", "900", "--orgs", "2", "--seed", "4", "--today", today,
                   "--hipaa-org", "1") as handle:
        yield handle


def exact(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with money as Decimal: '0.10' and '0.100000000000' are the same amount."""
    return [{k: (Decimal(v) if k in MONEY and v is not None else v) for k, v in r.items()} for r in rows]


def truth(sim: Simulator, org: int, since: Any, until: Any, by: str) -> dict[str, Any]:
    body: dict[str, Any] = sim.control("GET", "/_sim/truth", params={
        "org": org, "since": since.isoformat(), "until": (until + timedelta(days=1)).isoformat(),
        "source": "analytics", "by": by})
    return body


def test_report_by_api_key_equals_truth_and_compare_names_the_priority_gap(
        asim: Simulator, make_worker: Callable[..., Worker]) -> None:
    """90-day backfill of both sources; report by key = truth row for row; compare: Priority Tier exactly."""
    worker = make_worker(asim, backfill_days_free=DAYS)
    iid = worker.connect(asim.keys[0], "free", source="both")
    worker.run("sync-now")
    since, until = window(asim.today(), DAYS)
    for by in ("api_key", "actor"):
        got = json.loads(worker.run("report", "--since", since.isoformat(), "--until", until.isoformat(),
                                    "--by", by, "--source", "analytics", "--format", "json").stdout)
        want = truth(asim, 0, since, until, by)["rows"]
        assert len(want) > DAYS * 3  # several keys and models a day: not a vacuous comparison
        assert exact(got) == exact(want), by
    emails = {r["name"] for r in got if r["name"]}
    assert any("@" in e for e in emails)  # users are named by their email

    result = worker.run("sources", "compare", "--since", since.isoformat(), "--until", until.isoformat(),
                        "--format", "json", check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    body = json.loads(result.stdout)
    rows = {(r["date"], r["model"]): r for r in body["rows"]}
    priority = {(p["date"], p["model"]): Decimal(p["cost_usd"]) for p in truth(asim, 0, since, until, "model")["priority"]}
    assert priority  # the simulator bills Priority Tier on some days
    refreshed = datetime.fromisoformat(truth(asim, 0, since, until, "model")["data_refreshed_at"])
    for key, amount in priority.items():
        row = rows[key]
        assert Decimal(row["priority_tier_usd"]) == amount
        assert "priority_tier" in row["causes"]
        if datetime.fromisoformat(key[0]).replace(tzinfo=UTC) + timedelta(days=1) <= refreshed:
            assert Decimal(row["difference_usd"]) == amount  # the whole gap, to the fraction of a cent
    assert all(r["status"] != "unexplained" for r in body["rows"])
    today = rows_for(body, until.isoformat())
    assert today and all("not_refreshed" in r["causes"] for r in today if r["status"] != "ok")
    assert Decimal(body["summary"]["priority_tier_usd"]) == sum(priority.values())

    # Without --by and --source the report is the legacy one, as before.
    legacy = json.loads(worker.run("report", "--since", since.isoformat(), "--until", until.isoformat(),
                                   "--format", "json").stdout)
    assert set(legacy[0]) == {"date", "model", "cost_usd", "input_tokens", "output_tokens", "cache_read_tokens",
                              "cache_write_tokens"}
    [item] = worker.integrations()
    assert (item["id"], item["source"], item["status"], item["analytics_status"]) == (iid, "both", "ok", "ok")


def rows_for(body: dict[str, Any], day: str) -> list[dict[str, Any]]:
    return [r for r in body["rows"] if r["date"] == day]


def test_hipaa_organization_reports_from_legacy_and_says_why(asim: Simulator,
                                                               make_worker: Callable[..., Worker]) -> None:
    """A HIPAA-ready organization: sync ok on the legacy reports; `integrations list` says why; report --by model
    without --source falls back to the legacy bill; compare says not_synced, never unexplained."""
    worker = make_worker(asim)
    worker.connect(asim.keys[1], "free", source="both")
    out = worker.run("sync-now")
    assert "HIPAA" in out.stdout
    [item] = worker.integrations()
    assert item["source"] == "both (analytics refused)" and item["analytics_status"] == "refused"
    assert item["status"] == "ok" and "HIPAA" in item["last_error"]
    since, until = window(asim.today(), 30)
    rows = json.loads(worker.run("report", "--since", since.isoformat(), "--until", until.isoformat(), "--by",
                                 "model", "--format", "json").stdout)
    legacy = asim.truth(1, since, until)
    assert sum(Decimal(r["cost_usd"]) for r in rows) == sum(r["cost_usd"] for r in legacy.values())
    assert all(r["list_cost_usd"] is None for r in rows)  # legacy rows: no list price
    compare = worker.run("sources", "compare", "--since", since.isoformat(), "--until", until.isoformat(),
                         "--format", "json", check=False)
    assert compare.returncode == 0
    assert {c for r in json.loads(compare.stdout)["rows"] for c in r["causes"]} <= {"not_synced"}
