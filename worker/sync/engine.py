"""Syncing one integration: finish its backfill from the checkpoints, then re-read a window.

Every fetched page is stored in one transaction that replaces its days, advances the endpoint's
checkpoint (backfill only), updates the run record and reserves the next request's rate-budget slot,
after checking this process still holds the integration's lease. A crash or restart therefore resumes
at the page that was in flight and skips nothing; re-reading a day is idempotent.

A run opens with one transaction (lease, daily-slot claim, run record) and closes with one (run
record and status). Its database calls run on the app's database threads (`App.db`: small
transactions before page stores); syncs run together share a bound on the pages held between their
request and their store (`PageGate`), and every sync's transport shares one TLS context.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import re
import select
import socket
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

import httpcore
import httpx

from worker.api import (
    AdminApiClient,
    ApiError,
    IntegrationBlocked,
    Page,
    RequestRejected,
    RequestStats,
    SourceRefused,
)
from worker.api.analytics import MAX_WINDOW_DAYS
from worker.api.client import tls_context
from worker.app import App
from worker.logs import bind, bound
from worker.ratelimit import OrgGate, org_bucket
from worker.storage import analytics as astore
from worker.storage import repo
from worker.storage.rows import cost_table_rows, usage_table_rows
from worker.sync.access import make_client, open_key
from worker.sync.progress import LogProgress, Progress
from worker.sync.streams import (
    LEGACY_STREAMS,
    Stream,
    analytics_floor,
    analytics_streams,
    legacy_last_day,
    legacy_reread,
    uses_analytics,
)
from worker.sync.windows import ONE_DAY, chunks, days_between, window_ending
from worker.vault import VaultError

log = logging.getLogger("worker.sync")

Kind = Literal["backfill", "daily", "manual"]
Endpoint = Literal["cost", "usage"]
ENDPOINTS: tuple[Endpoint, ...] = ("cost", "usage")
NAMES_EVERY = timedelta(days=1)  # API key and workspace names are read at most daily
REFUSED_NOTE = ("the Analytics API refused this organization ({detail}); its legacy reports are the bill for "
                "every day (re-checked by each daily sync)")


class LeaseLost(Exception):
    """Another process took over this integration's lease (ours expired): stop without writing."""


class _Skipped(Exception):
    """The opening transaction found nothing to do: roll back the lease just taken."""

    def __init__(self, skip: Skip) -> None:
        self.skip = skip


class _Refused(Exception):
    """The Analytics API refused the organization (HIPAA readiness, or not available): keep the legacy reports."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Plan:
    """What a run reads: the backfill left per stream (next day, last day) and the re-read windows (inclusive)."""

    today: date
    backfill: list[tuple[Stream, date, date]]
    reread: list[tuple[Stream, date, date]]
    first: date
    last: date
    analytics_first: date  # the first day of the analytics streams
    state: astore.State | None = None

    @property
    def analytics(self) -> bool:
        return any(s.analytics for s, _, _ in [*self.backfill, *self.reread])



# --- the states of a run: opened or skipped, then how it ended ------------------------------------

class Skip(enum.Enum):
    """Why a sync did not start; the value is its outcome's message."""

    LEASED = "skipped: another process is syncing it"
    SLOT_TAKEN = "skipped: this daily slot already ran"


@dataclass(frozen=True)
class Opened:
    """A run that started: lease taken, run record `running`, the integration as read in that transaction."""

    integration: repo.Integration
    plan: Plan


RunOutcome = Literal["ok", "error", "interrupted"]


@dataclass(frozen=True)
class RunEnd:
    """How a started run ended: its run record's outcome and error, the message `sync-now` prints, and the
    integration's new status (None leaves it as it is: an interrupted run resumes where it was)."""

    outcome: RunOutcome
    message: str
    error: str | None = None
    status: Literal["ok", "error"] | None = None
    retry: bool = True  # an error `run` tries again after a backoff (not a blocked key: that needs a person)
    note: str | None = None  # kept in `last_error` of an ok run (why the Analytics API is not used)

    @classmethod
    def interrupted(cls, reason: str) -> RunEnd:
        return cls("interrupted", reason, reason)


@dataclass
class SyncOutcome:
    integration_id: int
    kind: str
    ok: bool
    message: str
    skipped: bool = False
    run_id: int | None = None
    rows: int = 0
    recorded: bool = True  # False: it failed before its run record and status could be written


RETRY_FIRST_SECONDS = 60.0
RETRY_MAX_SECONDS = 3600.0
TAKEN_OVER = "interrupted: the process running it died; another took the integration over"


def retry_delay(failed_attempts: int) -> float:
    """How long `run` waits before trying a failing integration again: 1 min, doubling, at most 1 h."""
    return min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2.0 ** min(max(0, failed_attempts - 1), 32))


def failure_reason(exc: BaseException) -> str:
    """One line naming an unexpected failure (a driver's own message for database errors), keys masked."""
    from worker.logs import scrub

    inner = getattr(exc, "orig", None) or exc
    first = (str(inner).strip().splitlines() or [""])[0][:300]
    return scrub(f"internal error: {type(inner).__name__}: {first}" if first else
                 f"internal error: {type(inner).__name__}")


class ObservedTransport(httpx.AsyncBaseTransport):
    """Wraps the Admin API transport of one sync: binds each request's endpoint, window and request-id
    to the task's log context (so every line the sync logs about it names them), and reports each
    answer to `on_answer` (the service counts them for /metrics). Closes the inner transport only if
    it made it (a shared test transport stays open)."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None,
                 on_answer: Callable[[str, str], None] | None = None) -> None:
        self.on_answer = on_answer
        self.owned = inner is None
        self.inner = inner or api_transport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        endpoint = ("cost" if path.endswith("cost_report") else "usage" if "usage_report" in path else
                    "analytics_cost" if path.endswith("analytics/cost") else
                    "analytics_usage" if path.endswith("analytics/usage") else
                    "names" if path.endswith(("api_keys", "workspaces")) else "other")
        query = request.url.query
        window = f"{_query_value(query, b'starting_at')[:10]}..{_query_value(query, b'ending_at')[:10]}"
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


_QUERY_FIELDS = {name: re.compile(rb"(?:^|&)" + name + rb"=([^&]*)")
                 for name in (b"starting_at", b"ending_at")}


def _query_value(query: bytes, name: bytes) -> str:
    """The first value of `name` in a raw query, as `url.params.get(name, "")` reads it, without parsing the
    whole query into a multi-dict (which cost more than the rest of this transport's work per request)."""
    match = _QUERY_FIELDS[name].search(query)
    return urllib.parse.unquote_plus(match.group(1).decode("ascii")) if match else ""


KEEPALIVE_SECONDS = 90.0
PAGES_IN_FLIGHT = 128  # per process: pages requested and not yet stored (see PageGate)


class PageGate:
    """A sync's request gate: its organization's rate budget, then one of the process's page slots.

    A page is in memory from its request until it is stored: parsed rows of about 100-200 KB for a
    3-day cost page, ten times that for 31 days. Without a bound, a fleet answered at once held a page
    per organization while they queued for the database, so memory grew with the fleet. The slot is
    taken after the rate wait (holding one through a minute's wait would idle it), at most one per
    sync (a retry keeps it), and given back once the page is stored or the run ends.
    """

    def __init__(self, gate: OrgGate, slots: asyncio.Semaphore | None) -> None:
        self.gate, self.slots = gate, slots
        self.holding = False

    async def acquire(self) -> float:
        waited = await self.gate.acquire()
        if self.slots is not None and not self.holding:
            await self.slots.acquire()
            self.holding = True
        return waited

    async def done(self) -> None:
        await self.gate.done()

    def release(self) -> None:
        if self.holding and self.slots is not None:
            self.holding = False
            self.slots.release()


def api_transport() -> httpx.AsyncHTTPTransport:
    """A sync's own small connection pool, on the process's one TLS context.

    httpx builds a TLS context per transport unless given one: loading the CA bundle costs about
    25 ms of CPU and 1 MiB of memory each, so a fleet's 06:00 dispatch spent most of its time there
    (serially, on the event loop) and held a context per organization in flight. One pool for all
    syncs is no better: httpcore assigns each request by scanning every connection and queued
    request of the pool, quadratic with a thousand organizations at once.
    """
    # Keep-alive past the budget's one-minute spacing: each request of a sync reuses its connection instead
    # of paying a new connect (and TLS handshake) every minute.
    transport = httpx.AsyncHTTPTransport(verify=tls_context(),
                                         limits=httpx.Limits(max_connections=4, max_keepalive_connections=2,
                                                             keepalive_expiry=KEEPALIVE_SECONDS))
    transport._pool = httpcore.AsyncConnectionPool(  # httpx's own pool, on a backend it does not let us pass
        ssl_context=tls_context(), max_connections=4, max_keepalive_connections=2, keepalive_expiry=KEEPALIVE_SECONDS,
        network_backend=SocketBackend())
    return transport


class SocketStream(httpcore.AsyncNetworkStream):
    """A connection on asyncio's own streams, for httpcore.

    httpcore's anyio stream costs per request: every read and write opens an anyio cancel scope for its
    timeout and passes through anyio's stream layers (about 15 % of a request's CPU in a local benchmark),
    and its answer to the pool's "has the server closed it?" check, asked of every pooled connection before
    and after each request, rebuilds a table of the socket's attributes (a `getpeername` call among them).
    Here the timeouts are asyncio's, and the check polls the socket, looked up once.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.socket: Any = writer.get_extra_info("socket")

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(exc) from exc
        except OSError as exc:  # a reset, or a TLS error (ssl.SSLError is an OSError)
            raise httpcore.ReadError(exc) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self.writer.write(buffer)
                await self.writer.drain()
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(exc) from exc
        except OSError as exc:
            raise httpcore.WriteError(exc) from exc

    async def aclose(self) -> None:
        # As httpcore's anyio stream closes: at once, without waiting for the peer (nor a TLS close_notify).
        self.writer.transport.abort()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self.writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as exc:
            await self.aclose()
            raise httpcore.ConnectTimeout(exc) from exc
        except OSError as exc:
            await self.aclose()
            raise httpcore.ConnectError(exc) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return socket_readable(self.socket)
        if info == "client_addr":
            return self.writer.get_extra_info("sockname")
        if info == "server_addr":
            return self.writer.get_extra_info("peername")
        if info in ("ssl_object", "socket"):
            return self.writer.get_extra_info(info)
        return None


def socket_readable(sock: socket.socket | None) -> bool:
    """Whether a read would return at once (data, or the b"" of a closed connection); a socket gone counts."""
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True
    poll = select.poll()
    poll.register(fd, select.POLLIN)
    return bool(poll.poll(0))


class SocketBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on asyncio's streams (SocketStream)."""

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        # asyncio sets TCP_NODELAY, as anyio does
        return await _connected(asyncio.open_connection(host, port, local_addr=(local_address, 0) if local_address
                                                        else None), timeout, socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        return await _connected(asyncio.open_unix_connection(path), timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connected(opening: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]], timeout: float | None,
                     socket_options: Iterable[Any] | None) -> SocketStream:
    """A connection being opened, within `timeout`, its failures as httpcore's, with the socket options set."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await opening
    except TimeoutError as exc:
        raise httpcore.ConnectTimeout(exc) from exc
    except OSError as exc:
        raise httpcore.ConnectError(exc) from exc
    for option in socket_options or ():
        writer.get_extra_info("socket").setsockopt(*option)
    return SocketStream(reader, writer)


class IntegrationSync:
    """One sync run of one integration, holding its lease throughout."""

    def __init__(self, app: App, integration_id: int, kind: Kind, progress: Progress,
                 transport: httpx.AsyncBaseTransport | None = None, daily_slot: datetime | None = None,
                 on_answer: Callable[[str, str], None] | None = None,
                 page_slots: asyncio.Semaphore | None = None) -> None:
        self.app, self.id, self.kind, self.progress = app, integration_id, kind, progress
        self.page_slots = page_slots
        self.gate: PageGate | None = None
        self.transport = ObservedTransport(transport, on_answer)
        self.daily_slot = daily_slot
        self.stats = RequestStats()
        self.run_id: int | None = None
        self.opened = asyncio.Event()  # set once the opening transaction committed (run_id, if any, is stored)
        self.failed_attempts = 0  # the integration's, as read when the run opened
        self.pages = 0
        self.rows = 0
        self.limits: dict[str, int] = {}
        self.label = f"integration {integration_id}"
        self.analytics_first = date.min  # set when the run starts
        self.refreshed_at: datetime | None = None  # the oldest `data_refreshed_at` of the pages stored
        self.synced_until: dict[str, date] = {}  # per analytics stream, as stored
        self.users: dict[str, astore.Name] | None = None  # user names as stored (read at the first page)

    async def _db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A blocking database call on the app's database threads (see `App.db`)."""
        return await self.app.db(functools.partial(fn, *args, **kwargs))

    # --- claim and lease ---------------------------------------------------------------------------
    #
    # The claim (app.claims: a lock that dies with this process) says who may sync; the row lease records
    # it (owner, since, until) and is what every page's transaction checks.

    def _renew_lease(self) -> bool:
        until = self.app.clock.now() + timedelta(seconds=self.app.settings.lease_seconds)
        with self.app.engine.begin() as conn:
            return repo.renew_lease(conn, self.id, self.app.owner, until)

    def _release_lease(self) -> None:
        try:
            with self.app.engine.begin() as conn:
                repo.release_lease(conn, self.id, self.app.owner)
        finally:
            self.app.claims.release(self.id)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.app.settings.lease_seconds / 3)
            try:
                renewed = await self._db(self._renew_lease)
                claimed = await self._db(self.app.claims.holds, self.id)
            except Exception:
                log.warning("%s: could not renew the lease (next try in %.0fs)", self.label,
                            self.app.settings.lease_seconds / 3, exc_info=True)
                continue
            if not renewed:
                log.error("%s: lease lost to another process", self.label)
                return
            if not claimed:
                # The claim's PostgreSQL session broke: another replica may take the integration over, and
                # this sync's next page store then stops it (the lease check).
                log.error("%s: claim lost (its database session ended)", self.label)
                return

    # --- storing a page --------------------------------------------------------------------------

    def _locked(self, conn: Any) -> None:
        if repo.lock_lease_owner(conn, self.id) != self.app.owner:
            raise LeaseLost(f"{self.label}: another process took over the sync")

    def _store(self, stream: Stream, page: Page[Any], checkpoint: bool) -> int:
        """One page in one transaction: its days replaced, the stream's checkpoint, the run record."""
        run_id = self.run_id
        if run_id is None:  # the run record opens before the first request: a page without one is a bug
            raise RuntimeError(f"{self.label}: a page arrived before its sync run was recorded")
        days = [b.day for b in page.buckets]
        all_rows = [r for b in page.buckets for r in b.rows]
        now = self.app.clock.now()
        with self.app.engine.begin() as conn:
            self._locked(conn)
            if stream.grouping is not None:
                count = self._store_analytics(conn, stream, days, all_rows, page, checkpoint, now)
            elif stream.endpoint == "cost":
                count = repo.replace_cost_days(conn, self.id, days, cost_table_rows(self.id, all_rows), now, self.run_id)
            else:
                count = repo.replace_usage_days(conn, self.id, days, usage_table_rows(self.id, all_rows), now,
                                                self.run_id)
            if checkpoint and days and stream.grouping is None:
                repo.advance_checkpoint(conn, self.id, stream.endpoint, max(days) + ONE_DAY)
            self.pages += 1
            self.rows += count
            repo.update_run_counters(conn, run_id, self._run_counters())
            # The next request's rate-budget slot, in this transaction rather than one of its own (given back
            # at the run's end if no request follows).
            ahead = self.gate.gate.reserve_ahead(conn) if self.gate is not None else None
        if self.gate is not None:
            self.gate.gate.hold(ahead)
        return count

    def _store_analytics(self, conn: Any, stream: Stream, days: list[date], rows: list[Any], page: Page[Any],
                         checkpoint: bool, now: datetime) -> int:
        assert stream.grouping is not None
        if stream.endpoint == "cost":
            count = astore.replace_cost_days(conn, self.id, stream.grouping, days,
                                             astore.cost_table_rows(self.id, stream.grouping, rows), now, self.run_id)
        else:
            count = astore.replace_usage_days(conn, self.id, stream.grouping, days,
                                              astore.usage_table_rows(self.id, stream.grouping, rows), now,
                                              self.run_id)
        if days:
            next_day = max(days) + ONE_DAY
            # A re-read inside what is stored moves nothing: no statement.
            if checkpoint or next_day > self.synced_until.get(stream.name, date.min):
                astore.advance(conn, self.id, stream.name, next_day, backfill=checkpoint)
                self.synced_until[stream.name] = max(next_day, self.synced_until.get(stream.name, date.min))
        if self.users is None:
            self.users = {n.id: n for n in astore.names(conn, self.id, kind="user").values()}
        new = [u for u in astore.user_names(rows) if self.users.get(u.id) != u]
        if new:  # users seen for the first time, or renamed: names are otherwise written once
            astore.save_names(conn, self.id, new, now)
            self.users.update((u.id, u) for u in new)
        if page.refreshed_at is not None:
            # The oldest refresh of what this run stored: a day is complete only up to it (kept at the run's end).
            self.refreshed_at = page.refreshed_at if self.refreshed_at is None else min(self.refreshed_at,
                                                                                       page.refreshed_at)
        return count

    def _run_counters(self) -> dict[str, Any]:
        return {"requests": self.stats.requests, "pages": self.pages, "rows": self.rows,
                "rate_limited": self.stats.rate_limited, "retries": self.stats.retries,
                "waited_seconds": round(self.stats.waited_seconds, 3)}

    async def _fetch(self, client: AdminApiClient, stream: Stream, start: date, end: date,
                     checkpoint: bool) -> None:
        """Fetch [start, end) in windows (`page_limit` days, 31 for the Analytics API), storing each page as it
        arrives."""
        settings = self.app.settings
        if stream.grouping is not None:
            # Days the Analytics API no longer serves (more than 365 days back by now) are skipped, not asked.
            start = max(start, analytics_floor(self.app.clock.now().date()))
            width, limit = MAX_WINDOW_DAYS, settings.analytics_page_limit
        else:
            width = limit = settings.page_limit
        if start >= end:
            return
        for chunk_start, chunk_end in chunks(start, end - ONE_DAY, width):
            # A limit the API made us shrink ("response too large") stays shrunk for the rest of the run.
            pages = self._pages(client, stream, chunk_start, chunk_end, self.limits.get(stream.name, limit))
            try:
                async for page in pages:
                    self.limits[stream.name] = min(self.limits.get(stream.name, limit), page.limit)
                    count = await self.app.db(self._store, stream, page, checkpoint, bulk=True)
                    days = len(page.buckets)
                    del page  # stored: neither it nor its slot is held through the next request's wait
                    if self.gate is not None:
                        self.gate.release()
                    self.progress.page(self.label, days, count)
            except SourceRefused as exc:
                raise _Refused(exc.message) from None
            except RequestRejected as exc:
                if stream.grouping is not None and exc.status == 404:
                    raise _Refused(exc.message) from None
                raise

    def _pages(self, client: AdminApiClient, stream: Stream, start: date, end: date,
               limit: int) -> AsyncIterator[Page[Any]]:
        if stream.grouping is None:
            fetch = client.cost_pages if stream.endpoint == "cost" else client.usage_pages
            return fetch(start, end, limit=limit)
        if stream.endpoint == "cost":
            return client.analytics_cost_pages(start, end, stream.group_by, limit=limit)
        return client.analytics_usage_pages(start, end, stream.group_by, limit=limit)

    async def _refresh_names(self, client: AdminApiClient) -> None:
        """API key and workspace names, when not read in the last day. A failure here costs names, not the sync."""
        try:
            found = await client.names()
        except IntegrationBlocked:
            raise
        except ApiError as exc:
            log.warning("%s: could not read API key and workspace names: %s", self.label, exc)
            return
        if self.gate is not None:
            self.gate.release()

        def save() -> None:
            now = self.app.clock.now()
            with self.app.engine.begin() as conn:
                self._locked(conn)
                astore.save_names(conn, self.id, [astore.Name(n.kind, n.id, n.name, None, n.workspace_id)
                                                  for n in found], now)
                astore.set_state(conn, self.id, now, names_refreshed_at=now)
        await self._db(save)

    # --- the run ---------------------------------------------------------------------------------

    async def run(self) -> SyncOutcome:
        # Every line logged during the run (here, in the client, in progress) names the integration,
        # whether it runs in the service or in `sync-now`.
        with bound(integration_id=self.id, sync_kind=self.kind):
            return await self._run()

    async def _run(self) -> SyncOutcome:
        t0 = time.monotonic()
        opening = asyncio.ensure_future(self._db(self._open))
        try:
            opened = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # Stopped while the opening transaction ran on its thread: it may still commit. Then undo it,
            # so no lease, claim or `running` record outlives this process.
            opened = await opening
            if isinstance(opened, Opened):
                await self._db(self._close, RunEnd.interrupted("stopped by shutdown"), t0)
                await self._db(self._release_lease)
            raise
        except Exception as exc:  # the database refused the opening transaction: nothing was written
            reason = failure_reason(exc)
            log.error("%s: could not start the sync: %s", self.label, reason, exc_info=True)
            self.progress.finish(self.label, False, f"failed: {reason}")
            return SyncOutcome(self.id, self.kind, False, f"failed: {reason}", recorded=False)
        self.opened.set()
        if isinstance(opened, Skip):
            return SyncOutcome(self.id, self.kind, True, opened.value, skipped=True)
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            return await self._run_leased(opened.integration, opened.plan, t0)
        finally:
            if self.gate is not None:
                self.gate.release()  # a page that failed or was interrupted
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            try:
                await asyncio.shield(self._db(self._release_lease))
            except Exception:
                log.error("%s: could not release the lease (the claim is given back all the same)", self.label,
                          exc_info=True)

    def _open(self) -> Opened | Skip:
        """Take the claim, then in one transaction the lease, the daily slot (if any), the integration as it
        is and a `running` run record: a slot another process claimed first rolls the lease back with it,
        and gives the claim back."""
        app = self.app
        now = app.clock.now()
        if not app.claims.claim(self.id):
            return Skip.LEASED  # another live process (or sync of this one) holds it
        try:
            with app.engine.begin() as conn:
                # Holding the claim, the lease is ours whatever it says: only a dead process could have left it.
                if not repo.take_lease(conn, self.id, app.owner, now,
                                       now + timedelta(seconds=app.settings.lease_seconds),
                                       force=app.claims.exclusive):
                    raise _Skipped(Skip.LEASED)  # by another process (lease only), or the integration is gone
                if self.daily_slot is not None and not repo.claim_daily_slot(conn, self.id, self.daily_slot):
                    raise _Skipped(Skip.SLOT_TAKEN)
                integ = repo.get_integration(conn, self.id)
                assert integ is not None  # the lease UPDATE has just matched its row
                self.failed_attempts = integ.failed_attempts
                if app.claims.exclusive and repo.interrupt_runs(conn, self.id, now, TAKEN_OVER):
                    log.warning("%s: took over from a process that died mid-sync; resuming from its last "
                                "stored page", integ.display)
                plan = self._plan_in(conn, integ, now.date())
                self.run_id = repo.start_run(conn, self.id, self.kind, plan.first, plan.last, now)
                if plan.backfill and integ.status == "pending":
                    # An `error` stays until a run succeeds: a retry is not a recovery (worker.watch notifies both).
                    repo.update_integration(conn, self.id, status="backfilling", updated_at=now)
        except _Skipped as skipped:
            app.claims.release(self.id)
            return skipped.skip
        except BaseException:
            app.claims.release(self.id)
            raise
        return Opened(integ, plan)

    def _plan_in(self, conn: Any, integ: repo.Integration, today: date, refused: bool | None = None) -> Plan:
        """The plan, with the analytics state and checkpoints read (and the checkpoints made) in `conn`."""
        state = astore.get_state(conn, integ.id) if integ.source != "legacy" else None
        if refused is None:
            # A refusal is re-checked by daily runs (HIPAA readiness can be turned off); others trust it.
            refused = state is not None and state.status == "refused" and self.kind != "daily"
        cps = astore.checkpoints(conn, integ.id) if uses_analytics(integ.source, refused) else {}
        plan = self._plan(integ, today, refused, cps, state)
        for stream, cp, _last in plan.backfill:
            if stream.grouping is not None and stream.name not in cps:
                astore.save_checkpoint(conn, integ.id, stream.name, astore.Checkpoint(cp, cp, cp))
                self.synced_until[stream.name] = cp
        return plan

    def _plan(self, integ: repo.Integration, today: date, refused: bool = False,
              cps: dict[str, astore.Checkpoint] | None = None, state: astore.State | None = None) -> Plan:
        settings = self.app.settings
        cps = cps or {}
        use = uses_analytics(integ.source, refused)
        streams = analytics_streams(settings) if use else ()
        main = cps.get("a_cost")
        a_first = main.first_day if main is not None else max(analytics_floor(today), integ.backfill_start)
        backfill: list[tuple[Stream, date, date]] = []
        if not integ.backfill_done:
            legacy_last = legacy_last_day(integ.source, refused, integ.backfill_end, a_first)
            backfill += [(LEGACY_STREAMS[0], integ.cost_checkpoint, legacy_last),
                         (LEGACY_STREAMS[1], integ.usage_checkpoint, legacy_last)]
        for stream in streams:
            cp = cps.get(stream.name)
            # A stream never started (e.g. analytics_product_report turned on later) is backfilled in any case.
            if not integ.backfill_done or cp is None:
                backfill.append((stream, cp.checkpoint if cp is not None else a_first, integ.backfill_end))
        self.synced_until = {name: cp.synced_until for name, cp in cps.items()}
        reread: list[tuple[Stream, date, date]] = []
        if self.kind == "backfill":
            window = (integ.backfill_end + ONE_DAY, today) if today > integ.backfill_end else None
            a_window = window
        else:
            window = window_ending(today, settings.resync_days)
            a_window = window_ending(today, settings.analytics_resync_days)
        if window is not None:
            legacy = legacy_reread(integ.source, refused, window[0], window[1], a_first)
            if legacy is not None:
                reread += [(s, *legacy) for s in LEGACY_STREAMS]
        if a_window is not None:
            lo = max(a_window[0], a_first)
            if lo <= a_window[1]:
                reread += [(s, lo, a_window[1]) for s in streams]
        todo = [(cp, last) for _, cp, last in backfill if cp <= last]
        first = min([cp for cp, _ in todo] + [lo for _, lo, _ in reread], default=today)
        last = max([last for _, last in todo] + [hi for _, _, hi in reread], default=today)
        return Plan(today, backfill, reread, first, last, a_first, state)

    async def _execute(self, client: AdminApiClient, plan: Plan) -> None:
        settings = self.app.settings
        state = plan.state
        if plan.analytics and (state is None or state.names_refreshed_at is None
                               or self.app.clock.now() - state.names_refreshed_at >= NAMES_EVERY):
            await self._refresh_names(client)
        # Each stream in its own widest windows from its checkpoint (the fewest requests), the streams
        # interleaved by date so early days are complete (cost and tokens, both bills) early.
        windows = sorted(((lo, i, stream, hi) for i, (stream, cp, last) in enumerate(plan.backfill)
                          for lo, hi in chunks(cp, last, MAX_WINDOW_DAYS if stream.analytics else settings.page_limit)),
                         key=lambda w: (w[0], w[1]))
        fetched: dict[str, date] = {}  # the end of what this run backfilled, per analytics stream
        for lo, _i, stream, hi in windows:
            await self._fetch(client, stream, lo, hi, checkpoint=True)
            if stream.analytics:
                fetched[stream.name] = max(fetched.get(stream.name, hi), hi)
        if plan.backfill:
            await self._db(self._mark, backfill_done=True)
        for stream, lo, hi in plan.reread:
            # Days this very run has just read are not asked again (the legacy re-read keeps its old habit).
            await self._fetch(client, stream, max(lo, fetched.get(stream.name, lo)), hi + ONE_DAY, checkpoint=False)

    def _refuse(self, detail: str) -> repo.Integration:
        """Record the refusal; the legacy reports now cover every day (a backfill they still owe resumes)."""
        now = self.app.clock.now()
        with self.app.engine.begin() as conn:
            self._locked(conn)
            astore.set_state(conn, self.id, now, status="refused", detail=detail)
            integ = repo.get_integration(conn, self.id)
            assert integ is not None
            if integ.source == "analytics":
                repo.update_integration(conn, self.id, backfill_done=False, updated_at=now)
                integ = repo.get_integration(conn, self.id)
                assert integ is not None
            return integ

    async def _run_leased(self, integ: repo.Integration, plan: Plan, t0: float) -> SyncOutcome:
        app = self.app
        self.label = f"[{integ.id}] {integ.label}"
        self.analytics_first = plan.analytics_first
        total_days = (sum(days_between(cp, last) for _, cp, last in plan.backfill)
                      + sum(days_between(lo, hi) for _, lo, hi in plan.reread)) // 2
        self.progress.start(self.label, self.kind, total_days)
        note = None
        if plan.state is not None and plan.state.status == "refused" and integ.source != "legacy":
            note = REFUSED_NOTE.format(detail=plan.state.detail)
        try:
            key = open_key(app.keyring, integ)
            self.gate = PageGate(OrgGate(app.engine, org_bucket(integ.organization_id), app.budget, app.clock,
                                         run=app.db), self.page_slots)
            on_wait = lambda s, why: self.progress.wait(self.label, s, why)  # noqa: E731
            async with make_client(app, key, self.gate, self.stats, self.transport, on_wait) as client:
                try:
                    await self._execute(client, plan)
                    if plan.analytics:
                        note = None  # served: whatever refusal was recorded before is over
                except _Refused as refusal:
                    log.warning("%s: the Analytics API refused the organization: %s; using the legacy reports",
                                self.label, refusal.detail)
                    note = REFUSED_NOTE.format(detail=refusal.detail)
                    integ = await self._db(self._refuse, refusal.detail)

                    def replan() -> Plan:
                        with app.engine.begin() as conn:
                            return self._plan_in(conn, integ, plan.today, refused=True)
                    await self._execute(client, await self._db(replan))
            message = f"{self.kind} sync ok: {self.pages} pages, {self.rows} rows, {self.stats.requests} requests"
            end = RunEnd("ok", message + (f"; {note}" if note else ""), status="ok", note=note)
        except IntegrationBlocked as exc:
            end = RunEnd("error", f"blocked: {exc}", str(exc), "error", retry=False)
        except (ApiError, VaultError) as exc:
            end = RunEnd("error", f"failed: {exc} (`run` retries it after a backoff; `cost-worker sync-now` now)",
                         str(exc), "error")
        except LeaseLost as exc:
            end = RunEnd.interrupted(str(exc))
        except asyncio.CancelledError:
            await asyncio.shield(self._db(self._close, RunEnd.interrupted("stopped by shutdown"), t0))
            self.progress.finish(self.label, False, "interrupted: will resume from the last stored page")
            raise
        except Exception as exc:
            # A bug or a fault nothing above anticipates (an answer nested too deep to decode, a number the
            # database cannot hold, a full disk): the page being stored rolled back as one transaction, and
            # the run ends as a recorded failure like any other, never as a run left `running`.
            reason = failure_reason(exc)
            log.error("%s: sync failed: %s", self.label, reason, exc_info=True)
            end = RunEnd("error", f"failed: {reason}", reason, "error")
        try:
            await self._db(self._close, end, t0)
        except Exception as exc:
            reason = failure_reason(exc)
            log.error("%s: %s; could not record it: %s", self.label, end.message, reason, exc_info=True)
            self.progress.finish(self.label, False, f"{end.message} (not recorded: {reason})")
            return SyncOutcome(self.id, self.kind, False, f"{end.message} (not recorded: {reason})",
                               run_id=self.run_id, rows=self.rows, recorded=False)
        if end.outcome == "error":
            log.error("%s: %s", self.label, end.message, extra={"integration_id": self.id})
        self.progress.finish(self.label, end.outcome == "ok", end.message)
        return SyncOutcome(self.id, self.kind, end.outcome == "ok", end.message, run_id=self.run_id, rows=self.rows)

    def _mark(self, **values: Any) -> None:
        with self.app.engine.begin() as conn:
            repo.update_integration(conn, self.id, updated_at=self.app.clock.now(), **values)

    def _close(self, end: RunEnd, t0: float) -> None:
        """Close the run record and set the integration's status as `end` says (one transaction)."""
        now = self.app.clock.now()
        assert self.run_id is not None  # opened
        with self.app.engine.begin() as conn:
            if self.gate is not None:
                self.gate.gate.flush(conn)  # the last answer's rate-budget settle
                self.gate.gate.release_ahead(conn)  # the slot the last page's store reserved, unused
            if self.refreshed_at is not None:  # the Analytics API served this run (a refusal is over)
                astore.set_state(conn, self.id, now, status="ok", detail=None, refreshed_at=self.refreshed_at)
            repo.update_run(conn, self.run_id, outcome=end.outcome, error=end.error, finished_at=now,
                            duration_seconds=round(time.monotonic() - t0, 3), **self._run_counters())
            if end.status == "ok":
                repo.update_integration(conn, self.id, status="ok", last_success_at=now, last_error=end.note,
                                        failed_attempts=0, retry_at=None, updated_at=now)
            elif end.status == "error":
                failed = self.failed_attempts + 1
                retry_at = now + timedelta(seconds=retry_delay(failed)) if end.retry else None
                repo.update_integration(conn, self.id, status="error", last_error=end.error, failed_attempts=failed,
                                        retry_at=retry_at, updated_at=now)


def describe_holder(holder: repo.LeaseHolder) -> str:
    """`held by HOST:PID:ID since ... until ...` (UTC, to the second) for a waiting process to print."""
    def at(moment: datetime | None) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else "?"
    return (f"held by {holder.owner} since {at(holder.since)}, lease until {at(holder.until)} (renewed while it "
            "runs; freed at once if that process dies)")


async def sync_integration(app: App, integration_id: int, kind: Kind, *, progress: Progress | None = None,
                           transport: httpx.AsyncBaseTransport | None = None,
                           daily_slot: datetime | None = None,
                           on_answer: Callable[[str, str], None] | None = None,
                           page_slots: asyncio.Semaphore | None = None) -> SyncOutcome:
    """Run one sync of one integration (skipped when another process holds its lease). Syncs run together
    share `page_slots` (see PageGate)."""
    sync = IntegrationSync(app, integration_id, kind, progress or LogProgress(), transport, daily_slot,
                           on_answer, page_slots)
    return await sync.run()


async def sync_now(app: App, integration_ids: list[int] | None, *, progress: Progress | None = None,
                   transport: httpx.AsyncBaseTransport | None = None, lease_poll_seconds: float = 2.0,
                   on_claim_wait: Callable[[int, repo.LeaseHolder], None] | None = None) -> list[SyncOutcome]:
    """Bring integrations up to date in the foreground: pending backfills, then the trailing window.

    Integrations run concurrently (each has its own organization budget). One that another process is
    syncing right now is waited for (its claim is tried every `lease_poll_seconds`; `on_claim_wait` hears
    who holds it, once per holder), then re-read. A process that died holding one frees it at once.
    """
    with app.engine.begin() as conn:
        ids = integration_ids or [i.id for i in repo.list_integrations(conn)]
    page_slots = asyncio.Semaphore(PAGES_IN_FLIGHT)

    def holder(iid: int) -> tuple[bool, repo.LeaseHolder | None]:
        with app.engine.begin() as conn:
            return repo.get_integration(conn, iid) is not None, repo.lease_holder(conn, iid)

    async def one(iid: int) -> SyncOutcome:
        announced: tuple[str, datetime | None] | None = None
        while True:
            result = await sync_integration(app, iid, "manual", progress=progress, transport=transport,
                                            page_slots=page_slots)
            if not result.skipped:
                return result
            exists, held = await app.db(holder, iid)
            if not exists:
                return SyncOutcome(iid, "manual", False, "failed: the integration was removed meanwhile")
            # No lease recorded while the claim is held: its holder has just let go, or not written it yet.
            if held is not None and (held.owner, held.since) != announced:
                announced = (held.owner, held.since)
                if on_claim_wait is not None:
                    on_claim_wait(iid, held)
                else:
                    log.info("integration %d: waiting for another process syncing it: %s", iid,
                             describe_holder(held))
            await app.clock.sleep(lease_poll_seconds)

    return list(await asyncio.gather(*(one(i) for i in ids)))
