"""The Usage and Cost Analytics API of the simulator, driven by outside clients, against its ground truth.

The official SDK (`anthropic`, which sends `Authorization: Bearer` and arrays as `name[]=`) and plain
httpx read every page; their totals must equal `/_sim/truth`, computed from the usage records and
not from the rendered rows. The cookbook-style legacy client (httpx, `group_by[]`, `page`) gets the
same check, and the legacy endpoints' documented behaviour (filters, `group_by[]`, `ending_at`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest
from anthropic.types.beta.organization.analytics.beta_analytics_cost_group_by import BetaAnalyticsCostGroupBy
from anthropic.types.beta.organization.analytics.beta_analytics_usage_group_by import (
    BetaAnalyticsUsageGroupBy,
)

from worker.simulator import SimulatorHandle, running_simulator

from .helpers import COST, TODAY, USAGE, VERSION, cents, ts

A_COST = "/v1/organizations/analytics/cost"
A_USAGE = "/v1/organizations/analytics/usage"
BETA = "analytics-usage-cost-2026-08-24"
SINCE = date(2026, 2, 1)
UNTIL = date(2026, 3, 10)  # inclusive: today
COST_GROUP_BY: list[BetaAnalyticsCostGroupBy] = ["model", "workspace_id", "api_key_id", "actor", "service_tier",
                                                 "cost_type", "token_type"]
USAGE_GROUP_BY: list[BetaAnalyticsUsageGroupBy] = ["model", "workspace_id", "api_key_id", "actor", "service_tier"]


@pytest.fixture(scope="module")
def asim() -> Iterator[SimulatorHandle]:
    """Three organizations; org 2 has HIPAA readiness."""
    with running_simulator(orgs=3, seed=7, today=TODAY, requests_per_minute=0, hipaa_orgs=(2,)) as handle:
        yield handle


def sdk(sim: SimulatorHandle, org: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=sim.keys[org], base_url=sim.base_url, max_retries=0)


def truth(sim: SimulatorHandle, org: int, since: date, until: date, **params: str) -> dict[str, Any]:
    """`/_sim/truth` for `since`..`until` inclusive."""
    r = httpx.get(sim.base_url + "/_sim/truth", params={
        "org": org, "since": since.isoformat(), "until": (until + timedelta(days=1)).isoformat(), **params})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def windows(since: date, until: date) -> Iterator[tuple[datetime, datetime]]:
    """[since, until] in 31-day request windows (the API's maximum range)."""
    start = since
    while start <= until:
        end = min(start + timedelta(days=31), until + timedelta(days=1))
        yield (datetime.combine(start, datetime.min.time(), UTC), datetime.combine(end, datetime.min.time(), UTC))
        start = end


def raw(sim: SimulatorHandle, path: str, params: dict[str, Any], *, org: int = 0, beta: bool = True) -> httpx.Response:
    headers = {"x-api-key": sim.keys[org], "anthropic-version": VERSION}
    if beta:
        headers["anthropic-beta"] = BETA
    return httpx.get(sim.base_url + path, params=params, headers=headers, timeout=30)


def day_params(start: date, end: date, **extra: Any) -> dict[str, Any]:
    return {"starting_at": ts(start), "ending_at": ts(end), "time_bucket_width": "1d", **extra}


class TestOfficialSdk:
    @pytest.mark.slow  # every page of the window through the official SDK over HTTP
    def test_cost_every_page_equals_truth_per_key(self, asim: SimulatorHandle) -> None:
        """cost.list over every page: amount and list_amount per (day, model, api key) equal the truth exactly."""
        got: dict[tuple[str, str | None, str | None], list[Decimal]] = defaultdict(lambda: [Decimal(0)] * 2)
        with sdk(asim) as client:
            for lo, hi in windows(SINCE, UNTIL):
                for row in client.beta.organization.analytics.cost.list(
                        starting_at=lo, ending_at=hi, time_bucket_width="1d", group_by=COST_GROUP_BY, limit=100):
                    cell = got[(row.starting_at.date().isoformat(), row.group.model, row.group.api_key_id)]
                    cell[0] += Decimal(row.cost.amount) / 100
                    cell[1] += Decimal(row.cost.list_amount) / 100
        want = {(r["date"], r["model"], r["key"]): [Decimal(r["cost_usd"]), Decimal(r["list_cost_usd"])]
                for r in truth(asim, 0, SINCE, UNTIL, source="analytics", by="api_key")["rows"]}
        assert dict(got) == want
        assert sum(v[1] for v in want.values()) > sum(v[0] for v in want.values()) > 0  # a negotiated discount

    def test_usage_every_page_equals_truth_per_actor(self, asim: SimulatorHandle) -> None:
        """usage.list (default ranking, 7 rows a page) gives each actor's tokens as the truth has them."""
        got: dict[tuple[str, str | None, str | None], list[int]] = defaultdict(lambda: [0] * 4)
        emails: dict[str, str | None] = {}
        pages = 0
        with sdk(asim, 1) as client:
            for lo, hi in windows(SINCE, UNTIL):
                listing = client.beta.organization.analytics.usage.list(
                    starting_at=lo, ending_at=hi, time_bucket_width="1d", group_by=USAGE_GROUP_BY, limit=200)
                for page in listing.iter_pages():
                    pages += 1
                    assert len(page.data) <= 200 and page.data_refreshed_at is not None
                    for row in page.data:
                        actor = row.group.actor
                        key = None
                        if actor is not None:
                            key = getattr(actor, "user_id", None) or getattr(actor, "service_account_id", None) \
                                or getattr(actor, "api_key_id", None)
                            if actor.type == "user_actor":
                                emails[actor.user_id] = actor.email_address
                        u = row.usage
                        cell = got[(row.starting_at.date().isoformat(), row.group.model, key)]
                        cell[0] += u.uncached_input_tokens
                        cell[1] += u.output_tokens
                        cell[2] += u.cache_read_input_tokens
                        cell[3] += u.cache_creation.ephemeral_5m_input_tokens + u.cache_creation.ephemeral_1h_input_tokens
        rows = truth(asim, 1, SINCE, UNTIL, source="analytics", by="actor")["rows"]
        want = {(r["date"], r["model"], r["key"]): [r["input_tokens"], r["output_tokens"], r["cache_read_tokens"],
                                                    r["cache_write_tokens"]]
                for r in rows if r["model"] is not None}
        assert dict(got) == want
        assert pages > 2
        named = {r["key"]: r["name"] for r in rows if r["key"] in emails}
        assert named and all(emails[k] == v and "@" in v for k, v in named.items())

    def test_sdk_totals_equal_truth_and_priority_tier_is_there(self, asim: SimulatorHandle) -> None:
        """Whole-range rows (no time bucket): the total equals the truth; Priority Tier cost is billed here."""
        with sdk(asim) as client:
            rows = list(client.beta.organization.analytics.cost.list(
                starting_at=datetime(2026, 2, 1, tzinfo=UTC), ending_at=datetime(2026, 3, 1, tzinfo=UTC),
                group_by=["service_tier"], limit=1000))
        body = truth(asim, 0, date(2026, 2, 1), date(2026, 2, 28), source="analytics")
        assert sum(Decimal(r.cost.amount) for r in rows) / 100 == Decimal(body["analytics_total_cost_usd"])
        priority = [r for r in rows if r.group.service_tier == "priority"]
        assert priority and Decimal(priority[0].cost.amount) / 100 == Decimal(body["priority_cost_usd"]) > 0
        assert all(r.starting_at == datetime(2026, 2, 1, tzinfo=UTC) for r in rows)

    def test_names_from_api_keys_and_workspaces(self, asim: SimulatorHandle) -> None:
        """api_keys.list and workspaces.list (default included) name every key and workspace of the org."""
        org = asim.orgs[0]
        with sdk(asim) as client:
            keys = list(client.beta.organization.api_keys.list(limit=2))
            spaces = list(client.beta.organization.workspaces.list(include_default=True, limit=2))
        assert {k.id: k.name for k in keys} == {k.id: k.name for k in org.api_keys}
        assert {w.id: w.name for w in spaces} == {w.tagged_id: w.name for w in org.workspaces}
        assert all(k.scope.type == "workspace" for k in keys)

    def test_hipaa_org_is_refused(self, asim: SimulatorHandle) -> None:
        """An organization with HIPAA readiness gets a 400 from both endpoints."""
        with sdk(asim, 2) as client, pytest.raises(anthropic.BadRequestError, match="HIPAA"):
            list(client.beta.organization.analytics.usage.list(starting_at="2026-03-01T00:00:00Z"))
        assert raw(asim, A_COST, {"starting_at": ts(date(2026, 3, 1))}, org=2).status_code == 400
        assert raw(asim, COST, {"starting_at": ts(date(2026, 3, 1)), "ending_at": ts(TODAY)}, org=2).status_code == 200


class TestRules:
    @pytest.mark.parametrize(("params", "fragment"), [
        ({"starting_at": "2025-12-31T00:00:00Z"}, "2026-01-01"),
        ({"starting_at": "2026-01-01T00:00:00Z", "ending_at": "2026-02-02T00:00:00Z"}, "31 days"),
        ({"starting_at": "2026-02-01T00:00:00Z", "time_bucket_width": "1d"}, "ending_at"),
        ({"starting_at": "2026-02-01T00:00:00Z", "limit": 1001}, "between 1 and 1000"),
        ({"starting_at": "2026-02-01T00:00:00Z", "group_by[]": ["model", "workspace_id", "api_key_id", "actor",
                                                                "service_tier", "product"]}, "at most 5"),
        ({"starting_at": "2026-02-01T00:00:00Z", "group_by[]": "description"}, "group_by[]"),
        ({"starting_at": "2026-02-01T00:00:00Z", "service_tiers[]": "gold"}, "service_tiers[]"),
        ({"starting_at": "2026-02-01T00:00:00Z", "exclude_deleted_users": "true"}, "actor"),
        ({"starting_at": "2026-02-01T00:00:00Z", "group_by": "model"}, "brackets"),
        ({"starting_at": "2026-02-01T00:00:00Z", "page": "page_notacursor"}, "cursor"),
    ])
    def test_bad_requests(self, asim: SimulatorHandle, params: dict[str, Any], fragment: str) -> None:
        """Each documented limit is a 400 invalid_request_error naming the parameter."""
        r = raw(asim, A_COST, params)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error" and fragment in r.json()["error"]["message"]

    def test_beta_header_required_and_bearer_accepted(self, asim: SimulatorHandle) -> None:
        """Without the beta header: 400; with `Authorization: Bearer` instead of x-api-key: 200."""
        assert raw(asim, A_USAGE, {"starting_at": ts(date(2026, 3, 1))}, beta=False).status_code == 400
        r = httpx.get(asim.base_url + A_USAGE, params={"starting_at": ts(date(2026, 3, 1))},
                      headers={"authorization": f"Bearer {asim.keys[0]}", "anthropic-version": VERSION,
                               "anthropic-beta": BETA})
        assert r.status_code == 200 and r.json()["data"]

    def test_fan_out_rows_follow_the_docstring(self, asim: SimulatorHandle) -> None:
        """token_type alone: token rows only; with cost_type too: plus web search and code execution;
        the fan-out does not count toward limit and requests is null then."""
        base = day_params(date(2026, 2, 1), date(2026, 3, 1), limit=1000)
        only = raw(asim, A_COST, {**base, "group_by[]": ["model", "token_type"]}).json()["data"]
        both = raw(asim, A_COST, {**base, "group_by[]": ["model", "cost_type", "token_type"]}).json()["data"]
        total = raw(asim, A_COST, {**base, "group_by[]": ["model"]}).json()["data"]
        assert {r["group"]["cost_type"] for r in only} == {"tokens"}
        assert {r["group"]["cost_type"] for r in both} == {"tokens", "web_search", "code_execution"}
        assert all(r["cost"]["requests"] is None for r in only + both)
        assert all(isinstance(r["cost"]["requests"], int) for r in total)

        def amount(rows: list[dict[str, Any]]) -> Decimal:
            return sum((cents(r["cost"]["amount"]) for r in rows), Decimal(0))
        assert amount(both) == amount(total) > amount(only)
        page = raw(asim, A_COST, {**base, "limit": 3, "group_by[]": ["model", "cost_type", "token_type"]}).json()
        base_rows = {(r["starting_at"], r["group"]["model"]) for r in page["data"]}
        assert len(base_rows) == 3 < len(page["data"]) and page["has_more"]

    def test_time_order_ascending_pages_do_not_split_rows(self, asim: SimulatorHandle) -> None:
        """order_by=time&order=asc: rows come day by day, oldest first, across pages of `limit` rows."""
        params = day_params(date(2026, 2, 1), date(2026, 3, 1), limit=40, order_by="time", order="asc",
                            **{"group_by[]": COST_GROUP_BY})
        seen: list[str] = []
        fanned: set[tuple[Any, ...]] = set()
        pages = 0
        while True:
            body = raw(asim, A_COST, params).json()
            pages += 1
            keys = set()
            for r in body["data"]:
                seen.append(r["starting_at"])
                g = r["group"]
                keys.add((r["starting_at"], g["model"], g["workspace_id"], g["api_key_id"], str(g["actor"]),
                          g["service_tier"]))
            assert len(keys) <= 40 and not keys & fanned  # a row's fan-out never continues on the next page
            fanned |= keys
            if not body["has_more"]:
                break
            params["page"] = body["next_page"]
        assert seen == sorted(seen) and pages > 2

    def test_data_refreshed_at_bounds_what_is_served(self, asim: SimulatorHandle) -> None:
        """Usage after data_refreshed_at is not served yet: today's analytics cost is below the legacy one."""
        body = raw(asim, A_COST, day_params(TODAY, TODAY + timedelta(days=1), limit=1000)).json()
        refreshed = datetime.fromisoformat(body["data_refreshed_at"])
        assert refreshed.date() == TODAY and refreshed < datetime.combine(TODAY, datetime.max.time(), UTC)
        t = truth(asim, 0, TODAY, TODAY)
        analytics = sum((cents(r["cost"]["amount"]) for r in body["data"]), Decimal(0))
        assert analytics == Decimal(t["analytics_total_cost_usd"])
        assert analytics - Decimal(t["priority_cost_usd"]) < Decimal(t["total_cost_usd"])

    def test_expired_cursor_answers_410(self, asim: SimulatorHandle) -> None:
        """The `410` fault: a request following a cursor is told the cursor expired."""
        params = day_params(date(2026, 2, 1), date(2026, 3, 1), limit=5)
        first = raw(asim, A_USAGE, params).json()
        asim.add_fault("410:count=1")
        try:
            assert raw(asim, A_USAGE, {**params, "page": first["next_page"]}).status_code == 410
            assert raw(asim, A_USAGE, {**params, "page": first["next_page"]}).status_code == 200
        finally:
            asim.clear_faults()

    def test_filters_and_deleted_users(self, asim: SimulatorHandle) -> None:
        """service_tiers[], products[], actor_types[] select rows; exclude_deleted_users drops former members."""
        base = day_params(date(2026, 2, 1), date(2026, 3, 1), limit=1000)
        prio = raw(asim, A_USAGE, {**base, "service_tiers[]": "priority", "group_by[]": ["service_tier"]}).json()
        assert {r["group"]["service_tier"] for r in prio["data"]} == {"priority"}
        code = raw(asim, A_USAGE, {**base, "products[]": "claude_code", "group_by[]": ["actor", "product"]}).json()
        assert code["data"] and all(r["group"]["actor"]["type"] == "user_actor" for r in code["data"])
        every = raw(asim, A_USAGE, {**base, "group_by[]": ["actor"], "actor_types[]": "user_actor"}).json()["data"]
        kept = raw(asim, A_USAGE, {**base, "group_by[]": ["actor"], "actor_types[]": "user_actor",
                                            "exclude_deleted_users": "true"}).json()["data"]
        assert any(r["group"]["actor"]["deleted"] for r in every)
        assert not any(r["group"]["actor"]["deleted"] for r in kept) and len(kept) < len(every)


class TestCookbookLegacyClient:
    """The legacy endpoints read the way the cookbook notebook reads them: httpx, `group_by[]`, `page`."""

    @staticmethod
    def fetch(sim: SimulatorHandle, path: str, start: date, end: date, group_by: list[str]) -> list[dict[str, Any]]:
        headers = {"x-api-key": sim.keys[0], "anthropic-version": VERSION}
        params: dict[str, Any] = {"starting_at": ts(start), "ending_at": ts(end), "group_by[]": group_by,
                                  "bucket_width": "1d", "limit": 31}
        out: list[dict[str, Any]] = []
        with httpx.Client(base_url=sim.base_url, headers=headers, timeout=30) as client:
            while True:
                body = client.get(path, params=params).json()
                out.extend(body["data"])
                if not body["has_more"]:
                    return out
                params["page"] = body["next_page"]

    def test_totals_equal_truth(self, asim: SimulatorHandle) -> None:
        """Cost (cents -> dollars) and tokens (nested cache writes) per day and model equal the legacy truth."""
        start, end = TODAY - timedelta(days=90), TODAY + timedelta(days=1)
        cost = self.fetch(asim, COST, start, end, ["workspace_id", "description"])
        usage = self.fetch(asim, USAGE, start, end, ["model", "workspace_id", "api_key_id", "service_tier",
                                                      "context_window", "account_id"])  # six: no cap
        got: dict[tuple[str, str | None], list[Any]] = defaultdict(lambda: [Decimal(0), 0, 0, 0, 0])
        for b in cost:
            for r in b["results"]:
                got[(b["starting_at"][:10], r["model"])][0] += cents(r["amount"])
        for b in usage:
            for r in b["results"]:
                cell = got[(b["starting_at"][:10], r["model"])]
                cell[1] += r["uncached_input_tokens"]
                cell[2] += r["output_tokens"]
                cell[3] += r["cache_read_input_tokens"]
                cell[4] += sum(r["cache_creation"].values())
        rows = truth(asim, 0, start, TODAY)["rows"]
        want = {(r["date"], r["model"]): [Decimal(r["cost_usd"]), r["uncached_input_tokens"], r["output_tokens"],
                                          r["cache_read_input_tokens"],
                                          r["cache_creation_5m_input_tokens"] + r["cache_creation_1h_input_tokens"]]
                for r in rows}
        assert dict(got) == want


class TestLegacyFidelity:
    def test_documented_filters_are_accepted(self, asim: SimulatorHandle) -> None:
        """account_ids[], service_account_ids[] and speeds[] filter the usage report (they were refused)."""
        org = asim.orgs[0]
        user = org.users[0].id
        base: dict[str, Any] = {"starting_at": ts(date(2026, 2, 1)), "ending_at": ts(date(2026, 3, 1)), "limit": 31}
        r = raw(asim, USAGE, {**base, "account_ids[]": user, "group_by[]": ["account_id"]}, beta=False)
        assert r.status_code == 200
        assert {x["account_id"] for b in r.json()["data"] for x in b["results"]} == {user}
        sa = next(k.service_account_id for k in org.api_keys if k.service_account_id)
        r = raw(asim, USAGE, {**base, "service_account_ids[]": sa, "group_by[]": ["service_account_id"]},
                beta=False)
        assert {x["service_account_id"] for b in r.json()["data"] for x in b["results"]} == {sa}
        assert raw(asim, USAGE, {**base, "speeds[]": "standard"}, beta=False).status_code == 200

    def test_speed_grouping_needs_the_fast_mode_beta(self, asim: SimulatorHandle) -> None:
        """group_by[]=speed: 400 without `fast-mode-2026-02-01`, a speed field with it, none otherwise."""
        base: dict[str, Any] = {"starting_at": ts(date(2026, 2, 1)), "ending_at": ts(date(2026, 2, 8)), "limit": 7}
        headers = {"x-api-key": asim.keys[0], "anthropic-version": VERSION}
        assert httpx.get(asim.base_url + USAGE, params={**base, "group_by[]": "speed"}, headers=headers).status_code == 400
        r = httpx.get(asim.base_url + USAGE, params={**base, "group_by[]": "speed"},
                      headers={**headers, "anthropic-beta": "fast-mode-2026-02-01"})
        assert {x["speed"] for b in r.json()["data"] for x in b["results"]} == {"standard"}
        plain = httpx.get(asim.base_url + USAGE, params={**base, "group_by[]": "model"}, headers=headers).json()
        assert all("speed" not in x for b in plain["data"] for x in b["results"])

    def test_ending_at_returns_only_buckets_that_end_before_it(self, asim: SimulatorHandle) -> None:
        """ending_at at noon: the day it falls in is not returned (it would end after ending_at)."""
        r = raw(asim, COST, {"starting_at": ts(date(2026, 3, 1)), "ending_at": "2026-03-03T12:00:00Z", "limit": 7},
                beta=False)
        assert [b["starting_at"] for b in r.json()["data"]] == [ts(date(2026, 3, 1)), ts(date(2026, 3, 2))]
