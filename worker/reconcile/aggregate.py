"""The two sides of a comparison, per (UTC day, model, key), and pure builders for them.

`key` is the workspace id or API key id when reconciling `--by workspace|api_key`, else None.

The storage layer normally produces these with SQL (GROUP BY over stored events and report rows);
`aggregate_events` and `BillBuilder` are the in-memory equivalents, used by tests and as the
reference for what those queries must compute.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from enum import StrEnum

from worker.money import EXACT
from worker.reconcile.events import TokenCounts, TrackedEvent
from worker.reconcile.models import canonical_model_id
from worker.reconcile.pricing import PriceBook, TokenCosts

__all__ = [
    "BILL_TOKEN_TYPES",
    "BillBuilder",
    "BilledCell",
    "BilledFee",
    "CellKey",
    "GroupBy",
    "TrackedAggregate",
    "aggregate_events",
]

CellKey = tuple[date, str, str | None]
_ZERO = Decimal(0)


class GroupBy(StrEnum):
    MODEL = "model"
    WORKSPACE = "workspace"
    API_KEY = "api_key"
    ACTOR = "actor"  # who: a user's email (an event's customer), a service account or API key id


BILL_TOKEN_TYPES = {
    "uncached_input_tokens": "uncached_input",
    "output_tokens": "output",
    "cache_read_input_tokens": "cache_read",
    "cache_creation.ephemeral_5m_input_tokens": "cache_write_5m",
    "cache_creation.ephemeral_1h_input_tokens": "cache_write_1h",
}
"""The cost report's `token_type` -> the `TokenCounts` / `TokenCosts` field."""


@dataclass(frozen=True, slots=True)
class BilledCell:
    """The bill for one (day, model, key): token counts and, when the bill has them, costs.

    `cost` is None for cells the cost report cannot produce (it has no API-key grouping): those
    are priced from the day's implied unit prices.
    """

    day: date
    model: str
    key: str | None
    tokens: TokenCounts
    cost: TokenCosts | None


@dataclass(frozen=True, slots=True)
class BilledFee:
    """A non-token cost (web_search, code_execution, session_usage, ...): the bill has no model."""

    day: date
    key: str | None
    cost_type: str
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class TrackedAggregate:
    """Tracked events for one (day, model, key), after de-duplication.

    `tokens` counts every event; `unpriced_tokens` only the events without a cost (they get
    priced from the bill); `cost_usd` sums the costs events did carry. `duplicate_ids` counts
    extra sightings of ids already stored. `unmatched_model` marks a model id no bill id matched
    (`model` is then the tracker's id, canonicalized).
    """

    day: date
    model: str
    key: str | None
    tokens: TokenCounts
    unpriced_tokens: TokenCounts
    cost_usd: Decimal
    events: int
    duplicate_ids: int = 0
    unmatched_model: bool = False

    def __add__(self, other: TrackedAggregate) -> TrackedAggregate:
        return replace(
            self,
            tokens=self.tokens + other.tokens,
            unpriced_tokens=self.unpriced_tokens + other.unpriced_tokens,
            cost_usd=EXACT.add(self.cost_usd, other.cost_usd),
            events=self.events + other.events,
            duplicate_ids=self.duplicate_ids + other.duplicate_ids,
            unmatched_model=self.unmatched_model or other.unmatched_model,
        )


def event_key(event: TrackedEvent, by: GroupBy | str = GroupBy.MODEL) -> CellKey:
    """The (day, model, key) an event is aggregated under."""
    by = GroupBy(by)
    key = (event.workspace_id if by is GroupBy.WORKSPACE else event.api_key_id if by is GroupBy.API_KEY
           else event.customer if by is GroupBy.ACTOR else None)
    return event.day, event.model or canonical_model_id(event.raw_model), key


def aggregate_events(
    events: Iterable[TrackedEvent], by: GroupBy | str = GroupBy.MODEL
) -> dict[CellKey, TrackedAggregate]:
    """Aggregate events, storing each non-null event id once (later sightings are duplicates).

    Keeps every seen id in memory: for tests and small inputs; storage does this with a unique
    (source, event_id) constraint and a per-event sighting count.
    """
    seen: dict[str, CellKey] = {}
    result: dict[CellKey, TrackedAggregate] = {}
    for event in events:
        cell = event_key(event, by)
        if event.event_id is not None:
            first = seen.get(event.event_id)
            if first is not None:
                result[first] = replace(result[first], duplicate_ids=result[first].duplicate_ids + 1)
                continue
            seen[event.event_id] = cell
        addition = TrackedAggregate(
            day=cell[0],
            model=cell[1],
            key=cell[2],
            tokens=event.tokens,
            unpriced_tokens=event.tokens if event.cost_usd is None else TokenCounts(),
            cost_usd=event.cost_usd if event.cost_usd is not None else Decimal(0),
            events=1,
            unmatched_model=event.model is None,
        )
        current = result.get(cell)
        result[cell] = addition if current is None else current + addition
    return result


class BillBuilder:
    """Folds stored cost-report and usage-report rows into `BilledCell`s, fees and a `PriceBook`.

    Amounts are USD (the report's cents converted once, at the API boundary). Usage rows of the
    `priority` service tier are skipped: Priority Tier cost is not in the cost report, so keeping
    their tokens would dilute the implied prices; tracked priority calls surface as surplus.
    With `by=api_key`, token counts come per API key from usage rows and cells have `cost=None`.
    """

    def __init__(self, by: GroupBy | str = GroupBy.MODEL) -> None:
        self.by = GroupBy(by)
        self._tokens: dict[CellKey, TokenCounts] = {}
        # Costs are summed per (cell, TokenCosts field) and made TokenCosts once, at the end: a
        # year's bill is ~10^4 cost rows, and a frozen dataclass per row was most of load_bill.
        self._costs: dict[CellKey, dict[str, Decimal]] = {}
        self._model_tokens: dict[tuple[date, str], TokenCounts] = {}
        self._model_costs: dict[tuple[date, str], dict[str, Decimal]] = {}
        self._fees: dict[tuple[date, str | None, str], Decimal] = {}

    def add_cost(
        self,
        day: date,
        amount_usd: Decimal,
        *,
        cost_type: str,
        model: str | None = None,
        token_type: str | None = None,
        workspace_id: str | None = None,
    ) -> None:
        """One cost-report row (grouped by description, and by workspace for `--by workspace`)."""
        key = workspace_id if self.by is GroupBy.WORKSPACE else None
        if cost_type != "tokens" or model is None:
            fee = (day, key, cost_type)
            self._fees[fee] = EXACT.add(self._fees.get(fee, _ZERO), amount_usd)
            return
        name = BILL_TOKEN_TYPES.get(token_type or "", "other")
        parts = self._model_costs.get((day, model))
        if parts is None:
            parts = self._model_costs[(day, model)] = {}
        parts[name] = EXACT.add(parts.get(name, _ZERO), amount_usd)  # from 0, as TokenCosts sums did
        if self.by is not GroupBy.API_KEY:
            cell = (day, model, key)
            parts = self._costs.get(cell)
            if parts is None:
                parts = self._costs[cell] = {}
            parts[name] = EXACT.add(parts.get(name, _ZERO), amount_usd)

    def add_usage(
        self,
        day: date,
        model: str,
        tokens: TokenCounts,
        *,
        workspace_id: str | None = None,
        api_key_id: str | None = None,
        service_tier: str | None = None,
    ) -> None:
        """One usage-report row (uncached, output, cache read, cache_creation 5m/1h)."""
        if service_tier == "priority":
            return
        key = workspace_id if self.by is GroupBy.WORKSPACE else api_key_id if self.by is GroupBy.API_KEY else None
        cell = (day, model, key)
        self._tokens[cell] = self._tokens.get(cell, TokenCounts()) + tokens
        self._model_tokens[(day, model)] = self._model_tokens.get((day, model), TokenCounts()) + tokens

    def cells(self) -> list[BilledCell]:
        keys = sorted(set(self._tokens) | set(self._costs), key=_sort_key)
        return [
            BilledCell(
                day=cell[0],
                model=cell[1],
                key=cell[2],
                tokens=self._tokens.get(cell, TokenCounts()),
                cost=None if self.by is GroupBy.API_KEY else TokenCosts(**self._costs.get(cell, {})),
            )
            for cell in keys
        ]

    def fees(self) -> list[BilledFee]:
        return [
            BilledFee(day, key, cost_type, amount)
            for (day, key, cost_type), amount in sorted(self._fees.items(), key=lambda item: _sort_key(item[0]))
        ]

    def prices(self, list_prices: dict[str, dict[str, Decimal]] | None = None) -> PriceBook:
        """Implied unit prices per (day, model) over every key."""
        keys = set(self._model_tokens) | set(self._model_costs)
        return PriceBook.from_billed(
            ((day, model, self._model_tokens.get((day, model), TokenCounts()),
              TokenCosts(**self._model_costs.get((day, model), {}))) for day, model in keys),
            list_prices,
        )


def _sort_key(cell: tuple[date, str | None, str | None]) -> tuple[date, str, str]:
    return cell[0], cell[1] or "", cell[2] or ""
