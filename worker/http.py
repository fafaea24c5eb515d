"""The health and metrics server of `cost-worker run`: /healthz, /readyz and /metrics.

- `/healthz`: liveness. 200 while the scheduler runs and its poll job started recently (a stuck
  event loop or a hung poll turns it 503, and the orchestrator restarts the process). It never
  touches the database: a database outage is not cured by a restart.
- `/readyz`: readiness. 200 when the scheduler's poll works on the database (the same queries, rolled
  back) and its schema is at this build's alembic head; 503 with the reason otherwise (unreachable, a
  table the poll cannot read, or migrated by a newer/older build).
- `/metrics`: Prometheus text format 0.0.4, every series declared and computed in `worker.metrics`
  (rendered by prometheus_client): per-integration series read from the database, the same on every
  replica, and this process's own (`cost_worker_process_*`, the scheduler gauge).

A small asyncio HTTP/1.1 server (one request per connection) on the service's event loop; database
reads run in threads (`asyncio.to_thread`) with a time limit, so a slow database never blocks the
scheduler. `worker.metrics` (and prometheus_client) is imported at the first scrape, not at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker.storage.db import current_revision, head_revision
from worker.sync.scheduler import SyncService, poll_database

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from worker.app import App

log = logging.getLogger("worker.http")

DB_TIMEOUT = 5.0
_MAX_HEAD = 16 * 1024


# --- the server -----------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request", 503: "Service Unavailable"}


class HealthServer:
    """/healthz, /readyz and /metrics for one `run` process."""

    def __init__(self, app: App, service: SyncService, port: int, host: str = "0.0.0.0") -> None:
        self.app, self.service, self.host, self.port = app, service, host, port
        self._server: asyncio.Server | None = None
        self._head: str | None = None

    async def start(self) -> None:
        """Listen (raises OSError when the port is taken); port 0 picks a free port, see `self.port`."""
        self._head = await asyncio.to_thread(head_revision)
        self._server = await asyncio.start_server(self._connection, self.host, self.port, limit=_MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving /healthz, /readyz and /metrics on port %d", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    # --- endpoints -------------------------------------------------------------------------------

    def healthz(self) -> Reply:
        ok, detail = self.service.health()
        return Reply(200 if ok else 503, ("ok: " if ok else "unhealthy: ") + detail + "\n")

    async def readyz(self) -> Reply:
        try:
            current = await asyncio.wait_for(asyncio.to_thread(self._check_database), DB_TIMEOUT)
        except TimeoutError:
            return Reply(503, f"not ready: the database did not answer within {DB_TIMEOUT:.0f}s\n")
        except Exception as exc:
            from worker.logs import scrub

            first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
            return Reply(503, f"not ready: database unavailable: {scrub(first)[:300]}\n")
        if current != self._head:
            return Reply(503, f"not ready: database schema at {current}, this build expects {self._head} "
                              "(`cost-worker db upgrade`)\n")
        return Reply(200, f"ready: database at {current}\n")

    def _check_database(self) -> str | None:
        """What a poll reads (and writes), in a transaction rolled back: a database that answers `SELECT 1`
        but fails every poll (a malformed table page, a full disk) is not ready."""
        with self.app.engine.connect() as conn, conn.begin() as transaction:
            poll_database(conn, self.app.clock.now())
            transaction.rollback()
        return current_revision(self.app.engine)

    async def metrics(self) -> Reply:
        from worker import metrics

        database: list[Metric] | None
        try:
            database = await asyncio.wait_for(asyncio.to_thread(self._database_metrics), DB_TIMEOUT)
        except Exception:
            # The process series are still worth serving.
            log.warning("metrics: could not read the database", exc_info=True)
            database = None
        return Reply(200, metrics.render(self.service, database).decode(), metrics.CONTENT_TYPE)

    def _database_metrics(self) -> list[Metric]:
        from worker import metrics

        with self.app.engine.connect() as conn:
            return metrics.read_database(conn, self.app.clock.now())

    # --- HTTP ------------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            reply, method = await self._route(head)
            body = reply.body.encode()
            writer.write((f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Error')}\r\n"
                          f"content-type: {reply.content_type}\r\ncontent-length: {len(body)}\r\n"
                          "cache-control: no-store\r\nconnection: close\r\n\r\n").encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception:
            log.exception("health server: request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _route(self, head: bytes) -> tuple[Reply, str]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if len(parts) != 3:
            return Reply(400, "bad request\n"), "GET"
        method, target = parts[0], parts[1].split("?", 1)[0]
        routes = {"/healthz": None, "/readyz": None, "/metrics": None}
        if target not in routes:
            return Reply(404, "not found: try /healthz, /readyz or /metrics\n"), method
        if method not in ("GET", "HEAD"):
            return Reply(405, "only GET\n"), method
        if target == "/healthz":
            return self.healthz(), method
        if target == "/readyz":
            return await self.readyz(), method
        started = time.monotonic()
        reply = await self.metrics()
        log.debug("metrics rendered in %.3fs", time.monotonic() - started)
        return reply, method
