"""A known bill and the calls behind it, with exact per-token prices (the ground truth).

`generate_calls` is one small, regular organization; `random_org` draws a whole organization the
way the simulator does (models, batch and long-context shares, heavy-tailed call sizes, token
mixes that change from day to day), priced with the simulator's own price table.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from worker.reconcile import BillBuilder, TokenCounts, TrackedEvent
from worker.simulator.prices import MODELS as SIM_MODELS
from worker.simulator.prices import unit_price_dollars

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
    prices: tuple[Decimal, ...] | None = None
    """USD per token of each of `FIELDS`; None: the list prices in `PRICES`."""
    service_tier: str = "standard"
    context_window: str = "0-200k"

    def unit_prices(self) -> tuple[Decimal, ...]:
        return self.prices if self.prices is not None else PRICES[self.model]

    def cost(self, zero_cache_writes: bool = False) -> Decimal:
        total = Decimal(0)
        for price, name in zip(self.unit_prices(), FIELDS, strict=True):
            if zero_cache_writes and name.startswith("cache_write"):
                continue
            total += price * getattr(self.tokens, name)
        return total

    def event(self, *, with_cost: bool = True, event_id: str | None = None, **changes: Any) -> TrackedEvent:
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
        builder.add_usage(day, call.model, call.tokens, workspace_id=call.workspace_id,
                          api_key_id=f"apikey_{call.workspace_id[-1]}", service_tier=call.service_tier)
        for price, name, token_type in zip(call.unit_prices(), FIELDS, TOKEN_TYPES, strict=True):
            builder.add_cost(day, price * getattr(call.tokens, name), cost_type="tokens", model=call.model,
                             token_type=token_type, workspace_id=call.workspace_id)
    for day, amount in (web_search or {}).items():
        builder.add_cost(day, amount, cost_type="web_search")
    return builder


def random_org(seed: int, dates: Iterable[date]) -> list[Call]:
    """One randomly drawn organization's calls over `dates`, priced like the simulator prices them.

    1 to 3 models; per day and model, drawn again each day as the simulator draws them: a volume,
    a batch share and a long-context share (so the day's implied unit prices differ from its
    neighbours'), a token mix (cache-heavy or not, long or short answers) and the hour around which
    the day's traffic clusters. Call sizes are heavy-tailed (a few calls carry much of a day).
    """
    rng = random.Random(seed)
    models = rng.sample(sorted(SIM_MODELS), rng.randint(1, 3))
    calls: list[Call] = []
    for day in dates:
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC)
        for model in models:
            count = rng.randint(20, 120)
            batch_share = rng.choice((0.0, 0.0, 0.3, 0.7))
            long_share = rng.choice((0.0, 0.0, 0.2, 0.5)) if SIM_MODELS[model].long_context else 0.0
            cache = rng.random()  # this day's cache use: 0 none .. 1 heavy
            answers = 0.05 + 0.6 * rng.random()
            peak = rng.uniform(0, 24)
            for i in range(count):
                hour = (rng.gauss(peak, 4) if rng.random() < 0.5 else rng.uniform(0, 24)) % 24
                at = midnight + timedelta(seconds=int(hour * 3600))
                tier = "batch" if rng.random() < batch_share else "standard"
                window = "200k-1M" if rng.random() < long_share else "0-200k"
                uncached = max(1, int(math.exp(6 + 5 * rng.random()) * (3 if window == "200k-1M" else 1)))
                tokens = TokenCounts(
                    uncached_input=uncached,
                    output=max(1, int(uncached * answers * (0.5 + rng.random()))),
                    cache_read=int(uncached * 8 * cache * rng.random()) if rng.random() < cache else 0,
                    cache_write_5m=int(uncached * (0.05 + 0.45 * rng.random())) if rng.random() < 0.6 * cache else 0,
                    cache_write_1h=int(uncached * (0.05 + 0.25 * rng.random())) if rng.random() < 0.25 * cache else 0,
                )
                prices = tuple(unit_price_dollars(model, tier, window, t) for t in TOKEN_TYPES)
                calls.append(Call(f"msg_{seed}_{model}_{day}_{i}", at, model, tokens, f"wrkspc_{i % 2}",
                                  prices=prices, service_tier=tier, context_window=window))
    calls.sort(key=lambda c: c.at)
    return calls
