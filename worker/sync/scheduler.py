"""The long-running service: APScheduler 3 (AsyncIOScheduler, timezone UTC) drives two jobs.

- `daily` fires at the configured time (06:00 UTC by default). coalesce=True folds missed fire times
  into one run; misfire_grace_time is a full day so a late loop still runs it rather than silently
  skipping (APScheduler's default grace is 1 s).
- `poll` runs every few seconds: it starts backfills of integrations connected from any process, and
  runs any daily slot not yet handled, which is how a restart after a missed 06:00 runs it once.
Both only dispatch; per-integration state in the database (lease, last_daily_slot) makes every
dispatch idempotent, so a duplicate fire is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from worker.app import App
from worker.storage import repo
from worker.sync.engine import SyncOutcome, sync_integration
from worker.sync.progress import LogProgress
from worker.sync.windows import latest_slot

log = logging.getLogger("worker.scheduler")

BACKFILL_STATUSES = ("pending", "backfilling")


class SyncService:
    def __init__(self, app: App, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.app = app
        self.transport = transport
        self.tasks: dict[int, asyncio.Task[SyncOutcome | None]] = {}
        self.progress = LogProgress()
        self.semaphore = asyncio.Semaphore(app.settings.max_concurrent_syncs)
        self.dispatches = 0

    def _due(self) -> list[tuple[int, str, object]]:
        now = self.app.clock.now()
        slot = latest_slot(now, self.app.settings.daily_sync_time)
        with self.app.engine.begin() as conn:
            integrations = repo.list_integrations(conn)
        due: list[tuple[int, str, object]] = []
        for integ in integrations:
            if integ.id in self.tasks:
                continue
            if not integ.backfill_done and integ.status in BACKFILL_STATUSES:
                due.append((integ.id, "backfill", None))
            elif integ.last_daily_slot is None or integ.last_daily_slot < slot:
                due.append((integ.id, "daily", slot))
        return due

    async def dispatch_due(self) -> None:
        """Start a task for every integration with work due. One failing integration never stops the others."""
        self.dispatches += 1
        try:
            due = await asyncio.to_thread(self._due)
        except Exception:
            log.exception("could not read integrations; retrying at the next poll")
            return
        for integration_id, kind, slot in due:
            task = asyncio.create_task(self._guarded(integration_id, kind, slot))
            self.tasks[integration_id] = task
            task.add_done_callback(lambda _t, i=integration_id: self.tasks.pop(i, None))

    async def _guarded(self, integration_id: int, kind: str, slot: object) -> SyncOutcome | None:
        async with self.semaphore:
            try:
                return await sync_integration(self.app, integration_id, kind, progress=self.progress,  # type: ignore[arg-type]
                                              transport=self.transport, daily_slot=slot)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("integration %d: %s sync crashed", integration_id, kind)
                return None

    def build_scheduler(self) -> AsyncIOScheduler:
        s = self.app.settings
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(self.dispatch_due, CronTrigger(hour=s.daily_sync_time.hour, minute=s.daily_sync_time.minute,
                                                         timezone=UTC),
                          id="daily", coalesce=True, misfire_grace_time=24 * 3600, max_instances=1)
        scheduler.add_job(self.dispatch_due, "interval", seconds=s.poll_seconds, id="poll", coalesce=True,
                          misfire_grace_time=None, max_instances=1, next_run_time=self.app.clock.now())
        return scheduler

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then cancel syncs in flight (each rolls back or finishes its page)."""
        scheduler = self.build_scheduler()
        scheduler.start()
        log.info("cost-worker running: daily sync at %s UTC, polling every %.0fs",
                 self.app.settings.daily_sync_time.strftime("%H:%M"), self.app.settings.poll_seconds)
        try:
            await stop.wait()
        finally:
            scheduler.shutdown(wait=False)
            await self.shutdown()

    async def shutdown(self) -> None:
        tasks = list(self.tasks.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=8)
        log.info("cost-worker stopped")
