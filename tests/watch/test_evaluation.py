"""When `run`'s poll evaluates budgets and anomalies: once per change of the settled bill. Every stored page
is a change, so while a sync holds its lease the evaluation waits for it to end (or for REEVALUATE_SECONDS)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update

from tests.conftest import fake_clock
from worker.app import App
from worker.simulator import SimulatorApp
from worker.storage import repo
from worker.storage.tables import integrations
from worker.watch.service import REEVALUATE_SECONDS, evaluate_if_due

from .simbill import connect_sim

BUDGET = {"name": "claude", "limit_usd": "100"}


def touch(app: App, iid: int) -> None:
    """What a stored page does to the evaluation's marker: the integration's row changes."""
    with app.engine.begin() as conn:
        conn.execute(update(integrations).where(integrations.c.id == iid)
                     .values(updated_at=app.clock.now() + timedelta(microseconds=1)))


class TestWhenEvaluated:
    def test_waits_for_running_syncs_then_evaluates_the_settled_bill(self, app_factory: Any,
                                                                   steady_sim: SimulatorApp) -> None:
        """First poll evaluates; a change under a held lease waits (however often polled) until the lease is
        released, or until REEVALUATE_SECONDS passed; an unchanged bill is not evaluated again."""
        app: App = app_factory(budgets=[BUDGET])
        clock = fake_clock(app)
        iid = connect_sim(app, steady_sim)
        assert evaluate_if_due(app)  # the first evaluation: at once
        assert not evaluate_if_due(app)  # nothing changed
        now = clock.now()
        with app.engine.begin() as conn:
            assert repo.take_lease(conn, iid, "another-process", now, now + timedelta(hours=2))
        touch(app, iid)
        for _ in range(5):
            clock.advance(5)
            assert not evaluate_if_due(app)  # a sync is writing: not at every poll
        clock.advance(REEVALUATE_SECONDS)
        assert evaluate_if_due(app)  # a long backfill is still judged every REEVALUATE_SECONDS
        touch(app, iid)
        clock.advance(5)
        assert not evaluate_if_due(app)
        with app.engine.begin() as conn:
            repo.release_lease(conn, iid, "another-process")
        assert evaluate_if_due(app)  # the sync ended: the settled bill at once
        assert not evaluate_if_due(app)

    def test_a_change_without_running_syncs_is_evaluated_at_once(self, app_factory: Any,
                                                                 steady_sim: SimulatorApp) -> None:
        """No lease held: a change (an integration's row) is evaluated at the next poll."""
        app: App = app_factory(budgets=[BUDGET])
        iid = connect_sim(app, steady_sim)
        assert evaluate_if_due(app)
        touch(app, iid)
        assert evaluate_if_due(app)
