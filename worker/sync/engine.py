"""Syncing one integration: finish its backfill from the checkpoints, then re-read a window.

Every fetched page is stored in one transaction that replaces its days, advances the endpoint's
checkpoint (backfill only) and updates the run record, after checking this process still holds the
integration's lease. A crash or restart therefore resumes at the page that was in flight and skips
nothing; re-reading a day is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

import httpx
from sqlalchemy import select

from worker.api import AdminApiClient, ApiError, IntegrationBlocked, Page, RequestStats
from worker.app import App
from worker.integrations import make_client, open_key
from worker.logs import bind, bound
from worker.ratelimit import OrgGate, org_bucket
from worker.storage import repo
from worker.storage.rows import cost_table_rows, usage_table_rows
from worker.storage.tables import integrations
from worker.sync.progress import LogProgress, Progress
from worker.sync.windows import ONE_DAY, chunks, days_between, window_ending
from worker.vault import VaultError

log = logging.getLogger("worker.sync")

Kind = Literal["backfill", "daily", "manual"]
Endpoint = Literal["cost", "usage"]


class LeaseLost(Exception):
    """Another process took over this integration's lease (ours expired): stop without writing."""


@dataclass
class SyncOutcome:
    integration_id: int
    kind: str
    ok: bool
    message: str
    skipped: bool = False
    run_id: int | None = None
    rows: int = 0


class ObservedTransport(httpx.AsyncBaseTransport):
    """Wraps the Admin API transport of one sync: binds each request's endpoint, window and request-id
    to the task's log context (so every line the sync logs about it names them), and reports each
    answer to `on_answer` (the service counts them for /metrics). Closes the inner transport only if
    it made it (a shared test transport stays open)."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None,
                 on_answer: Callable[[str, str], None] | None = None) -> None:
        self.on_answer = on_answer
        self.owned = inner is None
        self.inner = inner or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        endpoint = "cost" if path.endswith("cost_report") else "usage" if "usage_report" in path else "other"
        params = request.url.params
        window = f"{params.get('starting_at', '')[:10]}..{params.get('ending_at', '')[:10]}"
        bind(endpoint=endpoint, window=window, request_id=None)
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError as exc:
            self._answer(endpoint, type(exc).__name__)
            raise
        bind(request_id=response.headers.get("request-id"))
        self._answer(endpoint, str(response.status_code))
        log.debug("GET %s %s: %d", endpoint, window, response.status_code)
        return response

    def _answer(self, endpoint: str, status: str) -> None:
        if self.on_answer is not None:
            self.on_answer(endpoint, status)

    async def aclose(self) -> None:
        if self.owned:
            await self.inner.aclose()


async def _db(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


class IntegrationSync:
    """One sync run of one integration, holding its lease throughout."""

    def __init__(self, app: App, integration_id: int, kind: Kind, progress: Progress,
                 transport: httpx.AsyncBaseTransport | None = None, daily_slot: datetime | None = None,
                 on_answer: Callable[[str, str], None] | None = None) -> None:
        self.app, self.id, self.kind, self.progress = app, integration_id, kind, progress
        self.transport = ObservedTransport(transport, on_answer)
        self.daily_slot = daily_slot
        self.stats = RequestStats()
        self.run_id: int | None = None
        self.pages = 0
        self.rows = 0
        self.limits: dict[str, int] = {}
        self.label = f"integration {integration_id}"

    # --- lease -----------------------------------------------------------------------------------

    def _take_lease(self) -> bool:
        now = self.app.clock.now()
        with self.app.engine.begin() as conn:
            return repo.take_lease(conn, self.id, self.app.owner, now,
                                   now + timedelta(seconds=self.app.settings.lease_seconds))

    def _claim_slot(self) -> bool:
        with self.app.engine.begin() as conn:
            return repo.claim_daily_slot(conn, self.id, self.daily_slot)  # type: ignore[arg-type]

    def _release_lease(self) -> None:
        with self.app.engine.begin() as conn:
            repo.release_lease(conn, self.id, self.app.owner)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.app.settings.lease_seconds / 3)
            if not await _db(self._take_lease):
                log.error("%s: lease lost to another process", self.label)
                return

    # --- storing a page --------------------------------------------------------------------------

    def _store(self, endpoint: Endpoint, page: Page[Any], checkpoint: bool) -> int:
        days = [b.day for b in page.buckets]
        all_rows = [r for b in page.buckets for r in b.rows]
        now = self.app.clock.now()
        with self.app.engine.begin() as conn:
            # Row lock on PostgreSQL (SQLite's BEGIN IMMEDIATE already serializes writers).
            owner = conn.execute(select(integrations.c.lease_owner).where(integrations.c.id == self.id)
                                 .with_for_update()).scalar_one_or_none()
            if owner != self.app.owner:
                raise LeaseLost(f"{self.label}: another process took over the sync")
            if endpoint == "cost":
                count = repo.replace_cost_days(conn, self.id, days, cost_table_rows(self.id, all_rows), now, self.run_id)
            else:
                count = repo.replace_usage_days(conn, self.id, days, usage_table_rows(self.id, all_rows), now,
                                                self.run_id)
            if checkpoint and days:
                column = "cost_checkpoint" if endpoint == "cost" else "usage_checkpoint"
                current = conn.execute(select(integrations.c[column]).where(integrations.c.id == self.id)).scalar_one()
                repo.update_integration(conn, self.id, **{column: max(current, max(days) + ONE_DAY)})
            self.pages += 1
            self.rows += count
            repo.update_run(conn, self.run_id, **self._run_counters())  # type: ignore[arg-type]
        return count

    def _run_counters(self) -> dict[str, Any]:
        return {"requests": self.stats.requests, "pages": self.pages, "rows": self.rows,
                "rate_limited": self.stats.rate_limited, "retries": self.stats.retries,
                "waited_seconds": round(self.stats.waited_seconds, 3)}

    async def _fetch(self, client: AdminApiClient, endpoint: Endpoint, start: date, end: date,
                     checkpoint: bool) -> None:
        """Fetch [start, end) in windows of `page_limit` days, storing each page as it arrives."""
        width = self.app.settings.page_limit
        for chunk_start, chunk_end in chunks(start, end - ONE_DAY, width):
            fetch = client.cost_pages if endpoint == "cost" else client.usage_pages
            # A limit the API made us shrink ("response too large") stays shrunk for the rest of the run.
            pages: AsyncIterator[Page[Any]] = fetch(chunk_start, chunk_end, limit=self.limits.get(endpoint, width))
            async for page in pages:
                self.limits[endpoint] = min(self.limits.get(endpoint, width), page.limit)
                count = await _db(self._store, endpoint, page, checkpoint)
                self.progress.page(self.label, len(page.buckets), count)

    # --- the run ---------------------------------------------------------------------------------

    async def run(self) -> SyncOutcome:
        # Every line logged during the run (here, in the client, in progress) names the integration,
        # whether it runs in the service or in `sync-now`.
        with bound(integration_id=self.id, sync_kind=self.kind):
            return await self._run()

    async def _run(self) -> SyncOutcome:
        if not await _db(self._take_lease):
            return SyncOutcome(self.id, self.kind, True, "skipped: another process is syncing it", skipped=True)
        if self.daily_slot is not None and not await _db(self._claim_slot):
            await _db(self._release_lease)
            return SyncOutcome(self.id, self.kind, True, "skipped: this daily slot already ran", skipped=True)
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            return await self._run_leased()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await asyncio.shield(_db(self._release_lease))

    async def _run_leased(self) -> SyncOutcome:
        app = self.app
        integ = await _db(self._load)
        if integ is None:
            return SyncOutcome(self.id, self.kind, False, f"{self.label}: no such integration")
        self.label = f"[{integ.id}] {integ.label}"
        today = app.clock.now().date()
        backfill = [] if integ.backfill_done else [
            ("cost", integ.cost_checkpoint), ("usage", integ.usage_checkpoint)]
        if self.kind == "backfill":
            reread = (integ.backfill_end + ONE_DAY, today) if today > integ.backfill_end else None
        else:
            reread = window_ending(today, app.settings.resync_days)
        first = min([cp for _, cp in backfill] + ([reread[0]] if reread else []), default=today)
        last = max([integ.backfill_end] * bool(backfill) + ([reread[1]] if reread else []), default=today)
        started = app.clock.now()
        t0 = time.monotonic()
        await _db(self._start_run, first, last, started, bool(backfill) and integ.status == "pending")
        total_days = sum(days_between(cp, integ.backfill_end) for _, cp in backfill) // 2 + (
            days_between(*reread) if reread else 0)
        self.progress.start(self.label, self.kind, total_days)
        outcome, error, status = "error", None, "error"
        try:
            key = open_key(app.keyring, integ)
            gate = OrgGate(app.engine, org_bucket(integ.organization_id), app.budget, app.clock)
            on_wait = lambda s: self.progress.wait(self.label, s)  # noqa: E731
            async with make_client(app, key, gate, self.stats, self.transport, on_wait) as client:
                bf_first = min((cp for _, cp in backfill), default=today)
                for offset in range(0, days_between(bf_first, integ.backfill_end) if backfill else 0,
                                    app.settings.page_limit):
                    window_start = bf_first + timedelta(days=offset)
                    window_end = min(window_start + timedelta(days=app.settings.page_limit),
                                     integ.backfill_end + ONE_DAY)
                    # Interleave the endpoints chunk by chunk, so early days are complete (cost and tokens) early.
                    for endpoint, checkpoint in backfill:
                        lo = max(window_start, checkpoint)
                        if lo < window_end:
                            await self._fetch(client, endpoint, lo, window_end, checkpoint=True)  # type: ignore[arg-type]
                if backfill:
                    await _db(self._mark, backfill_done=True)
                if reread:
                    for endpoint in ("cost", "usage"):
                        await self._fetch(client, endpoint, reread[0], reread[1] + ONE_DAY, checkpoint=False)  # type: ignore[arg-type]
            outcome, status = "ok", "ok"
            message = f"{self.kind} sync ok: {self.pages} pages, {self.rows} rows, {self.stats.requests} requests"
        except IntegrationBlocked as exc:
            error = str(exc)
            message = f"blocked: {error}"
        except (ApiError, VaultError) as exc:
            error = str(exc)
            message = f"failed: {error} (retried at the next daily sync or with `cost-worker sync-now`)"
        except LeaseLost as exc:
            outcome, status, error, message = "interrupted", "", str(exc), str(exc)
        except asyncio.CancelledError:
            await asyncio.shield(_db(self._finish_run, "interrupted", "stopped by shutdown", t0))
            self.progress.finish(self.label, False, "interrupted: will resume from the last stored page")
            raise
        await _db(self._finish_run, outcome, error, t0)
        if status == "ok":
            await _db(self._mark, status="ok", last_success_at=app.clock.now(), last_error=None)
        elif status == "error":
            await _db(self._mark, status="error", last_error=error)
            log.error("%s: %s", self.label, message, extra={"integration_id": self.id})
        self.progress.finish(self.label, outcome == "ok", message)
        return SyncOutcome(self.id, self.kind, outcome == "ok", message, run_id=self.run_id, rows=self.rows)

    def _load(self) -> repo.Integration | None:
        with self.app.engine.begin() as conn:
            return repo.get_integration(conn, self.id)

    def _start_run(self, first: date, last: date, started: datetime, now_backfilling: bool) -> None:
        with self.app.engine.begin() as conn:
            self.run_id = repo.start_run(conn, self.id, self.kind, first, last, started)
            if now_backfilling:
                repo.update_integration(conn, self.id, status="backfilling", updated_at=started)

    def _mark(self, **values: Any) -> None:
        with self.app.engine.begin() as conn:
            repo.update_integration(conn, self.id, updated_at=self.app.clock.now(), **values)

    def _finish_run(self, outcome: str, error: str | None, t0: float) -> None:
        with self.app.engine.begin() as conn:
            repo.update_run(conn, self.run_id, outcome=outcome, error=error, finished_at=self.app.clock.now(),  # type: ignore[arg-type]
                            duration_seconds=round(time.monotonic() - t0, 3), **self._run_counters())


async def sync_integration(app: App, integration_id: int, kind: Kind, *, progress: Progress | None = None,
                           transport: httpx.AsyncBaseTransport | None = None,
                           daily_slot: datetime | None = None,
                           on_answer: Callable[[str, str], None] | None = None) -> SyncOutcome:
    """Run one sync of one integration (skipped when another process holds its lease)."""
    sync = IntegrationSync(app, integration_id, kind, progress or LogProgress(), transport, daily_slot, on_answer)
    return await sync.run()


async def sync_now(app: App, integration_ids: list[int] | None, *, progress: Progress | None = None,
                   transport: httpx.AsyncBaseTransport | None = None,
                   lease_poll_seconds: float = 2.0) -> list[SyncOutcome]:
    """Bring integrations up to date in the foreground: pending backfills, then the trailing window.

    Integrations run concurrently (each has its own organization budget). One that another process is
    syncing right now is waited for, then re-read.
    """
    with app.engine.begin() as conn:
        ids = integration_ids or [i.id for i in repo.list_integrations(conn)]

    async def one(iid: int) -> SyncOutcome:
        while True:
            result = await sync_integration(app, iid, "manual", progress=progress, transport=transport)
            if not result.skipped:
                return result
            await app.clock.sleep(lease_poll_seconds)

    return list(await asyncio.gather(*(one(i) for i in ids)))
