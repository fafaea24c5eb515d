"""Small, independent helpers for the simulator tests.

They parse responses with their own few lines of code (cents strings -> Decimal) so
the tests check the simulator against its ground truth without borrowing any worker code.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from worker.simulator import SimulatorHandle

TODAY = date(2026, 3, 10)
VERSION = "2023-06-01"
COST = "/v1/organizations/cost_report"
USAGE = "/v1/organizations/usage_report/messages"
ME = "/v1/organizations/me"
# One TLS context for these tests' clients: httpx loads the CA bundle for each otherwise (about 15 ms of CPU).
TLS = httpx.create_ssl_context()


class FakeClock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def ts(d: date) -> str:
    return f"{d.isoformat()}T00:00:00Z"


def day_of(stamp: str) -> date:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").date()


def cents(amount: str) -> Decimal:
    """The API's cents string as exact dollars."""
    return Decimal(amount) / 100


def client(sim: SimulatorHandle, org: int = 0, **headers: str) -> httpx.Client:
    base = {"x-api-key": sim.keys[org], "anthropic-version": VERSION}
    base.update(headers)
    return httpx.Client(base_url=sim.base_url, headers=base, timeout=10, verify=TLS)


def local_client(sim: SimulatorHandle, org: int = 0, **headers: str) -> httpx.Client:
    """A client of an in-process simulator, through its transport (no server, no socket)."""
    base = {"x-api-key": sim.keys[org], "anthropic-version": VERSION}
    base.update(headers)
    return httpx.Client(base_url=sim.base_url, headers=base, timeout=10, transport=sim.transport())


def report_params(start: date, end: date, limit: int, *group_by: str, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"starting_at": ts(start), "ending_at": ts(end), "limit": limit}
    if group_by:
        params["group_by[]"] = list(group_by)
    params.update(extra)
    return params


def fetch_pages(c: httpx.Client, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Follow next_page until has_more is false; fails on a repeated or missing cursor."""
    pages: list[dict[str, Any]] = []
    seen: set[str] = set()
    page: str | None = None
    while True:
        query = dict(params)
        if page is not None:
            query["page"] = page
        r = c.get(path, params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append(body)
        if not body["has_more"]:
            assert body["next_page"] is None
            return pages
        page = body["next_page"]
        assert isinstance(page, str) and page not in seen
        seen.add(page)
        assert len(pages) < 1000


def buckets(pages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [b for p in pages for b in p["data"]]


def days(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days)]
