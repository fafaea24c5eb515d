"""The Usage and Cost Analytics API (beta): `GET /v1/organizations/analytics/cost` and `/usage`.

Served from the same generated usage records as the legacy reports (`data`), so both bills agree
wherever the API says they do: the Analytics API also has Priority Tier cost, the negotiated discount
(`amount` is billed, `list_amount` the list price), users with emails, service accounts, API keys and
product surfaces, and it serves only what was refreshed (`data_refreshed_at`, a lag behind now).

Shapes and rules follow the official Python SDK (anthropic 2.14, `resources/beta/organization/
analytics/cost.py`, `usage.py` and `types/beta/organization/analytics/*`):

- rows, not buckets: one row per combination of the `group_by[]` dimensions (and time bucket) with
  cost or usage; `limit` rows per page (1-1000, default 20), the `cost_type`/`token_type` fan-out rows
  of one row not counting toward it (and never split across pages); `has_more`/`next_page` cursors;
- ranked by `amount` (cost) or `total_tokens` (usage), highest first, unless `order_by` says
  otherwise; `order_by=time` orders by time bucket (`order`, newest first by default), then by the
  default metric;
- `starting_at` inclusive, not before 2026-01-01T00:00:00Z nor more than 365 days ago; `ending_at`
  exclusive, required with `time_bucket_width`; at most 31 days (24 hours at `1m`);
- at most 5 `group_by[]` dimensions, not counting `cost_type` and `token_type`; `token_type` alone
  gives token rows only (no web search or code execution), both give the token rows plus the others.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from worker.simulator.data import DayData, Org, SimulatorData, UsageRecord
from worker.simulator.errors import invalid
from worker.simulator.prices import (
    TOKEN_TYPES,
    WEB_SEARCH_PICO_PER_REQUEST,
    billed_unit_price_pico,
    pico_to_cents_string,
    unit_price_pico,
)
from worker.simulator.reports import CursorCodec

COST_PATH = "/v1/organizations/analytics/cost"
USAGE_PATH = "/v1/organizations/analytics/usage"
BETA = "analytics-usage-cost-2026-08-24"
EARLIEST = datetime(2026, 1, 1, tzinfo=UTC)
MAX_RANGE = timedelta(days=31)
MAX_DIMENSIONS = 5
FAN_OUT = ("cost_type", "token_type")
HIPAA_MESSAGE = ("The Usage and Cost Analytics API is not available to organizations with HIPAA readiness "
                 "enabled")

#: Every dimension of a row's `group` (BetaAnalyticsCostGroup); usage has all but the fan-out two.
DIMENSIONS: tuple[str, ...] = (
    "actor", "actor_type", "agent_id", "api_key_id", "claude_tag_category", "claude_tag_user_id",
    "context_window", "deployment_id", "environment_id", "inference_geo", "model", "organization_id",
    "product", "rbac_group_id", "service_tier", "session_id", "slack_channel_id", "speed",
    "user_profile_id", "workspace_id",
)
COST_GROUP_BY = frozenset(DIMENSIONS) | set(FAN_OUT)
USAGE_GROUP_BY = frozenset(DIMENSIONS)
# filter parameter -> the dimension it selects on (validated values, when the SDK lists them)
FILTERS: dict[str, str] = {
    "actor_ids[]": "actor_id", "actor_types[]": "actor_type", "agent_ids[]": "agent_id",
    "api_key_ids[]": "api_key_id", "claude_tag_categories[]": "claude_tag_category",
    "claude_tag_user_ids[]": "claude_tag_user_id", "context_windows[]": "context_window",
    "deployment_ids[]": "deployment_id", "environment_ids[]": "environment_id",
    "inference_geos[]": "inference_geo", "models[]": "model", "organization_ids[]": "organization_id",
    "products[]": "product", "rbac_group_ids[]": "rbac_group_id", "service_tiers[]": "service_tier",
    "session_ids[]": "session_id", "slack_channel_ids[]": "slack_channel_id", "speeds[]": "speed",
    "user_profile_ids[]": "user_profile_id", "workspace_ids[]": "workspace_id",
}
ENUMS: dict[str, frozenset[str]] = {
    "actor_type": frozenset({"api_actor", "federated_actor", "service_account_actor", "user_actor"}),
    "context_window": frozenset({"0-200k", "200k-1M"}),
    "inference_geo": frozenset({"global", "not_available", "us"}),
    "service_tier": frozenset({"batch", "flex", "flex_discount", "priority", "priority_on_demand", "standard"}),
    "speed": frozenset({"fast", "standard"}),
    "product": frozenset({"chat", "chat_cowork_unified", "claude_code", "claude_console", "claude_design",
                          "claude_in_chrome", "claude_tag", "cowork", "managed_agents_api",
                          "message_batches_api", "messages_api", "office_agent"}),
    "claude_tag_category": frozenset({"engaged", "proactive", "scheduled", "monitoring", "dm"}),
}
ORDER_BY = {"cost": ("amount", "list_amount", "time"),
            "usage": ("output_tokens", "requests", "time", "total_tokens", "uncached_input_tokens")}
WIDTHS = {"1d": 86400, "1h": 3600, "1m": 60}
_SCALARS = ("starting_at", "ending_at", "time_bucket_width", "limit", "page", "order", "order_by",
            "exclude_deleted_users")


def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(name: str, value: str) -> datetime:
    text = value.strip()
    try:
        if "T" not in text and "t" not in text:
            raise ValueError
        parsed = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise invalid(f"{name}: invalid RFC 3339 timestamp {value!r}") from None
    if parsed.tzinfo is None:
        raise invalid(f"{name}: timestamp {value!r} must be timezone-aware (e.g. a trailing Z)")
    return parsed.astimezone(UTC)


# --- facts: the records as the Analytics API sees them ------------------------------------------


@dataclass(frozen=True, slots=True)
class Fact:
    """One record's contribution: its dimensions, when it happened, cost lines or usage counts.

    `lines` are (cost_type, token_type, amount pico, list pico); `counts` are uncached, 5m, 1h, cache
    read, output, web searches, requests.
    """

    at: datetime
    dims: dict[str, Any]
    actor: tuple[str, str] | None  # (type, id)
    lines: tuple[tuple[str, str | None, int, int], ...] = ()
    requests: int = 0
    counts: tuple[int, ...] = ()


def actor_of(record: UsageRecord) -> tuple[str, str] | None:
    """The identity usage is attributed to: the user, else the service account, else the API key."""
    if record.account_id is not None:
        return ("user_actor", record.account_id)
    if record.service_account_id is not None:
        return ("service_account_actor", record.service_account_id)
    if record.api_key_id is not None:
        return ("api_actor", record.api_key_id)
    return None


def render_actor(org: Org, actor: tuple[str, str] | None) -> dict[str, Any] | None:
    if actor is None:
        return None
    kind, ident = actor
    if kind == "user_actor":
        user = org.user(ident)
        return {"type": kind, "user_id": user.id, "email_address": user.email, "name": user.name,
                "deleted": user.removed}
    if kind == "service_account_actor":
        return {"type": kind, "service_account_id": ident}
    return {"type": kind, "api_key_id": ident}


def _tagged_workspaces(org: Org) -> dict[str | None, str]:
    return {w.id: w.tagged_id for w in org.workspaces}


def _base_dims(org: Org, tagged: dict[str | None, str], r: UsageRecord, actor: tuple[str, str] | None,
               ) -> dict[str, Any]:
    dims: dict[str, Any] = dict.fromkeys(DIMENSIONS)
    dims.update(model=r.model, workspace_id=tagged[r.workspace_id], api_key_id=r.api_key_id,
                actor_type=actor[0] if actor else None, service_tier=r.service_tier,
                context_window=r.context_window, inference_geo=r.inference_geo, speed=r.speed,
                product=r.product)
    return dims


def day_facts(data: SimulatorData, org_index: int, day: date) -> tuple[list[Fact], list[Fact]]:
    """(cost facts, usage facts) of one day, cached on the generated day."""
    day_data: DayData = data.day(org_index, day)
    cached: tuple[list[Fact], list[Fact]] | None = day_data.fragments.get("analytics")  # put there below
    if cached is not None:
        return cached
    org = data.org(org_index)
    tagged = _tagged_workspaces(org)
    discount = org.discount_pct
    midnight = datetime.combine(day, datetime.min.time(), UTC)
    cost: list[Fact] = []
    usage: list[Fact] = []
    for r in day_data.usage:
        at = midnight + timedelta(minutes=r.minute)
        actor = actor_of(r)
        dims = _base_dims(org, tagged, r, actor)
        lines = []
        for tt in TOKEN_TYPES:
            n = r.tokens(tt)
            if n:
                lines.append(("tokens", tt, n * billed_unit_price_pico(r.model, r.service_tier, r.context_window,
                                                                        tt, discount),
                              n * unit_price_pico(r.model, r.service_tier, r.context_window, tt)))
        cost.append(Fact(at, dims, actor, tuple(lines), r.requests))
        if r.web_search_requests:
            search = {**dims, "service_tier": None, "context_window": None}
            pico = r.web_search_requests * WEB_SEARCH_PICO_PER_REQUEST
            cost.append(Fact(at, search, actor, (("web_search", None, pico, pico),), 0))
        usage.append(Fact(at, dims, actor, counts=(
            r.uncached_input_tokens, r.cache_creation_5m, r.cache_creation_1h, r.cache_read_input_tokens,
            r.output_tokens, r.web_search_requests, r.requests)))
    for c in day_data.code_execution:
        dims = dict.fromkeys(DIMENSIONS)
        dims["workspace_id"] = tagged[c.workspace_id]
        cost.append(Fact(midnight + timedelta(minutes=c.minute), dims, None,
                         (("code_execution", None, c.pico, c.pico),), 1))
    day_data.fragments["analytics"] = (cost, usage)
    return cost, usage


# --- the query ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnalyticsQuery:
    endpoint: str  # cost | usage
    start: datetime
    end: datetime
    width: int | None  # seconds; None: one row per group over the whole range
    limit: int
    group_by: tuple[str, ...]  # in DIMENSIONS order, without the fan-out
    cost_type: bool
    token_type: bool
    filters: tuple[tuple[str, frozenset[str]], ...]
    order_by: str
    descending: bool
    exclude_deleted: bool
    page: str | None
    binding: str


def parse_query(endpoint: str, params: Sequence[tuple[str, str]], *, now: datetime) -> AnalyticsQuery:
    """Validate a request's parameters as the SDK documents them, or raise a 400."""
    allowed = COST_GROUP_BY if endpoint == "cost" else USAGE_GROUP_BY
    scalars: dict[str, str] = {}
    groups: list[str] = []
    filters: dict[str, set[str]] = {}
    for key, value in params:
        if key in _SCALARS:
            if key in scalars:
                raise invalid(f"{key}: specified more than once")
            scalars[key] = value
        elif key == "group_by[]":
            if value not in allowed:
                raise invalid(f"group_by[]: invalid value {value!r}; allowed: {', '.join(sorted(allowed))}")
            if value in groups:
                raise invalid(f"group_by[]: {value!r} given more than once")
            groups.append(value)
        elif key in FILTERS:
            dim = FILTERS[key]
            values = ENUMS.get(dim)
            if values is not None and value not in values:
                raise invalid(f"{key}: invalid value {value!r}; allowed: {', '.join(sorted(values))}")
            filters.setdefault(dim, set()).add(value)
        elif key + "[]" in {"group_by[]", *FILTERS}:
            raise invalid(f"{key}: array parameters are written with brackets: {key}[]=...")
        else:
            raise invalid(f"{key}: unknown query parameter")
    if "starting_at" not in scalars:
        raise invalid("starting_at: field required")
    start = _parse_time("starting_at", scalars["starting_at"])
    if start < EARLIEST:
        raise invalid("starting_at: must be no earlier than 2026-01-01T00:00:00Z")
    if start < now - timedelta(days=365):
        raise invalid("starting_at: must be within the last 365 days")
    width_name = scalars.get("time_bucket_width")
    width = None
    if width_name is not None:
        if width_name not in WIDTHS:
            raise invalid(f"time_bucket_width: invalid value {width_name!r}; allowed: 1d, 1h, 1m")
        width = WIDTHS[width_name]
        if "ending_at" not in scalars:
            raise invalid("ending_at: required when time_bucket_width is set")
    end = _parse_time("ending_at", scalars["ending_at"]) if "ending_at" in scalars else min(now, start + MAX_RANGE)
    if end <= start:
        raise invalid("ending_at: must be after starting_at")
    if end - start > MAX_RANGE:
        raise invalid("ending_at: the range may span at most 31 days")
    if width == 60 and end - start > timedelta(hours=24):
        raise invalid("ending_at: with time_bucket_width=1m the range may span at most 24 hours")
    try:
        limit = int(scalars.get("limit", "20"))
    except ValueError:
        raise invalid(f"limit: {scalars['limit']!r} is not an integer") from None
    if not 1 <= limit <= 1000:
        raise invalid(f"limit: must be between 1 and 1000, got {limit}")
    dimensions = [g for g in groups if g not in FAN_OUT]
    if len(dimensions) > MAX_DIMENSIONS:
        raise invalid(f"group_by[]: at most {MAX_DIMENSIONS} dimensions (not counting cost_type and token_type)")
    default_order = "amount" if endpoint == "cost" else "total_tokens"
    order_by = scalars.get("order_by", default_order)
    if order_by not in ORDER_BY[endpoint]:
        raise invalid(f"order_by: invalid value {order_by!r}; allowed: {', '.join(ORDER_BY[endpoint])}")
    order = scalars.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid(f"order: invalid value {order!r}; allowed: asc, desc")
    exclude = scalars.get("exclude_deleted_users", "false").lower()
    if exclude not in ("true", "false"):
        raise invalid("exclude_deleted_users: must be true or false")
    if exclude == "true" and "actor" not in groups:
        raise invalid("exclude_deleted_users: requires group_by[]=actor")
    if width is not None:
        # Buckets are aligned to the width; only buckets that end by `ending_at` are reported.
        start = datetime.fromtimestamp(int(start.timestamp()) // width * width, UTC)
    else:
        start, end = start.replace(minute=0, second=0, microsecond=0), end.replace(minute=0, second=0, microsecond=0)
    binding = json.dumps([endpoint, sorted((k, v) for k, v in params if k != "page")], separators=(",", ":"))
    return AnalyticsQuery(
        endpoint=endpoint, start=start, end=end, width=width, limit=limit,
        group_by=tuple(d for d in DIMENSIONS if d in dimensions),
        cost_type="cost_type" in groups, token_type="token_type" in groups,
        filters=tuple(sorted((k, frozenset(v)) for k, v in filters.items())),
        order_by=order_by, descending=order == "desc", exclude_deleted=exclude == "true",
        page=scalars.get("page") or None, binding=binding,
    )


def _matches(fact: Fact, filters: tuple[tuple[str, frozenset[str]], ...]) -> bool:
    for dim, values in filters:
        if dim == "actor_id":
            ident = fact.actor[1] if fact.actor else None
            if ident not in values:
                return False
        elif dim == "api_key_id":
            if (fact.dims["api_key_id"] or "") not in values:  # an empty entry matches usage without a key
                return False
        elif dim == "inference_geo":
            if (fact.dims["inference_geo"] or "not_available") not in values:
                return False
        elif fact.dims.get(dim) not in values:
            return False
    return True


# --- rows -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Row:
    bucket: datetime
    key: tuple[Any, ...]
    actor: tuple[str, str] | None
    dims: dict[str, Any]
    sums: dict[tuple[str, str | None], list[int]]  # cost: (cost_type, token_type) -> [amount, list]
    requests: int
    counts: list[int]


def _buckets(q: AnalyticsQuery) -> list[tuple[datetime, datetime]]:
    if q.width is None:
        return [(q.start, q.end)] if q.end > q.start else []
    step = timedelta(seconds=q.width)
    out = []
    b = q.start
    while b + step <= q.end:
        out.append((b, b + step))
        b += step
    return out


def _facts_between(data: SimulatorData, org: int, endpoint: str, lo: datetime, hi: datetime,
                   refreshed: datetime) -> Iterable[Fact]:
    day = lo.date()
    while datetime.combine(day, datetime.min.time(), UTC) < hi:
        cost, usage = day_facts(data, org, day)
        for fact in cost if endpoint == "cost" else usage:
            if lo <= fact.at < hi and fact.at < refreshed:
                yield fact
        day += timedelta(days=1)


def build_rows(data: SimulatorData, org_index: int, q: AnalyticsQuery) -> list[list[dict[str, Any]]]:
    """Every row the query asks for, ranked; each entry is one row with its fan-out rows."""
    org = data.org(org_index)
    refreshed = data.refreshed_at()
    rows: dict[tuple[Any, ...], _Row] = {}
    for lo, hi in _buckets(q):
        for fact in _facts_between(data, org_index, q.endpoint, lo, hi, refreshed):
            if q.filters and not _matches(fact, q.filters):
                continue
            actor = fact.actor if "actor" in q.group_by else None
            key = (lo, actor, *(fact.dims[g] for g in q.group_by if g != "actor"))
            row = rows.get(key)
            if row is None:
                dims = {g: fact.dims[g] for g in q.group_by if g != "actor"}
                row = rows[key] = _Row(lo, key, actor, dims, {}, 0, [0] * 7)
            row.requests += fact.requests
            for cost_type, token_type, amount, listed in fact.lines:
                sub = row.sums.setdefault((cost_type, token_type), [0, 0])
                sub[0] += amount
                sub[1] += listed
            for i, n in enumerate(fact.counts):
                row.counts[i] += n
    out: list[tuple[tuple[Any, ...], list[dict[str, Any]]]] = []
    for row in rows.values():
        if q.exclude_deleted and row.actor is not None and row.actor[0] == "user_actor" \
                and org.user(row.actor[1]).removed:
            continue
        rendered, amount, listed = _render(org, q, row)
        if rendered:
            out.append((_rank(q, row, amount, listed), rendered))
    out.sort(key=lambda item: item[0])
    return [r for _, r in out]


def _sort_text(key: tuple[Any, ...]) -> str:
    return json.dumps([str(k) for k in key[1:]])


def _rank(q: AnalyticsQuery, row: _Row, amount: int, listed: int) -> tuple[Any, ...]:
    if q.endpoint == "cost":
        value, default = (listed if q.order_by == "list_amount" else amount), amount
    else:
        c = row.counts
        default = c[0] + c[1] + c[2] + c[3] + c[4]
        value = {"output_tokens": c[4], "requests": c[6], "uncached_input_tokens": c[0]}.get(q.order_by, default)
    bucket = row.bucket.timestamp()
    tie = _sort_text(row.key)
    if q.order_by == "time":  # by bucket in `order`, then by the default metric, highest first
        return (-bucket if q.descending else bucket, -default, tie)
    return (-value if q.descending else value, bucket, tie)


def _group(org: Org, q: AnalyticsQuery, row: _Row, cost_type: str | None, token_type: str | None,
           ) -> dict[str, Any]:
    group: dict[str, Any] = dict.fromkeys(DIMENSIONS)
    group.update(row.dims)
    group["actor"] = render_actor(org, row.actor) if "actor" in q.group_by else None
    if q.endpoint == "cost":
        group["cost_type"] = cost_type
        group["token_type"] = token_type
    return group


def _render(org: Org, q: AnalyticsQuery, row: _Row) -> tuple[list[dict[str, Any]], int, int]:
    """The row (with its fan-out rows) and its amount and list amount in pico-dollars."""
    times = {"starting_at": _fmt(row.bucket),
             "ending_at": _fmt(row.bucket + timedelta(seconds=q.width) if q.width else q.end)}
    if q.endpoint == "usage":
        c = row.counts
        usage = {"uncached_input_tokens": c[0],
                 "cache_creation": {"ephemeral_5m_input_tokens": c[1], "ephemeral_1h_input_tokens": c[2]},
                 "cache_read_input_tokens": c[3], "output_tokens": c[4],
                 "server_tool_use": {"web_search_requests": c[5]},
                 "total_tokens": c[0] + c[1] + c[2] + c[3] + c[4], "requests": c[6]}
        return [{**times, "group": _group(org, q, row, None, None), "usage": usage}], 0, 0
    parts: list[tuple[str | None, str | None, int, int]] = []
    if q.token_type:
        for (ct, tt), (amount, listed) in row.sums.items():
            if ct == "tokens":
                parts.append(("tokens", tt, amount, listed))
        if q.cost_type:
            other: dict[str, list[int]] = {}
            for (ct, _tt), (amount, listed) in row.sums.items():
                if ct != "tokens":
                    acc = other.setdefault(ct, [0, 0])
                    acc[0] += amount
                    acc[1] += listed
            parts.extend((ct, None, a, b) for ct, (a, b) in other.items())
    elif q.cost_type:
        by_type: dict[str, list[int]] = {}
        for (ct, _tt), (amount, listed) in row.sums.items():
            acc = by_type.setdefault(ct, [0, 0])
            acc[0] += amount
            acc[1] += listed
        parts.extend((ct, None, a, b) for ct, (a, b) in by_type.items())
    else:
        parts.append((None, None, sum(v[0] for v in row.sums.values()), sum(v[1] for v in row.sums.values())))
    fanned = q.cost_type or q.token_type
    parts.sort(key=lambda p: (-p[2], p[0] or "", p[1] or ""))
    rendered = [{**times, "group": _group(org, q, row, ct, tt),
                 "cost": {"amount": pico_to_cents_string(amount), "list_amount": pico_to_cents_string(listed),
                          "currency": "USD", "requests": None if fanned else row.requests}}
                for ct, tt, amount, listed in parts]
    return rendered, sum(p[2] for p in parts), sum(p[3] for p in parts)


@dataclass(frozen=True, slots=True)
class RowPage:
    rows: list[dict[str, Any]]
    has_more: bool
    next_page: str | None
    refreshed_at: datetime

    def render(self, *, drop_next_page: bool = False) -> bytes:
        return json.dumps({
            "data": self.rows,
            "has_more": True if drop_next_page else self.has_more,
            "next_page": None if drop_next_page else self.next_page,
            "data_refreshed_at": _fmt(self.refreshed_at),
        }, separators=(",", ":")).encode()


class RowCache:
    """The ranked rows of the last few queries, so following a query's cursor does not rebuild them."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._rows: dict[tuple[Any, ...], list[list[dict[str, Any]]]] = {}

    def get(self, data: SimulatorData, org: int, q: AnalyticsQuery) -> list[list[dict[str, Any]]]:
        first, last = q.start.date(), q.end.date()
        # Restatements and spikes change a day's rows: they are part of the key.
        versions = tuple(data.variant(org, first + timedelta(days=i)) for i in range((last - first).days + 1))
        key = (org, q.binding, q.start, q.end, data.refreshed_at(), versions)
        rows = self._rows.get(key)
        if rows is None:
            rows = build_rows(data, org, q)
            if len(self._rows) >= self.size:
                self._rows.pop(next(iter(self._rows)))
            self._rows[key] = rows
        return rows


def build_page(data: SimulatorData, org: int, q: AnalyticsQuery, cursors: CursorCodec, cache: RowCache) -> RowPage:
    rows = cache.get(data, org, q)
    offset = 0
    if q.page is not None:
        offset = cursors.decode(org, q.binding, q.page)
        if not 0 < offset < len(rows):
            raise invalid("page: invalid page cursor")
    chunk = rows[offset:offset + q.limit]
    has_more = offset + q.limit < len(rows)
    next_page = cursors.encode(org, q.binding, offset + q.limit) if has_more else None
    return RowPage([r for group in chunk for r in group], has_more, next_page, data.refreshed_at())


__all__ = ["BETA", "COST_PATH", "HIPAA_MESSAGE", "USAGE_PATH", "AnalyticsQuery", "RowCache", "RowPage",
           "actor_of", "build_page", "build_rows", "day_facts", "parse_query", "render_actor"]
