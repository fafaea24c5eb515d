"""`events import` and `reconcile` end to end through the CLI, on SQLite and PostgreSQL: a known bill
synced into cost/usage rows, events written from it in several tracker formats with drift injected
on chosen days, and the report naming exactly those rows and causes."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from billgen import Call, days, generate_calls, random_org
from click.testing import CliRunner, Result
from forking import require_fork
from seed import Record, seed_bill, write
from sqlalchemy import Engine, func, select

from worker.cli import cli
from worker.money import EXACT, decimal_text, money_sum, money_text
from worker.reconcile import TokenCounts
from worker.reconcile.store import count_events, events
from worker.vault import MasterKey

SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-4-5-20251001"
DATES = days(date(2026, 3, 1), 10)
D = {i + 1: day for i, day in enumerate(DATES)}
SINCE, UNTIL = str(D[1]), str(D[10])
WEB_SEARCH = {D[9]: Decimal("0.50")}


@pytest.fixture(scope="module")
def calls() -> list[Call]:
    return generate_calls(DATES, [SONNET, HAIKU])


@pytest.fixture
def env(db_url: str, tmp_path: Path, master_key: MasterKey) -> dict[str, str]:
    return {"COST_WORKER_DATABASE_URL": db_url, "COST_WORKER_MASTER_KEY": master_key.to_text(),
            "COST_WORKER_DATA_DIR": str(tmp_path / "data"), "COST_WORKER_LOG_FORMAT": "json"}


@pytest.fixture
def billed(engine: Engine, calls: list[Call]) -> int:
    return seed_bill(engine, calls, WEB_SEARCH)


def invoke(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(cli, list(args), env=env, input=stdin, catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def put(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def on(calls: list[Call], day: int, model: str) -> list[Call]:
    return [c for c in calls if c.at.date() == D[day] and c.model == model]


def reconcile_json(env: dict[str, str], *extra: str) -> tuple[Result, dict[str, Any]]:
    result = invoke(env, "reconcile", "--since", SINCE, "--until", UNTIL, "--format", "json", *extra)
    assert result.exit_code in (0, 3), result.output
    return result, json.loads(result.stdout)


def drifting(report: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    return {(r["date"], r["model"] or r["cost_type"]): r["causes"] for r in report["rows"] if r["status"] == "drift"}


class TestCleanImport:
    @pytest.mark.parametrize("fmt", ["anthropic", "jsonl", "csv", "fluxgate", "marginfront"])
    def test_clean_import_reconciles_to_zero(self, env: dict[str, str], billed: int, calls: list[Call],
                                             tmp_path: Path, fmt: str) -> None:
        """Every call tracked once, in any format: exit 0, every delta exactly zero."""
        path = put(tmp_path, f"events.{fmt}", write([Record.of(c) for c in calls], fmt))
        imported = invoke(env, "events", "import", path)
        assert imported.exit_code == 0, imported.output
        assert f"format {fmt}, source {fmt}" in imported.stdout
        assert f"read {len(calls)}  imported {len(calls)}  duplicates 0  bad 0" in imported.stdout
        result, report = reconcile_json(env, "--tolerance", "0")
        assert drifting(report) == {(str(D[9]), "web_search"): ["fees_not_tracked"]}
        tokens = [r for r in report["rows"] if r["cost_type"] == "tokens"]
        assert len(tokens) == 20 and all(r["cost_delta_usd"] == "0" for r in tokens)
        assert all(Decimal(r["billed_cost_usd"]) == Decimal(r["tracked_cost_usd"]) > 0 for r in tokens)
        expected = sum((c.cost() for c in calls), Decimal(0))
        assert Decimal(report["summary"]["billed_cost_usd"]) == expected + WEB_SEARCH[D[9]]
        assert Decimal(report["summary"]["tracked_cost_usd"]) == expected

    def test_accepted_fees_still_show_but_exit_zero(self, env: dict[str, str], billed: int, calls: list[Call],
                                                    tmp_path: Path) -> None:
        """A clean tracker and a web-search fee: exit 3 by default; `--accept fees_not_tracked` shows the fee row
        (drift, accepted) and exits 0, in every format; any other drift still exits 3."""
        invoke(env, "events", "import", put(tmp_path, "e.jsonl", write([Record.of(c) for c in calls], "jsonl")))
        assert reconcile_json(env)[0].exit_code == 3
        result, report = reconcile_json(env, "--accept", "fees_not_tracked")
        assert result.exit_code == 0
        fee = next(r for r in report["rows"] if r["cost_type"] == "web_search")
        assert (fee["status"], fee["causes"], fee["accepted"]) == ("drift", ["fees_not_tracked"], True)
        assert fee["cost_delta_usd"] == "-0.50"
        assert (report["summary"]["drift_rows"], report["summary"]["accepted_rows"]) == (1, 1)
        table = invoke(env, "reconcile", "--since", SINCE, "--until", UNTIL, "--accept", "fees_not_tracked")
        assert table.exit_code == 0
        assert "drift (accepted)  fees_not_tracked" in table.stdout and "1 of them accepted" in table.stdout
        csv_out = invoke(env, "reconcile", "--since", SINCE, "--until", UNTIL, "--accept", "fees_not_tracked",
                         "--format", "csv")
        assert csv_out.exit_code == 0 and ",drift,fees_not_tracked,yes" in csv_out.stdout
        # Another cause beside it still fails the run, accepted or not: here a day's calls are lost.
        lost = put(tmp_path, "lost.jsonl", write([Record.of(c) for c in calls if c.at.date() == D[3]], "jsonl"))
        invoke(env, "events", "import", lost, "--source", "partial")
        result, report = reconcile_json(env, "--source", "partial", "--accept", "fees_not_tracked")
        assert result.exit_code == 3 and report["summary"]["accepted_rows"] == 1
        result, _ = reconcile_json(env, "--source", "partial", "--accept", "fees_not_tracked", "--accept", "untracked")
        assert result.exit_code == 0

    def test_without_fees_exit_zero_and_table_summary(self, env: dict[str, str], engine: Engine,
                                                      calls: list[Call], tmp_path: Path) -> None:
        """No drift at all: exit 0; the table ends with the summary line (bill, tracked, unexplained)."""
        seed_bill(engine, calls)
        invoke(env, "events", "import", put(tmp_path, "e.jsonl", write([Record.of(c, with_cost=False) for c in calls],
                                                                          "jsonl")))
        result = invoke(env, "reconcile", "--since", SINCE, "--until", UNTIL)
        assert result.exit_code == 0, result.output
        total = sum((c.cost() for c in calls), Decimal(0))
        last = result.stdout.strip().splitlines()[-1]
        exact = f"{total:,f}".rstrip("0")  # every digit of the bill, grouped, never rounded
        assert last.startswith(f"billed ${exact}  tracked ${exact}") and "unexplained $0.00" in last


class TestInjectedDrift:
    DAY_FORMAT = {1: "anthropic", 2: "csv", 3: "fluxgate", 4: "jsonl", 5: "anthropic", 6: "jsonl", 7: "jsonl",
                  8: "marginfront", 9: "csv", 10: "anthropic"}

    def records(self, calls: list[Call]) -> dict[str, list[Record]]:
        files: dict[str, list[Record]] = {fmt: [] for fmt in set(self.DAY_FORMAT.values())}
        for call in calls:
            day = next(n for n, d in D.items() if d == call.at.date())
            out = files[self.DAY_FORMAT[day]]
            index = int(call.id.rsplit("_", 1)[1])
            sonnet = call.model == SONNET
            if day == 1 and index < 5:  # the same line logged twice: same id, stored once
                out.append(Record.of(call))
            if day == 2 and sonnet and index % 5 == 0:  # 20% lost
                continue
            if day == 3 and sonnet:  # x4, re-sent with fresh tracking ids
                out += [Record.of(call, id=f"{call.id}#{n}") for n in range(1, 4)]
            if day == 4 and sonnet:  # cache writes priced at zero
                out.append(Record.of(call, cost=call.cost(zero_cache_writes=True)))
                continue
            if day == 5 and not sonnet:  # cache writes not tracked at all
                t = call.tokens
                out.append(Record.of(call, with_cost=False, tokens=TokenCounts(t.uncached_input, t.output, t.cache_read)))
                continue
            if day == 7 and sonnet:  # local time written as UTC: 8 h early
                out.append(Record.of(call, at=call.at - timedelta(hours=8)))
                continue
            if day == 10 and not sonnet:  # nothing tracked
                continue
            out.append(Record.of(call))
        extra = on(calls, 8, SONNET)[:5]
        files["marginfront"] += [Record.of(c, id=f"opus-{c.id}", model="claude-opus-4-6") for c in extra]
        files["marginfront"] += [Record.of(c, id=f"acme-{c.id}", model="acme-llm-1") for c in extra]
        return files

    @pytest.fixture
    def imported(self, env: dict[str, str], billed: int, calls: list[Call], tmp_path: Path) -> Result:
        paths = [put(tmp_path, f"tracked.{fmt}", write(records, fmt)) for fmt, records in
                 sorted(self.records(calls).items())]
        result = invoke(env, "events", "import", "--source", "tracker", *paths)
        assert result.exit_code == 0, result.output
        return result

    def test_report_names_exactly_the_injected_rows_and_causes(self, env: dict[str, str], imported: Result) -> None:
        """Each injected drift, and nothing else, is named with its cause; exit 3."""
        result, report = reconcile_json(env)
        assert result.exit_code == 3
        assert drifting(report) == {
            (str(D[2]), SONNET): ["missing_events"],
            (str(D[3]), SONNET): ["duplicated_events"],
            (str(D[4]), SONNET): ["cache_pricing"],
            (str(D[5]), HAIKU): ["cache_writes_missing"],
            (str(D[6]), SONNET): ["day_boundary"],
            (str(D[7]), SONNET): ["day_boundary"],
            (str(D[8]), "claude-opus-4-6"): ["not_billed"],
            (str(D[8]), "acme-llm-1"): ["not_billed", "unmatched_model"],
            (str(D[9]), "web_search"): ["fees_not_tracked"],
            (str(D[10]), HAIKU): ["untracked"],
        }
        assert report["summary"]["unexplained_usd"] == "0"
        assert "unexplained $0.00 " in result.stderr  # the summary line, for people, beside the JSON

    def test_json_rows_carry_the_contract_fields(self, env: dict[str, str], imported: Result,
                                                 calls: list[Call]) -> None:
        """Money as exact decimal strings; the untracked row's delta is its whole bill."""
        _, report = reconcile_json(env)
        row = next(r for r in report["rows"] if r["date"] == str(D[10]) and r["model"] == HAIKU)
        assert {"date", "model", "billed_cost_usd", "tracked_cost_usd", "cost_delta_usd", "status", "causes"} <= set(row)
        billed = sum((c.cost() for c in on(calls, 10, HAIKU)), Decimal(0))
        assert (Decimal(row["billed_cost_usd"]), row["tracked_cost_usd"]) == (billed, "0")
        assert Decimal(row["cost_delta_usd"]) == -billed

    def test_duplicates_are_counted_at_import(self, imported: Result) -> None:
        """The re-logged lines of day 1 are reported as duplicates, not stored twice."""
        assert "duplicates 10" in imported.stdout  # 5 calls x 2 models, each logged twice

    def test_unmatched_models_are_listed(self, imported: Result) -> None:
        """A model id no bill or Claude id matches is listed with its count."""
        assert "unmatched model ids: acme-llm-1 (5)" in imported.stdout
        assert "claude-opus-4-6 (" not in imported.stdout

    def test_csv_output_and_summary_on_stderr(self, env: dict[str, str], imported: Result) -> None:
        """CSV on stdout (header + rows), the summary line on stderr."""
        result = invoke(env, "reconcile", "--since", SINCE, "--until", UNTIL, "--format", "csv")
        assert result.exit_code == 3
        lines = result.stdout.splitlines()
        assert lines[0].startswith("date,model,key,cost_type") and len(lines) > 20
        assert result.stderr.startswith("billed $")

    def test_tolerance_too_wide_to_see_drift(self, env: dict[str, str], imported: Result) -> None:
        """Only rows beyond the tolerance count: at 1000% only unbilled rows (no bill to be a share of) drift."""
        _, report = reconcile_json(env, "--tolerance", "1000")
        assert set(drifting(report)) == {(str(D[8]), "claude-opus-4-6"), (str(D[8]), "acme-llm-1")}


class TestImportErrors:
    LINES = [
        '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4-6", "input_tokens": 1, "event_id": "a"}',
        "not json",
        '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4-6", "input_tokens": -1, "event_id": "b"}',
        '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4-6", "input_tokens": 1, "event_id": "c"}',
    ]

    def test_bad_lines_are_reported_with_line_numbers(self, env: dict[str, str], engine: Engine,
                                                      tmp_path: Path) -> None:
        """Bad rows are counted and shown with their line; the good rows are stored; exit 0."""
        result = invoke(env, "events", "import", put(tmp_path, "e.jsonl", "\n".join(self.LINES) + "\n"))
        assert result.exit_code == 0, result.output
        assert "read 4  imported 2  duplicates 0  bad 2" in result.stdout
        assert "bad line 2: invalid JSON" in result.stdout
        assert "bad line 3: input_tokens is negative: -1" in result.stdout
        with engine.connect() as conn:
            assert count_events(conn, "jsonl") == 2

    def test_strict_makes_a_bad_row_fatal_for_its_file(self, env: dict[str, str], engine: Engine,
                                                       tmp_path: Path) -> None:
        """--strict: exit 2, nothing of the bad file stored (even rows before it); other files still are."""
        bad = put(tmp_path, "bad.jsonl", "\n".join(self.LINES) + "\n")
        good = put(tmp_path, "good.jsonl", self.LINES[0] + "\n")
        result = invoke(env, "events", "import", "--strict", "--source", "s", bad, good)
        assert result.exit_code == 2
        assert "bad.jsonl: line 2: invalid JSON" in result.stderr and "nothing from this file" in result.stderr
        with engine.connect() as conn:
            assert count_events(conn, "s") == 1

    def test_stdin(self, env: dict[str, str], engine: Engine) -> None:
        """`-` reads stdin."""
        result = invoke(env, "events", "import", "-", "--source", "piped", stdin=self.LINES[0] + "\n")
        assert result.exit_code == 0, result.output
        assert "<stdin>: format jsonl, source piped" in result.stdout
        with engine.connect() as conn:
            assert count_events(conn, "piped") == 1

    def test_same_file_twice_is_all_duplicates(self, env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
        """Ids are unique per source: importing again stores nothing new and counts the sightings."""
        path = put(tmp_path, "e.jsonl", self.LINES[0] + "\n" + self.LINES[3] + "\n")
        invoke(env, "events", "import", path)
        again = invoke(env, "events", "import", path)
        assert "read 2  imported 0  duplicates 2  bad 0" in again.stdout
        with engine.connect() as conn:
            assert conn.execute(select(func.sum(events.c.seen_count))).scalar_one() == 4

    @pytest.mark.parametrize(("text", "message"), [
        ('{"model": "m", "timestamp": 1, "input_tokens": 1, "output_tokens": 1}\n', "ambiguous format"),
        ("hello\n", "neither JSON nor a CSV header"),
        ("", "empty"),
    ])
    def test_undetectable_input_exits_2(self, env: dict[str, str], tmp_path: Path, text: str, message: str) -> None:
        """Ambiguous, unknown or empty input: exit 2 with one line saying why."""
        result = invoke(env, "events", "import", put(tmp_path, "e.txt", text))
        assert result.exit_code == 2 and message in result.stderr

    def test_missing_file_and_unknown_format(self, env: dict[str, str], tmp_path: Path) -> None:
        """An unreadable file and an unknown --format are usage errors (exit 2)."""
        assert invoke(env, "events", "import", str(tmp_path / "nope.jsonl")).exit_code == 2
        path = put(tmp_path, "e.jsonl", self.LINES[0] + "\n")
        assert invoke(env, "events", "import", "--format", "xml", path).exit_code == 2

    def test_explicit_format_overrides_detection(self, env: dict[str, str], tmp_path: Path) -> None:
        """An ambiguous record imports with --format."""
        path = put(tmp_path, "e.jsonl", '{"model": "m", "timestamp": 1, "input_tokens": 1, "output_tokens": 1}\n')
        result = invoke(env, "events", "import", "--format", "cmdrdata", path)
        assert result.exit_code == 0 and "imported 1" in result.stdout


class TestModelsAndOptions:
    def test_models_alias_table_overrides(self, env: dict[str, str], billed: int, calls: list[Call],
                                          tmp_path: Path) -> None:
        """[models] maps a tracker's own names to bill ids: not listed as unmatched, reconciled clean."""
        names = {SONNET: "prod-sonnet", HAIKU: "Claude Haiku (fast)"}
        config = put(tmp_path, "config.toml", '[models]\n"prod-sonnet" = "claude-sonnet-4-6"\n'
                                              '"claude haiku (fast)" = "claude-haiku-4-5-20251001"\n')
        path = put(tmp_path, "e.jsonl", write([Record.of(c, model=names[c.model]) for c in calls], "jsonl"))
        without = invoke(env, "events", "import", "--source", "plain", path)
        assert "unmatched model ids: " in without.stdout and "prod-sonnet (480)" in without.stdout
        result = invoke(env, "--config", config, "events", "import", path)
        assert result.exit_code == 0, result.output
        assert "unmatched" not in result.stdout
        rec = invoke(env, "--config", config, "reconcile", "--since", SINCE, "--until", UNTIL, "--source", "jsonl",
                     "--format", "json")
        assert drifting(json.loads(rec.stdout)) == {(str(D[9]), "web_search"): ["fees_not_tracked"]}

    def test_several_sources_need_source(self, env: dict[str, str], billed: int, calls: list[Call],
                                         tmp_path: Path) -> None:
        """Two trackers of the same calls are never silently added up."""
        path = put(tmp_path, "e.jsonl", write([Record.of(c) for c in calls], "jsonl"))
        invoke(env, "events", "import", "--source", "a", path)
        invoke(env, "events", "import", "--source", "b", path)
        result = invoke(env, "reconcile", "--since", SINCE, "--until", UNTIL)
        assert result.exit_code == 2 and "several sources in this period (a, b)" in result.stderr
        result, report = reconcile_json(env, "--source", "a", "--source", "b")
        assert drifting(report)[(str(D[1]), SONNET)] == ["duplicated_events"]

    def test_by_workspace(self, env: dict[str, str], billed: int, calls: list[Call], tmp_path: Path) -> None:
        """Per workspace when events carry it: a workspace that tracks nothing shows as untracked."""
        path = put(tmp_path, "e.jsonl", write([Record.of(c) for c in calls if c.workspace_id == "wrkspc_0"], "jsonl"))
        invoke(env, "events", "import", path)
        _, report = reconcile_json(env, "--by", "workspace", "--since", SINCE, "--until", SINCE)
        rows = {(r["model"], r["key"]): (r["status"], r["causes"]) for r in report["rows"]}
        assert rows[(SONNET, "wrkspc_0")] == ("ok", [])
        assert rows[(SONNET, "wrkspc_1")] == ("drift", ["untracked"])

    @pytest.mark.parametrize("args", [
        ["--since", "2026-03-05", "--until", "2026-03-01"],
        ["--since", "2026-03-01", "--until", "2026-03-05", "--tolerance", "-1"],
        ["--since", "2026-03-01", "--until", "2026-03-05", "--tolerance", "lots"],
        ["--since", "March", "--until", "2026-03-05"],
        ["--since", "2026-03-01", "--until", "2026-03-05", "--integration", "999"],
        ["--since", "2026-03-01", "--until", "2026-03-05", "--by", "customer"],
        ["--since", "2026-03-01", "--until", "2026-03-05", "--accept", "fees"],
    ])
    def test_bad_usage_exits_2(self, env: dict[str, str], billed: int, args: list[str]) -> None:
        """Bad dates, tolerance, integration, grouping or accepted cause: exit 2."""
        assert invoke(env, "reconcile", *args).exit_code == 2

    def test_integration_filter(self, env: dict[str, str], billed: int, calls: list[Call], tmp_path: Path) -> None:
        """--integration reads that integration's bill only."""
        invoke(env, "events", "import", put(tmp_path, "e.jsonl", write([Record.of(c) for c in calls], "jsonl")))
        _, report = reconcile_json(env, "--integration", str(billed))
        assert set(drifting(report)) == {(str(D[9]), "web_search")}


class TestGeneratedShift:
    @pytest.mark.parametrize("seed", [1, 4, 9])
    def test_day_boundary_through_the_database(self, env: dict[str, str], engine: Engine, tmp_path: Path,
                                               seed: int) -> None:
        """A generated organization (batch and long-context shares, mixes changing daily) synced into cost and
        usage rows, its tracker 8 h ahead on one day and writing no costs: both rows name day_boundary."""
        dates = days(date(2026, 3, 1), 3)
        calls = random_org(seed, dates)
        seed_bill(engine, calls)
        records = [Record.of(c, with_cost=False, at=c.at + timedelta(hours=8))
                   if c.at.date() == dates[1] and c.at.hour >= 16 else Record.of(c, with_cost=False) for c in calls]
        invoke(env, "events", "import", put(tmp_path, "e.jsonl", write(records, "jsonl")))
        _, report = reconcile_json(env, "--since", str(dates[0]), "--until", str(dates[2]))
        rows = {(r["date"], r["model"]): r for r in report["rows"]}
        for model in {c.model for c in calls}:
            first, second = rows[(str(dates[1]), model)], rows[(str(dates[2]), model)]
            assert first["causes"] == ["day_boundary"] or first["status"] == "ok", (model, first["causes"])
            assert second["causes"] == ["day_boundary"] or second["status"] == "ok", (model, second["causes"])
            assert "day_boundary" in first["causes"] + second["causes"]
            assert rows[(str(dates[0]), model)]["status"] == "ok"


class TestOutputs:
    LONG = Decimal("123456.781234567890123456789012")  # 30 significant digits, beyond the default context's 28

    def test_money_is_exact_in_every_format(self, env: dict[str, str], engine: Engine, calls: list[Call],
                                            tmp_path: Path) -> None:
        """A 30-digit fee and the bill around it: every amount, delta and total with all its digits (JSON, table, CSV)."""
        seed_bill(engine, calls, {D[9]: self.LONG})
        invoke(env, "events", "import", put(tmp_path, "e.jsonl", write([Record.of(c) for c in calls], "jsonl")))
        _, report = reconcile_json(env)
        fee = next(r for r in report["rows"] if r["cost_type"] == "web_search")
        assert (fee["billed_cost_usd"], fee["cost_delta_usd"]) == (str(self.LONG), f"-{self.LONG}")
        tracked = money_sum(c.cost() for c in calls)
        billed = EXACT.add(tracked, self.LONG)
        summary = report["summary"]
        assert (Decimal(summary["billed_cost_usd"]), Decimal(summary["tracked_cost_usd"])) == (billed, tracked)
        assert Decimal(summary["delta_usd"]) == self.LONG.copy_negate() and summary["billed_cost_usd"] == decimal_text(billed)
        table = invoke(env, "reconcile", "--since", SINCE, "--until", UNTIL).stdout
        assert "-123,456.781234567890123456789012" in table
        assert table.strip().splitlines()[-1].startswith(f"billed ${money_text(billed, grouping=True)}  ")
        rows = list(csv.DictReader(io.StringIO(invoke(env, "reconcile", "--since", SINCE, "--until", UNTIL,
                                                      "--format", "csv").stdout)))
        assert {r["billed_cost_usd"] for r in rows if r["cost_type"] == "web_search"} == {str(self.LONG)}

    def test_csv_cells_cannot_run_as_formulas(self, env: dict[str, str], engine: Engine, tmp_path: Path) -> None:
        """Workspace ids and model ids that start like formulas are written with a leading `'` in the CSV;
        negative deltas stay numbers; JSON keeps every id as it is; the table shows ids escaped."""
        workspace = '=HYPERLINK("http://evil","x")'
        day_calls = [replace(c, workspace_id=workspace) for c in generate_calls([D[1]], [SONNET], per_day=4)]
        seed_bill(engine, day_calls)
        records = [Record.of(c) for c in day_calls[1:]]  # one call lost: negative deltas
        records += [Record.of(day_calls[0], id="x1", model="-2+3"), Record.of(day_calls[0], id="x2", model="+cmd"),
                    Record.of(day_calls[0], id="x3", model="evil\x1b]0;x\x07")]
        invoke(env, "events", "import", put(tmp_path, "e.jsonl", write(records, "jsonl")))
        args = ("reconcile", "--since", str(D[1]), "--until", str(D[1]), "--by", "workspace")
        out = invoke(env, *args, "--format", "csv").stdout
        rows = list(csv.DictReader(io.StringIO(out)))
        assert {r["key"] for r in rows} == {"'" + workspace}
        assert {"'-2+3", "'+cmd", "evil\x1b]0;x\x07"} <= {r["model"] for r in rows}
        tokens = next(r for r in rows if r["model"] == SONNET)
        assert tokens["cost_delta_usd"].startswith("-") and Decimal(tokens["cost_delta_usd"]) < 0  # a number, unquoted
        assert Decimal(tokens["cost_delta_pct"]) < 0
        _, report = reconcile_json(env, "--since", str(D[1]), "--until", str(D[1]), "--by", "workspace")
        assert {r["key"] for r in report["rows"]} == {workspace}
        assert {"-2+3", "+cmd"} <= {r["model"] for r in report["rows"]}
        table = invoke(env, *args).stdout
        assert "\x1b" not in table and "evil\\x1b]0;x\\x07" in table


class TestParsingProcess:
    """`events import` parses in a forked process when it can; the result is the same either way."""

    @pytest.fixture(params=[True, False], ids=["forked", "in-process"])
    def forks(self, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
              forked_pids: list[int]) -> Iterator[list[int]]:
        from worker.reconcile import importer

        if request.param:
            require_fork()
        monkeypatch.setattr(importer, "can_fork", lambda: request.param)
        yield forked_pids
        assert bool(forked_pids) is request.param

    def test_file_and_stdin_import_the_same_events(self, env: dict[str, str], engine: Engine, calls: list[Call],
                                                   tmp_path: Path, forks: list[int]) -> None:
        """Counts, bad-line samples, duplicates, unmatched models and the stored rows do not depend on the fork."""
        lines = write([Record.of(c) for c in calls[:300]], "jsonl").splitlines()
        lines[10] = "{broken"
        lines += lines[:50]  # logged twice (the broken line too)
        lines.append(json.dumps({"timestamp": "2026-03-02T00:00:00Z", "model": "acme-llm-1", "event_id": "x"}))
        path = put(tmp_path, "e.jsonl", "\n".join(lines) + "\n")
        result = invoke(env, "events", "import", "--source", "file", path)
        assert result.exit_code == 0, result.output
        assert "read 351  imported 300  duplicates 49  bad 2" in result.stdout
        assert "bad line 11: invalid JSON" in result.stdout and "bad line 311: invalid JSON" in result.stdout
        assert "unmatched model ids: acme-llm-1 (1)" in result.stdout
        piped = invoke(env, "events", "import", "-", "--source", "stdin", stdin="\n".join(lines) + "\n")
        assert piped.stdout.replace("<stdin>", "path").replace("stdin", "file") == \
            result.stdout.replace(path, "path")
        e = events.c
        with engine.connect() as conn:
            by_source = {
                source: sorted(tuple(r) for r in conn.execute(
                    select(e.event_id, e.occurred_at, e.raw_model, e.model, e.cache_read_tokens, e.cost_usd,
                           e.workspace_id, e.seen_count).where(e.source == source)))
                for source in ("file", "stdin")
            }
        assert by_source["file"] == by_source["stdin"] and len(by_source["file"]) == 300
        assert sum(r[-1] for r in by_source["file"]) == 349
        by_id = {r[0]: r for r in by_source["file"]}
        first = calls[0]
        assert by_id[first.id][1:] == (first.at, first.model, first.model, first.tokens.cache_read, first.cost(),
                                       first.workspace_id, 2)

    def test_strict_bad_row_stores_nothing(self, env: dict[str, str], engine: Engine, calls: list[Call],
                                           tmp_path: Path, forks: list[int]) -> None:
        """--strict with a bad row near the end of a long file: exit 2, nothing from it stored."""
        lines = write([Record.of(c) for c in calls], "jsonl").splitlines()
        lines[-3] = '{"timestamp": "2026-03-02T00:00:00Z"}'
        result = invoke(env, "events", "import", "--strict", put(tmp_path, "e.jsonl", "\n".join(lines) + "\n"))
        assert result.exit_code == 2
        assert f"line {len(lines) - 2}: missing model" in result.stderr
        with engine.connect() as conn:
            assert count_events(conn) == 0
