"""The bill per API key and per user, from the Analytics API, for `reconcile --by api_key` and `--by actor`.

The legacy cost report has no API key and no user, so reconciling by key there priced each key's tokens
at the rates the day implied. The Analytics API bills each key and each actor itself: here every
(UTC day, model, key) cell carries its billed cost per token type (`amount`, post-discount), and the
non-token cost (web search, code execution, session usage) comes as fees of that key. Priority Tier is
billed here too, so its usage is kept (the legacy bill had to skip it).

Keys. `api_key`: the key's id (`apikey_...`; None for usage no key authenticated). `actor`: a user is
keyed by their email (lowercased: what Claude Code's OTLP `user.email` and MarginFront's customer
carry), a service account or an API key acting as itself by its id. On the tracked side an event's
`customer` is that key (an email lowercased; a `user_...` id is mapped to the user's email).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal

from sqlalchemy import Connection

from worker.reconcile.aggregate import BILL_TOKEN_TYPES, BilledCell, BilledFee, GroupBy, TrackedAggregate
from worker.reconcile.events import TokenCounts
from worker.reconcile.pricing import PriceBook, TokenCosts
from worker.storage import analytics as astore
from worker.storage.types import EXACT

BY_WHO = (GroupBy.API_KEY, GroupBy.ACTOR)


def actor_key(value: str | None) -> str | None:
    """How a tracked customer or a billed user is matched: emails case-insensitively, ids as they are."""
    if value is None:
        return None
    value = value.strip()
    return value.lower() if "@" in value else (value or None)


@dataclass
class _Cell:
    """One (day, model, key) of the bill while it is summed: token counts, and billed USD per token type."""

    tokens: TokenCounts = field(default_factory=TokenCounts)
    costs: dict[str, Decimal] = field(default_factory=dict)


@dataclass
class AnalyticsBill:
    """The same interface as `BillBuilder`: `cells()`, `fees()`, `prices()`."""

    _cells: dict[tuple[date, str, str | None], _Cell]
    _fees: dict[tuple[date, str | None, str], Decimal]
    user_emails: dict[str, str]  # user id -> lowercased email (to map tracked `user_...` customers)

    def cells(self) -> list[BilledCell]:
        out = []
        for (day, model, key), summed in sorted(self._cells.items(), key=lambda i: (i[0][0], i[0][1], i[0][2] or "")):
            out.append(BilledCell(day=day, model=model, key=key, tokens=summed.tokens,
                                  cost=TokenCosts(**summed.costs)))
        return out

    def fees(self) -> list[BilledFee]:
        return [BilledFee(day, key, cost_type, amount) for (day, key, cost_type), amount in
                sorted(self._fees.items(), key=lambda i: (i[0][0], i[0][1] or "", i[0][2]))]

    def prices(self) -> PriceBook:
        """Unit prices per (day, model) implied by the billed cells (for events that carry no cost)."""
        return PriceBook.from_billed((c.day, c.model, c.tokens, c.cost) for c in self.cells() if c.cost is not None)

    def models(self) -> set[str]:
        return {model for _, model, _ in self._cells}


def covered(conn: Connection, since: date, until: date, integration_id: int | None) -> bool:
    """Whether the Analytics API's bill was synced for the whole period (for the selected integrations)."""
    record = astore.coverage(conn, "model")
    wanted = [integration_id] if integration_id is not None else list(record)
    return bool(wanted) and all(i in record and record[i].first <= since and until < record[i].until
                                for i in wanted)


def load_analytics_bill(conn: Connection, since: date, until: date, by: GroupBy | str,
                        integration_id: int | None = None) -> AnalyticsBill:
    """The Analytics API's bill for UTC days `since`..`until` (inclusive) per (day, model, key of `by`)."""
    by = GroupBy(by)
    if by not in BY_WHO:
        raise ValueError("the analytics bill is for --by api_key or --by actor")
    names = astore.names(conn, integration_id)
    emails = {n.id: actor_key(n.email) for (_, kind, _), n in names.items() if kind == "user" and n.email}
    user_emails = {k: v for k, v in emails.items() if v}

    def key_of(api_key: str, actor_id: str) -> str | None:
        if by is GroupBy.API_KEY:
            return api_key or None
        return user_emails.get(actor_id) or actor_id or None

    ids = [integration_id] if integration_id is not None else None
    cells: dict[tuple[date, str, str | None], _Cell] = {}
    fees: dict[tuple[date, str | None, str], Decimal] = {}

    def cell(day: date, model: str, key: str | None) -> _Cell:
        found = cells.get((day, model, key))
        if found is None:
            found = cells[(day, model, key)] = _Cell()
        return found

    for _iid, day, model, api_key, actor_id, _tier, cost_type, token_type, amount, _list in astore.cost_lines(
            conn, since, until, ids):
        key = key_of(api_key, actor_id)
        if cost_type not in ("", "tokens") or not model:
            fee = (day, key, cost_type or "other")
            fees[fee] = EXACT.add(fees.get(fee, Decimal(0)), amount)
            continue
        costs = cell(day, model, key).costs
        name = BILL_TOKEN_TYPES.get(token_type, "other")
        costs[name] = EXACT.add(costs.get(name, Decimal(0)), amount)
    for _iid, day, model, api_key, actor_id, *counts in astore.usage_lines(conn, since, until, ids):
        if not model:
            continue
        target = cell(day, model, key_of(api_key, actor_id))
        target.tokens += TokenCounts(*(int(n) for n in counts))
    return AnalyticsBill(cells, fees, user_emails)


def rekey_actors(tracked: Sequence[TrackedAggregate], user_emails: dict[str, str]) -> list[TrackedAggregate]:
    """Tracked aggregates keyed as the bill keys actors: emails lowercased, `user_...` ids as their email."""
    out: dict[tuple[date, str, str | None], TrackedAggregate] = {}
    for aggregate in tracked:
        key = actor_key(aggregate.key)
        if key is not None:
            key = user_emails.get(key, key)
        moved = replace(aggregate, key=key)
        cell = (moved.day, moved.model, key)
        out[cell] = moved if cell not in out else out[cell] + moved
    return list(out.values())


__all__ = ["BY_WHO", "AnalyticsBill", "actor_key", "covered", "load_analytics_bill", "rekey_actors"]
