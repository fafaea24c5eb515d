"""The client: headers, the request gate, retries bounded by attempts and time, blocking errors, no key leaks."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from datetime import date
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import respx

from tests.api.support import CountingGate
from tests.simulated import COST_PATH, ME_PATH, USAGE_PATH, report_requests
from worker import USER_AGENT
from worker.api import (
    AdminApiClient,
    AdminKeyAuth,
    IntegrationBlocked,
    Organization,
    ProtocolViolation,
    RequestRejected,
    RetriesExhausted,
)
from worker.clock import FakeClock
from worker.secret import AdminKey

if TYPE_CHECKING:
    from tests.api.conftest import Harness

WINDOW = (date(2026, 1, 1), date(2026, 3, 10))  # 68 days: 3 pages at limit 31


async def _org(api: AdminApiClient) -> Organization:
    return await api.organization()


class TestRequests:
    def test_organization(self, harness: Harness) -> None:
        """GET /v1/organizations/me parses into an Organization."""
        org = harness.run(_org)
        assert org == Organization(harness.sim.orgs[0].id, harness.sim.orgs[0].name, "organization")
        assert [r.path for r in harness.sim.requests] == [ME_PATH]

    def test_headers_on_every_request(self, harness: Harness) -> None:
        """Every request carries the key, the API version, our user agent and accept: json."""
        harness.sim.add_fault("429:after=1,retry_after=1")
        harness.cost_pages(*WINDOW)
        harness.usage_pages(*WINDOW)
        assert len(harness.sim.requests) >= 7
        assert [r.status for r in harness.sim.requests].count(429) == 1
        for request in harness.sim.requests:
            assert request.headers["x-api-key"] == harness.sim.keys[0]
            assert request.headers["anthropic-version"] == "2023-06-01"
            assert request.headers["user-agent"] == USER_AGENT
            assert request.headers["accept"] == "application/json"

    def test_cost_params(self, harness: Harness) -> None:
        """cost_report: 1d buckets, grouped by workspace and description, the window and limit every time."""
        harness.cost_pages(*WINDOW, limit=20)
        requests = report_requests(harness.sim, COST_PATH)
        assert len(requests) == 4
        for i, r in enumerate(requests):
            assert r.params["bucket_width"] == ["1d"]
            assert r.params["group_by[]"] == ["workspace_id", "description"]
            assert r.params["starting_at"] == ["2026-01-01T00:00:00Z"]
            assert r.params["ending_at"] == ["2026-03-10T00:00:00Z"]
            assert r.params["limit"] == ["20"]
            assert ("page" in r.params) == (i > 0)

    def test_usage_params(self, harness: Harness) -> None:
        """usage_report/messages: the five documented group_by dimensions, the window and limit every time."""
        harness.usage_pages(*WINDOW, limit=31)
        requests = report_requests(harness.sim, USAGE_PATH)
        assert len(requests) == 3
        for r in requests:
            assert r.params["group_by[]"] == ["model", "workspace_id", "service_tier", "context_window", "api_key_id"]
            assert (r.param("bucket_width"), r.param("limit")) == ("1d", "31")
            assert (r.param("starting_at"), r.param("ending_at")) == ("2026-01-01T00:00:00Z", "2026-03-10T00:00:00Z")

    def test_gate_once_per_http_request(self, harness: Harness) -> None:
        """The gate is passed before every HTTP request: first tries, retries, pages and /me."""
        sim = harness.sim
        sim.add_fault("429:after=1,retry_after=10")  # request 2
        sim.add_fault("503:after=2")  # request 3
        sim.add_fault("cutoff:after=4")  # request 5: the connection drops mid-body
        sim.add_fault("delay:after=5,seconds=3600")  # request 6: no answer within the read timeout
        harness.gate = CountingGate(harness.clock, wait=60.0)

        async def body(api: AdminApiClient) -> int:
            await api.organization()
            return len([p async for p in api.cost_pages(*WINDOW)])

        assert harness.run(body) == 3
        assert harness.gate.calls == len(sim.requests) == harness.stats.requests == 1 + 3 + 4
        assert harness.stats.retries == 4
        assert harness.stats.waited_seconds == pytest.approx(sum(harness.waits))
        assert harness.stats.waited_seconds >= 60.0 * harness.gate.calls + 10
        assert harness.waits.count(60.0) == harness.gate.calls

    def test_gate_can_be_swapped(self, harness: Harness) -> None:
        """The gate is a public attribute: requests after a swap go through the new one."""
        first, second = CountingGate(harness.clock), CountingGate(harness.clock)
        harness.gate = first

        async def body(api: AdminApiClient) -> None:
            await api.organization()
            api.gate = second
            [p async for p in api.cost_pages(*WINDOW)]

        harness.run(body)
        assert (first.calls, second.calls) == (1, 3)

    def test_must_be_opened(self) -> None:
        """Using the client outside `async with` is a clear error, not a leaked connection pool."""
        clock = FakeClock()
        api = AdminApiClient(AdminKey("sk-ant-admin01-x"), base_url="https://x", gate=CountingGate(clock), clock=clock)
        with pytest.raises(RuntimeError, match="async with"):
            asyncio.run(api.organization())

    @pytest.mark.parametrize(("start", "end", "limit"), [(date(2026, 2, 2), date(2026, 2, 1), 31),
                                                         (date(2026, 2, 1), date(2026, 2, 2), 0),
                                                         (date(2026, 2, 1), date(2026, 2, 2), 32)])  # fmt: skip
    def test_bad_arguments(self, start: date, end: date, limit: int) -> None:
        """A reversed window or a limit outside 1..31 is refused before any request."""
        clock = FakeClock()
        api = AdminApiClient(AdminKey("sk-ant-admin01-x"), base_url="https://x", gate=CountingGate(clock), clock=clock)
        with pytest.raises(ValueError):
            api.cost_pages(start, end, limit=limit)


class TestRetry:
    def test_429_waits_retry_after(self, harness: Harness) -> None:
        """429s wait at least what retry-after says, every time, then succeed."""
        harness.sim.add_fault("429:retry_after=30")
        harness.sim.add_fault("429:after=1,retry_after=45")
        harness.sim.add_fault("429:after=2,retry_after=7")
        assert harness.run(_org).id == harness.sim.orgs[0].id
        sleeps = harness.clock.sleeps
        assert len(sleeps) == 3
        for waited, told in zip(sleeps, (30, 45, 7), strict=True):
            assert told <= waited < told + 1.0
        assert (harness.stats.rate_limited, harness.stats.retries, harness.stats.requests) == (3, 3, 4)
        assert harness.stats.failures == [(429, harness.request_id(n)) for n in (1, 2, 3)]

    def test_429_without_retry_after_backs_off(self, harness: Harness) -> None:
        """Without retry-after, waits grow exponentially with jitter from 2 s, capped at 120 s."""
        harness.sim.add_fault("429:count=7,retry_after=none")
        harness.run(_org)
        sleeps = harness.clock.sleeps
        assert len(sleeps) == 7
        for attempt, waited in enumerate(sleeps, start=1):
            ceiling = min(120.0, 2.0 * 2 ** (attempt - 1))
            assert ceiling / 2 <= waited <= ceiling
        assert sleeps[-1] >= 60.0
        assert harness.stats.rate_limited == 7

    def test_jitter_differs_between_clients(self, make_harness: Callable[..., Harness]) -> None:
        """Two clients with different random sources do not wait in lockstep."""
        runs = []
        for seed in (1, 2):
            h = make_harness()
            h.sim.add_fault("503:count=2")
            h.run(_org, rng=random.Random(seed))
            runs.append(h.clock.sleeps)
        assert runs[0] != runs[1]

    @pytest.mark.parametrize("status", [500, 502, 503, 504, 529])
    def test_server_errors_then_success(self, harness: Harness, status: int) -> None:
        """5xx and 529 overloaded are retried with backoff, then the page is served."""
        harness.sim.add_fault(f"{status}:after=1,count=2")
        pages = harness.cost_pages(*WINDOW)
        assert len(pages) == 3
        assert harness.stats.retries == 2
        assert harness.stats.failures == [(status, harness.request_id(2)), (status, harness.request_id(3))]
        assert len(harness.clock.sleeps) == 2

    def test_transport_failures_and_bad_json_are_retried(self, harness: Harness) -> None:
        """Dropped connections, timeouts and a 2xx with a cut-off JSON body are retried."""
        harness.sim.add_fault("cutoff")
        harness.sim.add_fault("delay:after=1,seconds=3600")
        harness.sim.add_fault("bad-json:after=2")
        assert harness.run(_org).name == harness.sim.orgs[0].name
        assert harness.stats.retries == 3
        assert [s for s, _ in harness.stats.failures] == [None, None, 200]

    def test_budget_exhausted_by_attempts(self, harness: Harness) -> None:
        """After max_attempts retryable failures the client gives up, naming the last cause and request-id."""
        harness.sim.add_fault("529:count=3")
        with pytest.raises(RetriesExhausted) as caught:
            harness.run(_org, max_attempts=3)
        err = caught.value
        third = harness.request_id(3)
        assert err.attempts == 3 and err.status == 529 and err.request_id == third
        assert "529" in str(err) and third in str(err) and "overloaded_error" in str(err)
        assert harness.gate is not None and len(harness.sim.requests) == harness.gate.calls == 3
        assert len(harness.clock.sleeps) == 2

    def test_budget_exhausted_by_time(self, harness: Harness) -> None:
        """When the next wait would cross max_retry_seconds, give up now instead of sleeping."""
        harness.sim.add_fault("429:count=3,retry_after=60")
        with pytest.raises(RetriesExhausted) as caught:
            harness.run(_org, max_retry_seconds=100)
        assert caught.value.attempts == 2
        assert caught.value.status == 429 and caught.value.request_id == harness.request_id(2)
        assert len(harness.clock.sleeps) == 1 and harness.clock.sleeps[0] >= 60
        assert harness.stats.rate_limited == 2

    def test_retry_after_beyond_budget_is_not_shortened(self, harness: Harness) -> None:
        """A retry-after longer than the budget is never cut short: the client gives up instead."""
        harness.sim.add_fault("429:retry_after=3600")
        with pytest.raises(RetriesExhausted):
            harness.run(_org, max_retry_seconds=900)
        assert harness.clock.sleeps == []

    def test_rejections_are_not_retried(self, harness: Harness) -> None:
        """A 404 is raised at once with its request-id."""
        harness.sim.add_fault("404:message=no such organization")
        with pytest.raises(RequestRejected) as caught:
            harness.run(_org)
        assert caught.value.request_id == harness.request_id(1) and "no such organization" in str(caught.value)
        assert len(harness.sim.requests) == 1 and harness.clock.sleeps == []


class TestBlocked:
    def test_401_mid_pagination(self, harness: Harness) -> None:
        """A 401 on the third page stops at once with the request-id and tells the user to add a new key."""
        harness.sim.add_fault("401:after=2,rate=1")  # every request after the second
        got: list[object] = []

        async def body(api: AdminApiClient) -> None:
            async for page in api.cost_pages(*WINDOW, limit=7):
                got.append(page)

        with pytest.raises(IntegrationBlocked) as caught:
            harness.run(body)
        err = caught.value
        assert len(got) == 2
        assert err.status == 401 and err.request_id == harness.request_id(3)
        assert err.error_type == "authentication_error"
        assert "new Admin key" in err.action and harness.request_id(3) in str(err)
        assert len(harness.sim.requests) == 3  # not retried

    @pytest.mark.parametrize(
        ("status", "message"),
        [(403, "This API key does not have permission: admin key required"), (402, "Billing problem: card declined")],
    )
    def test_403_402_show_the_api_message(self, harness: Harness, status: int, message: str) -> None:
        """402 and 403 block the integration and show what the API said."""
        harness.sim.add_fault(str(status), message=message)
        with pytest.raises(IntegrationBlocked) as caught:
            harness.run(_org)
        assert message in caught.value.action and caught.value.status == status

    def test_wrong_key_is_401(self, harness: Harness) -> None:
        """The simulator refuses a key it does not know, like the API."""
        harness.key = "sk-ant-admin01-some-other-key"
        with pytest.raises(IntegrationBlocked) as caught:
            harness.run(_org)
        assert caught.value.status == 401 and caught.value.error_type == "authentication_error"


class TestNoKeyLeaks:
    def _assert_clean(self, text: str, key: str) -> None:
        assert key not in text
        assert key[len("sk-ant-admin01-"):] not in text

    @pytest.mark.parametrize(
        "break_it",
        [
            lambda sim, key: sim.add_fault("401", rate=1),
            lambda sim, key: sim.add_fault("403", message=f"key {key} is not an admin key"),
            lambda sim, key: sim.add_fault("400", message=f"bad request with x-api-key: {key}"),
            lambda sim, key: sim.add_fault("503", count=3, message=f"overloaded {key}"),
            lambda sim, key: sim.add_fault("cutoff:count=3"),
            lambda sim, key: sim.add_fault("bad-amount", amount=key),
            lambda sim, key: sim.add_fault("no-next-page"),
        ],
    )
    def test_not_in_errors_reprs_or_logs(
        self, harness: Harness, caplog: pytest.LogCaptureFixture, break_it: Callable[[Any, str], None]
    ) -> None:
        """Whatever fails (even a server echoing the key), the key is in no message, repr or log line."""
        key = harness.sim.keys[0]
        break_it(harness.sim, key)
        caplog.set_level(logging.DEBUG)
        texts: list[str] = []

        async def body(api: AdminApiClient) -> None:
            texts.extend([repr(api), str(api), repr(api.headers), repr(api._auth)])
            assert api._http is not None
            texts.extend([repr(api._http.headers), repr(api._http.auth), repr(api._http)])
            await api.organization()
            [p async for p in api.cost_pages(*WINDOW, limit=7)]

        with pytest.raises(Exception) as caught:
            harness.run(body, max_attempts=3)
        err = caught.value
        texts += [str(err), repr(err), str(getattr(err, "action", "")), str(getattr(err, "last_cause", ""))]
        texts += [str(err.__cause__), str(err.__context__), repr(harness.stats)]
        texts.append(caplog.text)
        texts += [str(r.args) for r in caplog.records]
        assert caplog.records, "failures must be logged"
        for text in texts:
            self._assert_clean(text, key)

    def test_auth_repr_masked(self) -> None:
        """The auth object shows only the key's hint."""
        key = AdminKey("sk-ant-admin01-abcdefghijklmnopqrstuvwxyz-TAIL")
        assert "abcdefghijklmnop" not in repr(AdminKeyAuth(key))
        assert "..." in repr(AdminKeyAuth(key))

    def test_key_only_added_by_auth(self) -> None:
        """The key is not a default header: it is set per request by the auth flow."""
        key = AdminKey("sk-ant-admin01-abcdefghijklmnopqrstuvwxyz-TAIL")
        clock = FakeClock()
        api = AdminApiClient(key, base_url="https://x", gate=CountingGate(clock), clock=clock)

        async def main() -> None:
            async with api:
                assert api._http is not None
                assert "x-api-key" not in api._http.headers
                request = httpx.Request("GET", "https://x/v1/organizations/me")
                assert api._http.auth is not None
                flow = api._http.auth.sync_auth_flow(request)
                assert next(flow).headers["x-api-key"] == key.reveal()

        asyncio.run(main())
        assert api._http is None  # closed on exit


def test_failures_are_logged_with_request_id(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """Every failure is logged on worker.api with status, error type, path and request-id."""
    caplog.set_level(logging.WARNING, logger="worker.api")
    harness.sim.add_fault("529")
    harness.run(_org)
    (record,) = [r for r in caplog.records if r.name == "worker.api"]
    message = record.getMessage()
    assert "529" in message and "overloaded_error" in message and ME_PATH in message
    assert harness.request_id(1) in message


def test_request_id_from_body_when_header_missing(caplog: pytest.LogCaptureFixture) -> None:
    """When the request-id header is absent, the error body's request_id is used."""
    caplog.set_level(logging.WARNING, logger="worker.api")
    body = {"type": "error", "error": {"type": "not_found_error", "message": "gone"}, "request_id": "req_in_body"}

    async def main() -> None:
        clock = FakeClock()
        async with AdminApiClient(AdminKey("sk-ant-admin01-x"), base_url="https://h.test", gate=CountingGate(clock),
                                  clock=clock) as api:  # fmt: skip
            await api.organization()

    with respx.mock() as router:
        router.get("https://h.test/v1/organizations/me").respond(404, content=json.dumps(body).encode())
        with pytest.raises(RequestRejected) as caught:
            asyncio.run(main())
    assert caught.value.request_id == "req_in_body"
    assert "req_in_body" in caplog.text


def test_organization_shape_violation() -> None:
    """A 2xx /me that is not an organization object is a protocol violation, not retried."""
    async def main() -> None:
        clock = FakeClock()
        async with AdminApiClient(AdminKey("sk-ant-admin01-x"), base_url="https://h.test", gate=CountingGate(clock),
                                  clock=clock) as api:  # fmt: skip
            await api.organization()

    with respx.mock() as router:
        route = router.get("https://h.test/v1/organizations/me").respond(200, json=["not", "an", "object"])
        with pytest.raises(ProtocolViolation):
            asyncio.run(main())
    assert route.call_count == 1


def test_cookies_are_neither_kept_nor_sent() -> None:
    """A `set-cookie` in an answer is not kept (the client's jar holds nothing: no per-answer header parsing)
    and the next request carries no `cookie` header."""
    async def main() -> None:
        clock = FakeClock()
        async with AdminApiClient(AdminKey("sk-ant-admin01-x"), base_url="https://h.test", gate=CountingGate(clock),
                                  clock=clock) as api:  # fmt: skip
            await api.organization()
            await api.organization()

    with respx.mock() as router:
        route = router.get("https://h.test/v1/organizations/me").respond(
            200, json={"id": "org_1", "name": "Org", "type": "organization"},
            headers={"set-cookie": "session=abc; Path=/; Domain=h.test"})
        asyncio.run(main())
    assert route.call_count == 2
    assert all("cookie" not in call.request.headers for call in route.calls)
