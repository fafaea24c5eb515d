"""The documented generic format, as CSV (with a header row) or JSON lines.

Columns / keys (header names are case-insensitive; unknown columns are ignored):

| name                    | required | meaning                                                     |
|-------------------------|----------|-------------------------------------------------------------|
| `timestamp`             | yes      | ISO 8601 with offset or `Z`, or epoch s/ms/us/ns             |
| `model`                 | yes      | model id as the tracker wrote it                             |
| `input_tokens`          | no (0)   | UNCACHED input tokens (Anthropic's `usage.input_tokens`)     |
| `output_tokens`         | no (0)   | output tokens, thinking included                             |
| `cache_read_tokens`     | no (0)   | cache reads                                                  |
| `cache_write_tokens`    | no (0)   | cache writes whose TTL is unknown                            |
| `cache_write_5m_tokens` | no (0)   | 5-minute cache writes                                        |
| `cache_write_1h_tokens` | no (0)   | 1-hour cache writes                                          |
| `cost_usd`              | no       | the tracker's cost in USD (empty = unknown, priced from bill) |
| `event_id`              | no       | unique id; repeated ids from one source are stored once      |
| `workspace_id`          | no       | Anthropic workspace id                                       |
| `api_key_id`            | no       | Anthropic API key id                                         |
| `customer`              | no       | any attribution label                                        |

CSV line numbers are physical lines (a quoted field spanning lines counts each line).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from typing import Any

from worker.reconcile.events import BadRecord, TokenCounts, TrackedEvent
from worker.reconcile.formats._common import (
    ParseResult,
    RecordError,
    Source,
    iter_json_values,
    iter_lines,
    money,
    optional_str,
    require_mapping,
    run_records,
    timestamp,
    token_count,
)

CSV_NAME = "csv"
JSONL_NAME = "jsonl"
REQUIRED = ("timestamp", "model")
COLUMNS = (
    "timestamp", "model", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "cache_write_5m_tokens", "cache_write_1h_tokens", "cost_usd", "event_id", "workspace_id",
    "api_key_id", "customer",
)
_DISTINCT = ("cache_read_tokens", "cache_write_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens",
             "cost_usd", "event_id")


def parse_jsonl(source: Source) -> ParseResult:
    """Yield one event per JSON line, lazily."""
    return run_records(iter_json_values(iter_lines(source)), lambda value: [convert(require_mapping(value))])


def parse_csv(source: Source) -> ParseResult:
    """Yield one event per CSV row, lazily; the first non-empty row is the header."""
    lines = iter_lines(source)
    reader = csv.reader(text + "\n" for _, text in lines)
    header: list[str] | None = None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield BadRecord(reader.line_num, f"unreadable CSV: {exc}")
            continue
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            missing = [name for name in REQUIRED if name not in header]
            if missing:
                yield BadRecord(reader.line_num, f"CSV header lacks {', '.join(missing)}")
                return
            continue
        if len(row) != len(header):
            yield BadRecord(reader.line_num, f"expected {len(header)} columns, found {len(row)}")
            continue
        try:
            yield convert(dict(zip(header, row, strict=True)))
        except RecordError as exc:
            yield BadRecord(reader.line_num, str(exc))


def sniff_jsonl(record: Mapping[str, Any]) -> int:
    """2: certainly this format; 1: plausible; 0: not this format."""
    if "timestamp" in record and "model" in record and any(name in record for name in _DISTINCT):
        return 2
    if "timestamp" in record and "model" in record and "input_tokens" in record:
        return 1
    return 0


def sniff_csv_header(line: str) -> bool:
    """Whether a first line looks like this format's CSV header."""
    cells = {cell.strip().strip('"').lower() for cell in line.split(",")}
    return all(name in cells for name in REQUIRED)


def convert(record: Mapping[str, Any]) -> TrackedEvent:
    """One generic record (a CSV row as a dict, or a JSON object) as an event."""
    model = optional_str(record.get("model"))
    if model is None:
        raise RecordError("missing model")
    return TrackedEvent(
        event_id=optional_str(record.get("event_id")),
        occurred_at=timestamp(record.get("timestamp"), "timestamp"),
        raw_model=model,
        tokens=TokenCounts(
            uncached_input=token_count(record.get("input_tokens"), "input_tokens"),
            output=token_count(record.get("output_tokens"), "output_tokens"),
            cache_read=token_count(record.get("cache_read_tokens"), "cache_read_tokens"),
            cache_write_5m=token_count(record.get("cache_write_5m_tokens"), "cache_write_5m_tokens"),
            cache_write_1h=token_count(record.get("cache_write_1h_tokens"), "cache_write_1h_tokens"),
            cache_write_unsplit=token_count(record.get("cache_write_tokens"), "cache_write_tokens"),
        ),
        cost_usd=money(record.get("cost_usd"), "cost_usd"),
        workspace_id=optional_str(record.get("workspace_id")),
        api_key_id=optional_str(record.get("api_key_id")),
        customer=optional_str(record.get("customer")),
    )

