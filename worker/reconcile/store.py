"""Storage for reconciliation: the `events` table, the import sink, and the two sides' queries.

- `events` is one tracked call per row, unique per (source, event_id). An event without an id is
  always inserted (NULLs never collide in a unique index, on SQLite and PostgreSQL alike); an id
  seen again adds its sightings to `seen_count` (an upsert), and `seen_count - 1` is what
  reconciliation reports as duplicate ids. `workspace_id`, `api_key_id`, `customer` are NULL when
  the tracker did not say (unlike the bill's '' columns: unknown is not the default workspace).
- `SqlEventSink` is the importer's `EventSink` on a Connection (the caller owns the transaction).
- `bill_models`, `load_bill` and `tracked_aggregates` read the bill (`cost_rows`/`usage_rows`) and
  the events for `compare`. Token counts are summed in SQL; money is summed with Decimal in Python
  on SQLite (its text amounts are concatenated per group, one string per group, then summed) and
  with NUMERIC `SUM` on PostgreSQL, where it is exact.

The table lives on the shared `metadata`; migration `0002_events` creates it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

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
    UniqueConstraint,
    case,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from worker.reconcile.aggregate import BillBuilder, GroupBy, TrackedAggregate
from worker.reconcile.events import TokenCounts, TrackedEvent
from worker.reconcile.models import canonical_model_id
from worker.storage.tables import cost_rows, metadata, usage_rows
from worker.storage.types import ExactDecimal, UTCDateTime

__all__ = [
    "TOKEN_COLUMNS",
    "CommittingSink",
    "SqlEventSink",
    "bill_models",
    "count_events",
    "events",
    "load_bill",
    "sources_between",
    "tracked_aggregates",
]

TOKEN_COLUMNS = (
    "uncached_input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_5m_tokens", "cache_write_1h_tokens", "cache_write_unsplit_tokens",
)
"""In `TokenCounts` field order."""

events = Table(
    "events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("source", String(100), nullable=False),
    Column("event_id", Text),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("day", Date, nullable=False),  # UTC date of occurred_at
    Column("raw_model", Text, nullable=False),  # as the tracker wrote it
    Column("model", Text),  # the bill's id at import time; NULL when nothing matched
    *(Column(name, BigInteger, nullable=False) for name in TOKEN_COLUMNS),
    Column("cost_usd", ExactDecimal),  # the tracker's own cost; NULL = unknown (priced from the bill)
    Column("workspace_id", Text),
    Column("api_key_id", Text),
    Column("customer", Text),
    Column("extra", Text, nullable=False),  # canonical JSON of format-specific facts, '' if none
    Column("seen_count", Integer, nullable=False),  # sightings of this (source, event_id)
    UniqueConstraint("source", "event_id", name="uq_events_source_event_id"),
    Index("ix_events_day_source", "day", "source"),
)

_INSERT_COLUMNS = (
    "source", "event_id", "occurred_at", "day", "raw_model", "model", *TOKEN_COLUMNS, "cost_usd",
    "workspace_id", "api_key_id", "customer", "extra", "seen_count",
)
_ID_CHUNK = 500  # ids per `IN (...)` lookup: far below every SQLite build's parameter limit


def _upsert(dialect_name: str) -> Any:
    insert = sqlite.insert if dialect_name == "sqlite" else postgresql.insert
    statement = insert(events)
    return statement.on_conflict_do_update(
        index_elements=[events.c.source, events.c.event_id],
        set_={"seen_count": events.c.seen_count + statement.excluded.seen_count},
    )


class SqlEventSink:
    """`EventSink` over a Connection in a transaction the caller owns.

    The upsert is compiled once and run with the driver's executemany on plain values: SQLAlchemy's
    per-parameter type processing would cost more than the insert itself at 10^5 events/s. The
    values are therefore converted here exactly as the column types would (`_sqlite_values`).
    New events are counted by looking up which of the batch's ids are already stored, in the same
    transaction (exact on SQLite, whose writer holds the lock; on PostgreSQL two imports of the same
    source running at once may both count an id as new, while `seen_count` stays right).
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        compiled = _upsert(conn.dialect.name).compile(dialect=conn.dialect, column_keys=list(_INSERT_COLUMNS))
        self._sql = str(compiled)
        self._sqlite = conn.dialect.name == "sqlite"
        self._positional = conn.dialect.paramstyle in ("qmark", "numeric", "format")
        self._order = list(compiled.positiontup or _INSERT_COLUMNS) if self._positional else []

    def add(self, source: str, batch: Sequence[tuple[TrackedEvent, int]]) -> int:
        ids = [event.event_id for event, _ in batch if event.event_id is not None]
        existing = self._existing(source, ids) if ids else 0
        convert = _sqlite_values if self._sqlite else _native_values
        rows = [convert(source, event, copies) for event, copies in batch]
        if self._positional:
            index = {name: i for i, name in enumerate(_INSERT_COLUMNS)}
            if self._order != list(_INSERT_COLUMNS):
                order = [index[name] for name in self._order]
                rows = [tuple(row[i] for i in order) for row in rows]
            self._conn.exec_driver_sql(self._sql, rows)
        else:
            self._conn.exec_driver_sql(self._sql, [dict(zip(_INSERT_COLUMNS, row, strict=True)) for row in rows])
        return len(batch) - existing

    def _existing(self, source: str, ids: list[str]) -> int:
        found = 0
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start:start + _ID_CHUNK]
            query = select(func.count()).select_from(events).where(
                events.c.source == source, events.c.event_id.in_(chunk))
            found += int(self._conn.execute(query).scalar_one())
        return found


def _extra(event: TrackedEvent) -> str:
    if not event.extra:
        return ""
    return json.dumps(event.extra, sort_keys=True, separators=(",", ":"), default=str)


def _native_values(source: str, event: TrackedEvent, copies: int) -> tuple[Any, ...]:
    t = event.tokens
    return (
        source, event.event_id, event.occurred_at, event.occurred_at.date(), event.raw_model, event.model,
        t.uncached_input, t.output, t.cache_read, t.cache_write_5m, t.cache_write_1h, t.cache_write_unsplit,
        event.cost_usd, event.workspace_id, event.api_key_id, event.customer, _extra(event), copies,
    )


def _sqlite_values(source: str, event: TrackedEvent, copies: int) -> tuple[Any, ...]:
    # What UTCDateTime / Date / ExactDecimal bind on SQLite: naive-UTC ISO text with microseconds,
    # ISO date text, and the exact decimal text (never a float).
    t = event.tokens
    at = event.occurred_at
    cost = event.cost_usd
    return (
        source, event.event_id, at.replace(tzinfo=None).isoformat(" ", "microseconds"), at.date().isoformat(),
        event.raw_model, event.model,
        t.uncached_input, t.output, t.cache_read, t.cache_write_5m, t.cache_write_1h, t.cache_write_unsplit,
        None if cost is None else _decimal_text(cost), event.workspace_id, event.api_key_id, event.customer,
        _extra(event), copies,
    )


def _decimal_text(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError("money must be a finite Decimal")
    return format(value, "f")


# --- the bill -------------------------------------------------------------------------------------

def bill_models(conn: Connection, integration_id: int | None = None) -> set[str]:
    """Distinct model ids in the synced bill (usage and cost rows), optionally of one integration."""
    found: set[str] = set()
    for table in (usage_rows, cost_rows):
        query = select(table.c.model).where(table.c.model != "").distinct()
        if integration_id is not None:
            query = query.where(table.c.integration_id == integration_id)
        found.update(conn.execute(query).scalars())
    return found


def load_bill(
    conn: Connection,
    since: date,
    until: date,
    by: GroupBy | str = GroupBy.MODEL,
    integration_id: int | None = None,
) -> BillBuilder:
    """The synced bill for UTC days `since`..`until` (inclusive) folded into a `BillBuilder`.

    '' (absent) dimensions become None: a '' workspace is the default workspace, which is also
    where `--by workspace` puts events that carry no workspace id.
    """
    builder = BillBuilder(by)
    c = cost_rows.c
    cost_q = select(c.day, c.workspace_id, c.model, c.cost_type, c.token_type, c.amount_usd).where(
        c.day >= since, c.day <= until)
    u = usage_rows.c
    sums = [func.sum(u.uncached_input_tokens), func.sum(u.output_tokens), func.sum(u.cache_read_input_tokens),
            func.sum(u.cache_creation_5m_input_tokens), func.sum(u.cache_creation_1h_input_tokens)]
    usage_q = (select(u.day, u.model, u.workspace_id, u.api_key_id, u.service_tier, *sums)
               .where(u.day >= since, u.day <= until, u.model != "")
               .group_by(u.day, u.model, u.workspace_id, u.api_key_id, u.service_tier))
    if integration_id is not None:
        cost_q = cost_q.where(c.integration_id == integration_id)
        usage_q = usage_q.where(u.integration_id == integration_id)
    for day, workspace, model, cost_type, token_type, amount in conn.execute(cost_q):
        builder.add_cost(day, amount, cost_type=cost_type, model=model or None, token_type=token_type or None,
                         workspace_id=workspace or None)
    for day, model, workspace, api_key, tier, *counts in conn.execute(usage_q):
        builder.add_usage(day, model, TokenCounts(*(int(n) for n in counts)), workspace_id=workspace or None,
                          api_key_id=api_key or None, service_tier=tier or None)
    return builder


# --- tracked events -------------------------------------------------------------------------------

def sources_between(conn: Connection, since: date, until: date) -> list[str]:
    """The sources with events on UTC days `since`..`until`."""
    query = select(events.c.source).where(events.c.day >= since, events.c.day <= until).distinct()
    return sorted(conn.execute(query).scalars())


def count_events(conn: Connection, source: str | None = None) -> int:
    query = select(func.count()).select_from(events)
    if source is not None:
        query = query.where(events.c.source == source)
    return int(conn.execute(query).scalar_one())


def tracked_aggregates(
    conn: Connection,
    since: date,
    until: date,
    sources: Iterable[str] | None = None,
    by: GroupBy | str = GroupBy.MODEL,
    normalize: Callable[[str], str | None] | None = None,
) -> list[TrackedAggregate]:
    """Stored events per (UTC day, model, key) for `since`..`until` (inclusive).

    Events are grouped by the tracker's raw model id and normalized here, with the bill and
    aliases as they are NOW (an alias added after the import applies without re-importing).
    A raw id nothing matches keeps its canonical form and is marked `unmatched_model`.
    """
    by = GroupBy(by)
    e = events.c
    key = e.workspace_id if by is GroupBy.WORKSPACE else e.api_key_id if by is GroupBy.API_KEY else None
    tokens = [func.sum(getattr(e, name)) for name in TOKEN_COLUMNS]
    unpriced = [func.sum(case((e.cost_usd.is_(None), getattr(e, name)), else_=0)) for name in TOKEN_COLUMNS]
    if conn.dialect.name == "sqlite":
        money = func.group_concat(e.cost_usd, " ", type_=Text)
    else:
        money = func.sum(e.cost_usd)
    group = [e.day, e.raw_model, *([key] if key is not None else [])]
    query = (select(*group, func.count(), func.sum(e.seen_count), money, *tokens, *unpriced)
             .where(e.day >= since, e.day <= until).group_by(*group))
    if sources is not None:
        query = query.where(e.source.in_(list(sources)))
    normalize = normalize or (lambda raw: None)
    width = len(group)
    result: dict[tuple[date, str, str | None], TrackedAggregate] = {}
    for row in conn.execute(query):
        day, raw = row[0], row[1]
        cell_key = row[2] if key is not None else None
        count, seen, cost = row[width], row[width + 1], row[width + 2]
        counts = [int(n or 0) for n in row[width + 3:]]
        model = normalize(raw)
        aggregate = TrackedAggregate(
            day=day,
            model=model if model is not None else canonical_model_id(raw),
            key=cell_key,
            tokens=TokenCounts(*counts[:6]),
            unpriced_tokens=TokenCounts(*counts[6:]),
            cost_usd=_money_sum(cost),
            events=int(count),
            duplicate_ids=int(seen) - int(count),
            unmatched_model=model is None,
        )
        cell = (aggregate.day, aggregate.model, aggregate.key)
        current = result.get(cell)
        result[cell] = aggregate if current is None else current + aggregate
    return list(result.values())


def _money_sum(value: Any) -> Decimal:
    if value is None:
        return Decimal(0)
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str):  # SQLite: the group's exact decimal texts, space-separated
        return sum(map(Decimal, value.split()), Decimal(0))
    return Decimal(str(value))


class CommittingSink:
    """An `EventSink` that commits each batch in its own transaction on `conn`.

    A long import then never holds SQLite's write lock for more than one batch, so a running sync
    is not blocked for the whole file; a crash keeps the batches already committed.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._sink = SqlEventSink(conn)

    def add(self, source: str, batch: Sequence[tuple[TrackedEvent, int]]) -> int:
        with self._conn.begin():
            return self._sink.add(source, batch)
