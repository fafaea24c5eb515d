"""Storage for reconciliation: the `events` table, the import sink, and the two sides' queries.

- `events` is one tracked call per row, unique per (source, event_id). An event without an id is
  always inserted (NULLs never collide in a unique index, on SQLite and PostgreSQL alike); an id
  seen again adds its sightings to `seen_count` (an upsert), and `seen_count - 1` is what
  reconciliation reports as duplicate ids. `workspace_id`, `api_key_id`, `customer` are NULL when
  the tracker did not say (unlike the bill's '' columns: unknown is not the default workspace).
  Besides the unique (source, event_id) index there is `ix_events_reconcile`: (source, day,
  raw_model) followed by every column reconciliation sums, so a period's events of one source come
  out of it in GROUP BY order without reading the table. (Its inserts cost about what a plain
  (source, day, raw_model) index's do: that order, not the width, is what costs.)
- `SqlEventSink` is the importer's `EventSink` on a Connection (the caller owns the transaction).
- `bill_models`, `load_bill` and `tracked_aggregates` read the bill (`cost_rows`/`usage_rows`) and
  the events for `compare`. Token counts are summed in SQL; money is summed with Decimal in Python
  on SQLite (its text amounts are concatenated per group, one string per group, then summed) and
  with NUMERIC `SUM` on PostgreSQL, where it is exact.

The table lives on the shared `metadata`; migrations `0002_events` and `0004_events_speed` make it.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Date,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    case,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from worker.money import money_sum
from worker.reconcile.aggregate import BillBuilder, GroupBy, TrackedAggregate
from worker.reconcile.events import ROW_COLUMNS, EventRow, TokenCounts
from worker.reconcile.models import canonical_model_id
from worker.storage.db import sqlite_driver
from worker.storage.tables import cost_rows, metadata, usage_rows
from worker.storage.types import ExactDecimal, UTCDateTime

__all__ = [
    "TOKEN_COLUMNS",
    "CommittingSink",
    "SqlEventSink",
    "bill_models",
    "bulk_import",
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
    # Reconciliation's index: one source's period in GROUP BY (day, raw_model) order, carrying every
    # summed column (it answers `tracked_aggregates --by model` without reading the table).
    Index("ix_events_reconcile", "source", "day", "raw_model", "seen_count", "cost_usd", *TOKEN_COLUMNS),
)

_INSERT_COLUMNS = ("source", *ROW_COLUMNS[:1], "occurred_at", "day", *ROW_COLUMNS[2:], "seen_count")
_FILTER_CLAUSE = sqlite3.sqlite_version_info >= (3, 30)  # aggregate FILTER (WHERE ...)
_ID_CHUNK = 500  # ids per `IN (...)` lookup: far below every SQLite build's parameter limit
_NULLABLE = {"event_id", "model", "cost_usd", "workspace_id", "api_key_id", "customer"}
_LAST_ID = "SELECT max(id) FROM events"


def _upsert(dialect_name: str) -> Any:
    insert = sqlite.insert if dialect_name == "sqlite" else postgresql.insert
    statement = insert(events)
    return statement.on_conflict_do_update(
        index_elements=[events.c.source, events.c.event_id],
        set_={"seen_count": events.c.seen_count + statement.excluded.seen_count},
    )


def _sqlite_upsert(source: str) -> str:
    """The SQLite upsert of one `EventRow` (15 parameters) for `source`.

    The row binds as it is: '' becomes NULL in SQL (`NULLIF`; binding Python's None costs sqlite3
    an adapter lookup per value), the day is the first 10 characters of `occurred_at`, and the
    source is a literal, so executemany binds nothing per row that the row does not already hold.
    """
    if "\x00" in source:
        raise ValueError("a source name cannot contain NUL characters")
    values = ["'" + source.replace("'", "''") + "'"]
    for position, name in enumerate(ROW_COLUMNS, start=1):
        values.append(f"NULLIF(?{position}, '')" if name in _NULLABLE else f"?{position}")
        if name == "occurred_at":
            values.append("substr(?2, 1, 10)")
    values.append("1")
    return (f"INSERT INTO events ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join(values)}) "
            "ON CONFLICT (source, event_id) DO UPDATE SET seen_count = events.seen_count + 1")


class SqlEventSink:
    """`EventSink` over a Connection in a transaction the caller owns.

    SQLite (the 10^5 events/s path): the rows go to the driver's executemany exactly as they are
    (`_sqlite_upsert`). New rows are counted from the largest rowid before and after: within a
    write transaction, which holds SQLite's only write lock (the engine begins every transaction
    with BEGIN IMMEDIATE), every inserted row takes the next rowid, so the difference is exactly
    the number inserted and every other row was a sighting of a stored id. This replaces a lookup
    of the batch's ids.

    PostgreSQL: rows are converted to typed values (timestamptz, date, NUMERIC) and de-duplicated
    per batch, the batch's ids already stored are looked up, and the upsert adds each id's
    sightings. Two imports of the same source running at once may both count an id as new there,
    while `seen_count` stays right.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._sqlite = conn.dialect.name == "sqlite"
        self._sql: dict[str, str] = {}
        if not self._sqlite:
            compiled = _upsert(conn.dialect.name).compile(dialect=conn.dialect, column_keys=list(_INSERT_COLUMNS))
            self._pg_sql = str(compiled)
            self._positional = conn.dialect.paramstyle in ("qmark", "numeric", "format")
            self._order = [_INSERT_COLUMNS.index(name) for name in (compiled.positiontup or _INSERT_COLUMNS)]

    def add(self, source: str, rows: Sequence[EventRow]) -> int:
        if not rows:
            return 0
        if self._sqlite:
            return self._add_sqlite(source, rows)
        return self._add_native(source, rows)

    def _add_sqlite(self, source: str, rows: Sequence[EventRow]) -> int:
        sql = self._sql.get(source)
        if sql is None:
            sql = self._sql[source] = _sqlite_upsert(source)
        # Through SQLAlchemy first: it begins the transaction if the caller has not (BEGIN IMMEDIATE).
        before = self._conn.exec_driver_sql(_LAST_ID).scalar() or 0
        cursor = sqlite_driver(self._conn).cursor()
        try:
            cursor.executemany(sql, rows)
        finally:
            cursor.close()
        after = self._conn.exec_driver_sql(_LAST_ID).scalar() or 0
        return int(after) - int(before)

    def _add_native(self, source: str, rows: Sequence[EventRow]) -> int:
        first: dict[str, EventRow] = {}
        sightings: Counter[str] = Counter()
        unnamed: list[EventRow] = []
        for row in rows:
            if row[0]:
                first.setdefault(row[0], row)
                sightings[row[0]] += 1
            else:
                unnamed.append(row)
        existing = self._existing(source, list(first)) if first else 0
        values = [_native_values(source, row, sightings[row[0]]) for row in first.values()]
        values += [_native_values(source, row, 1) for row in unnamed]
        if self._positional:
            self._conn.exec_driver_sql(self._pg_sql, [tuple(v[i] for i in self._order) for v in values])
        else:
            self._conn.exec_driver_sql(self._pg_sql, [dict(zip(_INSERT_COLUMNS, v, strict=True)) for v in values])
        return len(first) + len(unnamed) - existing

    def _existing(self, source: str, ids: list[str]) -> int:
        found = 0
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start:start + _ID_CHUNK]
            query = select(func.count()).select_from(events).where(
                events.c.source == source, events.c.event_id.in_(chunk))
            found += int(self._conn.execute(query).scalar_one())
        return found


def _native_values(source: str, row: EventRow, copies: int) -> tuple[Any, ...]:
    """A row as the column types bind it outside SQLite (aware UTC datetime, date, Decimal, NULLs)."""
    event_id, at, raw_model, model, a, b, c, d, e, f, cost, workspace, api_key, customer, extra = row
    occurred = datetime.fromisoformat(at).replace(tzinfo=UTC)
    return (
        source, event_id or None, occurred, occurred.date(), raw_model, model or None, a, b, c, d, e, f,
        Decimal(cost) if cost else None, workspace or None, api_key or None, customer or None, extra, copies,
    )


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
    """The sources with events on UTC days `since`..`until`, sorted.

    A walk over the distinct sources (each the next one after the last, from an index) with one
    index probe per source for the period: a few lookups, however many events are stored.
    """
    e = events.c
    found: list[str] = []
    last: str | None = None
    while True:
        following = select(func.min(e.source))
        if last is not None:
            following = following.where(e.source > last)
        last = conn.execute(following).scalar_one()
        if last is None:
            return found
        probe = select(e.id).where(e.source == last, e.day >= since, e.day <= until).limit(1)
        if conn.execute(probe).first() is not None:
            found.append(last)


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
    `sources=None` means every source with events in the period.

    One query per source: its events come out of `ix_events_reconcile` in GROUP BY order with
    every summed column, so the database aggregates as it scans the index (no sort, no table reads
    for `--by model`).
    """
    by = GroupBy(by)
    e = events.c
    key = (e.workspace_id if by is GroupBy.WORKSPACE else e.api_key_id if by is GroupBy.API_KEY
           else e.customer if by is GroupBy.ACTOR else None)
    tokens = [func.sum(getattr(e, name)) for name in TOKEN_COLUMNS]
    unpriced: list[ColumnElement[Any]]  # FILTER or CASE: the same column type either way
    if _FILTER_CLAUSE or conn.dialect.name != "sqlite":
        unpriced = [func.sum(getattr(e, name)).filter(e.cost_usd.is_(None)) for name in TOKEN_COLUMNS]
    else:  # SQLite before 3.30
        unpriced = [func.sum(case((e.cost_usd.is_(None), getattr(e, name)), else_=0)) for name in TOKEN_COLUMNS]
    if conn.dialect.name == "sqlite":
        money = func.group_concat(e.cost_usd, " ", type_=Text)
    else:
        money = func.sum(e.cost_usd)
    group = [e.day, e.raw_model, *([key] if key is not None else [])]
    query = (select(*group, func.count(), func.sum(e.seen_count), money, *tokens, *unpriced)
             .where(e.source == bindparam("source"), e.day >= since, e.day <= until).group_by(*group))
    normalize = normalize or (lambda raw: None)
    models: dict[str, tuple[str, bool]] = {}
    width = len(group)
    result: dict[tuple[date, str, str | None], TrackedAggregate] = {}
    for source in sorted(set(sources_between(conn, since, until) if sources is None else sources)):
        for row in conn.execute(query, {"source": source}):
            day, raw = row[0], row[1]
            cell_key = row[2] if key is not None else None
            count, seen, cost = row[width], row[width + 1], row[width + 2]
            counts = [int(n or 0) for n in row[width + 3:]]
            found = models.get(raw)
            if found is None:
                model = normalize(raw)
                found = models[raw] = (model if model is not None else canonical_model_id(raw), model is None)
            aggregate = TrackedAggregate(
                day=day,
                model=found[0],
                key=cell_key,
                tokens=TokenCounts(*counts[:6]),
                unpriced_tokens=TokenCounts(*counts[6:]),
                cost_usd=_money_sum(cost),
                events=int(count),
                duplicate_ids=int(seen) - int(count),
                unmatched_model=found[1],
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
        return money_sum(map(Decimal, value.split()))
    return Decimal(str(value))


IMPORT_WAL_AUTOCHECKPOINT = 10_000
"""WAL pages (4 KiB) between automatic checkpoints while importing: ~40 MB instead of SQLite's ~4 MB."""


@contextmanager
def bulk_import(conn: Connection) -> Iterator[None]:
    """Settings for a long import on `conn`, undone afterwards (SQLite; nothing elsewhere).

    SQLite checkpoints the WAL into the database every 1000 pages by default: during a 10^6-event
    import that is a checkpoint (and an fsync) every few batches, each rewriting the same hot index
    pages. Every ~40 MB instead costs a tenth of the import time less; the WAL stays bounded, and
    durability is unchanged (a commit is in the WAL either way).
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    driver = sqlite_driver(conn)  # not through SQLAlchemy: a PRAGMA needs no transaction
    (previous,) = driver.execute("PRAGMA wal_autocheckpoint").fetchone()
    driver.execute(f"PRAGMA wal_autocheckpoint={IMPORT_WAL_AUTOCHECKPOINT}")
    try:
        yield
    finally:
        driver.execute(f"PRAGMA wal_autocheckpoint={int(previous)}")


class CommittingSink:
    """An `EventSink` that commits each batch in its own transaction on `conn`.

    A long import then never holds SQLite's write lock for more than one batch, so a running sync
    is not blocked for the whole file; a crash keeps the batches already committed.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._sink = SqlEventSink(conn)

    def add(self, source: str, rows: Sequence[EventRow]) -> int:
        with self._conn.begin():
            return self._sink.add(source, rows)
