"""Sync end to end against the simulator in-process: exact totals against its ground truth, checkpoints and
resume, failures, restatements and idempotence. Time is a FakeClock: rate-limit waits cost nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from tests.conftest import fake_clock
from tests.simulated import COST_PATH, TODAY, USAGE_PATH, Truth, key_hint, make_sim, report_requests
from worker.api import Organization
from worker.app import App
from worker.integrations import check_connection, connect
from worker.secret import AdminKey
from worker.settings import Tier
from worker.simulator import SimulatorHandle
from worker.storage import repo
from worker.storage.tables import cost_rows, integrations, sync_runs, usage_rows
from worker.sync.engine import TAKEN_OVER, Kind, sync_integration, sync_now


@pytest.fixture(scope="module")
def module_sim() -> SimulatorHandle:
    """Two organizations with two years of data up to today (generated days are cached: reset per test)."""
    return make_sim(orgs=2, seed=11)


@pytest.fixture
def sim(module_sim: SimulatorHandle) -> SimulatorHandle:
    module_sim.reset()  # faults, revocations, restatements, stats and recorded requests
    module_sim.app.max_results = None
    return module_sim


def onboard(app: App, sim: SimulatorHandle, tier: Tier = "free", org: int = 0) -> int:
    key = AdminKey(sim.keys[org])
    organization = asyncio.run(check_connection(app, key, transport=sim.transport()))
    return connect(app, key, organization, label=None, tier=tier, source="legacy")


def run(app: App, iid: int, kind: Kind, sim: SimulatorHandle | httpx.AsyncBaseTransport) -> Any:
    transport = sim.transport() if isinstance(sim, SimulatorHandle) else sim
    return asyncio.run(sync_integration(app, iid, kind, transport=transport))


def stored_report(app: App, since: date, until: date) -> dict[tuple[date, str | None], Any]:
    with app.engine.begin() as conn:
        return {(r.date, r.model): r for r in repo.report(conn, since, until)}


def assert_matches_truth(app: App, sim: SimulatorHandle, first: date, last: date, org: int = 0) -> None:
    """Every (day, model) of [first, last] equals the simulator's truth, to the fraction of a cent and the token:
    no row missing, none extra."""
    stored = {key: (r.cost_usd, r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens)
              for key, r in stored_report(app, first, last).items()}
    truth = Truth(sim, first, last + timedelta(days=1), org).report_rows()
    assert len(truth) > 0
    assert stored == truth


def table_dump(app: App) -> list[tuple[Any, ...]]:
    with app.engine.begin() as conn:
        costs = conn.execute(select(*[c for c in cost_rows.c if c.name != "id"])).all()
        usage = conn.execute(select(*[c for c in usage_rows.c if c.name != "id"])).all()
    return sorted(map(tuple, costs), key=repr) + sorted(map(tuple, usage), key=repr)


def integration(app: App, iid: int) -> repo.Integration:
    with app.engine.begin() as conn:
        found = repo.get_integration(conn, iid)
    assert found is not None
    return found


class TestConnect:
    def test_connection_test_then_stored_sealed(self, app: App, sim: SimulatorHandle) -> None:
        """connect runs /me and one small cost report, then stores the key sealed, never in plain text."""
        iid = onboard(app, sim)
        assert [r.path for r in sim.requests] == ["/v1/organizations/me", COST_PATH]
        assert sim.requests[1].param("limit") == "1"
        integ = integration(app, iid)
        name = sim.orgs[0].name
        assert (integ.status, integ.tier, integ.organization_name) == ("pending", "free", name)
        assert integ.label == f"Anthropic - {name}"
        assert sim.keys[0].encode() not in integ.key_ciphertext
        assert integ.key_hint == key_hint(sim.keys[0])
        assert (integ.backfill_start, integ.backfill_end) == (TODAY - timedelta(days=29), TODAY)

    def test_connection_test_respects_the_budget(self, app: App, sim: SimulatorHandle) -> None:
        """/me and the report request are spaced by the organization's budget (1 per minute)."""
        onboard(app, sim)
        assert fake_clock(app).sleeps == [pytest.approx(60)]

    def test_same_organization_twice_is_refused(self, app: App, sim: SimulatorHandle) -> None:
        """A second integration for an organization already connected is refused with a clear message."""
        from worker.integrations import IntegrationError

        onboard(app, sim)
        with pytest.raises(IntegrationError, match="already connected as integration 1"):
            onboard(app, sim)


class TestBackfill:
    @pytest.mark.parametrize(("tier", "days", "requests"), [
        ("free", 30, 2), pytest.param("pro", 365, 24, marks=pytest.mark.slow)])  # slow: a year of data
    def test_tier_backfill_equals_truth(self, app: App, sim: SimulatorHandle, tier: Tier, days: int,
                                        requests: int) -> None:
        """A tier's backfill stores exactly the truth for its days, with the minimum number of requests."""
        iid = onboard(app, sim, tier)
        sim.requests.clear()
        outcome = run(app, iid, "backfill", sim)
        assert outcome.ok, outcome.message
        first = TODAY - timedelta(days=days - 1)
        assert_matches_truth(app, sim, first, TODAY)
        assert len(sim.requests) == requests  # ceil(days / 31) per endpoint
        for r in sim.requests:
            assert r.param("limit") == "31"
            assert r.param("bucket_width") == "1d"
        integ = integration(app, iid)
        assert (integ.status, integ.backfill_done, integ.last_error) == ("ok", True, None)
        assert integ.cost_checkpoint == integ.usage_checkpoint == TODAY + timedelta(days=1)
        with app.engine.begin() as conn:
            (run_row,) = repo.recent_runs(conn, iid)
        assert (run_row["kind"], run_row["outcome"], run_row["requests"], run_row["pages"]) == (
            "backfill", "ok", requests, requests)
        assert (run_row["window_start"], run_row["window_end"]) == (first, TODAY)
        assert run_row["rows"] > 0 and run_row["duration_seconds"] is not None

    @pytest.mark.slow  # a year of data
    def test_requests_are_spaced_by_the_budget(self, app: App, sim: SimulatorHandle) -> None:
        """A 365-day backfill at 1 request/minute waits 60 s between its 24 requests, never less."""
        iid = onboard(app, sim, "pro")
        fake_clock(app).sleeps.clear()
        run(app, iid, "backfill", sim)
        sleeps = fake_clock(app).sleeps
        assert len(sleeps) == 24 and all(s == pytest.approx(60) for s in sleeps)

    @pytest.mark.slow  # a year of data
    def test_resume_after_crash_refetches_only_the_page_in_flight(self, app: App, sim: SimulatorHandle,
                                                                  request: pytest.FixtureRequest) -> None:
        """A process killed mid-backfill resumes at its checkpoint: no page skipped, one re-fetched."""
        iid = onboard(app, sim, "pro")
        sim.requests.clear()

        class Crash(BaseException):
            pass

        inner = sim.transport()

        class CrashingTransport(httpx.AsyncBaseTransport):
            calls = 0

            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                CrashingTransport.calls += 1
                response = await inner.handle_async_request(request)
                if CrashingTransport.calls == 9:  # the 9th response arrives, then the process dies
                    raise Crash()
                return response

        with pytest.raises(Crash):
            run(app, iid, "backfill", CrashingTransport())
        # A hard kill leaves its lease and `running` record behind, but not its claim (a lock that died with
        # it): the next process takes over at once, not when the lease expires.
        with app.engine.begin() as conn:
            repo.update_integration(conn, iid, lease_owner="dead-process",
                                    lease_expires_at=app.clock.now() + timedelta(seconds=300))
            conn.execute(update(sync_runs).where(sync_runs.c.integration_id == iid).values(outcome="running"))
        restarted = App(app.settings, clock=app.clock)
        request.addfinalizer(restarted.close)
        before = len(sim.requests)
        outcome = run(restarted, iid, "backfill", sim)
        assert outcome.ok, outcome.message
        assert len(sim.requests) - before == 24 - 8  # 8 pages were stored; the 9th is fetched again
        assert_matches_truth(restarted, sim, TODAY - timedelta(days=364), TODAY)
        with restarted.engine.begin() as conn:
            first, second = sorted(repo.recent_runs(conn, iid), key=lambda r: r["id"])
        assert (first["outcome"], first["error"]) == ("interrupted", TAKEN_OVER)
        assert second["outcome"] == "ok" and integration(restarted, iid).lease_owner is None

    def test_any_order_of_overlapping_syncs_gives_the_same_rows(self, app: App, sim: SimulatorHandle) -> None:
        """Backfill, daily and manual syncs in any order and repeated leave identical rows."""
        iid = onboard(app, sim)
        run(app, iid, "backfill", sim)
        reference = table_dump(app)
        for kind in ("daily", "manual", "daily", "backfill"):
            assert run(app, iid, kind, sim).ok
        assert table_dump(app) == reference
        with app.engine.begin() as conn:
            assert repo.revisions_for(conn, iid) == []


class TestFailures:
    def test_401_mid_backfill_marks_error_and_keeps_what_was_stored(self, app: App, sim: SimulatorHandle) -> None:
        """A key revoked mid-backfill stops the integration with advice; committed pages and checkpoint stay."""
        iid = onboard(app, sim, "pro")
        sim.requests.clear()
        sim.add_fault("401:after=6,rate=1")  # every request after the sixth
        outcome = run(app, iid, "backfill", sim)
        assert not outcome.ok
        integ = integration(app, iid)
        assert integ.status == "error"
        assert "revoked" in (integ.last_error or "") or "expired" in (integ.last_error or "")
        assert not integ.backfill_done
        assert integ.cost_checkpoint == TODAY - timedelta(days=364) + timedelta(days=93)
        assert_matches_truth(app, sim, TODAY - timedelta(days=364), TODAY - timedelta(days=364 - 92))
        with app.engine.begin() as conn:
            (run_row,) = repo.recent_runs(conn, iid)
        assert run_row["outcome"] == "error" and run_row["pages"] == 6

    def test_429_waits_retry_after_then_succeeds(self, app: App, sim: SimulatorHandle) -> None:
        """A 429 with retry-after 90 is honoured (never less) and counted in the run record."""
        iid = onboard(app, sim)
        sim.requests.clear()
        sim.add_fault("429:retry_after=90")
        fake_clock(app).sleeps.clear()
        assert run(app, iid, "backfill", sim).ok
        assert max(fake_clock(app).sleeps) >= 90
        with app.engine.begin() as conn:
            (run_row,) = repo.recent_runs(conn, iid)
        assert (run_row["rate_limited"], run_row["retries"], run_row["requests"]) == (1, 1, 3)
        assert_matches_truth(app, sim, TODAY - timedelta(days=29), TODAY)

    def test_has_more_without_cursor_is_an_error_not_a_short_window(self, app: App, sim: SimulatorHandle) -> None:
        """A page claiming more data without a cursor fails the sync; the backfill is not marked done."""
        iid = onboard(app, sim)
        sim.add_fault("no-next-page")
        outcome = run(app, iid, "backfill", sim)
        integ = integration(app, iid)
        assert not outcome.ok and integ.status == "error" and not integ.backfill_done
        assert "cursor" in (integ.last_error or "").lower() or "next_page" in (integ.last_error or "")

    def test_one_failing_integration_does_not_stop_others(self, app: App, sim: SimulatorHandle) -> None:
        """sync-now over two integrations: one blocked, the other still completes."""
        good = onboard(app, sim)
        org = Organization(id=sim.orgs[1].id, name=sim.orgs[1].name, type="organization")
        bad = connect(app, AdminKey(sim.keys[1]), org, label="bad", tier="free", source="legacy")
        sim.add_fault("403:org=1,rate=1")
        outcomes = asyncio.run(sync_now(app, [good, bad], transport=sim.transport()))
        results = {o.integration_id: o for o in outcomes}
        assert results[good].ok and not results[bad].ok
        assert_matches_truth(app, sim, TODAY - timedelta(days=29), TODAY)
        assert integration(app, bad).status == "error"
        assert "admin" in (integration(app, bad).last_error or "").lower() or "permission" in (
            integration(app, bad).last_error or "").lower()


class TestRestatement:
    def test_daily_reread_picks_up_a_restated_day_and_keeps_history(self, app: App, sim: SimulatorHandle) -> None:
        """A past day changed upstream is replaced by the daily re-read; every row that changed, vanished or
        appeared is kept as a revision."""
        iid = onboard(app, sim)
        run(app, iid, "backfill", sim)
        day = TODAY - timedelta(days=1)
        before = {(r.workspace_id, r.description): r.pico for r in sim.data.day(0, day).cost}
        sim.restate(0, day)
        after = {(r.workspace_id, r.description): r.pico for r in sim.data.day(0, day).cost}
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        assert before.keys() - after.keys() and after.keys() - before.keys()  # rows vanish and appear
        fake_clock(app).advance(86400)
        assert run(app, iid, "daily", sim).ok
        assert_matches_truth(app, sim, TODAY - timedelta(days=29), TODAY)
        with app.engine.begin() as conn:
            revs = repo.revisions_for(conn, iid)
        cost_revs = [r for r in revs if r["kind"] == "cost"]
        assert len(cost_revs) == len(changed)
        assert {r["day"] for r in revs} == {day}
        assert any(r["current"] is None for r in cost_revs)  # a vanished row
        assert any(r["previous"] is None for r in cost_revs)  # a new one

    def test_daily_window_is_the_trailing_days(self, app: App, sim: SimulatorHandle) -> None:
        """The daily sync re-reads exactly `resync_days` days ending today, one page per endpoint."""
        iid = onboard(app, sim)
        run(app, iid, "backfill", sim)
        sim.requests.clear()
        fake_clock(app).advance(86400)
        run(app, iid, "daily", sim)
        today = TODAY + timedelta(days=1)
        assert [(r.path, r.param("starting_at"), r.param("ending_at")) for r in sim.requests] == [
            (COST_PATH, f"{today - timedelta(days=2)}T00:00:00Z", f"{today + timedelta(days=1)}T00:00:00Z"),
            (USAGE_PATH, f"{today - timedelta(days=2)}T00:00:00Z", f"{today + timedelta(days=1)}T00:00:00Z"),
        ]


class TestSecrets:
    def test_key_absent_from_database_file_logs_and_reprs(self, app: App, sim: SimulatorHandle, db_url: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
        """After connect, a failing sync and a good one, the key is nowhere in plain text."""
        caplog.set_level("DEBUG")
        iid = onboard(app, sim)
        sim.add_fault("500")  # the next request
        sim.add_fault("401:after=3,rate=1")  # every request after the next three
        run(app, iid, "backfill", sim)
        sim.clear_faults()
        run(app, iid, "manual", sim)
        secret = sim.keys[0]
        assert secret not in caplog.text
        assert secret not in repr(integration(app, iid)) and secret not in repr(app.keyring)
        assert app.settings.master_key is not None
        master = app.settings.master_key.get_secret_value()
        assert master not in caplog.text and master not in repr(app.settings)
        if db_url.startswith("sqlite"):
            app.engine.dispose()
            raw = b"".join(p.read_bytes() for p in (app.settings.data_dir.parent).rglob("cw.db*") if p.is_file())
            assert secret.encode() not in raw and master.encode() not in raw
        else:
            with app.engine.begin() as conn:
                dumped = repr(conn.execute(select(integrations)).all()) + repr(conn.execute(select(sync_runs)).all())
            assert secret not in dumped and master not in dumped


def test_money_is_decimal_everywhere(app: App, sim: SimulatorHandle) -> None:
    """Every stored amount is a Decimal and the period total equals the truth exactly."""
    iid = onboard(app, sim)
    run(app, iid, "backfill", sim)
    rows = stored_report(app, TODAY - timedelta(days=29), TODAY)
    assert all(isinstance(r.cost_usd, Decimal) for r in rows.values())
    total = sum((r.cost_usd for r in rows.values()), Decimal(0))
    truth = Truth(sim, TODAY - timedelta(days=29), TODAY + timedelta(days=1)).cost()
    assert total == truth and truth > 0
    _ = datetime.now(UTC)


@pytest.mark.slow  # a year of data
def test_response_too_large_shrinks_limit_for_the_rest_of_the_run(app: App, sim: SimulatorHandle) -> None:
    """A 400 "too large" halves the limit, keeps it for later windows of that endpoint, and the data is still
    exact. The result cap is chosen from the simulator's data: every 7-day cost page and 31-day usage page
    fits, the first 15-day cost page does not."""
    first = TODAY - timedelta(days=364)
    days = [first + timedelta(days=i) for i in range(365)]
    cost = [len(sim.data.day(0, d).cost) for d in days]  # one result per (workspace, description) row
    usage = [len({(r.model, r.workspace_id, r.service_tier, r.context_window, r.api_key_id)
                  for r in sim.data.day(0, d).usage}) for d in days]  # the worker's five dimensions
    cap = max(max(sum(cost[i:i + 7]) for i in range(365)), max(sum(usage[i:i + 31]) for i in range(365)))
    assert sum(cost[:15]) > cap
    iid = onboard(app, sim, "pro")
    sim.requests.clear()
    sim.app.max_results = cap
    assert run(app, iid, "backfill", sim).ok
    assert_matches_truth(app, sim, first, TODAY)
    costs, usages = report_requests(sim, COST_PATH), report_requests(sim, USAGE_PATH)
    assert [r.status for r in costs[:3]] == [400, 400, 200] and all(r.status == 200 for r in costs[2:] + usages)
    # 31 -> 15 -> 7 once: later cost windows start at 7; the usage endpoint never had to shrink
    assert [r.param("limit") for r in costs] == ["31", "15"] + ["7"] * (len(costs) - 2)
    assert {r.param("limit") for r in usages} == {"31"}


# --- the sync's own transport ----------------------------------------------------------------------


def test_sync_transport_reuses_an_open_connection_and_replaces_a_closed_one() -> None:
    """`api_transport` answers the pool's idle check from the socket (worker.sync.engine.SocketStream): a
    connection the server keeps open is reused; one the server closed after its answer is noticed before the
    next request, which goes on a new connection instead of failing."""
    from worker.sync.engine import api_transport

    connections: list[int] = []

    async def go() -> list[int]:
        closed = asyncio.Event()
        handlers: list[asyncio.Task[Any]] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(len(connections))
            handlers.append(asyncio.current_task())  # type: ignore[arg-type]
            close = False
            try:
                while not close:
                    head = await reader.readuntil(b"\r\n\r\n")
                    close = b"/close" in head.split(b"\r\n", 1)[0]
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}")
                    await writer.drain()
            except asyncio.IncompleteReadError:  # the client closed it
                pass
            writer.close()  # after /close: without `connection: close`, the client only sees the socket end
            await writer.wait_closed()
            if close:
                closed.set()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            async with httpx.AsyncClient(transport=api_transport(), base_url=f"http://127.0.0.1:{port}") as client:
                statuses = [(await client.get("/keep")).status_code, (await client.get("/keep")).status_code]
                assert len(connections) == 1  # reused: the idle connection was not taken for closed
                statuses.append((await client.get("/close")).status_code)
                await closed.wait()  # the server's end of the connection is sent (on loopback: arrived)
                statuses.append((await client.get("/keep")).status_code)
            await asyncio.gather(*handlers)  # each saw the client close its connection
        return statuses

    assert asyncio.run(go()) == [200, 200, 200, 200]
    assert len(connections) == 2
