"""Parsed report rows: money as exact Decimal dollars, cache writes read from their nested fields.

Parsing is strict about what the sync depends on (amounts, counts, days) and lenient about everything
else: unknown fields and unknown enum values are kept verbatim, never fatal.

A legacy report page (`decode_cost_report`, `decode_usage_report`) is decoded by msgspec straight into
typed structs of exactly the documented fields, with the bounds as constraints. Whatever does not fit
them (an unknown field, an amount as a JSON number, a count of 1e3, a wrong type) goes to the general
parser instead (`parse_report`: plain JSON, then `parse_bucket` and `parse_cost_row`/`parse_usage_row`),
which keeps unknown fields and names what is wrong: both paths give the same rows and the same errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Annotated, Any, Generic, TypeVar

import msgspec

from worker.api.errors import ProtocolViolation

RowT = TypeVar("RowT")

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_DECIMAL_TEXT = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?")

# Sane bounds, checked before any arithmetic. A 20-byte text such as "1e999999999" is a valid Decimal,
# but adding, summing or printing it expands a billion digits (gigabytes of memory, or a Decimal context
# overflow), and "1e400" would be stored as a 399-digit dollar figure. Anything outside these bounds is a
# broken or hostile answer, never a real bill:
# - one row is one day of one cost line in one workspace; 10^13 cents is $100 billion, more than the
#   provider's yearly revenue, so no real row comes near it;
# - 30 decimal places of a cent is far finer than any billing unit (the API shows about 4-6), and bounds
#   the digits every later sum or print produces (at most 13 + 30 + the sum's own growth);
# - one usage row is one day of one key/model/workspace/tier; 10^15 tokens (a quadrillion) is more than
#   the provider serves in a day, and 9,000 rows at the bound still sum inside a 64-bit BIGINT column.
MAX_AMOUNT_CENTS = Decimal(10) ** 13
MAX_AMOUNT_PLACES = 30
MAX_COUNT = 10**15
_MAX_NUMBER_TEXT = 64  # characters of an amount given as text; longer is not a bill either


@dataclass(frozen=True, slots=True)
class Organization:
    id: str
    name: str
    type: str


# Rows are msgspec structs, not frozen dataclasses: a frozen dataclass sets each field through
# object.__setattr__, which took more than half of parsing a page. Same fields, order, equality and hash.
class CostRow(msgspec.Struct, frozen=True, gc=False):
    day: date
    workspace_id: str | None  # None is the default workspace
    description: str | None
    cost_type: str | None
    model: str | None
    token_type: str | None
    service_tier: str | None
    context_window: str | None
    inference_geo: str | None
    amount_usd: Decimal
    currency: str
    extra: Mapping[str, Any] = _EMPTY

    def __hash__(self) -> int:
        # Without `extra` (its values may be lists): rows with unknown fields still go in sets.
        return hash((self.day, self.workspace_id, self.description, self.cost_type, self.model, self.token_type,
                     self.service_tier, self.context_window, self.inference_geo, self.amount_usd, self.currency))


class UsageRow(msgspec.Struct, frozen=True, gc=False):
    day: date
    workspace_id: str | None
    model: str | None
    service_tier: str | None
    context_window: str | None
    api_key_id: str | None  # None for Console/Workbench usage
    inference_geo: str | None
    uncached_input_tokens: int
    cache_read_input_tokens: int
    cache_creation_5m_input_tokens: int
    cache_creation_1h_input_tokens: int
    output_tokens: int
    web_search_requests: int
    extra: Mapping[str, Any] = _EMPTY

    def __hash__(self) -> int:
        return hash((self.day, self.workspace_id, self.model, self.service_tier, self.context_window,
                     self.api_key_id, self.inference_geo, self.uncached_input_tokens, self.cache_read_input_tokens,
                     self.cache_creation_5m_input_tokens, self.cache_creation_1h_input_tokens, self.output_tokens,
                     self.web_search_requests))

    @property
    def input_tokens(self) -> int:
        """Total input: uncached + cache reads + both cache writes."""
        return (
            self.uncached_input_tokens
            + self.cache_read_input_tokens
            + self.cache_creation_5m_input_tokens
            + self.cache_creation_1h_input_tokens
        )


@dataclass(frozen=True, slots=True)
class DayBucket(Generic[RowT]):
    day: date
    rows: tuple[RowT, ...]


@dataclass(frozen=True, slots=True)
class Page(Generic[RowT]):
    buckets: tuple[DayBucket[RowT], ...]
    request_id: str | None
    limit: int
    refreshed_at: datetime | None = None  # the Analytics API's `data_refreshed_at`


@dataclass(frozen=True, slots=True)
class ReportBody(Generic[RowT]):
    """A decoded legacy report page: its day buckets, and the cursor fields as sent (the paging checks them)."""

    buckets: tuple[DayBucket[RowT], ...]
    has_more: object
    next_page: object


# --- parsing ---------------------------------------------------------------------------------------------


def cents_to_dollars(value: object) -> Decimal:
    """An `amount` (a decimal string of cents, e.g. "1843.2075") as exact dollars ($18.432075)."""
    if isinstance(value, bool) or value is None:
        raise ProtocolViolation(f"amount must be a decimal string of cents, got {type(value).__name__}")
    if isinstance(value, str) and len(value) > _MAX_NUMBER_TEXT:
        raise ProtocolViolation(f"amount is {len(value)} characters long: not a plausible bill ({value[:20]!r}...)")
    if isinstance(value, int):
        if abs(value) >= MAX_AMOUNT_CENTS:  # before Decimal(value): an int of thousands of digits is slow too
            raise _amount_out_of_bounds(f"of {len(str(abs(value)))} digits")
        cents = Decimal(value)
    elif isinstance(value, Decimal):
        cents = value
    elif isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value.strip()):
        try:
            cents = Decimal(value.strip())
        except InvalidOperation:  # pragma: no cover - the pattern already excludes this
            raise ProtocolViolation(f"amount is not a decimal: {value[:40]!r}") from None
    else:
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise ProtocolViolation(f"amount is not a decimal string of cents: {shown!r}")
    if not cents.is_finite():
        raise ProtocolViolation(f"amount is not finite: {cents}")
    # Only the exponent and the leading digit's position are read here: no arithmetic on an unchecked value.
    sign, digits, exponent = cents.as_tuple()
    assert isinstance(exponent, int)
    if exponent < -MAX_AMOUNT_PLACES:
        raise ProtocolViolation(
            f"amount {_short(cents)} has {-exponent} decimal places of a cent: more than {MAX_AMOUNT_PLACES} "
            "is not a plausible bill")
    if cents and cents.adjusted() >= 13:  # |cents| >= 10^13
        raise _amount_out_of_bounds(_short(cents))
    # Shift the exponent instead of dividing: exact at any precision, no context rounding.
    return Decimal((sign, digits, exponent - 2))


def _short(value: Decimal) -> str:
    """A Decimal as scientific text (short for any exponent), clipped for a message."""
    text = str(value)
    return text if len(text) <= 40 else f"{text[:20]}...{text[-12:]}"


def _amount_out_of_bounds(shown: str) -> ProtocolViolation:
    return ProtocolViolation(
        f"amount {shown} is outside the sane bound of +-10^13 cents ($100 billion) for one row of one day")


def _count(value: object, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ProtocolViolation(f"{name} must be an integer count, got a boolean")
    if isinstance(value, int):
        count = value
    elif isinstance(value, Decimal) and value.is_finite():
        # Bounded before int(): int(Decimal("1.5e999999999")) would build a billion-digit integer.
        if value and value.adjusted() > 15:  # >= 10^16; the exact bound is checked on the int below
            raise _count_out_of_bounds(name, _short(value))
        if value != value.to_integral_value():
            raise ProtocolViolation(f"{name} must be an integer count, got {_short(value)!r}")
        count = int(value)
    else:
        shown = str(value)[:40] if isinstance(value, (str, Decimal)) else type(value).__name__
        raise ProtocolViolation(f"{name} must be an integer count, got {shown!r}")
    if count < 0:
        raise ProtocolViolation(f"{name} must not be negative, got {count}")
    if count > MAX_COUNT:
        raise _count_out_of_bounds(name, str(count) if count < 10**40 else f"of {len(str(count))} digits")
    return count


def _count_out_of_bounds(name: str, shown: str) -> ProtocolViolation:
    return ProtocolViolation(f"{name} {shown} is above the sane bound of 10^15 tokens for one row of one day")


def _opt_str(obj: Mapping[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None or isinstance(value, str):
        return value
    raise ProtocolViolation(f"{name} must be a string or null, got {type(value).__name__}")


def _obj(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProtocolViolation(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def utc_midnight(value: object, what: str) -> date:
    """The date of an RFC 3339 timestamp that must be exactly a UTC day start."""
    if not isinstance(value, str):
        raise ProtocolViolation(f"{what} must be an RFC 3339 string, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ProtocolViolation(f"{what} is not an RFC 3339 timestamp: {value[:40]!r}") from None
    offset = moment.utcoffset()
    if offset is None:
        raise ProtocolViolation(f"{what} has no timezone: {value[:40]!r}")
    moment = moment.astimezone(UTC)
    if (moment.hour, moment.minute, moment.second, moment.microsecond) != (0, 0, 0, 0):
        raise ProtocolViolation(f"{what} is not a UTC midnight: {value[:40]!r}")
    return moment.date()


_COST_FIELDS = frozenset(
    {"amount", "currency", "workspace_id", "description", "cost_type", "model", "token_type",
     "service_tier", "context_window", "inference_geo"}
)  # fmt: skip


def parse_cost_row(raw: object, day: date) -> CostRow:
    obj = _obj(raw, "cost result")
    currency = obj.get("currency")
    if not isinstance(currency, str) or not currency:
        raise ProtocolViolation(f"cost result on {day} has no currency")
    return CostRow(
        day=day,
        workspace_id=_opt_str(obj, "workspace_id"),
        description=_opt_str(obj, "description"),
        cost_type=_opt_str(obj, "cost_type"),
        model=_opt_str(obj, "model"),
        token_type=_opt_str(obj, "token_type"),
        service_tier=_opt_str(obj, "service_tier"),
        context_window=_opt_str(obj, "context_window"),
        inference_geo=_opt_str(obj, "inference_geo"),
        amount_usd=cents_to_dollars(obj.get("amount")),
        currency=currency,
        extra=MappingProxyType({k: v for k, v in obj.items() if k not in _COST_FIELDS}),
    )


_USAGE_FIELDS = frozenset(
    {"workspace_id", "model", "service_tier", "context_window", "api_key_id", "inference_geo",
     "uncached_input_tokens", "cache_read_input_tokens", "cache_creation", "output_tokens", "server_tool_use"}
)  # fmt: skip
_CACHE_CREATION = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")
_SERVER_TOOL_USE = ("web_search_requests",)


def _nested(
    obj: Mapping[str, Any], name: str, known: tuple[str, ...], extra: dict[str, Any]
) -> Mapping[str, Any]:
    value = obj.get(name)
    if value is None:
        return _EMPTY
    nested = _obj(value, name)
    for key, item in nested.items():
        if key not in known:
            extra[f"{name}.{key}"] = item
    return nested


def parse_usage_row(raw: object, day: date) -> UsageRow:
    obj = _obj(raw, "usage result")
    extra: dict[str, Any] = {k: v for k, v in obj.items() if k not in _USAGE_FIELDS}
    cache = _nested(obj, "cache_creation", _CACHE_CREATION, extra)
    tools = _nested(obj, "server_tool_use", _SERVER_TOOL_USE, extra)
    return UsageRow(
        day=day,
        workspace_id=_opt_str(obj, "workspace_id"),
        model=_opt_str(obj, "model"),
        service_tier=_opt_str(obj, "service_tier"),
        context_window=_opt_str(obj, "context_window"),
        api_key_id=_opt_str(obj, "api_key_id"),
        inference_geo=_opt_str(obj, "inference_geo"),
        uncached_input_tokens=_count(obj.get("uncached_input_tokens"), "uncached_input_tokens"),
        cache_read_input_tokens=_count(obj.get("cache_read_input_tokens"), "cache_read_input_tokens"),
        cache_creation_5m_input_tokens=_count(cache.get(_CACHE_CREATION[0]), "cache_creation.ephemeral_5m"),
        cache_creation_1h_input_tokens=_count(cache.get(_CACHE_CREATION[1]), "cache_creation.ephemeral_1h"),
        output_tokens=_count(obj.get("output_tokens"), "output_tokens"),
        web_search_requests=_count(tools.get("web_search_requests"), "server_tool_use.web_search_requests"),
        extra=MappingProxyType(extra),
    )


def _bucket_day(starting: object, ending: object) -> date:
    day = utc_midnight(starting, "bucket starting_at")
    if ending is not None and utc_midnight(ending, "bucket ending_at") != day + timedelta(days=1):
        raise ProtocolViolation(f"bucket starting {day} is not one day wide (ending_at {str(ending)[:40]!r})")
    return day


def parse_bucket(raw: object, parse_row: Callable[[object, date], RowT]) -> DayBucket[RowT]:
    obj = _obj(raw, "bucket")
    day = _bucket_day(obj.get("starting_at"), obj.get("ending_at"))
    results = obj.get("results")
    if results is None:
        results = []
    if not isinstance(results, list):
        raise ProtocolViolation(f"bucket {day}: results must be a list, got {type(results).__name__}")
    return DayBucket(day=day, rows=tuple(parse_row(item, day) for item in results))


def _check_limit(buckets: int, limit: int) -> None:
    if buckets > limit:
        raise ProtocolViolation(f"page holds {buckets} buckets, more than limit={limit}")


def parse_report(body: object, limit: int, parse_row: Callable[[object, date], RowT]) -> ReportBody[RowT]:
    """A legacy report page decoded as plain JSON (`decode_json`): the general parser."""
    if not isinstance(body, Mapping):
        raise ProtocolViolation("report body must be a JSON object")
    data = body.get("data")
    if not isinstance(data, list):
        raise ProtocolViolation("report body has no data list")
    _check_limit(len(data), limit)
    buckets = tuple(parse_bucket(item, parse_row) for item in data)
    return ReportBody(buckets, body.get("has_more"), body.get("next_page"))


# JSON with exact numbers (fractions as Decimal, never float); msgspec decodes several times faster than the
# standard library, which parsed pages on the event loop of every sync.
_JSON = msgspec.json.Decoder(float_hook=Decimal)


def decode_json(content: bytes) -> Any:
    """Any JSON body; ValueError if it is not JSON (garbled in transit: the client retries it)."""
    try:
        return _JSON.decode(content)
    except msgspec.DecodeError:
        raise ValueError("body is not valid JSON") from None


# --- the typed fast path of legacy report pages ------------------------------------------------------
# Every level forbids unknown fields: an unknown field must reach `extra` (so the general parser takes the
# page), and msgspec skips an ignored field without checking its UTF-8, which plain decoding refuses.

_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
_WireRowT = TypeVar("_WireRowT")


class _CostResult(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    amount: str
    currency: Annotated[str, msgspec.Meta(min_length=1)]
    workspace_id: str | None = None
    description: str | None = None
    cost_type: str | None = None
    model: str | None = None
    token_type: str | None = None
    service_tier: str | None = None
    context_window: str | None = None
    inference_geo: str | None = None


class _CacheCreation(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    ephemeral_5m_input_tokens: _Count | None = None
    ephemeral_1h_input_tokens: _Count | None = None


class _ServerToolUse(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    web_search_requests: _Count | None = None


_NO_CACHE, _NO_TOOLS = _CacheCreation(), _ServerToolUse()


class _UsageResult(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    uncached_input_tokens: _Count | None = None
    cache_read_input_tokens: _Count | None = None
    cache_creation: _CacheCreation | None = None
    output_tokens: _Count | None = None
    server_tool_use: _ServerToolUse | None = None
    workspace_id: str | None = None
    model: str | None = None
    service_tier: str | None = None
    context_window: str | None = None
    api_key_id: str | None = None
    inference_geo: str | None = None
    # Dimensions the rows have no column for, sent (as null) when not grouped by: kept in `extra` as before.
    speed: str | None | msgspec.UnsetType = msgspec.UNSET
    account_id: str | None | msgspec.UnsetType = msgspec.UNSET
    service_account_id: str | None | msgspec.UnsetType = msgspec.UNSET


_USAGE_EXTRA = ("speed", "account_id", "service_account_id")  # in the order the API sends them


class _Bucket(msgspec.Struct, Generic[_WireRowT], forbid_unknown_fields=True, gc=False):
    starting_at: str
    ending_at: str | None = None
    results: list[_WireRowT] | None = None


class _Report(msgspec.Struct, Generic[_WireRowT], forbid_unknown_fields=True, gc=False):
    data: list[_Bucket[_WireRowT]]
    has_more: bool
    next_page: str | None = None


_COST_REPORT = msgspec.json.Decoder(_Report[_CostResult])
_USAGE_REPORT = msgspec.json.Decoder(_Report[_UsageResult])

# An amount as the API writes it, inside the bounds cents_to_dollars checks (under 10^13 cents, at most 30
# places, ASCII digits): read directly, the exponent shifted by the constructor ("1843.2075E-2" is exactly
# 18.432075, the very Decimal cents_to_dollars gives).
_PLAIN_CENTS = re.compile(r"-?[0-9]{1,13}(?:\.[0-9]{1,30})?")


def _typed(decoder: msgspec.json.Decoder[_Report[_WireRowT]], content: bytes) -> _Report[_WireRowT] | None:
    """The page in the typed shape, or None when it does not fit it."""
    try:
        return decoder.decode(content)
    except msgspec.ValidationError:
        return None
    except msgspec.DecodeError:
        raise ValueError("body is not valid JSON") from None


def decode_cost_report(content: bytes, limit: int) -> ReportBody[CostRow]:
    """A `cost_report` page of at most `limit` daily buckets."""
    body = _typed(_COST_REPORT, content)
    if body is None:
        return parse_report(decode_json(content), limit, parse_cost_row)
    _check_limit(len(body.data), limit)
    plain = _PLAIN_CENTS.fullmatch
    buckets = []
    for bucket in body.data:
        day = _bucket_day(bucket.starting_at, bucket.ending_at)
        buckets.append(DayBucket(day, tuple([
            CostRow(day, r.workspace_id, r.description, r.cost_type, r.model, r.token_type, r.service_tier,
                    r.context_window, r.inference_geo,
                    Decimal(r.amount + "E-2") if plain(r.amount) else cents_to_dollars(r.amount), r.currency)
            for r in bucket.results or ()])))
    return ReportBody(tuple(buckets), body.has_more, body.next_page)


def decode_usage_report(content: bytes, limit: int) -> ReportBody[UsageRow]:
    """A `usage_report/messages` page of at most `limit` daily buckets."""
    body = _typed(_USAGE_REPORT, content)
    if body is None:
        return parse_report(decode_json(content), limit, parse_usage_row)
    _check_limit(len(body.data), limit)
    extras: dict[tuple[object, ...], Mapping[str, Any]] = {}  # one (read-only) mapping per distinct content
    buckets = []
    for bucket in body.data:
        day = _bucket_day(bucket.starting_at, bucket.ending_at)
        rows = []
        for r in bucket.results or ():
            cache, tools = r.cache_creation or _NO_CACHE, r.server_tool_use or _NO_TOOLS
            sent = (r.speed, r.account_id, r.service_account_id)
            extra = extras.get(sent)
            if extra is None:
                extra = extras[sent] = MappingProxyType(
                    {k: v for k, v in zip(_USAGE_EXTRA, sent, strict=True) if v is not msgspec.UNSET})
            rows.append(UsageRow(
                day, r.workspace_id, r.model, r.service_tier, r.context_window, r.api_key_id, r.inference_geo,
                r.uncached_input_tokens or 0, r.cache_read_input_tokens or 0, cache.ephemeral_5m_input_tokens or 0,
                cache.ephemeral_1h_input_tokens or 0, r.output_tokens or 0, tools.web_search_requests or 0, extra))
        buckets.append(DayBucket(day, tuple(rows)))
    return ReportBody(tuple(buckets), body.has_more, body.next_page)


def parse_organization(raw: object) -> Organization:
    obj = _obj(raw, "organization")
    org_id = obj.get("id")
    if not isinstance(org_id, str) or not org_id:
        raise ProtocolViolation("organization has no id")
    name, kind = obj.get("name"), obj.get("type")
    return Organization(
        id=org_id, name=name if isinstance(name, str) else "", type=kind if isinstance(kind, str) else ""
    )
