"""Every `reconcile` stores its summary, and /metrics exports the latest one per integration
(`cost_worker_reconcile_*`), on SQLite and PostgreSQL. The expected drift is the cost of the calls
left out of the tracked file, summed from the generated calls, not from the reconciler."""

from __future__ import annotations

import asyncio
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from billgen import Call, days, generate_calls
from click.testing import CliRunner, Result
from seed import Record, seed_bill, write
from sqlalchemy import select

from worker.app import App
from worker.cli import cli
from worker.http import HealthServer
from worker.integrations import remove
from worker.storage.tables import reconcile_runs
from worker.sync.scheduler import SyncService
from worker.vault import MasterKey

SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-4-5-20251001"
DATES = days(date(2026, 3, 1), 4)
SINCE, UNTIL = str(DATES[0]), str(DATES[-1])


@pytest.fixture
def env(db_url: str, tmp_path: Path, master_key: MasterKey) -> dict[str, str]:
    return {"COST_WORKER_DATABASE_URL": db_url, "COST_WORKER_MASTER_KEY": master_key.to_text(),
            "COST_WORKER_DATA_DIR": str(tmp_path / "data"), "COST_WORKER_LOG_FORMAT": "json"}


def invoke(env: dict[str, str], *args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def metrics(app: App) -> dict[tuple[str, str], float]:
    """{(sample name, integration_id label): value} of the reconcile series on /metrics."""
    reply = asyncio.run(HealthServer(app, SyncService(app), 0).metrics())
    assert reply.status == 200
    found = {}
    for line in reply.body.decode().splitlines():
        if line.startswith("cost_worker_reconcile_"):
            name, rest = line.split("{", 1)
            labels, number = rest.rsplit("} ", 1)
            assert labels.startswith('integration_id="'), line
            found[(name, labels.split('"')[1])] = float(number)
    return found


def cost(calls: list[Call]) -> Decimal:
    return sum((c.cost() for c in calls), Decimal(0))


class TestLatestDrift:
    @pytest.fixture
    def scenario(self, app: App, env: dict[str, str], tmp_path: Path) -> tuple[int, Decimal]:
        """A bill of 4 days; day 2 loses a fifth of the Sonnet calls, day 4 tracks no Haiku call."""
        calls = generate_calls(DATES, [SONNET, HAIKU])
        iid = seed_bill(app.engine, calls)
        lost = [c for c in calls if c.at.date() == DATES[1] and c.model == SONNET][::5]
        untracked = [c for c in calls if c.at.date() == DATES[3] and c.model == HAIKU]
        left_out = {c.id for c in lost + untracked}
        path = tmp_path / "events.jsonl"
        path.write_text(write([Record.of(c) for c in calls if c.id not in left_out], "jsonl"))
        assert invoke(env, "events", "import", str(path)).exit_code == 0
        return iid, -(cost(lost) + cost(untracked))

    def test_reconcile_stores_its_summary_exactly(self, app: App, env: dict[str, str],
                                                  scenario: tuple[int, Decimal]) -> None:
        iid, drift = scenario
        result = invoke(env, "reconcile", "--since", SINCE, "--until", UNTIL, "--integration", str(iid))
        assert result.exit_code == 3, result.output
        with app.engine.connect() as conn:
            [run] = conn.execute(select(reconcile_runs)).all()
        assert run.integration_id == iid
        assert (run.since, run.until, run.group_by, run.sources) == (DATES[0], DATES[-1], "model", "")
        assert run.delta_usd == drift != 0
        assert run.tracked_cost_usd - run.billed_cost_usd == drift
        assert run.drift_rows == 2 and run.unexplained_usd == 0

    def test_metrics_show_the_latest_run_per_integration(self, app: App, env: dict[str, str],
                                                         scenario: tuple[int, Decimal]) -> None:
        iid, drift = scenario
        assert metrics(app) == {}  # nothing reconciled yet: no series
        invoke(env, "reconcile", "--since", SINCE, "--until", UNTIL, "--integration", str(iid))
        invoke(env, "reconcile", "--since", SINCE, "--until", UNTIL)  # every integration: label "all"
        m = metrics(app)
        for scope in (str(iid), "all"):
            assert m[("cost_worker_reconcile_drift_usd", scope)] == float(drift)
            assert m[("cost_worker_reconcile_unexplained_usd", scope)] == 0
            assert m[("cost_worker_reconcile_drift_rows", scope)] == 2
            assert m[("cost_worker_reconcile_period_days", scope)] == 4
        assert m[("cost_worker_reconcile_tracked_usd", str(iid))] - m[("cost_worker_reconcile_billed_usd", str(iid))] \
            == pytest.approx(float(drift))
        # A later, clean run (day 1 only) replaces the integration's figures; "all" keeps its own.
        assert invoke(env, "reconcile", "--since", SINCE, "--until", SINCE, "--integration", str(iid)).exit_code == 0
        m = metrics(app)
        assert m[("cost_worker_reconcile_drift_usd", str(iid))] == 0
        assert m[("cost_worker_reconcile_drift_rows", str(iid))] == 0
        assert m[("cost_worker_reconcile_period_days", str(iid))] == 1
        assert m[("cost_worker_reconcile_drift_usd", "all")] == float(drift)
        # A removed integration stops being exported.
        assert remove(app.engine, iid)
        assert {scope for _name, scope in metrics(app)} == {"all"}
