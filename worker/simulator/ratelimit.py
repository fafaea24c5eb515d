"""Per-key token buckets: ``rate`` requests per minute with bursts of up to ``burst``."""

from __future__ import annotations

import math
from collections.abc import Callable


class TokenBucket:
    """A token bucket; ``acquire`` returns 0 when allowed, else the seconds until it would be."""

    def __init__(self, per_minute: float, burst: float, clock: Callable[[], float]) -> None:
        self._rate = per_minute / 60.0
        self._burst = max(1.0, burst)
        self._clock = clock
        self._tokens = self._burst
        self._at = clock()

    def acquire(self) -> float:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


class RateLimiter:
    """One bucket per key; ``per_minute <= 0`` disables limiting."""

    def __init__(self, per_minute: float, burst: float, clock: Callable[[], float]) -> None:
        self.per_minute = per_minute
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, key: str) -> int | None:
        """None when the request may proceed, else the ``retry-after`` seconds (ceil, >= 1)."""
        if self.per_minute <= 0:
            return None
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.per_minute, self.burst, self._clock)
        wait = bucket.acquire()
        if wait <= 0:
            return None
        return max(1, math.ceil(wait - 1e-9))

    def reset(self) -> None:
        self._buckets.clear()
