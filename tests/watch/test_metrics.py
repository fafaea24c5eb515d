"""`run`'s poll evaluates (the scheduler's single call into worker.watch) and /metrics then serves each budget's
limit, spend and forecast and the latest spend anomaly per integration, equal to the evaluation and the truth."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from tests.test_http import parse_metrics, value
from worker.app import App
from worker.clock import FakeClock
from worker.http import HealthServer
from worker.simulator import SimulatorApp
from worker.sync.scheduler import SyncService
from worker.watch.budgets import evaluate

from .simbill import NOW, TODAY, connect_sim, resync, sim_transport, truth_total


async def scrape(app: App, sim: SimulatorApp) -> str:
    """One poll of a SyncService (waiting for the syncs it starts), then GET /metrics from its HealthServer."""
    service = SyncService(app, transport=sim_transport(sim))
    server = HealthServer(app, service, 0, host="127.0.0.1")
    await server.start()
    try:
        await service.dispatch_due()
        while service.tasks:
            await asyncio.gather(*list(service.tasks.values()))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
            response = await http.get("/metrics")
        assert response.status_code == 200
        return response.text
    finally:
        await server.close()


def test_poll_then_metrics(app_factory: Any, steady_sim: SimulatorApp) -> None:
    """After a poll: the budget series equal the budget's evaluation (its spend the truth of the month so far),
    and the spike restated into yesterday is the integration's latest anomaly."""
    budgets = [{"name": "claude", "limit_usd": "5000"}, {"name": "sonnet", "limit_usd": "20", "period": "day",
                                                           "model": "claude-sonnet-4-6"}]
    app: App = app_factory(FakeClock(NOW), backfill_days_pro=60, budgets=budgets)
    connect_sim(app, steady_sim)
    yesterday = TODAY - timedelta(days=1)
    steady_sim.add_fault(f"spike:day={yesterday},factor=5")
    resync(app, steady_sim, 1)
    samples = parse_metrics(asyncio.run(scrape(app, steady_sim)))
    with app.engine.connect() as conn:
        claude = evaluate(conn, app.settings.budgets[0], TODAY, TODAY)
    assert claude.spend_usd == truth_total(steady_sim, TODAY.replace(day=1), TODAY)
    assert value(samples, "cost_worker_budget_limit_usd", budget="claude") == 5000
    assert value(samples, "cost_worker_budget_spend_usd", budget="claude") == float(claude.spend_usd)
    assert value(samples, "cost_worker_budget_forecast_usd", budget="claude") == float(claude.forecast_usd)
    assert value(samples, "cost_worker_budget_status", budget="claude", status=claude.status) == 1
    assert value(samples, "cost_worker_budget_status", budget="sonnet", status="over") == 1
    start = datetime.combine(yesterday, datetime.min.time(), UTC).timestamp()
    assert value(samples, "cost_worker_spend_anomaly_last_day_timestamp_seconds", integration_id="1") == start
    assert value(samples, "cost_worker_spend_anomaly_last_score", integration_id="1") > 3.5
    assert value(samples, "cost_worker_spend_anomaly_last_cost_usd", integration_id="1") == float(
        truth_total(steady_sim, yesterday, yesterday))
    assert value(samples, "cost_worker_spend_anomaly_last_info", integration_id="1", date=str(yesterday),
                 scope="integration", key="total", direction="spike") == 1
    assert value(samples, "cost_worker_spend_anomaly_last_baseline_usd", integration_id="1") < float(
        truth_total(steady_sim, yesterday, yesterday) / Decimal(3))


def test_removed_budget_leaves_metrics(app_factory: Any, steady_sim: SimulatorApp) -> None:
    """A budget taken out of the config is gone from /metrics after the next poll (the config is part of what
    makes an evaluation due)."""
    app: App = app_factory(FakeClock(NOW), backfill_days_pro=40, budgets=[{"name": "old", "limit_usd": "1"}])
    connect_sim(app, steady_sim)
    assert "old" in str(parse_metrics(asyncio.run(scrape(app, steady_sim)))["cost_worker_budget_limit_usd"])
    app.settings = app.settings.model_copy(update={"budgets": []})
    samples = parse_metrics(asyncio.run(scrape(app, steady_sim)))
    assert "cost_worker_budget_limit_usd" not in samples
