"""Report shapes, pagination and numbers against the simulator's ground truth."""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest

from worker.simulator import SimulatorHandle
from worker.simulator.prices import MODELS, TOKEN_TYPES, unit_price_dollars

from .helpers import (
    COST,
    ME,
    TODAY,
    USAGE,
    buckets,
    cents,
    client,
    day_of,
    days,
    fetch_pages,
    report_params,
    ts,
)

START = TODAY - timedelta(days=60)
END = TODAY + timedelta(days=5)  # past today: those buckets must be empty
COST_FIELDS = {
    "amount", "currency", "workspace_id", "description", "cost_type", "model", "service_tier",
    "context_window", "token_type", "inference_geo",
}
USAGE_DIMS = {  # `speed` only when grouped by it (fast-mode beta)
    "api_key_id", "workspace_id", "model", "service_tier", "context_window", "inference_geo",
    "account_id", "service_account_id",
}
USAGE_FIELDS = USAGE_DIMS | {
    "uncached_input_tokens", "cache_creation", "cache_read_input_tokens", "output_tokens",
    "server_tool_use",
}
TOKEN_FIELD = {
    "uncached_input_tokens": "uncached_input_tokens",
    "output_tokens": "output_tokens",
    "cache_read_input_tokens": "cache_read_input_tokens",
    "cache_creation.ephemeral_5m_input_tokens": "cache_creation_5m_input_tokens",
    "cache_creation.ephemeral_1h_input_tokens": "cache_creation_1h_input_tokens",
}


def usage_tokens(result: dict[str, object], token_type: str) -> int:
    """Tokens of one type from a usage result, reading the nested cache_creation object."""
    if token_type.startswith("cache_creation."):
        nested = result["cache_creation"]
        assert isinstance(nested, dict)
        value = nested[token_type.split(".", 1)[1]]
    else:
        value = result[token_type]
    assert isinstance(value, int)
    return value


class TestOrganization:
    def test_me(self, sim: SimulatorHandle) -> None:
        """/me answers the org's id, type and name."""
        with client(sim, 1) as c:
            r = c.get(ME)
        assert r.status_code == 200
        assert r.json() == {"id": sim.orgs[1].id, "type": "organization", "name": sim.orgs[1].name}
        assert r.headers["request-id"].startswith("req_")


class TestPagination:
    def test_window_covered_one_bucket_per_day(self, sim: SimulatorHandle) -> None:
        """Pages cover every day oldest first, including empty days and days after today."""
        with client(sim) as c:
            pages = fetch_pages(c, COST, report_params(START, END, 7, "workspace_id", "description"))
        all_buckets = buckets(pages)
        assert [day_of(b["starting_at"]) for b in all_buckets] == days(START, END)
        assert all(
            day_of(b["ending_at"]) == day_of(b["starting_at"]) + timedelta(days=1)
            for b in all_buckets
        )
        assert all(len(p["data"]) <= 7 for p in pages)
        assert len(pages) == -(-len(days(START, END)) // 7)
        assert all(p["has_more"] for p in pages[:-1]) and not pages[-1]["has_more"]
        after_today = [b for b in all_buckets if day_of(b["starting_at"]) > TODAY]
        assert after_today and all(b["results"] == [] for b in after_today)
        past_empty = [b for b in all_buckets if day_of(b["starting_at"]) <= TODAY and not b["results"]]
        assert past_empty, "the generator should leave some past days without usage"

    def test_cursors_are_opaque(self, sim: SimulatorHandle) -> None:
        """next_page is an opaque token, not a timestamp, and differs per page."""
        with client(sim) as c:
            pages = fetch_pages(c, USAGE, report_params(START, END, 10, "model"))
        cursors = [p["next_page"] for p in pages[:-1]]
        assert len(set(cursors)) == len(cursors)
        for cursor in cursors:
            assert cursor.startswith("page_") and re.fullmatch(r"[A-Za-z0-9_-]+", cursor)
            with pytest.raises(ValueError):
                datetime.fromisoformat(cursor)

    def test_starting_at_snaps_to_day(self, sim: SimulatorHandle) -> None:
        """A mid-day starting_at returns the bucket of that whole day."""
        with client(sim) as c:
            r = c.get(COST, params={"starting_at": "2026-03-01T13:45:00Z",
                                    "ending_at": "2026-03-03T00:00:00Z", "limit": 5})
        assert [b["starting_at"] for b in r.json()["data"]] == [ts(date(2026, 3, 1)), ts(date(2026, 3, 2))]

    @pytest.mark.parametrize(("width", "expected"), [("1d", 7), ("1h", 24), ("1m", 60)])
    def test_default_limits(self, sim: SimulatorHandle, width: str, expected: int) -> None:
        """Without limit a usage page holds the documented default number of buckets."""
        with client(sim) as c:
            r = c.get(USAGE, params={"starting_at": ts(START), "ending_at": ts(TODAY),
                                     "bucket_width": width})
        body = r.json()
        assert len(body["data"]) == expected and body["has_more"] is True

    def test_history_reaches_400_days(self, sim: SimulatorHandle) -> None:
        """Days more than 400 days back still have data."""
        old = TODAY - timedelta(days=420)
        truth = sim.data.truth(0, old, old + timedelta(days=14))
        assert truth
        with client(sim) as c:
            pages = fetch_pages(c, COST, report_params(old, old + timedelta(days=14), 14))
        total = sum(cents(r["amount"]) for b in buckets(pages) for r in b["results"])
        assert total == sum(t.cost_usd for t in truth)


class TestCostReport:
    def test_result_shape(self, sim: SimulatorHandle) -> None:
        """Grouped by description, rows carry the parsed fields; amounts are cents strings."""
        with client(sim) as c:
            r = c.get(COST, params=report_params(TODAY - timedelta(days=6), TODAY, 7,
                                                 "workspace_id", "description"))
        results = [row for b in r.json()["data"] for row in b["results"]]
        assert results
        for row in results:
            assert set(row) == COST_FIELDS
            assert row["currency"] == "USD"
            assert isinstance(row["amount"], str) and Decimal(row["amount"]) > 0
            if row["cost_type"] == "tokens":
                assert row["model"] in MODELS and row["token_type"] in TOKEN_TYPES
                assert row["service_tier"] in {"standard", "batch"}
                assert row["context_window"] in {"0-200k", "200k-1M"}
                assert row["description"].startswith(MODELS[row["model"]].display_name)
            else:
                assert row["cost_type"] in {"web_search", "code_execution"}
                assert row["model"] is row["token_type"] is row["service_tier"] is None
                assert row["context_window"] is None

    def test_fields_null_without_description(self, sim: SimulatorHandle) -> None:
        """Without group_by every dimension is null: one total row per day."""
        with client(sim) as c:
            r = c.get(COST, params=report_params(TODAY - timedelta(days=6), TODAY, 7))
        for b in r.json()["data"]:
            assert len(b["results"]) <= 1
            for row in b["results"]:
                assert {k for k, v in row.items() if v is not None} == {"amount", "currency"}

    @pytest.mark.parametrize(
        "group_by", [(), ("workspace_id",), ("description",), ("workspace_id", "description")]
    )
    def test_total_equals_truth(self, sim: SimulatorHandle, group_by: tuple[str, ...]) -> None:
        """The sum over all pages equals the ground truth exactly, however rows are grouped."""
        for org in range(3):
            with client(sim, org) as c:
                pages = fetch_pages(c, COST, report_params(START, END, 31, *group_by))
            total = sum(cents(r["amount"]) for b in buckets(pages) for r in b["results"])
            assert total == sim.data.truth_total(org, START, END)
            assert total > 0

    def test_per_day_and_model_equal_truth(self, sim: SimulatorHandle) -> None:
        """Grouped by description, each (day, model) sums to the truth; model None is tools."""
        with client(sim) as c:
            pages = fetch_pages(c, COST, report_params(START, END, 31, "description"))
        got: dict[tuple[date, str | None], Decimal] = defaultdict(Decimal)
        for b in buckets(pages):
            for row in b["results"]:
                got[(day_of(b["starting_at"]), row["model"])] += cents(row["amount"])
        want = {(t.date, t.model): t.cost_usd for t in sim.data.truth(0, START, END)}
        assert got == want

    def test_fractional_cents(self, sim: SimulatorHandle) -> None:
        """Amounts carry fractional cents."""
        with client(sim) as c:
            pages = fetch_pages(c, COST, report_params(START, TODAY, 31, "description"))
        amounts = [r["amount"] for b in buckets(pages) for r in b["results"]]
        assert any("." in a and len(a.split(".")[1]) > 2 for a in amounts)

    def test_variety(self, sim: SimulatorHandle) -> None:
        """Sixty days hold every model, token type, tier, window, tool cost and the default workspace."""
        with client(sim) as c:
            pages = fetch_pages(c, COST, report_params(START, TODAY, 31, "workspace_id", "description"))
        rows = [r for b in buckets(pages) for r in b["results"]]
        assert {r["model"] for r in rows} == set(MODELS) | {None}
        assert {r["token_type"] for r in rows} == set(TOKEN_TYPES) | {None}
        assert {r["service_tier"] for r in rows} == {"standard", "batch", None}
        assert {r["context_window"] for r in rows} == {"0-200k", "200k-1M", None}
        assert {r["cost_type"] for r in rows} == {"tokens", "web_search", "code_execution"}
        assert None in {r["workspace_id"] for r in rows}
        assert len({r["workspace_id"] for r in rows}) >= 3


class TestUsageReport:
    def test_result_shape(self, sim: SimulatorHandle) -> None:
        """Usage rows have nested cache_creation and server_tool_use; ungrouped dims are null."""
        with client(sim) as c:
            r = c.get(USAGE, params=report_params(TODAY - timedelta(days=6), TODAY, 7, "model"))
        results = [row for b in r.json()["data"] for row in b["results"]]
        assert results
        for row in results:
            assert set(row) == USAGE_FIELDS
            assert "cache_creation_input_tokens" not in row
            assert set(row["cache_creation"]) == {"ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"}
            assert set(row["server_tool_use"]) == {"web_search_requests"}
            assert row["model"] in MODELS
            assert all(row[d] is None for d in USAGE_DIMS - {"model"})

    def test_tokens_equal_truth(self, sim: SimulatorHandle) -> None:
        """Tokens per (day, model), every type, equal the ground truth."""
        for org in range(3):
            with client(sim, org) as c:
                pages = fetch_pages(c, USAGE, report_params(START, END, 31, "model"))
            got: dict[tuple[date, str | None], dict[str, int]] = {}
            for b in buckets(pages):
                for row in b["results"]:
                    got[(day_of(b["starting_at"]), row["model"])] = {
                        TOKEN_FIELD[tt]: usage_tokens(row, tt) for tt in TOKEN_TYPES
                    } | {"web_search_requests": row["server_tool_use"]["web_search_requests"]}
            want = {
                (t.date, t.model): {k: getattr(t, k) for k in [*TOKEN_FIELD.values(), "web_search_requests"]}
                for t in sim.data.truth(org, START, END) if t.model is not None
            }
            assert got == want

    def test_hours_sum_to_days(self, sim: SimulatorHandle) -> None:
        """Hourly buckets of a day add up to its daily bucket."""
        d = TODAY - timedelta(days=2)
        with client(sim) as c:
            hourly = fetch_pages(c, USAGE, {"starting_at": ts(d), "ending_at": ts(d + timedelta(days=1)),
                                            "bucket_width": "1h", "limit": 168})
            daily = c.get(USAGE, params=report_params(d, d + timedelta(days=1), 1)).json()
        hours = buckets(hourly)
        assert len(hours) == 24 and hours[1]["starting_at"] == f"{d.isoformat()}T01:00:00Z"
        total = sum(r["output_tokens"] for b in hours for r in b["results"])
        assert total == daily["data"][0]["results"][0]["output_tokens"] > 0

    def test_grouping_keeps_totals(self, sim: SimulatorHandle) -> None:
        """Five dimensions or none, the same tokens are counted."""
        params = report_params(START, TODAY, 31)
        dims = ("api_key_id", "workspace_id", "model", "service_tier", "context_window")
        with client(sim) as c:
            plain = buckets(fetch_pages(c, USAGE, params))
            grouped = buckets(fetch_pages(c, USAGE, {**params, "group_by[]": list(dims)}))
        assert sum(r["uncached_input_tokens"] for b in plain for r in b["results"]) == sum(
            r["uncached_input_tokens"] for b in grouped for r in b["results"]
        )
        rows = [r for b in grouped for r in b["results"]]
        assert None in {r["api_key_id"] for r in rows}, "Console usage has no api key"
        assert len({tuple(r[d] for d in dims) for r in grouped[-2]["results"]}) == len(grouped[-2]["results"])

    def test_filters(self, sim: SimulatorHandle) -> None:
        """models[] and service_tiers[] filters keep only matching usage."""
        params = report_params(START, TODAY, 31, "model", "service_tier",
                               **{"models[]": ["claude-haiku-4-5"], "service_tiers[]": ["batch"]})
        with client(sim) as c:
            rows = [r for b in buckets(fetch_pages(c, USAGE, params)) for r in b["results"]]
        assert rows
        assert {(r["model"], r["service_tier"]) for r in rows} == {("claude-haiku-4-5", "batch")}


class TestConsistency:
    def test_tokens_times_prices_equal_cost(self, sim: SimulatorHandle) -> None:
        """Usage tokens x the price table, less the organization's discount, give each cost row's amount,
        per day and workspace; Priority Tier usage has no cost row (the legacy cost report leaves it out)."""
        discount = (100 - Decimal(sim.orgs[2].discount_pct)) / 100
        params = report_params(START, TODAY, 31)
        with client(sim, 2) as c:
            cost = buckets(fetch_pages(c, COST, {**params, "group_by[]": ["workspace_id", "description"]}))
            usage = buckets(fetch_pages(c, USAGE, {
                **params, "group_by[]": ["workspace_id", "model", "service_tier", "context_window"]
            }))
        expected: dict[tuple[str, str | None, str, str, str, str], Decimal] = defaultdict(Decimal)
        for b in usage:
            for r in b["results"]:
                if r["service_tier"] == "priority":
                    continue
                for tt in TOKEN_TYPES:
                    n = usage_tokens(r, tt)
                    if n:
                        key = (b["starting_at"], r["workspace_id"], r["model"], r["service_tier"],
                               r["context_window"], tt)
                        expected[key] += n * unit_price_dollars(r["model"], r["service_tier"],
                                                                 r["context_window"], tt) * discount
        got = {
            (b["starting_at"], r["workspace_id"], r["model"], r["service_tier"],
             r["context_window"], r["token_type"]): cents(r["amount"])
            for b in cost for r in b["results"] if r["cost_type"] == "tokens"
        }
        assert got == dict(expected)
        searches = sum(r["server_tool_use"]["web_search_requests"] for b in usage for r in b["results"])
        search_cost = sum(cents(r["amount"]) for b in cost for r in b["results"]
                          if r["cost_type"] == "web_search")
        assert search_cost == searches * Decimal("0.01") > 0
