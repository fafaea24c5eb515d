"""The service's schedule with a fake clock: backfills picked up, the daily slot run once, catch-up
after a restart, isolation of failures, and the APScheduler job settings."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from tests.fake_api import FakeAdminApi
from tests.test_sync import TODAY, integration, onboard
from worker.app import App
from worker.sync.scheduler import SyncService


@pytest.fixture
def fake() -> FakeAdminApi:
    return FakeAdminApi(start=TODAY - timedelta(days=45), end=TODAY + timedelta(days=5), seed=5)


def dispatch(service: SyncService) -> list[str]:
    """One poll: start whatever is due and wait for it; returns the kinds that ran."""
    async def go() -> list[str]:
        await service.dispatch_due()
        tasks = list(service.tasks.values())
        results = await asyncio.gather(*tasks)
        return sorted(r.kind for r in results if r is not None and not r.skipped)
    return asyncio.run(go())


class TestDispatch:
    def test_pending_backfill_then_daily_slot_once(self, app: App, fake: FakeAdminApi) -> None:
        """A connected integration is backfilled at the next poll; the next 06:00 runs once, however often polled."""
        iid = onboard(app, fake)
        service = SyncService(app, transport=fake.transport())
        assert dispatch(service) == ["backfill"]
        assert integration(app, iid).status == "ok"
        assert dispatch(service) == []  # nothing due until the next slot
        app.clock.advance((datetime(2026, 3, 11, 6, 0, 30, tzinfo=UTC) - app.clock.now()).total_seconds())  # type: ignore[attr-defined]
        fake.requests.clear()
        assert dispatch(service) == ["daily"]
        assert len(fake.requests) == 2
        assert dispatch(service) == [] and dispatch(service) == []
        assert integration(app, iid).last_daily_slot == datetime(2026, 3, 11, 6, tzinfo=UTC)

    def test_restart_after_missed_slot_runs_it_once(self, app: App, fake: FakeAdminApi) -> None:
        """A worker down at 06:00 runs that day's sync once when it comes back at 09:00."""
        iid = onboard(app, fake)
        dispatch(SyncService(app, transport=fake.transport()))
        app.clock.advance((datetime(2026, 3, 11, 9, 0, tzinfo=UTC) - app.clock.now()).total_seconds())  # type: ignore[attr-defined]
        restarted = App(app.settings, clock=app.clock)
        service = SyncService(restarted, transport=fake.transport())
        assert dispatch(service) == ["daily"]
        assert dispatch(service) == []
        # a second replica/process polling the same database finds the slot taken
        replica = App(app.settings, clock=app.clock)
        try:
            assert dispatch(SyncService(replica, transport=fake.transport())) == []
        finally:
            replica.close()
        assert integration(app, iid).status == "ok"
        restarted.close()

    def test_a_failing_integration_does_not_stop_the_others(self, app: App, fake: FakeAdminApi) -> None:
        """Two integrations due; one is blocked (403), the other still syncs."""
        from worker.api import Organization
        from worker.integrations import connect
        from worker.secret import AdminKey
        from tests.fake_api import FAKE_ADMIN_KEY

        good = onboard(app, fake)
        bad = connect(app, AdminKey(FAKE_ADMIN_KEY), Organization("org-bad", "Bad", "organization"),
                      label="bad", tier="free")

        class ByOrg(httpx.AsyncBaseTransport):
            # The bad integration's requests are refused; tell them apart by the task that sends them.
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                task = asyncio.current_task()
                if task is not None and task is service.tasks.get(bad):
                    return httpx.Response(403, json={"type": "error", "error": {
                        "type": "permission_error", "message": "not an admin key"}}, headers={"request-id": "req_x"})
                return await fake.transport().handle_async_request(request)

        service = SyncService(app, transport=ByOrg())
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
        while time.monotonic() < deadline:
            line = proc.stderr.readline()  # type: ignore[union-attr]
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
        proc.stderr.close()  # type: ignore[union-attr]
