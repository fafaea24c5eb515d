"""`daily_model_totals`: the legacy reports per integration, UTC day and model, kept in step with their rows.

Every replacement of legacy cost or usage days (`repo.replace_cost_days` / `replace_usage_days`, the sync's
only writes to those tables) recomputes the totals of the days it changed in the same transaction, from the
rows as stored: exact Decimal sums of the amounts (SQLite has no exact SUM), integer sums of the tokens.
Removing an integration removes its totals. `report`, the API's `spend` and the dashboard read these.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, String, and_, func, select, type_coerce

from worker.storage.tables import cost_rows, daily_model_totals, usage_rows
from worker.storage.types import EXACT, driver_marker, exact_money, money_text, sqlite_date

_CHUNK = 400  # days per IN (...)


def refresh(conn: Connection, integration_id: int, days: Sequence[date], *,
            cost: Sequence[Mapping[str, Any]] | None = None, usage: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Recompute the integration's totals of `days` from its stored cost and usage rows.

    A replacement that has just written a table's rows passes them (`cost` or `usage`: rows of those days and
    perhaps others, as table rows): they are summed as they are instead of being read back. Every page's
    store runs this, so it is driver SQL (no statement built per call)."""
    d = DriverDays(conn)
    mark, name = d.mark, conn.dialect.identifier_preparer.format_table
    for chunk, within, marks in d.chunks(days):
        sums: dict[tuple[Any, str], list[Any]] = {}
        amounts: Iterable[tuple[Any, str, Decimal]]
        if cost is None:
            amounts = ((day, model, d.money_read(amount)) for day, model, amount in conn.exec_driver_sql(
                f"SELECT day, model, amount_usd FROM {name(cost_rows)} WHERE integration_id = {mark} "
                f"AND day IN ({marks})", (integration_id, *chunk)).fetchall())
        else:
            amounts = ((d.day(r["day"]), r["model"], r["amount_usd"]) for r in cost)
        for day, model, amount in amounts:
            if day in within:
                acc = sums.setdefault((day, model), [Decimal(0), 0, 0, 0, 0])
                acc[0] = EXACT.add(acc[0], amount)
        tokens: Iterable[tuple[Any, ...]]
        if usage is None:
            tokens = conn.exec_driver_sql(
                f"SELECT day, model, sum(uncached_input_tokens), sum(output_tokens), sum(cache_read_input_tokens), "
                f"sum(cache_creation_5m_input_tokens) + sum(cache_creation_1h_input_tokens) FROM {name(usage_rows)} "
                f"WHERE integration_id = {mark} AND day IN ({marks}) GROUP BY day, model",
                (integration_id, *chunk)).fetchall()
        else:
            tokens = ((d.day(r["day"]), r["model"], r["uncached_input_tokens"], r["output_tokens"],
                       r["cache_read_input_tokens"],
                       r["cache_creation_5m_input_tokens"] + r["cache_creation_1h_input_tokens"]) for r in usage)
        for day, model, a, b, cr, cw in tokens:
            if day in within:
                acc = sums.setdefault((day, model), [Decimal(0), 0, 0, 0, 0])
                acc[1] += int(a)
                acc[2] += int(b)
                acc[3] += int(cr)
                acc[4] += int(cw)
        table = name(daily_model_totals)
        conn.exec_driver_sql(f"DELETE FROM {table} WHERE integration_id = {mark} AND day IN ({marks})",
                             (integration_id, *chunk))
        if sums:
            conn.exec_driver_sql(
                f"INSERT INTO {table} (integration_id, day, model, cost_usd, input_tokens, output_tokens, "
                f"cache_read_tokens, cache_write_tokens) VALUES ({', '.join([mark] * 8)})",
                [(integration_id, day, model, d.money(v[0]), *v[1:]) for (day, model), v in sums.items()])


class DriverDays:
    """Days and money in the driver's own form, for the totals' driver SQL: on SQLite ISO day text and exact
    decimal text (what SQLAlchemy's types store there), on PostgreSQL dates and Decimal as they are."""

    def __init__(self, conn: Connection) -> None:
        self.sqlite = conn.dialect.name == "sqlite"
        self.mark = driver_marker(conn)
        self._days: dict[date, Any] = {}

    def chunks(self, days: Sequence[date]) -> Iterator[tuple[list[Any], set[Any], str]]:
        """The distinct `days` in order, a chunk of at most `_CHUNK` at a time: (the chunk's days in the driver's
        form, the same as a set, its `IN (...)` markers)."""
        wanted = sorted(set(days))
        for start in range(0, len(wanted), _CHUNK):
            chunk = [self.day(v) for v in wanted[start:start + _CHUNK]]
            yield chunk, set(chunk), ", ".join([self.mark] * len(chunk))

    def day(self, value: date) -> Any:
        if not self.sqlite:
            return value
        text = self._days.get(value)
        if text is None:
            text = self._days[value] = sqlite_date(value)
        return text

    def money(self, value: Decimal) -> Any:
        return money_text(value) if self.sqlite else exact_money(value)

    def money_read(self, value: Any) -> Decimal:
        return Decimal(value) if isinstance(value, str) else exact_money(value)


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
