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
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from worker.reconcile.events import BadRecord, EventRow, TrackedEvent, event_from_row
from worker.reconcile.formats._common import (
    MAX_EVENT_ID,
    MAX_MODEL_ID,
    MAX_TOKENS,
    BrokenLine,
    ModelOf,
    RecordError,
    RowResult,
    Source,
    line_text,
    money_text,
    no_model,
    optional_text,
    require_mapping,
    run_rows,
    timestamp_text,
    token_count,
)

CSV_NAME = "csv"
JSONL_NAME = "jsonl"
REQUIRED = ("timestamp", "model")
_DISTINCT = ("cache_read_tokens", "cache_write_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens",
             "cost_usd", "event_id")


def rows_jsonl(source: Source, model_of: ModelOf = no_model) -> RowResult:
    """One row per JSON line, lazily."""
    return run_rows(source, convert_row, model_of)


def rows_csv(source: Source, model_of: ModelOf = no_model) -> RowResult:
    """One row per CSV row, lazily; the first non-empty row is the header (a `BrokenLine` is a bad record)."""
    broken: list[BadRecord] = []

    def texts() -> Iterator[str]:
        lines: Iterable[str | bytes] = source
        for number, raw in enumerate(lines, start=1):
            if type(raw) is BrokenLine:  # a blank line to the reader, a bad record to the report
                broken.append(BadRecord(number, raw.reason))
            yield line_text(number, raw) + "\n"

    reader = csv.reader(texts())
    header: list[str] | None = None
    while True:
        try:
            row = next(reader)
        except StopIteration:
            yield from broken
            return
        except csv.Error as exc:
            yield from broken
            broken.clear()
            yield BadRecord(reader.line_num, f"unreadable CSV: {exc}")
            continue
        if broken:
            yield from broken
            broken.clear()
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
            yield convert_row(dict(zip(header, row, strict=True)), model_of)
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


def convert_row(record: Any, model_of: ModelOf = no_model) -> EventRow:
    """One generic record (a CSV row as a dict, or a decoded JSON object) as a row.

    The hot path of the benchmark import: plain ints are taken as they are, in line, and every
    other value goes through the checking helpers.
    """
    if type(record) is not dict:
        record = require_mapping(record)
    get = record.get
    model = get("model")
    model = model.strip() if type(model) is str else optional_text(model)
    if not model:
        raise RecordError("missing model")
    if len(model) > MAX_MODEL_ID:
        raise RecordError(f"model id longer than {MAX_MODEL_ID} characters")
    at = timestamp_text(get("timestamp"), "timestamp")
    a = get("input_tokens")
    if not (type(a) is int and 0 <= a <= MAX_TOKENS):
        a = token_count(a, "input_tokens")
    b = get("output_tokens")
    if not (type(b) is int and 0 <= b <= MAX_TOKENS):
        b = token_count(b, "output_tokens")
    c = get("cache_read_tokens")
    if not (type(c) is int and 0 <= c <= MAX_TOKENS):
        c = token_count(c, "cache_read_tokens")
    d = get("cache_write_5m_tokens")
    if not (type(d) is int and 0 <= d <= MAX_TOKENS):
        d = token_count(d, "cache_write_5m_tokens")
    e = get("cache_write_1h_tokens")
    if not (type(e) is int and 0 <= e <= MAX_TOKENS):
        e = token_count(e, "cache_write_1h_tokens")
    f = get("cache_write_tokens")
    if not (type(f) is int and 0 <= f <= MAX_TOKENS):
        f = token_count(f, "cache_write_tokens")
    cost = get("cost_usd")
    event_id = get("event_id")
    event_id = event_id.strip() if type(event_id) is str else optional_text(event_id)
    if len(event_id) > MAX_EVENT_ID:
        raise RecordError(f"event id longer than {MAX_EVENT_ID} characters")
    workspace = get("workspace_id")
    api_key = get("api_key_id")
    customer = get("customer")
    return (
        event_id,
        at,
        model,
        model_of(model),
        a, b, c, d, e, f,
        "" if cost is None else money_text(cost, "cost_usd"),
        workspace.strip() if type(workspace) is str else optional_text(workspace),
        api_key.strip() if type(api_key) is str else optional_text(api_key),
        customer.strip() if type(customer) is str else optional_text(customer),
        "",
    )


def convert(record: Mapping[str, Any]) -> TrackedEvent:
    """One generic record as a `TrackedEvent` (model not normalized)."""
    return event_from_row(convert_row(record))
