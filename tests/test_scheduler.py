"""The service's schedule with a fake clock: backfills picked up, the daily slot run once, catch-up
after a restart, isolation of failures, and the APScheduler job settings."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from tests.conftest import fake_clock
from tests.simulated import make_sim
from tests.test_sync import integration, onboard
from worker.api import Organization
from worker.app import App, DbExecutor, db_threads
from worker.integrations import connect
from worker.secret import AdminKey
from worker.simulator import SimulatorHandle
from worker.storage import repo
from worker.sync.scheduler import SyncService


@pytest.fixture
def sim() -> SimulatorHandle:
    return make_sim(orgs=4, seed=5)


def connect_org(app: App, sim: SimulatorHandle, org: int) -> int:
    """Connect org `org` without a connection test (no request)."""
    o = sim.orgs[org]
    return connect(app, AdminKey(sim.keys[org]), Organization(o.id, o.name, "organization"), label=o.name,
                   tier="free", source="legacy")


def dispatch(service: SyncService) -> list[str]:
    """One poll: start whatever is due and wait for it; returns the kinds that ran (from the tasks the poll
    started: a sync may end, and leave `service.tasks`, while the poll evaluates budgets)."""
    async def go() -> list[str]:
        started = await service.dispatch_due()
        results = await asyncio.gather(*started)
        return sorted(r.kind for r in results if r is not None and not r.skipped)
    return asyncio.run(go())


class TestDispatch:
    def test_pending_backfill_then_daily_slot_once(self, app: App, sim: SimulatorHandle) -> None:
        """A connected integration is backfilled at the next poll; the next 06:00 runs once, however often polled."""
        iid = onboard(app, sim)
        service = SyncService(app, transport=sim.transport())
        assert dispatch(service) == ["backfill"]
        assert integration(app, iid).status == "ok"
        assert dispatch(service) == []  # nothing due until the next slot
        fake_clock(app).advance((datetime(2026, 3, 11, 6, 0, 30, tzinfo=UTC) - app.clock.now()).total_seconds())
        sim.requests.clear()
        assert dispatch(service) == ["daily"]
        assert len(sim.requests) == 2
        assert dispatch(service) == [] and dispatch(service) == []
        assert integration(app, iid).last_daily_slot == datetime(2026, 3, 11, 6, tzinfo=UTC)

    def test_poll_returns_the_syncs_it_started_even_when_they_ended(self, app: App, sim: SimulatorHandle,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        """A sync can end while the poll still evaluates budgets (it then leaves `service.tasks`): the poll's
        answer still names it, so a caller waiting for the poll's work never misses one."""
        onboard(app, sim)
        service = SyncService(app, transport=sim.transport())

        async def slow_watch(_app: App) -> None:
            while service.tasks:  # the poll's own step outlasts the sync
                await asyncio.sleep(0)
        monkeypatch.setattr("worker.sync.scheduler.on_poll", slow_watch)

        async def go() -> list[str]:
            started = await service.dispatch_due()
            assert not service.tasks and all(t.done() for t in started)
            return [outcome.kind for outcome in await asyncio.gather(*started) if outcome is not None]
        assert asyncio.run(go()) == ["backfill"]

    def test_restart_after_missed_slot_runs_it_once(self, app: App, sim: SimulatorHandle) -> None:
        """A worker down at 06:00 runs that day's sync once when it comes back at 09:00."""
        iid = onboard(app, sim)
        dispatch(SyncService(app, transport=sim.transport()))
        fake_clock(app).advance((datetime(2026, 3, 11, 9, 0, tzinfo=UTC) - app.clock.now()).total_seconds())
        restarted = App(app.settings, clock=app.clock)
        replica = App(app.settings, clock=app.clock)  # a second replica/process polling the same database
        try:  # closed even when an assertion fails: a leaked engine's connections warn in a later test
            service = SyncService(restarted, transport=sim.transport())
            assert dispatch(service) == ["daily"]
            assert dispatch(service) == []
            assert dispatch(SyncService(replica, transport=sim.transport())) == []  # it finds the slot taken
        finally:
            replica.close()
            restarted.close()
        assert integration(app, iid).status == "ok"

    def test_daily_job_and_poll_firing_together_start_one_sync(self, app: App, sim: SimulatorHandle) -> None:
        """The cron job and the poll are separate APScheduler jobs: at 06:00 both may read the due rows before
        either has started a task. One sync per integration starts; a second one (same lease owner) would lose
        the slot claim and release the lease under the first, whose next page then failed as LeaseLost."""
        iid = onboard(app, sim)
        service = SyncService(app, transport=sim.transport())
        dispatch(service)
        fake_clock(app).advance((datetime(2026, 3, 11, 6, 0, 1, tzinfo=UTC) - app.clock.now()).total_seconds())

        async def go() -> None:
            polls = await asyncio.gather(service.dispatch_due(), service.dispatch_due())
            await asyncio.gather(*polls[0], *polls[1])
        asyncio.run(go())
        assert service.outcomes[("daily", "ok")] == 1
        assert service.outcomes[("daily", "skipped")] == 0
        with app.engine.begin() as conn:
            runs = repo.recent_runs(conn, iid)
        assert [(r["kind"], r["outcome"]) for r in runs if r["kind"] == "daily"] == [("daily", "ok")]

    def test_syncs_share_one_tls_context(self, app: App, sim: SimulatorHandle, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each sync has its own small connection pool, all on one TLS context: httpx builds a context per
        transport otherwise (the CA bundle loaded again: ~25 ms of CPU and ~1 MiB for every organization)."""

        iids = [onboard(app, sim), connect_org(app, sim, 1)]
        made: list[dict[str, object]] = []

        class Recording(httpx.MockTransport):
            def __init__(self, **kwargs: object) -> None:
                made.append(kwargs)
                super().__init__(sim.transport().handle_request)
        monkeypatch.setattr(httpx, "AsyncHTTPTransport", Recording)  # what the engine builds
        service = SyncService(app)  # no test transport: the syncs make their own
        assert sorted(dispatch(service)) == ["backfill", "backfill"]
        assert len(made) == 2
        contexts = [m.get("verify") for m in made]
        assert isinstance(contexts[0], ssl.SSLContext) and contexts[1] is contexts[0]
        assert all(integration(app, i).status == "ok" for i in iids)

    def test_pages_in_flight_are_bounded_across_syncs(self, app: App, sim: SimulatorHandle,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """Pages requested and not yet stored, over all the syncs of the service, never exceed its page slots
        (memory stays flat with the fleet's size); a slot is taken after the rate wait and given back after
        the store, or when a sync fails mid-page."""
        from worker.sync.engine import IntegrationSync

        iids = [onboard(app, sim)] + [connect_org(app, sim, i) for i in range(1, 4)]
        blocked = iids[-1]
        sim.add_fault("403:org=3,rate=1")  # it fails after taking its slot
        outstanding = [0, 0]  # now, most ever
        both_slots_taken = asyncio.Event()
        store = IntegrationSync._store

        def counted_store(self: IntegrationSync, *args: Any) -> int:  # whatever _store takes
            outstanding[0] -= 1
            return store(self, *args)
        monkeypatch.setattr(IntegrationSync, "_store", counted_store)

        class Counting(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                outstanding[0] += 1
                outstanding[1] = max(outstanding[1], outstanding[0])
                if outstanding[0] >= 2:
                    both_slots_taken.set()
                # Hold the first page until a second sync has taken the other slot (bounded: never a hang).
                await asyncio.wait_for(both_slots_taken.wait(), timeout=30)
                response = await sim.transport().handle_async_request(request)
                if response.status_code != 200:
                    outstanding[0] -= 1  # no page to store: its slot is given back now
                return response

        service = SyncService(app, transport=Counting())
        service.page_slots = asyncio.Semaphore(2)
        assert dispatch(service) == ["backfill"] * 4
        assert outstanding == [0, 2]
        assert service.page_slots._value == 2  # every slot given back, the blocked sync's too
        assert integration(app, blocked).status == "error"

    def test_stopped_while_opening_leaves_no_lease_or_running_record(self, app: App, sim: SimulatorHandle,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """A sync cancelled (SIGTERM) while its opening transaction (lease, slot, run record) runs on the database
        thread: that transaction still commits, so the sync undoes it: run `interrupted`, lease released."""
        from worker.sync.engine import IntegrationSync, sync_integration

        iid = onboard(app, sim)
        started, proceed = threading.Event(), threading.Event()
        original = IntegrationSync._open

        def slow_open(self: IntegrationSync) -> object:
            started.set()
            proceed.wait(5)
            return original(self)
        monkeypatch.setattr(IntegrationSync, "_open", slow_open)

        async def go() -> None:
            task = asyncio.create_task(sync_integration(app, iid, "backfill", transport=sim.transport()))
            await asyncio.to_thread(started.wait, 5)
            task.cancel()
            await asyncio.sleep(0.01)
            proceed.set()
            with pytest.raises(asyncio.CancelledError):
                await task
        asyncio.run(go())
        assert integration(app, iid).lease_owner is None
        with app.engine.begin() as conn:
            assert [(r["kind"], r["outcome"]) for r in repo.recent_runs(conn, iid)] == [("backfill", "interrupted")]

    def test_a_failing_integration_does_not_stop_the_others(self, app: App, sim: SimulatorHandle) -> None:
        """Two integrations due; one is blocked (403), the other still syncs."""
        good = onboard(app, sim)
        bad = connect_org(app, sim, 1)
        sim.add_fault("403:org=1,rate=1,message=not an admin key")
        service = SyncService(app, transport=sim.transport())
        dispatch(service)
        assert integration(app, good).status == "ok"
        assert integration(app, bad).status == "error"
        assert "not an admin key" in (integration(app, bad).last_error or "")


class TestJobs:
    def test_daily_job_is_utc_with_deliberate_misfire_handling(self, app: App) -> None:
        """The cron job fires at 06:00 UTC (explicit timezone), coalesces, and tolerates late starts."""
        async def go() -> None:
            scheduler = SyncService(app).build_scheduler()
            daily, poll = scheduler.get_job("daily"), scheduler.get_job("poll")
            assert isinstance(daily.trigger, CronTrigger)
            assert str(daily.trigger.timezone) == "UTC" and str(scheduler.timezone) == "UTC"
            fields = {f.name: str(f) for f in daily.trigger.fields}
            assert (fields["hour"], fields["minute"]) == ("6", "0")
            assert daily.coalesce is True and daily.misfire_grace_time >= 3600
            assert isinstance(poll.trigger, IntervalTrigger)
            assert poll.trigger.interval <= timedelta(seconds=10)  # picked up within 10 s
        asyncio.run(go())

    def test_custom_sync_time(self, app: App) -> None:
        """daily_sync_time moves the cron job."""
        from datetime import time as dtime

        app.settings.daily_sync_time = dtime(7, 30)

        async def go() -> None:
            fields = {f.name: str(f) for f in SyncService(app).build_scheduler().get_job("daily").trigger.fields}
            assert (fields["hour"], fields["minute"]) == ("7", "30")
        asyncio.run(go())


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_stops_cleanly_on_signal(tmp_path: Path, sig: signal.Signals) -> None:
    """`cost-worker run` starts, then exits 0 within 10 s of SIGTERM/SIGINT."""
    env = {**os.environ, "COST_WORKER_DATA_DIR": str(tmp_path), "COST_WORKER_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        lines = []
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "cost-worker running" in line:
                break
        assert any("cost-worker running" in ln for ln in lines), lines
        assert any("PRODUCTION MUST SUPPLY ITS OWN" in ln for ln in lines)  # the generated key warning
        t0 = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


class TestDbExecutor:
    """The threads database calls of the service run on: small transactions before page stores."""

    def test_small_calls_go_before_queued_bulk_calls(self) -> None:
        executor = DbExecutor(threads=1, bulk_threads=1)
        gate = threading.Event()
        order: list[str] = []
        blocker = executor.submit(gate.wait)
        futures = [executor.submit(functools.partial(order.append, name), bulk=name.startswith("bulk"))
                   for name in ("bulk 1", "small 1", "bulk 2", "small 2")]
        gate.set()
        blocker.result(5)
        for f in futures:
            f.result(5)
        assert order == ["small 1", "small 2", "bulk 1", "bulk 2"]
        executor.shutdown()

    def test_bulk_calls_are_bounded_and_never_block_small_ones(self) -> None:
        executor = DbExecutor(threads=3, bulk_threads=1)
        release = threading.Event()
        running: list[int] = [0, 0]
        lock = threading.Lock()

        def bulk() -> None:
            with lock:
                running[0] += 1
                running[1] = max(running[1], running[0])
            release.wait(5)
            with lock:
                running[0] -= 1
        bulks = [executor.submit(bulk, bulk=True) for _ in range(3)]
        assert executor.submit(lambda: "small").result(5) == "small"  # while a bulk call holds a thread
        release.set()
        for f in bulks:
            f.result(5)
        assert running == [0, 1]
        executor.shutdown()

    def test_errors_reach_the_caller_and_idle_threads_exit(self) -> None:
        executor = DbExecutor(threads=2, bulk_threads=1, idle_seconds=0.05)

        def fail() -> None:
            raise ValueError("boom")
        with pytest.raises(ValueError, match="boom"):
            executor.submit(fail).result(5)
        deadline = time.monotonic() + 5
        while executor._workers and time.monotonic() < deadline:
            time.sleep(0.01)
        assert executor._workers == 0
        assert executor.submit(lambda: 1).result(5) == 1  # a new thread starts on demand
        executor.shutdown()
        with pytest.raises(RuntimeError):
            executor.submit(lambda: 1)

    def test_app_db_runs_in_the_callers_context(self, app: App) -> None:
        """Log fields bound in the task (contextvars) are seen by the call on the database thread."""
        var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

        async def go() -> tuple[str, threading.Thread]:
            var.set("task")
            return await app.db(var.get), await app.db(threading.current_thread)
        seen, thread = asyncio.run(go())
        assert seen == "task"
        assert thread.name.startswith("cost-worker-db")
        assert db_threads("sqlite") == (1, 1) and db_threads("postgresql")[0] > 1


def test_reaping_reads_only_running_records(app: App) -> None:
    """Every poll's search for `running` records of dead processes seeks the partial index instead of
    scanning a year of runs (SQLite's plan; PostgreSQL plans tiny test tables as scans either way)."""
    if app.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's plan")
    from sqlalchemy import event

    from worker.storage.repo import reap_abandoned_runs
    from worker.sync.scheduler import ABANDONED

    seen: list[tuple[str, Any]] = []

    def capture(_conn: object, _cursor: object, statement: str, parameters: object, *_: object) -> None:
        if statement.startswith("UPDATE sync_runs"):
            seen.append((statement, parameters))

    event.listen(app.engine, "before_cursor_execute", capture)
    try:
        with app.engine.begin() as conn:
            reap_abandoned_runs(conn, datetime.now(UTC), ABANDONED)
    finally:
        event.remove(app.engine, "before_cursor_execute", capture)
    (statement, parameters), = seen
    with app.engine.connect() as conn:
        plan = " ".join(str(r) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
    assert "USING INDEX ix_sync_runs_running" in plan, plan
