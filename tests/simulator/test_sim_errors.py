"""Validation, authentication, the per-key rate limit and the result cap."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from worker.simulator import SimulatorHandle, running_simulator

from .helpers import COST, ME, TODAY, USAGE, VERSION, FakeClock, client, report_params, ts

START = TODAY - timedelta(days=40)


def assert_error(r: httpx.Response, status: int, error_type: str, fragment: str = "") -> None:
    """The documented error body, with the request id also in the header."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"type", "error", "request_id"}
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert fragment in body["error"]["message"]
    assert body["request_id"] == r.headers["request-id"]
    assert body["request_id"].startswith("req_")


BASE: dict[str, Any] = {"starting_at": ts(START), "ending_at": ts(TODAY), "limit": 7}

VALIDATION_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("missing starting_at", COST, {"limit": 7}, "starting_at"),
    ("starting_at not a timestamp", COST, {**BASE, "starting_at": "yesterday"}, "starting_at"),
    ("starting_at a bare date", COST, {**BASE, "starting_at": "2026-03-01"}, "starting_at"),
    ("starting_at without offset", COST, {**BASE, "starting_at": "2026-03-01T00:00:00"}, "UTC offset"),
    ("ending_at before starting_at", COST, {**BASE, "ending_at": ts(START - timedelta(days=1))}, "ending_at"),
    ("cost report hourly", COST, {**BASE, "bucket_width": "1h"}, "bucket_width"),
    ("unknown width", USAGE, {**BASE, "bucket_width": "2d"}, "bucket_width"),
    ("limit zero", COST, {**BASE, "limit": 0}, "limit"),
    ("cost limit 32", COST, {**BASE, "limit": 32}, "between 1 and 31"),
    ("usage 1d limit 32", USAGE, {**BASE, "limit": 32}, "between 1 and 31"),
    ("usage 1h limit 169", USAGE, {**BASE, "bucket_width": "1h", "limit": 169}, "between 1 and 168"),
    ("usage 1m limit 1441", USAGE, {**BASE, "bucket_width": "1m", "limit": 1441}, "between 1 and 1440"),
    ("limit not a number", USAGE, {**BASE, "limit": "ten"}, "limit"),
    ("cost group_by model", COST, {**BASE, "group_by[]": "model"}, "group_by[]"),
    ("usage group_by description", USAGE, {**BASE, "group_by[]": "description"}, "group_by[]"),
    ("speed without the fast-mode beta", USAGE, {**BASE, "group_by[]": ["model", "speed"]},
     "fast-mode-2026-02-01"),
    ("group_by without brackets", USAGE, {**BASE, "group_by": "model"}, "group_by[]"),
    ("unknown parameter", COST, {**BASE, "models[]": "claude-haiku-4-5"}, "unknown query parameter"),
    ("starting_at out of range", COST, {**BASE, "starting_at": "1999-12-31T00:00:00Z"}, "range"),
    ("garbage cursor", COST, {**BASE, "page": "page_notacursor"}, "cursor"),
    ("date as cursor", COST, {**BASE, "page": "2026-02-01T00:00:00Z"}, "cursor"),
]


class TestValidation:
    @pytest.mark.parametrize(("case", "path", "params", "fragment"), VALIDATION_CASES,
                             ids=[c[0] for c in VALIDATION_CASES])
    def test_invalid_request(
        self, sim: SimulatorHandle, case: str, path: str, params: dict[str, Any], fragment: str
    ) -> None:
        """Bad parameters answer 400 invalid_request_error with a clear message."""
        with client(sim) as c:
            assert_error(c.get(path, params=params), 400, "invalid_request_error", fragment)

    def test_cursor_bound_to_parameters(self, sim: SimulatorHandle) -> None:
        """A cursor is refused with other parameters or another org."""
        with client(sim) as c:
            cursor = c.get(COST, params=BASE).json()["next_page"]
            assert c.get(COST, params={**BASE, "page": cursor}).status_code == 200
            changed = {**BASE, "group_by[]": "description", "page": cursor}
            assert_error(c.get(COST, params=changed), 400, "invalid_request_error", "cursor")
            assert_error(c.get(USAGE, params={**BASE, "page": cursor}), 400, "invalid_request_error")
        with client(sim, 1) as other:
            assert_error(other.get(COST, params={**BASE, "page": cursor}), 400, "invalid_request_error")

    def test_unknown_path(self, sim: SimulatorHandle) -> None:
        """Unknown endpoints answer 404 not_found_error."""
        with client(sim) as c:
            assert_error(c.get("/v1/organizations/nope"), 404, "not_found_error")


class TestAuth:
    def test_missing_key(self, sim: SimulatorHandle) -> None:
        """No x-api-key: 401."""
        with httpx.Client(base_url=sim.base_url, headers={"anthropic-version": VERSION}) as c:
            assert_error(c.get(ME), 401, "authentication_error", "x-api-key")

    def test_unknown_key(self, sim: SimulatorHandle) -> None:
        """A key the simulator never issued: 401."""
        with client(sim, 0, **{"x-api-key": "sk-ant-admin01-sim-0-000000"}) as c:
            assert_error(c.get(COST, params=BASE), 401, "authentication_error")

    def test_regular_key(self, sim: SimulatorHandle) -> None:
        """A regular sk-ant-api key is refused with a message asking for an admin key."""
        with client(sim, 0, **{"x-api-key": sim.orgs[0].regular_key}) as c:
            r = c.get(COST, params=BASE)
        assert_error(r, 403, "permission_error", "Admin API key")

    def test_missing_version(self, sim: SimulatorHandle) -> None:
        """anthropic-version is required."""
        with httpx.Client(base_url=sim.base_url, headers={"x-api-key": sim.keys[0]}) as c:
            assert_error(c.get(ME), 400, "invalid_request_error", "anthropic-version")

    def test_keys_are_per_org(self, sim: SimulatorHandle) -> None:
        """Each org's key sees that org, and keys look like admin keys."""
        for org in range(3):
            assert sim.keys[org].startswith(f"sk-ant-admin01-sim-{org}-")
            with client(sim, org) as c:
                assert c.get(ME).json()["id"] == sim.orgs[org].id

    def test_revoked_key(self, fresh_sim: SimulatorHandle) -> None:
        """After revocation the key answers 401; other orgs are untouched."""
        fresh_sim.revoke(1)
        with client(fresh_sim, 1) as c:
            assert_error(c.get(ME), 401, "authentication_error", "revoked")
        with client(fresh_sim, 0) as c:
            assert c.get(ME).status_code == 200


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limited(clock: FakeClock) -> Iterator[SimulatorHandle]:
    with running_simulator(orgs=2, seed=7, today=TODAY, requests_per_minute=60, burst=2,
                           clock=clock) as handle:
        yield handle


class TestRateLimit:
    def test_over_budget_gets_429(self, limited: SimulatorHandle, clock: FakeClock) -> None:
        """The burst passes, the next request gets 429 with retry-after, then time refills it."""
        with client(limited) as c:
            assert c.get(ME).status_code == 200
            assert c.get(COST, params=BASE).status_code == 200
            r = c.get(USAGE, params=BASE)
            assert_error(r, 429, "rate_limit_error")
            assert r.headers["retry-after"] == "1"
            clock.advance(0.5)
            assert c.get(ME).headers["retry-after"] == "1"
            clock.advance(0.5)
            assert c.get(ME).status_code == 200

    def test_keys_have_separate_budgets(self, limited: SimulatorHandle, clock: FakeClock) -> None:
        """One org exhausting its budget does not limit another."""
        with client(limited, 0) as a, client(limited, 1) as b:
            for _ in range(3):
                a.get(ME)
            assert a.get(ME).status_code == 429
            assert b.get(ME).status_code == 200

    def test_stats_count_requests_and_429s(self, limited: SimulatorHandle) -> None:
        """Stats count every request and every 429, per key and per path."""
        with client(limited) as c:
            for _ in range(5):
                c.get(ME)
            stats = c.get("/_sim/stats").json()
        key = stats["keys"][limited.keys[0]]
        assert (key["org"], key["requests"], key["rate_limited"]) == (0, 5, 3)
        assert key["paths"][ME]["rate_limited"] == 3
        assert stats["paths"][ME] == {"requests": 5, "rate_limited": 3, "statuses": {"200": 2, "429": 3}}
        with httpx.Client(base_url=limited.base_url) as c:
            assert c.post("/_sim/reset-stats").status_code == 200
            assert c.get("/_sim/stats").json()["total"]["requests"] == 0

    def test_stats_time_each_keys_first_and_last_request(self, limited: SimulatorHandle) -> None:
        """Per key, the wall-clock times of its first and last request (any status): a benchmark timing a
        fleet from outside reads when every organization was first answered and how close two came."""
        before = time.time()
        with client(limited, 0) as a, client(limited, 1) as b:
            a.get(ME)
            time.sleep(0.05)
            b.get(ME)
            a.get(ME)
            stats = a.get("/_sim/stats").json()
        after = time.time()
        first, second = stats["keys"][limited.keys[0]], stats["keys"][limited.keys[1]]
        assert before <= first["first_at"] < second["first_at"] <= second["last_at"] <= first["last_at"] <= after
        assert first["last_at"] - first["first_at"] >= 0.05
        assert second["first_at"] == second["last_at"]

    def test_slow_rate_retry_after(self, clock: FakeClock) -> None:
        """retry-after is the whole seconds until the next token (rounded up)."""
        with running_simulator(today=TODAY, requests_per_minute=0.5, clock=clock) as s, client(s) as c:
            assert c.get(ME).status_code == 200
            clock.advance(30.2)
            assert c.get(ME).headers["retry-after"] == "90"


class TestResultCap:
    def test_dense_page_is_refused(self) -> None:
        """A page with more results than --max-results answers 400 'response too large'."""
        with running_simulator(orgs=1, seed=7, today=TODAY, requests_per_minute=0,
                               max_results=200) as s, client(s) as c:
            dense = report_params(START, TODAY, 31, "workspace_id", "description")
            assert_error(c.get(COST, params=dense), 400, "invalid_request_error",
                         "response too large")
            assert c.get(COST, params={**dense, "limit": 1}).status_code == 200
