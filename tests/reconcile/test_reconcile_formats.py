"""Tracker format parsers: fields, bad records with line numbers, detection, streaming."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from worker.reconcile import BadRecord, ModelNormalizer, TokenCounts, TrackedEvent
from worker.reconcile.formats import FORMATS, DetectionError, UnknownFormatError, detect, parse, read_events

FIXTURES = Path(__file__).parent / "fixtures"


def read(name: str, format: str = "auto") -> tuple[str, list[TrackedEvent], list[BadRecord]]:
    with (FIXTURES / name).open("rb") as stream:
        detected, stream_items = read_events(stream, format)
        items = list(stream_items)
    return (
        detected,
        [i for i in items if isinstance(i, TrackedEvent)],
        [i for i in items if isinstance(i, BadRecord)],
    )


class TestAnthropic:
    def test_reads_messages_wrappers_and_usage_objects(self) -> None:
        """Nested cache_creation is split 5m/1h; a flat total is kept unsplit; times go to UTC."""
        fmt, events, _ = read("anthropic.jsonl")
        assert fmt == "anthropic"
        first, second, third = events
        assert first.event_id == "msg_01A"
        assert first.tokens == TokenCounts(120, 40, 1000, 200, 100, 0)
        assert first.occurred_at == datetime(2026, 3, 3, 0, 59, 59, tzinfo=UTC)
        assert first.day.isoformat() == "2026-03-03"
        assert first.extra["service_tier"] == "standard"
        assert second.event_id == "msg_01B" and second.raw_model == "claude-haiku-4-5-20251001"
        assert second.tokens.cache_write_unsplit == 50
        assert second.occurred_at == datetime(2026, 3, 2, 0, 0, 0, 123000, tzinfo=UTC)
        assert third.event_id is None and third.tokens.uncached_input == 7

    def test_bad_lines_are_reported_with_physical_line_numbers(self) -> None:
        """A blank line still counts; unreadable lines do not stop the rest."""
        _, events, bad = read("anthropic.jsonl")
        assert [b.line for b in bad] == [4, 5, 6]
        assert "input_tokens" in bad[0].reason
        assert "timestamp" in bad[1].reason
        assert "invalid JSON" in bad[2].reason
        assert len(events) == 3


class TestMarginFront:
    def test_envelopes_and_single_records(self) -> None:
        """rawModel wins over model; claudeCodeCostUsd is the cost; a bad record names its index."""
        fmt, events, bad = read("marginfront.jsonl")
        assert fmt == "marginfront"
        code, sdk = events
        assert code.raw_model == "claude-opus-4-8[1m]"
        assert code.cost_usd == Decimal("0.123456")
        assert code.tokens == TokenCounts(100, 20, 5000, 0, 0, 700)
        assert code.customer == "ana@example.com"
        assert sdk.event_id == "evt-9" and sdk.cost_usd is None
        assert sdk.occurred_at == datetime(2026, 3, 2, 7, 30, tzinfo=UTC)
        assert bad == [BadRecord(1, "records[1]: inputTokens is negative: -4")]


class TestCmdrdata:
    def test_events(self) -> None:
        """response_id is the id; offsets move the day; a bad timestamp is reported."""
        fmt, events, bad = read("cmdrdata.jsonl")
        assert fmt == "cmdrdata"
        assert [e.event_id for e in events] == ["msg_abc123", "msg_abc124"]
        assert events[0].tokens == TokenCounts(uncached_input=25, output=150)
        assert events[0].customer == "customer-123"
        assert events[1].day.isoformat() == "2025-01-16"
        assert [b.line for b in bad] == [3]


class TestFluxGate:
    def test_tracked_calls(self) -> None:
        """createdAt is epoch ms; reasoning tokens are billed as output; cost is exact."""
        fmt, events, bad = read("fluxgate.jsonl")
        assert fmt == "fluxgate"
        call, failed = events
        assert call.event_id == "trk_1"
        assert call.occurred_at == datetime(2026, 3, 2, 12, 30, tzinfo=UTC)
        assert call.tokens == TokenCounts(900, 500, 4000, 0, 0, 100)
        assert call.cost_usd == Decimal("0.0123")
        assert call.customer == "u1@example.com"
        assert failed.extra["status"] == "ERROR" and failed.cost_usd is None
        assert [b.line for b in bad] == [3]


class TestOtlp:
    def test_claude_code_metric_export(self) -> None:
        """Data points group into one event per (email, model, session, time) with the cost metric."""
        fmt, events, bad = read("otlp.jsonl")
        assert fmt == "otlp"
        first = events[0]
        assert first.tokens == TokenCounts(10, 200, 30000, 0, 0, 4000)
        assert first.cost_usd == Decimal("0.0421")
        assert first.customer == "ana@example.com"
        assert first.occurred_at == datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
        assert first.event_id and "sess-1" in first.event_id
        assert len(events) == 2 and [b.line for b in bad] == [3]

    def test_cumulative_counters_become_increments(self) -> None:
        """aggregationTemporality 2 is converted to deltas per series."""
        _, events, _ = read("otlp_cumulative.jsonl")
        assert [e.tokens.uncached_input for e in events] == [10, 15]
        assert [e.tokens.output for e in events] == [100, 60]
        assert [e.cost_usd for e in events] == [Decimal("0.01"), Decimal("0.015")]

    def test_pretty_printed_export_is_read_whole(self) -> None:
        """A multi-line document is detected and parsed as one record."""
        document = json.loads((FIXTURES / "otlp.jsonl").read_text().splitlines()[0])
        text = json.dumps(document, indent=2)
        fmt, items = read_events(io.StringIO(text))
        events = list(items)
        assert fmt == "otlp" and len(events) == 1 and isinstance(events[0], TrackedEvent)


class TestGeneric:
    def test_csv(self) -> None:
        """Header-named columns; empty cost is unknown; a quoted field spanning lines keeps numbering."""
        fmt, events, bad = read("generic.csv")
        assert fmt == "csv"
        assert [e.event_id for e in events] == ["e1", "e2", "e4\ncontinued", "e6"]
        assert events[0].cost_usd == Decimal("0.00105") and events[1].cost_usd is None
        assert events[0].workspace_id == "wrkspc_1" and events[0].api_key_id == "apikey_1"
        assert events[1].occurred_at == datetime(2026, 3, 2, 5, 30, tzinfo=UTC)
        assert events[3].occurred_at == datetime(2026, 3, 2, 11, 0, tzinfo=UTC)
        assert [b.line for b in bad] == [4, 7]

    def test_jsonl(self) -> None:
        """Split cache writes and a decimal-string cost."""
        fmt, events, bad = read("generic.jsonl")
        assert fmt == "jsonl"
        assert events[0].tokens == TokenCounts(100, 50, 0, 10, 5, 0)
        assert events[0].cost_usd == Decimal("0.00105")
        assert bad == [BadRecord(2, "missing model")]

    def test_money_is_never_a_float(self) -> None:
        """A JSON number cost keeps its exact digits."""
        line = '{"timestamp": "2026-03-02T00:00:00Z", "model": "m", "cost_usd": 0.1000000000000000055, "event_id": "x"}'
        (event,) = parse([line], "jsonl")
        assert isinstance(event, TrackedEvent)
        assert event.cost_usd == Decimal("0.1000000000000000055")


class TestDetection:
    @pytest.mark.parametrize(
        ("first_line", "expected"),
        [
            ('{"type": "message", "id": "m", "model": "x", "usage": {"input_tokens": 1}}', "anthropic"),
            ('{"records": []}', "marginfront"),
            ('{"customer_id": "c", "model": "x", "input_tokens": 1, "output_tokens": 2}', "cmdrdata"),
            ('{"trackingId": "t", "model": "x", "inputTokens": 1}', "fluxgate"),
            ('{"resourceMetrics": []}', "otlp"),
            ('{"timestamp": "t", "model": "x", "cost_usd": "1"}', "jsonl"),
            ("timestamp,model,input_tokens", "csv"),
        ],
    )
    def test_first_record_decides(self, first_line: str, expected: str) -> None:
        """Each format is recognized from a field only it has."""
        name, replay = detect(["\n", first_line + "\n", "rest\n"])
        assert name == expected
        assert list(replay) == ["\n", first_line + "\n", "rest\n"]

    @pytest.mark.parametrize(
        "first_line",
        [
            '{"model": "claude-sonnet-4-6", "input_tokens": 1, "output_tokens": 2, "timestamp": "2026-03-02T00:00:00Z"}',
            '{"model": "claude-sonnet-4-6", "inputTokens": 1, "outputTokens": 2}',
        ],
    )
    def test_ambiguous_record_is_an_error(self, first_line: str) -> None:
        """Fields shared by several formats make auto refuse and ask for --format."""
        with pytest.raises(DetectionError, match="ambiguous.*--format"):
            read_events([first_line])

    def test_unknown_and_empty_inputs(self) -> None:
        """Nothing recognizable is an error, not zero events."""
        with pytest.raises(DetectionError):
            read_events(['{"hello": 1}'])
        with pytest.raises(DetectionError, match="empty"):
            read_events(["", "  \n"])
        with pytest.raises(DetectionError):
            read_events(["just some words"])
        with pytest.raises(UnknownFormatError):
            read_events([], "xml")

    def test_every_format_is_registered(self) -> None:
        """The registry lists every documented format name."""
        assert set(FORMATS) == {"anthropic", "marginfront", "cmdrdata", "fluxgate", "otlp", "csv", "jsonl"}


class TestStreaming:
    @pytest.mark.parametrize("format", ["auto", "jsonl", "csv"])
    def test_first_event_before_reading_everything(self, format: str) -> None:
        """A 1,000,000-line generator is consumed lazily: one event needs only a few lines."""
        consumed = 0
        csv_mode = format == "csv"

        def lines() -> Iterator[bytes]:
            nonlocal consumed
            if csv_mode:
                consumed += 1
                yield b"timestamp,model,input_tokens,output_tokens,event_id\n"
            for i in range(1_000_000):
                consumed += 1
                if csv_mode:
                    yield f"2026-03-02T00:00:00Z,claude-sonnet-4-6,{i},1,id{i}\n".encode()
                else:
                    yield json.dumps({"timestamp": "2026-03-02T00:00:00Z", "model": "claude-sonnet-4-6",
                                      "input_tokens": i, "event_id": f"id{i}"}).encode() + b"\n"

        _, items = read_events(lines(), format)
        first = next(iter(items))
        assert isinstance(first, TrackedEvent)
        assert consumed <= 3
        assert len(list(itertools.islice(items, 10))) == 10
        assert consumed <= 14

    def test_normalizer_fills_the_model(self) -> None:
        """read_events applies the normalizer lazily to each event."""
        normalizer = ModelNormalizer(["claude-sonnet-4-6"], {})
        _, items = read_events(
            ['{"timestamp": "2026-03-02T00:00:00Z", "model": "anthropic/claude-sonnet-4.6", "event_id": "a"}'],
            normalize=normalizer.normalize,
        )
        (event,) = list(items)
        assert isinstance(event, TrackedEvent) and event.model == "claude-sonnet-4-6"
