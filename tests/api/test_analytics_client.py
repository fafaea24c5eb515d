"""The Analytics API in the client: rows by cursor as complete days, exact money, strict paging, restarts.

Against the simulator (real HTTP) for the numbers, and against scripted respx answers for each way an
answer can break the contract.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import respx

from tests.api.support import CountingGate
from worker.api import (
    AdminApiClient,
    CursorRejected,
    Page,
    ProtocolViolation,
    RequestStats,
    SourceRefused,
)
from worker.api.analytics import AnalyticsCostRow, AnalyticsUsageRow, check_group_by
from worker.api.models import cents_to_dollars
from worker.clock import FakeClock
from worker.secret import AdminKey
from worker.simulator import SimulatorHandle, running_simulator

TODAY = date(2026, 3, 10)
COST_BY = ["model", "workspace_id", "api_key_id", "actor", "service_tier", "cost_type", "token_type"]
USAGE_BY = ["model", "workspace_id", "api_key_id", "actor", "service_tier"]
BASE = "https://h.test"
A_COST = f"{BASE}/v1/organizations/analytics/cost"
KEY = "sk-ant-admin01-testkey-000000000000"


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    with running_simulator(orgs=2, seed=11, today=TODAY, requests_per_minute=0, hipaa_orgs=(1,)) as handle:
        yield handle


def run(base_url: str, key: str, body: Callable[[AdminApiClient], Any]) -> Any:
    async def main() -> Any:
        clock = FakeClock()
        async with AdminApiClient(AdminKey(key), base_url=base_url, gate=CountingGate(clock), clock=clock,
                                  stats=RequestStats(), max_attempts=3) as api:
            return await body(api)
    return asyncio.run(main())


def cost_pages(base_url: str, key: str, start: date, end: date, limit: int = 1000,
               group_by: list[str] | None = None) -> list[Page[AnalyticsCostRow]]:
    async def body(api: AdminApiClient) -> list[Page[AnalyticsCostRow]]:
        return [p async for p in api.analytics_cost_pages(start, end, group_by or COST_BY, limit=limit)]
    result: list[Page[AnalyticsCostRow]] = run(base_url, key, body)
    return result


def truth(sim: SimulatorHandle, start: date, end: date, by: str) -> list[dict[str, Any]]:
    r = httpx.get(sim.base_url + "/_sim/truth", params={"since": start.isoformat(), "until": end.isoformat(),
                                                        "source": "analytics", "by": by})
    rows: list[dict[str, Any]] = r.json()["rows"]
    return rows


class TestAgainstTheSimulator:
    @pytest.mark.parametrize("limit", [7, 1000])
    def test_complete_days_in_order_equal_truth(self, sim: SimulatorHandle, limit: int) -> None:
        """Pages yield every day of the window once, in order, each complete; amounts per key equal the truth."""
        start, end = date(2026, 2, 1), date(2026, 3, 3)
        pages = cost_pages(sim.base_url, sim.keys[0], start, end, limit=limit)
        days = [b.day for p in pages for b in p.buckets]
        assert days == [start + timedelta(days=i) for i in range((end - start).days)]
        got: dict[tuple[str, str | None, str | None], list[Decimal]] = defaultdict(lambda: [Decimal(0)] * 2)
        for p in pages:
            assert p.refreshed_at is not None
            for b in p.buckets:
                for r in b.rows:
                    assert r.day == b.day and isinstance(r.amount_usd, Decimal)
                    cell = got[(b.day.isoformat(), r.model, r.api_key_id)]
                    cell[0] += r.amount_usd
                    cell[1] += r.list_amount_usd
        want = {(r["date"], r["model"], r["key"]): [Decimal(r["cost_usd"]), Decimal(r["list_cost_usd"])]
                for r in truth(sim, start, end, "api_key")}
        assert dict(got) == want
        if limit == 7:
            assert len(pages) > 20

    def test_usage_rows_carry_actors(self, sim: SimulatorHandle) -> None:
        """Usage rows name their actor: users with emails, service accounts, API keys."""
        async def body(api: AdminApiClient) -> list[Page[AnalyticsUsageRow]]:
            return [p async for p in api.analytics_usage_pages(date(2026, 3, 1), date(2026, 3, 8), USAGE_BY)]
        pages: list[Page[AnalyticsUsageRow]] = run(sim.base_url, sim.keys[0], body)
        actors = {r.actor for p in pages for b in p.buckets for r in b.rows if r.actor}
        kinds = {a.type for a in actors}
        assert "user_actor" in kinds and kinds & {"api_actor", "service_account_actor"}
        assert all(a.email and "@" in a.email for a in actors if a.type == "user_actor")

    def test_hipaa_organization_is_refused(self, sim: SimulatorHandle) -> None:
        """A HIPAA-ready organization's 400 is SourceRefused, after one request."""
        with pytest.raises(SourceRefused, match="HIPAA"):
            cost_pages(sim.base_url, sim.keys[1], date(2026, 3, 1), date(2026, 3, 8))

    def test_expired_cursor_restarts_the_window(self, sim: SimulatorHandle) -> None:
        """A 410 mid-window: the window restarts at the first incomplete day, nothing twice, nothing lost."""
        start, end = date(2026, 2, 1), date(2026, 2, 15)
        clean = cost_pages(sim.base_url, sim.keys[0], start, end, limit=10)
        sim.add_fault("410:count=2")
        try:
            restarted = cost_pages(sim.base_url, sim.keys[0], start, end, limit=10)
        finally:
            sim.clear_faults()

        def flat(pages: list[Page[AnalyticsCostRow]]) -> list[tuple[date, int]]:
            return [(b.day, len(b.rows)) for p in pages for b in p.buckets]
        assert flat(restarted) == flat(clean)
        assert sum(r.amount_usd for p in restarted for b in p.buckets for r in b.rows) == \
            sum(r.amount_usd for p in clean for b in p.buckets for r in b.rows)

    def test_names(self, sim: SimulatorHandle) -> None:
        """names(): every API key (with its workspace) and workspace, the default included."""
        names = run(sim.base_url, sim.keys[0], lambda api: api.names())
        org = sim.orgs[0]
        assert {n.id: n.name for n in names if n.kind == "api_key"} == {k.id: k.name for k in org.api_keys}
        assert {n.id for n in names if n.kind == "workspace"} == {w.tagged_id for w in org.workspaces}


# --- scripted answers --------------------------------------------------------------------------------


def row(day: str, model: str = "claude-sonnet-4-6", amount: str = "100", key: str | None = "apikey_1",
        token_type: str | None = "output_tokens", **cost: Any) -> dict[str, Any]:
    nxt = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
    return {"starting_at": f"{day}T00:00:00Z", "ending_at": f"{nxt}T00:00:00Z",
            "group": {"model": model, "api_key_id": key, "cost_type": "tokens" if token_type else "web_search",
                      "token_type": token_type, "actor": {"type": "api_actor", "api_key_id": key} if key else None},
            "cost": {"amount": amount, "list_amount": amount, "currency": "USD", "requests": None, **cost}}


def page(rows: list[dict[str, Any]], next_page: str | None = None, has_more: bool | None = None) -> dict[str, Any]:
    return {"data": rows, "has_more": bool(next_page) if has_more is None else has_more, "next_page": next_page,
            "data_refreshed_at": "2026-03-10T09:00:00Z"}


def scripted(answers: list[Any], start: date = date(2026, 3, 1), end: date = date(2026, 3, 5),
             limit: int = 1000) -> tuple[list[Page[AnalyticsCostRow]] | Exception, list[httpx.Request]]:
    requests: list[httpx.Request] = []
    queue = list(answers)

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        item = queue.pop(0)
        if isinstance(item, httpx.Response):
            return item
        return httpx.Response(200, content=json.dumps(item).encode(), headers={"request-id": f"req_{len(requests)}"})

    with respx.mock() as router:
        router.get(A_COST).mock(side_effect=answer)
        try:
            return cost_pages(BASE, KEY, start, end, limit=limit), requests
        except Exception as exc:  # the test inspects it
            return exc, requests


def days_of(result: list[Page[AnalyticsCostRow]] | Exception) -> list[tuple[str, int]]:
    assert not isinstance(result, Exception), result
    return [(b.day.isoformat(), len(b.rows)) for p in result for b in p.buckets]


class TestScripted:
    def test_money_is_exact_cents_to_dollars(self) -> None:
        """`1843.2075` cents is Decimal('18.432075') dollars (exponent shift), list_amount too."""
        result, _ = scripted([page([row("2026-03-01", amount="1843.2075", list_amount="2048.0000000001")])])
        assert not isinstance(result, Exception)
        (r,) = [r for p in result for b in p.buckets for r in b.rows]
        assert (r.amount_usd, r.list_amount_usd) == (Decimal("18.432075"), Decimal("20.480000000001"))
        assert str(r.amount_usd) == "18.432075"

    @pytest.mark.parametrize("amount", ["0", "-0", "0.00", "007.50", "-12.5", "9999999999999", "1." + "0" * 29 + "1",
                                        "1." + "0" * 30, "10000000000000", " 12.5", "1e3", "1.5E-4", "00000000000001"])
    def test_amounts_read_fast_equal_the_general_parser(self, amount: str) -> None:
        """The plain-text fast path gives the very Decimal (digits and exponent) `cents_to_dollars` gives, and
        whatever it does not take (exponents, spaces, edges of the bounds) goes to that parser."""
        result, _ = scripted([page([row("2026-03-01", amount=amount)])])
        try:
            want: Decimal | str = cents_to_dollars(amount)
        except ProtocolViolation as exc:
            want = str(exc)
        if isinstance(result, Exception):
            assert isinstance(want, str) and want in str(result)
            return
        (r,) = [r for p in result for b in p.buckets for r in b.rows]
        assert isinstance(want, Decimal) and r.amount_usd.as_tuple() == want.as_tuple()

    def test_a_day_split_across_pages_is_held_until_complete(self) -> None:
        """A page ending inside a day yields only the days before it; the next page completes that day."""
        result, requests = scripted([
            page([row("2026-03-01"), row("2026-03-03", key="apikey_2")], "c1"),
            page([row("2026-03-03", key="apikey_3")]),
        ])
        assert not isinstance(result, Exception)
        assert [len(p.buckets) for p in result] == [2, 2]
        assert days_of(result) == [("2026-03-01", 1), ("2026-03-02", 0), ("2026-03-03", 2), ("2026-03-04", 0)]
        first = requests[0].url.params
        assert (first["order_by"], first["order"], first["time_bucket_width"], first["limit"]) == \
            ("time", "asc", "1d", "1000")
        assert requests[0].headers["anthropic-beta"] == "analytics-usage-cost-2026-08-24"
        assert first.get_list("group_by[]") == COST_BY and requests[1].url.params["page"] == "c1"

    @pytest.mark.parametrize(("answers", "message"), [
        ([page([row("2026-03-01")], None, has_more=True)], "next_page is missing"),
        ([page([row("2026-03-01")], "c1"), page([row("2026-03-02")], "c1")], "sent before"),
        ([page([row("2026-03-09")])], "outside the requested window"),
        ([page([row("2026-03-02"), row("2026-03-01")])], "time order"),
        ([page([row("2026-03-02")], "c1"), page([row("2026-03-01")])], "complete"),
        ([{"data": [row("2026-03-01")], "has_more": "no"}], "documented shape"),
        ([page([row("2026-03-01", amount="1e30")])], "cost.amount: amount 1E+30 is outside the sane bound"),
        ([page([row("2026-03-01", amount="12.5abc")])], "decimal string"),
        ([page([row("2026-03-01", requests=-1)])], "count"),
        ([page([{**row("2026-03-01"), "ending_at": "2026-03-03T00:00:00Z"}])], "one day wide"),
        ([page([{**row("2026-03-01"), "group": {"model": 7}}])], "group.model"),
        ([page([], "c1"), page([], "c2"), page([], "c3"), page([], "c4")], "without a row"),
    ])
    def test_broken_answers_are_violations(self, answers: list[Any], message: str) -> None:
        """Each broken contract is a ProtocolViolation naming what broke and the request id."""
        result, _ = scripted(answers)
        assert isinstance(result, ProtocolViolation), result
        assert message in str(result) and "req_" in str(result)

    def test_too_many_rows_for_the_limit(self) -> None:
        """More distinct rows than `limit` (fan-out not counted) is a violation."""
        fan = [row("2026-03-01", token_type=t) for t in ("output_tokens", "uncached_input_tokens")]
        ok, _ = scripted([page(fan)], limit=1)
        assert not isinstance(ok, Exception)
        bad, _ = scripted([page([row("2026-03-01"), row("2026-03-01", key="apikey_2")])], limit=1)
        assert isinstance(bad, ProtocolViolation) and "more than limit=1" in str(bad)

    @pytest.mark.parametrize("refusal", [
        httpx.Response(410, json={"type": "error", "error": {"type": "invalid_request_error", "message": "gone"}}),
        httpx.Response(400, json={"type": "error", "error": {"type": "invalid_request_error",
                                                              "message": "page: invalid page cursor"}}),
    ])
    def test_rejected_cursor_restarts_from_the_incomplete_day(self, refusal: httpx.Response) -> None:
        """410 or an invalid cursor: the next request starts at the held day without a cursor."""
        result, requests = scripted([
            page([row("2026-03-01"), row("2026-03-02")], "c1"),
            refusal,
            page([row("2026-03-02"), row("2026-03-02", key="apikey_9"), row("2026-03-04")]),
        ])
        assert days_of(result) == [("2026-03-01", 1), ("2026-03-02", 2), ("2026-03-03", 0), ("2026-03-04", 1)]
        assert [r.url.params.get("page") for r in requests] == [None, "c1", None]
        assert requests[2].url.params["starting_at"] == "2026-03-02T00:00:00Z"

    def test_restarts_are_bounded(self) -> None:
        """A cursor refused again and again ends as CursorRejected, not a loop."""
        gone = httpx.Response(410, json={"type": "error", "error": {"type": "invalid_request_error", "message": "x"}})
        answers: list[Any] = []
        for _ in range(4):
            answers += [page([row("2026-03-01")], "c1"), gone]
        result, requests = scripted(answers)
        assert isinstance(result, CursorRejected) and len(requests) == 8

    def test_garbled_json_is_retried(self) -> None:
        """A body that is not JSON is retried like a dropped connection."""
        result, requests = scripted([httpx.Response(200, content=b'{"data": [tr'), page([row("2026-03-01")])])
        assert days_of(result)[0] == ("2026-03-01", 1) and len(requests) == 2


class TestGroupBy:
    @pytest.mark.parametrize(("values", "cost", "message"), [
        (["model", "workspace_id", "api_key_id", "actor", "service_tier", "product"], True, "at most 5"),
        (["model", "token_type"], True, "cost_type"),
        (["model", "cost_type"], False, "unknown"),
        (["workspace_id"], True, "model"),
        (["model", "model"], True, "twice"),
    ])
    def test_refused(self, values: list[str], cost: bool, message: str) -> None:
        """What the API would refuse (or what would drop cost) is refused before any request."""
        with pytest.raises(ValueError, match=message):
            check_group_by(values, cost=cost)

    def test_default_is_five_plus_the_fan_out(self) -> None:
        """The default grouping is accepted: 5 dimensions, cost_type and token_type not counted."""
        assert check_group_by(COST_BY, cost=True) == COST_BY
