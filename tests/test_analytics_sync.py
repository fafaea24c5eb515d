"""Syncing the Analytics API beside the legacy reports, against the simulator over real HTTP.

Exact totals per (day, model, API key / actor) against the simulator's analytics truth; requests at the
floor (31-day windows, one page per window here); per-page checkpoints and resume after a crash; the
HIPAA refusal keeping the legacy reports as the bill; `set-source`; restatements with revisions; names
read at most daily; one rate budget for both sources. Time is a FakeClock: budget waits cost nothing.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select, text

from tests.conftest import make_settings
from worker.api.client import tls_context
from worker.app import App
from worker.clock import FakeClock
from worker.integrations import check_connection, connect, set_source
from worker.secret import AdminKey
from worker.settings import Tier
from worker.simulator import SimulatorHandle, running_simulator
from worker.storage import analytics as astore
from worker.storage import repo
from worker.storage.tables import analytics_cost_rows, analytics_names, cost_rows, revisions, sync_runs
from worker.sync.engine import Kind, SyncOutcome, sync_integration
from worker.sync.streams import Source
from worker.vault import MasterKey

TODAY = date(2026, 3, 10)
A_FIRST = date(2026, 1, 1)  # the Analytics API has nothing earlier


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    """Org 0 normal, org 1 with HIPAA readiness (the Analytics API answers it 400)."""
    with running_simulator(orgs=2, seed=5, today=TODAY, requests_per_minute=0, hipaa_orgs=(1,)) as handle:
        yield handle


@pytest.fixture
def sim_app(sim: SimulatorHandle, db_url: str, tmp_path: Path, master_key: MasterKey, clock: FakeClock) -> Iterator[App]:
    sim.reset()
    application = App(make_settings(db_url, tmp_path, master_key, api_base_url=sim.base_url, max_attempts=2,
                                    max_retry_seconds=5), clock=clock)
    yield application
    application.close()


def onboard(app: App, sim: SimulatorHandle, org: int = 0, tier: Tier = "free", source: Source = "both") -> int:
    key = AdminKey(sim.keys[org])
    organization = asyncio.run(check_connection(app, key))
    return connect(app, key, organization, label=None, tier=tier, source=source)


def run(app: App, iid: int, kind: Kind = "backfill", transport: httpx.AsyncBaseTransport | None = None) -> SyncOutcome:
    async def main() -> SyncOutcome:
        try:
            return await sync_integration(app, iid, kind, transport=transport)
        finally:
            if transport is not None:  # a test's transport is its own to close (on this loop)
                await transport.aclose()
    return asyncio.run(main())


class Wrapping(httpx.AsyncBaseTransport):
    """A real transport to the simulator with a hook on every answer."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport(verify=tls_context())

    async def seen(self, request: httpx.Request) -> None: ...

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        await self.seen(request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def truth_rows(sim: SimulatorHandle, org: int, since: date, until: date, by: str) -> list[dict[str, Any]]:
    r = httpx.get(sim.base_url + "/_sim/truth", params={"org": org, "since": since.isoformat(),
                                                        "until": (until + timedelta(days=1)).isoformat(),
                                                        "source": "analytics", "by": by})
    rows: list[dict[str, Any]] = r.json()["rows"]
    return rows


def stored(app: App, iid: int, since: date, until: date, by: str) -> dict[tuple[str, str | None, str | None], Any]:
    """What the worker stored, per (day, model, key): cost, list cost and the four token counts."""
    with app.engine.begin() as conn:
        cost = astore.cost_cells(conn, since, until, by, [iid])
        usage = astore.usage_cells(conn, since, until, by, [iid])
    out: dict[tuple[str, str | None, str | None], Any] = {}
    for (_, day, model, key) in cost.keys() | usage.keys():
        c, u = cost.get((iid, day, model, key), astore.Cell()), usage.get((iid, day, model, key), astore.Cell())
        out[(day.isoformat(), model, key)] = (c.cost_usd, c.list_cost_usd, u.uncached_input_tokens, u.output_tokens,
                                              u.cache_read_tokens, u.cache_write_5m_tokens + u.cache_write_1h_tokens)
    return out


def expected(sim: SimulatorHandle, org: int, since: date, until: date, by: str) -> dict[tuple[str, Any, Any], Any]:
    return {(r["date"], r["model"], r["key"]): (Decimal(r["cost_usd"]), Decimal(r["list_cost_usd"]), r["input_tokens"],
                                                r["output_tokens"], r["cache_read_tokens"], r["cache_write_tokens"])
            for r in truth_rows(sim, org, since, until, by)}


def requests(sim: SimulatorHandle, org: int = 0) -> dict[str, int]:
    paths = sim.stats()["keys"].get(sim.keys[org], {}).get("paths", {})
    return {p.rsplit("/", 1)[-1]: v["requests"] for p, v in paths.items()}


class TestBackfill:
    @pytest.mark.slow  # a year of data
    def test_both_sources_equal_truth_at_the_request_floor(self, sim_app: App, sim: SimulatorHandle) -> None:
        """A pro backfill (365 days): legacy for the year, analytics from 2026-01-01, each equal to its truth per
        (day, model, key); the fewest requests: 12 per legacy report, 3 per analytics stream, 2 for names."""
        iid = onboard(sim_app, sim, tier="pro")
        sim.reset_stats()
        outcome = run(sim_app, iid)
        assert outcome.ok, outcome.message
        for by in ("api_key", "actor", "workspace", "service_tier", "product"):
            assert stored(sim_app, iid, A_FIRST, TODAY, by) == expected(sim, 0, A_FIRST, TODAY, by), by
        assert requests(sim) == {"cost_report": 12, "messages": 12, "cost": 6, "usage": 6, "api_keys": 1,
                                 "workspaces": 1}
        with sim_app.engine.begin() as conn:
            first = conn.execute(select(func.min(analytics_cost_rows.c.day))).scalar_one()
            legacy_first = conn.execute(select(func.min(cost_rows.c.day))).scalar_one()
            names = {r.kind for r in conn.execute(select(analytics_names))}
            state = astore.get_state(conn, iid)
            integ = repo.get_integration(conn, iid)
        assert first == A_FIRST and legacy_first < A_FIRST
        assert names == {"api_key", "workspace", "user"}
        assert state is not None and state.status == "ok" and state.refreshed_at is not None
        assert integ is not None and integ.backfill_done and integ.status == "ok" and integ.last_error is None

    def test_priority_tier_is_billed_only_by_analytics(self, sim_app: App, sim: SimulatorHandle) -> None:
        """Stored analytics cost minus Priority Tier equals the legacy cost of the same day (discount included)."""
        iid = onboard(sim_app, sim)
        assert run(sim_app, iid).ok
        last = TODAY - timedelta(days=1)  # today is not fully refreshed in analytics yet
        with sim_app.engine.begin() as conn:
            a = astore.cost_cells(conn, TODAY - timedelta(days=20), last, "model", [iid])
            legacy = repo.report(conn, TODAY - timedelta(days=20), last, iid)
        priority = sum(c.priority_cost_usd for c in a.values())
        assert priority > 0
        assert sum(c.cost_usd for c in a.values()) - priority == sum(r.cost_usd for r in legacy)

    @pytest.mark.slow  # a year of data
    def test_resume_after_crash_refetches_only_the_page_in_flight(self, sim_app: App, sim: SimulatorHandle,
                                                                  request: pytest.FixtureRequest) -> None:
        """A process dying on an analytics page resumes at that stream's checkpoint: nothing skipped, the page
        in flight asked again, every day equal to the truth."""
        iid = onboard(sim_app, sim, tier="pro")
        sim_app.settings.analytics_page_limit = 50  # many pages per window

        class Crash(BaseException):
            pass

        seen = {"analytics": 0}

        class Crashing(Wrapping):
            async def seen(self, req: httpx.Request) -> None:
                if "/analytics/cost" in req.url.path and "api_key_id" in req.url.params.get_list("group_by[]"):
                    seen["analytics"] += 1
                    if seen["analytics"] == 7:  # the 7th page of the main cost stream arrives, then the process dies
                        raise Crash()

        with pytest.raises(Crash):
            run(sim_app, iid, transport=Crashing())
        with sim_app.engine.begin() as conn:
            repo.update_integration(conn, iid, lease_owner=None, lease_expires_at=None)
            cp = astore.checkpoints(conn, iid)["a_cost"]
        assert A_FIRST < cp.checkpoint < TODAY
        restarted = App(sim_app.settings, clock=sim_app.clock)
        request.addfinalizer(restarted.close)
        sim.reset_stats()
        log: list[str] = []

        class Recording(Wrapping):
            async def seen(self, req: httpx.Request) -> None:
                if "/analytics/cost" in req.url.path and "api_key_id" in req.url.params.get_list("group_by[]"):
                    log.append(req.url.params.get("starting_at", ""))  # the main stream's requests

        assert run(restarted, iid, transport=Recording()).ok
        assert log[0] == f"{cp.checkpoint.isoformat()}T00:00:00Z"  # resumed where the stored pages end
        assert stored(restarted, iid, A_FIRST, TODAY, "api_key") == expected(sim, 0, A_FIRST, TODAY, "api_key")
        with restarted.engine.begin() as conn:
            assert conn.execute(select(func.count()).select_from(revisions)).scalar_one() == 0

    def test_expired_cursors_restart_their_window(self, sim_app: App, sim: SimulatorHandle) -> None:
        """410s mid-window (the simulator's fault) restart from the first incomplete day; totals stay exact."""
        iid = onboard(sim_app, sim)
        sim_app.settings.analytics_page_limit = 40
        sim.add_fault("410:count=3,path=analytics")
        outcome = run(sim_app, iid)
        assert outcome.ok, outcome.message
        start = TODAY - timedelta(days=29)
        assert stored(sim_app, iid, start, TODAY, "actor") == expected(sim, 0, start, TODAY, "actor")


class TestRefusal:
    def test_hipaa_organization_keeps_the_legacy_bill(self, sim_app: App, sim: SimulatorHandle) -> None:
        """Source both, HIPAA readiness: one analytics request, refused; the legacy reports are stored in full,
        the run is ok and says why (last_error, analytics_state)."""
        iid = onboard(sim_app, sim, org=1)
        sim.reset_stats()
        outcome = run(sim_app, iid)
        assert outcome.ok and "HIPAA" in outcome.message
        counts = requests(sim, 1)
        assert counts["cost_report"] == counts["messages"] == 1 and counts["cost"] == 1 and "usage" not in counts
        with sim_app.engine.begin() as conn:
            integ = repo.get_integration(conn, iid)
            state = astore.get_state(conn, iid)
            rows = repo.report(conn, TODAY - timedelta(days=29), TODAY, iid)
        assert integ is not None and integ.status == "ok" and "HIPAA" in (integ.last_error or "")
        assert state is not None and state.status == "refused" and "HIPAA" in (state.detail or "")
        want = sim.data.truth(1, TODAY - timedelta(days=29), TODAY + timedelta(days=1))
        assert sum(r.cost_usd for r in rows) == sum(t.cost_usd for t in want)
        sim.reset_stats()
        assert run(sim_app, iid, "manual").ok  # a refusal is trusted until the next daily run
        assert "cost" not in requests(sim, 1)
        assert run(sim_app, iid, "daily").ok  # which asks again (HIPAA readiness can be turned off)
        assert requests(sim, 1)["cost"] == 1

    @pytest.mark.slow  # a year of data
    def test_analytics_source_falls_back_to_legacy_for_every_day(self, sim_app: App, sim: SimulatorHandle) -> None:
        """Source analytics, refused: the same run reads the legacy reports for the days it had left to analytics."""
        iid = onboard(sim_app, sim, org=1, tier="pro", source="analytics")
        outcome = run(sim_app, iid)
        assert outcome.ok, outcome.message
        with sim_app.engine.begin() as conn:
            days = conn.execute(select(func.count(func.distinct(cost_rows.c.day)))
                                .where(cost_rows.c.day >= A_FIRST)).scalar_one()
        assert days == (TODAY - A_FIRST).days + 1 - len([d for d in range((TODAY - A_FIRST).days + 1)
                                                         if not sim.data.day(1, A_FIRST + timedelta(days=d)).usage])


class TestSources:
    def test_analytics_only_keeps_legacy_before_2026(self, sim_app: App, sim: SimulatorHandle) -> None:
        """Source analytics with a year's backfill: legacy reports only for days before 2026-01-01, no legacy
        re-read; analytics for the rest."""
        iid = onboard(sim_app, sim, tier="pro", source="analytics")
        sim.reset_stats()
        assert run(sim_app, iid).ok
        with sim_app.engine.begin() as conn:
            legacy_last = conn.execute(select(func.max(cost_rows.c.day))).scalar_one()
        assert legacy_last < A_FIRST
        assert requests(sim)["cost_report"] == 10  # 2025-03-11 .. 2025-12-31: 296 days
        sim.reset_stats()
        assert run(sim_app, iid, "daily").ok
        assert set(requests(sim)) == {"cost", "usage"}  # names were read in the last day

    def test_set_source_backfills_only_what_is_new(self, sim_app: App, sim: SimulatorHandle) -> None:
        """legacy -> both: the next sync backfills the analytics streams, reads the legacy reports' trailing days
        only, and lands in the truth."""
        iid = onboard(sim_app, sim, source="legacy")
        assert run(sim_app, iid).ok
        before = set_source(sim_app, iid, "both")
        assert before.source == "legacy"
        with sim_app.engine.begin() as conn:
            integ = repo.get_integration(conn, iid)
        assert integ is not None and integ.source == "both" and not integ.backfill_done and integ.status == "pending"
        sim.reset_stats()
        assert run(sim_app, iid, "manual").ok
        counts = requests(sim)
        assert counts["cost"] == counts["usage"] == 2 and counts["cost_report"] == 1
        start = TODAY - timedelta(days=29)
        assert stored(sim_app, iid, start, TODAY, "api_key") == expected(sim, 0, start, TODAY, "api_key")

    def test_restated_day_is_replaced_with_revisions(self, sim_app: App, sim: SimulatorHandle) -> None:
        """A restated day comes back in the daily re-read: its analytics rows are replaced, the changes kept."""
        iid = onboard(sim_app, sim)
        assert run(sim_app, iid).ok
        day = TODAY - timedelta(days=1)
        sim.restate(0, day)
        assert run(sim_app, iid, "daily").ok
        with sim_app.engine.begin() as conn:
            kinds = {r.kind for r in conn.execute(select(revisions).where(revisions.c.day == day))}
            runs = conn.execute(select(func.count()).select_from(sync_runs)).scalar_one()
        assert {"a_cost", "a_usage"} <= kinds and runs == 2
        start = TODAY - timedelta(days=29)
        assert stored(sim_app, iid, start, TODAY, "api_key") == expected(sim, 0, start, TODAY, "api_key")

    def test_a_daily_sync_runs_one_transaction_per_page(self, sim_app: App, sim: SimulatorHandle) -> None:
        """A daily sync of both sources (6 pages) commits its opening, its first request's rate-budget slot, one
        transaction per page (days, checkpoint, run record and the next request's slot together), its close and
        the lease's release: 10, where a transaction per reservation made 15. The slot the last page reserved
        is given back."""
        iid = onboard(sim_app, sim)
        assert run(sim_app, iid).ok
        with sim_app.engine.begin() as conn:
            tat_before = conn.execute(text("SELECT tat FROM rate_buckets WHERE bucket LIKE 'org:%'")).scalar_one()
        commits: list[int] = []
        listen = functools.partial(event.listen, sim_app.engine, "commit")
        listen(counter := lambda _conn: commits.append(1))
        try:
            outcome = run(sim_app, iid, "daily")
        finally:
            event.remove(sim_app.engine, "commit", counter)
        assert outcome.ok and "6 pages" in outcome.message and "6 requests" in outcome.message
        assert len(commits) == 10
        with sim_app.engine.begin() as conn:
            tat = conn.execute(text("SELECT tat FROM rate_buckets WHERE bucket LIKE 'org:%'")).scalar_one()
        interval = 60 / sim_app.settings.requests_per_minute
        assert tat_before < tat <= sim_app.clock.time() + interval  # six slots used, none held past the run

    def test_one_budget_for_both_sources(self, sim: SimulatorHandle, db_url: str, tmp_path: Path,
                                         master_key: MasterKey) -> None:
        """At 60 requests a minute against a simulator enforcing 60, both sources' requests share the bucket:
        no 429."""
        clock = FakeClock()
        with running_simulator(orgs=1, seed=5, today=TODAY, requests_per_minute=60, clock=clock.time) as limited:
            app = App(make_settings(db_url, tmp_path, master_key, api_base_url=limited.base_url,
                                    requests_per_minute=60.0), clock=clock)
            try:
                iid = onboard(app, limited)
                assert run(app, iid).ok
                total = limited.stats()["total"]
            finally:
                app.close()
        assert total["rate_limited"] == 0 and total["requests"] >= 10
