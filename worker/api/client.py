"""The Admin API client: one long-lived httpx.AsyncClient, the request gate, retries and the page loop.

Every answer is bounded before it is trusted: the whole request (connect, headers and the streamed body)
runs under one deadline (`timeout`, COST_WORKER_HTTP_TIMEOUT), because httpx's own read timeout restarts
with every chunk and a body trickling one byte a second would never end; and the body is read in chunks
up to `max_response_bytes` (COST_WORKER_MAX_RESPONSE_BYTES), so an oversized answer is refused without
being held in memory. Magnitudes are bounded where rows are parsed (worker.api.models).
"""

from __future__ import annotations

import asyncio
import functools
import http.cookiejar
import logging
import random
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from types import TracebackType
from typing import Any, Protocol, TypeVar

import httpx

from worker import USER_AGENT
from worker.api.analytics import (
    BETA,
    AnalyticsCostRow,
    AnalyticsUsageRow,
    check_group_by,
    decode_cost_page,
    decode_usage_page,
)
from worker.api.analytics import COST_PATH as ANALYTICS_COST_PATH
from worker.api.analytics import MAX_LIMIT as MAX_ROW_LIMIT
from worker.api.analytics import MAX_WINDOW_DAYS as MAX_ANALYTICS_DAYS
from worker.api.analytics import USAGE_PATH as ANALYTICS_USAGE_PATH
from worker.api.errors import (
    ApiError,
    ApiUnreachable,
    BodyTooLarge,
    ProtocolViolation,
    RequestRejected,
    RetriesExhausted,
    Retryable,
    classify_response,
    safe_text,
)
from worker.api.models import (
    CostRow,
    Organization,
    Page,
    UsageRow,
    decode_cost_report,
    decode_json,
    decode_usage_report,
    parse_organization,
)
from worker.api.names import API_KEYS_PATH, WORKSPACES_PATH, Named, parse_api_key, parse_workspace
from worker.api.pagination import BucketPaging, ListPage, ListPaging, Paging, Params, RowPaging
from worker.api.retry import RetryPolicy
from worker.clock import Clock, utc_today
from worker.secret import AdminKey

log = logging.getLogger("worker.api")


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for the clients a process makes itself (the CA bundle, about 15 ms of CPU to load, read
    once): httpx builds one per client otherwise."""
    return httpx.create_ssl_context()

ANTHROPIC_VERSION = "2023-06-01"
ME_PATH = "/v1/organizations/me"
COST_PATH = "/v1/organizations/cost_report"
USAGE_PATH = "/v1/organizations/usage_report/messages"
COST_GROUP_BY = ("workspace_id", "description")
USAGE_GROUP_BY = ("model", "workspace_id", "service_tier", "context_window", "api_key_id")  # 5: the maximum
MAX_DAILY_LIMIT = 31
#: Default cap on one answer's body. A 31-day cost page of a large organization is a few MB (see
#: worker.sync.engine.PageGate); 64 MiB is an order of magnitude above any real page and still bounds
#: what a broken or hostile server can make the process hold.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
BUDGET_WAIT = "the organization's request budget (COST_WORKER_REQUESTS_PER_MINUTE)"

PageT = TypeVar("PageT")


class RequestGate(Protocol):
    """Paces requests. A gate may also define `async def done(self) -> None`, called when each request
    has its answer (or failed), to pace from answers rather than from reserved slots; `async def
    unused(self) -> None`, called instead when no connection could be made (the slot may be given back);
    and a `waits_for` text naming the budget it waits for (default: BUDGET_WAIT), for wait messages."""

    async def acquire(self) -> float:
        """Block until one request may be sent; return the seconds spent waiting."""


@dataclass
class RequestStats:
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0  # 429s received
    waited_seconds: float = 0.0  # gate waits + retry/backoff waits
    failures: list[tuple[int | None, str | None]] = field(default_factory=list)  # (status, request-id)


class AdminKeyAuth(httpx.Auth):
    """Adds `x-api-key` per request, so the key is never in the client's default headers or its repr."""

    def __init__(self, key: AdminKey) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["x-api-key"] = self._key.reveal()
        yield request

    def __repr__(self) -> str:
        return f"AdminKeyAuth({self._key!r})"


class NoCookies(http.cookiejar.CookieJar):
    """The Admin API sets no cookies and is sent none: a jar that keeps nothing. httpx reads every answer's
    headers into its jar otherwise (building a header message per answer: ~7 % of the client's CPU)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


class AdminApiClient:
    """Reads the organization, cost and usage reports. Use as `async with AdminApiClient(...) as api:`."""

    def __init__(
        self,
        admin_key: AdminKey,
        *,
        base_url: str,
        gate: RequestGate,
        clock: Clock,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        max_attempts: int = 8,
        max_retry_seconds: float = 900.0,
        stats: RequestStats | None = None,
        on_wait: Callable[[float, str], None] | None = None,
        rng: random.Random | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        retry_unreachable: bool = True,
    ) -> None:
        """`on_wait(seconds, reason)` hears of every wait: the gate's budget, a backoff or a retry-after.
        `retry_unreachable=False` fails at once when no connection can be made (the connection test: a
        wrong base URL is a setting to fix, not an outage to wait out)."""
        if not isinstance(admin_key, AdminKey):
            raise TypeError("admin_key must be an AdminKey")
        self.gate = gate
        self.stats = stats if stats is not None else RequestStats()
        self._auth = AdminKeyAuth(admin_key)
        self._key_hint = admin_key.hint
        self._base_url = base_url.rstrip("/")
        self._clock = clock
        self._timeout = timeout
        self._transport = transport
        self._policy = RetryPolicy(max_attempts=max_attempts, max_seconds=max_retry_seconds)
        self._on_wait = on_wait
        self._rng = rng if rng is not None else random.Random()
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be at least 1")
        self._max_bytes = max_response_bytes
        self._retry_unreachable = retry_unreachable
        self._http: httpx.AsyncClient | None = None
        self._prefix = ""  # the client's base URL as httpx normalised it, with its "/" (set when opened)

    def __repr__(self) -> str:
        return f"AdminApiClient(base_url={self._base_url!r}, key={self._key_hint!r})"

    @property
    def headers(self) -> httpx.Headers:
        """The default headers sent with every request (the key is added per request by the auth)."""
        return httpx.Headers(
            {"anthropic-version": ANTHROPIC_VERSION, "user-agent": USER_AGENT, "accept": "application/json"}
        )

    async def __aenter__(self) -> AdminApiClient:
        if self._http is not None:
            raise RuntimeError("AdminApiClient is already open")
        self._http = httpx.AsyncClient(
            base_url=self._base_url,
            auth=self._auth,
            headers=self.headers,
            timeout=httpx.Timeout(self._timeout, connect=min(10.0, self._timeout)),
            limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
            transport=self._transport,
            verify=tls_context(),  # used when there is no transport of the caller's
            follow_redirects=False,
            cookies=NoCookies(),
        )
        base = str(self._http.base_url.copy_with(query=None, fragment=None))
        self._prefix = base if base.endswith("/") else base + "/"  # a root path prints as ""
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # --- public API --------------------------------------------------------------------------------------

    async def organization(self) -> Organization:
        """The organization the key belongs to (the cheapest validity check)."""
        body, request_id = await self._get_json(ME_PATH, [])
        try:
            return parse_organization(body)
        except ProtocolViolation as exc:
            raise _violation(exc, ME_PATH, request_id) from None

    def cost_pages(
        self, start: date, end: date, *, limit: int = MAX_DAILY_LIMIT
    ) -> AsyncIterator[Page[CostRow]]:
        """Daily cost pages for days `[start, end)`, grouped by workspace and description."""
        _check_window(start, end, limit)
        base: Params = [("bucket_width", "1d"), *(("group_by[]", g) for g in COST_GROUP_BY)]
        paging = BucketPaging(base, start, end, utc_today(self._clock), limit, decode_cost_report)
        return self._pages(COST_PATH, paging, decode=paging.decode)

    def usage_pages(
        self, start: date, end: date, *, limit: int = MAX_DAILY_LIMIT
    ) -> AsyncIterator[Page[UsageRow]]:
        """Daily message usage pages for days `[start, end)`, grouped by the five documented dimensions."""
        _check_window(start, end, limit)
        base: Params = [("bucket_width", "1d"), *(("group_by[]", g) for g in USAGE_GROUP_BY)]
        paging = BucketPaging(base, start, end, utc_today(self._clock), limit, decode_usage_report)
        return self._pages(USAGE_PATH, paging, decode=paging.decode)

    def analytics_cost_pages(
        self, start: date, end: date, group_by: Sequence[str], *, limit: int = MAX_ROW_LIMIT
    ) -> AsyncIterator[Page[AnalyticsCostRow]]:
        """Analytics API cost for days `[start, end)` (at most 31), yielded as complete days in daily buckets."""
        _check_rows(start, end, limit, group_by, cost=True)
        paging: RowPaging[AnalyticsCostRow] = RowPaging([("group_by[]", g) for g in group_by], start, end, limit)
        return self._pages(ANALYTICS_COST_PATH, paging, decode=decode_cost_page, beta=BETA)

    def analytics_usage_pages(
        self, start: date, end: date, group_by: Sequence[str], *, limit: int = MAX_ROW_LIMIT
    ) -> AsyncIterator[Page[AnalyticsUsageRow]]:
        """Analytics API token usage for days `[start, end)` (at most 31), as complete days."""
        _check_rows(start, end, limit, group_by, cost=False)
        paging: RowPaging[AnalyticsUsageRow] = RowPaging([("group_by[]", g) for g in group_by], start, end, limit)
        return self._pages(ANALYTICS_USAGE_PATH, paging, decode=decode_usage_page, beta=BETA)

    async def names(self) -> list[Named]:
        """Every API key and workspace (the default one included) with its name."""
        out: list[Named] = []
        keys: ListPaging[Named] = ListPaging([], parse_api_key)
        workspaces: ListPaging[Named] = ListPaging([("include_default", "true"), ("include_archived", "true")],
                                                   parse_workspace)
        for path, paging in ((API_KEYS_PATH, keys), (WORKSPACES_PATH, workspaces)):
            page: ListPage[Named]
            async for page in self._pages(path, paging):
                out.extend(page.items)
        return out

    # --- the page loop: one for every paging scheme (see worker.api.pagination) -------------------------

    async def _pages(
        self, path: str, paging: Paging[PageT], *, decode: Callable[[bytes], Any] | None = None,
        beta: str | None = None,
    ) -> AsyncIterator[PageT]:
        headers = {"anthropic-beta": beta} if beta else None
        while True:
            params = paging.start()
            try:
                while paging.has_next_page:
                    body, request_id = await self._get_json(path, paging.update_request(params), decode=decode,
                                                            headers=headers)
                    try:
                        page = paging.update_state(body, request_id)
                    except ProtocolViolation as exc:
                        raise _violation(exc, path, request_id) from None
                    yield page
            except RequestRejected as exc:
                if paging.restart(exc):
                    log.info("%s: %s; restarting the window", path, exc.message)
                    continue
                raise
            break
        try:
            paging.finish()
        except ProtocolViolation as exc:
            raise _violation(exc, path, None) from None

    # --- one request, with the gate and the retry budget -------------------------------------------------

    async def _get_json(self, path: str, params: Sequence[tuple[str, str | int]], *,
                        decode: Callable[[bytes], Any] | None = None,
                        headers: Mapping[str, str] | None = None) -> tuple[Any, str | None]:
        if self._http is None:
            raise RuntimeError("AdminApiClient is not open: use `async with AdminApiClient(...) as api:`")
        started = self._clock.time()
        attempt = 0
        while True:
            attempt += 1
            self._waited(await self.gate.acquire(), getattr(self.gate, "waits_for", BUDGET_WAIT))
            self.stats.requests += 1
            outcome: ApiError | Retryable
            try:
                try:
                    response, content = await self._send(path, params, headers)
                except (httpx.ConnectError, httpx.ConnectTimeout):
                    await self._request_unused()
                    raise
                except BaseException:
                    await self._request_done()
                    raise
                await self._request_done()
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                detail = safe_text(str(exc) or type(exc).__name__, 200)
                if not self._retry_unreachable:
                    raise ApiUnreachable(
                        f"cannot connect to the Admin API at {self._base_url} (COST_WORKER_API_BASE_URL): "
                        f"{type(exc).__name__}: {detail}"
                    ) from None
                outcome = Retryable(None, type(exc).__name__, None, detail)
            except (httpx.TransportError, httpx.DecodingError) as exc:
                detail = safe_text(str(exc) or type(exc).__name__, 200)
                outcome = Retryable(None, type(exc).__name__, None, detail)
            except _Deadline as exc:
                outcome = Retryable(None, "timeout", exc.request_id, str(exc))
            else:
                request_id = response.headers.get("request-id")
                if response.is_success:
                    if content is None:
                        raise BodyTooLarge(
                            f"GET {path}: the answer is larger than {self._max_bytes} bytes "
                            f"(COST_WORKER_MAX_RESPONSE_BYTES); not read (request-id {request_id})",
                            status=response.status_code, request_id=request_id,
                        )
                    try:
                        return (decode or decode_json)(content), request_id
                    except ProtocolViolation as exc:
                        raise _violation(exc, path, request_id) from None
                    except ValueError:
                        outcome = Retryable(
                            response.status_code, "invalid_json", request_id, "body is not valid JSON"
                        )
                else:
                    outcome = classify_response(response, path=path, now=self._clock.now(), body=content or b"")
            self._record_failure(path, attempt, outcome)
            if isinstance(outcome, ApiError):
                raise outcome
            if outcome.rate_limited:
                self.stats.rate_limited += 1
            wait = self._policy.wait(attempt, outcome.retry_after, self._rng)
            elapsed = self._clock.time() - started
            if not self._policy.allows(attempt, elapsed, wait):
                cause = outcome.describe()
                log.error("GET %s: giving up after %d attempt(s), %.0fs: %s", path, attempt, elapsed, cause)
                raise RetriesExhausted(
                    f"GET {path}: gave up after {attempt} attempt(s) in {elapsed:.0f}s "
                    f"(next wait {wait:.0f}s; budget {self._policy.max_attempts} attempts, "
                    f"{self._policy.max_seconds:.0f}s); last error: {cause}",
                    attempts=attempt,
                    last_cause=cause,
                    status=outcome.status,
                    error_type=outcome.error_type,
                    request_id=outcome.request_id,
                )
            self.stats.retries += 1
            self._waited(wait, _retry_reason(outcome, attempt, self._policy.max_attempts))  # said before it starts
            await self._clock.sleep(wait)

    async def _send(
        self, path: str, params: Sequence[tuple[str, str | int]], headers: Mapping[str, str] | None = None
    ) -> tuple[httpx.Response, bytes | None]:
        """One GET with its whole body, inside the request deadline; the body is None when it is over the
        size cap (then it was not read: the connection is dropped instead)."""
        assert self._http is not None
        head: httpx.Response | None = None
        received = 0
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._http.send(self._request(path, params, headers), stream=True)
                try:
                    head = response
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > self._max_bytes:
                        return response, None
                    chunks: list[bytes] = []
                    async for chunk in response.aiter_bytes():
                        received += len(chunk)
                        if received > self._max_bytes:
                            return response, None
                        chunks.append(chunk)
                    return response, b"".join(chunks)
                finally:
                    await response.aclose()
        except TimeoutError:
            declared = head.headers.get("content-length") if head is not None else None
            progress = (
                "no response headers" if head is None
                else f"status {head.status_code}, {received} of {declared or 'unknown'} body bytes read"
            )
            raise _Deadline(
                f"the answer did not arrive whole within {self._timeout:g}s (COST_WORKER_HTTP_TIMEOUT): {progress}",
                head.headers.get("request-id") if head is not None else None,
            ) from None

    def _request(self, path: str, params: Sequence[tuple[str, str | int]],
                 headers: Mapping[str, str] | None) -> httpx.Request:
        """The GET `AsyncClient.build_request` would make, with one URL parse instead of its three (the path,
        the merge with the base URL and the params each parse one): the query is encoded as httpx encodes
        params (urlencode: quote_plus), so the server sees the same bytes."""
        assert self._http is not None
        url = self._prefix + path.lstrip("/")
        if params:
            url += "?" + "&".join(f"{_quote(k)}={_quote(_param_text(v))}" for k, v in params)
        merged = self._http.headers  # the defaults: Request copies them, and the auth adds the key there
        if headers:
            merged = httpx.Headers(merged)
            merged.update(headers)
        return httpx.Request("GET", httpx.URL(url), headers=merged)

    async def _request_done(self) -> None:
        # Gates that pace from answers (worker.ratelimit.OrgGate) learn when each request finished.
        done = getattr(self.gate, "done", None)
        if done is not None:
            await done()

    async def _request_unused(self) -> None:
        # No connection was made, so the server counted nothing: a gate that can give the slot back does.
        unused = getattr(self.gate, "unused", None)
        if unused is not None:
            await unused()
        else:
            await self._request_done()

    def _waited(self, seconds: float, reason: str) -> None:
        if seconds > 0:
            self.stats.waited_seconds += seconds
            if self._on_wait is not None:
                self._on_wait(seconds, reason)

    def _record_failure(self, path: str, attempt: int, outcome: ApiError | Retryable) -> None:
        self.stats.failures.append((outcome.status, outcome.request_id))
        log.warning(
            "GET %s failed (attempt %d): status=%s error_type=%s request_id=%s%s",
            path,
            attempt,
            outcome.status,
            outcome.error_type,
            outcome.request_id,
            " (retrying)" if isinstance(outcome, Retryable) else "",
        )


class _Deadline(Exception):
    """The request deadline passed before the whole answer arrived; retried like a timeout."""

    def __init__(self, message: str, request_id: str | None) -> None:
        super().__init__(message)
        self.request_id = request_id


# urlencode's quoting (its quote_plus, per name and value), remembered: the names and most values repeat.
_quote = functools.lru_cache(maxsize=4096)(urllib.parse.quote_plus)


def _param_text(value: str | int) -> str:
    # As httpx writes a param value (True as "true", where str() would say "True").
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _retry_reason(outcome: Retryable, attempt: int, max_attempts: int) -> str:
    """What a wait between attempts is for, in words a person can act on."""
    cause = f"{outcome.status} {outcome.error_type}" if outcome.status is not None else outcome.error_type
    if outcome.retry_after is not None:
        return f"the retry-after the API sent with {cause} (before attempt {attempt + 1} of {max_attempts})"
    return f"backoff after {cause} (before attempt {attempt + 1} of {max_attempts})"


def _check_window(start: date, end: date, limit: int) -> None:
    if start > end:
        raise ValueError(f"start {start} is after end {end}")
    if not 1 <= limit <= MAX_DAILY_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_DAILY_LIMIT} daily buckets, got {limit}")


def _check_rows(start: date, end: date, limit: int, group_by: Sequence[str], *, cost: bool) -> None:
    if not start < end or (end - start).days > MAX_ANALYTICS_DAYS:
        raise ValueError(f"window [{start}, {end}) must be 1..{MAX_ANALYTICS_DAYS} days")
    if not 1 <= limit <= MAX_ROW_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_ROW_LIMIT} rows, got {limit}")
    check_group_by(list(group_by), cost=cost)


def _violation(exc: ProtocolViolation, path: str, request_id: str | None) -> ProtocolViolation:
    return ProtocolViolation(f"GET {path}: {exc} (request-id {request_id})", request_id=request_id)
