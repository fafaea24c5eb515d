"""The simulator's bill synced into a test database, in process: the ground truth budgets, anomalies and
the FOCUS export are checked against (`SimulatorData.truth`, its cost rows), never the code's own sums."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from worker.app import App
from worker.clock import FakeClock
from worker.integrations import check_connection, connect
from worker.secret import AdminKey
from worker.settings import Settings
from worker.simulator import SimulatorApp, build_app
from worker.simulator.prices import pico_to_dollars
from worker.simulator.truth import analytics_truth
from worker.sync.engine import sync_integration
from worker.vault import MasterKey

TODAY = date(2026, 3, 10)  # the simulator's last day with data; the tests' clock is noon of it
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def sim_transport(sim: SimulatorApp) -> httpx.MockTransport:
    """The simulator as an httpx transport (no sockets, no rate limit)."""
    def handle(request: httpx.Request) -> httpx.Response:
        answer = sim.handle(request.method, request.url.path, list(request.url.params.multi_items()),
                            dict(request.headers), request.content)
        return httpx.Response(answer.status, content=answer.body, headers=answer.headers)
    return httpx.MockTransport(handle)


def make_sim(traffic: str = "steady", seed: int = 0, orgs: int = 1) -> SimulatorApp:
    return build_app(orgs=orgs, seed=seed, today=TODAY, requests_per_minute=0, traffic=traffic)


def watch_app(db_url: str, tmp_path: Path, clock: FakeClock | None = None, master_key: MasterKey | None = None,
              **settings: Any) -> App:
    key = master_key or MasterKey.generate()
    values: dict[str, Any] = {"data_dir": tmp_path / "data", "database_url": db_url,
                              "master_key": key.to_text(), "api_base_url": "https://sim.test",
                              "requests_per_minute": 6000, "burst": 100}
    values.update(settings)
    return App(Settings(**values), clock=clock or FakeClock(NOW))


def connect_sim(app: App, sim: SimulatorApp, org: int = 0, tier: str = "pro") -> int:
    """Connect the simulated org and run its backfill (pro: 365 days ending today)."""
    transport = sim_transport(sim)
    key = AdminKey(sim.data.orgs[org].admin_key)
    organization = asyncio.run(check_connection(app, key, transport=transport))
    iid = connect(app, key, organization, label=None, tier=tier)  # type: ignore[arg-type]
    outcome = asyncio.run(sync_integration(app, iid, "backfill", transport=transport))
    assert outcome.ok, outcome.message
    return iid


def resync(app: App, sim: SimulatorApp, iid: int) -> None:
    """A manual sync: re-reads the trailing window (restated days) like the daily one."""
    outcome = asyncio.run(sync_integration(app, iid, "manual", transport=sim_transport(sim)))
    assert outcome.ok, outcome.message


def truth_total(sim: SimulatorApp, first: date, last: date, org: int = 0, *, model: str | None = None,
                workspace: str | None = None) -> Decimal:
    """The simulator's own exact cost over `[first, last]`, optionally of one model or one workspace ('' = the
    default workspace), from its data model."""
    total = Decimal(0)
    day = first
    while day <= last:
        for row in sim.data.day(org, day).cost:
            if model is not None and (row.model or "") != model:
                continue
            if workspace is not None and (row.workspace_id or "") != workspace:
                continue
            total += pico_to_dollars(row.pico)
        day += timedelta(days=1)
    return total


def analytics_total(sim: SimulatorApp, first: date, last: date, by: str, key: str | None, org: int = 0, *,
                    model: str | None = None, list_price: bool = False) -> Decimal:
    """The simulator's Analytics API truth over `[first, last]` for one key of `by` (`api_key`, `actor`, ...),
    optionally of one model: billed `amount` (or `list_amount`), exact, from its usage records."""
    field = "list_cost_usd" if list_price else "cost_usd"
    return sum((Decimal(r[field]) for r in analytics_truth(sim.data, org, first, last, by)
                if r["key"] == key and (model is None or r["model"] == model)), Decimal(0))
