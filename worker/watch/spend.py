"""Daily spend read from the synced bill, exact: what budgets, forecasts and anomalies work on.

The legacy cost report (`cost_rows`) by default; the Analytics API's bill (`analytics_cost_rows`, through
worker.storage.analytics) for a filter on an API key or actor, the dimensions only it has. One query per
call, summed exactly: in SQL on PostgreSQL (NUMERIC), in Python with Decimal on SQLite (which stores the
amounts as decimal text). Days are UTC dates; ranges are half-open `[since, until)`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import Connection, func, select

from worker.money import EXACT
from worker.settings import DEFAULT_WORKSPACE
from worker.storage import analytics, repo
from worker.storage.tables import cost_rows

Grain = tuple[int, date, str, str]
"""(integration_id, day, workspace_id ('' = default), model ('' = fees without a model))."""


@dataclass(frozen=True)
class Filter:
    """Which rows count: some integrations (None: all), one workspace ('' = default), one model, one API key,
    some actor ids (a user's email may stand for several). A key or actor filter reads the Analytics API's bill."""

    integration_ids: tuple[int, ...] | None = None
    workspace: str | None = None
    model: str | None = None
    api_key: str | None = None
    actor_ids: tuple[str, ...] | None = None

    @property
    def analytics(self) -> bool:
        return self.api_key is not None or self.actor_ids is not None


def workspace_key(config_value: str) -> str:
    """The stored workspace id for a config value ("default" is the default workspace, stored as '')."""
    return "" if config_value == DEFAULT_WORKSPACE else config_value


def spend_by_grain(conn: Connection, since: date, until: date, where: Filter = Filter()) -> dict[Grain, Decimal]:
    """Exact legacy spend per (integration, day, workspace, model) over `[since, until)`."""
    c = cost_rows.c
    conditions = [c.day >= since, c.day < until]
    if where.integration_ids is not None:
        conditions.append(c.integration_id.in_(where.integration_ids))
    if where.workspace is not None:
        conditions.append(c.workspace_id == where.workspace)
    if where.model is not None:
        conditions.append(c.model == where.model)
    out: dict[Grain, Decimal] = defaultdict(Decimal)
    if conn.dialect.name == "postgresql":
        q = (select(c.integration_id, c.day, c.workspace_id, c.model, func.sum(c.amount_usd))
             .where(*conditions).group_by(c.integration_id, c.day, c.workspace_id, c.model))
        for iid, day, ws, model, amount in conn.execute(q):
            out[(iid, day, ws, model)] = Decimal(amount)
        return out
    q = select(c.integration_id, c.day, c.workspace_id, c.model, c.amount_usd).where(*conditions)
    for iid, day, ws, model, amount in conn.execute(q):
        key = (iid, day, ws, model)
        out[key] = EXACT.add(out[key], amount)
    return out


def daily_totals(grains: Iterable[tuple[tuple[int, date, str, str], Decimal]]) -> dict[date, Decimal]:
    """Sum grains (legacy ones, or the Analytics API's `SpendKey`s) per day."""
    out: dict[date, Decimal] = defaultdict(Decimal)
    for (_iid, day, _a, _b), amount in grains:
        out[day] = EXACT.add(out[day], amount)
    return dict(out)


def analytics_by_key(conn: Connection, since: date, until: date, where: Filter = Filter(),
                     ) -> dict[analytics.SpendKey, Decimal]:
    """Exact Analytics API spend per (integration, day, API key, actor) over `[since, until)`."""
    return analytics.daily_spend(conn, since, until - timedelta(days=1), where.integration_ids,
                                 workspace_id=where.workspace, model=where.model, api_key_id=where.api_key,
                                 actor_ids=where.actor_ids)


def daily_spend(conn: Connection, since: date, until: date, where: Filter = Filter()) -> dict[date, Decimal]:
    """Exact spend per day over `[since, until)` of the bill the filter needs."""
    if where.analytics:
        return daily_totals(analytics_by_key(conn, since, until, where).items())
    return daily_totals(spend_by_grain(conn, since, until, where).items())


@dataclass(frozen=True)
class Coverage:
    """The days an integration's stored bill covers: `[start, complete)` are complete; the day of its last
    sync was still being billed then (partial), and later days are not synced yet (unknown, not zero)."""

    start: date
    complete: date


def coverage(conn: Connection, integration_ids: Iterable[int] | None = None) -> dict[int, Coverage]:
    """Per integration: from its backfill window's start to the day of its last successful sync (or, while the
    first backfill runs, its cost checkpoint)."""
    out = {}
    for row in repo.coverage_rows(conn, None if integration_ids is None else list(integration_ids)):
        complete = (row.last_success_at.date() if row.last_success_at is not None
                    else min(row.cost_checkpoint, row.backfill_end))
        out[row.id] = Coverage(row.backfill_start, max(row.backfill_start, complete))
    return out


def analytics_coverage(conn: Connection, integration_ids: Iterable[int] | None = None) -> dict[int, Coverage]:
    """Per integration whose bill of record includes the Analytics API (source `analytics` or `both`, not
    refused, some days stored): from its first stored day, complete before the day of the last sync and
    before the latest `data_refreshed_at` (the Analytics API's later hours are not in yet)."""
    wanted = None if integration_ids is None else set(integration_ids)
    return {iid: Coverage(c.first, c.until) for iid, c in analytics.complete_until(conn).items()
            if wanted is None or iid in wanted}


def combined(cover: Iterable[Coverage]) -> Coverage | None:
    """Where every one of several integrations' bills is known and complete (None for none)."""
    items = list(cover)
    if not items:
        return None
    return Coverage(min(c.start for c in items), min(c.complete for c in items))
