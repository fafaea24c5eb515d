"""Budgets on the simulator's bill: spend equals its truth for the month, the day, a model and a workspace;
the forecast follows the weekly rhythm, ignores one spike day, and equals spend once the period is over;
statuses; the command's fields, formats and one-line errors."""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.conftest import master_key_text
from worker.app import App
from worker.cli import cli
from worker.settings import Budget
from worker.simulator import SimulatorApp
from worker.watch.budgets import BudgetError, evaluate

from .simbill import TODAY, make_sim, resync, truth_total

FEB = (date(2026, 2, 1), date(2026, 2, 28))


def budget(**values: Any) -> Budget:
    return Budget(**{"name": "b", "limit_usd": Decimal(10**6), **values})


@pytest.fixture
def synced(bill: tuple[App, SimulatorApp]) -> tuple[App, SimulatorApp]:
    """The module's shared bill (read only)."""
    return bill


def at(app: App, b: Budget, day: date) -> Any:
    with app.engine.connect() as conn:
        return evaluate(conn, b, day, TODAY)


class TestSpend:
    def test_month_spend_is_the_truths_sum(self, synced: tuple[App, SimulatorApp]) -> None:
        """A month budget evaluated on the month's last day spent exactly the simulator's total of that month."""
        app, sim = synced
        result = at(app, budget(), FEB[1])
        assert (result.period_start, result.period_end) == (date(2026, 2, 1), date(2026, 3, 1))
        assert result.spend_usd == truth_total(sim, *FEB) == sim.data.truth_total(0, date(2026, 2, 1), date(2026, 3, 1))
        assert result.forecast_usd == result.spend_usd  # nothing left to project

    def test_month_so_far_and_day(self, synced: tuple[App, SimulatorApp]) -> None:
        """Mid-month the spend is the truth through that day; a day budget spends exactly that day."""
        app, sim = synced
        day = date(2026, 2, 11)
        assert at(app, budget(), day).spend_usd == truth_total(sim, FEB[0], day)
        daily = at(app, budget(period="day"), day)
        assert (daily.period_start, daily.period_end) == (day, day + timedelta(days=1))
        assert daily.spend_usd == truth_total(sim, day, day) > 0

    def test_scopes(self, synced: tuple[App, SimulatorApp]) -> None:
        """Model, workspace ('default' too) and integration (id or label) scopes spend their own truth."""
        app, sim = synced
        workspaces = [w.id for w in sim.data.orgs[0].workspaces]
        model = "claude-sonnet-4-6"
        assert at(app, budget(model=model), FEB[1]).spend_usd == truth_total(sim, *FEB, model=model) > 0
        for ws in workspaces:
            got = at(app, budget(workspace=ws or "default"), FEB[1]).spend_usd
            assert got == truth_total(sim, *FEB, workspace=ws or "")
        assert sum(at(app, budget(workspace=ws or "default"), FEB[1]).spend_usd for ws in workspaces) == \
            truth_total(sim, *FEB)
        assert at(app, budget(integration=1), FEB[1]).spend_usd == truth_total(sim, *FEB)
        assert at(app, budget(integration="Anthropic - Simulated Org 0"), FEB[1]).spend_usd == truth_total(sim, *FEB)
        with pytest.raises(BudgetError, match="no integration 'Nope'"):
            at(app, budget(integration="Nope"), FEB[1])


class TestForecast:
    def test_forecast_beats_a_flat_average(self, synced: tuple[App, SimulatorApp]) -> None:
        """Evaluated on 40 days across ten months, the forecast of the month is off its truth by under 15 % on
        average, and by less than a flat projection of the trailing 28 days' mean (weekday-blind)."""
        app, sim = synced
        ours, flat = [], []
        for i in range(40):
            day = date(2025, 4, 20) + timedelta(days=7 * i + i % 5)
            result = at(app, budget(), day)
            month = truth_total(sim, result.period_start, result.period_end - timedelta(days=1))
            history = truth_total(sim, day - timedelta(days=27), day) / 28
            left = (result.period_end - day).days - 1
            ours.append(abs(result.forecast_usd - month) / month)
            flat.append(abs(result.spend_usd + history * left - month) / month)
        assert sum(ours) / len(ours) < Decimal("0.15")
        assert sum(ours) < sum(flat)

    def test_weekend_rhythm(self, synced: tuple[App, SimulatorApp]) -> None:
        """Projecting a weekend costs about a third of projecting weekdays (the simulator's 0.35 factor)."""
        app, _sim = synced
        friday = date(2026, 2, 6)
        with app.engine.connect() as conn:
            weekend = evaluate(conn, budget(period="day"), friday, TODAY)
        from worker.watch import forecast
        from worker.watch.spend import daily_totals, spend_by_grain

        with app.engine.connect() as conn:
            daily = daily_totals(spend_by_grain(conn, friday - timedelta(days=40), friday + timedelta(days=1)).items())
        model = forecast.fit(daily, friday)
        saturday, monday = model.expected(friday + timedelta(days=1)), model.expected(friday + timedelta(days=3))
        assert Decimal("0.25") < saturday / monday < Decimal("0.45")
        assert weekend.forecast_usd == weekend.spend_usd  # a past day is complete

    def test_one_spike_day_does_not_move_the_projection(self, own: tuple[App, SimulatorApp]) -> None:
        """A 10x day two days ago (restated upstream, re-synced) changes the projected rest of the month by
        under 2 % (a median of four only shifts to the neighbouring sample), while the spend takes all of it."""
        app, sim = own
        before = at(app, budget(), TODAY)
        sim.add_fault(f"spike:day={TODAY - timedelta(days=2)},factor=10")
        resync(app, sim, 1)
        after = at(app, budget(), TODAY)
        assert after.spend_usd - before.spend_usd > 5 * truth_total(make_sim(), TODAY - timedelta(days=2),
                                                                    TODAY - timedelta(days=2))
        ahead = [r.forecast_usd - r.spend_usd for r in (before, after)]
        assert abs(ahead[1] - ahead[0]) < ahead[0] * Decimal("0.02")

    def test_today_is_partial(self, synced: tuple[App, SimulatorApp]) -> None:
        """Evaluated today, today's partial bill is projected up to at least its usual amount."""
        app, _sim = synced
        result = at(app, budget(period="day"), TODAY)
        assert result.forecast_usd >= result.spend_usd


class TestStatus:
    def test_statuses(self, synced: tuple[App, SimulatorApp]) -> None:
        """over > forecast_over > warn > ok, against limits placed around the real spend and forecast."""
        app, sim = synced
        mid = date(2026, 2, 11)
        base = at(app, budget(), mid)
        spend, projected = base.spend_usd, base.forecast_usd
        assert at(app, budget(limit_usd=spend - 1), mid).status == "over"
        assert at(app, budget(limit_usd=(spend + projected) / 2), mid).status == "forecast_over"
        month = truth_total(sim, *FEB)
        assert at(app, budget(limit_usd=month / Decimal("0.9")), FEB[1]).status == "warn"
        assert at(app, budget(limit_usd=month / Decimal("0.9"), warn_at=Decimal("0.95")), FEB[1]).status == "ok"
        assert at(app, budget(limit_usd=month), FEB[1]).status == "warn"  # exactly at the limit is not over


class TestCommand:
    @pytest.fixture
    def env(self, synced: tuple[App, SimulatorApp], tmp_path: Path) -> dict[str, str]:
        app, _ = synced
        config = tmp_path / "config.toml"
        config.write_text('[[budgets]]\nname = "claude"\nlimit_usd = 100000\n\n'
                          '[[budgets]]\nname = "sonnet daily"\nlimit_usd = 1\nperiod = "day"\n'
                          'model = "claude-sonnet-4-6"\n')
        return {"COST_WORKER_DATABASE_URL": app.settings.effective_database_url,
                "COST_WORKER_DATA_DIR": str(tmp_path / "data"), "COST_WORKER_CONFIG": str(config),
                "COST_WORKER_MASTER_KEY": master_key_text(app)}

    def test_json_fields(self, env: dict[str, str], synced: tuple[App, SimulatorApp]) -> None:
        """`budgets --at DATE --format json`: exactly the documented fields, money as exact strings."""
        _, sim = synced
        result = CliRunner().invoke(cli, ["budgets", "--at", "2026-02-28", "--format", "json"], env=env)
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        assert [list(r) for r in rows] == [["name", "scope", "period_start", "period_end", "limit_usd", "spend_usd",
                                           "forecast_usd", "status"]] * 2
        assert rows[0]["name"] == "claude" and rows[0]["scope"] == "all"
        assert Decimal(rows[0]["spend_usd"]) == truth_total(sim, *FEB)
        assert rows[0]["period_end"] == "2026-03-01" and rows[0]["status"] == "ok"
        assert rows[1]["scope"] == "model=claude-sonnet-4-6" and rows[1]["status"] == "over"

    def test_table(self, env: dict[str, str]) -> None:
        """The table shows one line per budget under the field names."""
        result = CliRunner().invoke(cli, ["budgets", "--at", "2026-02-28"], env=env)
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].split() == ["name", "scope", "period_start", "period_end", "limit_usd", "spend_usd",
                                    "forecast_usd", "status"]
        assert len(lines) == 3 and lines[2].startswith("sonnet daily")

    @pytest.mark.parametrize(("args", "message"), [
        (["--at", "2027-01-01"], "--at 2027-01-01 is after today"),
        (["--at", "yesterday"], "expected a date YYYY-MM-DD"),
    ])
    def test_bad_usage_exits_2(self, env: dict[str, str], args: list[str], message: str) -> None:
        """Bad --at values: exit 2, one line."""
        result = CliRunner().invoke(cli, ["budgets", *args], env=env)
        assert result.exit_code == 2 and message in result.output

    def test_unknown_integration_exits_2(self, env: dict[str, str], tmp_path: Path) -> None:
        """A budget naming an integration that is not connected: exit 2, one line naming the budget."""
        Path(env["COST_WORKER_CONFIG"]).write_text('[[budgets]]\nname = "team"\nlimit_usd = 5\nintegration = 7\n')
        result = CliRunner().invoke(cli, ["budgets"], env=env)
        assert result.exit_code == 2
        assert result.output.strip().splitlines() == ["error: budget 'team': no integration 7 (see `cost-worker "
                                                      "integrations list`)"]


class TestConfig:
    @pytest.mark.parametrize(("table", "message"), [
        ('name = "a"\nlimit_usd = 0', "invalid budget 'a' ([[budgets]] #1) in {path}: limit_usd: Input should be "
                                      "greater than 0"),
        ('name = "a"\nlimit_usd = 5\nperiod = "week"', "budget 'a' ([[budgets]] #1) in {path}: period: Input should "
                                                       "be 'month' or 'day'"),
        ('name = "a"\nlimit_usd = 5\nlimt = 1', "unknown key 'limt'"),
        ('limit_usd = 5', "invalid [[budgets]] #1 in {path}: name is required"),
        ('name = "a"\nlimit_usd = 5\napi_key = "apikey_01"\nworkspace = "default"',
         "invalid budget 'a' ([[budgets]] #1) in {path}: with api_key or actor, name the default workspace by its id"),
        ('name = "a"\nlimit_usd = 5\nactor = " x"', "actor: must be an id"),
        ('name = "a"\nlimit_usd = 5\nwarn_at = 1.5', "warn_at: Input should be less than or equal to 1"),
    ])
    def test_invalid_budget_is_one_line_naming_it(self, tmp_path: Path, table: str, message: str) -> None:
        """A bad [[budgets]] entry stops any command at start: exit 2, one line naming the entry."""
        config = tmp_path / "c.toml"
        config.write_text(f'[[budgets]]\nname = "ok"\nlimit_usd = 1\n\n[[budgets]]\n{table}\n'.replace(
            "[[budgets]]\nname = \"ok\"\nlimit_usd = 1\n\n", ""))
        result = CliRunner().invoke(cli, ["--config", str(config), "budgets"], env={"COST_WORKER_DATA_DIR": str(tmp_path)})
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and message.format(path=config) in lines[0], lines

    def test_duplicate_names(self, tmp_path: Path) -> None:
        """Two budgets of one name: refused, naming both positions."""
        config = tmp_path / "c.toml"
        config.write_text('[[budgets]]\nname = "a"\nlimit_usd = 1\n[[budgets]]\nname = "a"\nlimit_usd = 2\n')
        result = CliRunner().invoke(cli, ["--config", str(config), "budgets"], env={"COST_WORKER_DATA_DIR": str(tmp_path)})
        assert result.exit_code == 2 and "budget 'a' (#2): the name is already used by #1" in result.output
