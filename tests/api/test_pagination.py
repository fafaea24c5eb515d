"""Pages over the simulator's generated data: exact totals against its ground truth, and a broken chain
never passes."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import respx

from tests.api.support import CountingGate, cost_by_day_model, days_of
from tests.simulated import COST_PATH, COUNTERS, USAGE_PATH, Truth, report_requests
from worker.api import AdminApiClient, ProtocolViolation, ResponseTooLarge
from worker.api.pagination import CursorPaginator, DayCoverage
from worker.clock import FakeClock
from worker.secret import AdminKey

if TYPE_CHECKING:
    from tests.api.conftest import Harness

START, END = date(2025, 12, 1), date(2026, 3, 10)  # 99 days, all before the fake clock's today (2026-03-10)
TOO_LARGE_MESSAGE = "response too large: reduce limit or group by fewer dimensions"


class TestGroundTruth:
    def test_cost_per_model_per_day_is_exact(self, harness: Harness) -> None:
        """Over a multi-month window, dollars per (day, model) equal the integer ground truth exactly."""
        pages = harness.cost_pages(START, END)
        got = cost_by_day_model(pages)
        truth = Truth(harness.sim, START, END)
        assert {k: v for k, v in got.items() if v} == truth.by_day_model()
        assert sum(got.values()) == truth.cost()
        assert truth.cost() > 1000  # a real amount, not an empty window
        assert any(r.amount_usd != r.amount_usd.quantize(Decimal("0.01")) for p in pages for b in p.buckets
                   for r in b.rows)  # fractional cents really occurred  # fmt: skip

    def test_rows_cover_every_kind_of_cost(self, harness: Harness) -> None:
        """The data exercises every token type, both tiers and windows, non-token costs and the default workspace."""
        rows = [r for p in harness.cost_pages(START, END) for b in p.buckets for r in b.rows]
        assert {r.token_type for r in rows} == {
            "uncached_input_tokens", "output_tokens", "cache_read_input_tokens",
            "cache_creation.ephemeral_5m_input_tokens", "cache_creation.ephemeral_1h_input_tokens", None}  # fmt: skip
        assert {r.service_tier for r in rows} == {"standard", "batch", None}
        assert {r.context_window for r in rows} == {"0-200k", "200k-1M", None}
        assert {r.cost_type for r in rows} == {"tokens", "web_search", "code_execution"}
        assert all(r.model is None for r in rows if r.cost_type != "tokens")
        assert None in {r.workspace_id for r in rows}
        assert {r.currency for r in rows} == {"USD"}

    def test_usage_tokens_per_model_per_day(self, harness: Harness) -> None:
        """Token counters per (day, model), including both nested cache writes, equal the ground truth."""
        pages = harness.usage_pages(START, END, limit=31)
        got: dict[tuple[date, str | None], dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
        for page in pages:
            for bucket in page.buckets:
                for row in bucket.rows:
                    for name in COUNTERS:
                        got[(bucket.day, row.model)][name] += getattr(row, name)
        truth = Truth(harness.sim, START, END)
        want = {key: truth.tokens(*key) for key in truth.rows if key[1] is not None}
        assert dict(got) == want
        total = truth.tokens()
        assert total["cache_creation_5m_input_tokens"] > 0 and total["cache_creation_1h_input_tokens"] > 0
        rows = [r for p in pages for b in p.buckets for r in b.rows]
        assert None in {r.api_key_id for r in rows} and None in {r.workspace_id for r in rows}

    def test_unknown_fields_and_types_kept(self, harness: Harness) -> None:
        """New fields, cost types, token types and nested counters are kept, and totals are unaffected."""
        harness.sim.add_fault("novel-fields:rate=1")
        window = (date(2026, 3, 1), date(2026, 3, 8))
        cost_rows = [r for p in harness.cost_pages(*window) for b in p.buckets for r in b.rows]
        novel = [r for r in cost_rows if r.cost_type == "session_usage_v2"]
        assert novel and novel[0].token_type == "brand_new_token_type" and novel[0].service_tier == "flex"
        assert novel[0].extra == {"billing_unit": "session-hour"}
        usage_rows = [r for p in harness.usage_pages(*window) for b in p.buckets for r in b.rows]
        assert usage_rows
        for row in usage_rows:
            assert row.extra["cache_creation.ephemeral_30m_input_tokens"] == 7
            assert row.extra["server_tool_use.code_execution_requests"] == 2
            assert row.extra["brand_new_field"] == {"nested": [1, 2]}
        truth = Truth(harness.sim, *window)
        for day in truth.days:
            got = sum(r.cache_creation_5m_input_tokens for r in usage_rows if r.day == day)
            assert got == truth.tokens(day)["cache_creation_5m_input_tokens"]
        assert truth.tokens()["cache_creation_5m_input_tokens"] > 0


class TestPaging:
    def test_several_pages_with_empty_days(self, harness: Harness) -> None:
        """Small pages follow opaque cursors; every day arrives once, in order, empty days included."""
        pages = harness.cost_pages(START, END, limit=7)
        assert len(pages) == 15  # ceil(99 / 7)
        truth = Truth(harness.sim, START, END)
        assert days_of(pages) == truth.days
        empty = [b.day for p in pages for b in p.buckets if not b.rows]
        assert empty == truth.empty_days and len(empty) >= 5
        requests = report_requests(harness.sim, COST_PATH)
        assert [r.param("page") is None for r in requests] == [True] + [False] * 14
        cursors = [r.param("page") for r in requests[1:]]
        assert len(set(cursors)) == 14
        assert all(p.limit == 7 and p.request_id for p in pages)
        assert [p.request_id for p in pages] == [r.request_id for r in requests]

    def test_window_ending_in_the_future(self, harness: Harness) -> None:
        """Days from today on may be absent without an error; earlier ones may not."""
        for day in ("2026-03-10", "2026-03-12"):
            harness.sim.add_fault(f"missing-day:day={day},rate=1")
        pages = harness.cost_pages(date(2026, 3, 1), date(2026, 3, 14))
        assert date(2026, 3, 9) in days_of(pages)

    def test_empty_window_makes_no_request(self, harness: Harness) -> None:
        """start == end is nothing to fetch."""
        assert harness.cost_pages(START, START) == []
        assert harness.sim.requests == []

    def test_stopping_early_is_fine(self, harness: Harness) -> None:
        """A consumer may stop after one page; no more requests are made."""

        async def body(api: AdminApiClient) -> int:
            async for page in api.usage_pages(START, END, limit=5):
                return len(page.buckets)
            return 0

        assert harness.run(body) == 5
        assert len(harness.sim.requests) == 1


class TestBrokenPagination:
    @pytest.mark.parametrize("fault", ["no-next-page", "empty-next-page", "repeat-next-page"])
    def test_broken_cursor_chain(self, harness: Harness, fault: str) -> None:
        """has_more without a cursor, an empty cursor, or a cursor seen before is a violation, not the end."""
        harness.sim.add_fault(f"{fault}:rate=1")
        pages: list[Any] = []

        async def body(api: AdminApiClient) -> None:
            async for page in api.cost_pages(START, END, limit=10):
                pages.append(page)

        with pytest.raises(ProtocolViolation) as caught:
            harness.run(body)
        assert "cursor" in str(caught.value) or "next_page" in str(caught.value)
        assert caught.value.request_id is not None
        assert len(harness.sim.requests) <= 3

    def test_missing_day(self, harness: Harness) -> None:
        """A past day the API never sent is detected and named when it says it is done."""
        for day in ("2026-01-15", "2026-02-03"):
            harness.sim.add_fault(f"missing-day:day={day},rate=1")
        with pytest.raises(ProtocolViolation) as caught:
            harness.cost_pages(START, END)
        assert "2026-01-15" in str(caught.value) and "2026-02-03" in str(caught.value)

    def test_day_twice(self, harness: Harness) -> None:
        """The same day twice in one window is a violation."""
        harness.sim.add_fault("duplicate-day:day=2026-03-05,rate=1")
        with pytest.raises(ProtocolViolation, match="twice"):
            harness.usage_pages(date(2026, 3, 1), date(2026, 3, 10), limit=20)

    @pytest.mark.parametrize("amount", ["NaN", None, True, "12,50", "Infinity", {"v": 1}])
    def test_malformed_amount(self, harness: Harness, amount: object) -> None:
        """A malformed amount stops the window with a violation naming the request-id."""
        harness.sim.add_fault("bad-amount", amount=amount, rate=1)
        with pytest.raises(ProtocolViolation) as caught:
            harness.cost_pages(START, END)
        first = harness.request_id(1)
        assert caught.value.request_id == first and first in str(caught.value)

    @pytest.mark.parametrize(
        ("data", "match"),
        [
            (["2026-03-03", "2026-03-02"], "ascending"),
            (["2026-02-28"], "outside"),
            (["2026-03-02", "2026-03-09"], "outside"),
        ],
    )
    def test_buckets_out_of_order_or_window(self, data: list[str], match: str) -> None:
        """Buckets must be ascending and inside [start, end)."""
        body = {"data": [{"starting_at": f"{d}T00:00:00Z", "results": []} for d in data], "has_more": False,
                "next_page": None}  # fmt: skip
        with pytest.raises(ProtocolViolation, match=match):
            _raw_pages(body, date(2026, 3, 2), date(2026, 3, 5))

    @pytest.mark.parametrize(
        "body", [{"data": "x", "has_more": False}, {"has_more": False}, {"data": [], "has_more": "no"}, [1, 2]]
    )
    def test_malformed_envelope(self, body: Any) -> None:
        """A body without a data list or a boolean has_more is a violation."""
        with pytest.raises(ProtocolViolation):
            _raw_pages(body, date(2026, 3, 2), date(2026, 3, 5))

    def test_endless_empty_pages(self) -> None:
        """has_more forever with fresh cursors and no buckets does not loop forever."""
        counter = iter(range(10**6))

        def respond(_: Any) -> dict[str, Any]:
            return {"data": [], "has_more": True, "next_page": f"c{next(counter)}"}

        with pytest.raises(ProtocolViolation, match="without a bucket"):
            _raw_pages(respond, date(2026, 3, 2), date(2026, 3, 5))


class TestResponseTooLarge:
    def test_shrinks_limit_until_it_fits(self, make_harness: Callable[..., Harness]) -> None:
        """A too-large 400 halves the limit and re-requests; the totals are still exactly the truth."""
        data = make_harness().sim.data
        results = [len(data.day(0, START + timedelta(days=i)).cost) for i in range((END - START).days)]
        cap = max(sum(results[i:i + 3]) for i in range(0, len(results), 3))  # every 3-day page fits...
        assert sum(results[:7]) > cap  # ... the first 7-day page does not
        harness = make_harness(max_results=cap)
        pages = harness.cost_pages(START, END, limit=31)
        limits = [int(r.param("limit") or 0) for r in report_requests(harness.sim)]
        assert limits[:4] == [31, 15, 7, 3] and set(limits[4:]) == {3}
        assert [r.status for r in harness.sim.requests[:4]] == [400, 400, 400, 200]
        truth = Truth(harness.sim, START, END)
        assert days_of(pages) == truth.days
        assert {k: v for k, v in cost_by_day_model(pages).items() if v} == truth.by_day_model()
        assert not harness.clock.sleeps  # not a retry: nothing to wait for

    def test_restart_mid_window_from_first_unyielded_day(self, harness: Harness) -> None:
        """When page 3 is too large, the next request starts at the first day not yet yielded, without a cursor."""
        harness.sim.add_fault("400", after=2, message=TOO_LARGE_MESSAGE)
        pages = harness.usage_pages(START, END, limit=7)
        requests = report_requests(harness.sim, USAGE_PATH)
        assert requests[2].status == 400
        restart = requests[3]
        assert restart.param("page") is None
        assert restart.param("starting_at") == f"{START + timedelta(days=14)}T00:00:00Z"
        assert restart.param("ending_at") == f"{END}T00:00:00Z"
        assert restart.param("limit") == "3"
        truth = Truth(harness.sim, START, END)
        assert days_of(pages) == truth.days
        assert sum(r.output_tokens for p in pages for b in p.buckets for r in b.rows) == truth.tokens()["output_tokens"]

    def test_results_cap(self, make_harness: Callable[..., Harness]) -> None:
        """A per-response result cap (dense days) is also handled by shrinking."""
        harness = make_harness(max_results=350)
        pages = harness.cost_pages(START, END)
        truth = Truth(harness.sim, START, END)
        assert days_of(pages) == truth.days
        assert sum(cost_by_day_model(pages).values()) == truth.cost()
        assert min(p.limit for p in pages) < 31
        assert all(sum(len(b.rows) for b in p.buckets) <= 350 for p in pages)

    def test_gives_up_at_limit_one(self, make_harness: Callable[..., Harness]) -> None:
        """Too large even with one day per page raises ResponseTooLarge."""
        harness = make_harness(max_results=1)
        assert len(harness.sim.data.day(0, START).cost) > 1
        with pytest.raises(ResponseTooLarge) as caught:
            harness.cost_pages(START, END)
        limits = [r.param("limit") for r in report_requests(harness.sim)]
        assert limits == ["31", "15", "7", "3", "1"]
        assert caught.value.status == 400 and caught.value.request_id == harness.request_id(5)


class TestStrategyObjects:
    def test_paginator_sends_cursor_verbatim(self) -> None:
        """The cursor is opaque: sent back byte for byte, other params untouched."""
        p = CursorPaginator()
        base: list[tuple[str, str | int]] = [("limit", 7), ("starting_at", "x")]
        assert p.update_request(base) == base
        p.update_state({"has_more": True, "next_page": "2026-03-02T00:00:00Z?weird=1"})
        assert p.update_request(base) == [*base, ("page", "2026-03-02T00:00:00Z?weird=1")]
        p.update_state({"has_more": False, "next_page": "ignored"})
        assert not p.has_next_page

    def test_coverage_resume_day(self) -> None:
        """The restart point is the day after the last delivered day."""
        c = DayCoverage(date(2026, 3, 1), date(2026, 3, 10), today=date(2026, 3, 10))
        assert c.resume_day == date(2026, 3, 1)
        c.accept([date(2026, 3, 1), date(2026, 3, 2)])
        assert c.resume_day == date(2026, 3, 3)
        assert c.missing()[0] == date(2026, 3, 3)


def _raw_pages(body: Any, start: date, end: date) -> list[Any]:
    """Run cost_pages against a single hand-written response (or a function of the request)."""
    async def main() -> list[Any]:
        clock = FakeClock()
        async with AdminApiClient(AdminKey("sk-ant-admin01-x"), base_url="https://h.test", gate=CountingGate(clock),
                                  clock=clock) as api:  # fmt: skip
            return [p async for p in api.cost_pages(start, end)]

    with respx.mock() as router:
        route = router.get("https://h.test/v1/organizations/cost_report")
        if callable(body):
            route.side_effect = lambda request: _json_response(body(request))
        else:
            route.side_effect = lambda request: _json_response(body)
        return asyncio.run(main())


def _json_response(body: Any) -> httpx.Response:
    return httpx.Response(200, json=body, headers={"request-id": "req_raw"})
