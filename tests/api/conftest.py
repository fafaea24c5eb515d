"""Fixtures for the Admin API tests: a fake API on respx, a fake clock and a counting gate."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeVar

import pytest
import respx

from tests.fake_api import FAKE_ADMIN_KEY, CountingGate, FakeAdminApi
from worker.api import AdminApiClient, CostRow, Page, RequestStats, UsageRow
from worker.clock import FakeClock
from worker.secret import AdminKey

BASE_URL = "https://api.anthropic.com"
T = TypeVar("T")


@dataclass
class Harness:
    fake: FakeAdminApi
    clock: FakeClock = field(default_factory=FakeClock)  # 2026-03-10 12:00 UTC
    waits: list[float] = field(default_factory=list)
    wait_reasons: list[str] = field(default_factory=list)  # what each of `waits` was for
    gate: CountingGate | None = None
    client: AdminApiClient | None = None
    key: str | None = None  # the key the client sends; the fake's own key by default

    def run(self, body: Callable[[AdminApiClient], Awaitable[T]], **client_kw: Any) -> T:
        """Run `body(api)` against the fake mounted on a fresh respx router."""
        self.gate = self.gate or CountingGate(self.clock)
        kw: dict[str, Any] = {"rng": random.Random(1), "on_wait": self.waited, "stats": RequestStats()}
        kw.update(client_kw)
        key = AdminKey(self.key or self.fake.key)
        self.client = AdminApiClient(key, base_url=BASE_URL, gate=self.gate, clock=self.clock, **kw)

        async def main() -> T:
            assert self.client is not None
            async with self.client as api:
                return await body(api)

        with respx.mock(assert_all_called=False) as router:
            self.fake.mount(router, BASE_URL)
            return asyncio.run(main())

    def waited(self, seconds: float, reason: str) -> None:
        self.waits.append(seconds)
        self.wait_reasons.append(reason)

    @property
    def stats(self) -> RequestStats:
        assert self.client is not None
        return self.client.stats

    def cost_pages(self, start: date, end: date, limit: int = 31, **kw: Any) -> list[Page[CostRow]]:
        async def body(api: AdminApiClient) -> list[Page[CostRow]]:
            return [page async for page in api.cost_pages(start, end, limit=limit)]

        return self.run(body, **kw)

    def usage_pages(self, start: date, end: date, limit: int = 31, **kw: Any) -> list[Page[UsageRow]]:
        async def body(api: AdminApiClient) -> list[Page[UsageRow]]:
            return [page async for page in api.usage_pages(start, end, limit=limit)]

        return self.run(body, **kw)


@pytest.fixture
def fake() -> FakeAdminApi:
    return FakeAdminApi(start=date(2025, 12, 1), end=date(2026, 3, 10), seed=7)


@pytest.fixture
def harness(fake: FakeAdminApi) -> Harness:
    return Harness(fake=fake)


@pytest.fixture
def admin_key_text() -> str:
    return FAKE_ADMIN_KEY


@pytest.fixture
def make_harness() -> Callable[..., Harness]:
    """Build extra harnesses in one test (each with its own fake, clock and gate)."""

    def make(**fake_kw: Any) -> Harness:
        fake_kw.setdefault("start", date(2026, 3, 1))
        fake_kw.setdefault("end", date(2026, 3, 10))
        return Harness(fake=FakeAdminApi(**fake_kw))

    return make
