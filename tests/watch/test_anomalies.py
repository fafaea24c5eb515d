"""Spend anomalies on the simulator's bill: a 5x day is found (and a day at a tenth), a year of ordinary
weekday/weekend swings is not, a restated day is judged again (by the command and by `run`'s stored
judgement); the judge's rules on small series; the command's fields and formats."""

from __future__ import annotations

import json
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
from worker.simulator import SimulatorApp
from worker.storage.tables import spend_anomalies
from worker.watch.anomalies import Thresholds, find, judge
from worker.watch.service import evaluate_all

from .simbill import NOW, TODAY, resync, truth_total

YEAR_AGO = TODAY - timedelta(days=364)


def anomalies(app: App, since: date, until: date) -> list[Any]:
    with app.engine.connect() as conn:
        return find(conn, since, until, TODAY)


class TestOnTheSimulator:
    @pytest.mark.slow  # a year of data
    def test_an_ordinary_year_has_no_integration_anomaly(self, bill: tuple[App, SimulatorApp]) -> None:
        """A year of steady traffic (weekends at about a third of weekdays, a slow +-30 % trend): no day of the
        integration's total is an anomaly, and across every workspace and model under 0.3 % of days are."""
        app, sim = bill
        found = anomalies(app, YEAR_AGO, TODAY)
        assert [a for a in found if a.scope == "integration"] == []
        keys = len({(r.workspace_id, r.model) for d in range(0, 365, 30)
                    for r in sim.data.day(0, YEAR_AGO + timedelta(days=d)).cost})
        assert len(found) < 0.003 * 365 * keys, found

    @pytest.mark.slow  # a year of data
    def test_weekends_are_not_drops(self, bill: tuple[App, SimulatorApp]) -> None:
        """A Saturday costs about a third of the Friday before it, and is judged ordinary (score near 0)."""
        app, sim = bill
        saturday = date(2026, 2, 28)
        assert truth_total(sim, saturday, saturday) < truth_total(sim, saturday - timedelta(days=1),
                                                                   saturday - timedelta(days=1)) / 2
        from worker.watch.spend import daily_totals, spend_by_grain

        with app.engine.connect() as conn:
            daily = daily_totals(spend_by_grain(conn, saturday - timedelta(days=28), saturday + timedelta(days=1)).items())
        verdict = judge(daily, saturday, YEAR_AGO)
        assert verdict is not None and verdict.direction is None and abs(verdict.score) < 2

    @pytest.mark.parametrize(("factor", "direction"), [(5, "spike"), (0.1, "drop")])
    def test_a_5x_day_is_found(self, own: tuple[App, SimulatorApp], factor: float, direction: str) -> None:
        """A day restated upstream to 5x (or a tenth of) its usual spend is, after the next sync, the anomaly
        found: the integration's total with the truth's cost and a baseline near the day's usual spend."""
        app, sim = own
        day = TODAY - timedelta(days=2)
        usual = truth_total(sim, day, day)
        sim.add_fault(f"spike:day={day},factor={factor}")
        resync(app, sim, 1)
        found = anomalies(app, day - timedelta(days=6), TODAY)
        total = [a for a in found if a.scope == "integration"]
        assert [(a.date, a.direction) for a in total] == [(day, direction)]
        assert total[0].cost_usd == truth_total(sim, day, day)
        assert abs(total[0].baseline_usd - usual) < usual * Decimal("0.25")
        assert {a.date for a in found} == {day}  # workspaces and models of that day only
        assert (total[0].score > 3.5) if direction == "spike" else (total[0].score < -3.5)

    def test_a_restated_day_is_judged_again(self, own: tuple[App, SimulatorApp]) -> None:
        """A spike restated away upstream is gone after the next sync: from the command's judgement and from
        what `run` stored (and exported) for that day."""
        app, sim = own
        day = TODAY - timedelta(days=1)
        sim.add_fault(f"spike:day={day},factor=5")
        resync(app, sim, 1)
        evaluate_all(app, NOW)
        assert {a.date for a in anomalies(app, day, day)} == {day}
        assert stored_days(app) == {day}
        sim.add_fault(f"spike:day={day},factor=1")  # the day restated back to its usual numbers
        resync(app, sim, 1)
        assert anomalies(app, day, day) == [], anomalies(app, day, day)
        evaluate_all(app, NOW)
        assert stored_days(app) == set()

    def test_today_and_unsynced_days_are_not_judged(self, own: tuple[App, SimulatorApp]) -> None:
        """Today's partial bill, and days after the last sync, are never drops."""
        app, _ = own
        assert anomalies(app, TODAY, TODAY) == []
        with app.engine.connect() as conn:
            assert find(conn, TODAY, TODAY + timedelta(days=20), TODAY + timedelta(days=21)) == []


def stored_days(app: App) -> set[date]:
    with app.engine.connect() as conn:
        return set(conn.execute(select(spend_anomalies.c.day)).scalars())


def series(values: list[float], start: date = date(2026, 1, 5)) -> dict[date, Decimal]:
    return {start + timedelta(days=i): Decimal(str(v)) for i, v in enumerate(values)}


class TestJudge:
    def test_flat_series_does_not_alarm_at_a_cent(self) -> None:
        """A constant $100/day that moves to $101: no anomaly (the spread's 10 % floor)."""
        s = series([100.0] * 28 + [101.0])
        verdict = judge(s, date(2026, 2, 2), None)
        assert verdict is not None and verdict.direction is None

    def test_one_spike_in_the_window_does_not_hide_the_next(self) -> None:
        """A 6x day in the window leaves the baseline where it was: a later 5x day is still found."""
        values = [100.0 + (i % 3) for i in range(35)]
        values[20] = 600.0
        values[34] = 500.0
        s = series(values)
        verdict = judge(s, date(2026, 1, 5) + timedelta(days=34), None)
        assert verdict is not None and verdict.direction == "spike"
        assert Decimal(95) < verdict.baseline_usd < Decimal(105)

    def test_intermittent_and_short_series_are_not_judged(self) -> None:
        """Spend on fewer than three quarters of the window, or fewer than 14 known days: no judgement."""
        sparse = series([100.0 if i % 2 else 0.0 for i in range(28)] + [900.0])
        assert judge(sparse, date(2026, 2, 2), None) is None
        assert judge(series([100.0] * 29), date(2026, 2, 2), date(2026, 1, 22)) is None

    def test_small_moves_need_money_too(self) -> None:
        """A cent-sized key tripling is not worth an anomaly below anomaly_min_usd."""
        s = series([0.10] * 28 + [0.40])
        verdict = judge(s, date(2026, 2, 2), None, Thresholds(3.5, Decimal(1)))
        assert verdict is not None and verdict.direction is None and verdict.score > 3.5
        verdict = judge(s, date(2026, 2, 2), None, Thresholds(3.5, Decimal("0.1")))
        assert verdict is not None and verdict.direction == "spike"


class TestCommand:
    def env(self, app: App, tmp_path: Path) -> dict[str, str]:
        return {"COST_WORKER_DATABASE_URL": app.settings.effective_database_url,
                "COST_WORKER_DATA_DIR": str(tmp_path / "data"),
                "COST_WORKER_MASTER_KEY": master_key_text(app)}

    def test_json_fields(self, own: tuple[App, SimulatorApp], tmp_path: Path) -> None:
        """`anomalies --since --until --format json`: the documented fields, money exact, the spike found."""
        app, sim = own
        day = TODAY - timedelta(days=2)
        sim.add_fault(f"spike:day={day},factor=5")
        resync(app, sim, 1)
        result = CliRunner().invoke(cli, ["anomalies", "--since", str(day - timedelta(days=3)), "--until", str(day),
                                          "--format", "json"], env=self.env(app, tmp_path))
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        assert list(rows[0]) == ["date", "integration_id", "scope", "key", "cost_usd", "baseline_usd", "score",
                                 "direction"]
        assert rows[0]["date"] == str(day) and rows[0]["scope"] == "integration" and rows[0]["key"] == "total"
        assert Decimal(rows[0]["cost_usd"]) == truth_total(sim, day, day)
        assert rows[0]["direction"] == "spike" and isinstance(rows[0]["score"], float)

    def test_table_and_none(self, bill: tuple[App, SimulatorApp], tmp_path: Path) -> None:
        """Without anomalies the table says so; the future is noted as not judged; bad ranges exit 2."""
        app, _ = bill
        env = self.env(app, tmp_path)
        # (2026-02-06 has one: a single caller's key at 0.49x its usual, tests/watch/test_scopes.py measures them)
        result = CliRunner().invoke(cli, ["anomalies", "--since", "2026-02-08", "--until", "2026-02-14"], env=env)
        assert result.exit_code == 0 and result.stdout.strip() == "no spend anomalies between 2026-02-08 and 2026-02-14"
        result = CliRunner().invoke(cli, ["anomalies", "--since", "2026-02-07", "--until", "2026-02-01"], env=env)
        assert result.exit_code == 2 and "--until is before --since" in result.output
        result = CliRunner().invoke(cli, ["anomalies", "--since", "2026-02-01", "--until", "2026-02-07",
                                          "--integration", "9"], env=env)
        assert result.exit_code == 2 and "no integration 9" in result.output
