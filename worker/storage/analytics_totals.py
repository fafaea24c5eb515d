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

from collections.abc import Iterable, Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, false, or_, select

from worker.storage.tables import analytics_cost_rows, analytics_daily_totals, analytics_usage_rows
from worker.storage.totals import DriverDays, exact_sum, summed
from worker.storage.types import EXACT

MAIN = "main"  # the grouping summed here (worker.storage.analytics.MAIN)


def refresh(conn: Connection, integration_id: int, days: Sequence[date], part: str,
            rows: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Recompute the integration's totals of `days` of one part from its stored analytics rows of grouping
    'main': part `cost` from analytics_cost_rows (cost, list cost), `usage` from analytics_usage_rows (tokens).
    Each replacement refreshes only the part of the table it replaced, and passes the rows it has just
    written (`rows`: table rows of grouping 'main', of those days and perhaps others), summed instead of
    read back. Driver SQL: every page's store runs this."""
    d = DriverDays(conn)
    prep, mark = conn.dialect.identifier_preparer, d.mark
    name, quote = prep.format_table, prep.quote
    for chunk, within, marks in d.chunks(days):
        # (day, dimension, key) -> [cost, list cost, input, output, cache read, cache write]
        sums: dict[tuple[Any, str, str], list[Any]] = {}
        if part == "cost":
            add = EXACT.add
            amounts: Iterable[tuple[Any, ...]]
            if rows is None:
                amounts = ((day, model, key, actor, d.money_read(a), d.money_read(b)) for day, model, key, actor, a, b
                           in conn.exec_driver_sql(
                               f"SELECT day, model, api_key_id, actor_id, amount_usd, list_amount_usd FROM "
                               f"{name(analytics_cost_rows)} WHERE integration_id = {mark} AND {quote('grouping')} = {mark} "
                               f"AND day IN ({marks})", (integration_id, MAIN, *chunk)).fetchall())
            else:
                amounts = ((d.day(r["day"]), r["model"], r["api_key_id"], r["actor_id"], r["amount_usd"],
                            r["list_amount_usd"]) for r in rows)
            for day, model, api_key, actor, amount, listed in amounts:
                if day not in within:
                    continue
                for key in ((day, "model", model), (day, "api_key", api_key), (day, "actor", actor)):
                    acc = sums.get(key)
                    if acc is None:
                        sums[key] = [amount, listed, 0, 0, 0, 0]
                    else:
                        acc[0] = add(acc[0], amount)
                        acc[1] = add(acc[1], listed)
        else:
            tokens: Iterable[tuple[Any, ...]]
            if rows is None:
                tokens = conn.exec_driver_sql(
                    f"SELECT day, model, api_key_id, actor_id, sum(uncached_input_tokens), sum(output_tokens), "
                    f"sum(cache_read_input_tokens), sum(cache_creation_5m_input_tokens) + "
                    f"sum(cache_creation_1h_input_tokens) FROM {name(analytics_usage_rows)} WHERE integration_id = "
                    f"{mark} AND {quote('grouping')} = {mark} AND day IN ({marks}) GROUP BY day, model, api_key_id, actor_id",
                    (integration_id, MAIN, *chunk)).fetchall()
            else:
                tokens = ((d.day(r["day"]), r["model"], r["api_key_id"], r["actor_id"], r["uncached_input_tokens"],
                           r["output_tokens"], r["cache_read_input_tokens"],
                           r["cache_creation_5m_input_tokens"] + r["cache_creation_1h_input_tokens"]) for r in rows)
            for day, model, api_key, actor, a, b, cr, cw in tokens:
                if day not in within:
                    continue
                for key in ((day, "model", model), (day, "api_key", api_key), (day, "actor", actor)):
                    acc = sums.setdefault(key, [Decimal(0), Decimal(0), 0, 0, 0, 0])
                    acc[2] += int(a)
                    acc[3] += int(b)
                    acc[4] += int(cr)
                    acc[5] += int(cw)
        table = name(analytics_daily_totals)
        conn.exec_driver_sql(f"DELETE FROM {table} WHERE integration_id = {mark} AND part = {mark} AND day IN ({marks})",
                             (integration_id, part, *chunk))
        if sums:
            conn.exec_driver_sql(
                f"INSERT INTO {table} (integration_id, day, dimension, {quote('key')}, part, cost_usd, list_cost_usd, "
                f"input_tokens, output_tokens, cache_read_tokens, cache_write_tokens) VALUES ({', '.join([mark] * 11)})",
                [(integration_id, day, dimension, key, part, d.money(v[0]), d.money(v[1]), *v[2:])
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
