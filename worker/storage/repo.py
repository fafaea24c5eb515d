"""Data functions. Each takes a Connection inside a transaction the caller owns (`with engine.begin()`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update

from worker.storage.rows import (
    COST_GRAIN,
    USAGE_GRAIN,
    cost_value,
    grain_json,
    none_if_empty,
    usage_value,
)
from worker.storage.tables import cost_rows, integrations, revisions, sync_runs, usage_rows

STATUSES = ("pending", "backfilling", "ok", "error")


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
    lease_expires_at: datetime | None

    def __repr__(self) -> str:  # the ciphertext is not secret, but it is noise
        return f"Integration(id={self.id}, label={self.label!r}, status={self.status!r}, key_hint={self.key_hint!r})"

    @property
    def display(self) -> str:
        return f"integration {self.id} ({self.label})"


_FIELDS = [c for c in Integration.__dataclass_fields__]


def _integration(row: Any) -> Integration:
    m = row._mapping
    return Integration(**{f: m[f] for f in _FIELDS})


# --- integrations -------------------------------------------------------------------------------

def insert_integration(conn: Connection, **values: Any) -> int:
    return int(conn.execute(insert(integrations).values(**values).returning(integrations.c.id)).scalar_one())


def get_integration(conn: Connection, integration_id: int) -> Integration | None:
    row = conn.execute(select(integrations).where(integrations.c.id == integration_id)).first()
    return _integration(row) if row else None


def list_integrations(conn: Connection) -> list[Integration]:
    return [_integration(r) for r in conn.execute(select(integrations).order_by(integrations.c.id))]


def find_by_organization(conn: Connection, organization_id: str) -> list[Integration]:
    rows = conn.execute(select(integrations).where(integrations.c.organization_id == organization_id))
    return [_integration(r) for r in rows]


def update_integration(conn: Connection, integration_id: int, **values: Any) -> None:
    conn.execute(update(integrations).where(integrations.c.id == integration_id).values(**values))


def delete_integration(conn: Connection, integration_id: int) -> bool:
    # Children first: SQLite enforces ON DELETE CASCADE only with foreign_keys on, so be explicit.
    for table in (cost_rows, usage_rows, revisions, sync_runs):
        conn.execute(delete(table).where(table.c.integration_id == integration_id))
    return conn.execute(delete(integrations).where(integrations.c.id == integration_id)).rowcount > 0


# --- leases: one process at a time syncs an integration -----------------------------------------

def take_lease(conn: Connection, integration_id: int, owner: str, now: datetime, until: datetime) -> bool:
    """Take (or renew) the lease when it is free, expired or already ours; atomic on both backends."""
    result = conn.execute(
        update(integrations)
        .where(
            integrations.c.id == integration_id,
            or_(integrations.c.lease_owner.is_(None), integrations.c.lease_owner == owner,
                integrations.c.lease_expires_at.is_(None), integrations.c.lease_expires_at < now),
        )
        .values(lease_owner=owner, lease_expires_at=until)
    )
    return result.rowcount == 1


def release_lease(conn: Connection, integration_id: int, owner: str) -> None:
    conn.execute(
        update(integrations)
        .where(integrations.c.id == integration_id, integrations.c.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None)
    )


def holds_lease(conn: Connection, integration_id: int, owner: str) -> bool:
    row = conn.execute(select(integrations.c.lease_owner).where(integrations.c.id == integration_id)).first()
    return row is not None and row[0] == owner


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

def _replace_days(conn: Connection, table: Any, grain: tuple[str, ...], value_of: Any, kind: str,
                  integration_id: int, days: Sequence[date], new_rows: list[dict[str, Any]],
                  changed_at: datetime, run_id: int | None) -> int:
    if not days:
        return 0
    day_filter = and_(table.c.integration_id == integration_id, table.c.day.in_(list(days)))
    existing = [dict(r._mapping) for r in conn.execute(select(table).where(day_filter))]
    if existing:
        days_with_data = {r["day"] for r in existing}
        old = {(r["day"], grain_json(r, grain)): value_of(r) for r in existing}
        new = {(r["day"], grain_json(r, grain)): value_of(r) for r in new_rows}
        changes = [
            {"integration_id": integration_id, "kind": kind, "day": key[0], "grain": key[1],
             "previous": old.get(key), "current": new.get(key), "changed_at": changed_at, "run_id": run_id}
            for key in old.keys() | new.keys()
            if old.get(key) != new.get(key) and key[0] in days_with_data
        ]
        if changes:
            conn.execute(insert(revisions), changes)
        conn.execute(delete(table).where(day_filter))
    if new_rows:
        conn.execute(insert(table), new_rows)
    return len(new_rows)


def replace_cost_days(conn: Connection, integration_id: int, days: Sequence[date], rows: list[dict[str, Any]],
                      changed_at: datetime, run_id: int | None = None) -> int:
    """Make `days` hold exactly `rows` (a row gone upstream goes here too); record changed amounts."""
    return _replace_days(conn, cost_rows, COST_GRAIN, cost_value, "cost", integration_id, days, rows,
                         changed_at, run_id)


def replace_usage_days(conn: Connection, integration_id: int, days: Sequence[date], rows: list[dict[str, Any]],
                       changed_at: datetime, run_id: int | None = None) -> int:
    return _replace_days(conn, usage_rows, USAGE_GRAIN, usage_value, "usage", integration_id, days, rows,
                         changed_at, run_id)


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
    """One row per (UTC date, model), `until` inclusive. Money is summed with Decimal (exact on SQLite too)."""
    cost_q = select(cost_rows.c.day, cost_rows.c.model, cost_rows.c.amount_usd).where(
        cost_rows.c.day >= since, cost_rows.c.day <= until)
    u = usage_rows.c
    usage_q = select(
        u.day, u.model, func.sum(u.uncached_input_tokens), func.sum(u.output_tokens),
        func.sum(u.cache_read_input_tokens),
        func.sum(u.cache_creation_5m_input_tokens) + func.sum(u.cache_creation_1h_input_tokens),
    ).where(u.day >= since, u.day <= until).group_by(u.day, u.model)
    if integration_id is not None:
        cost_q = cost_q.where(cost_rows.c.integration_id == integration_id)
        usage_q = usage_q.where(u.integration_id == integration_id)
    cost: dict[tuple[date, str], Decimal] = defaultdict(Decimal)
    for day, model, amount in conn.execute(cost_q):
        cost[(day, model)] += amount
    tokens: dict[tuple[date, str], tuple[int, int, int, int]] = {
        (day, model): (int(a), int(b), int(c), int(d)) for day, model, a, b, c, d in conn.execute(usage_q)
    }
    keys = sorted(cost.keys() | tokens.keys(), key=lambda k: (k[0], k[1] == "", k[1]))
    return [
        ReportRow(day, none_if_empty(model), cost.get((day, model), Decimal(0)), *tokens.get((day, model), (0, 0, 0, 0)))
        for day, model in keys
    ]


def count_rows(conn: Connection, integration_id: int) -> tuple[int, int]:
    c = conn.execute(select(func.count()).select_from(cost_rows).where(cost_rows.c.integration_id == integration_id))
    u = conn.execute(select(func.count()).select_from(usage_rows).where(usage_rows.c.integration_id == integration_id))
    return int(c.scalar_one()), int(u.scalar_one())

