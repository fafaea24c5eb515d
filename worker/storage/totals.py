"""`daily_model_totals`: the legacy reports per integration, UTC day and model, kept in step with their rows.

Every replacement of legacy cost or usage days (`repo.replace_cost_days` / `replace_usage_days`, the sync's
only writes to those tables) recomputes the totals of the days it changed in the same transaction, from the
rows as stored: exact Decimal sums of the amounts (SQLite has no exact SUM), integer sums of the tokens.
Removing an integration removes its totals. `report`, the API's `spend` and the dashboard read these.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select

from worker.storage.tables import cost_rows, daily_model_totals, usage_rows
from worker.storage.types import EXACT, sqlite_date

_CHUNK = 400  # days per IN (...)
Total = tuple[int, date, str, Decimal, int, int, int, int]
"""(integration_id, day, model ('' = no model), cost_usd, input, output, cache read, cache write tokens)."""


def refresh(conn: Connection, integration_id: int, days: Sequence[date]) -> None:
    """Recompute the integration's totals of `days` from its stored cost and usage rows."""
    wanted = sorted(set(days))
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        sums: dict[tuple[date, str], list[Any]] = {}
        c = cost_rows.c
        for day, model, amount in conn.execute(select(c.day, c.model, c.amount_usd).where(
                c.integration_id == integration_id, c.day.in_(chunk))):
            acc = sums.setdefault((day, model), [Decimal(0), 0, 0, 0, 0])
            acc[0] = EXACT.add(acc[0], amount)
        u = usage_rows.c
        for day, model, a, b, cr, cw5, cw1 in conn.execute(select(
                u.day, u.model, func.sum(u.uncached_input_tokens), func.sum(u.output_tokens),
                func.sum(u.cache_read_input_tokens), func.sum(u.cache_creation_5m_input_tokens),
                func.sum(u.cache_creation_1h_input_tokens)).where(
                u.integration_id == integration_id, u.day.in_(chunk)).group_by(u.day, u.model)):
            acc = sums.setdefault((day, model), [Decimal(0), 0, 0, 0, 0])
            acc[1:] = [int(a), int(b), int(cr), int(cw5) + int(cw1)]
        t = daily_model_totals.c
        conn.execute(delete(daily_model_totals).where(t.integration_id == integration_id, t.day.in_(chunk)))
        if sums:
            conn.execute(insert(daily_model_totals), [
                {"integration_id": integration_id, "day": day, "model": model, "cost_usd": v[0], "input_tokens": v[1],
                 "output_tokens": v[2], "cache_read_tokens": v[3], "cache_write_tokens": v[4]}
                for (day, model), v in sums.items()])


def read(conn: Connection, since: date, until: date, integration_ids: Sequence[int] | None = None) -> list[Total]:
    """The totals of UTC days `since`..`until` (inclusive), of every integration or those given.

    Read through the driver as plain tuples (a year of a fleet is hundreds of thousands of rows, and
    SQLAlchemy's per-row result processing cost more than the query): SQLite answers the day and the amount
    as text, converted here once per distinct value; PostgreSQL answers date and Decimal."""
    sqlite = conn.dialect.name == "sqlite"
    prep = conn.dialect.identifier_preparer
    mark = "?" if sqlite else "%s"
    where = f"day >= {mark} AND day <= {mark}"
    params: list[Any] = [sqlite_date(since), sqlite_date(until)] if sqlite else [since, until]
    if integration_ids is not None:
        ids = list(integration_ids)
        if not ids:
            return []
        where += f" AND integration_id IN ({', '.join([mark] * len(ids))})"
        params += ids
    sql = ("SELECT integration_id, day, model, cost_usd, input_tokens, output_tokens, cache_read_tokens, "
           f"cache_write_tokens FROM {prep.format_table(daily_model_totals)} WHERE {where}")
    cursor = conn.connection.cursor()  # the driver's own, in this connection's transaction
    try:
        cursor.execute(sql, tuple(params))
        rows = cursor.fetchall()
    finally:
        cursor.close()
    if not sqlite:
        return [tuple(r) for r in rows]
    days = {d: date.fromisoformat(d) for d in {r[1] for r in rows}}
    return [(iid, days[day], model, Decimal(cost), a, b, cr, cw) for iid, day, model, cost, a, b, cr, cw in rows]
