"""Budgets and anomalies per API key and per user (actor), read from the Analytics API's bill: spend equals the
simulator's analytics truth for the key or user over a month (alone and with workspace, model and integration
scopes); a 5x day of one key is that key's anomaly and an ordinary week has none; without an Analytics API bill
(source legacy, or a period before its first day) the budget is refused in one line, and `run` drops its state."""

from __future__ import annotations

import json
import logging
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from tests.conftest import master_key_text
from worker.app import App
from worker.cli import cli
from worker.integrations import set_source
from worker.settings import Budget
from worker.simulator import SimulatorApp
from worker.storage import analytics as astore
from worker.storage.tables import budget_states, spend_anomalies
from worker.watch.anomalies import find
from worker.watch.budgets import BudgetError, evaluate
from worker.watch.service import evaluate_all

from .simbill import NOW, TODAY, analytics_total, connect_sim, resync

FEB = (date(2026, 2, 1), date(2026, 2, 28))
A_FIRST = date(2026, 1, 1)  # the simulator's Analytics API has nothing earlier


def budget(**values: Any) -> Budget:
    return Budget(**{"name": "b", "limit_usd": Decimal(10**6), **values})


def at(app: App, b: Budget, day: date) -> Any:
    with app.engine.connect() as conn:
        return evaluate(conn, b, day, TODAY)


@pytest.mark.slow  # a year of data
class TestKeyAndUserBudgets:
    def test_each_keys_month_is_the_truths_sum(self, bill: tuple[App, SimulatorApp]) -> None:
        """A month budget scoped to one API key spent exactly the Analytics API truth's sum for that key over
        February (Priority Tier included: the Analytics API bills it), for every key of the organization."""
        app, sim = bill
        keys = [k.id for k in sim.data.orgs[0].api_keys]
        assert len(keys) >= 3
        for key in keys:
            result = at(app, budget(api_key=key), FEB[1])
            assert result.spend_usd == analytics_total(sim, *FEB, "api_key", key), key
            assert result.forecast_usd == result.spend_usd and result.scope == f"api_key={key}"
        assert sum(at(app, budget(api_key=k), FEB[1]).spend_usd for k in keys) > 0

    def test_a_user_by_email_and_by_id(self, bill: tuple[App, SimulatorApp]) -> None:
        """An actor budget names a user by email (any case) or by id; either spends the user's truth."""
        app, sim = bill
        spent = []
        for user in sim.data.orgs[0].users:
            truth = analytics_total(sim, *FEB, "actor", user.id)
            by_id = at(app, budget(actor=user.id), FEB[1]).spend_usd
            if not truth:
                continue
            by_email = at(app, budget(actor=user.email.upper()), FEB[1]).spend_usd
            assert by_id == by_email == truth, user
            spent.append(truth)
        assert spent
        with pytest.raises(BudgetError, match="no user with the email 'nobody@example.com'"):
            at(app, budget(actor="nobody@example.com"), FEB[1])

    def test_combined_with_the_other_scopes(self, bill: tuple[App, SimulatorApp]) -> None:
        """Every scope field narrows: key and model spends the key's truth of that model; key and its own
        workspace (by the Analytics API's id), or its integration, the key's whole truth; another workspace 0;
        a day budget that day's truth."""
        app, sim = bill
        workspace = next(w for w in sim.data.orgs[0].workspaces if w.api_keys)
        key = workspace.api_keys[0].id
        whole = analytics_total(sim, *FEB, "api_key", key)
        models = {r["model"] for r in _rows(sim, "api_key") if r["key"] == key}
        assert sum(at(app, budget(api_key=key, model=m), FEB[1]).spend_usd for m in models) == whole
        for m in models:
            assert at(app, budget(api_key=key, model=m), FEB[1]).spend_usd == analytics_total(
                sim, *FEB, "api_key", key, model=m)
        assert at(app, budget(api_key=key, workspace=workspace.tagged_id), FEB[1]).spend_usd == whole
        other = next(w for w in sim.data.orgs[0].workspaces if w is not workspace)
        assert at(app, budget(api_key=key, workspace=other.tagged_id), FEB[1]).spend_usd == 0
        assert at(app, budget(api_key=key, integration=1), FEB[1]).spend_usd == whole
        day = date(2026, 2, 10)
        daily = at(app, budget(api_key=key, period="day"), day)
        assert daily.spend_usd == analytics_total(sim, day, day, "api_key", key) > 0

    def test_a_period_before_the_analytics_bill_is_refused(self, bill: tuple[App, SimulatorApp]) -> None:
        """December 2025 is before the Analytics API's first day: its key spend is unknown, not zero."""
        app, sim = bill
        key = sim.data.orgs[0].api_keys[0].id
        with pytest.raises(BudgetError, match=r"for the whole period, and that of integration 1 \(.*\) starts "
                                              r"2026-01-01, after the period's start 2025-12-01"):
            at(app, budget(api_key=key), date(2025, 12, 20))
        assert at(app, budget(api_key=key), A_FIRST).spend_usd == analytics_total(sim, A_FIRST, A_FIRST, "api_key",
                                                                                   key)


class TestWithoutTheAnalyticsBill:
    @pytest.mark.slow  # a backfill inside the test
    def test_legacy_source_is_one_line_and_run_drops_it(self, app_factory: Any, steady_sim: SimulatorApp,
                                                        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """An integration whose source is legacy: `budgets` exits 2 with one line naming the budget, the
        integration and the fix; `run`'s evaluation skips it with a warning and keeps no stale state of it,
        while the other budgets are evaluated."""
        sim = steady_sim
        key = sim.data.orgs[0].api_keys[0].id
        app = app_factory(backfill_days_pro=40, budgets=[budget(name="all"), budget(name="key", api_key=key)])
        connect_sim(app, sim)
        config = tmp_path / "config.toml"
        config.write_text(f'[[budgets]]\nname = "all"\nlimit_usd = 100000\n\n'
                          f'[[budgets]]\nname = "key"\nlimit_usd = 100\napi_key = "{key}"\n')
        env = {"COST_WORKER_DATABASE_URL": app.settings.effective_database_url,
               "COST_WORKER_DATA_DIR": str(tmp_path / "data"), "COST_WORKER_CONFIG": str(config),
               "COST_WORKER_MASTER_KEY": app.settings.master_key.get_secret_value()}
        ok = CliRunner().invoke(cli, ["budgets", "--format", "json"], env=env)
        assert ok.exit_code == 0, ok.output
        assert [r["name"] for r in json.loads(ok.stdout)] == ["all", "key"]
        evaluate_all(app, NOW)
        assert stored_budgets(app) == {"all", "key"}

        set_source(app, 1, "legacy")
        result = CliRunner().invoke(cli, ["budgets"], env=env)
        assert result.exit_code == 2
        assert result.output.strip().splitlines() == [
            "error: budget 'key': an api_key or actor scope needs the Analytics API's bill, which integration 1 "
            "(Anthropic - Simulated Org 0) has not: its source is legacy (`cost-worker integrations set-source 1 "
            "both`); or narrow the budget to an `integration` that has it"]
        with caplog.at_level(logging.WARNING, logger="worker.watch"):
            evaluate_all(app, NOW)
        assert stored_budgets(app) == {"all"}
        assert any("budget 'key'" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)

    @pytest.mark.slow  # a backfill inside the test
    def test_a_refused_integration(self, app_factory: Any, steady_sim: SimulatorApp) -> None:
        """An integration the Analytics API refuses (HIPAA readiness): the budget says so; its anomalies are
        judged per integration, workspace and model only (the stored analytics rows are no bill of record)."""
        day = TODAY - timedelta(days=2)
        steady_sim.add_fault(f"spike:day={day},factor=5,api_key={_biggest_key(steady_sim, day)}")
        app = app_factory(backfill_days_pro=40)
        connect_sim(app, steady_sim)
        assert "api_key" in {a.scope for a in anomalies(app, day, day)}  # while the bill is the analytics one
        with app.engine.begin() as conn:
            astore.set_state(conn, 1, NOW, status="refused", detail="HIPAA")
        with pytest.raises(BudgetError, match=r"integration 1 \(.*\) has not: the Analytics API refuses it"):
            at(app, budget(api_key=steady_sim.data.orgs[0].api_keys[0].id, integration=1), TODAY)
        scopes = {a.scope for a in anomalies(app, day, day)}
        assert "integration" in scopes and not scopes & {"api_key", "actor"}

    def test_no_integration(self, app_factory: Any) -> None:
        """Before any integration is connected a key budget has no bill to read."""
        app = app_factory()
        with pytest.raises(BudgetError, match="no integration is connected"):
            at(app, budget(actor="user_01"), FEB[1])


def test_the_grouping_must_hold_what_a_budget_names(tmp_path: Path) -> None:
    """An api_key budget with an analytics grouping without api_key_id could only ever spend 0: refused at
    start in one line naming the budget and the setting."""
    config = tmp_path / "c.toml"
    config.write_text('analytics_cost_group_by = ["model", "workspace_id", "service_tier", "cost_type", "token_type"]\n'
                      '[[budgets]]\nname = "k"\nlimit_usd = 5\napi_key = "apikey_01"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "budgets"], env={"COST_WORKER_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: invalid [[budgets]] in {config}: budget 'k' (#1) needs api_key_id in analytics_cost_group_by (the "
        "Analytics API's cost rows it reads)"]


def stored_budgets(app: App) -> set[str]:
    with app.engine.connect() as conn:
        return set(conn.execute(select(budget_states.c.name)).scalars())


def _rows(sim: SimulatorApp, by: str) -> list[dict[str, Any]]:
    from worker.simulator.truth import analytics_truth

    return analytics_truth(sim.data, 0, *FEB, by)


class TestKeyAndUserAnomalies:
    def test_a_5x_day_of_one_key_is_that_keys_anomaly(self, own: tuple[App, SimulatorApp]) -> None:
        """One API key's day restated to 5x its calls (the rest of the organization unchanged) is, after the
        next sync, an `api_key` spike of that key with the truth's cost for it; no other key is flagged."""
        app, sim = own
        day = TODAY - timedelta(days=2)
        key = _biggest_key(sim, day)
        usual = analytics_total(sim, day, day, "api_key", key)
        sim.add_fault(f"spike:day={day},factor=5,api_key={key}")
        resync(app, sim, 1)
        found = anomalies(app, day - timedelta(days=6), TODAY)
        keyed = [a for a in found if a.scope == "api_key"]
        assert [(a.date, a.key, a.direction) for a in keyed] == [(day, key, "spike")]
        assert keyed[0].cost_usd == analytics_total(sim, day, day, "api_key", key) > 4 * usual
        assert abs(keyed[0].baseline_usd - usual) < usual * Decimal("0.3")
        assert keyed[0].score > 3.5 and keyed[0].integration_id == 1
        assert {a.date for a in found} == {day}

    def test_a_small_keys_5x_day_only_its_key_scope_sees(self, own: tuple[App, SimulatorApp]) -> None:
        """A key with a few percent of the spend jumps 5x: the integration's total hardly moves (not an anomaly),
        the key is; `run`'s evaluation stores it (the `spend_anomalies` row /metrics and the dashboard read)."""
        app, sim = own
        day = TODAY - timedelta(days=2)
        week = {k.id: analytics_total(sim, day - timedelta(days=7), day - timedelta(days=1), "api_key", k.id)
                for k in sim.data.orgs[0].api_keys}
        key = min((k for k, v in week.items() if v >= 7 * 5), key=week.__getitem__)  # $5 a day or more
        assert week[key] < sum(week.values()) / 10
        sim.add_fault(f"spike:day={day},factor=5,api_key={key}")
        resync(app, sim, 1)
        found = anomalies(app, day, day)
        assert "integration" not in {a.scope for a in found}
        [keyed] = [a for a in found if a.scope == "api_key"]
        assert (keyed.key, keyed.direction) == (key, "spike")
        assert keyed.cost_usd == analytics_total(sim, day, day, "api_key", key)
        evaluate_all(app, NOW)
        with app.engine.connect() as conn:
            stored = conn.execute(select(spend_anomalies.c.scope, spend_anomalies.c.key, spend_anomalies.c.cost_usd)
                                  .where(spend_anomalies.c.day == day, spend_anomalies.c.scope == "api_key")).all()
        assert [(s, k, Decimal(c)) for s, k, c in stored] == [("api_key", key, keyed.cost_usd)]

    def test_an_ordinary_week_has_none(self, own: tuple[App, SimulatorApp]) -> None:
        """The last seven complete days of steady traffic: no key or user is an anomaly (and their series were
        judged: the key series exist in the Analytics API's bill)."""
        app, sim = own
        found = anomalies(app, TODAY - timedelta(days=7), TODAY - timedelta(days=1))
        assert [a for a in found if a.scope in ("api_key", "actor")] == []
        assert analytics_total(sim, TODAY - timedelta(days=7), TODAY - timedelta(days=1), "api_key",
                               sim.data.orgs[0].api_keys[0].id) >= 0

    def test_the_command_lists_key_anomalies_with_the_same_fields(self, own: tuple[App, SimulatorApp],
                                                                 tmp_path: Path) -> None:
        """`anomalies --format json`: the documented fields, unchanged, with scope `api_key` and the key id."""
        app, sim = own
        day = TODAY - timedelta(days=2)
        key = _biggest_key(sim, day)
        sim.add_fault(f"spike:day={day},factor=5,api_key={key}")
        resync(app, sim, 1)
        env = {"COST_WORKER_DATABASE_URL": app.settings.effective_database_url,
               "COST_WORKER_DATA_DIR": str(tmp_path / "data"),
               "COST_WORKER_MASTER_KEY": master_key_text(app)}
        result = CliRunner().invoke(cli, ["anomalies", "--since", str(day), "--until", str(day), "--format", "json"],
                                    env=env)
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        assert all(list(r) == ["date", "integration_id", "scope", "key", "cost_usd", "baseline_usd", "score",
                               "direction"] for r in rows)
        [row] = [r for r in rows if r["scope"] == "api_key"]
        assert row["key"] == key and Decimal(row["cost_usd"]) == analytics_total(sim, day, day, "api_key", key)

    def test_without_the_analytics_bill_only_the_legacy_scopes(self, own: tuple[App, SimulatorApp]) -> None:
        """An integration switched to the legacy source is judged per integration, workspace and model only."""
        app, sim = own
        day = TODAY - timedelta(days=2)
        sim.add_fault(f"spike:day={day},factor=5,api_key={_biggest_key(sim, day)}")
        set_source(app, 1, "legacy")
        resync(app, sim, 1)
        found = anomalies(app, day, day)
        assert {a.scope for a in found} <= {"integration", "workspace", "model"}


def anomalies(app: App, since: date, until: date) -> list[Any]:
    with app.engine.connect() as conn:
        return find(conn, since, until, TODAY)


def _biggest_key(sim: SimulatorApp, day: date) -> str:
    """The API key with the most spend over the week before `day` (a key worth a look when it jumps)."""
    keys = [k.id for k in sim.data.orgs[0].api_keys]
    return max(keys, key=lambda k: analytics_total(sim, day - timedelta(days=7), day - timedelta(days=1),
                                                   "api_key", k))
