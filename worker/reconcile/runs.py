"""Stored reconciliation results: one `reconcile_runs` row per `cost-worker reconcile`, and the
/metrics series read from the latest of them ("latest drift per integration").

A run's scope is the integration it was given (`--integration`), or every integration (NULL,
exported with the label integration_id="all"). Only the summary is kept: the rows themselves are
cheap to recompute from the bill and the events, which are both stored.

The table lives on the shared `metadata`; migration `0003_reconcile_runs` creates it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Date,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
    insert,
    or_,
    select,
)

from worker.http import Metric
from worker.reconcile.compare import Summary
from worker.storage.tables import integrations, metadata
from worker.storage.types import ExactDecimal, UTCDateTime

__all__ = ["ALL_INTEGRATIONS", "reconcile_metrics", "reconcile_runs", "record_run"]

ALL_INTEGRATIONS = "all"
"""The integration_id label of runs over every integration's bill."""

reconcile_runs = Table(
    "reconcile_runs",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("finished_at", UTCDateTime, nullable=False),
    Column("integration_id", Integer),  # NULL: every integration's bill
    Column("sources", Text, nullable=False),  # the --source names, comma-separated; '' = all sources
    Column("since", Date, nullable=False),
    Column("until", Date, nullable=False),
    Column("group_by", String(20), nullable=False),
    Column("tolerance_pct", ExactDecimal, nullable=False),
    Column("billed_cost_usd", ExactDecimal, nullable=False),
    Column("tracked_cost_usd", ExactDecimal, nullable=False),
    Column("delta_usd", ExactDecimal, nullable=False),  # tracked - billed
    Column("unexplained_usd", ExactDecimal, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("drift_rows", Integer, nullable=False),
    Index("ix_reconcile_runs_integration_id", "integration_id"),
)


def record_run(conn: Connection, summary: Summary, *, integration_id: int | None, sources: Sequence[str],
               since: date, until: date, group_by: str, finished_at: datetime) -> int:
    """Store one run's summary; returns its id."""
    return int(conn.execute(insert(reconcile_runs).values(
        finished_at=finished_at, integration_id=integration_id, sources=",".join(sorted(sources)),
        since=since, until=until, group_by=group_by, tolerance_pct=summary.tolerance_pct,
        billed_cost_usd=summary.billed_cost_usd, tracked_cost_usd=summary.tracked_cost_usd,
        delta_usd=summary.delta_usd, unexplained_usd=summary.unexplained_usd,
        rows=summary.rows, drift_rows=summary.drift_rows,
    ).returning(reconcile_runs.c.id)).scalar_one())


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
