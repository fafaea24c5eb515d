"""Data functions. Each takes a Connection inside a transaction the caller owns (`with engine.begin()`).

Every query of the `integrations` table is here; rows come back as this module's dataclasses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from decimal import Decimal
from operator import itemgetter
from typing import Any

import msgspec
from sqlalchemy import Connection, case, delete, func, insert, literal_column, or_, select, update
from sqlalchemy.sql import Select

from worker.storage import analytics_totals, totals
from worker.storage.rows import (
    CANONICAL_JSON,
    COST_COLUMNS,
    COST_GRAIN,
    USAGE_COLUMNS,
    USAGE_GRAIN,
    none_if_empty,
    usage_value,
)
from worker.storage.tables import (
    analytics_checkpoints,
    analytics_cost_rows,
    analytics_daily_totals,
    analytics_names,
    analytics_state,
    analytics_usage_rows,
    cost_rows,
    daily_model_totals,
    day_digests,
    integrations,
    revisions,
    spend_anomalies,
    sync_runs,
    usage_rows,
)
from worker.storage.types import driver_marker, exact_money, money_text, sqlite_date

STATUSES = ("pending", "backfilling", "ok", "error")
SOURCES = ("legacy", "analytics", "both")
ANALYTICS_TABLES = (analytics_cost_rows, analytics_usage_rows, analytics_daily_totals, analytics_names, analytics_state,
                    analytics_checkpoints)


@dataclass(frozen=True)
class Integration:
    """An integrations row without its ciphertext's plaintext (the key stays sealed until a sync needs it)."""

    id: int
    label: str
    tier: str
    organization_id: str
    organization_name: str
    key_ciphertext: bytes
    key_id: str
    key_hint: str
    status: str
    last_success_at: datetime | None
    last_error: str | None
    created_at: datetime
    backfill_start: date
    backfill_end: date
    cost_checkpoint: date
    usage_checkpoint: date
    backfill_done: bool
    last_daily_slot: datetime | None
    lease_owner: str | None
    lease_since: datetime | None
    lease_expires_at: datetime | None
    failed_attempts: int
    retry_at: datetime | None
    source: str = "legacy"  # legacy | analytics | both

    def __repr__(self) -> str:  # the ciphertext is not secret, but it is noise
        return f"Integration(id={self.id}, label={self.label!r}, status={self.status!r}, key_hint={self.key_hint!r})"

    @property
    def display(self) -> str:
        return f"integration {self.id} ({self.label})"


_FIELDS = list(Integration.__dataclass_fields__)


def backfill_days(i: Integration | IntegrationState) -> tuple[int, int]:
    """(days stored, days in the window) of an integration's backfill: the slower endpoint's checkpoint counts
    (what /metrics and the dashboard show)."""
    total = (i.backfill_end - i.backfill_start).days + 1
    if i.backfill_done:
        return max(0, total), max(0, total)
    done = 0 if total <= 0 else min(total, max(0, (min(i.cost_checkpoint, i.usage_checkpoint) - i.backfill_start).days))
    return done, max(0, total)


def _integration(row: Any) -> Integration:
    m = row._mapping
    return Integration(**{f: m[f] for f in _FIELDS})


@dataclass(frozen=True)
class IntegrationState:
    """What /metrics shows of an integration (no key material)."""

    id: int
    label: str
    tier: str
    organization_id: str
    status: str
    last_success_at: datetime | None
    backfill_start: date
    backfill_end: date
    cost_checkpoint: date
    usage_checkpoint: date
    backfill_done: bool
    lease_owner: str | None
    lease_expires_at: datetime | None


@dataclass(frozen=True)
class DispatchState:
    """What the scheduler's poll reads of every integration to decide which sync is due."""

    id: int
    status: str
    backfill_done: bool
    last_daily_slot: datetime | None
    retry_at: datetime | None


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds an integration's lease, since and until when (renewed while its sync runs)."""

    owner: str
    since: datetime | None
    until: datetime | None


def _columns(cls: type[IntegrationState] | type[DispatchState]) -> list[Any]:
    return [integrations.c[f.name] for f in fields(cls)]


# --- integrations -------------------------------------------------------------------------------

def insert_integration(conn: Connection, **values: Any) -> int:
    return int(conn.execute(insert(integrations).values(**values).returning(integrations.c.id)).scalar_one())


def get_integration(conn: Connection, integration_id: int) -> Integration | None:
    row = conn.execute(select(integrations).where(integrations.c.id == integration_id)).first()
    return _integration(row) if row else None


def list_integrations(conn: Connection) -> list[Integration]:
    return [_integration(r) for r in conn.execute(select(integrations).order_by(integrations.c.id))]


def integration_states(conn: Connection) -> list[IntegrationState]:
    return [IntegrationState(*r) for r in conn.execute(select(*_columns(IntegrationState)).order_by(integrations.c.id))]


def dispatch_states(conn: Connection) -> list[DispatchState]:
    """Only what dispatch needs (not whole rows with their sealed keys): this runs every poll."""
    return [DispatchState(*r) for r in conn.execute(select(*_columns(DispatchState)).order_by(integrations.c.id))]


def find_by_organization(conn: Connection, organization_id: str) -> list[Integration]:
    rows = conn.execute(select(integrations).where(integrations.c.organization_id == organization_id))
    return [_integration(r) for r in rows]


def update_integration(conn: Connection, integration_id: int, **values: Any) -> None:
    conn.execute(update(integrations).where(integrations.c.id == integration_id).values(**values))


def reseal_key(conn: Connection, integration_id: int, old_key_id: str, ciphertext: bytes, key_id: str) -> int:
    """Store a re-sealed key if the row still holds the one sealed under `old_key_id` (compare-and-set: a
    concurrent rotation never overwrites newer work). Returns the rows changed (0 or 1)."""
    return int(conn.execute(
        update(integrations)
        .where(integrations.c.id == integration_id, integrations.c.key_id == old_key_id)
        .values(key_ciphertext=ciphertext, key_id=key_id)
    ).rowcount)


def delete_integration(conn: Connection, integration_id: int) -> bool:
    # Children first: SQLite enforces ON DELETE CASCADE only with foreign_keys on, so be explicit.
    for table in (cost_rows, usage_rows, daily_model_totals, revisions, sync_runs, spend_anomalies, day_digests,
                  *ANALYTICS_TABLES):
        conn.execute(delete(table).where(table.c.integration_id == integration_id))
    return conn.execute(delete(integrations).where(integrations.c.id == integration_id)).rowcount > 0


# --- leases: one process at a time syncs an integration -----------------------------------------

def take_lease(conn: Connection, integration_id: int, owner: str, now: datetime, until: datetime, *,
               force: bool = False) -> bool:
    """Take the lease when it is free, expired or already ours (atomic on both backends); with `force`
    whatever it says (the caller holds the integration's claim, so its holder is dead). False when another
    process holds it, or the integration is gone."""
    c = integrations.c
    free = or_(c.lease_owner.is_(None), c.lease_owner == owner, c.lease_expires_at.is_(None), c.lease_expires_at < now)
    result = conn.execute(
        update(integrations)
        .where(c.id == integration_id, *([] if force else [free]))
        .values(lease_owner=owner, lease_expires_at=until,
                lease_since=case((c.lease_owner == owner, func.coalesce(c.lease_since, now)), else_=now))
    )
    return result.rowcount == 1


def renew_lease(conn: Connection, integration_id: int, owner: str, until: datetime) -> bool:
    """Extend our lease; False when it is no longer ours (another process took the integration over)."""
    result = conn.execute(update(integrations)
                          .where(integrations.c.id == integration_id, integrations.c.lease_owner == owner)
                          .values(lease_expires_at=until))
    return result.rowcount == 1


def release_lease(conn: Connection, integration_id: int, owner: str) -> None:
    conn.execute(
        update(integrations)
        .where(integrations.c.id == integration_id, integrations.c.lease_owner == owner)
        .values(lease_owner=None, lease_since=None, lease_expires_at=None)
    )


def lease_holder(conn: Connection, integration_id: int) -> LeaseHolder | None:
    """The lease as the row records it (None when free, or the integration is gone)."""
    c = integrations.c
    row = conn.execute(select(c.lease_owner, c.lease_since, c.lease_expires_at).where(c.id == integration_id)).first()
    return LeaseHolder(row[0], row[1], row[2]) if row is not None and row[0] is not None else None


def holds_lease(conn: Connection, integration_id: int, owner: str) -> bool:
    row = conn.execute(select(integrations.c.lease_owner).where(integrations.c.id == integration_id)).first()
    return row is not None and row[0] == owner


# Statements every stored page runs, as text: a Core statement costs its cache key on every call (~50-80 us,
# several times the statement itself on SQLite).
_LOCK_OWNER = "SELECT lease_owner FROM integrations WHERE id = {mark}"
_LOCK_OWNER_PG = "SELECT lease_owner FROM integrations WHERE id = {mark} FOR UPDATE"
_RUN_COUNTERS = ("requests", "pages", "rows", "rate_limited", "retries", "waited_seconds")
_UPDATE_RUN_COUNTERS = (f"UPDATE sync_runs SET {', '.join(f'{chr(34)}{c}{chr(34)} = {{mark}}' for c in _RUN_COUNTERS)} "
                        "WHERE id = {mark}")


def lock_lease_owner(conn: Connection, integration_id: int) -> str | None:
    """The lease's owner, the row locked until the transaction ends (SELECT ... FOR UPDATE on PostgreSQL;
    SQLite's BEGIN IMMEDIATE already serializes writers)."""
    # Driver SQL: every stored page runs this.
    statement = _LOCK_OWNER_PG if conn.dialect.name == "postgresql" else _LOCK_OWNER
    row = conn.exec_driver_sql(statement.format(mark=driver_marker(conn)), (integration_id,)).fetchone()
    return None if row is None else row[0]


def advance_checkpoint(conn: Connection, integration_id: int, endpoint: str, next_day: date) -> None:
    """Move the endpoint's backfill checkpoint (the next day to fetch) forward to `next_day`, never back."""
    column = {"cost": "cost_checkpoint", "usage": "usage_checkpoint"}[endpoint]
    current = conn.execute(select(integrations.c[column]).where(integrations.c.id == integration_id)).scalar_one()
    if next_day > current:
        update_integration(conn, integration_id, **{column: next_day})


def claim_daily_slot(conn: Connection, integration_id: int, slot: datetime) -> bool:
    """Mark `slot` handled for the integration; False when some process already claimed it."""
    result = conn.execute(
        update(integrations)
        .where(integrations.c.id == integration_id,
               or_(integrations.c.last_daily_slot.is_(None), integrations.c.last_daily_slot < slot))
        .values(last_daily_slot=slot)
    )
    return result.rowcount == 1


# --- day replacement with revision history ------------------------------------------------------
#
# The hot path of every sync (a year of a large organization is about a million rows). Rows reach the
# driver's executemany as plain tuples in the driver's own types (SQLAlchemy's per-row bind processing
# cost more than the insert itself); the days' stored rows are read back the same way and compared
# with the new ones as tuples. Only what differs is written: a re-read that changes nothing deletes
# and inserts nothing, and JSON is made only for the revisions. What is stored is exactly what the
# typed path stores: ISO dates and exact decimal text on SQLite, date and Decimal (NUMERIC) on
# PostgreSQL.

@dataclass(frozen=True)
class _DayTable:
    table: Any
    kind: str
    grain: tuple[str, ...]
    columns: tuple[str, ...]  # integration_id, day, *grain, *values
    money_at: int | None  # index of the amount in `columns` (the legacy cost rows' fast path)
    money: tuple[int, ...] = ()  # indices of money columns in `columns`, for other tables
    scope: str | None = None  # a grain column whose value a replacement is limited to (rows of other values stay)

    @property
    def values(self) -> tuple[str, ...]:
        return self.columns[2 + len(self.grain):]


_COST = _DayTable(cost_rows, "cost", COST_GRAIN, COST_COLUMNS, COST_COLUMNS.index("amount_usd"))
_USAGE = _DayTable(usage_rows, "usage", USAGE_GRAIN, USAGE_COLUMNS, None)
_DELETE_CHUNK = 500  # ids per DELETE ... IN (...)


def _sqlite_cost_rows(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Cost rows as SQLite stores them (ISO day, exact decimal text), in COST_COLUMNS order."""
    dates: dict[Any, str] = {}
    out: list[tuple[Any, ...]] = []
    append = out.append
    for r in rows:
        day, amount = r["day"], r["amount_usd"]
        text = dates.get(day)
        if text is None:
            text = dates[day] = sqlite_date(day)
        if type(amount) is not Decimal or not amount.is_finite():
            exact_money(amount)  # raises for a float, an int, NaN...; passes a Decimal subclass
        append((r["integration_id"], text, r["workspace_id"], r["model"], r["cost_type"], r["token_type"],
                r["service_tier"], r["context_window"], r["inference_geo"], r["description"], r["extra"],
                format(amount, "f"), r["currency"]))
    return out


def _driver_rows(spec: _DayTable, rows: list[dict[str, Any]], sqlite: bool) -> list[tuple[Any, ...]]:
    """`rows` as tuples in `spec.columns` order, in the driver's types; money is checked (finite Decimal)."""
    if sqlite and spec.money_at is not None:
        assert spec.columns == COST_COLUMNS
        return _sqlite_cost_rows(rows)
    get = itemgetter(*spec.columns)
    out = [get(r) for r in rows]
    if spec.money_at is not None:
        m = spec.money_at
        for t in out:
            exact_money(t[m])
        return out  # psycopg adapts date and Decimal itself (NUMERIC, exact)
    for t in out:
        for m in spec.money:
            exact_money(t[m])
    if sqlite:
        dates = {day: sqlite_date(day) for day in {t[1] for t in out}}
        if spec.money:
            converted = []
            for t in out:
                row = list(t)
                row[1] = dates[row[1]]
                for m in spec.money:
                    row[m] = format(row[m], "f")
                converted.append(tuple(row))
            return converted
        out = [(t[0], dates[t[1]], *t[2:]) for t in out]
    return out


def _comparable(spec: _DayTable, values: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row's values (everything after its grain) in a form equal on both sides when unchanged."""
    if spec.money:
        first = 2 + len(spec.grain)
        return tuple(money_text(v) if i + first in spec.money else v for i, v in enumerate(values))
    if spec.money_at is None:
        return values
    amount, currency = values
    return money_text(amount), currency


def _revision_text(spec: _DayTable, values: tuple[Any, ...]) -> str:
    if spec.money_at is not None:
        return f"{money_text(values[0])} {values[1]}"
    if spec.kind == "usage":
        return usage_value(dict(zip(spec.values, values, strict=True)))
    return CANONICAL_JSON.encode(dict(zip(spec.values, _comparable(spec, values), strict=True)))


def _replace_days(conn: Connection, spec: _DayTable, integration_id: int, days: Sequence[date],
                  new_rows: list[dict[str, Any]], changed_at: datetime, run_id: int | None,
                  scope_value: str | None = None) -> int:
    if not days:
        return 0
    table, sqlite = spec.table, conn.dialect.name == "sqlite"
    prep = conn.dialect.identifier_preparer
    name, quote, mark = prep.format_table(table), prep.quote, driver_marker(conn)
    params = _driver_rows(spec, new_rows, sqlite)
    day_params = [sqlite_date(d) if sqlite else d for d in days]
    # A stored row read back is (id, day, *grain, *values) and a new one (integration_id, day, *grain,
    # *values): both have their key (day, *grain) at [1:g] and their values at [g:].
    g = 2 + len(spec.grain)
    # Days whose rows are exactly what was stored (their digest) need neither a read nor a write: most of
    # a daily re-read.
    digests = _digests(params, day_params)
    unchanged = _unchanged_days(conn, spec, integration_id, scope_value, digests)
    if unchanged:
        day_params = [d for d in day_params if d not in unchanged]
        if not day_params:
            return len(new_rows)
        days = [d for d in days if (sqlite_date(d) if sqlite else d) not in unchanged]
        params = [t for t in params if t[1] not in unchanged]
    _save_digests(conn, spec, integration_id, scope_value, {d: digests[d] for d in day_params})
    scoped = f" AND {quote(spec.scope)} = {mark}" if spec.scope else ""
    stored = conn.exec_driver_sql(
        f"SELECT {', '.join(quote(c) for c in ('id', *spec.columns[1:]))} FROM {name} "
        f"WHERE {quote('integration_id')} = {mark} AND {quote('day')} IN ({', '.join([mark] * len(day_params))})"
        f"{scoped}", (integration_id, *day_params, *((scope_value,) if spec.scope else ()))).fetchall()
    if stored:
        old = {r[1:g]: r for r in stored}
        new = {t[1:g]: t for t in params}
        days_with_data = {key[0] for key in old}
        kept: set[tuple[Any, ...]] = set()
        gone: list[Any] = []

        # Revisions go to the driver as tuples too: a restated day of a large organization is thousands of them.
        at = revisions.c.changed_at.type.bind_processor(conn.dialect)
        stamp = at(changed_at) if at is not None else changed_at
        changes: list[tuple[Any, ...]] = []

        def change(key: tuple[Any, ...], before: tuple[Any, ...] | None, after: tuple[Any, ...] | None) -> None:
            changes.append((
                integration_id, spec.kind, key[0],
                CANONICAL_JSON.encode(dict(zip(spec.grain, key[1:], strict=True))),
                None if before is None else _revision_text(spec, before),
                None if after is None else _revision_text(spec, after),
                stamp, run_id))

        for key, row in old.items():
            t = new.get(key)
            if t is not None and _comparable(spec, tuple(row[g:])) == _comparable(spec, t[g:]):
                kept.add(key)  # unchanged: stays as stored
                continue
            gone.append(row[0])
            change(key, tuple(row[g:]), None if t is None else t[g:])
        for key, t in new.items():
            if key not in old and key[0] in days_with_data:
                change(key, None, t[g:])
        if changes:
            columns = ("integration_id", "kind", "day", "grain", "previous", "current", "changed_at", "run_id")
            conn.exec_driver_sql(
                f"INSERT INTO {prep.format_table(revisions)} ({', '.join(quote(c) for c in columns)}) "
                f"VALUES ({', '.join([mark] * len(columns))})", changes)
        if not kept:
            conn.exec_driver_sql(
                f"DELETE FROM {name} WHERE {quote('integration_id')} = {mark} AND {quote('day')} IN "
                f"({', '.join([mark] * len(day_params))}){scoped}",
                (integration_id, *day_params, *((scope_value,) if spec.scope else ())))
        else:
            for i in range(0, len(gone), _DELETE_CHUNK):
                ids = gone[i:i + _DELETE_CHUNK]
                conn.exec_driver_sql(f"DELETE FROM {name} WHERE {quote('id')} IN ({', '.join([mark] * len(ids))})",
                                     tuple(ids))
            params = [t for t in params if t[1:g] not in kept]
    if params:
        conn.exec_driver_sql(
            f"INSERT INTO {name} ({', '.join(quote(c) for c in spec.columns)}) "
            f"VALUES ({', '.join([mark] * len(spec.columns))})", params)
    # The totals of the days that changed (unchanged ones returned above), summed from the rows they now hold:
    # `new_rows`, so nothing is read back.
    if spec.table is cost_rows:
        totals.refresh(conn, integration_id, days, cost=new_rows)
    elif spec.table is usage_rows:
        totals.refresh(conn, integration_id, days, usage=new_rows)
    elif (spec.table is analytics_cost_rows or spec.table is analytics_usage_rows) and scope_value == analytics_totals.MAIN:
        # Likewise, for the overview's analytics part: only the part of the totals this table sums.
        analytics_totals.refresh(conn, integration_id, days, "cost" if spec.table is analytics_cost_rows else "usage",
                                 rows=new_rows)
    return len(new_rows)


_DIGEST_ENCODER = msgspec.msgpack.Encoder()  # several times cheaper than repr() of the rows (Decimal's above all)


def _digests(params: list[tuple[Any, ...]], day_params: list[Any]) -> dict[Any, str]:
    """Per day, a digest of its rows as the driver gets them (grain and values, in grain order: a day's grains
    are unique, so sorting whole rows orders them by grain and never compares values)."""
    by_day: dict[Any, list[tuple[Any, ...]]] = {d: [] for d in day_params}
    for t in params:
        by_day[t[1]].append(t[2:])
    return {d: hashlib.blake2b(_DIGEST_ENCODER.encode(sorted(rows)), digest_size=16).hexdigest()
            for d, rows in by_day.items()}


def _unchanged_days(conn: Connection, spec: _DayTable, integration_id: int, scope_value: str | None,
                    digests: dict[Any, str]) -> set[Any]:
    # Driver SQL, like the row statements: a Core statement's cache key is rebuilt on every call, and this runs
    # for every page stored. Days go in and come back in the driver's form (ISO text on SQLite), as `digests`.
    prep, mark = conn.dialect.identifier_preparer, driver_marker(conn)
    stored = conn.exec_driver_sql(
        f"SELECT day, digest FROM {prep.format_table(day_digests)} WHERE integration_id = {mark} AND kind = {mark} "
        f"AND scope = {mark} AND day IN ({', '.join([mark] * len(digests))})",
        (integration_id, spec.kind, scope_value or "", *digests))
    found: dict[Any, str] = dict(stored.fetchall())
    return {d for d, digest in digests.items() if found.get(d) == digest}


def _save_digests(conn: Connection, spec: _DayTable, integration_id: int, scope_value: str | None,
                  digests: dict[Any, str]) -> None:
    if not digests:
        return
    prep, mark = conn.dialect.identifier_preparer, driver_marker(conn)
    conn.exec_driver_sql(
        f"INSERT INTO {prep.format_table(day_digests)} (integration_id, kind, scope, day, digest) "
        f"VALUES ({', '.join([mark] * 5)}) ON CONFLICT (integration_id, kind, scope, day) "
        "DO UPDATE SET digest = excluded.digest",
        [(integration_id, spec.kind, scope_value or "", d, digest) for d, digest in digests.items()])


def replace_cost_days(conn: Connection, integration_id: int, days: Sequence[date], rows: list[dict[str, Any]],
                      changed_at: datetime, run_id: int | None = None) -> int:
    """Make `days` hold exactly `rows` (a row gone upstream goes here too); record changed amounts."""
    return _replace_days(conn, _COST, integration_id, days, rows, changed_at, run_id)


def replace_usage_days(conn: Connection, integration_id: int, days: Sequence[date], rows: list[dict[str, Any]],
                       changed_at: datetime, run_id: int | None = None) -> int:
    return _replace_days(conn, _USAGE, integration_id, days, rows, changed_at, run_id)


# --- sync runs ----------------------------------------------------------------------------------

def start_run(conn: Connection, integration_id: int, kind: str, window_start: date, window_end: date,
              started_at: datetime) -> int:
    return int(conn.execute(
        insert(sync_runs).values(integration_id=integration_id, kind=kind, window_start=window_start,
                                 window_end=window_end, started_at=started_at, requests=0, pages=0, rows=0,
                                 rate_limited=0, retries=0, waited_seconds=0.0, outcome="running")
        .returning(sync_runs.c.id)
    ).scalar_one())


def update_run(conn: Connection, run_id: int, **values: Any) -> None:
    conn.execute(update(sync_runs).where(sync_runs.c.id == run_id).values(**values))


def update_run_counters(conn: Connection, run_id: int, counters: dict[str, Any]) -> None:
    """`update_run` of exactly the counters (requests, pages, rows, rate_limited, retries, waited_seconds):
    what every stored page writes."""
    if counters.keys() != set(_RUN_COUNTERS):
        raise ValueError(f"run counters are {_RUN_COUNTERS}, got {sorted(counters)}")
    mark = driver_marker(conn)  # driver SQL: every stored page runs this
    conn.exec_driver_sql(_UPDATE_RUN_COUNTERS.format(mark=mark), (*(counters[c] for c in _RUN_COUNTERS), run_id))


def interrupt_runs(conn: Connection, integration_id: int, now: datetime, error: str) -> int:
    """Mark the integration's `running` run records `interrupted` with `error` (its claim was just taken:
    whatever process ran them is dead)."""
    result = conn.execute(update(sync_runs)
                          .where(sync_runs.c.integration_id == integration_id,
                                 sync_runs.c.outcome == literal_column("'running'"))
                          .values(outcome="interrupted", error=error, finished_at=now))
    return int(result.rowcount or 0)


def reap_abandoned_runs(conn: Connection, now: datetime, error: str) -> int:
    """Mark `running` run records of integrations nobody holds a lease on as `interrupted` with `error`.

    A live sync holds its integration's lease from before its run record starts until after it is
    finished, so a `running` record without a live lease belongs to a process that was killed.
    """
    held = _leases_held(now)
    result = conn.execute(update(sync_runs)
                          # A literal, not a parameter: PostgreSQL's generic plan for a prepared statement
                          # cannot use the partial index ix_sync_runs_running for `outcome = $1`.
                          .where(sync_runs.c.outcome == literal_column("'running'"),
                                 sync_runs.c.integration_id.not_in(held))
                          .values(outcome="interrupted", error=error, finished_at=now))
    return int(result.rowcount or 0)


def recent_runs(conn: Connection, integration_id: int | None = None, limit: int = 20) -> list[dict[str, Any]]:
    q = select(sync_runs).order_by(sync_runs.c.id.desc()).limit(limit)
    if integration_id is not None:
        q = q.where(sync_runs.c.integration_id == integration_id)
    return [dict(r._mapping) for r in conn.execute(q)]


def revisions_for(conn: Connection, integration_id: int) -> list[dict[str, Any]]:
    q = select(revisions).where(revisions.c.integration_id == integration_id).order_by(revisions.c.id)
    return [dict(r._mapping) for r in conn.execute(q)]


# --- report -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReportRow:
    date: date
    model: str | None
    cost_usd: Decimal
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int


def report(conn: Connection, since: date, until: date, integration_id: int | None = None) -> list[ReportRow]:
    """One row per (UTC date, model), `until` inclusive, from `daily_model_totals` (the legacy rows' sums, kept
    in step by every write). Money is summed with Decimal (exact on SQLite too)."""
    rows = totals.read_grouped(conn, since, until, integration_id)
    rows.sort(key=lambda r: (r[0], r[1] == "", r[1]))
    return [ReportRow(day, none_if_empty(model), cost, a, b, cr, cw) for day, model, cost, a, b, cr, cw in rows]


def count_rows(conn: Connection, integration_id: int) -> tuple[int, int]:
    c = conn.execute(select(func.count()).select_from(cost_rows).where(cost_rows.c.integration_id == integration_id))
    u = conn.execute(select(func.count()).select_from(usage_rows).where(usage_rows.c.integration_id == integration_id))
    return int(c.scalar_one()), int(u.scalar_one())



# --- watch: what budgets, anomalies and notifications read of the integrations ------------------

@dataclass(frozen=True)
class CoverageRow:
    """An integration's bill window: backfill start and end, cost checkpoint, last successful sync."""

    id: int
    backfill_start: date
    backfill_end: date
    cost_checkpoint: date
    last_success_at: datetime | None


def coverage_rows(conn: Connection, integration_ids: Sequence[int] | None = None) -> list[CoverageRow]:
    c = integrations.c
    q = select(c.id, c.backfill_start, c.backfill_end, c.cost_checkpoint, c.last_success_at).order_by(c.id)
    if integration_ids is not None:
        q = q.where(c.id.in_(list(integration_ids)))
    return [CoverageRow(*row) for row in conn.execute(q)]


def integration_labels(conn: Connection) -> dict[int, str]:
    return {int(iid): str(label) for iid, label in conn.execute(select(integrations.c.id, integrations.c.label))}


def integration_health(conn: Connection) -> list[tuple[int, str, str, str | None]]:
    """(id, label, status, last_error) of every integration."""
    c = integrations.c
    return [(r.id, r.label, r.status, r.last_error)
            for r in conn.execute(select(c.id, c.label, c.status, c.last_error).order_by(c.id))]


def data_version(conn: Connection) -> tuple[int, datetime | None, int | None, int | None]:
    """(integrations, their latest `updated_at`, the latest sync run and revision ids): changes whenever an
    integration is added or removed, a sync starts or ends, or a re-read restates a day. Cheap: a count of a
    small table and three indexed maxima."""
    count, updated = conn.execute(select(func.count(), func.max(integrations.c.updated_at))).one()
    run = conn.execute(select(func.max(sync_runs.c.id))).scalar()
    revision = conn.execute(select(func.max(revisions.c.id))).scalar()
    return int(count), updated, run, revision


def _leases_held(now: datetime) -> Select[tuple[int]]:
    """The ids of the integrations whose lease is held at `now` (a sync of each is running)."""
    c = integrations.c
    return select(c.id).where(c.lease_owner.is_not(None), c.lease_expires_at >= now)


def syncs_running(conn: Connection, now: datetime) -> bool:
    """Whether any integration's lease is held now (a sync of it is writing pages)."""
    return conn.execute(_leases_held(now).limit(1)).first() is not None


def integration_accounts(conn: Connection) -> list[tuple[int, str, str]]:
    """(id, organization id, organization name) of every integration: the billing account of its rows."""
    c = integrations.c
    return [(int(r.id), str(r.organization_id), str(r.organization_name))
            for r in conn.execute(select(c.id, c.organization_id, c.organization_name).order_by(c.id))]
