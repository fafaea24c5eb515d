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

Every other path is the dashboard and the HTTP API (`worker.web`) when a UI token is set
(COST_WORKER_UI_TOKEN), else 404 as before.

A small asyncio HTTP/1.1 server (one request per connection; h11 parses requests and frames answers) on the
service's event loop; database reads run in threads (`asyncio.to_thread`) with a time limit, so a slow
database never blocks the scheduler. `worker.metrics` (and prometheus_client) is imported at the first
scrape, not at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from worker.storage.db import current_revision, head_revision
from worker.sync.scheduler import SyncService, poll_database
from worker.web.auth import load_ui_token
from worker.web.messages import Request, Response

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from worker.app import App
    from worker.web.app import WebApp

log = logging.getLogger("worker.http")

DB_TIMEOUT = 5.0
_MAX_HEAD = 16 * 1024
_MAX_BODY = 64 * 1024  # the API's bodies are a key and a few fields
_READ_SECONDS = 10
PROBES = ("/healthz", "/readyz", "/metrics")


# --- the server -----------------------------------------------------------------------------------

def _plain(status: int, text: str) -> Response:
    """A probe's (or an error's) one-line text answer."""
    return Response(status, text.encode(), "text/plain; charset=utf-8")


class _TooLarge(Exception):
    pass


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


class HealthServer:
    """/healthz, /readyz and /metrics for one `run` process."""

    def __init__(self, app: App, service: SyncService, port: int, host: str = "0.0.0.0") -> None:
        self.app, self.service, self.host, self.port = app, service, host, port
        self._server: asyncio.Server | None = None
        self._head: str | None = None
        token = load_ui_token(app.settings)  # a bad token setting stops `run` before it listens
        self.web: WebApp | None = None
        if token is not None:
            from worker.web.app import WebApp

            self.web = WebApp(app, service, token)

    async def start(self) -> None:
        """Listen (raises OSError when the port is taken); port 0 picks a free port, see `self.port`."""
        self._head = await asyncio.to_thread(head_revision)
        self._server = await asyncio.start_server(self._connection, self.host, self.port, limit=_MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("serving /healthz, /readyz and /metrics on port %d", self.port)
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        url = f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"
        if self.web is not None:
            log.info("dashboard and HTTP API at %s (log in with the token of COST_WORKER_UI_TOKEN; "
                     "API: Authorization: Bearer <token>, see %sapi/v1/openapi.json)", url, url)
        else:
            log.info("dashboard and HTTP API off: set COST_WORKER_UI_TOKEN (or COST_WORKER_UI_TOKEN_FILE) to "
                     "a secret of 16+ characters to serve them at %s", url)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    # --- endpoints -------------------------------------------------------------------------------

    def healthz(self) -> Response:
        ok, detail = self.service.health()
        return _plain(200 if ok else 503, ("ok: " if ok else "unhealthy: ") + detail + "\n")

    async def readyz(self) -> Response:
        try:
            current = await asyncio.wait_for(asyncio.to_thread(self._check_database), DB_TIMEOUT)
        except TimeoutError:
            return _plain(503, f"not ready: the database did not answer within {DB_TIMEOUT:.0f}s\n")
        except Exception as exc:
            from worker.logs import scrub

            first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
            return _plain(503, f"not ready: database unavailable: {scrub(first)[:300]}\n")
        if current != self._head:
            return _plain(503, f"not ready: database schema at {current}, this build expects {self._head} "
                              "(`cost-worker db upgrade`)\n")
        return _plain(200, f"ready: database at {current}\n")

    def _check_database(self) -> str | None:
        """What a poll reads (and writes), in a transaction rolled back: a database that answers `SELECT 1`
        but fails every poll (a malformed table page, a full disk) is not ready."""
        with self.app.engine.connect() as conn, conn.begin() as transaction:
            poll_database(conn, self.app.clock.now())
            transaction.rollback()
        return current_revision(self.app.engine)

    async def metrics(self) -> Response:
        from worker import metrics

        database: list[Metric] | None
        try:
            database = await asyncio.wait_for(asyncio.to_thread(self._database_metrics), DB_TIMEOUT)
        except Exception:
            # The process series are still worth serving.
            log.warning("metrics: could not read the database", exc_info=True)
            database = None
        return Response(200, metrics.render(self.service, database), metrics.CONTENT_TYPE)

    def _database_metrics(self) -> list[Metric]:
        from worker import metrics

        with self.app.engine.connect() as conn:
            return metrics.read_database(conn, self.app.clock.now())

    # --- HTTP ---------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
        try:
            try:
                request, body = await asyncio.wait_for(self._read(conn, reader), _READ_SECONDS)
            except h11.RemoteProtocolError:
                request, reply = None, _plain(400, "bad request\n")
            except _TooLarge:
                request, reply = None, _plain(413, "request body too large\n")
            method = "GET"
            if request is not None:
                method = request.method.decode("ascii", "replace")
                reply = await self._route(method, request.target.decode("ascii", "replace"),
                                          {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers},
                                          body)
            data = reply.body
            headers = [("content-type", reply.content_type), ("content-length", str(len(data))),
                       *reply.headers, ("connection", "close")]
            if not any(name == "cache-control" for name, _ in reply.headers):
                headers.append(("cache-control", "no-store"))
            # Framed here (one answer, then close): h11 could not frame an answer to a request it refused.
            head = f"HTTP/1.1 {reply.status} {_reason(reply.status)}\r\n" + "".join(
                f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
            out = head.encode("latin-1") + (data if method != "HEAD" else b"")
            writer.write(out)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception:
            log.exception("health server: request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _read(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple[h11.Request | None, bytes]:
        """The request and its body (at most _MAX_BODY bytes); (None, b"") when the client closed first."""
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_BODY:
                    raise _TooLarge
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                if request is None:
                    raise ConnectionError("closed before a request")
                raise h11.RemoteProtocolError("the body ended early")

    async def _route(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        parts = urlsplit(target)
        path = parts.path
        if path not in PROBES:
            if self.web is None:
                return _plain(404, "not found: try /healthz, /readyz or /metrics\n")
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            return await self.web.handle(Request(method, unquote(path), query, headers, body))
        if method not in ("GET", "HEAD"):
            return _plain(405, "only GET\n")
        if path == "/healthz":
            return self.healthz()
        if path == "/readyz":
            return await self.readyz()
        started = time.monotonic()
        reply = await self.metrics()
        log.debug("metrics rendered in %.3fs", time.monotonic() - started)
        return reply
