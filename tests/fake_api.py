"""A fake of Anthropic's Admin API for one organization, mounted on a respx router.

It generates deterministic data from integers, serves it the way the documented API does (daily buckets,
empty days included, `limit`, opaque `next_page` cursors, `group_by[]` aggregation, the error envelope)
and keeps an independent ground truth computed from the same integers, never from the client's parsing.

    fake = FakeAdminApi(start=date(2025, 12, 1), end=date(2026, 3, 10), seed=7)
    with respx.mock(assert_all_called=False) as router:
        fake.mount(router, "https://api.anthropic.com")
        fake.faults.rate_limit(2, retry_after=30)    # the 2nd request answers 429 retry-after: 30
        ...                                          # run the code under test
    assert total_for(day, model) == fake.truth_cost(day, model)

Money: every cost is an integer number of ten-thousandths of a cent ("units"); the API's `amount` string
is formatted from that integer (12345678 units -> "1234.5678" cents), and the truth in dollars is
units / 10**6.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from types import EllipsisType
from typing import TYPE_CHECKING, Any

import httpx
import respx

if TYPE_CHECKING:
    from worker.api import CostRow, Page
    from worker.clock import Clock

FAKE_ADMIN_KEY = "sk-ant-admin01-FakeKeyForTestsOnly_0123456789abcdefghijklmnopqrstuvwxyz-AbCdEfGh"
ME_PATH = "/v1/organizations/me"
COST_PATH = "/v1/organizations/cost_report"
USAGE_PATH = "/v1/organizations/usage_report/messages"
TOO_LARGE_MESSAGE = "Response too large: the requested page exceeds the maximum response size; reduce limit"

WORKSPACES: tuple[str | None, ...] = (None, "wrkspc_01AlphaTeam0000000000", "wrkspc_01BetaTeam00000000000")
API_KEYS: tuple[str | None, ...] = ("apikey_01Prod000000000000", "apikey_01Batch00000000000", None)
MODELS = {  # model id -> (display name, input price in units (1e-4 cent) per million tokens)
    "claude-opus-4-6": ("Claude Opus 4.6", 5_000_000),
    "claude-sonnet-4-6": ("Claude Sonnet 4.6", 3_000_000),
    "claude-haiku-4-5": ("Claude Haiku 4.5", 1_000_000),
}
TIERS = ("standard", "batch")
CONTEXT_WINDOWS = ("0-200k", "200k-1M")
GEOS = ("global", "us")
# token_type -> (label in the description, price multiplier as a fraction of the input price)
TOKEN_TYPES: dict[str, tuple[str, int, int]] = {
    "uncached_input_tokens": ("Input Tokens", 1, 1),
    "output_tokens": ("Output Tokens", 5, 1),
    "cache_read_input_tokens": ("Cache Read", 1, 10),
    "cache_creation.ephemeral_5m_input_tokens": ("5m Cache Write", 5, 4),
    "cache_creation.ephemeral_1h_input_tokens": ("1h Cache Write", 2, 1),
}
COUNTERS = (
    "uncached_input_tokens",
    "cache_read_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "output_tokens",
    "web_search_requests",
)
_COUNTER_OF_TOKEN_TYPE = {
    "uncached_input_tokens": "uncached_input_tokens",
    "output_tokens": "output_tokens",
    "cache_read_input_tokens": "cache_read_input_tokens",
    "cache_creation.ephemeral_5m_input_tokens": "cache_creation_5m_input_tokens",
    "cache_creation.ephemeral_1h_input_tokens": "cache_creation_1h_input_tokens",
}
USAGE_DIMS = ("workspace_id", "model", "service_tier", "context_window", "api_key_id", "inference_geo")
USAGE_GROUPABLE = frozenset(USAGE_DIMS) | {"speed", "account_id", "service_account_id"}
COST_GROUPABLE = frozenset({"workspace_id", "description"})
DESCRIBED = ("cost_type", "model", "token_type", "service_tier", "context_window", "inference_geo")
NOT_SET: Any = type("NotSet", (), {"__repr__": lambda self: "NOT_SET"})()
WEB_SEARCH_UNITS = 10_000  # $10 per 1,000 searches = 1 cent each
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    504: "timeout_error", 529: "overloaded_error",
}  # fmt: skip


def cents_text(units: int) -> str:
    """Format integer ten-thousandths of a cent as the API's decimal cents string, from integers only."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10_000)
    return f"{sign}{whole}.{frac:04d}"


def units_to_dollars(units: int) -> Decimal:
    return Decimal(units).scaleb(-6)


def _ts(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


@dataclass
class UsageRecord:
    day: date
    workspace_id: str | None
    model: str
    service_tier: str
    context_window: str
    api_key_id: str | None
    inference_geo: str
    counts: dict[str, int]


@dataclass
class CostRecord:
    day: date
    workspace_id: str | None
    description: str
    cost_type: str
    model: str | None
    token_type: str | None
    service_tier: str | None
    context_window: str | None
    inference_geo: str | None
    units: int


@dataclass
class RecordedRequest:
    number: int
    path: str
    params: dict[str, list[str]]
    headers: dict[str, str]
    status: int | None = None

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[-1] if values else None


@dataclass
class _Reply:
    status: int
    retry_after: str | None = None
    error_type: str | None = None
    message: str | None = None
    raw_body: bytes | None = None  # sent verbatim (a 2xx that is not JSON)


@dataclass
class Faults:
    """What to break. Request numbers are 1-based and count every request the fake receives."""

    script: dict[int, _Reply | Exception] = field(default_factory=dict)
    blocked_after: int | None = None  # every request after this many answers `blocked_status`
    blocked_status: int = 401
    has_more_without_cursor: bool = False  # a page with more to come says has_more without next_page
    empty_cursor: bool = False  # ... or with next_page ""
    repeat_cursor: bool = False  # a followed page hands back the cursor it was called with
    too_large_above_limit: int | None = None  # 400 "too large" when limit exceeds this
    max_results_per_page: int | None = None  # 400 "too large" when a page would hold more results
    missing_days: set[date] = field(default_factory=set)  # buckets silently left out
    duplicate_day: date | None = None  # this day's bucket is served twice in its page
    malformed_amount: object = NOT_SET  # replaces the first cost amount in every cost response (None too)
    novel_fields: bool = False  # unknown fields, cost types, token types and nested counters

    def _numbers(self, numbers: Iterable[int]) -> list[int]:
        out = list(numbers)
        if not out:
            raise ValueError("give the request number(s) to break")
        return out

    def rate_limit(self, *numbers: int, retry_after: float | str | None = None) -> None:
        for n in self._numbers(numbers):
            ra = None if retry_after is None else str(retry_after)
            self.script[n] = _Reply(429, retry_after=ra, message="Rate limit exceeded")

    def error(
        self, *numbers: int, status: int = 500, error_type: str | None = None, message: str | None = None
    ) -> None:
        for n in self._numbers(numbers):
            self.script[n] = _Reply(status, error_type=error_type, message=message)

    def disconnect(self, *numbers: int) -> None:
        """The connection drops mid-body (httpx.RemoteProtocolError)."""
        for n in self._numbers(numbers):
            self.script[n] = httpx.RemoteProtocolError("peer closed connection without sending complete body")

    def timeout(self, *numbers: int) -> None:
        for n in self._numbers(numbers):
            self.script[n] = httpx.ReadTimeout("timed out")

    def bad_json(self, *numbers: int) -> None:
        """200 with a truncated JSON body."""
        for n in self._numbers(numbers):
            self.script[n] = _Reply(200, raw_body=b'{"data": [{"starting_at": "2026-')

    def block_after(self, count: int, status: int = 401) -> None:
        self.blocked_after, self.blocked_status = count, status


_GENERATED: dict[tuple[int, date, date, float], tuple[list[UsageRecord], list[CostRecord], list[date]]] = {}


class FakeAdminApi:
    """One organization's Admin API over generated data for days `[start, end)` (other days are empty)."""

    def __init__(
        self,
        *,
        org_id: str = "9a0f5b3e-7c1d-4e2a-8b6f-0d1c2e3f4a5b",
        name: str = "Fake Org",
        start: date = date(2025, 12, 1),
        end: date = date(2026, 3, 10),
        seed: int = 0,
        key: str = FAKE_ADMIN_KEY,
        density: float = 0.25,
    ) -> None:
        self.org_id, self.name, self.start, self.end = org_id, name, start, end
        self.seed, self.key = seed, key
        self.faults = Faults()
        self.requests: list[RecordedRequest] = []
        self._cursors: dict[str, tuple[tuple[tuple[str, str], ...], date]] = {}
        self.usage: list[UsageRecord] = []
        self.costs: list[CostRecord] = []
        self.empty_days: list[date] = []
        cache_key = (seed, start, end, density)
        if cache_key not in _GENERATED:  # records are read-only: share them between instances
            day = start
            while day < end:
                self._generate_day(day, density)
                day += timedelta(days=1)
            _GENERATED[cache_key] = (self.usage, self.costs, self.empty_days)
        usage, costs, empty = _GENERATED[cache_key]
        # Served from these lists on every request: a test may edit them to simulate a restatement.
        self.usage, self.costs, self.empty_days = list(usage), list(costs), list(empty)

    # --- generation -------------------------------------------------------------------------------------

    def _generate_day(self, day: date, density: float) -> None:
        rng = random.Random(f"fake-admin-api:{self.seed}:{day.isoformat()}")
        if (day - self.start).days % 9 == 4 or rng.random() < 0.05:
            self.empty_days.append(day)
            return
        day_usage: list[UsageRecord] = []
        for ws in WORKSPACES:
            for model in MODELS:
                for tier in TIERS:
                    for cw in CONTEXT_WINDOWS:
                        for key in API_KEYS:
                            if rng.random() >= density:
                                continue
                            geo = GEOS[rng.randrange(len(GEOS))] if tier == "standard" else "global"
                            scale = 10 ** rng.randint(2, 6)
                            counts = {
                                "uncached_input_tokens": rng.randint(0, 9) * scale + rng.randint(0, 999),
                                "cache_read_input_tokens": rng.randint(0, 20) * scale,
                                "cache_creation_5m_input_tokens": rng.randint(0, 3) * scale
                                + rng.randint(0, 99),
                                "cache_creation_1h_input_tokens": rng.randint(0, 2) * scale,
                                "output_tokens": rng.randint(1, 5) * scale // 10 + rng.randint(0, 77),
                                "web_search_requests": rng.choice((0, 0, 0, 1, 3, 12)),
                            }
                            day_usage.append(UsageRecord(day, ws, model, tier, cw, key, geo, counts))
        self.usage.extend(day_usage)
        # Cost has no api-key dimension: price the usage summed over keys, one record per description.
        tokens: dict[tuple[Any, ...], int] = defaultdict(int)
        searches: dict[str | None, int] = defaultdict(int)
        for u in day_usage:
            for token_type, counter in _COUNTER_OF_TOKEN_TYPE.items():
                key = (u.workspace_id, u.model, u.service_tier, u.context_window, u.inference_geo, token_type)
                tokens[key] += u.counts[counter]
            searches[u.workspace_id] += u.counts["web_search_requests"]
        for (ws, model, tier, cw, geo, token_type), count in sorted(tokens.items(), key=_sort_key):
            if count == 0:
                continue
            display, input_price = MODELS[model]
            label, num, den = TOKEN_TYPES[token_type]
            price = input_price * num // den  # units per million tokens (exact by construction)
            if tier == "batch":
                price //= 2
            if cw == "200k-1M":
                price = price * (3 if token_type == "output_tokens" else 4) // 2
            units = count * price // 1_000_000  # fractional cents survive: units are 1e-4 cent
            desc = f"{display} Usage - {label}"
            desc += " (Batch)" if tier == "batch" else ""
            desc += " (Long Context)" if cw == "200k-1M" else ""
            desc += " (US)" if geo == "us" else ""
            self.costs.append(CostRecord(day, ws, desc, "tokens", model, token_type, tier, cw, geo, units))
        for ws in WORKSPACES:
            count = searches[ws]
            if count:
                units = count * WEB_SEARCH_UNITS
                self.costs.append(CostRecord(day, ws, "Web Search", "web_search", *(None,) * 5, units))
        for ws in WORKSPACES:
            if rng.random() < 0.3:
                units = rng.randint(1, 900_000)
                desc, kind = "Code Execution Usage", "code_execution"
                self.costs.append(CostRecord(day, ws, desc, kind, *(None,) * 5, units))

    # --- ground truth (from the integers, never from the client) ---------------------------------------

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days)]

    @property
    def models(self) -> list[str | None]:
        return [*MODELS, None]

    def truth_cost_units(self, day: date | None = None, model: str | None | EllipsisType = ...) -> int:
        return sum(
            c.units
            for c in self.costs
            if (day is None or c.day == day) and (model is ... or c.model == model)
        )

    def truth_cost(self, day: date | None = None, model: str | None | EllipsisType = ...) -> Decimal:
        """Dollars for `day` (all days if None) and `model` (None = non-token costs; omit for every model)."""
        return units_to_dollars(self.truth_cost_units(day, model))

    def truth_tokens(self, day: date | None = None, model: str | None | EllipsisType = ...) -> dict[str, int]:
        """Counters keyed by UsageRow field names, summed over the matching usage records."""
        totals = dict.fromkeys(COUNTERS, 0)
        for u in self.usage:
            if (day is None or u.day == day) and (model is ... or u.model == model):
                for name in COUNTERS:
                    totals[name] += u.counts[name]
        return totals

    # --- serving ----------------------------------------------------------------------------------------

    def mount(self, router: respx.Router, base_url: str = "https://api.anthropic.com") -> respx.Route:
        """Route every GET under `base_url` on `router` to this fake."""
        base = httpx.URL(base_url.rstrip("/") + "/")
        prefix = base.path.rstrip("/")

        def handler(request: httpx.Request) -> httpx.Response:
            return self.handle(request, request.url.path[len(prefix):])

        route = router.route(method="GET", scheme=base.scheme, host=base.host, path__startswith=base.path)
        return route.mock(side_effect=handler)

    def transport(self) -> httpx.MockTransport:
        """The fake as an httpx transport (an alternative to respx patching)."""
        return httpx.MockTransport(lambda request: self.handle(request, request.url.path))

    def handle(self, request: httpx.Request, path: str) -> httpx.Response:
        number = len(self.requests) + 1
        record = RecordedRequest(
            number=number,
            path=path,
            params={k: request.url.params.get_list(k) for k in request.url.params.keys()},
            headers=dict(request.headers.items()),
        )
        self.requests.append(record)
        response = self._respond(number, record)
        record.status = response.status_code
        return response

    def _respond(self, number: int, req: RecordedRequest) -> httpx.Response:
        rid = f"req_fake{number:06d}"
        scripted = self.faults.script.get(number)
        if isinstance(scripted, Exception):
            raise scripted
        if isinstance(scripted, _Reply):
            if scripted.raw_body is not None:
                return httpx.Response(scripted.status, content=scripted.raw_body, headers={"request-id": rid})
            headers = {"retry-after": scripted.retry_after} if scripted.retry_after is not None else {}
            return self._error(scripted.status, rid, scripted.message, scripted.error_type, headers)
        if self.faults.blocked_after is not None and number > self.faults.blocked_after:
            return self._error(self.faults.blocked_status, rid)
        if req.headers.get("x-api-key") != self.key:
            return self._error(401, rid, "invalid x-api-key")
        if req.headers.get("anthropic-version") is None:
            return self._error(400, rid, "anthropic-version: header is required")
        if req.path == ME_PATH:
            return self._json({"id": self.org_id, "type": "organization", "name": self.name}, rid)
        if req.path == COST_PATH:
            return self._report(req, rid, COST_GROUPABLE, None, self.costs, self._cost_results)
        if req.path == USAGE_PATH:
            return self._report(req, rid, USAGE_GROUPABLE, 5, self.usage, self._usage_results)
        return self._error(404, rid, f"Not found: {req.path}")

    def _report(
        self,
        req: RecordedRequest,
        rid: str,
        groupable: frozenset[str],
        max_groups: int | None,
        records: list[Any],
        results: Callable[[list[Any], list[str]], list[dict[str, Any]]],
    ) -> httpx.Response:
        if req.param("bucket_width") not in (None, "1d"):
            return self._error(400, rid, "bucket_width: only 1d is supported by this fake")
        group_by = req.params.get("group_by[]", [])
        if max_groups is not None and len(group_by) > max_groups:
            return self._error(400, rid, f"Cannot specify more than {max_groups} group_by[] dimensions")
        unknown = [g for g in group_by if g not in groupable]
        if unknown:
            return self._error(400, rid, f"group_by[]: invalid value {unknown[0]!r}")
        try:
            first = _day_of(req.param("starting_at"))
            limit = int(req.param("limit") or 7)
            ending = req.param("ending_at")
            last = _day_of(ending) if ending else first + timedelta(days=limit)
        except ValueError as exc:
            return self._error(400, rid, str(exc))
        if not 1 <= limit <= 31:
            return self._error(400, rid, "limit: must be between 1 and 31 for bucket_width 1d")
        if last <= first:
            return self._error(400, rid, "ending_at must be after starting_at")
        if self.faults.too_large_above_limit is not None and limit > self.faults.too_large_above_limit:
            return self._error(400, rid, TOO_LARGE_MESSAGE)
        signature = tuple(sorted((k, v) for k, vs in req.params.items() if k != "page" for v in vs))
        cursor = req.param("page")
        day = first
        if cursor is not None:
            known = self._cursors.get(cursor)
            if known is None:
                return self._error(400, rid, "page: invalid page token")
            if known[0] != signature:
                return self._error(400, rid, "page: the page token does not match the other query parameters")
            day = known[1]
        page_end = min(last, day + timedelta(days=limit))
        by_day: dict[date, list[Any]] = defaultdict(list)
        for record in records:
            if day <= record.day < page_end:
                by_day[record.day].append(record)
        data: list[dict[str, Any]] = []
        d = day
        while d < page_end:
            if d not in self.faults.missing_days:
                bucket = {
                    "starting_at": _ts(d),
                    "ending_at": _ts(d + timedelta(days=1)),
                    "results": results(by_day[d], group_by),
                }
                data.append(bucket)
                if d == self.faults.duplicate_day:
                    data.append(bucket)
            d += timedelta(days=1)
        if self.faults.max_results_per_page is not None:
            if sum(len(b["results"]) for b in data) > self.faults.max_results_per_page:
                return self._error(400, rid, TOO_LARGE_MESSAGE)
        if req.path == COST_PATH and self.faults.malformed_amount is not NOT_SET:
            for bucket in data:
                if bucket["results"]:
                    bucket["results"][0]["amount"] = self.faults.malformed_amount
                    break
        has_more = page_end < last
        next_page: str | None = None
        if has_more:
            if self.faults.repeat_cursor and cursor is not None:
                next_page = cursor
            elif self.faults.has_more_without_cursor:
                next_page = None
            elif self.faults.empty_cursor:
                next_page = ""
            else:
                digest = hashlib.sha256(f"{signature}|{page_end}|{len(self._cursors)}".encode()).digest()[:12]
                next_page = "page_" + base64.urlsafe_b64encode(digest).decode()
                self._cursors[next_page] = (signature, page_end)
        return self._json({"data": data, "has_more": has_more, "next_page": next_page}, rid)

    def _usage_results(self, records: list[UsageRecord], group_by: list[str]) -> list[dict[str, Any]]:
        grouped: dict[tuple[Any, ...], dict[str, int]] = {}
        for u in records:
            key = tuple(getattr(u, d) if d in group_by else None for d in USAGE_DIMS)
            sums = grouped.setdefault(key, dict.fromkeys(COUNTERS, 0))
            for name in COUNTERS:
                sums[name] += u.counts[name]
        out = []
        for key, sums in sorted(grouped.items(), key=_sort_key):
            row: dict[str, Any] = {
                "uncached_input_tokens": sums["uncached_input_tokens"],
                "cache_creation": {
                    "ephemeral_1h_input_tokens": sums["cache_creation_1h_input_tokens"],
                    "ephemeral_5m_input_tokens": sums["cache_creation_5m_input_tokens"],
                },
                "cache_read_input_tokens": sums["cache_read_input_tokens"],
                "output_tokens": sums["output_tokens"],
                "server_tool_use": {"web_search_requests": sums["web_search_requests"]},
                **dict(zip(USAGE_DIMS, key, strict=True)),
            }
            for extra_dim in ("speed", "account_id", "service_account_id"):
                if extra_dim in group_by:
                    row[extra_dim] = None
            if self.faults.novel_fields:
                row["cache_creation"]["ephemeral_30m_input_tokens"] = 7
                row["server_tool_use"]["code_execution_requests"] = 2
                row["speed"] = "fast"
                row["brand_new_field"] = {"nested": [1, 2]}
            out.append(row)
        return out

    def _cost_results(self, records: list[CostRecord], group_by: list[str]) -> list[dict[str, Any]]:
        grouped: dict[tuple[Any, ...], int] = defaultdict(int)
        for c in records:
            described = tuple(getattr(c, f) for f in DESCRIBED) if "description" in group_by else (None,) * 6
            key = (
                c.workspace_id if "workspace_id" in group_by else None,
                c.description if "description" in group_by else None,
                *described,
            )
            grouped[key] += c.units
        out = []
        for key, units in sorted(grouped.items(), key=_sort_key):
            ws, desc, *described = key
            row: dict[str, Any] = {
                "amount": cents_text(units),
                "currency": "USD",
                "workspace_id": ws,
                "description": desc,
                **dict(zip(DESCRIBED, described, strict=True)),
            }
            out.append(row)
        if self.faults.novel_fields and out:
            out.append({"amount": "0.0125", "currency": "USD", "workspace_id": None,
                        "description": "Claude Agent Session", "cost_type": "session_usage_v2", "model": None,
                        "token_type": "brand_new_token_type", "service_tier": "flex", "context_window": None,
                        "inference_geo": None, "billing_unit": "session-hour"})  # fmt: skip
        return out

    # --- envelopes --------------------------------------------------------------------------------------

    @staticmethod
    def _json(body: Mapping[str, Any], rid: str) -> httpx.Response:
        return httpx.Response(200, content=json.dumps(body).encode(), headers={
            "content-type": "application/json", "request-id": rid})  # fmt: skip

    @staticmethod
    def _error(
        status: int,
        rid: str,
        message: str | None = None,
        error_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        fallback = "api_error" if status >= 500 else "invalid_request_error"
        etype = error_type or ERROR_TYPES.get(status) or fallback
        error = {"type": etype, "message": message or f"fake {etype}"}
        body = {"type": "error", "error": error, "request_id": rid}
        return httpx.Response(
            status,
            content=json.dumps(body).encode(),
            headers={"content-type": "application/json", "request-id": rid, **(headers or {})},
        )

    def report_requests(self, path: str | None = None) -> list[RecordedRequest]:
        """Recorded requests to the report endpoints (or to one `path`)."""
        paths = (path,) if path else (COST_PATH, USAGE_PATH)
        return [r for r in self.requests if r.path in paths]


def _day_of(value: str | None) -> date:
    if not value:
        raise ValueError("starting_at: field required")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"invalid RFC 3339 timestamp: {value!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"timestamp needs a timezone: {value!r}")
    return moment.astimezone(UTC).date()  # the API snaps buckets to UTC day starts


def _sort_key(item: tuple[tuple[Any, ...], Any]) -> tuple[tuple[bool, str], ...]:
    return tuple((v is not None, str(v)) for v in item[0])


# --- helpers for tests that drive a client against the fake ------------------------------------------


class CountingGate:
    """A RequestGate that counts calls and can make each one wait (through the given clock)."""

    def __init__(self, clock: Clock, wait: float = 0.0) -> None:
        self.clock, self.wait, self.calls = clock, wait, 0

    async def acquire(self) -> float:
        self.calls += 1
        if self.wait:
            await self.clock.sleep(self.wait)
        return self.wait


def cost_by_day_model(pages: list[Page[CostRow]]) -> dict[tuple[date, str | None], Decimal]:
    totals: dict[tuple[date, str | None], Decimal] = defaultdict(Decimal)
    for page in pages:
        for bucket in page.buckets:
            for row in bucket.rows:
                totals[(bucket.day, row.model)] += row.amount_usd
    return totals


def days_of(pages: list[Page[Any]]) -> list[date]:
    return [b.day for p in pages for b in p.buckets]
