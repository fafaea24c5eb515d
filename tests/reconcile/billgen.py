"""A known bill and the calls behind it, with exact per-token prices (the ground truth)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from worker.reconcile import BillBuilder, TokenCounts, TrackedEvent

MTOK = Decimal(1_000_000)
# USD per million tokens: uncached input, output, cache read, 5m write, 1h write.
PRICES: dict[str, tuple[Decimal, ...]] = {
    "claude-sonnet-4-6": tuple(Decimal(p) / MTOK for p in ("3", "15", "0.30", "3.75", "6")),
    "claude-haiku-4-5-20251001": tuple(Decimal(p) / MTOK for p in ("1", "5", "0.10", "1.25", "2")),
}
TOKEN_TYPES = (
    "uncached_input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation.ephemeral_5m_input_tokens",
    "cache_creation.ephemeral_1h_input_tokens",
)
FIELDS = ("uncached_input", "output", "cache_read", "cache_write_5m", "cache_write_1h")


@dataclass(frozen=True)
class Call:
    id: str
    at: datetime
    model: str
    tokens: TokenCounts
    workspace_id: str

    def cost(self, zero_cache_writes: bool = False) -> Decimal:
        prices = PRICES[self.model]
        total = Decimal(0)
        for price, name in zip(prices, FIELDS, strict=True):
            if zero_cache_writes and name.startswith("cache_write"):
                continue
            total += price * getattr(self.tokens, name)
        return total

    def event(self, *, with_cost: bool = True, event_id: str | None = None, **changes: object) -> TrackedEvent:
        event = TrackedEvent(
            event_id=event_id or self.id,
            occurred_at=self.at,
            raw_model=self.model,
            model=self.model,
            tokens=self.tokens,
            cost_usd=self.cost() if with_cost else None,
            workspace_id=self.workspace_id,
        )
        return replace(event, **changes) if changes else event


def days(start: date, count: int) -> list[date]:
    return [start + timedelta(days=i) for i in range(count)]


def generate_calls(dates: Iterable[date], models: Iterable[str], per_day: int = 48, seed: int = 7) -> list[Call]:
    """Calls spread evenly over each UTC day, token sizes drawn from narrow ranges."""
    rng = random.Random(seed)
    calls = []
    for day in dates:
        for model in models:
            for i in range(per_day):
                at = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(minutes=30 * i + 7)
                tokens = TokenCounts(
                    uncached_input=rng.randint(800, 1200),
                    output=rng.randint(200, 300),
                    cache_read=rng.randint(3000, 5000),
                    cache_write_5m=rng.randint(200, 400),
                    cache_write_1h=rng.randint(50, 150),
                )
                calls.append(Call(f"msg_{model}_{day}_{i}", at, model, tokens, f"wrkspc_{i % 2}"))
    return calls


def bill(calls: Iterable[Call], by: str = "model", web_search: dict[date, Decimal] | None = None) -> BillBuilder:
    """The Admin API's view of these calls: usage rows and cost rows (amounts in USD)."""
    builder = BillBuilder(by)
    for call in calls:
        day = call.at.date()
        builder.add_usage(day, call.model, call.tokens, workspace_id=call.workspace_id, api_key_id=f"apikey_{call.workspace_id[-1]}")
        for price, name, token_type in zip(PRICES[call.model], FIELDS, TOKEN_TYPES, strict=True):
            builder.add_cost(day, price * getattr(call.tokens, name), cost_type="tokens", model=call.model,
                             token_type=token_type, workspace_id=call.workspace_id)
    for day, amount in (web_search or {}).items():
        builder.add_cost(day, amount, cost_type="web_search")
    return builder
