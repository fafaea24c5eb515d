"""The two report endpoints: parameter validation, opaque cursors, and page rendering.

A page is rendered as JSON text; a day's serialized results are cached on the generated day so
a backfill of many organizations stays cheap. Parameters outside the documented set are rejected
so a client that forgets the ``[]`` of array parameters finds out here, not in production.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from worker.simulator.data import CostRow, DayData, SimulatorData, UsageRecord
from worker.simulator.errors import ApiError, invalid
from worker.simulator.prices import pico_to_cents_string

COST_REPORT = "cost_report"
USAGE_REPORT = "usage_report"

COST_GROUP_BY: tuple[str, ...] = ("workspace_id", "description")
USAGE_GROUP_BY: tuple[str, ...] = (
    "api_key_id",
    "workspace_id",
    "model",
    "service_tier",
    "context_window",
    "inference_geo",
    "speed",
    "account_id",
    "service_account_id",
)
USAGE_FILTERS: dict[str, str] = {
    "models[]": "model",
    "workspace_ids[]": "workspace_id",
    "api_key_ids[]": "api_key_id",
    "service_tiers[]": "service_tier",
    "context_window[]": "context_window",
    "inference_geos[]": "inference_geo",
    "account_ids[]": "account_id",
    "service_account_ids[]": "service_account_id",
    "speeds[]": "speed",
}
#: Grouping usage by `speed` (fast mode) is a beta: without this `anthropic-beta` value it is refused.
FAST_MODE_BETA = "fast-mode-2026-02-01"
# bucket_width -> (seconds, default limit, max limit)
USAGE_WIDTHS: dict[str, tuple[int, int, int]] = {
    "1d": (86400, 7, 31),
    "1h": (3600, 24, 168),
    "1m": (60, 60, 1440),
}
COST_WIDTHS: dict[str, tuple[int, int, int]] = {"1d": (86400, 7, 31)}
_SCALAR_PARAMS = ("starting_at", "ending_at", "bucket_width", "limit", "page")
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_CURSOR_PREFIX = "page_"
_MIN_EPOCH = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
_MAX_EPOCH = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp())


def _fmt(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day_of(epoch: int) -> date:
    return date.fromordinal(_EPOCH_ORDINAL + epoch // 86400)


def _parse_time(name: str, value: str) -> int:
    text = value.strip()
    try:
        if "T" not in text and "t" not in text:
            raise ValueError
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise invalid(
            f"{name}: invalid RFC 3339 timestamp {value!r} (expected e.g. 2026-03-02T00:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        raise invalid(f"{name}: timestamp {value!r} must include a UTC offset, e.g. a trailing Z")
    epoch = int(parsed.timestamp() // 1)
    if not _MIN_EPOCH <= epoch <= _MAX_EPOCH:
        raise invalid(f"{name}: {value!r} is out of range (2000-01-01 to 2100-01-01)")
    return epoch


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """A validated report request. Times are epoch seconds; ``start`` is snapped to a bucket."""

    report: str
    start: int
    end: int
    width: int
    limit: int
    group_by: tuple[str, ...]
    filters: tuple[tuple[str, frozenset[str]], ...]
    page: str | None
    binding: str  # every parameter but page, canonical: a cursor is valid only for it


def parse_query(report: str, params: Sequence[tuple[str, str]], *, now: int,
                betas: frozenset[str] = frozenset()) -> ReportQuery:
    """Validate a report's query parameters or raise a 400 ``ApiError``.

    The usage report's `group_by[]` takes any number of its dimensions (the documentation sets no
    cap); `speed` only with the `fast-mode-2026-02-01` beta header.
    """
    allowed_groups = COST_GROUP_BY if report == COST_REPORT else USAGE_GROUP_BY
    widths = COST_WIDTHS if report == COST_REPORT else USAGE_WIDTHS
    filter_names = USAGE_FILTERS if report == USAGE_REPORT else {}
    scalars: dict[str, str] = {}
    groups: list[str] = []
    filters: dict[str, set[str]] = {}
    for key, value in params:
        if key in _SCALAR_PARAMS:
            if key in scalars:
                raise invalid(f"{key}: specified more than once")
            scalars[key] = value
        elif key == "group_by[]":
            groups.append(value)
        elif key in filter_names:
            filters.setdefault(filter_names[key], set()).add(value)
        elif key + "[]" in {"group_by[]", *filter_names}:
            raise invalid(f"{key}: array parameters are written with brackets: {key}[]=...")
        else:
            raise invalid(f"{key}: unknown query parameter")

    if "starting_at" not in scalars:
        raise invalid("starting_at: field required")
    start = _parse_time("starting_at", scalars["starting_at"])

    width_name = scalars.get("bucket_width", "1d")
    if width_name not in widths:
        raise invalid(
            f"bucket_width: invalid value {width_name!r}; allowed: {', '.join(widths)}"
        )
    width, default_limit, max_limit = widths[width_name]

    if "limit" in scalars:
        try:
            limit = int(scalars["limit"])
        except ValueError:
            raise invalid(f"limit: {scalars['limit']!r} is not an integer") from None
        if not 1 <= limit <= max_limit:
            raise invalid(
                f"limit: must be between 1 and {max_limit} for bucket_width {width_name}, "
                f"got {limit}"
            )
    else:
        limit = default_limit

    for g in groups:
        if g not in allowed_groups:
            raise invalid(
                f"group_by[]: invalid value {g!r}; allowed: {', '.join(allowed_groups)}"
            )
    if "speed" in groups and FAST_MODE_BETA not in betas:
        raise invalid(f"group_by[]: speed requires the anthropic-beta header {FAST_MODE_BETA}")
    group_by = tuple(g for g in allowed_groups if g in groups)

    snapped = start - start % width
    if "ending_at" in scalars:
        end = _parse_time("ending_at", scalars["ending_at"])
        if end <= start:
            raise invalid("ending_at: must be after starting_at")
    else:
        # Undocumented upstream; here: through the bucket holding "now", at least one bucket.
        end = max(now - now % width + width, snapped + width)

    binding = json.dumps(
        [report, sorted((k, v) for k, v in params if k != "page")], separators=(",", ":")
    )
    page = scalars.get("page") or None
    return ReportQuery(
        report=report,
        start=snapped,
        end=end,
        width=width,
        limit=limit,
        group_by=group_by,
        filters=tuple(sorted((k, frozenset(v)) for k, v in filters.items())),
        page=page,
        binding=binding,
    )


class CursorCodec:
    """Opaque page cursors: the next bucket's start, HMAC-bound to the org and the query."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, org: int, binding: str, payload: bytes) -> bytes:
        msg = f"{org}\x1f{binding}\x1f".encode() + payload
        return hmac.new(self._secret, msg, hashlib.sha256).digest()[:12]

    def encode(self, org: int, binding: str, next_start: int) -> str:
        payload = next_start.to_bytes(8, "big")
        token = base64.urlsafe_b64encode(payload + self._mac(org, binding, payload))
        return _CURSOR_PREFIX + token.decode().rstrip("=")

    def decode(self, org: int, binding: str, cursor: str) -> int:
        if not cursor.startswith(_CURSOR_PREFIX):
            raise invalid("page: invalid page cursor")
        text = cursor[len(_CURSOR_PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise invalid("page: invalid page cursor") from None
        if len(raw) != 20:
            raise invalid("page: invalid page cursor")
        payload, mac = raw[:8], raw[8:]
        if not hmac.compare_digest(mac, self._mac(org, binding, payload)):
            raise invalid(
                "page: invalid page cursor (cursors are only valid with the exact parameters "
                "of the request that returned them)"
            )
        return int.from_bytes(payload, "big")


@dataclass(frozen=True, slots=True)
class Page:
    """A rendered page before its pagination fields; ``results`` counts rows over all buckets."""

    buckets: list[str]
    results: int
    has_more: bool
    next_page: str | None

    def render(self) -> bytes:
        return (
            '{"data":['
            + ",".join(self.buckets)
            + f'],"has_more":{json.dumps(self.has_more)},"next_page":{json.dumps(self.next_page)}}}'
        ).encode()


def build_page(
    data: SimulatorData, org: int, q: ReportQuery, cursors: CursorCodec
) -> Page:
    """The page of buckets that ``q`` (and its cursor, if any) asks for."""
    page_start = q.start
    if q.page is not None:
        page_start = cursors.decode(org, q.binding, q.page)
        if page_start <= q.start or page_start >= q.end or (page_start - q.start) % q.width:
            raise invalid("page: invalid page cursor")
    # `ending_at` is exclusive of buckets: only buckets that end at or before it are returned.
    remaining = max(0, (q.end - page_start) // q.width)
    count = min(q.limit, remaining)
    has_more = remaining > q.limit
    next_page = cursors.encode(org, q.binding, page_start + count * q.width) if has_more else None

    buckets: list[str] = []
    total = 0
    if q.width == 86400:
        for i in range(count):
            b = page_start + i * 86400
            n, text = _day_fragment(data.day(org, _day_of(b)), q)
            total += n
            buckets.append(_bucket(b, b + 86400, text))
    else:
        minutes = q.width // 60
        day_cache: dict[date, list[list[UsageRecord]]] = {}
        for i in range(count):
            b = page_start + i * q.width
            d = _day_of(b)
            slots = day_cache.get(d)
            if slots is None:
                slots = [[] for _ in range(1440 // minutes)]
                for r in _filtered(data.day(org, d).usage, q.filters):
                    slots[r.minute // minutes].append(r)
                day_cache[d] = slots
            results = _usage_results(slots[(b % 86400) // q.width], q.group_by)
            total += len(results)
            text = json.dumps(results, separators=(",", ":"))
            buckets.append(_bucket(b, b + q.width, text))
    return Page(buckets, total, has_more, next_page)


def _bucket(start: int, end: int, results_json: str) -> str:
    return f'{{"starting_at":"{_fmt(start)}","ending_at":"{_fmt(end)}","results":{results_json}}}'


def _day_fragment(day: DayData, q: ReportQuery) -> tuple[int, str]:
    key = (q.report, q.group_by, q.filters)
    cached = day.fragments.get(key)
    if cached is None:
        if q.report == COST_REPORT:
            results = _cost_results(day, q.group_by)
        else:
            results = _usage_results(_filtered(day.usage, q.filters), q.group_by)
        cached = (len(results), json.dumps(results, separators=(",", ":")))
        day.fragments[key] = cached
    return cached


def _sort_key(key: tuple[str | None, ...]) -> tuple[tuple[bool, str], ...]:
    return tuple((v is not None, v or "") for v in key)


def _cost_results(day: DayData, group_by: tuple[str, ...]) -> list[dict[str, object]]:
    by_ws = "workspace_id" in group_by
    by_desc = "description" in group_by
    sums: dict[tuple[str | None, str | None], int] = {}
    rows: dict[tuple[str | None, str | None], CostRow] = {}
    for row in day.cost:
        key = (row.workspace_id if by_ws else None, row.description if by_desc else None)
        sums[key] = sums.get(key, 0) + row.pico
        rows[key] = row
    out: list[dict[str, object]] = []
    for key in sorted(sums, key=_sort_key):
        row = rows[key]
        out.append(
            {
                "amount": pico_to_cents_string(sums[key]),
                "currency": "USD",
                "workspace_id": key[0],
                "description": key[1],
                "cost_type": row.cost_type if by_desc else None,
                "model": row.model if by_desc else None,
                "service_tier": row.service_tier if by_desc else None,
                "context_window": row.context_window if by_desc else None,
                "token_type": row.token_type if by_desc else None,
                "inference_geo": row.inference_geo if by_desc else None,
            }
        )
    return out


def _filtered(
    records: Iterable[UsageRecord], filters: tuple[tuple[str, frozenset[str]], ...]
) -> list[UsageRecord]:
    if not filters:
        return list(records)
    return [r for r in records if all(getattr(r, f) in values for f, values in filters)]


def _usage_results(
    records: Iterable[UsageRecord], group_by: tuple[str, ...]
) -> list[dict[str, object]]:
    sums: dict[tuple[str | None, ...], list[int]] = {}
    for r in records:
        key = tuple(getattr(r, g) for g in group_by)
        acc = sums.get(key)
        if acc is None:
            acc = sums[key] = [0, 0, 0, 0, 0, 0]
        acc[0] += r.uncached_input_tokens
        acc[1] += r.cache_creation_5m
        acc[2] += r.cache_creation_1h
        acc[3] += r.cache_read_input_tokens
        acc[4] += r.output_tokens
        acc[5] += r.web_search_requests
    out: list[dict[str, object]] = []
    for key in sorted(sums, key=_sort_key):
        a = sums[key]
        result: dict[str, object] = {
            "uncached_input_tokens": a[0],
            "cache_creation": {
                "ephemeral_5m_input_tokens": a[1],
                "ephemeral_1h_input_tokens": a[2],
            },
            "cache_read_input_tokens": a[3],
            "output_tokens": a[4],
            "server_tool_use": {"web_search_requests": a[5]},
        }
        dims = dict(zip(group_by, key, strict=True))
        for g in USAGE_GROUP_BY:
            if g != "speed" or g in dims:  # results carry `speed` only when grouped by it
                result[g] = dims.get(g)
        out.append(result)
    return out


def check_result_cap(page: Page, max_results: int | None) -> None:
    """Refuse a page denser than the per-response cap, as the real API does."""
    if max_results is not None and page.results > max_results:
        raise ApiError(
            400,
            f"response too large: this page would contain {page.results} results "
            f"(at most {max_results}); reduce limit or group by fewer dimensions",
        )


__all__ = [
    "COST_REPORT",
    "USAGE_REPORT",
    "CursorCodec",
    "Page",
    "ReportQuery",
    "build_page",
    "check_result_cap",
    "parse_query",
]
