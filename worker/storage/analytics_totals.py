"""`analytics_daily_totals`: the Analytics API's bill (grouping 'main') per integration, UTC day and one
dimension (model, API key, actor), kept in step with its rows.

Every replacement of analytics cost or usage days of grouping 'main' (`repo._replace_days`, the sync's only
write to those tables) recomputes the totals of the days it changed in the same transaction, from the rows
as stored: exact Decimal sums of the amounts (SQLite has no exact SUM), integer sums of the tokens. Removing
an integration removes its totals. The dashboard's overview reads them: its daily spend by model (the days
whose bill of record is the Analytics API) and its top API keys and users, a few rows per day and
integration instead of every row of every workspace, tier and token type.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, delete, false, func, insert, or_, select

from worker.storage.tables import analytics_cost_rows, analytics_daily_totals, analytics_usage_rows
from worker.storage.totals import exact_sum, summed
from worker.storage.types import EXACT

MAIN = "main"  # the grouping summed here (worker.storage.analytics.MAIN)
_CHUNK = 400  # days per IN (...)


def refresh(conn: Connection, integration_id: int, days: Sequence[date], part: str) -> None:
    """Recompute the integration's totals of `days` of one part from its stored analytics rows of grouping
    'main': part `cost` from analytics_cost_rows (cost, list cost), `usage` from analytics_usage_rows (tokens).
    Each replacement refreshes only the part of the table it replaced."""
    wanted = sorted(set(days))
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        # (day, dimension, key) -> [cost, list cost, input, output, cache read, cache write]
        sums: dict[tuple[date, str, str], list[Any]] = {}
        if part == "cost":
            c = analytics_cost_rows.c
            add = EXACT.add
            for day, model, api_key, actor, amount, listed in conn.execute(select(
                    c.day, c.model, c.api_key_id, c.actor_id, c.amount_usd, c.list_amount_usd).where(
                    c.integration_id == integration_id, c.grouping == MAIN, c.day.in_(chunk))):
                for key in ((day, "model", model), (day, "api_key", api_key), (day, "actor", actor)):
                    acc = sums.get(key)
                    if acc is None:
                        sums[key] = [amount, listed, 0, 0, 0, 0]
                    else:
                        acc[0] = add(acc[0], amount)
                        acc[1] = add(acc[1], listed)
        else:
            u = analytics_usage_rows.c
            for day, model, api_key, actor, a, b, cr, cw5, cw1 in conn.execute(select(
                    u.day, u.model, u.api_key_id, u.actor_id, func.sum(u.uncached_input_tokens),
                    func.sum(u.output_tokens), func.sum(u.cache_read_input_tokens),
                    func.sum(u.cache_creation_5m_input_tokens), func.sum(u.cache_creation_1h_input_tokens)).where(
                    u.integration_id == integration_id, u.grouping == MAIN, u.day.in_(chunk)).group_by(
                    u.day, u.model, u.api_key_id, u.actor_id)):
                for key in ((day, "model", model), (day, "api_key", api_key), (day, "actor", actor)):
                    acc = sums.setdefault(key, [Decimal(0), Decimal(0), 0, 0, 0, 0])
                    acc[2] += int(a)
                    acc[3] += int(b)
                    acc[4] += int(cr)
                    acc[5] += int(cw5) + int(cw1)
        t = analytics_daily_totals.c
        conn.execute(delete(analytics_daily_totals).where(t.integration_id == integration_id, t.part == part,
                                                          t.day.in_(chunk)))
        if sums:
            conn.execute(insert(analytics_daily_totals), [
                {"integration_id": integration_id, "day": day, "dimension": dimension, "key": key, "part": part,
                 "cost_usd": v[0], "list_cost_usd": v[1], "input_tokens": v[2], "output_tokens": v[3],
                 "cache_read_tokens": v[4], "cache_write_tokens": v[5]}
                for (day, dimension, key), v in sums.items()])


Span = tuple[date, date]  # days [first, end) of an integration


def _within(spans: dict[int, Span]) -> Any:
    t = analytics_daily_totals.c
    if not spans:
        return false()
    return or_(*[and_(t.integration_id == iid, t.day >= first, t.day < end) for iid, (first, end) in spans.items()])


def daily_by_model(conn: Connection, since: date, until: date, spans: dict[int, Span]) -> list[tuple[date, str, Decimal]]:
    """(day, model ('' = no model), cost) of UTC days `since`..`until` (inclusive), summed over integrations
    in the database, counting each integration only on the days of its span (where this bill is the bill of
    record)."""
    t = analytics_daily_totals.c
    q = (select(t.day, t.key, exact_sum(conn, t.cost_usd))
         .where(t.dimension == "model", t.part == "cost", t.day >= since, t.day <= until, _within(spans)).group_by(t.day, t.key))
    return [(day, key, summed(amount)) for day, key, amount in conn.execute(q)]


def per_key(conn: Connection, since: date, until: date, dimension: str,
            integration_ids: Sequence[int] | None = None) -> list[tuple[int, str, Decimal]]:
    """(integration, key, cost) of UTC days `since`..`until` (inclusive) for a dimension (api_key | actor),
    summed in the database; keys '' (rows without one) left out."""
    t = analytics_daily_totals.c
    q = (select(t.integration_id, t.key, exact_sum(conn, t.cost_usd))
         .where(t.dimension == dimension, t.part == "cost", t.day >= since, t.day <= until, t.key != "")
         .group_by(t.integration_id, t.key))
    if integration_ids is not None:
        q = q.where(t.integration_id.in_(list(integration_ids)))
    return [(iid, key, summed(amount)) for iid, key, amount in conn.execute(q)]


__all__ = ["Span", "daily_by_model", "per_key", "refresh"]
