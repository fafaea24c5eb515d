"""The import loop (dedup, bad records, strict) and the three output formats."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from billgen import bill, days, generate_calls

from worker.reconcile import (
    BadRecord,
    ImportReport,
    InMemorySink,
    ModelNormalizer,
    Reconciliation,
    StrictImportError,
    TokenCounts,
    TrackedEvent,
    aggregate_events,
    compare,
    import_events,
    read_events,
    render,
)
from worker.reconcile.render import CSV_COLUMNS

LINES = [
    '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4.6", "input_tokens": 1, "event_id": "a"}',
    '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4.6", "input_tokens": 1, "event_id": "a"}',
    "not json",
    '{"timestamp": "2026-03-02T10:00:00Z", "model": "gpt-4o", "input_tokens": 1, "event_id": "b"}',
    '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4-6", "input_tokens": 1, "cost_usd": "0.1"}',
    '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4-6", "input_tokens": 1, "cost_usd": "0.1"}',
    '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4-6", "input_tokens": 1, "event_id": "a"}',
]


def run(lines: list[str], sink: InMemorySink, *, batch_size: int = 2, strict: bool = False,
        source: str = "s") -> ImportReport:
    normalizer = ModelNormalizer(["claude-sonnet-4-6"])
    fmt, items = read_events(lines, "jsonl", normalize=normalizer.normalize)
    return import_events(items, sink, source=source, format=fmt, strict=strict, batch_size=batch_size)


class TestImport:
    def test_report_counts_everything(self) -> None:
        """Same id from one source is stored once; id-less events are all kept; bad lines are listed."""
        sink = InMemorySink()
        report = run(LINES, sink)
        assert (report.read, report.imported, report.duplicates, report.bad) == (6, 4, 2, 1)
        assert report.bad_samples == [BadRecord(3, "invalid JSON: Expecting value (column 1)")]
        assert report.unmatched_models == {"gpt-4o": 1}
        assert sink.sightings[("s", "a")] == 3

    def test_same_id_from_another_source_is_another_event(self) -> None:
        """Deduplication is per source."""
        sink = InMemorySink()
        run(LINES[:1], sink, source="one")
        report = run(LINES[:1], sink, source="two")
        assert report.imported == 1 and report.duplicates == 0

    def test_reimport_is_all_duplicates(self) -> None:
        """Importing the same file twice adds nothing with ids."""
        sink = InMemorySink()
        run(LINES[:2], sink)
        again = run(LINES[:2], sink)
        assert (again.imported, again.duplicates) == (0, 2)

    def test_only_the_first_bad_records_are_kept(self) -> None:
        """All bad records are counted; the first five are shown."""
        report = run(["{}"] * 1 + ["x"] * 9, InMemorySink())
        assert report.bad == 10 and [b.line for b in report.bad_samples] == [1, 2, 3, 4, 5]

    def test_strict_stops_at_the_first_bad_record(self) -> None:
        """--strict makes an unreadable record fatal, with its line number."""
        with pytest.raises(StrictImportError, match="line 3"):
            run(LINES, InMemorySink(), strict=True)


@pytest.fixture
def result() -> Reconciliation:
    dates = days(date(2026, 3, 1), 2)
    calls = generate_calls(dates, ["claude-sonnet-4-6"], per_day=4)
    builder = bill(calls, web_search={dates[1]: Decimal("0.25")})
    events = [c.event() for c in calls if c.at.date() == dates[0]]
    events.append(TrackedEvent("x", datetime(2026, 3, 2, 1, tzinfo=UTC), "claude-opus-4-6", TokenCounts(10, 10),
                               Decimal("0.001")))
    return compare(builder.cells(), aggregate_events(events).values(), builder.fees())


class TestRender:
    def test_json_rows_have_the_contract_fields(self, result: Reconciliation) -> None:
        """date, model, billed/tracked/delta cost as exact strings, status, causes list."""
        data = json.loads(render(result, "json"))
        required = {"date", "model", "billed_cost_usd", "tracked_cost_usd", "cost_delta_usd", "status", "causes"}
        assert all(required <= set(row) for row in data["rows"])
        by = {(r["date"], r["model"] or r["cost_type"]): r for r in data["rows"]}
        assert by[("2026-03-01", "claude-sonnet-4-6")]["status"] == "ok"
        assert by[("2026-03-02", "claude-sonnet-4-6")]["causes"] == ["untracked"]
        assert by[("2026-03-02", "web_search")]["billed_cost_usd"] == "0.25"
        assert by[("2026-03-02", "claude-opus-4-6")]["causes"] == ["not_billed", "unmatched_model"]
        assert by[("2026-03-02", "claude-opus-4-6")]["tracked_cost_usd"] == "0.001"
        assert Decimal(data["summary"]["billed_cost_usd"]) == result.summary.billed_cost_usd

    def test_csv_has_one_line_per_row(self, result: Reconciliation) -> None:
        """A header of CSV_COLUMNS, then the rows; causes joined with ';'."""
        rows = list(csv.reader(io.StringIO(render(result, "csv"))))
        assert tuple(rows[0]) == CSV_COLUMNS
        assert len(rows) == 1 + len(result.rows)
        causes = CSV_COLUMNS.index("causes")
        assert "not_billed;unmatched_model" in {r[causes] for r in rows}

    def test_table_ends_with_the_summary(self, result: Reconciliation) -> None:
        """The last line gives the bill, tracked total and unexplained remainder."""
        text = render(result, "table")
        last = text.strip().splitlines()[-1]
        assert last.startswith("billed $") and "tracked $" in last and "unexplained $" in last
        assert "(web_search)" in text

    def test_unknown_output_format(self, result: Reconciliation) -> None:
        """Only table, csv and json exist."""
        with pytest.raises(ValueError, match="table, csv, json"):
            render(result, "xml")
