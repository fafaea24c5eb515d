"""The health and metrics server of `cost-worker run`: /healthz, /readyz and /metrics.

- `/healthz`: liveness. 200 while the scheduler runs and its poll job started recently (a stuck
  event loop or a hung poll turns it 503, and the orchestrator restarts the process). It never
  touches the database: a database outage is not cured by a restart.
- `/readyz`: readiness. 200 when the database answers and its schema is at this build's alembic
  head; 503 with the reason otherwise (unreachable, or migrated by a newer/older build).
- `/metrics`: Prometheus text format 0.0.4, every name prefixed `cost_worker_`. Per-integration
  series are read from the database (`integrations`, `sync_runs`): they describe the whole
  deployment, so every replica reports the same values (aggregate them with `max`, not `sum`).
  Series named `cost_worker_process_*` and the scheduler gauges are this process's own.

A small asyncio HTTP/1.1 server (one request per connection) on the service's event loop; database
reads run in threads (`asyncio.to_thread`) with a time limit, so a slow database never blocks the
scheduler. Reconciliation's series (`cost_worker_reconcile_*`, the latest drift per integration) are
read from `reconcile_runs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, or_, select, text

from worker import __version__
from worker.storage.db import current_revision, head_revision
from worker.storage.tables import integrations, reconcile_runs, sync_runs

if TYPE_CHECKING:
    from worker.app import App
    from worker.sync.scheduler import SyncService

log = logging.getLogger("worker.http")

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
DB_TIMEOUT = 5.0
STATUSES = ("pending", "backfilling", "ok", "error")
_MAX_HEAD = 16 * 1024


# --- Prometheus text format -----------------------------------------------------------------------

@dataclass
class Metric:
    """One metric family: name, type, help and its samples (labels, value)."""

    name: str
    kind: str  # gauge | counter | summary
    help: str
    samples: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)

    def add(self, value: float, suffix: str = "", **labels: Any) -> Metric:
        self.samples.append((suffix, labels, float(value)))
        return self

    def render(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for suffix, labels, value in self.samples:
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            yield f"{self.name}{suffix}{{{body}}} {_number(value)}" if body else f"{self.name}{suffix} {_number(value)}"


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def render(metrics: Iterable[Metric]) -> str:
    return "\n".join(line for m in metrics for line in m.render()) + "\n"


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def integration_metrics(conn: Connection, now: datetime) -> list[Metric]:
    """Per-integration series from `integrations` and `sync_runs` (the same on every replica)."""
    info = Metric("cost_worker_integration_info", "gauge",
                  "Connected integrations (value 1) with their label, tier and organization.")
    status = Metric("cost_worker_integration_status", "gauge",
                    "1 for the integration's current status (pending, backfilling, ok, error), else 0.")
    last_ok = Metric("cost_worker_last_success_timestamp_seconds", "gauge",
                     "Unix time the integration's last successful sync finished.")
    progress = Metric("cost_worker_backfill_progress_ratio", "gauge",
                      "Share of the backfill window stored (both endpoints' checkpoints), 0..1.")
    remaining = Metric("cost_worker_backfill_days_remaining", "gauge",
                       "Days of the backfill window not yet stored by the slower endpoint.")
    leased = Metric("cost_worker_sync_in_progress", "gauge",
                    "1 while some process holds the integration's sync lease.")
    rows = Metric("cost_worker_rows_upserted_total", "counter", "Cost and usage rows written by sync runs.")
    requests = Metric("cost_worker_requests_total", "counter", "Admin API requests sent by sync runs.")
    limited = Metric("cost_worker_rate_limited_total", "counter", "Admin API answers 429 received by sync runs.")
    retries = Metric("cost_worker_retries_total", "counter", "Admin API requests retried by sync runs.")
    waited = Metric("cost_worker_wait_seconds_total", "counter",
                    "Seconds sync runs waited for the request budget or a retry.")
    duration = Metric("cost_worker_sync_duration_seconds", "summary", "Duration of finished sync runs.")
    runs = Metric("cost_worker_sync_runs_total", "counter", "Sync runs by kind and outcome.")
    last_duration = Metric("cost_worker_last_sync_duration_seconds", "gauge",
                           "Duration of the integration's latest finished sync run.")
    last_finished = Metric("cost_worker_last_sync_finished_timestamp_seconds", "gauge",
                           "Unix time the integration's latest sync run finished (any outcome).")
    last_outcome = Metric("cost_worker_last_sync_outcome", "gauge",
                          "1 for the outcome (ok, error, interrupted) of the latest finished sync run.")

    for i in conn.execute(select(integrations.c.id, integrations.c.label, integrations.c.tier,
                                 integrations.c.organization_id, integrations.c.status,
                                 integrations.c.last_success_at, integrations.c.backfill_start,
                                 integrations.c.backfill_end, integrations.c.cost_checkpoint,
                                 integrations.c.usage_checkpoint, integrations.c.backfill_done,
                                 integrations.c.lease_owner, integrations.c.lease_expires_at)
                          .order_by(integrations.c.id)):
        iid = str(i.id)
        info.add(1, integration_id=iid, label=i.label, tier=i.tier, organization_id=i.organization_id)
        for s in STATUSES:
            status.add(1 if i.status == s else 0, integration_id=iid, status=s)
        if i.last_success_at is not None:
            last_ok.add(_ts(i.last_success_at) or 0, integration_id=iid)
        total = (i.backfill_end - i.backfill_start).days + 1
        done = 0 if total <= 0 else min(total, _days(i.backfill_start, min(i.cost_checkpoint, i.usage_checkpoint)))
        if i.backfill_done:
            done = total
        progress.add(done / total if total > 0 else 1.0, integration_id=iid)
        remaining.add(max(0, total - done), integration_id=iid)
        held = i.lease_owner is not None and i.lease_expires_at is not None and i.lease_expires_at >= now
        leased.add(1 if held else 0, integration_id=iid)

    c = sync_runs.c
    totals = select(c.integration_id, func.count(), func.coalesce(func.sum(c.rows), 0),
                    func.coalesce(func.sum(c.requests), 0), func.coalesce(func.sum(c.rate_limited), 0),
                    func.coalesce(func.sum(c.retries), 0), func.coalesce(func.sum(c.waited_seconds), 0.0),
                    func.coalesce(func.sum(c.duration_seconds), 0.0), func.count(c.duration_seconds)
                    ).group_by(c.integration_id).order_by(c.integration_id)
    for iid_n, _n, n_rows, n_req, n_429, n_retry, n_wait, d_sum, d_count in conn.execute(totals):
        iid = str(iid_n)
        rows.add(n_rows, integration_id=iid)
        requests.add(n_req, integration_id=iid)
        limited.add(n_429, integration_id=iid)
        retries.add(n_retry, integration_id=iid)
        waited.add(n_wait, integration_id=iid)
        duration.add(d_sum, "_sum", integration_id=iid).add(d_count, "_count", integration_id=iid)
    by_outcome = (select(c.integration_id, c.kind, c.outcome, func.count())
                  .group_by(c.integration_id, c.kind, c.outcome).order_by(c.integration_id, c.kind, c.outcome))
    for iid_n, kind, outcome, n in conn.execute(by_outcome):
        runs.add(n, integration_id=str(iid_n), kind=kind, outcome=outcome)
    latest = (select(func.max(c.id)).where(c.finished_at.is_not(None)).group_by(c.integration_id)).scalar_subquery()
    for r in conn.execute(select(c.integration_id, c.kind, c.outcome, c.duration_seconds, c.finished_at)
                          .where(c.id.in_(latest)).order_by(c.integration_id)):
        iid = str(r.integration_id)
        if r.duration_seconds is not None:
            last_duration.add(r.duration_seconds, integration_id=iid, kind=r.kind)
        last_finished.add(_ts(r.finished_at) or 0, integration_id=iid)
        for o in ("ok", "error", "interrupted"):
            last_outcome.add(1 if r.outcome == o else 0, integration_id=iid, outcome=o)
    return [info, status, last_ok, progress, remaining, leased, rows, requests, limited, retries, waited,
            duration, runs, last_duration, last_finished, last_outcome]


ALL_INTEGRATIONS = "all"
"""The integration_id label of reconcile runs over every integration's bill."""


def reconcile_metrics(conn: Connection) -> list[Metric]:
    """Series of the latest reconcile run per scope (each integration, and "all")."""
    drift = Metric("cost_worker_reconcile_drift_usd", "gauge",
                   "Latest reconcile: tracked minus billed cost (USD) over its period; integration_id=all "
                   "when it covered every integration.")
    unexplained = Metric("cost_worker_reconcile_unexplained_usd", "gauge",
                         "Latest reconcile: the part of the drift no cause explains (USD).")
    billed = Metric("cost_worker_reconcile_billed_usd", "gauge", "Latest reconcile: billed cost of its period (USD).")
    tracked = Metric("cost_worker_reconcile_tracked_usd", "gauge",
                     "Latest reconcile: tracked cost of its period (USD).")
    drift_rows = Metric("cost_worker_reconcile_drift_rows", "gauge",
                        "Latest reconcile: rows (day, model, ...) drifting beyond the tolerance.")
    finished = Metric("cost_worker_reconcile_last_run_timestamp_seconds", "gauge",
                      "Unix time the latest reconcile finished.")
    period = Metric("cost_worker_reconcile_period_days", "gauge", "Days the latest reconcile covered.")
    r = reconcile_runs.c
    latest = (select(func.max(r.id)).group_by(r.integration_id)).scalar_subquery()
    # A removed integration's runs stay stored but stop being exported.
    live = or_(r.integration_id.is_(None), r.integration_id.in_(select(integrations.c.id)))
    for run in conn.execute(select(reconcile_runs).where(r.id.in_(latest), live)
                            .order_by(r.integration_id.is_not(None), r.integration_id)):
        scope = ALL_INTEGRATIONS if run.integration_id is None else str(run.integration_id)
        drift.add(run.delta_usd, integration_id=scope)
        unexplained.add(run.unexplained_usd, integration_id=scope)
        billed.add(run.billed_cost_usd, integration_id=scope)
        tracked.add(run.tracked_cost_usd, integration_id=scope)
        drift_rows.add(run.drift_rows, integration_id=scope)
        finished.add(run.finished_at.timestamp(), integration_id=scope)
        period.add((run.until - run.since).days + 1, integration_id=scope)
    return [drift, unexplained, billed, tracked, drift_rows, finished, period]


def _days(start: date, end: date) -> int:
    return max(0, (end - start).days)


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
        with self.app.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return current_revision(self.app.engine)

    async def metrics(self) -> Reply:
        families = list(self.service.process_metrics())
        try:
            families += await asyncio.wait_for(asyncio.to_thread(self._database_metrics), DB_TIMEOUT)
            up = 1
        except Exception:
            log.warning("metrics: could not read the database", exc_info=True)
            up = 0
        families.insert(0, Metric("cost_worker_database_up", "gauge",
                                  "1 when this scrape could read the database.").add(up))
        families.insert(0, Metric("cost_worker_build_info", "gauge", "Version of this process (value 1).")
                        .add(1, version=__version__))
        return Reply(200, render(families), CONTENT_TYPE_METRICS)

    def _database_metrics(self) -> list[Metric]:
        with self.app.engine.connect() as conn:
            families = integration_metrics(conn, self.app.clock.now())
            families.extend(reconcile_metrics(conn))
        return families

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
