"""Stored reconciliation results: one `reconcile_runs` row (worker.storage.tables) per
`cost-worker reconcile`. `worker.http.reconcile_metrics` exports the latest per integration.

A run's scope is the integration it was given (`--integration`), or every integration (NULL).
Only the summary is kept: the rows themselves are cheap to recompute from the bill and the events,
which are both stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection, insert

from worker.storage.tables import reconcile_runs

if TYPE_CHECKING:
    from worker.reconcile.compare import Summary

__all__ = ["record_run"]


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
