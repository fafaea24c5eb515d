"""The import's fast paths give exactly what the slow, obvious code gives: JSON decoding with and
without msgspec, timestamps and money as stored text, rows <-> events, the parsing process, and
the import loop over rows (duplicates, bad rows, limits)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from billgen import days, generate_calls
from forking import require_fork

from worker.reconcile import BadRecord, InMemorySink, StrictImportError, TrackedEvent, import_events
from worker.reconcile.events import event_from_row, row_from_event, utc_text
from worker.reconcile.formats import FORMATS, _common, read_rows
from worker.reconcile.formats._common import (
    MAX_EVENT_ID,
    MAX_MODEL_ID,
    RecordError,
    json_records,
    money,
    money_text,
    timestamp,
    timestamp_text,
    token_count,
)
from worker.reconcile.importer import chunks, import_chunks, parsed_in_child

FIXTURES = Path(__file__).parent / "fixtures"

TRICKY_LINES: list[bytes] = [
    b'\xef\xbb\xbf{"a": 1}\n',  # a BOM on line 1
    b'{"cost": 0.1000000000000000055, "n": 1E-7, "z": -0.0, "big": 123456789012345678901234567890}\n',
    b"\n",
    b"   \r\n",
    b'{"a": "caf\xc3\xa9", "b": "\\ud83d\\ude00"}\n',
    b'{"lone": "\\ud800"}\n',  # msgspec refuses lone surrogates; the standard library reads them
    b'{"a": NaN, "b": Infinity}\n',  # not JSON, but the standard library's reading of it
    b'{"bad utf8": "\xff"}\n',
    b'{"a": 1,}\n',
    b'{"a": 1} {"b": 2}\n',
    b'{"a": "tab\there"}\n',
    b"[1, 2, 3]\n",
    b'"just a string"\n',
    b'{"a": 1}\x0c\n',  # a form feed: whitespace to str.strip, not to JSON
    b"not json at all\n",
    b'{"deep": [[[[{"x": [1.50, {"y": 2.0e0}]}]]]]}\n',
    b'{"a": 1, "a": 2}\n',
    b'{"digits": ' + b"9" * 5000 + b"}\n",  # beyond Python's int digit limit
    b"[" * 100_000 + b"]" * 100_000 + b"\n",  # nested beyond the recursion limit
]


def _decoded(lines: list[bytes], fast: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    monkeypatch.setattr(_common, "FAST_DECODE", fast)
    return [item if isinstance(item, BadRecord) else (item[0], repr(item[1])) for item in json_records(lines)]


class TestJsonRecords:
    def test_msgspec_reads_exactly_what_the_standard_library_reads(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Values (fractions as exact Decimals, with their digits) and bad lines are identical."""
        msgspec = pytest.importorskip("msgspec")
        fast = msgspec.json.Decoder(float_hook=Decimal).decode
        with_fast = _decoded(TRICKY_LINES, fast, monkeypatch)
        without = _decoded(TRICKY_LINES, None, monkeypatch)
        assert with_fast == without
        values = dict(item for item in without if not isinstance(item, BadRecord))
        assert "Decimal('0.1000000000000000055')" in values[2] and "Decimal('1.50')" in values[16]
        assert values[6] == repr({"lone": "\ud800"}) and values[8] == repr({"bad utf8": "\ufffd"})
        assert [b.line for b in without if isinstance(b, BadRecord)] == [9, 10, 11, 15, 18, 19]

    def test_the_fast_decoder_is_used_when_installed(self) -> None:
        """With msgspec installed the fast path is on (the benchmark depends on it)."""
        pytest.importorskip("msgspec")
        assert _common.FAST_DECODE is not None

    def test_pretty_printed_document_without_and_with_msgspec(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A multi-line document is still read whole on both paths."""
        text = json.dumps([{"a": 1.5}, {"b": 2}], indent=2).encode().splitlines(keepends=True)
        results = [_decoded(text, fast, monkeypatch) for fast in {None, _common.FAST_DECODE}]
        assert all(r == [(1, "{'a': Decimal('1.5')}"), (1, "{'b': 2}")] for r in results)


ISO_CASES = [
    "2026-03-02T10:15:00Z", "2026-03-02T10:15:00z", "2026-03-02t10:15:00Z", "2026-03-02 10:15:00",
    "2026-03-02T10:15:00+00:00", "2026-03-02T10:15:00-00:00", "2026-03-02T10:15:00.5Z",
    "2026-03-02T10:15:00.123456Z", "2026-03-02T10:15:00,25", "2026-03-02T10:15:00.1234567Z",
    "2026-03-02T10:15:00+05:30", "2026-03-02T23:15:00-05:00", "2026-03-02T10:15:00.5+01:00",
    "2026-03-02T10:15Z", "2026-03-02T10:15", "20260302T101500Z", "2026-W10-1T10:15:00Z",
    "2026-03-02T101500.5Z", "2026-061T10:15:00Z", "2026-03-02T10:15:00+0000", "  2026-03-02T10:15:00Z ",
    "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z", "0001-01-01T00:30:00+01:00",
    "9999-12-31T23:30:00-01:00", "2026-02-30T10:15:00Z", "2026-03-02T24:00:00Z", "2026-03-02T10:15:60Z",
    "yesterday", "", "1772446500", "1772446500123", "1772446500.5", "-1",
]


class TestStoredText:
    @pytest.mark.parametrize("value", [*ISO_CASES, 1772446500, 1772446500123456, Decimal("1772446500.25"), None,
                                       True, 1.5])
    def test_timestamp_text_is_the_utc_text_of_timestamp(self, value: Any) -> None:
        """The text shortcut agrees with datetime parsing + formatting, including what it refuses."""
        try:
            expected: str | type = utc_text(timestamp(value, "t"))
        except RecordError:
            expected = RecordError
        try:
            got: str | type = timestamp_text(value, "t")
        except RecordError:
            got = RecordError
        assert got == expected
        if isinstance(got, str):
            assert len(got) == 26 and got[10] == " " and datetime.fromisoformat(got).tzinfo is None

    def test_offsets_move_the_day(self) -> None:
        """A local time with an offset lands on its UTC day."""
        assert timestamp_text("2026-03-02T23:30:00-05:00", "t") == "2026-03-03 04:30:00.000000"
        assert timestamp_text("0001-01-01T00:00:00Z", "t") == "0001-01-01 00:00:00.000000"
        with pytest.raises(RecordError, match="out of range"):
            timestamp_text("0001-01-01T00:30:00+01:00", "t")

    @pytest.mark.parametrize("value", [
        "0.1", "0.00355605", "1.50", "00.5", ".5", "5.", "+1.5", "-0", "-0.0", "1_000", " 1.5 ", "1e-7", "1E+3",
        "0", "123456789012345678", "1234567890123456789", "0." + "0" * 59 + "1", "0." + "0" * 60 + "1",
        Decimal("1E-7"), Decimal("0.1000000000000000055"), 3, 1e-7, "", None, "abc", "NaN", "-Infinity", True,
        "1e18", "1e999999999", "\u0661\u0662",
    ])
    def test_money_text_is_the_text_of_money(self, value: Any) -> None:
        """Plain decimal strings are kept as written; everything else as format(Decimal, 'f')."""
        try:
            amount = money(value, "c")
            expected: str | type = "" if amount is None else format(amount, "f")
        except RecordError:
            expected = RecordError
        try:
            got: str | type = money_text(value, "c")
        except RecordError:
            got = RecordError
        assert got == expected
        if isinstance(got, str) and got:
            assert Decimal(got) == Decimal(str(value).strip().replace("_", ""))

    def test_money_refuses_absurd_amounts(self) -> None:
        """10**18 USD or more, more than 60 decimals, or an exponent that would make a huge text."""
        for value in ("1e18", "1E+999999999", "1e-61", Decimal("1E+30")):
            with pytest.raises(RecordError, match="out of range"):
                money(value, "c")
        assert money("999999999999999999.99", "c") == Decimal("999999999999999999.99")

    @pytest.mark.parametrize(("value", "expected"), [
        (5, 5), ("17", 17), (" 17 ", 17), ("017", 17), (Decimal("3.0"), 3), (None, 0), ("", 0),
        (2**63 - 1, 2**63 - 1), ("9223372036854775807", 2**63 - 1),
        (2**63, RecordError), ("9223372036854775808", RecordError), ("1e999999999", RecordError),
        (-1, RecordError), ("1.5", RecordError), (True, RecordError), ("\u0661", 1),
    ])
    def test_token_counts(self, value: Any, expected: int | type) -> None:
        """Counts fit a BIGINT; digit strings are read; an exponent never builds a huge int."""
        if expected is RecordError:
            with pytest.raises(RecordError):
                token_count(value, "n")
        else:
            assert token_count(value, "n") == expected


class TestRows:
    @pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.iterdir()))
    def test_rows_and_events_are_the_same_events(self, name: str) -> None:
        """Every fixture: rows -> events -> rows is the identity, bad records included."""
        with (FIXTURES / name).open("rb") as stream:
            _, rows = read_rows(stream)
            items = list(rows)
        assert items
        for item in items:
            if not isinstance(item, BadRecord):
                assert row_from_event(event_from_row(item)) == item

    def test_events_round_trip_through_rows(self) -> None:
        """TrackedEvent -> row -> TrackedEvent keeps every field (times to the microsecond, exact cost)."""
        calls = generate_calls(days(datetime(2026, 3, 1, tzinfo=UTC).date(), 1), ["claude-sonnet-4-6"], per_day=3)
        events = [c.event() for c in calls] + [TrackedEvent(None, datetime(2026, 3, 1, 1, 2, 3, 4, tzinfo=UTC), "m",
                                                            calls[0].tokens, None, None, extra={"k": "v"})]
        for event in events:
            back = event_from_row(row_from_event(event))
            assert back == event and back.extra == event.extra and back.cost_usd == event.cost_usd

    def test_every_format_reads_rows_with_the_model_filled(self) -> None:
        """read_rows normalizes while building the row ('' when nothing matched)."""
        line = '{"timestamp": "2026-03-02T00:00:00Z", "model": "anthropic/claude-sonnet-4.6", "event_id": "a"}'
        _, rows = read_rows([line], "jsonl", lambda raw: "claude-sonnet-4-6" if "sonnet" in raw else "")
        (row,) = list(rows)
        assert isinstance(row, tuple)
        assert row[2:4] == ("anthropic/claude-sonnet-4.6", "claude-sonnet-4-6")
        assert set(FORMATS) == {"anthropic", "marginfront", "cmdrdata", "fluxgate", "otlp", "csv", "jsonl"}

    def test_overlong_ids_are_bad_rows(self) -> None:
        """Ids are indexed: a model id over 200 or an event id over 500 characters is a bad row, not a failed batch."""
        lines = [
            json.dumps({"timestamp": "2026-03-02T00:00:00Z", "model": "m" * (MAX_MODEL_ID + 1)}),
            json.dumps({"timestamp": "2026-03-02T00:00:00Z", "model": "m", "event_id": "e" * (MAX_EVENT_ID + 1)}),
            json.dumps({"timestamp": "2026-03-02T00:00:00Z", "model": "m" * MAX_MODEL_ID, "event_id": "e" * MAX_EVENT_ID}),
            json.dumps({"type": "message", "model": "m" * (MAX_MODEL_ID + 1), "usage": {"input_tokens": 1},
                        "timestamp": "2026-03-02T00:00:00Z"}),
        ]
        _, rows = read_rows(lines[:3], "jsonl")
        first, second, third = rows
        assert first == BadRecord(1, "model id longer than 200 characters")
        assert second == BadRecord(2, "event id longer than 500 characters")
        assert isinstance(third, tuple)
        _, rows = read_rows(lines[3:], "anthropic")
        assert list(rows) == [BadRecord(1, "model id longer than 200 characters")]


ROW_LINES = [
    '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4-6", "input_tokens": 1, "event_id": "a"}',
    '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4-6", "input_tokens": 1, "event_id": "a"}',
    "not json",
    '{"timestamp": "2026-03-02T10:00:00Z", "model": "gpt-4o", "input_tokens": 1, "event_id": "b"}',
    '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4-6", "cost_usd": "0.1"}',
    '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4-6", "cost_usd": "0.1"}',
    '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4-6", "input_tokens": 1, "event_id": "a"}',
    '{"timestamp": "2026-03-02T10:00:00Z", "model": "claude-sonnet-4-6", "input_tokens": 1, "event_id": "b"}',
]


def _model_of(raw: str) -> str:
    return "claude-sonnet-4-6" if raw.startswith("claude") else ""


class TestImportRows:
    @pytest.mark.parametrize("batch_size", [1, 2, 3, 100])
    def test_duplicates_within_and_across_batches(self, batch_size: int) -> None:
        """Repeated ids are new once per source whatever the batching; sightings are all counted."""
        sink = InMemorySink()
        _, rows = read_rows(ROW_LINES, "jsonl", _model_of)
        report = import_events(rows, sink, source="s", format="jsonl", batch_size=batch_size)
        assert (report.read, report.imported, report.duplicates, report.bad) == (7, 4, 3, 1)
        assert sink.sightings == {("s", "a"): 3, ("s", "b"): 2}
        assert report.unmatched_models == {"gpt-4o": 1}
        assert [e.model for e in sink.events] == ["claude-sonnet-4-6", None, "claude-sonnet-4-6", "claude-sonnet-4-6"]

    def test_chunks_carry_everything_the_report_needs(self) -> None:
        """Rows and bad records keep their order across chunks; unmatched ids are counted per chunk."""
        _, rows = read_rows(ROW_LINES, "jsonl", _model_of)
        parsed = list(chunks(rows, size=2))
        assert [len(r) for r, _, _ in parsed] == [2, 2, 2, 1]
        assert [b.line for _, bad, _ in parsed for b in bad] == [3]
        assert sum((u.get("gpt-4o", 0) for _, _, u in parsed), 0) == 1
        all_bad = list(chunks([BadRecord(i, "x") for i in range(5)], size=2))
        assert [len(b) for _, b, _ in all_bad] == [2, 2, 1]  # a file of bad lines is chunked too
        report = import_chunks(iter(parsed), InMemorySink(), source="s", format="jsonl", batch_size=3)
        assert (report.read, report.imported, report.duplicates, report.bad) == (7, 4, 3, 1)

    def test_batches_have_exactly_the_batch_size(self) -> None:
        """The sink gets batch_size rows at a time whatever the chunk size (the last batch smaller)."""
        sizes: list[int] = []

        class Sizes(InMemorySink):
            def add(self, source: str, rows: Any) -> int:
                sizes.append(len(rows))
                return super().add(source, rows)

        _, rows = read_rows(ROW_LINES * 10, "jsonl", _model_of)
        import_chunks(chunks(rows, size=4), Sizes(), source="s", format="jsonl", batch_size=6)
        assert sizes == [6] * 11 + [4]

    def test_strict_on_rows(self) -> None:
        """--strict stops at the first bad row, with its line."""
        _, rows = read_rows(ROW_LINES, "jsonl", _model_of)
        with pytest.raises(StrictImportError, match="line 3"):
            import_events(rows, InMemorySink(), source="s", format="jsonl", strict=True)


def _items(count: int, fail_at: int | None = None, error: BaseException | None = None) -> Any:
    for i in range(count):
        if i == fail_at:
            raise error or ValueError(f"boom at {i}")
        yield BadRecord(i, "bad") if i % 7 == 0 else (f"id{i}", "2026-03-02 00:00:00.000000", f"m{i % 3}",
                                                       "" if i % 3 else "m0", i, 0, 0, 0, 0, 0, str(Decimal(i) / 3),
                                                       "", "", "", "")


class _Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("cannot travel")
        self.hook = lambda: None


class TestParsedInChild:
    @pytest.fixture
    def forks(self, forked_pids: list[int]) -> list[int]:
        """The pids forked by `parsed_in_child`."""
        require_fork()
        return forked_pids

    @staticmethod
    def _reaped(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    def test_same_items_in_the_same_order(self, forks: list[int]) -> None:
        """Chunks of rows and bad records cross the pipe unchanged and in order."""
        with parsed_in_child(chunks(_items(5003), size=100), fork=True) as items:
            received = list(items)
        assert received == list(chunks(_items(5003), size=100)) and len(received) == 43
        assert len(forks) == 1 and self._reaped(forks[0])

    def test_an_error_in_the_child_is_raised_here(self, forks: list[int]) -> None:
        """The child's exception is raised in the parent, after the items before it."""
        received: list[Any] = []
        with pytest.raises(ValueError, match="boom at 2500"), \
                parsed_in_child(_items(5000, fail_at=2500), fork=True) as items:
            received.extend(items)
        assert received == list(_items(2500)) and self._reaped(forks[0])

    def test_an_os_error_keeps_its_errno(self, forks: list[int]) -> None:
        """A read error in the child is the same OSError here (the command reports 'cannot read')."""
        error = OSError(5, "Input/output error")
        with pytest.raises(OSError) as caught, parsed_in_child(_items(10, fail_at=3, error=error), fork=True) as items:
            list(items)
        assert caught.value.errno == 5 and caught.value.strerror == "Input/output error"

    def test_an_unpicklable_error_becomes_a_runtime_error_with_the_traceback(self, forks: list[int]) -> None:
        with pytest.raises(RuntimeError, match="(?s)parsing process.*_Unpicklable: cannot travel"), \
                parsed_in_child(_items(10, fail_at=3, error=_Unpicklable()), fork=True) as items:
            list(items)

    def test_leaving_early_stops_the_child(self, forks: list[int]) -> None:
        """An error in the parent (or --strict) kills the endless child and reaps it."""

        def endless() -> Any:
            i = 0
            while True:
                i += 1
                yield (str(i),)

        with pytest.raises(KeyError), parsed_in_child(endless(), fork=True) as items:
            for item in items:
                if item == ("20000",):
                    raise KeyError("stop")
        assert self._reaped(forks[0])

    def test_without_fork_the_items_are_iterated_here(self, forks: list[int]) -> None:
        with parsed_in_child(_items(10), fork=False) as items:
            assert list(items) == list(_items(10))
        assert forks == []
