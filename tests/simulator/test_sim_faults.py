"""Injected faults, restatements and the /_sim/ control API."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import httpx
import pytest

from worker.simulator import (
    FaultSpecError,
    SimulatorData,
    SimulatorHandle,
    in_process,
    parse_fault,
    running_simulator,
)

from .helpers import (
    COST,
    ME,
    TLS,
    TODAY,
    USAGE,
    buckets,
    cents,
    client,
    day_of,
    fetch_pages,
    local_client,
    report_params,
    ts,
)

START = TODAY - timedelta(days=20)
PARAMS = report_params(START, TODAY, 7, "description")


def control(sim: SimulatorHandle) -> httpx.Client:
    return httpx.Client(base_url=sim.base_url, timeout=10, verify=TLS)


class TestErrorFaults:
    @pytest.mark.parametrize(
        ("kind", "error_type"),
        [("500", "api_error"), ("504", "timeout_error"), ("529", "overloaded_error")],
    )
    def test_next_n_requests_fail(self, fresh_sim: SimulatorHandle, kind: str, error_type: str) -> None:
        """count=N fails exactly the next N requests with the documented error type."""
        fresh_sim.add_fault(f"{kind}:count=2")
        with client(fresh_sim) as c:
            for _ in range(2):
                r = c.get(COST, params=PARAMS)
                assert r.status_code == int(kind)
                assert r.json()["error"]["type"] == error_type
                assert r.json()["request_id"] == r.headers["request-id"]
            assert c.get(COST, params=PARAMS).status_code == 200

    def test_rate_fault_is_partial_and_reproducible(self) -> None:
        """rate=P fails some requests, the same ones for the same seed."""
        outcomes = []
        for _ in range(2):
            with running_simulator(seed=3, today=TODAY, requests_per_minute=0,
                                   faults=["500:rate=0.5"]) as s, client(s) as c:
                outcomes.append([c.get(ME).status_code for _ in range(30)])
        assert outcomes[0] == outcomes[1]
        assert 0 < outcomes[0].count(500) < 30

    def test_fault_targets_org_and_path(self, fresh_sim: SimulatorHandle) -> None:
        """org= and path= restrict a fault to matching requests."""
        fresh_sim.add_fault("529:org=1,path=usage_report")
        with client(fresh_sim, 0) as a, client(fresh_sim, 1) as b:
            assert a.get(USAGE, params=PARAMS | {"group_by[]": "model"}).status_code == 200
            assert b.get(COST, params=PARAMS).status_code == 200
            assert b.get(USAGE, params=PARAMS | {"group_by[]": "model"}).status_code == 529
            assert b.get(USAGE, params=PARAMS | {"group_by[]": "model"}).status_code == 200

    def test_forced_429(self, fresh_sim: SimulatorHandle) -> None:
        """A 429 fault carries the requested retry-after."""
        fresh_sim.add_fault("429:retry_after=7")
        with client(fresh_sim) as c:
            r = c.get(ME)
        assert (r.status_code, r.headers["retry-after"]) == (429, "7")
        assert r.json()["error"]["type"] == "rate_limit_error"


class TestScriptedFaults:
    @pytest.mark.parametrize(("kind", "error_type"), [
        ("400", "invalid_request_error"), ("401", "authentication_error"), ("402", "billing_error"),
        ("403", "permission_error"), ("404", "not_found_error"), ("502", "api_error"), ("503", "api_error"),
    ])
    def test_error_kinds_with_their_message(self, local_sim: SimulatorHandle, kind: str, error_type: str) -> None:
        """Every documented status can be injected, with the API's error type and a message of the test's."""
        local_sim.add_fault(kind, message="what the API said: no, with commas, too")
        with local_client(local_sim) as c:
            r = c.get(ME)
            assert c.get(ME).status_code == 200
        assert (r.status_code, r.json()["error"]["type"]) == (int(kind), error_type)
        assert r.json()["error"]["message"] == "what the API said: no, with commas, too"

    def test_after_counts_every_matching_request(self, local_sim: SimulatorHandle) -> None:
        """after=N lets N matching requests through, counting those another fault answered: faults added
        together script request numbers."""
        local_sim.add_fault("529")  # request 1
        local_sim.add_fault("500:after=2")  # request 3
        local_sim.add_fault("401:after=4,rate=1")  # request 5 and every one after it
        with local_client(local_sim) as c:
            statuses = [c.get(ME).status_code for _ in range(7)]
        assert statuses == [529, 200, 500, 200, 401, 401, 401]

    def test_after_with_path(self, local_sim: SimulatorHandle) -> None:
        """Only requests the fault matches count towards after."""
        local_sim.add_fault("503:after=1,path=usage_report")
        with local_client(local_sim) as c:
            params = report_params(START, TODAY, 7)
            statuses = [c.get(path, params=params).status_code for path in (COST, USAGE, COST, USAGE, USAGE)]
        assert statuses == [200, 200, 200, 503, 200]

    def test_429_without_retry_after(self, local_sim: SimulatorHandle) -> None:
        """retry_after=none sends a 429 without the header."""
        local_sim.add_fault("429:retry_after=none")
        with local_client(local_sim) as c:
            r = c.get(ME)
        assert r.status_code == 429 and "retry-after" not in r.headers

    def test_bad_json(self, fresh_sim: SimulatorHandle) -> None:
        """bad-json: a complete 200 (Content-Length matches) whose body is not JSON."""
        fresh_sim.add_fault("bad-json:fraction=0.4")
        with client(fresh_sim) as c:
            r = c.get(COST, params=PARAMS)
            good = c.get(COST, params=PARAMS)
        assert r.status_code == 200 and int(r.headers["content-length"]) == len(r.content)
        assert good.content.startswith(r.content) and len(r.content) < len(good.content)
        with pytest.raises(ValueError):
            r.json()


class TestPageFaults:
    def test_empty_next_page(self, local_sim: SimulatorHandle) -> None:
        """A page with more to come says next_page "" (a last page is left alone)."""
        local_sim.add_fault("empty-next-page:rate=1")
        with local_client(local_sim) as c:
            more = c.get(COST, params=report_params(START, TODAY, 7)).json()
            last = c.get(COST, params=report_params(START, TODAY, 31)).json()
        assert (more["has_more"], more["next_page"]) == (True, "")
        assert (last["has_more"], last["next_page"]) == (False, None)

    def test_repeat_next_page(self, local_sim: SimulatorHandle) -> None:
        """A page fetched with a cursor names that same cursor again; the first page is untouched."""
        local_sim.add_fault("repeat-next-page")
        params = report_params(START, TODAY, 5)
        with local_client(local_sim) as c:
            first = c.get(COST, params=params).json()
            second = c.get(COST, params={**params, "page": first["next_page"]}).json()
        assert first["next_page"] and second["next_page"] == first["next_page"]
        assert second["data"][0]["starting_at"] == ts(START + timedelta(days=5))

    @pytest.mark.parametrize(("kind", "copies"), [("missing-day", 0), ("duplicate-day", 2)])
    def test_day_left_out_or_twice(self, local_sim: SimulatorHandle, kind: str, copies: int) -> None:
        """The day's bucket is left out of (or doubled in) the page that holds it; pages without it, and
        the other buckets, are unchanged; the fault waits for a page holding its day."""
        day = START + timedelta(days=9)
        local_sim.add_fault(f"{kind}:day={day}")
        params = report_params(START, TODAY, 7, "description")
        with local_client(local_sim) as c, local_client(in_process(
                orgs=3, seed=7, today=TODAY, requests_per_minute=0)) as clean:
            want = buckets(fetch_pages(clean, COST, params))
            got = buckets(fetch_pages(c, COST, params))
        days = [day_of(b["starting_at"]) for b in got]
        assert days.count(day) == copies
        assert [b for b in got if day_of(b["starting_at"]) != day] == [
            b for b in want if day_of(b["starting_at"]) != day]

    @pytest.mark.parametrize("amount", ["NaN", None, True, {"v": 1}])
    def test_bad_amount(self, local_sim: SimulatorHandle, amount: object) -> None:
        """The page's first cost amount becomes any JSON value; the rest of the page is unchanged."""
        local_sim.add_fault("bad-amount", amount=amount)
        params = report_params(START, TODAY, 7, "description")
        with local_client(local_sim) as c:
            bad, good = c.get(COST, params=params).json(), c.get(COST, params=params).json()
        rows = [r for b in bad["data"] for r in b["results"]]
        assert rows[0]["amount"] == amount
        assert rows[1:] == [r for b in good["data"] for r in b["results"]][1:]

    def test_novel_fields(self, local_sim: SimulatorHandle) -> None:
        """Unknown counters and fields on usage rows, one unknown cost row per bucket with results: the
        known numbers are unchanged."""
        local_sim.add_fault("novel-fields:rate=1")
        params = report_params(START, TODAY, 31, "model")
        with local_client(local_sim) as c:
            usage = buckets(fetch_pages(c, USAGE, params))
            cost = buckets(fetch_pages(c, COST, report_params(START, TODAY, 31, "description")))
        rows = [r for b in usage for r in b["results"]]
        assert rows and all(r["cache_creation"]["ephemeral_30m_input_tokens"] == 7
                            and r["server_tool_use"]["code_execution_requests"] == 2
                            and r["brand_new_field"] == {"nested": [1, 2]} for r in rows)
        truth = local_sim.data.truth(0, START, TODAY)
        assert sum(r["output_tokens"] for r in rows) == sum(t.output_tokens for t in truth)
        novel = [r for b in cost for r in b["results"] if r["cost_type"] == "session_usage_v2"]
        assert len(novel) == sum(1 for b in cost if len(b["results"]) > 1)
        known = sum(cents(r["amount"]) for b in cost for r in b["results"] if r["cost_type"] != "session_usage_v2")
        assert known == local_sim.data.truth_total(0, START, TODAY)


class TestOrganizationState:
    def test_new_key_works_old_one_is_revoked(self, local_sim: SimulatorHandle) -> None:
        """rotate-key gives the org a new admin key (listed by /_sim/keys); the old one answers 401 revoked;
        other orgs are untouched; reset brings the original back."""
        old = local_sim.keys[0]
        new = local_sim.rotate_key(0)
        assert new != old and new.startswith("sk-ant-admin01-") and local_sim.keys[0] == new
        with local_client(local_sim) as c:
            assert c.get(ME).json()["id"] == local_sim.orgs[0].id
            refused = c.get(ME, headers={"x-api-key": old})
            keys = c.get("/_sim/keys").json()["orgs"]
        assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
        assert [o["admin_key"] for o in keys] == [new, *(o.admin_key for o in local_sim.orgs[1:])]
        local_sim.reset()
        assert local_sim.keys[0] == old

    def test_rename(self, local_sim: SimulatorHandle) -> None:
        """rename gives /me (and /_sim/keys) any name at all, control characters included, until reset."""
        hostile = "Evil\x1b[2J Corp\nsecond line"
        local_sim.add_fault("rename", org=1, name=hostile)
        with local_client(local_sim, 1) as c, local_client(local_sim, 0) as other:
            assert c.get(ME).json()["name"] == hostile
            assert other.get(ME).json()["name"] == local_sim.orgs[0].name
            assert c.get("/_sim/keys").json()["orgs"][1]["name"] == hostile
        local_sim.reset()
        with local_client(local_sim, 1) as c:
            assert c.get(ME).json()["name"] == local_sim.orgs[1].name


class TestTransportFaults:
    def test_cutoff_body(self, fresh_sim: SimulatorHandle) -> None:
        """The body stops short of Content-Length and the connection closes; the next one works."""
        fresh_sim.add_fault("cutoff:fraction=0.3")
        with client(fresh_sim) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                c.get(COST, params=PARAMS)
            assert c.get(COST, params=PARAMS).status_code == 200

    def test_has_more_without_next_page(self, fresh_sim: SimulatorHandle) -> None:
        """no-next-page answers has_more true with next_page null, even on the last page."""
        fresh_sim.add_fault("no-next-page")
        with client(fresh_sim) as c:
            body = c.get(COST, params=report_params(START, TODAY, 31)).json()
            assert (body["has_more"], body["next_page"]) == (True, None)
            body = c.get(COST, params=report_params(START, TODAY, 31)).json()
            assert (body["has_more"], body["next_page"]) == (False, None)

    def test_delay(self, fresh_sim: SimulatorHandle) -> None:
        """delay holds the answer back, long enough for a client timeout to fire."""
        fresh_sim.add_fault("delay:seconds=0.5")
        with client(fresh_sim) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.get(ME, timeout=0.05)


class TestRestatement:
    def test_restated_day_changes_and_truth_follows(self, fresh_sim: SimulatorHandle) -> None:
        """Restating a day changes only that day's numbers; truth and reports still agree."""
        day = TODAY - timedelta(days=3)
        params = report_params(START, TODAY, 31, "workspace_id", "description")
        with client(fresh_sim) as c:
            before = buckets(fetch_pages(c, COST, params))
            fresh_sim.restate(0, day)
            after = buckets(fetch_pages(c, COST, params))
        changed = [b["starting_at"] for b, a in zip(before, after, strict=True) if a != b]
        assert changed == [ts(day)]
        total = sum(cents(r["amount"]) for b in after for r in b["results"])
        assert total == fresh_sim.data.truth_total(0, START, TODAY)

    def test_restate_is_deterministic(self) -> None:
        """The same restatement gives the same new numbers in another simulator."""
        day = TODAY - timedelta(days=5)
        totals = []
        for _ in range(2):
            with running_simulator(seed=7, today=TODAY, requests_per_minute=0,
                                   faults=[f"restate:day={day}"]) as s:
                totals.append(s.data.truth_total(0, day, day + timedelta(days=1)))
        assert totals[0] == totals[1] != SimulatorData(7, 1, TODAY).truth_total(0, day, day + timedelta(days=1))

    def test_future_day_cannot_be_restated(self, fresh_sim: SimulatorHandle) -> None:
        """Only days up to today can be restated."""
        with control(fresh_sim) as c:
            r = c.post("/_sim/faults", json={"spec": f"restate:day={TODAY + timedelta(days=1)}"})
        assert r.status_code == 400


class TestSpike:
    def test_spike_multiplies_one_days_token_cost(self, fresh_sim: SimulatorHandle) -> None:
        """A spike of 5 makes that day's token cost about 5x (the same records, 5x the volume); other
        days and the report-vs-truth agreement are untouched; factor 1 removes it."""
        day = TODAY - timedelta(days=4)
        other = TODAY - timedelta(days=5)
        before = fresh_sim.data.truth(0, day, day + timedelta(days=1))
        other_before = fresh_sim.data.truth_total(0, other, other + timedelta(days=1))
        fresh_sim.spike(0, day, 5)
        after = fresh_sim.data.truth(0, day, day + timedelta(days=1))
        tokens = lambda rows: sum(r.cost_usd for r in rows if r.model is not None)  # noqa: E731
        assert Decimal("4.9") < tokens(after) / tokens(before) < Decimal("5.1")
        assert [r.model for r in after] == [r.model for r in before]
        assert fresh_sim.data.truth_total(0, other, other + timedelta(days=1)) == other_before
        with client(fresh_sim) as c:
            got = buckets(fetch_pages(c, COST, report_params(START, TODAY, 31, "workspace_id", "description")))
        assert sum(cents(r["amount"]) for b in got for r in b["results"]) == fresh_sim.data.truth_total(0, START, TODAY)
        with control(fresh_sim) as c:
            assert c.get("/_sim/faults").json()["spiked"] == [{"org": 0, "day": day.isoformat(), "factor": 5.0}]
        fresh_sim.spike(0, day, 1)
        assert fresh_sim.data.truth(0, day, day + timedelta(days=1)) == before

    def test_future_day_cannot_be_spiked(self, fresh_sim: SimulatorHandle) -> None:
        """Only days up to today can be spiked."""
        with control(fresh_sim) as c:
            r = c.post("/_sim/faults", json={"spec": f"spike:day={TODAY + timedelta(days=1)}"})
        assert r.status_code == 400


class TestSteadyTraffic:
    def test_same_callers_every_day_volume_varies_a_little(self) -> None:
        """steady: every weekday has the same (workspace, model, tier, window, key) records, and weekday
        totals stay within +-50% of their median over five weeks (varied traffic swings far more)."""
        data = SimulatorData(0, 1, TODAY, traffic="steady")
        days = [TODAY - timedelta(days=i) for i in range(1, 36)]
        shape = lambda d: sorted((r.workspace_id or "", r.model, r.service_tier, r.context_window,  # noqa: E731
                                  r.api_key_id or "") for r in data.records(0, d))
        assert all(shape(d) == shape(days[0]) for d in days)
        weekdays = sorted(data.truth_total(0, d, d + timedelta(days=1)) for d in days if d.weekday() < 5)
        median = weekdays[len(weekdays) // 2]
        assert weekdays[0] > median / 2 and weekdays[-1] < median * Decimal("1.5")

    def test_restated_steady_day_changes(self) -> None:
        """A restatement still changes a steady day's numbers."""
        data = SimulatorData(0, 1, TODAY, traffic="steady")
        day = TODAY - timedelta(days=2)
        before = data.truth_total(0, day, day + timedelta(days=1))
        data.restate(0, day)
        assert data.truth_total(0, day, day + timedelta(days=1)) != before

    def test_unknown_traffic_is_refused(self) -> None:
        """Only the two traffic models exist."""
        with pytest.raises(ValueError, match="traffic"):
            SimulatorData(0, 1, TODAY, traffic="bursty")


class TestControlApi:
    def test_post_faults_spec_and_structured(self, fresh_sim: SimulatorHandle) -> None:
        """POST /_sim/faults takes spec strings or kind/options objects; GET lists them."""
        with control(fresh_sim) as c:
            r = c.post("/_sim/faults", json={"specs": ["500:count=2,org=1", {"kind": "revoke", "org": 2}]})
            assert r.status_code == 201
            listed = c.get("/_sim/faults").json()
            assert [f["kind"] for f in listed["active"]] == ["500"]
            assert listed["active"][0]["count"] == 2 and listed["revoked_orgs"] == [2]
            assert c.delete("/_sim/faults").json()["active"] == []
        with client(fresh_sim, 2) as c:
            assert c.get(ME).status_code == 401

    @pytest.mark.parametrize("spec", ["explode", "500:count=0", "500:rate=2", "restate", "spike", "500:bogus=1",
                                      "spike:day=2026-03-01,factor=0",
                                      "cutoff:fraction=1.5", "revoke:org=9", "missing-day", "500:after=-1", "rename",
                                      "429:retry_after=soon"])
    def test_bad_fault_specs(self, fresh_sim: SimulatorHandle, spec: str) -> None:
        """Malformed fault specs are refused with 400."""
        with control(fresh_sim) as c:
            r = c.post("/_sim/faults", json={"spec": spec})
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"

    def test_keys(self, fresh_sim: SimulatorHandle) -> None:
        """GET /_sim/keys lists each org's id, name and admin key."""
        with control(fresh_sim) as c:
            orgs = c.get("/_sim/keys").json()["orgs"]
        assert [(o["org"], o["id"], o["admin_key"]) for o in orgs] == [
            (o.index, o.id, o.admin_key) for o in fresh_sim.orgs
        ]

    def test_truth_endpoint_matches_python_api(self, fresh_sim: SimulatorHandle) -> None:
        """GET /_sim/truth serves the same exact numbers as SimulatorData.truth."""
        with control(fresh_sim) as c:
            body = c.get("/_sim/truth", params={"org": 1, "since": START.isoformat(),
                                                "until": TODAY.isoformat()}).json()
        rows = fresh_sim.data.truth(1, START, TODAY)
        assert [Decimal(r["cost_usd"]) for r in body["rows"]] == [r.cost_usd for r in rows]
        assert [r["model"] for r in body["rows"]] == [r.model for r in rows]
        assert Decimal(body["total_cost_usd"]) == fresh_sim.data.truth_total(1, START, TODAY)

    def test_control_api_not_counted(self, fresh_sim: SimulatorHandle) -> None:
        """Control requests need no key and do not show up in the stats."""
        with control(fresh_sim) as c:
            c.get("/_sim/keys")
            assert c.get("/_sim/stats").json()["total"]["requests"] == 0


class TestFaultSpecs:
    @pytest.mark.parametrize(
        ("spec", "expected"),
        [
            ("529", {"kind": "529", "count": 1}),
            ("500:count=3,org=2", {"kind": "500", "count": 3, "org": 2}),
            ("504:rate=0.25,path=cost_report", {"kind": "504", "rate": 0.25, "path": "cost_report"}),
            ("cutoff:fraction=0.1", {"kind": "cutoff", "count": 1, "fraction": 0.1}),
            ("restate:org=0,day=2026-03-01", {"kind": "restate", "org": 0, "day": "2026-03-01"}),
            ("spike:day=2026-03-01,factor=3", {"kind": "spike", "day": "2026-03-01", "factor": 3.0}),
            ("401:after=6,rate=1", {"kind": "401", "after": 6, "rate": 1.0}),
            ("429:retry_after=none", {"kind": "429", "retry_after": None}),
            ("403:message=not an admin key", {"kind": "403", "message": "not an admin key"}),
            ("missing-day:day=2026-03-02", {"kind": "missing-day", "day": "2026-03-02", "count": 1}),
            ("bad-amount:amount=NaN", {"kind": "bad-amount", "amount": "NaN"}),
            ("rotate-key:org=1", {"kind": "rotate-key", "org": 1}),
            ("rename:org=1,name=Acme", {"kind": "rename", "org": 1, "name": "Acme"}),
        ],
    )
    def test_parse(self, spec: str, expected: dict[str, object]) -> None:
        """Spec strings parse into faults."""
        got = parse_fault(spec).as_json()
        assert {k: got[k] for k in expected} == expected

    def test_parse_error(self) -> None:
        """Unknown kinds raise FaultSpecError."""
        with pytest.raises(FaultSpecError):
            parse_fault("teapot:count=1")
