"""Every Prometheus series of `cost-worker run`: declared here, computed at scrape time by one collector.

- Read from the database (`read_database`, run in a thread by the HTTP server): per-integration
  series from `integrations` (through `worker.storage.repo`), `sync_runs` and `reconcile_runs`;
  budgets and the latest spend anomaly per integration from what `run`'s watch evaluation stored
  (`worker.watch.metrics`). They describe the whole deployment, so every replica reports the same
  values (aggregate with `max`).
- This process's own (`cost_worker_process_*`, the scheduler gauge), from its `ProcessState` (the
  `SyncService`).

`WorkerCollector` yields them as prometheus_client metric families; `render` is
`prometheus_client.generate_latest` over them, so names (`_total` of counters), label escaping and
the text exposition format (0.0.4) are the library's. Every name is prefixed `cost_worker_`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from sqlalchemy import Connection, func, select

from worker import __version__
from worker.storage import repo
from worker.storage.tables import reconcile_runs, sync_runs
from worker.watch.metrics import watch_families

__all__ = ["ALL_INTEGRATIONS", "CONTENT_TYPE", "ProcessState", "WorkerCollector", "read_database", "render"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The format `generate_latest` writes (recent prometheus_client releases name 1.0.0 in CONTENT_TYPE_LATEST)."""
ALL_INTEGRATIONS = "all"
"""The integration_id label of reconcile runs over every integration's bill."""


class ProcessState(Protocol):
    """What this process knows of its own syncs (the scheduler's service)."""

    @property
    def last_poll_age(self) -> float | None:
        """Seconds since the scheduler last polled; None before its first poll."""

    @property
    def syncs_in_flight(self) -> int: ...

    @property
    def outcomes(self) -> Mapping[tuple[str, str], int]:
        """Finished syncs by (kind, result)."""

    @property
    def requests(self) -> Mapping[tuple[int, str, str], int]:
        """Admin API answers by (integration, endpoint, status)."""


# --- read from the database -------------------------------------------------------------------------

def read_database(conn: Connection, now: datetime) -> list[Metric]:
    """The database-backed families (blocking: the server runs this in a thread, with a time limit)."""
    states = repo.integration_states(conn)
    return [*_integration_families(conn, states, now), *_reconcile_families(conn, {s.id for s in states}),
            *watch_families(conn)]


def _ts(value: datetime) -> float:
    return value.timestamp()


STATUSES = ("pending", "backfilling", "ok", "error")
LAST_OUTCOMES = ("ok", "error", "interrupted")


def _integration_families(conn: Connection, states: list[repo.IntegrationState], now: datetime) -> list[Metric]:
    """Per-integration series from `integrations` and `sync_runs` (the same on every replica)."""
    by_id = ["integration_id"]
    info = GaugeMetricFamily("cost_worker_integration_info",
                             "Connected integrations (value 1) with their label, tier and organization.",
                             labels=["integration_id", "label", "tier", "organization_id"])
    status = GaugeMetricFamily("cost_worker_integration_status",
                               "1 for the integration's current status (pending, backfilling, ok, error), else 0.",
                               labels=["integration_id", "status"])
    last_ok = GaugeMetricFamily("cost_worker_last_success_timestamp_seconds",
                                "Unix time the integration's last successful sync finished.", labels=by_id)
    progress = GaugeMetricFamily("cost_worker_backfill_progress_ratio",
                                 "Share of the backfill window stored (both endpoints' checkpoints), 0..1.",
                                 labels=by_id)
    remaining = GaugeMetricFamily("cost_worker_backfill_days_remaining",
                                  "Days of the backfill window not yet stored by the slower endpoint.", labels=by_id)
    leased = GaugeMetricFamily("cost_worker_sync_in_progress",
                               "1 while some process holds the integration's sync lease.", labels=by_id)
    rows = CounterMetricFamily("cost_worker_rows_upserted_total", "Cost and usage rows written by sync runs.",
                               labels=by_id)
    requests = CounterMetricFamily("cost_worker_requests_total", "Admin API requests sent by sync runs.",
                                   labels=by_id)
    limited = CounterMetricFamily("cost_worker_rate_limited_total", "Admin API answers 429 received by sync runs.",
                                  labels=by_id)
    retries = CounterMetricFamily("cost_worker_retries_total", "Admin API requests retried by sync runs.",
                                  labels=by_id)
    waited = CounterMetricFamily("cost_worker_wait_seconds_total",
                                 "Seconds sync runs waited for the request budget or a retry.", labels=by_id)
    duration = SummaryMetricFamily("cost_worker_sync_duration_seconds", "Duration of finished sync runs.",
                                   labels=by_id)
    runs = CounterMetricFamily("cost_worker_sync_runs_total", "Sync runs by kind and outcome.",
                               labels=["integration_id", "kind", "outcome"])
    last_duration = GaugeMetricFamily("cost_worker_last_sync_duration_seconds",
                                      "Duration of the integration's latest finished sync run.",
                                      labels=["integration_id", "kind"])
    last_finished = GaugeMetricFamily("cost_worker_last_sync_finished_timestamp_seconds",
                                      "Unix time the integration's latest sync run finished (any outcome).",
                                      labels=by_id)
    last_outcome = GaugeMetricFamily("cost_worker_last_sync_outcome",
                                     "1 for the outcome (ok, error, interrupted) of the latest finished sync run.",
                                     labels=["integration_id", "outcome"])

    for i in states:
        iid = str(i.id)
        info.add_metric([iid, i.label, i.tier, i.organization_id], 1)
        for s in STATUSES:
            status.add_metric([iid, s], 1 if i.status == s else 0)
        if i.last_success_at is not None:
            last_ok.add_metric([iid], _ts(i.last_success_at))
        done, total = repo.backfill_days(i)
        progress.add_metric([iid], done / total if total > 0 else 1.0)
        remaining.add_metric([iid], max(0, total - done))
        held = i.lease_owner is not None and i.lease_expires_at is not None and i.lease_expires_at >= now
        leased.add_metric([iid], 1 if held else 0)

    c = sync_runs.c
    totals = select(c.integration_id, func.coalesce(func.sum(c.rows), 0),
                    func.coalesce(func.sum(c.requests), 0), func.coalesce(func.sum(c.rate_limited), 0),
                    func.coalesce(func.sum(c.retries), 0), func.coalesce(func.sum(c.waited_seconds), 0.0),
                    func.coalesce(func.sum(c.duration_seconds), 0.0), func.count(c.duration_seconds)
                    ).group_by(c.integration_id).order_by(c.integration_id)
    for iid_n, n_rows, n_req, n_429, n_retry, n_wait, d_sum, d_count in conn.execute(totals):
        iid = str(iid_n)
        rows.add_metric([iid], n_rows)
        requests.add_metric([iid], n_req)
        limited.add_metric([iid], n_429)
        retries.add_metric([iid], n_retry)
        waited.add_metric([iid], n_wait)
        duration.add_metric([iid], count_value=d_count, sum_value=d_sum)
    by_outcome = (select(c.integration_id, c.kind, c.outcome, func.count())
                  .group_by(c.integration_id, c.kind, c.outcome).order_by(c.integration_id, c.kind, c.outcome))
    for iid_n, kind, outcome, n in conn.execute(by_outcome):
        runs.add_metric([str(iid_n), kind, outcome], n)
    latest = (select(func.max(c.id)).where(c.finished_at.is_not(None)).group_by(c.integration_id)).scalar_subquery()
    for r in conn.execute(select(c.integration_id, c.kind, c.outcome, c.duration_seconds, c.finished_at)
                          .where(c.id.in_(latest)).order_by(c.integration_id)):
        iid = str(r.integration_id)
        if r.duration_seconds is not None:
            last_duration.add_metric([iid, r.kind], r.duration_seconds)
        last_finished.add_metric([iid], _ts(r.finished_at))
        for o in LAST_OUTCOMES:
            last_outcome.add_metric([iid, o], 1 if r.outcome == o else 0)
    return [info, status, last_ok, progress, remaining, leased, rows, requests, limited, retries, waited,
            duration, runs, last_duration, last_finished, last_outcome]


def _reconcile_families(conn: Connection, live: set[int]) -> list[Metric]:
    """Series of the latest reconcile run per scope (each integration still connected, and "all")."""
    by_scope = ["integration_id"]
    drift = GaugeMetricFamily("cost_worker_reconcile_drift_usd",
                              "Latest reconcile: tracked minus billed cost (USD) over its period; integration_id=all "
                              "when it covered every integration.", labels=by_scope)
    unexplained = GaugeMetricFamily("cost_worker_reconcile_unexplained_usd",
                                    "Latest reconcile: the part of the drift no cause explains (USD).", labels=by_scope)
    billed = GaugeMetricFamily("cost_worker_reconcile_billed_usd", "Latest reconcile: billed cost of its period (USD).",
                               labels=by_scope)
    tracked = GaugeMetricFamily("cost_worker_reconcile_tracked_usd",
                                "Latest reconcile: tracked cost of its period (USD).", labels=by_scope)
    drift_rows = GaugeMetricFamily("cost_worker_reconcile_drift_rows",
                                   "Latest reconcile: rows (day, model, ...) drifting beyond the tolerance.",
                                   labels=by_scope)
    finished = GaugeMetricFamily("cost_worker_reconcile_last_run_timestamp_seconds",
                                 "Unix time the latest reconcile finished.", labels=by_scope)
    period = GaugeMetricFamily("cost_worker_reconcile_period_days", "Days the latest reconcile covered.",
                               labels=by_scope)
    r = reconcile_runs.c
    latest = (select(func.max(r.id)).group_by(r.integration_id)).scalar_subquery()
    for run in conn.execute(select(reconcile_runs).where(r.id.in_(latest))
                            .order_by(r.integration_id.is_not(None), r.integration_id)):
        if run.integration_id is not None and run.integration_id not in live:
            continue  # a removed integration's runs stay stored but stop being exported
        scope = [ALL_INTEGRATIONS if run.integration_id is None else str(run.integration_id)]
        drift.add_metric(scope, float(run.delta_usd))
        unexplained.add_metric(scope, float(run.unexplained_usd))
        billed.add_metric(scope, float(run.billed_cost_usd))
        tracked.add_metric(scope, float(run.tracked_cost_usd))
        drift_rows.add_metric(scope, run.drift_rows)
        finished.add_metric(scope, _ts(run.finished_at))
        period.add_metric(scope, (run.until - run.since).days + 1)
    return [drift, unexplained, billed, tracked, drift_rows, finished, period]


# --- this process --------------------------------------------------------------------------------------

def _process_families(process: ProcessState) -> Iterator[Metric]:
    age = process.last_poll_age
    yield GaugeMetricFamily("cost_worker_scheduler_last_poll_age_seconds",
                            "Seconds since this process's scheduler last polled for due work (-1: not yet).",
                            value=-1 if age is None else age)
    yield GaugeMetricFamily("cost_worker_process_syncs_in_flight", "Syncs this process is running now.",
                            value=process.syncs_in_flight)
    runs = CounterMetricFamily("cost_worker_process_sync_runs_total",
                               "Syncs this process finished, by kind and result (skipped: another process held "
                               "the lease or had run the daily slot).", labels=["kind", "result"])
    for (kind, result), n in sorted(process.outcomes.items()):
        runs.add_metric([kind, result], n)
    yield runs
    answers = CounterMetricFamily("cost_worker_process_http_requests_total",
                                  "Admin API answers this process received, by integration, endpoint and HTTP status.",
                                  labels=["integration_id", "endpoint", "status"])
    for (iid, endpoint, status), n in sorted(process.requests.items()):
        answers.add_metric([str(iid), endpoint, status], n)
    yield answers


# --- the collector -------------------------------------------------------------------------------------

class WorkerCollector:
    """One scrape: the build, whether the database could be read, this process's series, then the
    database's (`database` is `read_database`'s result, None when it failed or timed out)."""

    def __init__(self, process: ProcessState, database: list[Metric] | None) -> None:
        self.process, self.database = process, database

    def collect(self) -> Iterable[Metric]:
        build = GaugeMetricFamily("cost_worker_build_info", "Version of this process (value 1).", labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        yield GaugeMetricFamily("cost_worker_database_up", "1 when this scrape could read the database.",
                                value=0 if self.database is None else 1)
        yield from _process_families(self.process)
        yield from self.database or []


def render(process: ProcessState, database: list[Metric] | None) -> bytes:
    """The text exposition of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(process, database))
    return generate_latest(registry)
