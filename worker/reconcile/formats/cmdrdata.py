"""cmdrdata-style events (the `cmdrdata-anthropic` wrapper), one JSON object per line.

`{"customer_id": ..., "model": ..., "input_tokens": ..., "output_tokens": ..., "total_tokens": ...,
"provider": "anthropic", "timestamp": "2025-01-15T10:30:00Z", "metadata": {"response_id": "msg_..."}}`

`input_tokens` is the response's `usage.input_tokens` (uncached input). The wrapper records no cache
tokens and no cost, so cache reads and writes are 0 here and cost is priced from the bill; cache
use then shows up as `cache_reads_missing` / `cache_writes_missing`. If a record does carry
`cache_read_input_tokens` / `cache_creation_input_tokens` (newer wrappers), they are read.
The id is `metadata.response_id` (else `id`). `custom_metadata` is kept in `extra`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.reconcile.events import EventRow, extra_text
from worker.reconcile.formats._common import (
    ModelOf,
    ParseResult,
    RecordError,
    RowResult,
    Source,
    as_events,
    checked,
    first_key,
    money_text,
    no_model,
    optional_str,
    optional_text,
    require_mapping,
    run_rows,
    timestamp_text,
)
from worker.reconcile.formats.anthropic import usage_counts

NAME = "cmdrdata"


def parse(source: Source) -> ParseResult:
    """Yield one event per line, lazily."""
    return as_events(rows(source))


def rows(source: Source, model_of: ModelOf = no_model) -> RowResult:
    """`parse` as rows."""
    return run_rows(source, _row, model_of)


def sniff(record: Mapping[str, Any]) -> int:
    """2: certainly this format; 1: plausible; 0: not this format."""
    metadata = record.get("metadata")
    if "customer_id" in record and "input_tokens" in record:
        return 2
    if isinstance(metadata, Mapping) and "response_id" in metadata and "input_tokens" in record:
        return 2
    if "total_tokens" in record and "provider" in record and "input_tokens" in record:
        return 2
    if "model" in record and "input_tokens" in record and "output_tokens" in record:
        return 1
    return 0


def _row(value: Any, model_of: ModelOf) -> EventRow:
    record = require_mapping(value)
    provider = record.get("provider")
    model = optional_str(record.get("model"))
    if model is None:
        raise RecordError("missing model")
    metadata = require_mapping(record.get("metadata") or {}, "metadata")
    extra: dict[str, Any] = {}
    if provider is not None:
        extra["provider"] = provider
    for name in ("stop_reason", "type"):
        if name in metadata:
            extra[name] = metadata[name]
    if isinstance(record.get("custom_metadata"), Mapping):
        extra["custom_metadata"] = dict(record["custom_metadata"])
    event_id = optional_text(first_key(metadata, "response_id") or record.get("id"))
    at = timestamp_text(record.get("timestamp"), "timestamp")
    counts = usage_counts(record)
    cost = money_text(first_key(record, "cost_usd", "cost"), "cost")
    return checked((
        event_id, at, model, model_of(model), *counts, cost,
        optional_text(record.get("workspace_id")), optional_text(record.get("api_key_id")),
        optional_text(record.get("customer_id")), extra_text(extra),
    ))
