"""`daily_model_totals` stays equal to the legacy rows it sums: after a backfill, a restated day re-read,
a removal, and when migration 0009 fills it from rows stored before it existed."""

from __future__ import annotations

from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal, localcontext
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
    with app.engine.connect() as conn, localcontext(prec=200):  # exact for any amount these tests store
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


def _cost(iid: int, day: date, model: str, amount: str, workspace: str = "") -> dict[str, Any]:
    return {"integration_id": iid, "day": day, "workspace_id": workspace, "model": model, "cost_type": "tokens",
            "token_type": "output_tokens", "service_tier": "standard", "context_window": "", "inference_geo": "",
            "description": "", "extra": "", "amount_usd": Decimal(amount), "currency": "USD"}


def _usage(iid: int, day: date, model: str, tokens: int) -> dict[str, Any]:
    return {"integration_id": iid, "day": day, "workspace_id": "", "model": model, "service_tier": "standard",
            "context_window": "", "api_key_id": "", "inference_geo": "", "extra_key": "",
            "uncached_input_tokens": tokens, "cache_read_input_tokens": 2 * tokens,
            "cache_creation_5m_input_tokens": 3, "cache_creation_1h_input_tokens": 4, "output_tokens": tokens + 1,
            "web_search_requests": 0, "extra_counts": ""}


def test_a_replacement_sums_the_rows_it_wrote_with_the_other_tables_rows_as_stored(app: App) -> None:
    """Each replacement sums its own new rows (not read back) and reads the other table: a model with usage and
    no cost, a day left unchanged inside a replaced page, rows of days outside the ones that changed, and
    amounts whose digits go past 28 places all end up exactly as summed from the rows."""
    from worker.storage import repo

    iid = onboard(app, make_sim(seed=6))
    d1, d2 = TODAY - timedelta(days=3), TODAY - timedelta(days=2)
    now = fake_clock(app).now()
    tiny = "0.00000000000000000000000000000001"
    with app.engine.begin() as conn:
        repo.replace_cost_days(conn, iid, [d1, d2], [
            _cost(iid, d1, "claude-a", "1.50"), _cost(iid, d1, "claude-a", tiny, workspace="wrk_2"),
            _cost(iid, d2, "claude-a", "2.25"), _cost(iid, d2, "", "10")], now, None)
        repo.replace_usage_days(conn, iid, [d1, d2], [
            _usage(iid, d1, "claude-a", 100), _usage(iid, d1, "claude-b", 7), _usage(iid, d2, "claude-a", 5)], now, None)
    assert stored(app) == from_rows(app)
    assert stored(app)[(iid, d1, "claude-a")][0] == Decimal("1.50000000000000000000000000000001")
    assert stored(app)[(iid, d1, "claude-b")] == (Decimal(0), 7, 8, 14, 7)  # usage only: no cost
    with app.engine.begin() as conn:  # d1 restated (claude-a's cost gone), d2 as it was
        repo.replace_cost_days(conn, iid, [d1, d2], [
            _cost(iid, d1, "claude-b", "0.75"), _cost(iid, d2, "claude-a", "2.25"), _cost(iid, d2, "", "10")], now, None)
    assert stored(app) == from_rows(app)
    assert stored(app)[(iid, d1, "claude-a")] == (Decimal(0), 100, 101, 200, 7)  # its tokens stay
    assert stored(app)[(iid, d1, "claude-b")][0] == Decimal("0.75")
    with app.engine.begin() as conn:  # usage of d2 replaced by nothing: its cost stays
        repo.replace_usage_days(conn, iid, [d2], [], now, None)
    assert stored(app) == from_rows(app)
    assert stored(app)[(iid, d2, "claude-a")] == (Decimal("2.25"), 0, 0, 0, 0)
