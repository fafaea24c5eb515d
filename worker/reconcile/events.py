"""The source-independent shape every tracker format is read into.

A parser yields `TrackedEvent` for each call it can read and `BadRecord` for each one it cannot;
nothing is dropped silently. Token counts follow the Admin API's split: uncached input, output,
cache reads and cache writes (5-minute, 1-hour, or an unsplit total when a tracker only gives one).

Parsers build each event first as an `EventRow`: a plain tuple already in the form the `events`
table stores, so an import never builds objects it would take apart again. `TrackedEvent` is the
same event as an object, for everything else (`event_from_row`, `row_from_event`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

__all__ = ["ROW_COLUMNS", "BadRecord", "EventRow", "TokenCounts", "TokenType", "TrackedEvent", "event_from_row",
           "extra_text", "row_from_event", "utc_text"]


class TokenType(StrEnum):
    """Token types compared between bill and tracking (cache writes summed over their TTLs)."""

    UNCACHED_INPUT = "uncached_input"
    OUTPUT = "output"
    CACHE_READ = "cache_read"
    CACHE_WRITE = "cache_write"


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """Token counts of one call or one aggregate, split like the bill.

    `cache_write_unsplit` holds cache writes whose TTL the tracker did not report (the bill never
    uses it). `cache_write` is the total over all three cache-write fields.
    """

    uncached_input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_write_unsplit: int = 0

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(
            self.uncached_input + other.uncached_input,
            self.output + other.output,
            self.cache_read + other.cache_read,
            self.cache_write_5m + other.cache_write_5m,
            self.cache_write_1h + other.cache_write_1h,
            self.cache_write_unsplit + other.cache_write_unsplit,
        )

    @property
    def cache_write(self) -> int:
        return self.cache_write_5m + self.cache_write_1h + self.cache_write_unsplit

    @property
    def total(self) -> int:
        return self.uncached_input + self.output + self.cache_read + self.cache_write

    def get(self, token_type: TokenType) -> int:
        """The count for one compared token type."""
        if token_type is TokenType.CACHE_WRITE:
            return self.cache_write
        value: int = getattr(self, token_type.value)
        return value


@dataclass(frozen=True, slots=True)
class TrackedEvent:
    """One Claude call as a tracker recorded it.

    `occurred_at` is timezone-aware UTC and `day` is its UTC date. `model` is the bill's model id
    after normalization, None until normalized or when no bill id matches (`raw_model` keeps what
    the tracker wrote). `cost_usd` is the tracker's own price for the call, None when it gave none.
    `extra` keeps format-specific facts that explain drift (status, service tier, session id...).
    """

    event_id: str | None
    occurred_at: datetime
    raw_model: str
    tokens: TokenCounts
    cost_usd: Decimal | None = None
    model: str | None = None
    workspace_id: str | None = None
    api_key_id: str | None = None
    customer: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.occurred_at.tzinfo is None or self.occurred_at.utcoffset() is None:
            raise ValueError("TrackedEvent.occurred_at must be timezone-aware")
        if self.occurred_at.tzinfo is not UTC:
            object.__setattr__(self, "occurred_at", self.occurred_at.astimezone(UTC))
        if isinstance(self.cost_usd, float):
            raise TypeError("TrackedEvent.cost_usd must be a Decimal, not a float")

    @property
    def day(self) -> date:
        return self.occurred_at.date()

    # Flat accessors, for storage columns and readability at call sites.
    @property
    def uncached_input(self) -> int:
        return self.tokens.uncached_input

    @property
    def output(self) -> int:
        return self.tokens.output

    @property
    def cache_read(self) -> int:
        return self.tokens.cache_read

    @property
    def cache_write_5m(self) -> int:
        return self.tokens.cache_write_5m

    @property
    def cache_write_1h(self) -> int:
        return self.tokens.cache_write_1h

    @property
    def cache_write_unsplit(self) -> int:
        return self.tokens.cache_write_unsplit


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record that could not be read: its 1-based physical line in the input and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


# --- rows -------------------------------------------------------------------------------------------

EventRow = tuple[str, str, str, str, int, int, int, int, int, int, str, str, str, str, str]
"""One event as the `events` table stores it, in `ROW_COLUMNS` order.

`occurred_at` is naive UTC text `YYYY-MM-DD HH:MM:SS.ffffff` (what SQLAlchemy's DateTime stores on
SQLite; the UTC day is its first 10 characters); `cost_usd` the exact decimal text; `extra`
canonical JSON or ''. '' also marks every absent text value: no event id, no bill model matched
(`model`), no cost, no workspace / API key / customer. Token counts are ints in 0..2**63-1.
"""

ROW_COLUMNS = (
    "event_id", "occurred_at", "raw_model", "model",
    "uncached_input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_5m_tokens", "cache_write_1h_tokens", "cache_write_unsplit_tokens",
    "cost_usd", "workspace_id", "api_key_id", "customer", "extra",
)
"""The `events` columns an `EventRow` holds, in order (`source`, `day`, `seen_count` are the store's)."""


def utc_text(at: datetime) -> str:
    """An aware datetime as an `EventRow`'s `occurred_at`: naive UTC, microseconds always written."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("occurred_at must be timezone-aware")
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def extra_text(extra: Mapping[str, Any]) -> str:
    """Canonical JSON of an event's `extra` facts ('' when there are none); Decimals as strings."""
    if not extra:
        return ""
    return json.dumps(extra, sort_keys=True, separators=(",", ":"), default=str)


def event_from_row(row: EventRow) -> TrackedEvent:
    """The `TrackedEvent` an `EventRow` stands for."""
    event_id, at, raw_model, model, a, b, c, d, e, f, cost, workspace, api_key, customer, extra = row
    return TrackedEvent(
        event_id=event_id or None,
        occurred_at=datetime.fromisoformat(at).replace(tzinfo=UTC),
        raw_model=raw_model,
        tokens=TokenCounts(a, b, c, d, e, f),
        cost_usd=Decimal(cost) if cost else None,
        model=model or None,
        workspace_id=workspace or None,
        api_key_id=api_key or None,
        customer=customer or None,
        extra=json.loads(extra, parse_float=Decimal) if extra else {},
    )


def row_from_event(event: TrackedEvent) -> EventRow:
    """An event as an `EventRow` (None becomes '', the cost its exact decimal text)."""
    t = event.tokens
    cost = event.cost_usd
    if cost is not None and not cost.is_finite():
        raise ValueError("cost_usd must be a finite Decimal")
    return (
        event.event_id or "", utc_text(event.occurred_at), event.raw_model, event.model or "",
        t.uncached_input, t.output, t.cache_read, t.cache_write_5m, t.cache_write_1h, t.cache_write_unsplit,
        "" if cost is None else format(cost, "f"), event.workspace_id or "", event.api_key_id or "",
        event.customer or "", extra_text(event.extra),
    )
