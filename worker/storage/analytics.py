"""Data functions of the Analytics API's tables: day replacement with revisions, names, state, checkpoints.

Every function takes a Connection inside a transaction the caller owns. Rows are replaced per (day,
grouping) exactly like the legacy rows (`worker.storage.repo`: unchanged rows stay, a row gone upstream
goes, every change on a day that had data is kept in `revisions` with kind `a_cost` / `a_usage`).

For other features (reports, reconcile, budgets, exports) the tables are read with the queries here:
`cost_cells` and `usage_cells` sum a period per (integration, day, model, dimension) with money exact on
both backends, and `names` gives the API key, workspace and user names behind the ids; budgets and
anomalies per key and user read `daily_spend` (filtered, per key and actor), `complete_until` and
`actor_ids` (a user's email to their ids).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import Connection, Date, bindparam, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from worker.storage import repo
from worker.storage.repo import _DayTable, _replace_days
from worker.storage.tables import (
    analytics_checkpoints,
    analytics_cost_rows,
    analytics_names,
    analytics_state,
    analytics_usage_rows,
    cost_rows,
    usage_rows,
)
from worker.storage.types import EXACT

MAIN, PRODUCT = "main", "product"  # the grouping sets (see tables.py)


class ActorLike(Protocol):
    """Who a row is attributed to (worker.api.analytics.Actor)."""

    @property
    def type(self) -> str: ...
    @property
    def id(self) -> str: ...
    @property
    def email(self) -> str | None: ...
    @property
    def name(self) -> str | None: ...
    @property
    def deleted(self) -> bool: ...


class _Dimensions(Protocol):
    @property
    def day(self) -> date: ...
    @property
    def model(self) -> str | None: ...
    @property
    def workspace_id(self) -> str | None: ...
    @property
    def api_key_id(self) -> str | None: ...
    @property
    def actor_type(self) -> str | None: ...
    @property
    def actor(self) -> ActorLike | None: ...
    @property
    def service_tier(self) -> str | None: ...
    @property
    def context_window(self) -> str | None: ...
    @property
    def inference_geo(self) -> str | None: ...
    @property
    def speed(self) -> str | None: ...
    @property
    def product(self) -> str | None: ...
    @property
    def other(self) -> str: ...


class AnalyticsCostRow(_Dimensions, Protocol):
    """A parsed Analytics API cost row as storage reads it (worker.api.analytics.AnalyticsCostRow)."""

    @property
    def cost_type(self) -> str | None: ...
    @property
    def token_type(self) -> str | None: ...
    @property
    def amount_usd(self) -> Decimal: ...
    @property
    def list_amount_usd(self) -> Decimal: ...
    @property
    def currency(self) -> str: ...
    @property
    def requests(self) -> int | None: ...


class AnalyticsUsageRow(_Dimensions, Protocol):
    """A parsed Analytics API usage row as storage reads it (worker.api.analytics.AnalyticsUsageRow)."""

    @property
    def uncached_input_tokens(self) -> int: ...
    @property
    def cache_read_input_tokens(self) -> int: ...
    @property
    def cache_creation_5m_input_tokens(self) -> int: ...
    @property
    def cache_creation_1h_input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def web_search_requests(self) -> int: ...
    @property
    def requests(self) -> int | None: ...
DIMENSIONS = ("grouping", "model", "workspace_id", "api_key_id", "actor_type", "actor_id", "service_tier",
              "context_window", "inference_geo", "speed", "product", "other")
COST_GRAIN = (*DIMENSIONS, "cost_type", "token_type")
COST_COLUMNS = ("integration_id", "day", *COST_GRAIN, "amount_usd", "list_amount_usd", "currency", "requests")
USAGE_COUNTS = ("uncached_input_tokens", "cache_read_input_tokens", "cache_creation_5m_input_tokens",
                "cache_creation_1h_input_tokens", "output_tokens", "web_search_requests")
USAGE_COLUMNS = ("integration_id", "day", *DIMENSIONS, *USAGE_COUNTS, "requests")

_COST = _DayTable(analytics_cost_rows, "a_cost", COST_GRAIN, COST_COLUMNS, None,
                  money=(COST_COLUMNS.index("amount_usd"), COST_COLUMNS.index("list_amount_usd")), scope="grouping")
_USAGE = _DayTable(analytics_usage_rows, "a_usage", DIMENSIONS, USAGE_COLUMNS, None, scope="grouping")


def _dims(grouping: str, r: AnalyticsCostRow | AnalyticsUsageRow) -> tuple[Any, ...]:
    actor = r.actor
    return (r.day, grouping, r.model or "", r.workspace_id or "", r.api_key_id or "", r.actor_type or "",
            actor.id if actor else "", r.service_tier or "", r.context_window or "", r.inference_geo or "",
            r.speed or "", r.product or "", r.other)


def _add_requests(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def cost_table_rows(integration_id: int, grouping: str, rows: Iterable[AnalyticsCostRow]) -> list[dict[str, Any]]:
    """Table rows of parsed cost rows; rows of the same grain are summed (both are charges)."""
    merged: dict[tuple[Any, ...], list[Any]] = {}
    for r in rows:
        key = (*_dims(grouping, r), r.cost_type or "", r.token_type or "", r.currency)
        into = merged.get(key)
        if into is None:
            merged[key] = [r.amount_usd, r.list_amount_usd, r.requests]
        else:
            into[0] = EXACT.add(into[0], r.amount_usd)
            into[1] = EXACT.add(into[1], r.list_amount_usd)
            into[2] = _add_requests(into[2], r.requests)
    out = []
    for key, (amount, listed, requests) in merged.items():
        rec = dict(zip(("day", *COST_GRAIN), key[:-1], strict=True))
        out.append({"integration_id": integration_id, **rec, "amount_usd": amount, "list_amount_usd": listed,
                    "currency": key[-1], "requests": requests})
    return out


def usage_table_rows(integration_id: int, grouping: str, rows: Iterable[AnalyticsUsageRow]) -> list[dict[str, Any]]:
    merged: dict[tuple[Any, ...], list[Any]] = {}
    for r in rows:
        key = _dims(grouping, r)
        counts = [r.uncached_input_tokens, r.cache_read_input_tokens, r.cache_creation_5m_input_tokens,
                  r.cache_creation_1h_input_tokens, r.output_tokens, r.web_search_requests, r.requests]
        into = merged.get(key)
        if into is None:
            merged[key] = counts
        else:
            for i in range(6):
                into[i] += counts[i]
            into[6] = _add_requests(into[6], counts[6])
    return [{"integration_id": integration_id, **dict(zip(("day", *DIMENSIONS), key, strict=True)),
             **dict(zip(USAGE_COUNTS, c[:6], strict=True)), "requests": c[6]}
            for key, c in merged.items()]


def replace_cost_days(conn: Connection, integration_id: int, grouping: str, days: Sequence[date],
                      rows: list[dict[str, Any]], changed_at: datetime, run_id: int | None = None) -> int:
    """Make `days` of this grouping hold exactly `rows`; record what changed on days that had data."""
    return _replace_days(conn, _COST, integration_id, days, rows, changed_at, run_id, scope_value=grouping)


def replace_usage_days(conn: Connection, integration_id: int, grouping: str, days: Sequence[date],
                       rows: list[dict[str, Any]], changed_at: datetime, run_id: int | None = None) -> int:
    return _replace_days(conn, _USAGE, integration_id, days, rows, changed_at, run_id, scope_value=grouping)


# --- upserts ----------------------------------------------------------------------------------------------

def _upsert(conn: Connection, table: Any, values: list[dict[str, Any]], keys: Sequence[str]) -> None:
    if not values:
        return
    insert = sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert
    statement = insert(table)
    updates = {c: statement.excluded[c] for c in values[0] if c not in keys}
    conn.execute(statement.on_conflict_do_update(index_elements=list(keys), set_=updates), values)


@dataclass(frozen=True)
class Name:
    kind: str  # api_key | workspace | user
    id: str
    name: str | None
    email: str | None = None
    workspace_id: str | None = None
    deleted: bool = False


def save_names(conn: Connection, integration_id: int, names: Iterable[Name], now: datetime) -> None:
    """Insert or update names (the latest wins: a renamed key shows its new name in every report)."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for n in names:
        seen[(n.kind, n.id)] = {"integration_id": integration_id, "kind": n.kind, "id": n.id[:500],
                                "name": None if n.name is None else n.name[:500],
                                "email": None if n.email is None else n.email[:500],
                                "workspace_id": n.workspace_id, "deleted": n.deleted, "updated_at": now}
    _upsert(conn, analytics_names, list(seen.values()), ("integration_id", "kind", "id"))


def user_names(rows: Iterable[AnalyticsCostRow | AnalyticsUsageRow]) -> list[Name]:
    """The users in rows' actor objects (with their email), as names."""
    out: dict[str, Name] = {}
    for r in rows:
        a = r.actor
        if a is not None and a.type == "user_actor":
            out[a.id] = Name("user", a.id, a.name, a.email, None, a.deleted)
    return list(out.values())


def names(conn: Connection, integration_id: int | None = None, kind: str | None = None,
          ) -> dict[tuple[int, str, str], Name]:
    """Every stored name (of one integration, of one kind), by (integration, kind, id)."""
    q = select(analytics_names)
    if integration_id is not None:
        q = q.where(analytics_names.c.integration_id == integration_id)
    if kind is not None:
        q = q.where(analytics_names.c.kind == kind)
    return {(r.integration_id, r.kind, r.id): Name(r.kind, r.id, r.name, r.email, r.workspace_id, r.deleted)
            for r in conn.execute(q)}


# --- state and checkpoints --------------------------------------------------------------------------------

@dataclass(frozen=True)
class State:
    status: str  # ok | refused
    detail: str | None
    refreshed_at: datetime | None
    names_refreshed_at: datetime | None


def get_state(conn: Connection, integration_id: int) -> State | None:
    r = conn.execute(select(analytics_state).where(analytics_state.c.integration_id == integration_id)).first()
    return State(r.status, r.detail, r.refreshed_at, r.names_refreshed_at) if r else None


def states(conn: Connection) -> dict[int, State]:
    return {r.integration_id: State(r.status, r.detail, r.refreshed_at, r.names_refreshed_at)
            for r in conn.execute(select(analytics_state))}


def set_state(conn: Connection, integration_id: int, now: datetime, **values: Any) -> None:
    """Update the integration's analytics state (created as `ok` when absent)."""
    current = get_state(conn, integration_id)
    if current is None:
        conn.execute(analytics_state.insert().values(integration_id=integration_id, status="ok", updated_at=now))
    if values:
        conn.execute(update(analytics_state).where(analytics_state.c.integration_id == integration_id)
                     .values(updated_at=now, **values))


@dataclass(frozen=True)
class Checkpoint:
    first_day: date
    checkpoint: date  # the next day the backfill fetches
    synced_until: date  # days before it (from first_day) are stored


def checkpoints(conn: Connection, integration_id: int) -> dict[str, Checkpoint]:
    c = analytics_checkpoints.c
    return {r.stream: Checkpoint(r.first_day, r.checkpoint, r.synced_until)
            for r in conn.execute(select(analytics_checkpoints).where(c.integration_id == integration_id))}


def all_checkpoints(conn: Connection) -> dict[tuple[int, str], Checkpoint]:
    return {(r.integration_id, r.stream): Checkpoint(r.first_day, r.checkpoint, r.synced_until)
            for r in conn.execute(select(analytics_checkpoints))}


def save_checkpoint(conn: Connection, integration_id: int, stream: str, cp: Checkpoint) -> None:
    _upsert(conn, analytics_checkpoints, [{"integration_id": integration_id, "stream": stream,
                                           "first_day": cp.first_day, "checkpoint": cp.checkpoint,
                                           "synced_until": cp.synced_until}], ("integration_id", "stream"))


def advance(conn: Connection, integration_id: int, stream: str, next_day: date, backfill: bool) -> None:
    """After storing days up to `next_day` (exclusive): move the backfill checkpoint (when backfilling) and the
    end of what is stored, never backwards. One UPDATE (the stream's row exists: the run's plan made it)."""
    conn.execute(_ADVANCE_BACKFILL if backfill else _ADVANCE, {"day": next_day, "id": integration_id, "stream": stream})


# As text: every stored analytics page runs one (a Core statement costs its cache key on every call).
_SYNCED_UNTIL = "synced_until = CASE WHEN synced_until < :day THEN :day ELSE synced_until END"
_WHERE_STREAM = " WHERE integration_id = :id AND stream = :stream"
_ADVANCE = text(f"UPDATE analytics_checkpoints SET {_SYNCED_UNTIL}{_WHERE_STREAM}").bindparams(
    bindparam("day", type_=Date))
_ADVANCE_BACKFILL = text(
    f"UPDATE analytics_checkpoints SET {_SYNCED_UNTIL}, "
    f"checkpoint = CASE WHEN checkpoint < :day THEN :day ELSE checkpoint END{_WHERE_STREAM}").bindparams(
    bindparam("day", type_=Date))


# --- queries ----------------------------------------------------------------------------------------------

_KEY_COLUMNS = {"model": ("model",), "workspace": ("workspace_id",), "api_key": ("api_key_id",),
                "actor": ("actor_type", "actor_id"), "service_tier": ("service_tier",), "product": ("product",)}
BY = tuple(_KEY_COLUMNS)


def grouping_for(by: str) -> str:
    """Which grouping answers a report `--by` (product comes from its own grouping)."""
    return PRODUCT if by == "product" else MAIN


@dataclass
class Cell:
    """One (integration, day, model, key) of a period: exact money and token sums."""

    cost_usd: Decimal = Decimal(0)
    list_cost_usd: Decimal = Decimal(0)
    priority_cost_usd: Decimal = Decimal(0)
    uncached_input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    fees_usd: Decimal = Decimal(0)  # cost that is not tokens (web search, code execution, session usage)
    token_costs: dict[str, Decimal] | None = None  # per token_type, when the grouping has token_type


CellKey = tuple[int, date, str | None, str | None]  # integration, day, model, key
PRIORITY_TIERS = ("priority", "priority_on_demand")  # the tiers the legacy cost report leaves out


def _key_of(by: str, values: Sequence[Any]) -> str | None:
    if by == "actor":
        return values[1] or None  # the actor's id; its type goes with it in the names
    return values[0] or None


def cost_cells(conn: Connection, since: date, until: date, by: str = "model",
               integration_ids: Sequence[int] | None = None) -> dict[CellKey, Cell]:
    """Analytics cost of UTC days `since`..`until` (inclusive) per (integration, day, model, key of `by`).

    Money is summed with Decimal in Python (exact on SQLite's text amounts; PostgreSQL's NUMERIC comes
    back exact), per token type too when the grouping has `token_type`.
    """
    c = analytics_cost_rows.c
    keys = [c[k] for k in _KEY_COLUMNS[by]]
    q = (select(c.integration_id, c.day, c.model, *keys, c.service_tier, c.cost_type, c.token_type, c.amount_usd,
                c.list_amount_usd)
         .where(c.day >= since, c.day <= until, c.grouping == grouping_for(by)))
    if integration_ids is not None:
        q = q.where(c.integration_id.in_(list(integration_ids)))
    cells: dict[CellKey, Cell] = {}
    n = len(keys)
    add = EXACT.add
    for row in conn.execute(q):
        iid, day, model = row[0], row[1], row[2] or None
        key = _key_of(by, row[3:3 + n])
        tier, cost_type, token_type, amount, listed = row[3 + n:]
        cell = cells.get((iid, day, model, key))
        if cell is None:
            cell = cells[(iid, day, model, key)] = Cell()
        cell.cost_usd = add(cell.cost_usd, amount)
        cell.list_cost_usd = add(cell.list_cost_usd, listed)
        if tier in PRIORITY_TIERS:
            cell.priority_cost_usd = add(cell.priority_cost_usd, amount)
        if cost_type and cost_type != "tokens":
            cell.fees_usd = add(cell.fees_usd, amount)
        elif token_type:
            if cell.token_costs is None:
                cell.token_costs = {}
            cell.token_costs[token_type] = add(cell.token_costs.get(token_type, Decimal(0)), amount)
    return cells


def usage_cells(conn: Connection, since: date, until: date, by: str = "model",
                integration_ids: Sequence[int] | None = None, exclude_tiers: Sequence[str] = ()) -> dict[CellKey, Cell]:
    """Analytics token counts of UTC days `since`..`until` (inclusive), like `cost_cells`."""
    u = analytics_usage_rows.c
    keys = [u[k] for k in _KEY_COLUMNS[by]]
    q = (select(u.integration_id, u.day, u.model, *keys, u.service_tier, u.uncached_input_tokens, u.output_tokens,
                u.cache_read_input_tokens, u.cache_creation_5m_input_tokens, u.cache_creation_1h_input_tokens)
         .where(u.day >= since, u.day <= until, u.grouping == grouping_for(by)))
    if integration_ids is not None:
        q = q.where(u.integration_id.in_(list(integration_ids)))
    cells: dict[CellKey, Cell] = {}
    n = len(keys)
    for row in conn.execute(q):
        iid, day, model = row[0], row[1], row[2] or None
        key = _key_of(by, row[3:3 + n])
        tier, a, b, cr, w5, w1 = row[3 + n:]
        if tier in exclude_tiers:
            continue
        cell = cells.get((iid, day, model, key))
        if cell is None:
            cell = cells[(iid, day, model, key)] = Cell()
        cell.uncached_input_tokens += int(a)
        cell.output_tokens += int(b)
        cell.cache_read_tokens += int(cr)
        cell.cache_write_5m_tokens += int(w5)
        cell.cache_write_1h_tokens += int(w1)
    return cells


def actor_types(conn: Connection, integration_ids: Sequence[int] | None = None) -> dict[tuple[int, str], str]:
    """(integration, actor id) -> actor type, for naming actors."""
    c = analytics_usage_rows.c
    q = select(c.integration_id, c.actor_id, c.actor_type).where(c.actor_id != "").distinct()
    if integration_ids is not None:
        q = q.where(c.integration_id.in_(list(integration_ids)))
    return {(iid, aid): kind for iid, aid, kind in conn.execute(q)}


# --- the bill of record ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Coverage:
    """Days `[first, until)` of an integration the Analytics API answered (for one grouping)."""

    first: date
    until: date

    def covers(self, day: date) -> bool:
        return self.first <= day < self.until


def coverage(conn: Connection, by: str = "model") -> dict[int, Coverage]:
    """Per integration, the days whose bill of record is the Analytics API: its source is `analytics` or
    `both`, it was not refused, and its stream for this grouping stored those days. Every other day of every
    integration is read from the legacy reports."""
    stream = "a_cost_product" if by == "product" else "a_cost"
    found = states(conn)
    out = {}
    for integ in repo.list_integrations(conn):
        state = found.get(integ.id)
        if integ.source == "legacy" or (state is not None and state.status == "refused"):
            continue
        cp = checkpoints(conn, integ.id).get(stream)
        if cp is not None and cp.synced_until > cp.first_day:
            out[integ.id] = Coverage(cp.first_day, cp.synced_until)
    return out



def complete_until(conn: Connection, by: str = "model") -> dict[int, Coverage]:
    """`coverage` narrowed to the complete days: those that ended by the latest `data_refreshed_at` (later
    days are still partial in the Analytics API) and before the day of the integration's last sync."""
    refreshed = {iid: s.refreshed_at for iid, s in states(conn).items()}
    last = {r.id: r.last_success_at for r in repo.coverage_rows(conn)}
    out = {}
    for iid, cover in coverage(conn, by).items():
        end = cover.until
        for moment in (refreshed.get(iid), last.get(iid)):
            if moment is not None:
                end = min(end, moment.date())
        out[iid] = Coverage(cover.first, max(cover.first, end))
    return out


SpendKey = tuple[int, date, str, str]
"""(integration_id, day, api_key_id, actor_id); '' where the row has none."""


def daily_spend(conn: Connection, since: date, until: date, integration_ids: Sequence[int] | None = None, *,
                workspace_id: str | None = None, model: str | None = None, api_key_id: str | None = None,
                actor_ids: Sequence[str] | None = None) -> dict[SpendKey, Decimal]:
    """Exact Analytics API cost (`amount`) of UTC days `since`..`until` (inclusive) per (integration, day, API
    key, actor), of the rows matching every filter given: what budgets and anomalies per key and per user read.
    Summed in SQL on PostgreSQL (NUMERIC), with Decimal on SQLite (decimal text)."""
    c = analytics_cost_rows.c
    conditions = [c.day >= since, c.day <= until, c.grouping == MAIN]
    if integration_ids is not None:
        conditions.append(c.integration_id.in_(list(integration_ids)))
    for column, value in ((c.workspace_id, workspace_id), (c.model, model), (c.api_key_id, api_key_id)):
        if value is not None:
            conditions.append(column == value)
    if actor_ids is not None:
        conditions.append(c.actor_id.in_(list(actor_ids)))
    grain = (c.integration_id, c.day, c.api_key_id, c.actor_id)
    out: dict[SpendKey, Decimal] = {}
    if conn.dialect.name == "postgresql":
        for iid, day, key, actor, amount in conn.execute(
                select(*grain, func.sum(c.amount_usd)).where(*conditions).group_by(*grain)):
            out[(iid, day, key, actor)] = Decimal(amount)
        return out
    add = EXACT.add
    for iid, day, key, actor, amount in conn.execute(select(*grain, c.amount_usd).where(*conditions)):
        k = (iid, day, key, actor)
        out[k] = add(out.get(k, Decimal(0)), amount)
    return out


def actor_ids(conn: Connection, actor: str, integration_ids: Sequence[int] | None = None) -> list[str]:
    """The actor ids a budget's `actor` names: a user's email (any case) stands for every user id with it;
    anything else is an actor id itself."""
    if "@" not in actor:
        return [actor]
    n = analytics_names.c
    q = select(n.id).where(n.kind == "user", func.lower(n.email) == actor.lower())
    if integration_ids is not None:
        q = q.where(n.integration_id.in_(list(integration_ids)))
    return sorted(set(conn.execute(q).scalars()))


# --- rows for the readers of both bills (reports, compare, reconcile) --------------------------------------

def legacy_cost_lines(conn: Connection, since: date, until: date, column: str | None,
                      integration_ids: Sequence[int] | None = None) -> Iterator[tuple[Any, ...]]:
    """(integration, day, model, key, amount) of the legacy cost rows of `since`..`until`; `key` is the
    value of `column` (a cost_rows column) or None."""
    c = cost_rows.c
    key = [c[column]] if column else []
    q = select(c.integration_id, c.day, c.model, *key, c.amount_usd).where(c.day >= since, c.day <= until)
    if integration_ids is not None:
        q = q.where(c.integration_id.in_(list(integration_ids)))
    for row in conn.execute(q):
        yield (row[0], row[1], row[2], row[3] if column else None, row[-1])


def legacy_usage_lines(conn: Connection, since: date, until: date, column: str | None,
                       integration_ids: Sequence[int] | None = None) -> Iterator[tuple[Any, ...]]:
    """(integration, day, model, key, uncached, output, cache read, cache write) summed per key."""
    u = usage_rows.c
    key = [u[column]] if column else []
    q = (select(u.integration_id, u.day, u.model, *key, func.sum(u.uncached_input_tokens), func.sum(u.output_tokens),
                func.sum(u.cache_read_input_tokens),
                func.sum(u.cache_creation_5m_input_tokens) + func.sum(u.cache_creation_1h_input_tokens))
         .where(u.day >= since, u.day <= until).group_by(u.integration_id, u.day, u.model, *key))
    if integration_ids is not None:
        q = q.where(u.integration_id.in_(list(integration_ids)))
    for row in conn.execute(q):
        yield (row[0], row[1], row[2], row[3] if column else None, *(int(n or 0) for n in row[-4:]))


def cost_lines(conn: Connection, since: date, until: date, integration_ids: Sequence[int] | None = None,
               grouping: str = MAIN) -> Iterator[tuple[Any, ...]]:
    """(integration, day, model, api_key_id, actor_id, service_tier, cost_type, token_type, amount, list amount)
    of the analytics cost rows of one grouping ('' for absent dimensions)."""
    c = analytics_cost_rows.c
    q = (select(c.integration_id, c.day, c.model, c.api_key_id, c.actor_id, c.service_tier, c.cost_type, c.token_type,
                c.amount_usd, c.list_amount_usd)
         .where(c.day >= since, c.day <= until, c.grouping == grouping))
    if integration_ids is not None:
        q = q.where(c.integration_id.in_(list(integration_ids)))
    return iter(conn.execute(q))


def usage_lines(conn: Connection, since: date, until: date, integration_ids: Sequence[int] | None = None,
                grouping: str = MAIN) -> Iterator[tuple[Any, ...]]:
    """(integration, day, model, api_key_id, actor_id, uncached, output, cache read, cache write 5m, 1h)."""
    u = analytics_usage_rows.c
    q = (select(u.integration_id, u.day, u.model, u.api_key_id, u.actor_id, u.uncached_input_tokens,
                u.output_tokens, u.cache_read_input_tokens, u.cache_creation_5m_input_tokens,
                u.cache_creation_1h_input_tokens)
         .where(u.day >= since, u.day <= until, u.grouping == grouping))
    if integration_ids is not None:
        q = q.where(u.integration_id.in_(list(integration_ids)))
    return iter(conn.execute(q))

__all__ = ["BY", "COST_COLUMNS", "PRIORITY_TIERS", "Coverage", "SpendKey", "actor_ids", "complete_until",
           "cost_lines", "coverage", "daily_spend", "legacy_cost_lines", "legacy_usage_lines",
           "usage_lines", "MAIN", "PRODUCT", "USAGE_COLUMNS", "Cell", "CellKey", "Checkpoint", "Name",
           "State", "actor_types", "advance", "all_checkpoints", "checkpoints", "cost_cells", "cost_table_rows",
           "get_state", "grouping_for", "names", "replace_cost_days", "replace_usage_days", "save_checkpoint",
           "save_names", "set_state", "states", "usage_cells", "usage_table_rows", "user_names"]
