"""Time, injected: every wait and every "now" goes through a Clock so tests never sleep for real."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, date, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""

    def time(self) -> float:
        """Current wall time in epoch seconds (shared across processes, used by the rate limit)."""

    async def sleep(self, seconds: float) -> None:
        """Wait; a fake clock advances instead."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)


class FakeClock:
    """A clock for tests: sleeping advances time instantly and is recorded."""

    def __init__(self, start: datetime | float = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)) -> None:
        self._t = start.timestamp() if isinstance(start, datetime) else float(start)
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._t, UTC)

    def time(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        self._t += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds > 0:
            self._t += seconds
        await asyncio.sleep(0)


def utc_today(clock: Clock) -> date:
    return clock.now().date()
