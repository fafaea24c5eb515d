"""`analytics_daily_totals` stays equal to the Analytics API rows it sums (summed here, from the rows) and, per
API key and actor, to the simulator's analytics truth: after a backfill, a 5x day re-read, a removal, and when
migration 0010 fills it from rows stored before it existed. The overview's fast reads (daily spend by model,
top API keys and users) equal `report --by model` and `report --by api_key|actor --source analytics` on a
fleet mixing a legacy integration and one syncing both bills."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from tests.conftest import fake_clock
from tests.simulated import TODAY, make_sim
from tests.test_sync import run
from worker.app import App
from worker.integrations import check_connection, connect, remove
from worker.secret import AdminKey
from worker.simulator import SimulatorHandle
from worker.simulator.truth import analytics_truth
from worker.sources.report import report_by
from worker.storage.analytics_totals import per_key
from worker.storage.db import _alembic_config, upgrade
from worker.storage.tables import analytics_cost_rows, analytics_daily_totals, analytics_usage_rows
from worker.sync.streams import Source
from worker.web.views import _ranked, daily_by_model

FIRST = TODAY - timedelta(days=29)  # the free tier's window


def onboard(app: App, sim: SimulatorHandle, source: Source = "both", org: int = 0) -> int:
    key = AdminKey(sim.keys[org])
    organization = asyncio.run(check_connection(app, key, transport=sim.transport()))
    return connect(app, key, organization, label=None, tier="free", source=source)


def from_rows(app: App) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """What the totals must be, summed here from the analytics rows of grouping 'main'."""
    sums: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [Decimal(0), Decimal(0), 0, 0, 0, 0])
    with app.engine.connect() as conn:
        c = analytics_cost_rows.c
        for iid, day, model, key, actor, amount, listed in conn.execute(select(
                c.integration_id, c.day, c.model, c.api_key_id, c.actor_id, c.amount_usd, c.list_amount_usd).where(
                c.grouping == "main")):
            for dimension, value in (("model", model), ("api_key", key), ("actor", actor)):
                sums[(iid, day, dimension, value, "cost")][0] += amount
                sums[(iid, day, dimension, value, "cost")][1] += listed
        u = analytics_usage_rows.c
        for r in conn.execute(select(u.integration_id, u.day, u.model, u.api_key_id, u.actor_id, u.uncached_input_tokens,
                                     u.output_tokens, u.cache_read_input_tokens, u.cache_creation_5m_input_tokens,
                                     u.cache_creation_1h_input_tokens).where(u.grouping == "main")):
            for dimension, value in (("model", r[2]), ("api_key", r[3]), ("actor", r[4])):
                acc = sums[(r[0], r[1], dimension, value, "usage")]
                acc[2] += r[5]
                acc[3] += r[6]
                acc[4] += r[7]
                acc[5] += r[8] + r[9]
    return {k: tuple(v) for k, v in sums.items()}


def stored(app: App) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    t = analytics_daily_totals.c
    with app.engine.connect() as conn:
        return {tuple(r[:5]): tuple(r[5:]) for r in conn.execute(select(
            t.integration_id, t.day, t.dimension, t.key, t.part, t.cost_usd, t.list_cost_usd, t.input_tokens, t.output_tokens,
            t.cache_read_tokens, t.cache_write_tokens))}


def truth_per_key(sim: SimulatorHandle, by: str) -> dict[str, Decimal]:
    sums: dict[str, Decimal] = defaultdict(Decimal)
    for row in analytics_truth(sim.data, 0, FIRST, TODAY, by=by):
        if row["key"] is not None:
            sums[row["key"]] += Decimal(row["cost_usd"])
    return dict(sums)


def test_totals_follow_backfill_spike_and_removal(app: App) -> None:
    sim = make_sim(seed=4)
    iid = onboard(app, sim)
    run(app, iid, "backfill", sim)
    assert stored(app) and stored(app) == from_rows(app)
    with app.engine.connect() as conn:
        for by in ("api_key", "actor"):
            got = {key: cost for _iid, key, cost in per_key(conn, FIRST, TODAY, by)}
            assert got == truth_per_key(sim, by), by
    day = TODAY - timedelta(days=1)
    before = {k: v for k, v in stored(app).items() if k[1] == day}
    sim.add_fault(f"spike:day={day.isoformat()},factor=5")
    fake_clock(app).advance(24 * 3600)
    run(app, iid, "daily", sim)
    after = {k: v for k, v in stored(app).items() if k[1] == day}
    assert after != before and stored(app) == from_rows(app)
    assert sum(v[0] for k, v in after.items() if k[2] == "model") > 4 * sum(
        v[0] for k, v in before.items() if k[2] == "model")
    assert sum(v[3] for k, v in after.items() if k[2] == "model") > 4 * sum(
        v[3] for k, v in before.items() if k[2] == "model")  # the usage part too
    assert remove(app.engine, iid) and stored(app) == {}


def test_migration_fills_analytics_totals_from_stored_rows(app: App) -> None:
    from alembic import command

    sim = make_sim(seed=5)
    run(app, onboard(app, sim), "backfill", sim)
    want = from_rows(app)
    with app.engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0009_daily_model_totals")
    upgrade(app.engine)
    assert want and stored(app) == want


def test_overview_reads_equal_the_reports(app: App) -> None:
    """daily_by_model equals `report --by model` (each day's bill of record), the ranking `report --by
    api_key|actor --source analytics`, on a legacy integration beside one syncing both bills."""
    sim = make_sim(orgs=2, seed=6)
    fleet: tuple[tuple[int, Source], ...] = ((0, "legacy"), (1, "both"))
    for org, source in fleet:
        run(app, onboard(app, sim, source, org), "backfill", sim)
    with app.engine.connect() as conn:
        want: dict[Any, Decimal] = defaultdict(Decimal)
        for row in report_by(conn, FIRST, TODAY, "model"):
            want[(row.date, row.model)] += row.cost_usd
        got: dict[Any, Decimal] = defaultdict(Decimal)
        for day, model, cost in daily_by_model(conn, FIRST, TODAY):
            got[(day, model)] += cost
        assert want and got == want
        for by in ("api_key", "actor"):
            sums: dict[str, Decimal] = defaultdict(Decimal)
            names: dict[str, str | None] = {}
            for row in report_by(conn, FIRST, TODAY, by, "analytics"):
                if row.key is not None:
                    sums[row.key] += row.cost_usd
                    names[row.key] = names.get(row.key) or row.name
            ranked = _ranked(conn, FIRST, TODAY, by)
            top = sorted(sums, key=lambda k: (-sums[k], k))[:10]
            assert [(r.key, r.name, r.cost_usd) for r in ranked] == [(k, names[k], sums[k]) for k in top], by
