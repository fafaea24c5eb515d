"""Raw Anthropic Messages API responses, or their `usage` objects, one JSON document per line.

Accepted per line (JSON lines; a pretty-printed document or array is read whole):

- a Message: `{"id": "msg_...", "type": "message", "model": ..., "usage": {...}, "timestamp": ...}`;
- a log wrapper around one: `{"timestamp": ..., "response": {<message>}}` (or `"message"`);
- a usage object with the call's model and time beside it:
  `{"model": ..., "timestamp": ..., "usage": {...}}` or the usage fields at the top level.

Usage fields: `input_tokens` is UNCACHED input; `cache_read_input_tokens`; cache writes come from
`cache_creation.{ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}` when present, else from
the flat `cache_creation_input_tokens` as an unsplit total. The time is the first of `timestamp`,
`created_at`, `createdAt`, `time`, `ts`, `occurred_at`, `date` (ISO 8601 or epoch); responses carry
none themselves, so the logger must have added one. Optional `workspace_id`, `api_key_id`,
`customer` (or `customer_id`) beside the message are kept. `usage.service_tier` and
`usage.server_tool_use.web_search_requests` go to `extra`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.reconcile.events import EventRow, TokenCounts, extra_text
from worker.reconcile.formats._common import (
    ModelOf,
    ParseResult,
    RecordError,
    RowResult,
    Source,
    as_events,
    checked,
    first_key,
    no_model,
    optional_str,
    optional_text,
    require_mapping,
    run_rows,
    timestamp_text,
    token_count,
)

NAME = "anthropic"
TIME_FIELDS = ("timestamp", "created_at", "createdAt", "time", "ts", "occurred_at", "date")
_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def parse(source: Source) -> ParseResult:
    """Yield one event per response line, lazily."""
    return as_events(rows(source))


def rows(source: Source, model_of: ModelOf = no_model) -> RowResult:
    """`parse` as rows."""
    return run_rows(source, _row, model_of)


def sniff(record: Mapping[str, Any]) -> int:
    """2: certainly this format; 1: plausible; 0: not this format."""
    inner = _message(record)
    usage = inner.get("usage")
    if isinstance(usage, Mapping) and "input_tokens" in usage:
        return 2
    if inner.get("type") == "message" or "cache_creation_input_tokens" in record or "cache_creation" in record:
        return 2
    if "cache_read_input_tokens" in record:
        return 2
    if "model" in record and "input_tokens" in record and "output_tokens" in record:
        return 1
    return 0


def _message(record: Mapping[str, Any]) -> Mapping[str, Any]:
    for name in ("response", "message"):
        inner = record.get(name)
        if isinstance(inner, Mapping):
            return inner
    return record


def _row(value: Any, model_of: ModelOf) -> EventRow:
    record = require_mapping(value)
    message = _message(record)
    usage_value = message.get("usage")
    if usage_value is None:
        if not any(name in message for name in _USAGE_FIELDS):
            raise RecordError("no usage object")
        usage_value = message
    usage = require_mapping(usage_value, "usage")
    model = optional_str(first_key(message, "model")) or optional_str(record.get("model"))
    if model is None:
        raise RecordError("missing model")
    when = first_key(record, *TIME_FIELDS)
    if when is None and message is not record:
        when = first_key(message, *TIME_FIELDS)
    if when is None:
        raise RecordError(f"no timestamp (one of {', '.join(TIME_FIELDS)})")
    extra: dict[str, Any] = {}
    if (tier := usage.get("service_tier")) is not None:
        extra["service_tier"] = tier
    tools = usage.get("server_tool_use")
    if isinstance(tools, Mapping) and tools.get("web_search_requests"):
        extra["web_search_requests"] = token_count(tools["web_search_requests"], "web_search_requests")
    event_id = optional_text(message.get("id") if message is not record else record.get("id"))
    at = timestamp_text(when, "timestamp")
    counts = usage_counts(usage)
    return checked((
        event_id, at, model, model_of(model), *counts, "",
        optional_text(record.get("workspace_id")), optional_text(record.get("api_key_id")),
        optional_text(first_key(record, "customer", "customer_id")), extra_text(extra),
    ))


def usage_counts(usage: Mapping[str, Any]) -> tuple[int, int, int, int, int, int]:
    """Token counts from an Anthropic `usage` object (nested cache_creation wins over the flat total),
    in `TokenCounts` field order."""
    split = usage.get("cache_creation")
    write_5m = write_1h = unsplit = 0
    flat = token_count(usage.get("cache_creation_input_tokens"), "cache_creation_input_tokens")
    if isinstance(split, Mapping):
        write_5m = token_count(split.get("ephemeral_5m_input_tokens"), "ephemeral_5m_input_tokens")
        write_1h = token_count(split.get("ephemeral_1h_input_tokens"), "ephemeral_1h_input_tokens")
        # A flat total larger than the split keeps the difference rather than losing it.
        unsplit = max(0, flat - write_5m - write_1h)
    elif split is not None:
        raise RecordError("usage.cache_creation is not an object")
    else:
        unsplit = flat
    return (
        token_count(usage.get("input_tokens"), "input_tokens"),
        token_count(usage.get("output_tokens"), "output_tokens"),
        token_count(usage.get("cache_read_input_tokens"), "cache_read_input_tokens"),
        write_5m,
        write_1h,
        unsplit,
    )


def usage_tokens(usage: Mapping[str, Any]) -> TokenCounts:
    """`usage_counts` as `TokenCounts`."""
    return TokenCounts(*usage_counts(usage))
