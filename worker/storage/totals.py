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

from sqlalchemy import Connection, String, and_, delete, func, insert, select, type_coerce

from worker.storage.tables import cost_rows, daily_model_totals, usage_rows
from worker.storage.types import EXACT

_CHUNK = 400  # days per IN (...)


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


Grouped = tuple[date, str, Decimal, int, int, int, int]
"""(day, model ('' = no model), cost_usd, input, output, cache read, cache write tokens), over integrations."""


def read_grouped(conn: Connection, since: date, until: date, integration_id: int | None = None,
                 exclude: dict[int, tuple[date, date]] | None = None) -> list[Grouped]:
    """The totals of UTC days `since`..`until` (inclusive) summed over integrations per (day, model), in the
    database: PostgreSQL's SUM of NUMERIC is exact; SQLite's is float, so there the amounts of a group come
    back as one text list and are added here with Decimal. `exclude` leaves out, per integration, the days
    `[first, end)` (what another bill covers)."""
    t = daily_model_totals.c
    q = select(t.day, t.model, exact_sum(conn, t.cost_usd), func.sum(t.input_tokens), func.sum(t.output_tokens),
               func.sum(t.cache_read_tokens), func.sum(t.cache_write_tokens)).where(
        t.day >= since, t.day <= until).group_by(t.day, t.model)
    if integration_id is not None:
        q = q.where(t.integration_id == integration_id)
    for iid, (first, end) in (exclude or {}).items():
        q = q.where(~and_(t.integration_id == iid, t.day >= first, t.day < end))
    out: list[Grouped] = []
    for day, model, amount, a, b, cr, cw in conn.execute(q):
        out.append((day, model, summed(amount), int(a), int(b), int(cr), int(cw)))
    return out


def exact_sum(conn: Connection, column: Any) -> Any:
    """SUM of an ExactDecimal column in a GROUP BY, exact on both backends: PostgreSQL's SUM of NUMERIC;
    on SQLite (whose SUM is float) the group's decimal texts as one string, for `summed`."""
    if conn.dialect.name == "sqlite":
        return func.group_concat(_text(column), " ")
    return func.sum(column)


def summed(value: Decimal | str) -> Decimal:
    """An `exact_sum` as read: PostgreSQL's Decimal as it is, SQLite's decimal texts added with Decimal."""
    if not isinstance(value, str):
        return Decimal(value)
    total = Decimal(0)
    for part in value.split(" "):
        total = EXACT.add(total, Decimal(part))
    return total


def _text(column: Any) -> Any:
    """The SQLite column as stored (decimal text), without ExactDecimal's result conversion."""
    return type_coerce(column, String)
