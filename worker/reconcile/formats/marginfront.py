"""MarginFront usage records: `{"records": [...]}` envelopes or one record per line.

This is the body the MarginFront SDK and the Claude Code collector (`@marginfront/code-cost-clarity`)
POST to `/v1/sdk/usage/record`. Per record: `model`, `inputTokens` (uncached input),
`outputTokens`, `cacheReadTokens`, `cacheWriteTokens` (unsplit cache writes: Anthropic's
`cache_creation_input_tokens`), `customerExternalId`, `agentCode`, `signalName`, `metadata`.

- Model: `metadata.rawModel` when present (the collector rewrites `claude-opus-4-8[1m]` to
  `claude-opus-4.8` and keeps the original there), else `model`.
- Cost: `metadata.claudeCodeCostUsd` (Claude Code's own cache-accurate cost), else `usageCost`,
  `costUsd` or `cost`; none of them means the cost is unknown.
- Time: `usageDate`, `timestamp`, `occurredAt`, `createdAt` (ISO 8601 or epoch).
- Id: `idempotencyKey`, `eventId`, `id`, or `metadata.{eventId,messageId,requestId}`.
- Records written with `--fold-cache` carry cache tokens inside `inputTokens`; nothing in the record
  says so, and reconciliation reports it as `cache_folded_into_input`.

An envelope line holding several records reports a bad record with the envelope's line number and
the record's index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.reconcile.events import BadRecord, EventRow, extra_text
from worker.reconcile.formats._common import (
    ModelOf,
    ParseResult,
    RecordError,
    RowResult,
    Source,
    as_events,
    checked,
    first_key,
    json_records,
    money,
    no_model,
    optional_str,
    optional_text,
    require_mapping,
    timestamp_text,
    token_count,
)

NAME = "marginfront"
TIME_FIELDS = ("usageDate", "timestamp", "occurredAt", "createdAt")
_DISTINCT = ("customerExternalId", "agentCode", "signalName")


def parse(source: Source) -> ParseResult:
    """Yield the events of each record, envelope by envelope, lazily."""
    return as_events(rows(source))


def rows(source: Source, model_of: ModelOf = no_model) -> RowResult:
    """`parse` as rows."""
    for item in json_records(source):
        if isinstance(item, BadRecord):
            yield item
            continue
        number, value = item
        if isinstance(value, Mapping) and "records" in value:
            records = value["records"]
            if not isinstance(records, list):
                yield BadRecord(number, "records is not a list")
                continue
            for index, record in enumerate(records):
                try:
                    yield _row(record, model_of)
                except RecordError as exc:
                    yield BadRecord(number, f"records[{index}]: {exc}")
        else:
            try:
                yield _row(value, model_of)
            except RecordError as exc:
                yield BadRecord(number, str(exc))


def sniff(record: Mapping[str, Any]) -> int:
    """2: certainly this format; 1: plausible; 0: not this format."""
    if isinstance(record.get("records"), list):
        return 2
    metadata = record.get("metadata")
    if isinstance(metadata, Mapping) and ("claudeCodeCostUsd" in metadata or "rawModel" in metadata):
        return 2
    if any(name in record for name in _DISTINCT):
        return 2
    if "model" in record and "inputTokens" in record:
        return 1
    return 0


def _row(value: Any, model_of: ModelOf) -> EventRow:
    record = require_mapping(value, "record")
    metadata_value = record.get("metadata") or {}
    metadata = require_mapping(metadata_value, "metadata")
    model = optional_str(metadata.get("rawModel")) or optional_str(record.get("model"))
    if model is None:
        raise RecordError("missing model")
    when = first_key(record, *TIME_FIELDS)
    if when is None:
        raise RecordError(f"no timestamp (one of {', '.join(TIME_FIELDS)})")
    cost = money(metadata.get("claudeCodeCostUsd"), "metadata.claudeCodeCostUsd")
    if cost is None:
        cost = money(first_key(record, "usageCost", "costUsd", "cost"), "usageCost")
    event_id = first_key(record, "idempotencyKey", "eventId", "id")
    if event_id is None:
        event_id = first_key(metadata, "eventId", "messageId", "requestId")
    extra = {
        name: record[name] for name in ("agentCode", "signalName", "modelProvider") if name in record
    }
    for name in ("sessionId", "session.id", "serviceTier"):
        if name in metadata:
            extra[name] = metadata[name]
    return checked((
        optional_text(event_id),
        timestamp_text(when, "usageDate"),
        model,
        model_of(model),
        token_count(record.get("inputTokens"), "inputTokens"),
        token_count(record.get("outputTokens"), "outputTokens"),
        token_count(record.get("cacheReadTokens"), "cacheReadTokens"),
        0,
        0,
        token_count(record.get("cacheWriteTokens"), "cacheWriteTokens"),
        "" if cost is None else format(cost, "f"),
        optional_text(first_key(record, "workspaceId", "workspace_id")),
        optional_text(first_key(record, "apiKeyId", "api_key_id")),
        optional_text(record.get("customerExternalId")),
        extra_text(extra),
    ))
