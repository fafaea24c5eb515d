"""FluxGate-style tracked calls (`@fluxgate/anthropic`), one JSON object per line.

Per call: `trackingId`, `createdAt` (Unix epoch MILLISECONDS), `cost` (USD, null when FluxGate
could not price it), `status` (SUCCESS, ERROR, BLOCKED, MAX_TOKENS, ...), `model`, token counts
`inputTokens`, `outputTokens`, `reasoningTokens`, `cacheReadTokens`, `cacheWriteTokens`, and the
call's context (`feature`, `user` as a string or `{id, email, ...}`, `sessionId`, `serviceTier`).
The `FluxGateCostTrackingResponse` fields may also be nested under `fluxGateCostTrackingResponse`
or `tracking`.

Anthropic bills extended-thinking tokens as output tokens and its `usage.output_tokens` already
includes them. FluxGate reports them separately, so `reasoningTokens` is ADDED to output unless
the record says `outputTokensIncludeReasoning: true`. `status`, `serviceTier` (priority calls
are not in the cost report) and `feature` go to `extra`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.reconcile.events import EventRow, extra_text
from worker.reconcile.formats._common import (
    MAX_TOKENS,
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
    token_count,
)

NAME = "fluxgate"


def parse(source: Source) -> ParseResult:
    """Yield one event per tracked call, lazily."""
    return as_events(rows(source))


def rows(source: Source, model_of: ModelOf = no_model) -> RowResult:
    """`parse` as rows."""
    return run_rows(source, _row, model_of)


def sniff(record: Mapping[str, Any]) -> int:
    """2: certainly this format; 1: plausible; 0: not this format."""
    flat = _flatten(record)
    if "trackingId" in flat or "reasoningTokens" in flat or "fluxGateCostTrackingResponse" in record:
        return 2
    if isinstance(flat.get("createdAt"), int) and "cost" in flat and "inputTokens" in flat:
        return 2
    if "model" in flat and "inputTokens" in flat:
        return 1
    return 0


def _flatten(record: Mapping[str, Any]) -> Mapping[str, Any]:
    for name in ("fluxGateCostTrackingResponse", "tracking"):
        inner = record.get(name)
        if isinstance(inner, Mapping):
            return {**record, **inner}
    return record


def _row(value: Any, model_of: ModelOf) -> EventRow:
    record = _flatten(require_mapping(value))
    model = optional_str(record.get("model"))
    if model is None:
        raise RecordError("missing model")
    output = token_count(record.get("outputTokens"), "outputTokens")
    if record.get("outputTokensIncludeReasoning") is not True:
        output += token_count(record.get("reasoningTokens"), "reasoningTokens")
        if output > MAX_TOKENS:
            raise RecordError(f"outputTokens + reasoningTokens is too large: {output}")
    user = record.get("user")
    customer = first_key(user, "email", "id") if isinstance(user, Mapping) else user
    extra = {name: record[name] for name in ("status", "feature", "serviceTier", "sessionId") if name in record}
    event_id = optional_text(first_key(record, "trackingId", "id"))
    at = timestamp_text(record.get("createdAt"), "createdAt", unit="ms")
    uncached = token_count(record.get("inputTokens"), "inputTokens")
    cache_read = token_count(record.get("cacheReadTokens"), "cacheReadTokens")
    cache_write = token_count(record.get("cacheWriteTokens"), "cacheWriteTokens")
    return checked((
        event_id, at, model, model_of(model), uncached, output, cache_read, 0, 0, cache_write,
        money_text(record.get("cost"), "cost"),
        optional_text(first_key(record, "workspaceId", "workspace_id")),
        optional_text(first_key(record, "apiKeyId", "api_key_id")),
        optional_text(customer), extra_text(extra),
    ))
