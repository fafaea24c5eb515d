"""Faults nothing anticipates end as recorded failures, never as a sync left `running`: an answer nested
too deep to decode, a token count the database cannot hold, a full database. Each leaves its run record
`error` with a reason and a finish time, the integration `error` with `last_error`, the stored rows
exactly as they were, and `run` backs off between attempts (exponential, bounded, reset on success).

Against the local simulator over real HTTP (its data is the ground truth); a transport wrapper turns one
answer hostile."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import OperationalError

from tests.conftest import fake_clock, make_settings
from worker.api.client import tls_context
from worker.app import App
from worker.clock import FakeClock
from worker.integrations import check_connection, connect
from worker.secret import AdminKey
from worker.settings import Tier
from worker.simulator import SimulatorHandle, running_simulator
from worker.storage import repo
from worker.storage.rows import usage_table_rows
from worker.storage.tables import cost_rows, revisions, usage_rows
from worker.sync import engine as sync_engine
from worker.sync.engine import RETRY_MAX_SECONDS, Kind, retry_delay, sync_integration, sync_now
from worker.sync.scheduler import SyncService
from worker.vault import MasterKey

TODAY = FakeClock().now().date()
USAGE = "usage_report"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    with running_simulator(orgs=1, seed=4, today=TODAY, requests_per_minute=0) as handle:
        yield handle


@pytest.fixture
def app(db_url: str, tmp_path: Any, master_key: MasterKey, clock: FakeClock, sim: SimulatorHandle) -> Iterator[App]:
    application = App(make_settings(db_url, tmp_path, master_key, api_base_url=sim.base_url,
                                    requests_per_minute=6000, burst=10), clock=clock)
    yield application
    application.close()


class Hostile(httpx.AsyncBaseTransport):
    """Real answers from the simulator, except that `spoil(request)` may replace one with its own."""

    def __init__(self) -> None:
        self.spoil: Callable[[httpx.Request], httpx.Response | None] = lambda _request: None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        replaced = self.spoil(request)
        if replaced is not None:
            return replaced
        async with httpx.AsyncHTTPTransport(verify=tls_context()) as inner:  # one per request: tests run several loops
            response = await inner.handle_async_request(request)
            body = await response.aread()
        return httpx.Response(response.status_code, headers=response.headers, content=body)


def nested_json(request: httpx.Request) -> httpx.Response | None:
    """Usage pages answer 200 with JSON nested 200,000 deep (the stdlib decoder recurses on it)."""
    if USAGE not in request.url.path:
        return None
    return httpx.Response(200, content=b"[" * 200_000 + b"]" * 200_000,
                          headers={"content-type": "application/json", "request-id": "req_nested"})


def onboard(app: App, sim: SimulatorHandle, tier: Tier = "free") -> int:
    key = AdminKey(sim.keys[0])
    org = asyncio.run(check_connection(app, key))
    return connect(app, key, org, label=None, tier=tier)


def stored(app: App, iid: int) -> tuple[Any, ...]:
    """Every row stored for the integration, its checkpoints and revisions: what a failure must not touch."""
    with app.engine.connect() as conn:
        tables = tuple(sorted(tuple(r[2:]) for r in conn.execute(select(t).where(t.c.integration_id == iid)))
                       for t in (cost_rows, usage_rows))
        history = len(conn.execute(select(revisions)).all())
        integ = repo.get_integration(conn, iid)
    assert integ is not None
    return (*tables, history, integ.cost_checkpoint, integ.usage_checkpoint, integ.backfill_done)


def sync(app: App, iid: int, transport: httpx.AsyncBaseTransport, kind: Kind = "manual") -> Any:
    return asyncio.run(sync_integration(app, iid, kind, transport=transport))


def assert_recorded_failure(app: App, iid: int, reason: str) -> dict[str, Any]:
    """The latest run is `error` with `reason` in its error and a finish time; the integration `error`."""
    with app.engine.begin() as conn:
        run = repo.recent_runs(conn, iid, limit=1)[0]
        integ = repo.get_integration(conn, iid)
    assert integ is not None
    assert run["outcome"] == "error" and run["finished_at"] is not None, run
    assert reason in run["error"], run["error"]
    assert integ.status == "error" and integ.last_error == run["error"]
    assert integ.lease_owner is None  # released
    return run


class TestRecordedFailures:
    def test_answer_nested_too_deep(self, app: App, sim: SimulatorHandle) -> None:
        """A usage page of deeply nested JSON: the run fails with a reason, nothing stored changes, and the
        next sync with a sane answer succeeds (the failure is not sticky)."""
        iid = onboard(app, sim)
        transport = Hostile()
        assert sync(app, iid, transport, "backfill").ok
        before = stored(app, iid)
        transport.spoil = nested_json
        outcome = sync(app, iid, transport)
        assert not outcome.ok and outcome.message.startswith("failed: ")
        run = assert_recorded_failure(app, iid, "")
        assert "nest" in run["error"].lower() or "recursion" in run["error"].lower(), run["error"]
        assert stored(app, iid) == before
        transport.spoil = lambda _request: None
        assert sync(app, iid, transport).ok
        assert (repo_integration := _integration(app, iid)).status == "ok" and repo_integration.last_error is None

    def test_token_count_the_database_cannot_hold(self, app: App, sim: SimulatorHandle,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        """A usage row whose count is 2^63 reaches the driver (OverflowError on SQLite, out of range on
        PostgreSQL): that page's transaction rolls back whole, mid-backfill, and the run is an error."""
        iid = onboard(app, sim)
        def huge(integration_id: int, rows: Any) -> list[dict[str, Any]]:
            table = usage_table_rows(integration_id, rows)
            table[-1]["output_tokens"] = 2**63
            return table
        monkeypatch.setattr(sync_engine, "usage_table_rows", huge)
        before = stored(app, iid)
        outcome = sync(app, iid, Hostile(), "backfill")
        assert not outcome.ok
        assert_recorded_failure(app, iid, "internal error: ")
        after = stored(app, iid)
        assert after[1] == before[1] == []  # no usage row at all: the page rolled back whole
        assert after[4] == before[4]  # the usage checkpoint did not move
        assert len(after[0]) > 0  # the cost page stored before it stays (its own transaction)

    def test_database_full(self, app: App, sim: SimulatorHandle) -> None:
        """SQLite's "database or disk is full" mid-backfill (the file may not grow): the page rolls back, the
        failure is recorded (updating rows in place needs no new page), the rows stay as they were."""
        if app.engine.dialect.name != "sqlite":
            pytest.skip("SQLite's page limit")
        iid = onboard(app, sim)
        before = stored(app, iid)
        with app.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
        limit_pages(app.engine, pages + 1)
        outcome = sync(app, iid, Hostile(), "backfill")
        assert not outcome.ok
        assert_recorded_failure(app, iid, "database or disk is full")
        assert stored(app, iid) == before


def limit_pages(engine: Engine, pages: int) -> None:
    """Every new connection of `engine` may grow the file to `pages` pages at most."""
    engine.dispose()

    @event.listens_for(engine, "connect")
    def _limit(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")


def finished_by_one_poll(service: SyncService) -> list[tuple[str, str]]:
    """One poll, waited for: the (kind, result) of every sync it started (from the service's own counts: a
    sync may end, and leave `service.tasks`, before the poll returns)."""
    before = Counter(service.outcomes)

    async def go() -> None:
        await asyncio.gather(*await service.dispatch_due())
    asyncio.run(go())
    return sorted((service.outcomes - before).elements())


def _integration(app: App, iid: int) -> repo.Integration:
    with app.engine.begin() as conn:
        found = repo.get_integration(conn, iid)
    assert found is not None
    return found


class TestBackoff:
    def test_retry_delays_double_up_to_an_hour(self) -> None:
        """1 min, 2, 4, ... then 1 h for ever."""
        assert [retry_delay(n) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
        assert retry_delay(10_000) == RETRY_MAX_SECONDS

    def test_run_backs_off_between_attempts_and_resets_on_success(self, app: App, sim: SimulatorHandle) -> None:
        """A failing integration is tried again only once its backoff has passed (each failure doubles it),
        never at every poll; once a try succeeds the integration is `ok` and the backoff is gone."""
        iid = onboard(app, sim)
        transport = Hostile()
        transport.spoil = nested_json
        service = SyncService(app, transport=transport)
        clock = fake_clock(app)

        def poll() -> list[str]:
            return [kind for kind, result in finished_by_one_poll(service) if result != "skipped"]

        assert poll() == ["backfill"]  # the connect's backfill: fails (usage pages)
        for attempt in range(1, 8):
            integ = _integration(app, iid)
            assert (integ.status, integ.failed_attempts) == ("error", attempt)
            assert integ.retry_at == clock.now() + timedelta(seconds=retry_delay(attempt))
            for _ in range(3):
                assert poll() == []  # polls before the backoff ends start nothing
            clock.advance(retry_delay(attempt) - 1)
            assert poll() == []
            clock.advance(1)
            assert poll() == ["backfill"]
        assert _integration(app, iid).retry_at == clock.now() + timedelta(seconds=RETRY_MAX_SECONDS)
        transport.spoil = lambda _request: None
        clock.advance(RETRY_MAX_SECONDS)
        assert poll() == ["backfill"]
        integ = _integration(app, iid)
        assert (integ.status, integ.failed_attempts, integ.retry_at, integ.backfill_done) == ("ok", 0, None, True)
        assert poll() == []

    def test_a_blocked_key_waits_for_a_person(self, app: App, sim: SimulatorHandle) -> None:
        """401 (a revoked key): recorded, and not retried by itself (a new key, or the next daily slot)."""
        iid = onboard(app, sim)
        transport = Hostile()
        transport.spoil = lambda r: httpx.Response(401, json={"type": "error", "error": {
            "type": "authentication_error", "message": "invalid x-api-key"}}) if "_report" in r.url.path else None
        sync(app, iid, transport, "backfill")
        integ = _integration(app, iid)
        assert (integ.status, integ.failed_attempts, integ.retry_at) == ("error", 1, None)

    def test_a_failure_nothing_could_record_backs_off_in_memory(self, app: App, sim: SimulatorHandle,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        """The database refuses the run's opening transaction: no record is possible, so the service keeps
        the backoff itself, and `sync-now` reports the failure (exit 1) instead of an internal error."""
        iid = onboard(app, sim)

        def refused(*_args: Any, **_kwargs: Any) -> int:
            raise OperationalError("INSERT INTO sync_runs", {}, Exception("database or disk is full"))
        monkeypatch.setattr(repo, "start_run", refused)
        [outcome] = asyncio.run(sync_now(app, [iid], transport=Hostile()))
        assert not outcome.ok and not outcome.recorded
        assert outcome.message == "failed: internal error: Exception: database or disk is full"
        assert _integration(app, iid).lease_owner is None and app.claims.claim(iid)  # lease and claim given back
        app.claims.release(iid)

        service = SyncService(app, transport=Hostile())
        clock = fake_clock(app)

        def poll() -> int:
            return len(finished_by_one_poll(service))
        assert poll() == 1
        assert poll() == 0
        clock.advance(retry_delay(1))
        assert poll() == 1
        assert poll() == 0
        clock.advance(retry_delay(1))
        assert poll() == 0  # the second failure doubled it
        clock.advance(retry_delay(2) - retry_delay(1))
        assert poll() == 1
