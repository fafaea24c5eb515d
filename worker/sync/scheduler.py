"""The long-running service: APScheduler 3 (AsyncIOScheduler, timezone UTC) drives two jobs.

- `daily` fires at the configured time (06:00 UTC by default). coalesce=True folds missed fire times
  into one run; misfire_grace_time is a full day so a late loop still runs it rather than silently
  skipping (APScheduler's default grace is 1 s).
- `poll` runs every few seconds: it starts backfills of integrations connected from any process, and
  runs any daily slot not yet handled, which is how a restart after a missed 06:00 runs it once.
Both only dispatch; per-integration state in the database (lease, last_daily_slot) makes every
dispatch idempotent, so a duplicate fire is a no-op (and within a process, a dispatch never starts a
second task for an integration already running: the two jobs can fire together at 06:00). That is also how replicas on one PostgreSQL
cooperate: APScheduler's job stores cannot be shared, so every replica runs its own scheduler and
the rows decide. A replica only runs an integration whose lease it took (an atomic conditional
UPDATE, checked under SELECT ... FOR UPDATE in each page's transaction), a daily slot runs for the
replica that claims it first, and a lease left by a killed replica expires after `lease_seconds`,
when the next poll anywhere takes it over and resumes from the checkpoints. The poll also marks
run records whose process died (still `running`, lease gone) as `interrupted`.

Shutdown (SIGTERM): no new dispatch, syncs in flight are cancelled; each finishes or rolls back the
page being stored (one transaction), records its run as `interrupted` and releases its lease.
Every sync task's log lines carry `integration_id` and `sync_kind`; each request adds `endpoint`,
`window` and `request_id` (see `worker.logs.bind`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Connection

from worker.app import App
from worker.logs import bind
from worker.storage import repo
from worker.sync.engine import (
    PAGES_IN_FLIGHT,
    IntegrationSync,
    Kind,
    SyncOutcome,
    retry_delay,
    sync_integration,
)
from worker.sync.progress import LogProgress
from worker.sync.windows import latest_slot
from worker.watch.service import on_poll

log = logging.getLogger("worker.scheduler")

BACKFILL_STATUSES = ("pending", "backfilling")
SHUTDOWN_SECONDS = 8.0  # syncs get this long to store or roll back their page; the process exits within 10 s
ABANDONED = "abandoned: the process running it stopped without finishing (its lease expired)"


class SyncRunning(Exception):
    """A forced sync refused: one of the integration runs already (here or in another process)."""

    def __init__(self, integration_id: int, run: dict[str, object] | None) -> None:
        super().__init__(f"integration {integration_id} is syncing already")
        self.integration_id, self.run = integration_id, run


class NoSuchIntegration(Exception):
    pass


@dataclass(frozen=True)
class Due:
    """A sync the poll starts: which integration, which kind, and the daily slot it runs (if any)."""

    integration_id: int
    kind: Kind
    slot: datetime | None


def poll_database(conn: Connection, now: datetime) -> tuple[int, list[repo.DispatchState]]:
    """What every poll reads and writes: run records of dead processes marked interrupted (how many), and
    each integration's dispatch state. `/readyz` runs it too (and rolls it back): ready means a poll works."""
    return repo.reap_abandoned_runs(conn, now, ABANDONED), repo.dispatch_states(conn)


class SyncService:
    def __init__(self, app: App, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.app = app
        self.transport = transport
        self.tasks: dict[int, asyncio.Task[SyncOutcome | None]] = {}
        self.progress = LogProgress()
        self.semaphore = asyncio.Semaphore(app.settings.max_concurrent_syncs)
        self.page_slots = asyncio.Semaphore(PAGES_IN_FLIGHT)  # pages requested and not yet stored, all syncs
        self.stopping = False
        self.scheduler: AsyncIOScheduler | None = None
        self.last_poll: float | None = None  # time.monotonic() of the latest dispatch
        self.started = time.monotonic()
        self._polls: set[asyncio.Task[object]] = set()  # polls reading the database right now
        self.outcomes: Counter[tuple[str, str]] = Counter()  # (kind, ok|error|skipped|crashed) by this process
        # Integrations whose last sync failed before anything could be recorded (the database refused it):
        # (consecutive failures, clock time of the next try). Recorded failures back off through `retry_at`.
        self.unrecorded: dict[int, tuple[int, float]] = {}
        self.requests: Counter[tuple[int, str, str]] = Counter()  # (integration, endpoint, status)

    # --- health and this process's state (worker.metrics reads it) -------------------------------

    def health(self) -> tuple[bool, str]:
        """Alive when the scheduler runs and its poll started within max(30 s, 6 polls)."""
        if self.stopping:
            return False, "shutting down"
        if self.scheduler is None or not self.scheduler.running:
            return False, "scheduler not running"
        limit = max(30.0, 6 * self.app.settings.poll_seconds)
        age = time.monotonic() - (self.last_poll if self.last_poll is not None else self.started)
        if age > limit:
            return False, f"no poll for {age:.0f}s (limit {limit:.0f}s)"
        return True, f"scheduler running, last poll {age:.1f}s ago, {len(self.tasks)} sync(s) in flight"

    def count_request(self, integration_id: int, endpoint: str, status: str) -> None:
        self.requests[(integration_id, endpoint, status)] += 1

    @property
    def last_poll_age(self) -> float | None:
        return None if self.last_poll is None else time.monotonic() - self.last_poll

    @property
    def syncs_in_flight(self) -> int:
        return len(self.tasks)

    # --- dispatch -------------------------------------------------------------------------------

    def _due(self) -> list[Due]:
        now = self.app.clock.now()
        slot = latest_slot(now, self.app.settings.daily_sync_time)
        with self.app.engine.begin() as conn:
            reaped, states = poll_database(conn, now)
        if reaped:
            log.warning("marked %d run record(s) of a stopped process as interrupted", reaped)
        due: list[Due] = []
        for i in states:
            if i.id in self.tasks or self._backing_off(i.id):
                continue
            if not i.backfill_done and i.status in BACKFILL_STATUSES:
                due.append(Due(i.id, "backfill", None))
            elif i.last_daily_slot is None or i.last_daily_slot < slot:
                due.append(Due(i.id, "daily", slot))
            elif i.status == "error" and i.retry_at is not None and i.retry_at <= now:
                # A failed run's retry, after its backoff: the backfill's rest, or the trailing window again.
                due.append(Due(i.id, "backfill" if not i.backfill_done else "daily", None))
        return due

    def _backing_off(self, integration_id: int) -> bool:
        entry = self.unrecorded.get(integration_id)
        return entry is not None and self.app.clock.time() < entry[1]

    def _note(self, integration_id: int, outcome: SyncOutcome | None) -> None:
        """Back off (in memory: nothing could be written) after a sync that failed without a record."""
        if outcome is not None and (outcome.recorded or outcome.skipped):
            self.unrecorded.pop(integration_id, None)
            return
        attempts = self.unrecorded.get(integration_id, (0, 0.0))[0] + 1
        self.unrecorded[integration_id] = (attempts, self.app.clock.time() + retry_delay(attempts))

    async def dispatch_due(self) -> list[asyncio.Task[SyncOutcome | None]]:
        """Start a task for every integration with work due; returns the tasks started (a short sync may have
        ended, and left `self.tasks`, by the time this returns). One failing integration never stops the others."""
        started: list[asyncio.Task[SyncOutcome | None]] = []
        if self.stopping:
            return started
        self.last_poll = time.monotonic()
        current = asyncio.current_task()
        if current is not None:
            self._polls.add(current)
        try:
            due = await self.app.db(self._due)
        except Exception:
            log.exception("could not read integrations; retrying at the next poll")
            return started
        finally:
            if current is not None:
                self._polls.discard(current)
        if self._stopping():  # SIGTERM arrived while reading: take no new work
            return started
        for item in due:
            if item.integration_id in self.tasks:
                # Another dispatch read the same rows meanwhile (the daily job and the poll fire together) and
                # started it: a second task would share the lease (same owner), lose the slot claim and
                # release the lease under the first one.
                continue
            task = asyncio.create_task(self._guarded(item))
            self.tasks[item.integration_id] = task
            task.add_done_callback(functools.partial(self._forget, item.integration_id))
            started.append(task)
        await on_poll(self.app)  # budgets, anomalies, notifications (worker.watch); never raises
        return started

    async def force_sync(self, integration_id: int) -> int:
        """Start a manual sync of one integration now, as `sync-now` would (the pending backfill, then the trailing
        window), among this service's tasks; return its run id once the run is recorded. Raises SyncRunning
        (with the running run's record) when it runs already, here or in another process, and NoSuchIntegration."""
        def running() -> tuple[bool, dict[str, object] | None]:
            with self.app.engine.begin() as conn:
                exists = repo.get_integration(conn, integration_id) is not None
                runs = [r for r in repo.recent_runs(conn, integration_id, limit=5) if r["outcome"] == "running"]
            return exists, (runs[0] if runs else None)

        if integration_id in self.tasks:
            raise SyncRunning(integration_id, (await self.app.db(running))[1])
        if not (await self.app.db(running))[0]:
            raise NoSuchIntegration(integration_id)
        sync = IntegrationSync(self.app, integration_id, "manual", self.progress, self.transport, None,
                               lambda endpoint, status: self.count_request(integration_id, endpoint, status),
                               self.page_slots)
        task = asyncio.create_task(self._guarded(Due(integration_id, "manual", None), sync))
        self.tasks[integration_id] = task
        task.add_done_callback(functools.partial(self._forget, integration_id))
        opened = asyncio.create_task(sync.opened.wait())
        await asyncio.wait({task, opened}, return_when=asyncio.FIRST_COMPLETED)
        opened.cancel()
        if sync.run_id is not None:
            return sync.run_id
        outcome = await task  # ended before recording a run: another process holds it, or the database failed
        if outcome is not None and outcome.skipped:
            raise SyncRunning(integration_id, (await self.app.db(running))[1])
        raise RuntimeError(outcome.message if outcome is not None else "the sync could not start (see the log)")

    def _forget(self, integration_id: int, _task: asyncio.Task[SyncOutcome | None]) -> None:
        self.tasks.pop(integration_id, None)

    def _stopping(self) -> bool:
        return self.stopping  # a method: the flag changes while a poll awaits the database

    async def _guarded(self, item: Due, sync: IntegrationSync | None = None) -> SyncOutcome | None:
        integration_id, kind = item.integration_id, item.kind
        bind(integration_id=integration_id, sync_kind=kind)  # this task's context: every line it logs
        async with self.semaphore:
            try:
                if sync is not None:
                    outcome = await sync.run()
                else:
                    outcome = await sync_integration(
                        self.app, integration_id, kind, progress=self.progress, transport=self.transport,
                        daily_slot=item.slot, page_slots=self.page_slots,
                        on_answer=lambda endpoint, status: self.count_request(integration_id, endpoint, status))
            except asyncio.CancelledError:
                self.outcomes[(kind, "interrupted")] += 1
                raise
            except Exception:
                self.outcomes[(kind, "crashed")] += 1
                log.exception("integration %d: %s sync crashed", integration_id, kind)
                self._note(integration_id, None)
                return None
            self.outcomes[(kind, "skipped" if outcome.skipped else "ok" if outcome.ok else "error")] += 1
            self._note(integration_id, outcome)
            return outcome

    def build_scheduler(self) -> AsyncIOScheduler:
        s = self.app.settings
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(self.dispatch_due, CronTrigger(hour=s.daily_sync_time.hour, minute=s.daily_sync_time.minute,
                                                         timezone=UTC),
                          id="daily", coalesce=True, misfire_grace_time=24 * 3600, max_instances=1)
        scheduler.add_job(self.dispatch_due, "interval", seconds=s.poll_seconds, id="poll", coalesce=True,
                          misfire_grace_time=None, max_instances=1,
                          # APScheduler runs on wall time whatever clock the app has: first poll right away
                          next_run_time=datetime.now(UTC))
        return scheduler

    async def serve(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then cancel syncs in flight (each rolls back or finishes its page)."""
        self.scheduler = self.build_scheduler()
        self.scheduler.start()
        log.info("cost-worker running: daily sync at %s UTC, polling every %.0fs",
                 self.app.settings.daily_sync_time.strftime("%H:%M"), self.app.settings.poll_seconds)
        try:
            await stop.wait()
        finally:
            self.stopping = True
            self.scheduler.pause()  # no new fires
            await self._wait_for_polls()  # APScheduler's shutdown would cancel a poll mid-read, noisily
            self.scheduler.shutdown(wait=False)
            await self.shutdown()

    async def _wait_for_polls(self) -> None:
        polls = self._polls - {asyncio.current_task()}
        if polls:
            await asyncio.wait(polls, timeout=2)

    async def shutdown(self) -> None:
        """Stop taking work, cancel syncs in flight and wait (bounded) until each has recorded its run as
        interrupted and released its lease."""
        self.stopping = True
        await self._wait_for_polls()  # a poll reading the database: let it finish and see `stopping`
        tasks = list(self.tasks.values())
        if tasks:
            log.info("stopping: interrupting %d sync(s) in flight", len(tasks))
        for t in tasks:
            t.cancel()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_SECONDS)
            if pending:
                log.error("%d sync(s) did not stop within %.0fs; their leases expire after lease_seconds",
                          len(pending), SHUTDOWN_SECONDS)
        log.info("cost-worker stopped")
