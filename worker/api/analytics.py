"""Parsed rows of the Usage and Cost Analytics API (beta): typed decoding, exact money, bounded numbers.

A page is decoded by msgspec straight into typed structs (the shape of the SDK's `BetaAnalyticsCostItem`,
`BetaAnalyticsUsageItem` and `ReportPageCursor`), then each row into an `AnalyticsCostRow` or
`AnalyticsUsageRow`: `amount` and `list_amount` are decimal strings of cents, turned into exact Decimal
dollars by shifting the exponent (as the legacy rows are, with their bounds); counts are integers in
[0, 10^15]. A body that
breaks the shape is a ProtocolViolation; one that is not JSON at all is retried like any garbled answer.

Unknown dimensions a configured `group_by[]` may fill (agent, session, Slack channel...) are kept in
`other` (canonical JSON) so rows that differ only there stay apart.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec

from worker.api.errors import ProtocolViolation
from worker.api.models import MAX_COUNT, cents_to_dollars, utc_midnight
from worker.api.pagination import RowsBody
from worker.settings import ANALYTICS_GROUP_BY_VALUES as GROUP_BY_VALUES
from worker.settings import check_group_by

BETA = "analytics-usage-cost-2026-08-24"
COST_PATH = "/v1/organizations/analytics/cost"
USAGE_PATH = "/v1/organizations/analytics/usage"

MAX_LIMIT = 1000
EARLIEST = date(2026, 1, 1)  # the API has no data before this day
HISTORY_DAYS = 365  # nor more than this many days back
MAX_WINDOW_DAYS = 31

_COLUMNS = ("model", "workspace_id", "api_key_id", "service_tier", "context_window", "inference_geo", "speed",
            "product")
_MAX_TEXT = 500
_HANDLED = frozenset({*_COLUMNS, "actor", "actor_type", "cost_type", "token_type"})


class Actor(msgspec.Struct, frozen=True, gc=False):
    """Who usage is attributed to. `id` is the tagged id (`user_...`, `svac_...`, `apikey_...`); a federated
    identity has none, so it is `<provider>:<subject>`."""

    type: str
    id: str
    email: str | None = None
    name: str | None = None
    deleted: bool = False


# Rows are msgspec structs, not frozen dataclasses: a frozen dataclass sets each of its 18 fields through
# object.__setattr__, a measurable part of parsing a page (hundreds of rows per daily sync).
class _AnalyticsRow(msgspec.Struct, frozen=True, gc=False):
    """The day and dimensions both endpoints' rows have (positional, in this order, before their own fields)."""

    day: date
    model: str | None
    workspace_id: str | None
    api_key_id: str | None
    actor_type: str | None
    actor: Actor | None
    service_tier: str | None
    context_window: str | None
    inference_geo: str | None
    speed: str | None
    product: str | None
    other: str  # canonical JSON of further non-null dimensions, '' if none

    @property
    def base_key(self) -> tuple[Any, ...]:
        """The row's dimensions without the fan-out (what `limit` counts)."""
        return (self.model, self.workspace_id, self.api_key_id, self.actor_type, self.actor.id if self.actor else None,
                self.service_tier, self.context_window, self.inference_geo, self.speed, self.product, self.other)


class AnalyticsCostRow(_AnalyticsRow, frozen=True, gc=False):
    cost_type: str | None
    token_type: str | None
    amount_usd: Decimal  # post-discount, pre-credit
    list_amount_usd: Decimal  # pre-discount
    currency: str
    requests: int | None  # null when grouped by cost_type/token_type


class AnalyticsUsageRow(_AnalyticsRow, frozen=True, gc=False):
    uncached_input_tokens: int
    cache_read_input_tokens: int
    cache_creation_5m_input_tokens: int
    cache_creation_1h_input_tokens: int
    output_tokens: int
    web_search_requests: int
    requests: int | None


# --- the wire shapes --------------------------------------------------------------------------------


class _Cost(msgspec.Struct):
    amount: str
    list_amount: str
    currency: str
    requests: int | None = None


class _CacheCreation(msgspec.Struct):
    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0


class _ToolUse(msgspec.Struct):
    web_search_requests: int = 0


class _Usage(msgspec.Struct):
    uncached_input_tokens: int
    cache_read_input_tokens: int
    output_tokens: int
    cache_creation: _CacheCreation | None = None
    server_tool_use: _ToolUse | None = None
    requests: int | None = None


class _CostItem(msgspec.Struct):
    starting_at: str
    ending_at: str
    group: dict[str, Any]
    cost: _Cost


class _UsageItem(msgspec.Struct):
    starting_at: str
    ending_at: str
    group: dict[str, Any]
    usage: _Usage


class _CostBody(msgspec.Struct):
    data: list[_CostItem]
    has_more: bool
    next_page: str | None = None
    data_refreshed_at: str | None = None


class _UsageBody(msgspec.Struct):
    data: list[_UsageItem]
    has_more: bool
    next_page: str | None = None
    data_refreshed_at: str | None = None


_COST_DECODER = msgspec.json.Decoder(_CostBody)
_USAGE_DECODER = msgspec.json.Decoder(_UsageBody)


# --- parsing ----------------------------------------------------------------------------------------


def _decode(decoder: msgspec.json.Decoder[Any], content: bytes) -> Any:
    try:
        return decoder.decode(content)
    except msgspec.ValidationError as exc:
        raise ProtocolViolation(f"analytics page does not have the documented shape: {exc}") from None
    except msgspec.DecodeError:
        raise ValueError("body is not valid JSON") from None  # garbled in transit: retried


def _text(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise ProtocolViolation(f"{what} must be a string of at most {_MAX_TEXT} characters or null")
    return value


def _count(value: int | None, what: str) -> int:
    if value is None:
        return 0
    if not 0 <= value <= MAX_COUNT:
        raise ProtocolViolation(f"{what} must be a count in [0, {MAX_COUNT:.0e}], got {value}")
    return value


# An amount as the API writes it, inside the bounds cents_to_dollars checks (under 10^13 cents, at most 30
# places): read directly, the exponent shifted by the constructor ("1843.2075E-2" is exactly 18.432075).
_PLAIN_CENTS = re.compile(r"-?\d{1,13}(?:\.\d{1,30})?")


def _money(cents: str, what: str) -> Decimal:
    if _PLAIN_CENTS.fullmatch(cents):
        return Decimal(cents + "E-2")
    try:
        return cents_to_dollars(cents)  # exact (the exponent shifted), bounded like every amount the API sends
    except ProtocolViolation as exc:
        raise ProtocolViolation(f"{what}: {exc}") from None


def parse_actor(raw: object) -> Actor | None:
    """The `actor` union (user, service account, federated identity, API key); unknown kinds are kept."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProtocolViolation(f"actor must be an object or null, got {type(raw).__name__}")
    kind = _text(raw.get("type"), "actor.type")
    if kind == "user_actor":
        user_id = _text(raw.get("user_id"), "actor.user_id")
        if not user_id:
            raise ProtocolViolation("a user_actor has no user_id")
        deleted = raw.get("deleted", False)
        if not isinstance(deleted, bool):
            raise ProtocolViolation("actor.deleted must be a boolean")
        return Actor(kind, user_id, _text(raw.get("email_address"), "actor.email_address"),
                     _text(raw.get("name"), "actor.name"), deleted)
    if kind == "service_account_actor":
        ident = _text(raw.get("service_account_id"), "actor.service_account_id")
    elif kind == "api_actor":
        ident = _text(raw.get("api_key_id"), "actor.api_key_id")
    elif kind == "federated_actor":
        provider = raw.get("provider")
        provider_type = _text(provider.get("type"), "actor.provider.type") if isinstance(provider, dict) else None
        subject = _text(raw.get("subject"), "actor.subject")
        ident = f"{provider_type or 'unknown'}:{subject or ''}"
        return Actor(kind, ident, None, subject)
    elif kind:
        # A kind this build does not know: keep it apart by its whole content.
        return Actor(kind, json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)[:_MAX_TEXT])
    else:
        raise ProtocolViolation("actor has no type")
    if not ident:
        raise ProtocolViolation(f"a {kind} has no id")
    return Actor(kind, ident)


_Dims = tuple[str | None, str | None, str | None, str | None, Actor | None, str | None, str | None, str | None,
              str | None, str | None, str]


def _dimensions(group: dict[str, Any]) -> _Dims:
    """(model, workspace, key, actor_type, actor, tier, window, geo, speed, product, other) of a group."""
    raw_actor = group.get("actor")
    actor = None if raw_actor is None else parse_actor(raw_actor)
    actor_type = actor.type if actor else _text(group.get("actor_type"), "group.actor_type")
    values = [group.get(name) for name in _COLUMNS]
    for name, value in zip(_COLUMNS, values, strict=True):
        if value is not None and (type(value) is not str or len(value) > _MAX_TEXT):
            _text(value, f"group.{name}")  # raises, naming the field
    extra = ""
    if not group.keys() <= _HANDLED:  # a dimension this build has no column for (no set built otherwise)
        other = {k: v for k in group.keys() - _HANDLED if (v := group[k]) is not None}
        extra = json.dumps(other, sort_keys=True, separators=(",", ":"), default=str) if other else ""
    return (values[0], values[1], values[2], actor_type, actor, values[3], values[4], values[5], values[6],
            values[7], extra)


def _day(starting: str, ending: str, seen: dict[tuple[str, str], date]) -> date:
    """The UTC day of a row's bucket (`seen`: the page's buckets already parsed; rows share a few)."""
    day = seen.get((starting, ending))
    if day is None:
        day = utc_midnight(starting, "row starting_at")
        if utc_midnight(ending, "row ending_at") != day + timedelta(days=1):
            raise ProtocolViolation(f"row starting {day} is not one day wide (ending_at {ending[:40]!r})")
        seen[(starting, ending)] = day
    return day


def _refreshed(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ProtocolViolation(f"data_refreshed_at is not an RFC 3339 timestamp: {value[:40]!r}") from None
    if moment.utcoffset() is None:
        raise ProtocolViolation("data_refreshed_at has no timezone")
    return moment


def decode_cost_page(content: bytes) -> RowsBody[AnalyticsCostRow]:
    """A `/v1/organizations/analytics/cost` page, daily buckets."""
    body: _CostBody = _decode(_COST_DECODER, content)
    rows = []
    days: dict[tuple[str, str], date] = {}
    for item in body.data:
        c = item.cost
        if not c.currency:
            raise ProtocolViolation("a cost row has no currency")
        group = item.group
        rows.append(AnalyticsCostRow(
            _day(item.starting_at, item.ending_at, days), *_dimensions(group),
            cost_type=_text(group.get("cost_type"), "group.cost_type"),
            token_type=_text(group.get("token_type"), "group.token_type"),
            amount_usd=_money(c.amount, "cost.amount"), list_amount_usd=_money(c.list_amount, "cost.list_amount"),
            currency=c.currency[:10], requests=None if c.requests is None else _count(c.requests, "cost.requests")))
    return RowsBody(rows, body.has_more, body.next_page, _refreshed(body.data_refreshed_at))


def decode_usage_page(content: bytes) -> RowsBody[AnalyticsUsageRow]:
    """A `/v1/organizations/analytics/usage` page, daily buckets."""
    body: _UsageBody = _decode(_USAGE_DECODER, content)
    rows = []
    days: dict[tuple[str, str], date] = {}
    for item in body.data:
        u = item.usage
        cache = u.cache_creation or _CacheCreation()
        tools = u.server_tool_use or _ToolUse()
        rows.append(AnalyticsUsageRow(
            _day(item.starting_at, item.ending_at, days), *_dimensions(item.group),
            uncached_input_tokens=_count(u.uncached_input_tokens, "usage.uncached_input_tokens"),
            cache_read_input_tokens=_count(u.cache_read_input_tokens, "usage.cache_read_input_tokens"),
            cache_creation_5m_input_tokens=_count(cache.ephemeral_5m_input_tokens, "usage.cache_creation.5m"),
            cache_creation_1h_input_tokens=_count(cache.ephemeral_1h_input_tokens, "usage.cache_creation.1h"),
            output_tokens=_count(u.output_tokens, "usage.output_tokens"),
            web_search_requests=_count(tools.web_search_requests, "usage.server_tool_use.web_search_requests"),
            requests=None if u.requests is None else _count(u.requests, "usage.requests")))
    return RowsBody(rows, body.has_more, body.next_page, _refreshed(body.data_refreshed_at))


__all__ = ["BETA", "COST_PATH", "EARLIEST", "GROUP_BY_VALUES", "HISTORY_DAYS", "MAX_LIMIT", "MAX_WINDOW_DAYS",
           "USAGE_PATH", "Actor", "AnalyticsCostRow", "AnalyticsUsageRow", "check_group_by", "decode_cost_page",
           "decode_usage_page", "parse_actor"]
