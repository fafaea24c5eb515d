"""The retry budget: bounded by attempts AND elapsed time, exponential backoff with jitter.

A server-supplied wait (`retry-after`) wins over the computed backoff and is never shortened.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 8
    max_seconds: float = 900.0
    base: float = 2.0
    cap: float = 120.0
    #: Added on top of a `retry-after` so many workers told the same number do not return in lockstep.
    retry_after_jitter: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_seconds < 0:
            raise ValueError("max_retry_seconds must not be negative")

    def wait(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if retry_after is not None:
            return retry_after + rng.uniform(0.0, self.retry_after_jitter)
        ceiling = min(self.cap, self.base * 2.0 ** (attempt - 1))
        # "Equal jitter": at least half the exponential step, so the wait still grows.
        return ceiling / 2 + rng.uniform(0.0, ceiling / 2)

    def allows(self, attempt: int, elapsed: float, wait: float) -> bool:
        """Whether another attempt fits: attempts left, and the wait ends inside the time budget."""
        return attempt < self.max_attempts and elapsed + wait <= self.max_seconds
