"""Every answer is bounded: the whole request by one deadline, the body by a size cap; an unreachable
base URL fails the connection test at once; every wait says what it is for."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from datetime import date
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.api.support import CountingGate
from worker.api import AdminApiClient, ApiUnreachable, BodyTooLarge, RetriesExhausted
from worker.api.client import BUDGET_WAIT
from worker.clock import FakeClock
from worker.secret import AdminKey

if TYPE_CHECKING:
    from tests.api.conftest import Harness

KEY = AdminKey("sk-ant-admin01-BoundedAnswersTestKey_0123456789abcdefghijklmnopqrstuvwxyz-AbCd")
BASE = "https://api.test"
ORG = b'{"id": "org-1", "type": "organization", "name": "Org"}'


class Trickle(httpx.AsyncByteStream):
    """A body that arrives `chunk` bytes at a time, `delay` seconds apart; counts what it yielded."""

    def __init__(self, total: int, *, chunk: int = 1, delay: float = 0.0) -> None:
        self.total, self.chunk, self.delay, self.yielded = total, chunk, delay, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.yielded < self.total:
            if self.delay:
                await asyncio.sleep(self.delay)
            part = b" " * min(self.chunk, self.total - self.yielded)
            self.yielded += len(part)
            yield part


class Scripted(httpx.AsyncBaseTransport):
    """Answers request number n (1-based) with `answers(n, request)`; keeps the requests."""

    def __init__(self, answers: Callable[[int, httpx.Request], httpx.Response]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answers(len(self.requests), request)


def _client(transport: httpx.AsyncBaseTransport, clock: FakeClock, **kw: Any) -> AdminApiClient:
    kw.setdefault("rng", random.Random(1))
    return AdminApiClient(KEY, base_url=BASE, gate=CountingGate(clock), clock=clock, transport=transport, **kw)


def _run(client: AdminApiClient, body: Callable[[AdminApiClient], Any]) -> Any:
    async def main() -> Any:
        async with client as api:
            return await body(api)
    return asyncio.run(main())


async def _org(api: AdminApiClient) -> object:
    return await api.organization()


async def _cost(api: AdminApiClient) -> list[object]:
    return [page async for page in api.cost_pages(date(2026, 1, 1), date(2026, 2, 1))]


class TestDeadline:
    def test_trickling_body_times_out_and_is_retried(self) -> None:
        """200, content-length 100000, one byte at a time: the deadline covers the body, each attempt ends
        as a timeout, and the retry budget ends the request (httpx's per-read timeout never would)."""
        streams: list[Trickle] = []

        def answer(_n: int, _r: httpx.Request) -> httpx.Response:
            streams.append(Trickle(100_000, delay=0.01))
            return httpx.Response(200, headers={"content-length": "100000", "request-id": "req_slow"},
                                  stream=streams[-1])

        clock = FakeClock()
        transport = Scripted(answer)
        with pytest.raises(RetriesExhausted) as caught:
            _run(_client(transport, clock, timeout=0.2, max_attempts=3), _org)
        err = caught.value
        assert err.attempts == 3 and len(transport.requests) == 3
        assert err.error_type == "timeout" and err.request_id == "req_slow"
        assert "COST_WORKER_HTTP_TIMEOUT" in str(err) and "status 200" in str(err) and "of 100000" in str(err)
        assert all(s.yielded < 100_000 for s in streams)
        assert len(clock.sleeps) == 2  # backoff between the attempts, like any timeout

    def test_headers_that_never_come_time_out(self) -> None:
        """A server that accepts and says nothing is a timeout too, not a hang."""

        class Silent(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                await asyncio.Event().wait()
                raise AssertionError("unreachable")

        with pytest.raises(RetriesExhausted, match="no response headers"):
            _run(_client(Silent(), FakeClock(), timeout=0.1, max_attempts=2), _org)


class TestSizeCap:
    def test_declared_length_over_the_cap_is_not_read(self) -> None:
        """A content-length above the cap fails at once, naming the setting; no byte of the body is read."""
        stream = Trickle(10_000, chunk=1000)
        transport = Scripted(lambda _n, _r: httpx.Response(200, headers={"content-length": "10000"},
                                                           stream=stream))
        with pytest.raises(BodyTooLarge) as caught:
            _run(_client(transport, FakeClock(), max_response_bytes=4096), _org)
        assert "COST_WORKER_MAX_RESPONSE_BYTES" in str(caught.value) and "4096" in str(caught.value)
        assert stream.yielded == 0 and len(transport.requests) == 1  # not retried

    def test_streamed_body_over_the_cap_stops_reading(self) -> None:
        """Without a content-length, reading stops at the first chunk past the cap."""
        stream = Trickle(10_000_000, chunk=1000)
        transport = Scripted(lambda _n, _r: httpx.Response(200, stream=stream))
        with pytest.raises(BodyTooLarge):
            _run(_client(transport, FakeClock(), max_response_bytes=4096), _org)
        assert stream.yielded <= 5000

    def test_report_page_over_the_cap_shrinks_then_fails(self) -> None:
        """A report page over the cap is asked for again with fewer days (31, 15, 7, 3, 1), then fails: a
        bounded number of requests, never the same oversized read over and over."""
        transport = Scripted(lambda _n, _r: httpx.Response(200, stream=Trickle(1_000_000, chunk=10_000)))
        with pytest.raises(BodyTooLarge):
            _run(_client(transport, FakeClock(), max_response_bytes=64 * 1024), _cost)
        assert [r.url.params["limit"] for r in transport.requests] == ["31", "15", "7", "3", "1"]

    def test_error_body_over_the_cap_is_classified_by_status(self) -> None:
        """An oversized 503 body is not read either; the status alone makes it a retry."""
        def answer(n: int, _r: httpx.Request) -> httpx.Response:
            if n == 1:
                return httpx.Response(503, headers={"content-length": "999999"}, stream=Trickle(999_999))
            return httpx.Response(200, content=ORG)

        clock = FakeClock()
        org = _run(_client(Scripted(answer), clock, max_response_bytes=4096), _org)
        assert getattr(org, "name", None) == "Org" and len(clock.sleeps) == 1


class TestUnreachable:
    def test_connection_test_fails_at_once_naming_the_url(self) -> None:
        """With retry_unreachable=False a refused connection is one ApiUnreachable naming the base URL."""
        def refuse(_n: int, request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

        transport = Scripted(refuse)
        clock = FakeClock()
        with pytest.raises(ApiUnreachable) as caught:
            _run(_client(transport, clock, retry_unreachable=False), _org)
        assert BASE in str(caught.value) and "COST_WORKER_API_BASE_URL" in str(caught.value)
        assert len(transport.requests) == 1 and clock.sleeps == []

    def test_syncs_still_retry_connection_errors(self) -> None:
        """By default a refused connection is retried with backoff, and the wait says so."""
        def answer(n: int, r: httpx.Request) -> httpx.Response:
            if n == 1:
                raise httpx.ConnectError("[Errno 111] refused", request=r)
            return httpx.Response(200, content=ORG)

        reasons: list[str] = []
        _run(_client(Scripted(answer), FakeClock(), on_wait=lambda _s, why: reasons.append(why)), _org)
        assert reasons == ["backoff after ConnectError (before attempt 2 of 8)"]


class TestWaitReasons:
    def test_each_wait_names_what_it_waits_for(self, harness: Harness) -> None:
        """Gate waits name the budget, a 429 wait names the retry-after, a 503 wait names the backoff."""
        harness.sim.add_fault("429:retry_after=30")  # request 1
        harness.sim.add_fault("503:after=1")  # request 2
        harness.gate = CountingGate(harness.clock, wait=60.0)
        harness.run(_org)
        assert harness.wait_reasons == [
            BUDGET_WAIT,
            "the retry-after the API sent with 429 rate_limit_error (before attempt 2 of 8)",
            BUDGET_WAIT,
            "backoff after 503 api_error (before attempt 3 of 8)",
            BUDGET_WAIT,
        ]
        assert "request budget" in BUDGET_WAIT
