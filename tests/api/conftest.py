"""Fixtures for the Admin API tests: the simulator in-process, a fake clock and a counting gate."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeVar

import pytest

from tests.api.support import CountingGate
from tests.simulated import make_sim
from worker.api import AdminApiClient, CostRow, Page, RequestStats, UsageRow
from worker.clock import FakeClock
from worker.secret import AdminKey
from worker.simulator import SimulatorHandle

T = TypeVar("T")


@dataclass
class Harness:
    sim: SimulatorHandle
    clock: FakeClock = field(default_factory=FakeClock)  # 2026-03-10 12:00 UTC
    waits: list[float] = field(default_factory=list)
    wait_reasons: list[str] = field(default_factory=list)  # what each of `waits` was for
    gate: CountingGate | None = None
    client: AdminApiClient | None = None
    key: str | None = None  # the key the client sends; org 0's by default

    def run(self, body: Callable[[AdminApiClient], Awaitable[T]], **client_kw: Any) -> T:
        """Run `body(api)` against the simulator."""
        self.gate = self.gate or CountingGate(self.clock)
        kw: dict[str, Any] = {"rng": random.Random(1), "on_wait": self.waited, "stats": RequestStats()}
        kw.update(client_kw)
        key = AdminKey(self.key or self.sim.keys[0])
        self.client = AdminApiClient(key, base_url=self.sim.base_url, gate=self.gate, clock=self.clock,
                                     transport=self.sim.transport(), **kw)

        async def main() -> T:
            assert self.client is not None
            async with self.client as api:
                return await body(api)

        return asyncio.run(main())

    def waited(self, seconds: float, reason: str) -> None:
        self.waits.append(seconds)
        self.wait_reasons.append(reason)

    @property
    def stats(self) -> RequestStats:
        assert self.client is not None
        return self.client.stats

    def request_id(self, number: int) -> str:
        """The request-id the simulator gave its `number`th request (1-based)."""
        return self.sim.requests[number - 1].request_id

    def cost_pages(self, start: date, end: date, limit: int = 31, **kw: Any) -> list[Page[CostRow]]:
        async def body(api: AdminApiClient) -> list[Page[CostRow]]:
            return [page async for page in api.cost_pages(start, end, limit=limit)]

        return self.run(body, **kw)

    def usage_pages(self, start: date, end: date, limit: int = 31, **kw: Any) -> list[Page[UsageRow]]:
        async def body(api: AdminApiClient) -> list[Page[UsageRow]]:
            return [page async for page in api.usage_pages(start, end, limit=limit)]

        return self.run(body, **kw)


@pytest.fixture
def sim() -> SimulatorHandle:
    return make_sim(seed=7)


@pytest.fixture
def harness(sim: SimulatorHandle) -> Harness:
    return Harness(sim=sim)


@pytest.fixture
def make_harness() -> Callable[..., Harness]:
    """Build extra harnesses in one test (each with its own simulator, clock and gate)."""

    def make(**sim_kw: Any) -> Harness:
        return Harness(sim=make_sim(**sim_kw))

    return make
