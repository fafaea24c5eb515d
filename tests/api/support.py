"""Helpers for tests that drive an AdminApiClient: a counting request gate and views of its pages."""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from decimal import Decimal
from typing import Any

from worker.api import CostRow, Page
from worker.clock import Clock


class CountingGate:
    """A RequestGate that counts calls and can make each one wait (through the given clock)."""

    def __init__(self, clock: Clock, wait: float = 0.0) -> None:
        self.clock, self.wait, self.calls = clock, wait, 0

    async def acquire(self) -> float:
        self.calls += 1
        if self.wait:
            await self.clock.sleep(self.wait)
        return self.wait


def cost_by_day_model(pages: list[Page[CostRow]]) -> dict[tuple[date, str | None], Decimal]:
    totals: dict[tuple[date, str | None], Decimal] = defaultdict(Decimal)
    for page in pages:
        for bucket in page.buckets:
            for row in bucket.rows:
                totals[(bucket.day, row.model)] += row.amount_usd
    return dict(totals)


def days_of(pages: list[Page[Any]]) -> list[date]:
    return [b.day for p in pages for b in p.buckets]
