"""Claude Code telemetry: OTLP/JSON metric exports, one export document per line.

This is what an OpenTelemetry collector's file exporter writes (`resourceMetrics[].scopeMetrics[]
.metrics[]`). Two metrics are read; every other metric is ignored:

- `claude_code.token.usage`: one data point per `type` attribute: `input` (uncached input),
  `output`, `cacheRead`, `cacheCreation` (unsplit cache writes);
- `claude_code.cost.usage`: Claude Code's own estimate in USD.

Data points are grouped by (`user.email`, `model`, `session.id`, `timeUnixNano`) within a line into
one event; resource attributes are merged under data-point attributes. The event id is derived from
that group so a re-exported data point is stored once. `customer` is `user.email`.

Temporality: a sum with `aggregationTemporality` 1 (delta) is used as is. A cumulative sum (2, what
Claude Code emits when no collector converts it) is turned into increments here, per series
(metric + attributes), restarting when `startTimeUnixNano` changes or the value drops. That keeps
one running value per series in memory: bounded by sessions x models x types, not by file size.
Zero increments produce no event. A pretty-printed export is read whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from worker.reconcile.events import BadRecord, EventRow, extra_text
from worker.reconcile.formats._common import (
    MAX_TOKENS,
    ModelOf,
    ParseResult,
    RecordError,
    RowResult,
    Source,
    as_events,
    checked,
    json_records,
    money,
    no_model,
    timestamp_text,
    token_count,
)

NAME = "otlp"
TOKEN_METRIC = "claude_code.token.usage"
COST_METRIC = "claude_code.cost.usage"
_CUMULATIVE = 2
_TOKEN_TYPES = {"input": "uncached_input", "output": "output", "cacheRead": "cache_read",
                "cacheCreation": "cache_write_unsplit"}
_ROW_ORDER = ("uncached_input", "output", "cache_read", "cache_write_5m", "cache_write_1h", "cache_write_unsplit")


def parse(source: Source) -> ParseResult:
    """Yield the events of each export line, lazily."""
    return as_events(rows(source))


def rows(source: Source, model_of: ModelOf = no_model) -> RowResult:
    """`parse` as rows."""
    state: dict[tuple[Any, ...], tuple[str, Decimal]] = {}
    for item in json_records(source):
        if isinstance(item, BadRecord):
            yield item
            continue
        number, value = item
        try:
            groups = _groups(value, state)
        except RecordError as exc:
            yield BadRecord(number, str(exc))
            continue
        for group in groups.values():
            try:
                row = group.row(model_of)
            except RecordError as exc:
                yield BadRecord(number, str(exc))
                continue
            if row is not None:
                yield row


def sniff(record: Mapping[str, Any]) -> int:
    """2: certainly this format; 0: not this format."""
    return 2 if "resourceMetrics" in record else 0


@dataclass
class _Group:
    email: str | None
    model: str | None
    session: str | None
    time_nanos: str
    counts: dict[str, int] = field(default_factory=dict)
    cost: Decimal | None = None

    def row(self, model_of: ModelOf) -> EventRow | None:
        if not any(self.counts.values()) and not self.cost:
            return None
        if self.model is None:
            raise RecordError(f"{TOKEN_METRIC} data point without a model attribute")
        model = self.model
        parts = [self.session or "-", self.model, self.email or "-", self.time_nanos]
        at = timestamp_text(self.time_nanos, "timeUnixNano", unit="ns")
        counts = self.counts
        for name, count in counts.items():
            if count > MAX_TOKENS:  # a sum of data points in range can exceed it
                raise RecordError(f"{TOKEN_METRIC}[{name}] is too large: {count}")
        uncached, output, read, write_5m, write_1h, unsplit = (counts.get(name, 0) for name in _ROW_ORDER)
        return checked((
            "otlp:" + ":".join(parts),
            at,
            model,
            model_of(model),
            uncached, output, read, write_5m, write_1h, unsplit,
            "" if self.cost is None else format(self.cost, "f"),
            "",
            "",
            self.email or "",
            extra_text({"session.id": self.session} if self.session else {}),
        ))


def _attributes(values: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if not isinstance(values, list):
        return result
    for entry in values:
        if not isinstance(entry, Mapping) or "key" not in entry:
            continue
        wrapped = entry.get("value")
        if isinstance(wrapped, Mapping) and wrapped:
            result[str(entry["key"])] = next(iter(wrapped.values()))
    return result


def _groups(document: Any, state: dict[tuple[Any, ...], tuple[str, Decimal]]) -> dict[tuple[Any, ...], _Group]:
    if not isinstance(document, Mapping) or not isinstance(document.get("resourceMetrics"), list):
        raise RecordError("not an OTLP metrics export (no resourceMetrics list)")
    groups: dict[tuple[Any, ...], _Group] = {}
    for resource_metrics in document["resourceMetrics"]:
        if not isinstance(resource_metrics, Mapping):
            raise RecordError("resourceMetrics entry is not an object")
        resource = _attributes((resource_metrics.get("resource") or {}).get("attributes"))
        for scope in resource_metrics.get("scopeMetrics") or []:
            for metric in (scope or {}).get("metrics") or []:
                name = metric.get("name") if isinstance(metric, Mapping) else None
                if name not in (TOKEN_METRIC, COST_METRIC):
                    continue
                data = metric.get("sum") or metric.get("gauge") or {}
                temporality = data.get("aggregationTemporality")
                for point in data.get("dataPoints") or []:
                    _add_point(groups, state, name, temporality, resource, point)
    return groups


def _add_point(
    groups: dict[tuple[Any, ...], _Group],
    state: dict[tuple[Any, ...], tuple[str, Decimal]],
    name: str,
    temporality: Any,
    resource: Mapping[str, Any],
    point: Any,
) -> None:
    if not isinstance(point, Mapping):
        raise RecordError(f"{name} data point is not an object")
    attrs = {**resource, **_attributes(point.get("attributes"))}
    time_nanos = str(point.get("timeUnixNano") or "")
    if not time_nanos:
        raise RecordError(f"{name} data point without timeUnixNano")
    raw = point.get("asInt") if point.get("asInt") is not None else point.get("asDouble")
    amount = money(raw, f"{name} value")
    if amount is None:
        raise RecordError(f"{name} data point without a value")
    if temporality == _CUMULATIVE:
        series = (name, tuple(sorted((k, str(v)) for k, v in attrs.items())))
        start = str(point.get("startTimeUnixNano") or "")
        previous = state.get(series)
        state[series] = (start, amount)
        if previous is not None and previous[0] == start and amount >= previous[1]:
            amount -= previous[1]
    email, model, session = attrs.get("user.email"), attrs.get("model"), attrs.get("session.id")
    key = (email, model, session, time_nanos)
    group = groups.get(key)
    if group is None:
        group = groups[key] = _Group(
            email=str(email) if email is not None else None,
            model=str(model) if model is not None else None,
            session=str(session) if session is not None else None,
            time_nanos=time_nanos,
        )
    if name == COST_METRIC:
        group.cost = (group.cost or Decimal(0)) + amount
        return
    kind = attrs.get("type")
    target = _TOKEN_TYPES.get(str(kind))
    if target is None:
        raise RecordError(f"{TOKEN_METRIC} data point with unknown type {kind!r}")
    group.counts[target] = group.counts.get(target, 0) + token_count(amount, f"{TOKEN_METRIC}[{kind}]")
