"""The request the client sends: the exact query string of each endpoint (the client encodes the query itself,
as httpx encodes params), its headers, and the same request `AsyncClient.build_request` would have made."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

import httpx
import pytest

from tests.api.support import CountingGate
from worker.api import AdminApiClient, ApiError
from worker.api.client import COST_PATH, USAGE_GROUP_BY
from worker.clock import FakeClock
from worker.secret import AdminKey

KEY = AdminKey("sk-ant-admin01-RequestShapeTestKey_0123456789abcdefghijklmnopqrstuvwxyz-AbCd")
DENIED = {"type": "error", "error": {"type": "permission_error", "message": "no"}}
WINDOW = "starting_at=2026-01-01T00%3A00%3A00Z&ending_at=2026-01-04T00%3A00%3A00Z"
START, END = date(2026, 1, 1), date(2026, 1, 4)


def _first_request(call: Callable[[AdminApiClient], Awaitable[Any]]) -> httpx.Request:
    """The first request `call` sends (answered 403, so it is the only one)."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(403, json=DENIED)

    async def main() -> None:
        clock = FakeClock()
        async with AdminApiClient(KEY, base_url="https://api.test", gate=CountingGate(clock), clock=clock,
                                  transport=httpx.MockTransport(answer)) as api:
            with pytest.raises(ApiError):
                await call(api)

    asyncio.run(main())
    assert len(seen) == 1
    return seen[0]


CALLS: dict[str, tuple[Callable[[AdminApiClient], Awaitable[Any]], str]] = {
    "organization": (lambda api: api.organization(), "/v1/organizations/me"),
    "cost": (lambda api: anext(api.cost_pages(START, END)),
             "/v1/organizations/cost_report?bucket_width=1d&group_by%5B%5D=workspace_id&group_by%5B%5D=description&"
             f"{WINDOW}&limit=31"),
    "usage": (lambda api: anext(api.usage_pages(START, END)),
              "/v1/organizations/usage_report/messages?bucket_width=1d&group_by%5B%5D=model&"
              "group_by%5B%5D=workspace_id&group_by%5B%5D=service_tier&group_by%5B%5D=context_window&"
              f"group_by%5B%5D=api_key_id&{WINDOW}&limit=31"),
    "analytics_usage": (lambda api: anext(api.analytics_usage_pages(START, END, ["model"])),
                        f"/v1/organizations/analytics/usage?group_by%5B%5D=model&{WINDOW}&time_bucket_width=1d&"
                        "order_by=time&order=asc&limit=1000"),
    "names": (lambda api: api.names(), "/v1/organizations/api_keys?limit=1000"),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_each_endpoint_sends_its_exact_query(name: str) -> None:
    call, raw_path = CALLS[name]
    request = _first_request(call)
    assert request.url.raw_path.decode() == raw_path  # names, `[]` escaped and order as httpx wrote them
    assert request.url.host == "api.test" and request.method == "GET"


@pytest.mark.parametrize("name", list(CALLS))
def test_headers_are_the_defaults_the_key_and_the_beta_for_analytics_only(name: str) -> None:
    request = _first_request(CALLS[name][0])
    assert [k.lower() for k, _ in request.headers.raw] == [
        b"host", b"accept-encoding", b"connection", b"anthropic-version", b"user-agent", b"accept",
        *([b"anthropic-beta"] if name.startswith("analytics") else []), b"x-api-key"]
    assert request.headers["x-api-key"] == KEY.reveal()
    assert "cookie" not in request.headers
    assert request.extensions["timeout"] == {"connect": 10.0, "read": 30.0, "write": 30.0, "pool": 30.0}


@pytest.mark.parametrize("base", ["http://127.0.0.1:3652", "https://API.anthropic.com:443/",
                                  "https://api.anthropic.com/sub", "http://u:p@h:80/a/b/"])
@pytest.mark.parametrize("path", [COST_PATH, "v1/organizations/me"])
def test_request_is_the_one_build_request_makes(base: str, path: str) -> None:
    params: list[tuple[str, str | int]] = [
        ("starting_at", "2026-11-28T00:00:00Z"), *(("group_by[]", g) for g in USAGE_GROUP_BY), ("limit", 31),
        ("page", "pg_a+b/c==&x ü%41"), ("include_default", True), ("n", 0)]

    async def main() -> None:
        clock = FakeClock()
        async with AdminApiClient(KEY, base_url=base, gate=CountingGate(clock), clock=clock,
                                  transport=httpx.MockTransport(lambda r: httpx.Response(200))) as api:
            assert api._http is not None
            for sent, headers in ((params, None), ([], {"anthropic-beta": "b1"})):
                ours = api._request(path, sent, headers)
                theirs = api._http.build_request("GET", path, params=list(sent), headers=headers)
                assert str(ours.url) == str(theirs.url) and ours.url.raw_path == theirs.url.raw_path
                assert ours.headers.raw == theirs.headers.raw

    asyncio.run(main())
