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

from collections.abc import Iterator, Mapping
from typing import Any

from worker.reconcile.events import TokenCounts, TrackedEvent
from worker.reconcile.formats._common import (
    ParseResult,
    RecordError,
    Source,
    first_key,
    iter_json_values,
    iter_lines,
    money,
    optional_str,
    require_mapping,
    run_records,
    timestamp,
    token_count,
)

NAME = "fluxgate"


def parse(source: Source) -> ParseResult:
    """Yield one event per tracked call, lazily."""
    return run_records(iter_json_values(iter_lines(source)), _convert)


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


def _convert(value: Any) -> Iterator[TrackedEvent]:
    record = _flatten(require_mapping(value))
    model = optional_str(record.get("model"))
    if model is None:
        raise RecordError("missing model")
    output = token_count(record.get("outputTokens"), "outputTokens")
    if record.get("outputTokensIncludeReasoning") is not True:
        output += token_count(record.get("reasoningTokens"), "reasoningTokens")
    user = record.get("user")
    customer = first_key(user, "email", "id") if isinstance(user, Mapping) else user
    extra = {name: record[name] for name in ("status", "feature", "serviceTier", "sessionId") if name in record}
    yield TrackedEvent(
        event_id=optional_str(first_key(record, "trackingId", "id")),
        occurred_at=timestamp(record.get("createdAt"), "createdAt", unit="ms"),
        raw_model=model,
        tokens=TokenCounts(
            uncached_input=token_count(record.get("inputTokens"), "inputTokens"),
            output=output,
            cache_read=token_count(record.get("cacheReadTokens"), "cacheReadTokens"),
            cache_write_unsplit=token_count(record.get("cacheWriteTokens"), "cacheWriteTokens"),
        ),
        cost_usd=money(record.get("cost"), "cost"),
        workspace_id=optional_str(first_key(record, "workspaceId", "workspace_id")),
        api_key_id=optional_str(first_key(record, "apiKeyId", "api_key_id")),
        customer=optional_str(customer),
        extra=extra,
    )
