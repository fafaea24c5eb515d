"""`report --by model|workspace|api_key|actor|service_tier|product [--source legacy|analytics]`.

One row per (UTC day, model, key): `key` is the dimension's value (an `apikey_...`, the `user_...` /
`svac_...` / `apikey_...` an actor is, a workspace id, a tier, a product), `name` the API key's name,
the user's email or the workspace's name (None when unknown). Money is exact Decimal dollars; tokens
are summed. Rows are sorted by day, then model (None last), then key (None last).

The legacy reports answer `model`, `workspace` and `service_tier` (their cost rows carry the workspace
and tier); they cannot say who: by `api_key`, `actor` or `product` their rows have key None (the cost and
tokens of the day and model, not attributed). `list_cost_usd` is None for legacy rows (they have no list
price). Without a source, each (integration, day) is read from its bill of record (`storage.analytics.coverage`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection

from worker.money import money_text
from worker.storage import analytics as astore
from worker.storage import repo, totals
from worker.storage.types import EXACT

BY = astore.BY
LEGACY_KEYS = {"model": None, "workspace": "workspace_id", "service_tier": "service_tier"}


@dataclass(frozen=True)
class ReportRow:
    date: date
    model: str | None
    by: str
    key: str | None
    name: str | None
    cost_usd: Decimal
    list_cost_usd: Decimal | None
    input_tokens: int  # uncached
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int  # 5m + 1h


@dataclass
class _Acc:
    cost: Decimal = Decimal(0)
    listed: Decimal | None = Decimal(0)
    tokens: tuple[int, int, int, int] = (0, 0, 0, 0)
    name: str | None = None


def _add(acc: _Acc, cost: Decimal, listed: Decimal | None, tokens: tuple[int, int, int, int]) -> None:
    acc.cost = EXACT.add(acc.cost, cost)
    acc.listed = None if acc.listed is None or listed is None else EXACT.add(acc.listed, listed)
    acc.tokens = (acc.tokens[0] + tokens[0], acc.tokens[1] + tokens[1], acc.tokens[2] + tokens[2],
                  acc.tokens[3] + tokens[3])


def _name(names: dict[tuple[int, str, str], astore.Name], by: str, iid: int, key: str | None) -> str | None:
    if key is None:
        return None
    if by == "workspace":
        found = names.get((iid, "workspace", key))
        return found.name if found else None
    if by == "api_key":
        found = names.get((iid, "api_key", key))
        return found.name if found else None
    if by == "actor":
        user = names.get((iid, "user", key))
        if user is not None:
            return user.email
        found = names.get((iid, "api_key", key))  # an API key acting as itself is named by its name
        return found.name if found else None
    return None


def analytics_cells(conn: Connection, since: date, until: date, by: str, integration_id: int | None,
                    keep: dict[int, astore.Coverage] | None = None) -> dict[tuple[int, date, str | None, str | None], _Acc]:
    ids = [integration_id] if integration_id is not None else None
    cost = astore.cost_cells(conn, since, until, by, ids)
    usage = astore.usage_cells(conn, since, until, by, ids)
    names = astore.names(conn, integration_id)
    out: dict[tuple[int, date, str | None, str | None], _Acc] = {}
    for cell_key in cost.keys() | usage.keys():
        iid, day = cell_key[0], cell_key[1]
        if keep is not None and not (iid in keep and keep[iid].covers(day)):
            continue
        c, u = cost.get(cell_key), usage.get(cell_key)
        acc = out.setdefault(cell_key, _Acc(name=_name(names, by, iid, cell_key[3])))
        tokens = (u.uncached_input_tokens, u.output_tokens, u.cache_read_tokens,
                  u.cache_write_5m_tokens + u.cache_write_1h_tokens) if u else (0, 0, 0, 0)
        _add(acc, c.cost_usd if c else Decimal(0), c.list_cost_usd if c else Decimal(0), tokens)
    return out


def legacy_cells(conn: Connection, since: date, until: date, by: str, integration_id: int | None,
                 skip: dict[int, astore.Coverage] | None = None) -> dict[tuple[int, date, str | None, str | None], _Acc]:
    """The legacy reports per (integration, day, model, key); key None when they cannot say (see module doc)."""
    column = LEGACY_KEYS.get(by)
    ids = [integration_id] if integration_id is not None else None
    names = astore.names(conn, integration_id)
    out: dict[tuple[int, date, str | None, str | None], _Acc] = {}

    def cell(iid: int, day: date, model: str, key: str | None) -> _Acc | None:
        if skip is not None and iid in skip and skip[iid].covers(day):
            return None
        k = (iid, day, model or None, key or None)
        acc = out.get(k)
        if acc is None:
            acc = out[k] = _Acc(listed=None, name=_name(names, by, iid, key or None))
        return acc

    for iid, day, model, key, amount in astore.legacy_cost_lines(conn, since, until, column, ids):
        acc = cell(iid, day, model, key)
        if acc is not None:
            _add(acc, amount, None, (0, 0, 0, 0))
    for iid, day, model, key, a, b, cr, cw in astore.legacy_usage_lines(conn, since, until, column, ids):
        acc = cell(iid, day, model, key)
        if acc is not None:
            _add(acc, Decimal(0), None, (a, b, cr, cw))
    return out


def report_by(conn: Connection, since: date, until: date, by: str, source: str | None = None,
              integration_id: int | None = None) -> list[ReportRow]:
    """Rows for UTC days `since`..`until` (inclusive) per (day, model, key of `by`), summed over integrations."""
    if by not in BY:
        raise ValueError(f"--by must be one of {', '.join(BY)}")
    merged: dict[tuple[date, str | None, str | None], _Acc] = {}
    if by == "model" and source != "analytics":
        # The legacy part summed over integrations as the per-model totals are read: a year of a fleet is
        # hundreds of thousands of them, too many for a cell each.
        record = astore.coverage(conn, by) if source is None else {}
        covered = {iid: (c.first, c.until) for iid, c in record.items()}
        for day, legacy_model, cost, a, b, cr, cw in totals.read_grouped(conn, since, until, integration_id, covered):
            merged[(day, legacy_model or None, None)] = _Acc(cost, None, (a, b, cr, cw))
        cells = analytics_cells(conn, since, until, by, integration_id, keep=record) if source is None else {}
    elif source == "analytics":
        cells = analytics_cells(conn, since, until, by, integration_id)
    elif source == "legacy":
        cells = legacy_cells(conn, since, until, by, integration_id)
    else:
        record = astore.coverage(conn, by)
        cells = analytics_cells(conn, since, until, by, integration_id, keep=record)
        for k, v in legacy_cells(conn, since, until, by, integration_id, skip=record).items():
            cells[k] = v
    for (_iid, day, model, key), acc in cells.items():
        into = merged.get((day, model, key))
        if into is None:
            merged[(day, model, key)] = _Acc(acc.cost, acc.listed, acc.tokens, acc.name)
        else:
            _add(into, acc.cost, acc.listed, acc.tokens)
            into.name = into.name or acc.name
    order = sorted(merged, key=lambda k: (k[0], k[1] is None, k[1] or "", k[2] is None, k[2] or ""))
    return [ReportRow(day, model, by, key, merged[(day, model, key)].name, merged[(day, model, key)].cost,
                      merged[(day, model, key)].listed, *merged[(day, model, key)].tokens)
            for day, model, key in order]


REPORT_FIELDS = ["date", "model", "cost_usd", "input_tokens", "output_tokens", "cache_read_tokens",
                 "cache_write_tokens"]
REPORT_BY_FIELDS = ["date", "model", "by", "key", "name", "cost_usd", "list_cost_usd", "input_tokens",
                    "output_tokens", "cache_read_tokens", "cache_write_tokens"]


def report_records(conn: Connection, since: date, until: date, *, by: str | None = None, source: str | None = None,
                   integration_id: int | None = None) -> list[dict[str, Any]]:
    """The records of `report --format json` (and of the HTTP API's `spend`): without `by` and `source` one per
    (day, model) of the legacy reports (REPORT_FIELDS), else per (day, model, key) (REPORT_BY_FIELDS). Money as
    exact decimal text."""
    if by is None and source is None:
        return [{"date": r.date.isoformat(), "model": r.model, "cost_usd": money_text(r.cost_usd),
                 "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                 "cache_read_tokens": r.cache_read_tokens, "cache_write_tokens": r.cache_write_tokens}
                for r in repo.report(conn, since, until, integration_id)]
    return [{"date": r.date.isoformat(), "model": r.model, "by": r.by, "key": r.key, "name": r.name,
             "cost_usd": money_text(r.cost_usd),
             "list_cost_usd": None if r.list_cost_usd is None else money_text(r.list_cost_usd),
             "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
             "cache_read_tokens": r.cache_read_tokens, "cache_write_tokens": r.cache_write_tokens}
            for r in report_by(conn, since, until, by or "model", source, integration_id)]


__all__ = ["BY", "REPORT_BY_FIELDS", "REPORT_FIELDS", "ReportRow", "analytics_cells", "legacy_cells", "report_by",
           "report_records"]
