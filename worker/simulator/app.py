"""The simulated Admin API, transport-free: one request in, one ``Response`` out.

Order of checks for ``/v1/`` requests: credentials (401/403), ``anthropic-version`` (400), the
key's rate limit (429), injected faults, then the endpoint itself (and page faults on its page).
``/_sim/`` is the control API for tests and benchmarks; it needs no key and is not counted in the
stats. With ``record_requests`` every ``/v1/`` request is also kept in ``requests`` (in-process
tests read it; it holds the keys sent, so it is never served).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from worker.simulator import analytics, directory
from worker.simulator.data import Org, SimulatorData, stable_hash
from worker.simulator.errors import ApiError, invalid, new_request_id
from worker.simulator.faults import (
    ERROR_KINDS,
    PAGE_KINDS,
    PRE_KINDS,
    STATE_KINDS,
    Fault,
    FaultSet,
    FaultSpecError,
    fault_from_mapping,
    parse_fault,
)
from worker.simulator.ratelimit import RateLimiter
from worker.simulator.reports import (
    COST_REPORT,
    USAGE_REPORT,
    CursorCodec,
    build_page,
    check_result_cap,
    parse_query,
)
from worker.simulator.tamper import PageView
from worker.simulator.truth import BY as analytics_truth_by
from worker.simulator.truth import analytics_truth, priority_cost

ME_PATH = "/v1/organizations/me"
COST_PATH = "/v1/organizations/cost_report"
USAGE_PATH = "/v1/organizations/usage_report/messages"
_API_PATHS = {ME_PATH: None, COST_PATH: COST_REPORT, USAGE_PATH: USAGE_REPORT,
              analytics.COST_PATH: "analytics_cost", analytics.USAGE_PATH: "analytics_usage",
              directory.API_KEYS_PATH: "api_keys", directory.WORKSPACES_PATH: "workspaces"}
_NO_NEXT_PAGE = frozenset({"no-next-page"})  # the one page fault of the Analytics API's row pages
_CURSOR_KINDS = frozenset({"410"})


def _betas(headers: Mapping[str, str]) -> frozenset[str]:
    return frozenset(b.strip() for b in headers.get("anthropic-beta", "").split(",") if b.strip())


def credential(headers: Mapping[str, str]) -> str | None:
    """The key of a request: `x-api-key`, or `Authorization: Bearer <key>` (what the official SDK sends)."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    cutoff: float | None = None  # send only this fraction of the body, then close
    delay: float = 0.0


@dataclass(slots=True)
class RecordedRequest:
    """One ``/v1/`` request as received, with the status it was answered with."""

    number: int  # 1-based, since the app was made or its requests were cleared
    method: str
    path: str
    params: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    status: int = 0
    request_id: str = ""

    def param(self, name: str) -> str | None:
        """The last value of query parameter ``name``."""
        values = self.params.get(name)
        return values[-1] if values else None


@dataclass(slots=True)
class _Counter:
    requests: int = 0
    rate_limited: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def add(self, status: int) -> None:
        self.requests += 1
        if status == 429:
            self.rate_limited += 1
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "rate_limited": self.rate_limited,
                "statuses": dict(self.statuses)}


class Stats:
    """Requests and 429s per key (and per path under each key) and per path; per key also the wall-clock
    times (epoch seconds) of its first and last request, for benchmarks timing a fleet from outside."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[int | None, _Counter, dict[str, _Counter]]] = {}
        self.times: dict[str, list[float]] = {}  # key label -> [first, last]
        self.paths: dict[str, _Counter] = {}
        self.total = _Counter()

    def record(self, key_label: str, org: int | None, path: str, status: int) -> None:
        now = time.time()
        entry = self.keys.get(key_label)
        if entry is None:
            entry = self.keys[key_label] = (org, _Counter(), {})
            self.times[key_label] = [now, now]
        self.times[key_label][1] = now
        entry[1].add(status)
        entry[2].setdefault(path, _Counter()).add(status)
        self.paths.setdefault(path, _Counter()).add(status)
        self.total.add(status)

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total.as_json(),
            "keys": {
                label: {
                    "org": org,
                    **c.as_json(),
                    "first_at": self.times[label][0],
                    "last_at": self.times[label][1],
                    "paths": {p: pc.as_json() for p, pc in by.items()},
                }
                for label, (org, c, by) in self.keys.items()
            },
            "paths": {p: c.as_json() for p, c in self.paths.items()},
        }


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(payload).encode(), headers or {})


class SimulatorApp:
    """State and request handling of one simulator; thread-safe (one lock around each request)."""

    def __init__(
        self,
        data: SimulatorData,
        *,
        requests_per_minute: float = 60.0,
        burst: float = 1.0,
        max_results: int | None = None,
        faults: Sequence[str | Fault] = (),
        clock: Callable[[], float] = time.monotonic,
        record_requests: bool = False,
        hipaa_orgs: Sequence[int] = (),
    ) -> None:
        self.data = data
        self.max_results = max_results
        #: Organizations with HIPAA readiness: the Analytics API answers them 400.
        self.hipaa_orgs = frozenset(hipaa_orgs)
        self._rows = analytics.RowCache()
        self.limiter = RateLimiter(requests_per_minute, burst, clock)
        self.faults = FaultSet(data.seed)
        self.stats = Stats()
        self.revoked: set[int] = set()
        self.requests: list[RecordedRequest] | None = [] if record_requests else None
        self.lock = threading.RLock()
        self._keys: dict[str, Org] = {}
        self._current_keys: dict[int, str] = {}
        self._retired_keys: set[str] = set()
        self._names: dict[int, str] = {}  # org -> a name given by a ``rename`` fault
        self._reset_keys()
        secret = hashlib.sha256(f"cursor\x1f{data.seed}".encode()).digest()
        self._cursors = CursorCodec(secret)
        for spec in faults:
            self.add_fault(spec)

    # -- control operations (also used by the in-process handle) -------------------------------

    def add_fault(self, spec: str | Fault) -> Fault:
        """Add a per-request fault, or apply a state fault (revoke, restore, restate, spike)."""
        fault = parse_fault(spec) if isinstance(spec, str) else spec
        with self.lock:
            if fault.org is not None and not 0 <= fault.org < len(self.data.orgs):
                raise FaultSpecError(f"no org {fault.org}")
            if fault.kind not in STATE_KINDS:
                return self.faults.add(fault)
            orgs = [fault.org] if fault.org is not None else range(len(self.data.orgs))
            for org in orgs:
                if fault.kind == "revoke":
                    self.revoked.add(org)
                elif fault.kind == "restore":
                    self.revoked.discard(org)
                elif fault.kind == "spike":
                    assert fault.day is not None
                    try:
                        self.data.spike(org, fault.day, fault.factor, fault.api_key)
                    except ValueError as exc:
                        raise FaultSpecError(str(exc)) from None
                elif fault.kind == "rotate-key":
                    self._rotate_key(org)
                elif fault.kind == "rename":
                    assert fault.name is not None
                    self._names[org] = fault.name
                else:
                    assert fault.day is not None
                    try:
                        self.data.restate(org, fault.day)
                    except ValueError as exc:
                        raise FaultSpecError(str(exc)) from None
            return fault

    def _reset_keys(self) -> None:
        self._keys = {o.admin_key: o for o in self.data.orgs}
        self._current_keys = {o.index: o.admin_key for o in self.data.orgs}
        self._retired_keys.clear()

    def _rotate_key(self, org: int) -> str:
        o = self.data.org(org)
        generation = sum(1 for k in self._keys.values() if k.index == org)
        suffix = f"{stable_hash('admin', self.data.seed, org, generation):016x}"
        key = f"sk-ant-admin01-sim-{org}-r{generation}-{suffix}"
        self._retired_keys.add(self._current_keys[org])
        self._keys[key] = o
        self._current_keys[org] = key
        return key

    def admin_key(self, org: int) -> str:
        """The org's admin key now (a ``rotate-key`` fault replaces it)."""
        with self.lock:
            return self._current_keys[self.data.org(org).index]

    def reset_stats(self) -> None:
        with self.lock:
            self.stats = Stats()

    def reset(self) -> None:
        """Forget faults, revocations, rotated keys, new names, restatements, spikes, rate-limit state,
        stats and requests."""
        with self.lock:
            self.faults.clear()
            self.revoked.clear()
            self._reset_keys()
            self._names.clear()
            if self.requests is not None:
                self.requests.clear()
            self.data.clear_restatements()
            self.limiter.reset()
            self.stats = Stats()

    def keys_json(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {"org": o.index, "id": o.id, "name": self._names.get(o.index, o.name),
                 "admin_key": self._current_keys[o.index],
                 "regular_key": o.regular_key, "revoked": o.index in self.revoked,
                 "hipaa": o.index in self.hipaa_orgs, "discount_pct": o.discount_pct,
                 "workspaces": [w.id for w in o.workspaces]}
                for o in self.data.orgs
            ]

    # -- request handling ---------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str],
        body: bytes,
    ) -> Response:
        """Answer one request; every response carries a ``request-id`` header."""
        request_id = new_request_id()
        record: RecordedRequest | None = None
        with self.lock:
            try:
                if path.startswith("/_sim/") or path == "/_sim":
                    response = self._control(method, path, query, body)
                else:
                    record = self._record(method, path, query, headers, request_id)
                    response = self._api(method, path, query, headers)
            except ApiError as exc:
                response = Response(exc.status, exc.body(request_id), dict(exc.headers))
            except Exception as exc:  # a simulator bug must still answer, as a 500
                traceback.print_exc(file=sys.stderr)
                error = ApiError(500, f"simulator internal error: {type(exc).__name__}")
                response = Response(500, error.body(request_id))
            if record is not None:
                record.status = response.status
        response.headers["request-id"] = request_id
        return response

    def _record(
        self, method: str, path: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str],
        request_id: str,
    ) -> RecordedRequest | None:
        if self.requests is None:
            return None
        params: dict[str, list[str]] = {}
        for name, value in query:
            params.setdefault(name, []).append(value)
        record = RecordedRequest(len(self.requests) + 1, method, path, params,
                                 {k.lower(): v for k, v in headers.items()}, request_id=request_id)
        self.requests.append(record)
        return record

    def _api(
        self, method: str, path: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str]
    ) -> Response:
        key = credential(headers)
        org = self._keys.get(key) if key else None
        label = key if org and key else ("(missing)" if not key else "(invalid)")
        try:
            response = self._api_checked(method, path, query, headers, key, org)
        except ApiError as exc:
            self.stats.record(label, org.index if org else None, path, exc.status)
            raise
        self.stats.record(label, org.index if org else None, path, response.status)
        return response

    def _api_checked(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        key: str | None,
        org: Org | None,
    ) -> Response:
        if not key:
            raise ApiError(401, "x-api-key header (or Authorization: Bearer) is required")
        if key.startswith("sk-ant-api"):
            raise ApiError(
                403,
                "This endpoint requires an Admin API key (sk-ant-admin...); regular API keys "
                "cannot use the Admin API",
            )
        if org is None:
            raise ApiError(401, "invalid x-api-key")
        if org.index in self.revoked or key in self._retired_keys:
            raise ApiError(401, "invalid x-api-key: this API key has been revoked")
        if not headers.get("anthropic-version"):
            raise invalid("anthropic-version: header is required")
        retry_after = self.limiter.check(key)
        if retry_after is not None:
            raise ApiError(
                429,
                f"Number of requests has exceeded your rate limit "
                f"({self.limiter.per_minute:g} per minute). Please try again later.",
                headers={"retry-after": str(retry_after)},
            )
        extra = {"anthropic-organization-id": org.id}
        fault = self.faults.take(org.index, path, PRE_KINDS)
        if fault is not None and fault.kind in ERROR_KINDS:
            status, error_type, message = ERROR_KINDS[fault.kind]
            raise ApiError(status, fault.message or message, error_type=error_type, headers=extra)
        if fault is not None and fault.kind == "429":
            retry = {} if fault.retry_after is None else {"retry-after": str(fault.retry_after)}
            raise ApiError(
                429, fault.message or "Number of requests has exceeded your rate limit (simulated)",
                headers={**extra, **retry},
            )
        if path not in _API_PATHS:
            raise ApiError(404, f"Not found: {path}")
        if method != "GET":
            raise ApiError(405, f"Method {method} not allowed on {path}", headers={"allow": "GET"})
        kind = _API_PATHS[path]
        if path == ME_PATH:
            name = self._names.get(org.index, org.name)
            response = _json(200, {"id": org.id, "type": "organization", "name": name}, extra)
        elif kind == "api_keys":
            response = Response(200, directory.list_api_keys(org, query), extra)
        elif kind == "workspaces":
            response = Response(200, directory.list_workspaces(org, query), extra)
        elif kind in ("analytics_cost", "analytics_usage"):
            response = self._analytics(kind.removeprefix("analytics_"), org, path, query, headers, extra)
        else:
            response = self._report(kind or "", org.index, query, extra, _betas(headers))
        if fault is not None and fault.kind == "cutoff":
            response.cutoff = fault.fraction
        if fault is not None and fault.kind == "bad-json":
            response.body = response.body[: int(len(response.body) * fault.fraction)]
        if fault is not None and fault.kind == "delay":
            response.delay = fault.seconds
        return response

    def _report(
        self, report: str, org: int, query: Sequence[tuple[str, str]], headers: dict[str, str],
        betas: frozenset[str] = frozenset(),
    ) -> Response:
        tomorrow = self.data.today() + timedelta(days=1)
        today_end = datetime.combine(tomorrow, datetime.min.time(), UTC)
        q = parse_query(report, query, now=int(today_end.timestamp()) - 1, betas=betas)
        page = build_page(self.data, org, q, self._cursors)
        check_result_cap(page, self.max_results)
        body = page.render()
        if self.faults.has(PAGE_KINDS):
            view = PageView(body, cost=report == COST_REPORT, cursor=q.page)
            path = COST_PATH if report == COST_REPORT else USAGE_PATH
            fired = self.faults.take_all(org, path, PAGE_KINDS, view.applies)
            if fired:
                body = view.render(fired)
        return Response(200, body, headers)

    def _analytics(
        self, endpoint: str, org: Org, path: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str],
        extra: dict[str, str],
    ) -> Response:
        if analytics.BETA not in _betas(headers):
            raise invalid(f"This endpoint is in beta: send the anthropic-beta header {analytics.BETA}")
        if org.index in self.hipaa_orgs:
            raise invalid(analytics.HIPAA_MESSAGE)
        q = analytics.parse_query(endpoint, query, now=self.data.now())
        if q.page is not None and self.faults.take(org.index, path, _CURSOR_KINDS) is not None:
            raise ApiError(410, "The page cursor has expired; restart the query without `page`",
                           error_type="invalid_request_error", headers=extra)
        page = analytics.build_page(self.data, org.index, q, self._cursors, self._rows)
        drop = self.faults.take(org.index, path, _NO_NEXT_PAGE)
        return Response(200, page.render(drop_next_page=drop is not None), extra)

    # -- control API --------------------------------------------------------------------------

    def _control(
        self, method: str, path: str, query: Sequence[tuple[str, str]], body: bytes
    ) -> Response:
        route = (method, path.rstrip("/"))
        if route == ("GET", "/_sim/health"):
            return _json(200, {"ok": True})
        if route == ("GET", "/_sim/keys"):
            return _json(200, {"orgs": self.keys_json()})
        if route == ("GET", "/_sim/stats"):
            return _json(200, self.stats.as_json())
        if route == ("POST", "/_sim/reset-stats"):
            self.reset_stats()
            return _json(200, {"ok": True})
        if route == ("POST", "/_sim/reset"):
            self.reset()
            return _json(200, {"ok": True})
        if route == ("GET", "/_sim/truth"):
            return self._truth(dict(query))
        if route == ("GET", "/_sim/faults"):
            return _json(200, self._faults_json())
        if route == ("DELETE", "/_sim/faults"):
            self.faults.clear()
            return _json(200, self._faults_json())
        if route == ("POST", "/_sim/faults"):
            return self._post_faults(body)
        raise ApiError(404, f"Not found: {method} {path}")

    def _faults_json(self) -> dict[str, Any]:
        return {
            "active": [f.as_json() for f in self.faults.active()],
            "revoked_orgs": sorted(self.revoked),
            "restated": [
                {"org": org, "day": day.isoformat(), "version": v}
                for (org, day), v in sorted(self.data.restatements().items())
            ],
            "spiked": [
                {"org": org, "day": day.isoformat(), "factor": f}
                for (org, day), f in sorted(self.data.spikes().items())
            ] + [
                {"org": org, "day": day.isoformat(), "factor": f, "api_key": key}
                for (org, day, key), f in sorted(self.data.key_spikes().items())
            ],
        }

    def _post_faults(self, body: bytes) -> Response:
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            raise invalid("body must be JSON") from None
        items: list[Any]
        if isinstance(payload, dict) and "specs" in payload:
            items = list(payload["specs"])
        elif isinstance(payload, list):
            items = payload
        else:
            items = [payload]
        added = []
        try:
            parsed: list[Fault] = []
            for item in items:
                if isinstance(item, str):
                    parsed.append(parse_fault(item))
                elif isinstance(item, dict) and isinstance(item.get("spec"), str):
                    parsed.append(parse_fault(item["spec"]))
                elif isinstance(item, dict) and "kind" in item:
                    options = {k: v for k, v in item.items() if k != "kind"}
                    parsed.append(fault_from_mapping(item["kind"], options))
                else:
                    raise FaultSpecError(
                        'expected {"spec": "KIND:k=v,..."}, {"specs": [...]} or {"kind": ..., ...}'
                    )
            for fault in parsed:
                added.append(self.add_fault(fault).as_json())
        except FaultSpecError as exc:
            raise invalid(str(exc)) from None
        return _json(201, {"added": added, **self._faults_json()})

    def _truth(self, params: dict[str, str]) -> Response:
        """Legacy truth per (day, model) over `[since, until)`; with `source=analytics` (and `by=`) the
        Analytics API's rows instead. Both carry the analytics totals and `data_refreshed_at`."""
        try:
            org = int(params.get("org", "0"))
            self.data.org(org)
            today = self.data.today()
            since = date.fromisoformat(params.get("since") or str(today - timedelta(days=29)))
            until = date.fromisoformat(params.get("until") or str(today + timedelta(days=1)))
            source = params.get("source", "legacy")
            by = params.get("by", "model")
            if source not in ("legacy", "analytics") or by not in analytics_truth_by:
                raise ValueError(f"source must be legacy or analytics, by one of {', '.join(analytics_truth_by)}")
        except (ValueError, KeyError) as exc:
            raise invalid(f"bad truth query: {exc}") from None
        if (until - since).days > 5000:
            raise invalid("truth window too long")
        last = until - timedelta(days=1)
        arows = analytics_truth(self.data, org, since, last, by)
        priority = priority_cost(self.data, org, since, last)
        body: dict[str, Any] = {
            "org": org, "since": since.isoformat(), "until": until.isoformat(), "source": source,
            "data_refreshed_at": self.data.refreshed_at().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "discount_pct": self.data.org(org).discount_pct,
            "analytics_total_cost_usd": f"{sum((Decimal(r['cost_usd']) for r in arows), Decimal(0)):f}",
            "analytics_total_list_cost_usd": f"{sum((Decimal(r['list_cost_usd']) for r in arows), Decimal(0)):f}",
            "priority_cost_usd": f"{sum(priority.values(), Decimal(0)):f}",
            "priority": [{"date": d.isoformat(), "model": m, "cost_usd": f"{v:f}"}
                         for (d, m), v in sorted(priority.items())],
        }
        if source == "analytics":
            body.update(by=by, total_cost_usd=body["analytics_total_cost_usd"], rows=arows)
        else:
            rows = self.data.truth(org, since, until)
            total = sum((r.cost_usd for r in rows), Decimal(0))
            body.update(total_cost_usd=f"{total:f}", rows=[r.as_json() for r in rows])
        return _json(200, body)
