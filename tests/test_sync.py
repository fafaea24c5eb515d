"""Sync end to end against the fake API: exact totals against its ground truth, checkpoints and resume,
failures, restatements and idempotence. Time is a FakeClock: rate-limit waits cost nothing."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from tests.fake_api import COST_PATH, FAKE_ADMIN_KEY, USAGE_PATH, FakeAdminApi
from worker.api import Organization
from worker.app import App
from worker.integrations import check_connection, connect
from worker.secret import AdminKey
from worker.storage import repo
from worker.storage.tables import cost_rows, integrations, sync_runs, usage_rows
from worker.sync.engine import TAKEN_OVER, sync_integration, sync_now

TODAY = date(2026, 3, 10)


@pytest.fixture(scope="module")
def fake_year() -> FakeAdminApi:
    """A year and a bit of generated data ending today (shared, read-only: reset its log per test)."""
    return FakeAdminApi(start=date(2025, 2, 20), end=TODAY + timedelta(days=1), seed=11)


@pytest.fixture
def fake(fake_year: FakeAdminApi) -> FakeAdminApi:
    fake_year.requests.clear()
    fake_year.faults = type(fake_year.faults)()
    return fake_year


def onboard(app: App, fake: FakeAdminApi, tier: str = "free") -> int:
    key = AdminKey(FAKE_ADMIN_KEY)
    org = asyncio.run(check_connection(app, key, transport=fake.transport()))
    return connect(app, key, org, label=None, tier=tier)  # type: ignore[arg-type]


def run(app: App, iid: int, kind: str, fake: FakeAdminApi | httpx.AsyncBaseTransport) -> Any:
    transport = fake.transport() if isinstance(fake, FakeAdminApi) else fake
    return asyncio.run(sync_integration(app, iid, kind, transport=transport))  # type: ignore[arg-type]


def stored_report(app: App, since: date, until: date) -> dict[tuple[date, str | None], Any]:
    with app.engine.begin() as conn:
        return {(r.date, r.model): r for r in repo.report(conn, since, until)}


def assert_matches_truth(app: App, fake: FakeAdminApi, first: date, last: date) -> None:
    """Every (day, model) in the window equals the fake's independent truth, to the cent and token."""
    stored = stored_report(app, first, last)
    day = first
    checked = 0
    while day <= last:
        for model in fake.models:
            truth_cost = fake.truth_cost(day, model)
            tokens = fake.truth_tokens(day, model)
            row = stored.get((day, model))
            if truth_cost == 0 and not any(tokens.values()):
                assert row is None, (day, model)
                continue
            assert row is not None, (day, model)
            assert row.cost_usd == truth_cost, (day, model)
            assert row.input_tokens == tokens["uncached_input_tokens"]
            assert row.output_tokens == tokens["output_tokens"]
            assert row.cache_read_tokens == tokens["cache_read_input_tokens"]
            assert row.cache_write_tokens == (tokens["cache_creation_5m_input_tokens"]
                                              + tokens["cache_creation_1h_input_tokens"])
            checked += 1
        day += timedelta(days=1)
    assert checked > 0


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
    def test_connection_test_then_stored_sealed(self, app: App, fake: FakeAdminApi) -> None:
        """connect runs /me and one small cost report, then stores the key sealed, never in plain text."""
        iid = onboard(app, fake)
        assert [r.path for r in fake.requests] == ["/v1/organizations/me", COST_PATH]
        assert fake.requests[1].param("limit") == "1"
        integ = integration(app, iid)
        assert (integ.status, integ.tier, integ.organization_name) == ("pending", "free", "Fake Org")
        assert integ.label == "Anthropic - Fake Org"
        assert FAKE_ADMIN_KEY.encode() not in integ.key_ciphertext
        assert integ.key_hint == "sk-ant-admin01-...EfGh"
        assert (integ.backfill_start, integ.backfill_end) == (TODAY - timedelta(days=29), TODAY)

    def test_connection_test_respects_the_budget(self, app: App, fake: FakeAdminApi) -> None:
        """/me and the report request are spaced by the organization's budget (1 per minute)."""
        onboard(app, fake)
        assert app.clock.sleeps == [pytest.approx(60)]  # type: ignore[attr-defined]

    def test_same_organization_twice_is_refused(self, app: App, fake: FakeAdminApi) -> None:
        """A second integration for an organization already connected is refused with a clear message."""
        from worker.integrations import IntegrationError

        onboard(app, fake)
        with pytest.raises(IntegrationError, match="already connected as integration 1"):
            onboard(app, fake)


class TestBackfill:
    @pytest.mark.parametrize(("tier", "days", "requests"), [("free", 30, 2), ("pro", 365, 24)])
    def test_tier_backfill_equals_truth(self, app: App, fake: FakeAdminApi, tier: str, days: int,
                                        requests: int) -> None:
        """A tier's backfill stores exactly the truth for its days, with the minimum number of requests."""
        iid = onboard(app, fake, tier)
        fake.requests.clear()
        outcome = run(app, iid, "backfill", fake)
        assert outcome.ok, outcome.message
        first = TODAY - timedelta(days=days - 1)
        assert_matches_truth(app, fake, first, TODAY)
        assert len(fake.requests) == requests  # ceil(days / 31) per endpoint
        for r in fake.requests:
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

    def test_requests_are_spaced_by_the_budget(self, app: App, fake: FakeAdminApi) -> None:
        """A 365-day backfill at 1 request/minute waits 60 s between its 24 requests, never less."""
        iid = onboard(app, fake, "pro")
        app.clock.sleeps.clear()  # type: ignore[attr-defined]
        run(app, iid, "backfill", fake)
        sleeps = app.clock.sleeps  # type: ignore[attr-defined]
        assert len(sleeps) == 24 and all(s == pytest.approx(60) for s in sleeps)

    def test_resume_after_crash_refetches_only_the_page_in_flight(self, app: App, fake: FakeAdminApi,
                                                                  request: pytest.FixtureRequest) -> None:
        """A process killed mid-backfill resumes at its checkpoint: no page skipped, one re-fetched."""
        iid = onboard(app, fake, "pro")
        fake.requests.clear()

        class Crash(BaseException):
            pass

        inner = fake.transport()

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
        before = len(fake.requests)
        outcome = run(restarted, iid, "backfill", fake)
        assert outcome.ok, outcome.message
        assert len(fake.requests) - before == 24 - 8  # 8 pages were stored; the 9th is fetched again
        assert_matches_truth(restarted, fake, TODAY - timedelta(days=364), TODAY)
        with restarted.engine.begin() as conn:
            first, second = sorted(repo.recent_runs(conn, iid), key=lambda r: r["id"])
        assert (first["outcome"], first["error"]) == ("interrupted", TAKEN_OVER)
        assert second["outcome"] == "ok" and integration(restarted, iid).lease_owner is None

    def test_any_order_of_overlapping_syncs_gives_the_same_rows(self, app: App, fake: FakeAdminApi) -> None:
        """Backfill, daily and manual syncs in any order and repeated leave identical rows."""
        iid = onboard(app, fake)
        run(app, iid, "backfill", fake)
        reference = table_dump(app)
        for kind in ("daily", "manual", "daily", "backfill"):
            assert run(app, iid, kind, fake).ok
        assert table_dump(app) == reference
        with app.engine.begin() as conn:
            assert repo.revisions_for(conn, iid) == []


class TestFailures:
    def test_401_mid_backfill_marks_error_and_keeps_what_was_stored(self, app: App, fake: FakeAdminApi) -> None:
        """A key revoked mid-backfill stops the integration with advice; committed pages and checkpoint stay."""
        iid = onboard(app, fake, "pro")
        fake.requests.clear()
        fake.faults.block_after(6, status=401)
        outcome = run(app, iid, "backfill", fake)
        assert not outcome.ok
        integ = integration(app, iid)
        assert integ.status == "error"
        assert "revoked" in (integ.last_error or "") or "expired" in (integ.last_error or "")
        assert not integ.backfill_done
        assert integ.cost_checkpoint == TODAY - timedelta(days=364) + timedelta(days=93)
        assert_matches_truth(app, fake, TODAY - timedelta(days=364), TODAY - timedelta(days=364 - 92))
        with app.engine.begin() as conn:
            (run_row,) = repo.recent_runs(conn, iid)
        assert run_row["outcome"] == "error" and run_row["pages"] == 6

    def test_429_waits_retry_after_then_succeeds(self, app: App, fake: FakeAdminApi) -> None:
        """A 429 with retry-after 90 is honoured (never less) and counted in the run record."""
        iid = onboard(app, fake)
        fake.requests.clear()
        fake.faults.rate_limit(1, retry_after=90)
        app.clock.sleeps.clear()  # type: ignore[attr-defined]
        assert run(app, iid, "backfill", fake).ok
        assert max(app.clock.sleeps) >= 90  # type: ignore[attr-defined]
        with app.engine.begin() as conn:
            (run_row,) = repo.recent_runs(conn, iid)
        assert (run_row["rate_limited"], run_row["retries"], run_row["requests"]) == (1, 1, 3)
        assert_matches_truth(app, fake, TODAY - timedelta(days=29), TODAY)

    def test_has_more_without_cursor_is_an_error_not_a_short_window(self, app: App, fake: FakeAdminApi) -> None:
        """A page claiming more data without a cursor fails the sync; the backfill is not marked done."""
        iid = onboard(app, fake)
        app.settings.page_limit = 31
        fake.faults.has_more_without_cursor = True
        fake.faults.too_large_above_limit = 10  # force several pages per window
        outcome = run(app, iid, "backfill", fake)
        integ = integration(app, iid)
        assert not outcome.ok and integ.status == "error" and not integ.backfill_done
        assert "cursor" in (integ.last_error or "").lower() or "next_page" in (integ.last_error or "")

    def test_one_failing_integration_does_not_stop_others(self, app: App, fake: FakeAdminApi) -> None:
        """sync-now over two integrations: one blocked, the other still completes."""
        good = onboard(app, fake)
        other = FakeAdminApi(org_id="other-org", name="Other", start=TODAY - timedelta(days=40),
                             end=TODAY + timedelta(days=1), seed=3, key=FAKE_ADMIN_KEY)
        org = Organization(id="other-org", name="Other", type="organization")
        bad = connect(app, AdminKey(FAKE_ADMIN_KEY), org, label="bad", tier="free")
        other.faults.block_after(0, status=403)

        class Router(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                # Both integrations share the key; route by which one is syncing (the bad one goes second).
                return await (other if Router.bad else fake).transport().handle_async_request(request)
            bad = False

        results = {}
        results[good] = asyncio.run(sync_now(app, [good], transport=fake.transport()))[0]
        Router.bad = True
        results[bad] = asyncio.run(sync_now(app, [bad], transport=Router()))[0]
        assert results[good].ok and not results[bad].ok
        assert integration(app, bad).status == "error"
        assert "admin" in (integration(app, bad).last_error or "").lower() or "permission" in (
            integration(app, bad).last_error or "").lower()


class TestRestatement:
    def test_daily_reread_picks_up_a_restated_day_and_keeps_history(self, app: App, fake: FakeAdminApi) -> None:
        """A past day changed upstream is replaced by the daily re-read; the old amount is kept as a revision."""
        iid = onboard(app, fake)
        run(app, iid, "backfill", fake)
        day = next(d for d in (TODAY - timedelta(days=1), TODAY) if d not in fake.empty_days)
        originals = list(fake.costs)
        try:
            target = next(i for i, c in enumerate(fake.costs) if c.day == day and c.model)
            fake.costs[target] = replace(fake.costs[target], units=fake.costs[target].units + 12345)
            dropped = next(i for i, c in enumerate(fake.costs) if c.day == day and i != target)
            removed = fake.costs.pop(dropped)
            app.clock.advance(86400)  # type: ignore[attr-defined]
            assert run(app, iid, "daily", fake).ok
            assert_matches_truth(app, fake, TODAY - timedelta(days=29), TODAY)
            with app.engine.begin() as conn:
                revs = repo.revisions_for(conn, iid)
            cost_revs = [r for r in revs if r["kind"] == "cost"]
            assert len(cost_revs) == 2
            assert {r["day"] for r in cost_revs} == {day}
            assert any(r["current"] is None for r in cost_revs)  # the vanished row
            assert removed.units > 0
        finally:
            fake.costs[:] = originals

    def test_daily_window_is_the_trailing_days(self, app: App, fake: FakeAdminApi) -> None:
        """The daily sync re-reads exactly `resync_days` days ending today, one page per endpoint."""
        iid = onboard(app, fake)
        run(app, iid, "backfill", fake)
        fake.requests.clear()
        app.clock.advance(86400)  # type: ignore[attr-defined]
        run(app, iid, "daily", fake)
        today = TODAY + timedelta(days=1)
        assert [(r.path, r.param("starting_at"), r.param("ending_at")) for r in fake.requests] == [
            (COST_PATH, f"{today - timedelta(days=2)}T00:00:00Z", f"{today + timedelta(days=1)}T00:00:00Z"),
            (USAGE_PATH, f"{today - timedelta(days=2)}T00:00:00Z", f"{today + timedelta(days=1)}T00:00:00Z"),
        ]


class TestSecrets:
    def test_key_absent_from_database_file_logs_and_reprs(self, app: App, fake: FakeAdminApi, db_url: str,
                                                           caplog: pytest.LogCaptureFixture) -> None:
        """After connect, a failing sync and a good one, the key is nowhere in plain text."""
        caplog.set_level("DEBUG")
        iid = onboard(app, fake)
        fake.faults.error(len(fake.requests) + 1, status=500)
        fake.faults.block_after(len(fake.requests) + 3, status=401)
        run(app, iid, "backfill", fake)
        fake.faults = type(fake.faults)()
        run(app, iid, "manual", fake)
        secret = FAKE_ADMIN_KEY
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


def test_money_is_decimal_everywhere(app: App, fake: FakeAdminApi) -> None:
    """Every stored amount is a Decimal and the period total equals the truth exactly."""
    iid = onboard(app, fake)
    run(app, iid, "backfill", fake)
    rows = stored_report(app, TODAY - timedelta(days=29), TODAY)
    assert all(isinstance(r.cost_usd, Decimal) for r in rows.values())
    total = sum((r.cost_usd for r in rows.values()), Decimal(0))
    truth = sum((fake.truth_cost(TODAY - timedelta(days=i)) for i in range(30)), Decimal(0))
    assert total == truth and truth > 0
    _ = datetime.now(UTC)


def test_response_too_large_shrinks_limit_for_the_rest_of_the_run(app: App, fake: FakeAdminApi) -> None:
    """A 400 "too large" halves the limit, keeps it for later windows, and the data is still exact."""
    iid = onboard(app, fake, "pro")
    fake.requests.clear()
    fake.faults.too_large_above_limit = 10
    assert run(app, iid, "backfill", fake).ok
    assert_matches_truth(app, fake, TODAY - timedelta(days=364), TODAY)
    too_large = [r for r in fake.requests if r.status == 400]
    assert len(too_large) == 4  # 31 -> 15 -> 7, once per endpoint: later windows start at 7
    assert all(int(r.param("limit") or 0) <= 7 for r in fake.requests[-10:])
