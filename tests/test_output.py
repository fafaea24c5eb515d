"""What leaves the program: money with every digit, CSV that no spreadsheet runs, text that cannot
drive a terminal or forge a log line (issue 10, items 9, 10 and 11). Units first, then the commands
that print: `report`, `connect`, `integrations list`, `sync-now`, and text logs."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import respx
from click.testing import CliRunner, Result
from rich.console import Console
from sqlalchemy import Engine

from tests.simulated import make_sim, mount
from worker.api.models import CostRow, UsageRow
from worker.cli import cli
from worker.csvsafe import csv_cell, csv_writer
from worker.logs import setup_logging
from worker.money import EXACT, decimal_text, money_sum, money_text
from worker.simulator import SimulatorHandle
from worker.storage import repo
from worker.storage.rows import cost_table_rows, usage_table_rows
from worker.sync.progress import BarProgress
from worker.textsafe import clean, has_control, printable
from worker.vault import MasterKey

BASE = "https://api.test"
TODAY = datetime.now(UTC).date()
NOW = datetime(2026, 3, 20, tzinfo=UTC)
LONG = Decimal("123456.781234567890123456789012")  # 30 significant digits: more than the default context's 28
CLEAR = "\x1b[2J"  # erase the screen
OSC_TITLE = "\x1b]0;pwned\x07"  # set the window title
FORMULAS = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"]


class TestMoney:
    @pytest.mark.parametrize(("value", "people", "data"), [
        (LONG, "123456.781234567890123456789012", "123456.781234567890123456789012"),
        (Decimal("18.432075"), "18.432075", "18.432075"),
        (Decimal("12.5"), "12.50", "12.5"),
        (Decimal(3), "3.00", "3"),
        (Decimal("1E+3"), "1000.00", "1000"),
        (Decimal("0.00"), "0.00", "0"),
        (Decimal("-0"), "0.00", "0"),
        (Decimal("-0.50"), "-0.50", "-0.50"),
        (Decimal("1.50E-20"), "0.000000000000000000015", "0.0000000000000000000150"),
        (Decimal("98765432109876543210987654321.5"), "98765432109876543210987654321.50",
         "98765432109876543210987654321.5"),
    ])
    def test_text_keeps_every_digit(self, value: Decimal, people: str, data: str) -> None:
        """`money_text` (people: at least 2 decimals) and `decimal_text` (data) never round and never show an exponent."""
        assert money_text(value) == people
        assert decimal_text(value) == data
        assert Decimal(money_text(value)) == value == Decimal(decimal_text(value))

    def test_grouping(self) -> None:
        """Thousands separated, digits kept."""
        assert money_text(Decimal("1234567.891234567890123456789"), grouping=True) == "1,234,567.891234567890123456789"

    def test_sum_is_exact_where_sum_rounds(self) -> None:
        """Python's `sum()` rounds to 28 digits; `money_sum` and EXACT do not."""
        assert sum([LONG, LONG], Decimal(0)) != EXACT.add(LONG, LONG)  # the bug this module exists for
        assert money_sum([LONG, LONG]) == Decimal("246913.562469135780246913578024")


class TestCsvCell:
    @pytest.mark.parametrize("text", FORMULAS)
    def test_formula_text_is_neutralized(self, text: str) -> None:
        """OWASP's rule: text starting with = + - @ tab or CR gets a leading single quote."""
        assert csv_cell(text) == "'" + text

    @pytest.mark.parametrize("value", ["-1.5", "+3", "-0.000012", "1e-3", "-2E+5", "12", Decimal("-1.5"), -7, 2.5,
                                       "claude-sonnet-4-6", "", "a=b", "2026-03-01"])
    def test_numbers_and_plain_text_are_left_alone(self, value: object) -> None:
        """Numbers stay numbers (negative ones too: they are no formula), other text is untouched."""
        assert csv_cell(value) == value

    def test_writer_reads_back(self) -> None:
        """What `csv_writer` writes, a CSV reader reads as the quoted-text cells (and numbers as they were)."""
        out = io.StringIO()
        writer = csv_writer(out, ["model", "cost"])
        writer.writeheader()
        for text in FORMULAS:
            writer.writerecord({"model": text, "cost": "-1.5"})
        rows = list(csv.reader(io.StringIO(out.getvalue())))
        assert rows[0] == ["model", "cost"]
        assert [r[0] for r in rows[1:]] == ["'" + t for t in FORMULAS]
        assert {r[1] for r in rows[1:]} == {"-1.5"}


class TestPrintable:
    @pytest.mark.parametrize(("text", "shown"), [
        (f"Acme{CLEAR}", "Acme\\x1b[2J"),
        (f"Acme{OSC_TITLE}", "Acme\\x1b]0;pwned\\x07"),
        ("two\nlines\r", "two\\x0alines\\x0d"),
        ("tab\there", "tab\\x09here"),
        ("del\x7f c1\x9b", "del\\x7f c1\\x9b"),
        ("bidi\u202egnp.exe", "bidi\\u202egnp.exe"),
        ("Ünïcode — ok", "Ünïcode — ok"),
    ])
    def test_control_characters_become_visible(self, text: str, shown: str) -> None:
        """Every control character is written as an escape; everything else is unchanged."""
        assert printable(text) == shown
        assert has_control(text) == (text != shown)

    def test_clean_drops_sequences(self) -> None:
        """What is stored from the API: escape sequences dropped, other controls a space."""
        assert clean(f" Acme{CLEAR}\x1b[H Corp{OSC_TITLE}\n") == "Acme Corp"
        assert clean("A\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "A link"


# --- the commands ------------------------------------------------------------------------------------

SIM = make_sim(seed=3, today=TODAY, base_url=BASE)


@pytest.fixture
def sim() -> Iterator[SimulatorHandle]:
    SIM.reset()  # faults, names given by a test and recorded requests
    with respx.mock(assert_all_called=False) as router:
        mount(SIM, router)
        yield SIM


@pytest.fixture
def env(db_url: str, tmp_path: Path, master_key: MasterKey) -> dict[str, str]:
    return {"COST_WORKER_DATABASE_URL": db_url, "COST_WORKER_MASTER_KEY": master_key.to_text(),
            "COST_WORKER_DATA_DIR": str(tmp_path / "data"), "COST_WORKER_API_BASE_URL": BASE,
            "COST_WORKER_REQUESTS_PER_MINUTE": "6000", "COST_WORKER_BURST": "1000", "COST_WORKER_LOG_FORMAT": "json"}


def invoke(env: dict[str, str], *args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), env={**env, "ANTHROPIC_ADMIN_KEY": SIM.keys[0]},
                                catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def seed_costs(engine: Engine, label: str, rows: list[tuple[date, str | None, Decimal]]) -> int:
    """One integration with these (day, model, USD) cost rows (model None: a web-search fee) and their usage."""
    days = sorted({day for day, _, _ in rows})
    costs = [CostRow(day=day, workspace_id=None, description=f"{model} {i}", cost_type="tokens" if model else "web_search",
                     model=model, token_type="output_tokens" if model else None, service_tier=None, context_window=None,
                     inference_geo=None, amount_usd=amount, currency="USD") for i, (day, model, amount) in enumerate(rows)]
    usage = [UsageRow(day=day, workspace_id=None, model=model, service_tier="standard", context_window="0-200k",
                      api_key_id=None, inference_geo=None, uncached_input_tokens=1000, cache_read_input_tokens=0,
                      cache_creation_5m_input_tokens=0, cache_creation_1h_input_tokens=0, output_tokens=10,
                      web_search_requests=0) for day, model, _ in rows if model]
    with engine.begin() as conn:
        iid = repo.insert_integration(
            conn, label=label, tier="pro", organization_id="org-1", organization_name="Org", key_ciphertext=b"x",
            key_id="k", key_hint="sk-ant-admin01-...abcd", status="ok", created_at=NOW, updated_at=NOW,
            backfill_start=days[0], backfill_end=days[-1], cost_checkpoint=days[-1], usage_checkpoint=days[-1],
            backfill_done=True)
        repo.replace_cost_days(conn, iid, days, cost_table_rows(iid, costs), NOW)
        repo.replace_usage_days(conn, iid, days, usage_table_rows(iid, usage), NOW)
    return iid


DAY = date(2026, 3, 2)


class TestReport:
    def test_money_is_exact_in_every_format(self, env: dict[str, str], engine: Engine) -> None:
        """A stored 30-digit amount is printed with all its digits in the table, CSV and JSON, and the
        table's total is their exact sum (the default context would round both to 28 digits)."""
        seed_costs(engine, "t", [(DAY, "claude-sonnet-4-6", LONG), (DAY, "claude-haiku-4-5", LONG),
                                 (DAY, None, Decimal("0.000000000000000000000001"))])
        args = ("report", "--since", str(DAY), "--until", str(DAY))
        table = invoke(env, *args).stdout
        assert table.count(" 123456.781234567890123456789012 ") == 2
        total = next(line for line in table.splitlines() if line.startswith("total"))
        assert total.split()[-1] == "246913.562469135780246913578025"  # 2 x LONG + 1e-24, exactly
        rows = json.loads(invoke(env, *args, "--format", "json").stdout)
        assert {r["cost_usd"] for r in rows} == {"123456.781234567890123456789012", "0.000000000000000000000001"}
        cells = list(csv.DictReader(io.StringIO(invoke(env, *args, "--format", "csv").stdout)))
        assert sorted(Decimal(r["cost_usd"]) for r in cells) == sorted([LONG, LONG, Decimal("1E-24")])

    def test_csv_cells_cannot_run_as_formulas(self, env: dict[str, str], engine: Engine) -> None:
        """Models that start like formulas are written quoted with a leading `'`; JSON keeps them as they are."""
        seed_costs(engine, "t", [(DAY, model, Decimal("1.5")) for model in FORMULAS])
        args = ("report", "--since", str(DAY), "--until", str(DAY))
        cells = list(csv.DictReader(io.StringIO(invoke(env, *args, "--format", "csv").stdout)))
        assert sorted(r["model"] for r in cells) == sorted("'" + m for m in FORMULAS)
        assert {r["cost_usd"] for r in cells} == {"1.50"}
        rows = json.loads(invoke(env, *args, "--format", "json").stdout)
        assert sorted(r["model"] for r in rows) == sorted(FORMULAS)

    def test_table_escapes_control_characters(self, env: dict[str, str], engine: Engine) -> None:
        """A model id holding an escape sequence is shown escaped, never as raw bytes."""
        seed_costs(engine, "t", [(DAY, f"claude{CLEAR}{OSC_TITLE}", Decimal(1))])
        table = invoke(env, "report", "--since", str(DAY), "--until", str(DAY)).stdout
        assert "\x1b" not in table and "\x07" not in table and "claude\\x1b[2J\\x1b]0;pwned\\x07" in table


class TestLabels:
    def test_label_with_a_newline_is_refused_before_any_request(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """`--label` must be one line without control characters: exit 2, nothing sent, nothing stored."""
        for label in ("prod\nsecond line", f"prod{CLEAR}", "tab\tbed"):
            result = invoke(env, "connect", "--label", label)
            assert result.exit_code == 2 and "--label must be one line" in result.output
        assert sim.requests == []
        assert json.loads(invoke(env, "integrations", "list", "--format", "json").stdout) == []

    def test_hostile_organization_name(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """An organization name with ESC [2J and an OSC sequence: the default label is stored clean, the raw
        name never reaches the terminal (test-connection, connect, integrations list), JSON keeps it escaped."""
        hostile = f"Evil{CLEAR} Corp{OSC_TITLE}\nfake line"
        sim.add_fault("rename", name=hostile)
        for args in (("test-connection",), ("connect",)):
            result = invoke(env, *args)
            assert result.exit_code == 0, result.output
            assert "\x1b" not in result.output and "\x07" not in result.output
        (item,) = json.loads(invoke(env, "integrations", "list", "--format", "json").stdout)
        assert item["label"] == "Anthropic - Evil Corp fake line"
        assert item["organization_name"] == hostile  # stored as the API said; shown escaped
        table = invoke(env, "integrations", "list").stdout
        assert "Anthropic - Evil Corp fake line" in table and "\x1b" not in table

    def test_stored_labels_are_shown_escaped(self, env: dict[str, str], engine: Engine) -> None:
        """A label stored before labels were checked is escaped in the table (and in sync-now's lines)."""
        seed_costs(engine, f"old{CLEAR}\nlabel", [(DAY, "claude-sonnet-4-6", Decimal(1))])
        table = invoke(env, "integrations", "list").stdout
        assert "old\\x1b[2J\\x0alabel" in table and "\x1b" not in table
        assert len(table.strip().splitlines()) == 2  # header + one row: no forged line


class TestProgressBar:
    def test_labels_and_messages_are_escaped(self) -> None:
        """`sync-now`'s lines on a terminal show a stored label and an API error message escaped."""
        out = io.StringIO()
        label = f"[1] old{CLEAR}"
        with BarProgress(Console(file=out, force_terminal=False, color_system=None, width=200)) as bars:
            bars.start(label, "backfill", 3)
            shown = bars.lines()
            bars.finish(label, False, f"HTTP 500: {OSC_TITLE}\nforged")
        assert any(line.startswith("[1] old\\x1b[2J") for line in shown), shown
        assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()
        assert "[1] old\\x1b[2J: HTTP 500: \\x1b]0;pwned\\x07\\x0aforged" in out.getvalue()


def test_every_csv_is_written_through_csvsafe() -> None:
    """No module but worker/csvsafe.py makes a csv writer: a new CSV export cannot skip the formula rule."""
    root = Path(__file__).parent.parent / "worker"
    offenders = [str(path.relative_to(root)) for path in root.rglob("*.py")
                 if path.name != "csvsafe.py" and re.search(r"csv\.(writer|DictWriter)\(", path.read_text())]
    assert offenders == []


class TestTextLogs:
    def test_messages_and_fields_cannot_forge_lines(self) -> None:
        """Text log lines escape control characters in the message and in every field; tracebacks stay readable."""
        stream = io.StringIO()
        setup_logging("text", "info", stream)
        log = logging.getLogger("worker.test_output")
        try:
            log.info("organization %s", f"Evil{CLEAR}\n2026-01-01T00:00:00Z INFO forged: line",
                     extra={"label": f"x{OSC_TITLE}"})
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("failed for %s", "a\rb")
        finally:
            setup_logging("json", "info", io.StringIO())
        text = stream.getvalue()
        assert "\x1b" not in text and "\x07" not in text and "\r" not in text
        first, second = text.splitlines()[:2]
        assert "Evil\\x1b[2J\\x0a2026-01-01T00:00:00Z INFO forged: line" in first and "label=x\\x1b]0;pwned\\x07" in first
        assert "failed for a\\x0db" in second
        assert "Traceback (most recent call last):" in text and "ValueError: boom" in text
