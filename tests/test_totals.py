"""`daily_model_totals` stays equal to the legacy rows it sums: after a backfill, a restated day re-read,
a removal, and when migration 0009 fills it from rows stored before it existed."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from tests.conftest import fake_clock
from tests.simulated import TODAY, Truth, make_sim
from tests.test_sync import onboard, run
from worker.app import App
from worker.integrations import remove
from worker.storage.db import _alembic_config, upgrade
from worker.storage.tables import cost_rows, daily_model_totals, usage_rows


def from_rows(app: App) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """What the totals must be, summed here from cost_rows and usage_rows."""
    sums: dict[tuple[Any, ...], list[Any]] = defaultdict(lambda: [Decimal(0), 0, 0, 0, 0])
    with app.engine.connect() as conn:
        for iid, day, model, amount in conn.execute(select(cost_rows.c.integration_id, cost_rows.c.day,
                                                           cost_rows.c.model, cost_rows.c.amount_usd)):
            sums[(iid, day, model)][0] += amount
        u = usage_rows.c
        for r in conn.execute(select(u.integration_id, u.day, u.model, u.uncached_input_tokens, u.output_tokens,
                                     u.cache_read_input_tokens, u.cache_creation_5m_input_tokens,
                                     u.cache_creation_1h_input_tokens)):
            acc = sums[(r[0], r[1], r[2])]
            acc[1] += r[3]
            acc[2] += r[4]
            acc[3] += r[5]
            acc[4] += r[6] + r[7]
    return {k: tuple(v) for k, v in sums.items()}


def stored(app: App) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    t = daily_model_totals.c
    with app.engine.connect() as conn:
        return {(r[0], r[1], r[2]): tuple(r[3:]) for r in conn.execute(select(
            t.integration_id, t.day, t.model, t.cost_usd, t.input_tokens, t.output_tokens, t.cache_read_tokens,
            t.cache_write_tokens))}


def test_totals_follow_backfill_restatement_and_removal(app: App) -> None:
    sim = make_sim(seed=4)
    iid = onboard(app, sim)
    run(app, iid, "backfill", sim)
    assert stored(app) and stored(app) == from_rows(app)
    truth = Truth(sim, TODAY - timedelta(days=29), TODAY + timedelta(days=1))
    assert sum(v[0] for v in stored(app).values()) == truth.cost()
    day = TODAY - timedelta(days=1)
    before = {k: v for k, v in stored(app).items() if k[1] == day}
    sim.add_fault(f"restate:day={day.isoformat()}")
    fake_clock(app).advance(24 * 3600)
    run(app, iid, "daily", sim)
    after = {k: v for k, v in stored(app).items() if k[1] == day}
    assert after != before and stored(app) == from_rows(app)
    assert remove(app.engine, iid) and stored(app) == {}


def test_migration_fills_totals_from_stored_rows(app: App) -> None:
    from alembic import command

    sim = make_sim(seed=5)
    run(app, onboard(app, sim), "backfill", sim)
    want = from_rows(app)
    with app.engine.begin() as conn:
        command.downgrade(_alembic_config(conn), "0008_analytics")
    upgrade(app.engine)
    assert want and stored(app) == want
