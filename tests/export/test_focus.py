"""`cost-worker export --format focus` on a year of the simulator's bill: every Mandatory column of FOCUS 1.2
and every value rule of the specification's own column list (tests/data/focus_1_2_columns.json, derived from
the spec's column files), one row per day and charge, BilledCost summing exactly to the simulator's truth
and quantities equal to its token counts; formula-safe cells; whole-or-nothing files; one-line errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import insert

from tests.conftest import BACKENDS, PG_URL, master_key_text, private_pg_schema
from tests.watch.simbill import NOW, TODAY, connect_sim, make_sim, watch_app
from worker.app import App
from worker.cli import cli
from worker.simulator import SimulatorApp
from worker.simulator.prices import LEGACY_COST_TIERS, TOKEN_TYPES
from worker.simulator.truth import PRIORITY_TIERS, analytics_truth, priority_cost
from worker.storage import analytics as astore
from worker.storage.tables import analytics_cost_rows, cost_rows

SPEC = json.loads((Path(__file__).parents[1] / "data" / "focus_1_2_columns.json").read_text())
COLUMNS = {c["column"]: c for c in SPEC["columns"]}
FIRST = TODAY - timedelta(days=364)
A_FIRST = date(2026, 1, 1)  # the simulator's Analytics API has nothing earlier
NUMERIC = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?(E-?[0-9]+)?")
DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
# The one deviation docs/export.md states: no quantity where the source reports none (code execution).
QUANTITY_NOT_REPORTED = {"code_execution"}


@pytest.fixture(scope="session", params=BACKENDS)
def year(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[App, SimulatorApp]]:
    """365 days of the simulator's default (varied) traffic: fees, empty days, rows that come and go."""
    sim = make_sim("varied", seed=5)
    tmp = tmp_path_factory.mktemp("focus")
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp / 'focus.db'}" if request.param == "sqlite" else stack.enter_context(
            private_pg_schema(PG_URL or ""))
        app = watch_app(url, tmp)
        stack.callback(app.close)
        connect_sim(app, sim)
        yield app, sim


def env(app: App, tmp_path: Path) -> dict[str, str]:
    return {"COST_WORKER_DATABASE_URL": app.settings.effective_database_url, "COST_WORKER_DATA_DIR": str(tmp_path),
            "COST_WORKER_MASTER_KEY": master_key_text(app)}


@pytest.fixture(scope="session")
def exported(year: tuple[App, SimulatorApp], tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[dict[str, str]], str]:
    """The year exported with --out: (header, records, the command's stderr)."""
    app, _ = year
    tmp = tmp_path_factory.mktemp("out")
    out = tmp / "focus.csv"
    result = CliRunner().invoke(cli, ["export", "--format", "focus", "--since", str(FIRST), "--until", str(TODAY),
                                      "--out", str(out)], env=env(app, tmp))
    assert result.exit_code == 0, result.output
    with out.open(newline="") as f:
        reader = csv.DictReader(f)
        records = list(reader)
    return list(reader.fieldnames or []), records, result.stderr


def whole_bill(sim: SimulatorApp, first: date, last: date) -> Decimal:
    """The simulator's bill of UTC days `first`..`last`: the legacy cost report's, plus the Priority Tier cost
    the Analytics API bills alone (from its first day, as far as it has refreshed)."""
    priority = priority_cost(sim.data, 0, max(first, A_FIRST), last) if last >= A_FIRST else {}
    return sim.data.truth_total(0, first, last + timedelta(days=1)) + sum(priority.values(), Decimal(0))


def is_null(value: str) -> bool:
    return value == ""


@pytest.mark.slow  # a year of data
class TestColumns:
    def test_every_mandatory_column(self, exported: Any) -> None:
        """All 21 Mandatory columns of the 1.2 list are there, under their exact column ids."""
        header, _, _ = exported
        mandatory = {c["column"] for c in SPEC["columns"] if c["feature_level"] == "Mandatory"}
        assert len(mandatory) == 21 and mandatory <= set(header)

    def test_only_focus_and_x_columns_focus_first(self, exported: Any) -> None:
        """Every column is a FOCUS 1.2 column or an `x_` custom column, the FOCUS ones first."""
        header, _, _ = exported
        focus = [h for h in header if not h.startswith("x_")]
        assert set(focus) <= set(COLUMNS)
        assert header[: len(focus)] == focus
        assert all(re.fullmatch(r"x_[A-Z][A-Za-z]+", h) for h in header[len(focus):])

    def test_conditional_columns_that_apply_are_there(self, exported: Any) -> None:
        """The Conditional/Recommended columns this bill has the facts for (usage quantities, SKUs, region,
        sub account, frequency, subcategory)."""
        header, _, _ = exported
        assert {"ConsumedQuantity", "ConsumedUnit", "SkuId", "SkuPriceId", "SkuMeter", "SkuPriceDetails", "RegionId",
                "RegionName", "SubAccountId", "SubAccountName", "ChargeFrequency", "ServiceSubcategory"} <= set(header)


@pytest.mark.slow  # a year of data
class TestValueRules:
    def test_types_nulls_and_allowed_values(self, exported: Any) -> None:
        """Per the column list: no null where nulls are not allowed, Decimal in Numeric Format, Date/Time as
        YYYY-MM-DDTHH:mm:ssZ, allowed values only, JSON objects for key-value columns."""
        header, records, _ = exported
        for name in (h for h in header if h in COLUMNS):
            spec = COLUMNS[name]
            allowed = spec.get("allowed_values")
            if name == "ServiceSubcategory":
                allowed = [a["value"] for a in allowed]
            for r in records:
                value = r[name]
                if is_null(value):
                    assert spec["allows_nulls"], (name, r)
                    continue
                if spec["data_type"] == "Decimal":
                    assert NUMERIC.fullmatch(value), (name, value)
                elif spec["data_type"] == "Date/Time":
                    assert DATETIME.fullmatch(value), (name, value)
                elif spec["data_type"] == "JSON":
                    assert isinstance(json.loads(value), dict), (name, value)
                if allowed:
                    assert value in allowed, (name, value)

    def test_the_specifications_rules(self, exported: Any) -> None:
        """Each rule of the vendored list holds on every row (quantities: but for the documented deviation)."""
        header, records, _ = exported
        checked = set()
        for rule in SPEC["rules"]:
            kind = rule["kind"]
            checked.add(kind)
            for r in records:
                check(rule, r, header)
        assert len(checked) >= 14

    def test_values_of_this_bill(self, exported: Any) -> None:
        """ChargeCategory Usage, provider/publisher/issuer Anthropic, the service, the UTC day and month."""
        _, records, _ = exported
        for r in records:
            assert r["ChargeCategory"] == "Usage" and r["ChargeFrequency"] == "Usage-Based"
            assert r["ProviderName"] == r["PublisherName"] == r["InvoiceIssuerName"] == "Anthropic"
            assert (r["ServiceName"], r["ServiceCategory"]) == ("Claude API", "AI and Machine Learning")
            start = datetime.strptime(r["ChargePeriodStart"], "%Y-%m-%dT%H:%M:%SZ")
            assert r["ChargePeriodEnd"] == (start + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            assert r["BillingPeriodStart"] == start.strftime("%Y-%m-01T00:00:00Z")
            assert r["BillingPeriodStart"] <= r["ChargePeriodStart"] < r["ChargePeriodEnd"] <= r["BillingPeriodEnd"]
            assert r["BilledCost"] == r["EffectiveCost"] == r["ContractedCost"]


def check(rule: dict[str, Any], r: dict[str, str], header: list[str]) -> None:
    kind = rule["kind"]

    def when(conditions: dict[str, list[str]]) -> bool:
        return all(r.get(col, "") in values for col, values in conditions.items())

    if kind == "null_iff":
        assert is_null(r[rule["column"]]) == is_null(r[rule["other"]]), (rule, r)
    elif kind == "null_when_null":
        assert not is_null(r[rule["other"]]) or is_null(r[rule["column"]]), (rule, r)
    elif kind == "not_null_when":
        if when(rule["when"]) and not when(rule.get("unless", {"-": ["never"]})):
            if rule["column"] in ("ConsumedQuantity", "PricingQuantity") and r["x_CostType"] in QUANTITY_NOT_REPORTED:
                return
            assert not is_null(r[rule["column"]]), (rule, r)
    elif kind == "null_when":
        if when(rule["when"]):
            assert is_null(r[rule["column"]]), (rule, r)
    elif kind == "equals_when_null":
        # The spec: "where the ListUnitPrice is present and is null" (the export has no unit price columns,
        # docs/export.md says why; ListCost is the Analytics API's list amount where synced).
        if rule["when_null"] in header and is_null(r[rule["when_null"]]):
            assert Decimal(r[rule["column"]]) == Decimal(r[rule["equals"]]), (rule, r)
    elif kind == "not_value_when":
        if when(rule["when"]):
            assert r[rule["column"]] != rule["value"], (rule, r)
    elif kind == "before":
        assert r[rule["first"]] < r[rule["then"]], (rule, r)
    elif kind == "custom_keys_prefixed":
        if not is_null(r[rule["column"]]):
            assert all(k.startswith(rule["prefix"]) for k in json.loads(r[rule["column"]])), (rule, r)
    elif kind == "custom_columns_prefixed":
        assert all(h in COLUMNS or h.startswith(rule["prefix"]) for h in header)
    elif kind == "focus_columns_first":
        custom = [i for i, h in enumerate(header) if h not in COLUMNS]
        assert custom == list(range(len(header) - len(custom), len(header)))
    elif kind == "numeric_format":
        for name in header:
            if COLUMNS.get(name, {}).get("data_type") == rule["data_type"] and not is_null(r[name]):
                assert NUMERIC.fullmatch(r[name]) and not r[name].startswith("+"), (name, r[name])
    elif kind == "datetime_format":
        for name in header:
            if COLUMNS.get(name, {}).get("data_type") == rule["data_type"]:
                assert DATETIME.fullmatch(r[name]), (name, r[name])
    elif kind == "currency_format":
        for name in rule["columns"]:
            assert re.fullmatch(r"[A-Z]{3}", r[name]), (name, r[name])
    elif kind == "subcategory_parent":
        parents = {a["value"]: a["category"] for a in COLUMNS[rule["column"]]["allowed_values"]}
        assert parents[r[rule["column"]]] == r[rule["parent"]], r
    elif kind == "no_empty_strings":
        assert all(v == "" or v.strip() for v in r.values()), r  # a blank cell is null, never an empty string
    else:
        raise AssertionError(f"unknown rule kind {kind}")


@pytest.mark.slow  # a year of data
class TestAgainstTheTruth:
    def test_billed_cost_sums_to_the_bill(self, exported: Any, year: tuple[App, SimulatorApp]) -> None:
        """Over 365 days BilledCost sums exactly (Decimal) to the simulator's truth, and per (day, model) too: the
        legacy cost report's bill, plus the Priority Tier cost the Analytics API bills alone (from its first
        day, 2026-01-01, as far as it has refreshed)."""
        _, records, stderr = exported
        _, sim = year
        priority = priority_cost(sim.data, 0, A_FIRST, TODAY)
        assert sum(priority.values()) > 0  # the year has Priority Tier calls: their rows are checked
        total = sum((Decimal(r["BilledCost"]) for r in records), Decimal(0))
        assert total == whole_bill(sim, FIRST, TODAY) > 0
        by_day_model: dict[tuple[str, str | None], Decimal] = defaultdict(Decimal)
        for r in records:
            by_day_model[(r["ChargePeriodStart"][:10], r["x_Model"] or None)] += Decimal(r["BilledCost"])
        truth: dict[tuple[str, str | None], Decimal] = defaultdict(Decimal)
        for t in sim.data.truth(0, FIRST, TODAY + timedelta(days=1)):
            if t.cost_usd:
                truth[(t.date.isoformat(), t.model)] += t.cost_usd
        for (day, model), amount in priority.items():
            truth[(day.isoformat(), model)] += amount
        assert by_day_model == truth
        priority_rows = [r for r in records if r["x_ServiceTier"] in PRIORITY_TIERS]
        assert sum(Decimal(r["BilledCost"]) for r in priority_rows) == sum(priority.values())
        assert min(r["ChargePeriodStart"][:10] for r in priority_rows) >= A_FIRST.isoformat()
        assert f"wrote {len(records)} FOCUS 1.2 rows (365 days {FIRST}..{TODAY}, BilledCost total {total} USD)" in stderr

    def test_one_row_per_day_and_charge(self, exported: Any, year: tuple[App, SimulatorApp]) -> None:
        """As many rows as the simulator's cost report has (day, workspace, charge) lines, plus one per day,
        workspace, model, Priority tier and token type the Analytics API bills (as far as it has refreshed);
        no two alike."""
        _, records, _ = exported
        _, sim = year
        lines = sum(len(sim.data.day(0, FIRST + timedelta(days=i)).cost) for i in range(365))
        refreshed = sim.data.refreshed_at()
        priority: set[tuple[date, str | None, str, str, str]] = set()
        day = A_FIRST
        while day <= TODAY:
            midnight = datetime.combine(day, datetime.min.time(), UTC)
            for rec in sim.data.day(0, day).usage:
                if rec.service_tier in PRIORITY_TIERS and midnight + timedelta(minutes=rec.minute) < refreshed:
                    priority.update((day, rec.workspace_id, rec.model, rec.service_tier, tt)
                                    for tt in TOKEN_TYPES if rec.tokens(tt))
            day += timedelta(days=1)
        assert priority
        assert len(records) == lines + len(priority) > 5000
        assert sum(r["x_ServiceTier"] in PRIORITY_TIERS for r in records) == len(priority)
        keys = {(r["ChargePeriodStart"], r["SubAccountId"], r["SkuPriceId"], r["RegionId"]) for r in records}
        assert len(keys) == len(records)
        assert [r["ChargePeriodStart"] for r in records] == sorted(r["ChargePeriodStart"] for r in records)
        tiers_by_day: dict[str, list[bool]] = defaultdict(list)
        for r in records:  # a day's Priority Tier rows (the Analytics API's) follow its legacy rows
            tiers_by_day[r["ChargePeriodStart"]].append(r["x_ServiceTier"] in PRIORITY_TIERS)
        assert all(flags == sorted(flags) for flags in tiers_by_day.values())

    def test_quantities_are_the_usage_truth(self, exported: Any, year: tuple[App, SimulatorApp]) -> None:
        """ConsumedQuantity per (day, model, token type) equals the simulator's token counts; web-search requests
        per day its request counts; PricingQuantity is the same count per million tokens or thousand requests."""
        _, records, _ = exported
        _, sim = year
        got: dict[tuple[str, str, str], int] = defaultdict(int)
        for r in records:
            if r["x_CostType"] in QUANTITY_NOT_REPORTED:
                assert is_null(r["ConsumedQuantity"])
                continue
            got[(r["ChargePeriodStart"][:10], r["x_Model"], r["x_TokenType"] or r["x_CostType"])] += int(
                r["ConsumedQuantity"])
            scale = 10**6 if r["ConsumedUnit"] == "Tokens" else 10**3
            assert Decimal(r["PricingQuantity"]) * scale == Decimal(r["ConsumedQuantity"])
            assert r["PricingUnit"] == ("1000000 Tokens" if r["ConsumedUnit"] == "Tokens" else "1000 Requests")
        want: dict[tuple[str, str, str], int] = defaultdict(int)
        refreshed = sim.data.refreshed_at()
        for i in range(365):
            day = FIRST + timedelta(days=i)
            midnight = datetime.combine(day, datetime.min.time(), UTC)
            for rec in sim.data.day(0, day).usage:
                # Tokens of Priority Tier calls are billed by the Analytics API alone: rows (with its counts)
                # from its first day, as far as it has refreshed. Web-search fees are one cost line per day
                # whatever the tier.
                billed_tokens = rec.service_tier in LEGACY_COST_TIERS or (
                    rec.service_tier in PRIORITY_TIERS and day >= A_FIRST
                    and midnight + timedelta(minutes=rec.minute) < refreshed)
                for token_type in TOKEN_TYPES:
                    if billed_tokens and rec.tokens(token_type):
                        want[(day.isoformat(), rec.model, token_type)] += rec.tokens(token_type)
                if rec.web_search_requests:
                    want[(day.isoformat(), "", "web_search")] += rec.web_search_requests
        assert dict(got) == dict(want)


    def test_list_cost_is_the_analytics_truths_list_amount(self, exported: Any, year: tuple[App, SimulatorApp]) -> None:
        """Where the Analytics API's bill is synced and complete (2026-01-01 to yesterday), ListCost per (day,
        model) of the token charges equals the simulator's analytics truth of `list_amount` over every tier
        (the legacy bill's, and Priority Tier's own rows), and per day of the other charges (web search, code
        execution) their list amount, exactly; below the (negotiated) discount, above BilledCost. Before it,
        ListCost is BilledCost."""
        _, records, _ = exported
        _, sim = year
        got: dict[tuple[str, str | None], Decimal] = defaultdict(Decimal)
        for r in records:
            day = r["ChargePeriodStart"][:10]
            if day < A_FIRST.isoformat():
                assert r["ListCost"] == r["BilledCost"], r
            elif day < TODAY.isoformat():
                got[(day, r["x_Model"] if r["x_CostType"] == "tokens" else None)] += Decimal(r["ListCost"])
        want: dict[tuple[str, str | None], Decimal] = defaultdict(Decimal)
        for t in analytics_truth(sim.data, 0, A_FIRST, TODAY - timedelta(days=1), "service_tier"):
            if t["key"] is None:  # web search (on its model here) and code execution: no tier
                want[(t["date"], None)] += Decimal(t["list_cost_usd"])
            else:  # every tier: the legacy charges' list costs, and the Priority Tier rows' own
                want[(t["date"], t["model"])] += Decimal(t["list_cost_usd"])
        assert dict(got) == {k: v for k, v in want.items() if v}
        listed = [r for r in records if "2026-01-01" <= r["ChargePeriodStart"][:10] < TODAY.isoformat()
                  and r["x_CostType"] == "tokens"]
        assert sum(Decimal(r["ListCost"]) for r in listed) > sum(Decimal(r["BilledCost"]) for r in listed)


class TestListCost:
    def charge(self, amount: str, window: str = "0-200k", token_type: str = "output_tokens", cost_type: str = "tokens",
               model: str = "claude-sonnet-4-6") -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(integration_id=1, day=TODAY, cost_type=cost_type, token_type=token_type,
                               service_tier="standard", model=model, context_window=window, amount_usd=Decimal(amount))

    def test_shares_of_one_grain_sum_to_its_list_amount(self) -> None:
        """Charges the Analytics API bills as one grain (two context windows, two workspaces) share its list
        amount by their billed amounts, exactly to its total; a grain the two bills charge differently (a
        partial day), or one the Analytics API lacks, keeps its billed amount."""
        from worker.export.focus import list_costs

        charges = [self.charge("1.70"), self.charge("3.40", window="200k-1M"), self.charge("0.000003"),
                   self.charge("2.00", token_type="uncached_input_tokens"), self.charge("0.50", model="other"),
                   self.charge("0.10", cost_type="web_search", token_type="", model="")]
        grains = {(1, TODAY, "tokens", "output_tokens", "standard", "claude-sonnet-4-6"):
                  (Decimal("5.100003"), Decimal("6.000003529411764705")),
                  (1, TODAY, "tokens", "uncached_input_tokens", "standard", "claude-sonnet-4-6"):
                  (Decimal("1.99"), Decimal("2.34")),
                  (1, TODAY, "web_search"): (Decimal("0.10"), Decimal("0.10"))}
        got = list_costs(charges, grains)
        assert sum(got[:3]) == Decimal("6.000003529411764705")
        assert got[0] == Decimal("2.000000000000") and got[2] == Decimal("0.000003529412")
        assert got[3:] == [Decimal("2.00"), Decimal("0.50"), Decimal("0.10")]


class TestPriorityTier:
    """The Priority Tier rows come from the Analytics API's bill alone, and only where it is the bill of record."""

    def export(self, app: App, tmp_path: Path, first: date, last: date) -> list[dict[str, str]]:
        result = CliRunner().invoke(cli, ["export", "--format", "focus", "--since", str(first), "--until", str(last)],
                                    env=env(app, tmp_path))
        assert result.exit_code == 0, result.output
        return list(csv.DictReader(io.StringIO(result.stdout)))

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_rows_per_tier_never_billed_twice_and_none_without_the_analytics_bill(self, tmp_path: Path,
                                                                                 backend: str) -> None:
        """The Analytics API's days of a year of varied traffic: the Priority Tier rows sum to the simulator's Priority Tier
        truth, with the Analytics API's list amounts and token counts. A day whose legacy rows carry a priority
        tier themselves keeps only those (no second charge), the other days keep theirs; an integration switched
        to the legacy source alone has none."""
        sim = make_sim("varied", seed=5)
        with contextlib.ExitStack() as stack:
            url = f"sqlite:///{tmp_path / 'p.db'}" if backend == "sqlite" else stack.enter_context(
                private_pg_schema(PG_URL or ""))
            app = watch_app(url, tmp_path)
            stack.callback(app.close)
            self.check(app, sim, tmp_path)

    def check(self, app: App, sim: SimulatorApp, tmp_path: Path) -> None:
        iid = connect_sim(app, sim)
        first = A_FIRST  # the Analytics API's days of the year's backfill
        records = self.export(app, tmp_path, first, TODAY)
        priority = [r for r in records if r["x_ServiceTier"] in PRIORITY_TIERS]
        truth = priority_cost(sim.data, 0, first, TODAY)
        days = sorted({d.isoformat() for d, _ in truth})
        assert len(days) >= 2, "the window needs Priority Tier calls on two days at least"
        assert sum(Decimal(r["BilledCost"]) for r in priority) == sum(truth.values())
        for r in priority:
            assert Decimal(r["ListCost"]) > Decimal(r["BilledCost"]) > 0  # list price, above the discount
            assert r["ChargeDescription"].startswith("Priority Tier ") and r["x_TokenType"] in TOKEN_TYPES
            assert int(r["ConsumedQuantity"]) > 0 and r["ConsumedUnit"] == "Tokens"
        # A legacy report that billed one model's Priority Tier itself on one day: that charge is its alone,
        # the day's other Priority Tier charges (another model, on demand: stored here) still come from the
        # Analytics API.
        restated = date.fromisoformat(days[0])
        [sample, *_] = [r for r in priority if r["ChargePeriodStart"].startswith(restated.isoformat())]
        model, tier = sample["x_Model"], sample["x_ServiceTier"]
        with app.engine.begin() as conn:
            conn.execute(insert(cost_rows).values(
                integration_id=iid, day=restated, workspace_id="", model=model,
                cost_type="tokens", token_type="output_tokens", service_tier=tier,
                context_window="0-200k", inference_geo="global", description="Priority Usage", extra="",
                amount_usd=Decimal("7.25"), currency="USD"))
            conn.execute(insert(analytics_cost_rows).values(
                integration_id=iid, day=restated, grouping="main", model="claude-other",
                **dict.fromkeys(("workspace_id", "api_key_id", "actor_type", "actor_id", "context_window",
                                 "inference_geo", "speed", "product", "other"), ""),
                service_tier="priority_on_demand", cost_type="tokens", token_type="output_tokens",
                amount_usd=Decimal("3.00"), list_amount_usd=Decimal("3.50"), currency="USD"))
        again = [r for r in self.export(app, tmp_path, first, TODAY) if r["x_ServiceTier"] in PRIORITY_TIERS]
        [billed_by_legacy] = [r for r in again if r["ChargeDescription"] == "Priority Usage"]
        [other] = [r for r in again if r["x_Model"] == "claude-other"]
        assert [Decimal(v) for v in (billed_by_legacy["BilledCost"], other["BilledCost"], other["ListCost"])] == [
            Decimal("7.25"), Decimal("3.00"), Decimal("3.50")]
        assert [r for r in again if r is not billed_by_legacy and r is not other] == [
            r for r in priority if not (r["ChargePeriodStart"].startswith(restated.isoformat())
                                        and r["x_Model"] == model and r["x_ServiceTier"] == tier)]
        # Refused by the Analytics API (HIPAA readiness), or switched to the legacy source: the legacy bill.
        for step in ("refused", "legacy"):
            if step == "refused":
                with app.engine.begin() as conn:
                    astore.set_state(conn, iid, NOW, status="refused", detail="HIPAA readiness")
            else:
                with app.engine.begin() as conn:
                    astore.set_state(conn, iid, NOW, status="ok", detail=None)
                assert CliRunner().invoke(cli, ["integrations", "set-source", str(iid), "legacy"],
                                          env=env(app, tmp_path)).exit_code == 0
            legacy_only = self.export(app, tmp_path, first, TODAY)
            assert [r for r in legacy_only if r["x_ServiceTier"] in PRIORITY_TIERS] == [billed_by_legacy], step
            assert (sum(Decimal(r["BilledCost"]) for r in legacy_only)
                    == sim.data.truth_total(0, first, TODAY + timedelta(days=1)) + Decimal("7.25")), step

    def test_a_grouping_without_service_tier_is_named(self, tmp_path: Path) -> None:
        """With `analytics_cost_group_by` lacking service_tier the export cannot tell Priority Tier charges
        apart: it says so on stderr, after its summary line (and nothing with the default grouping)."""
        app = watch_app(f"sqlite:///{tmp_path / 'n.db'}", tmp_path)
        try:
            e = env(app, tmp_path)
            args = ["export", "--format", "focus", "--since", str(TODAY), "--until", str(TODAY)]
            plain = CliRunner().invoke(cli, args, env=e)
            narrow = CliRunner().invoke(cli, args, env={
                **e, "COST_WORKER_ANALYTICS_COST_GROUP_BY": "model,workspace_id,api_key_id,cost_type,token_type"})
        finally:
            app.close()
        assert plain.exit_code == narrow.exit_code == 0, (plain.output, narrow.output)
        assert "service_tier" not in plain.stderr
        summary, note = narrow.stderr.strip().splitlines()
        assert summary.startswith("wrote 0 FOCUS 1.2 rows")
        assert note.startswith("note: analytics_cost_group_by has no service_tier") and "source both" in note

    @pytest.mark.slow  # a year of data
    @pytest.mark.parametrize("backend", BACKENDS)
    def test_source_analytics_is_billed_by_the_analytics_api_alone(self, tmp_path: Path, backend: str) -> None:
        """An integration switched to source `analytics` keeps the legacy rows it had stored, but from
        2026-01-01 on the Analytics API is its only bill: every charge comes from it. BilledCost, ListCost
        and the token counts per (day, model) equal the simulator's legacy truth before that day and its
        analytics truth from it, exactly, and no day is billed twice."""
        sim = make_sim("varied", seed=5)
        first = date(2025, 12, 1)
        with contextlib.ExitStack() as stack:
            url = f"sqlite:///{tmp_path / 'a.db'}" if backend == "sqlite" else stack.enter_context(
                private_pg_schema(PG_URL or ""))
            app = watch_app(url, tmp_path)
            stack.callback(app.close)
            iid = connect_sim(app, sim)
            assert CliRunner().invoke(cli, ["integrations", "set-source", str(iid), "analytics"],
                                      env=env(app, tmp_path)).exit_code == 0
            with app.engine.begin() as conn:  # a row outside the days the Analytics API answered: not its bill
                conn.execute(insert(analytics_cost_rows).values(
                    integration_id=iid, day=A_FIRST - timedelta(days=3), grouping="main", model="claude-stray",
                    **dict.fromkeys(("workspace_id", "api_key_id", "actor_type", "actor_id", "context_window",
                                     "inference_geo", "speed", "product", "other"), ""),
                    service_tier="priority", cost_type="tokens", token_type="output_tokens",
                    amount_usd=Decimal("1.50"), list_amount_usd=Decimal("2.00"), currency="USD"))
            records = self.export(app, tmp_path, first, TODAY)
        got: dict[tuple[str, str | None], list[Any]] = defaultdict(lambda: [Decimal(0), Decimal(0), 0, 0, 0, 0])
        for r in records:
            acc = got[(r["ChargePeriodStart"][:10], r["x_Model"] or None)]
            acc[0] += Decimal(r["BilledCost"])
            acc[1] += Decimal(r["ListCost"])
            if r["x_CostType"] == "tokens":
                slot = {"uncached_input_tokens": 2, "output_tokens": 3, "cache_read_input_tokens": 4}.get(
                    r["x_TokenType"], 5)
                acc[slot] += int(r["ConsumedQuantity"])
        want: dict[tuple[str, str | None], list[Any]] = defaultdict(lambda: [Decimal(0), Decimal(0), 0, 0, 0, 0])
        for t in sim.data.truth(0, first, A_FIRST):  # the legacy bill, before the Analytics API's first day
            if t.cost_usd:
                want[(t.date.isoformat(), t.model)][0] += t.cost_usd
                want[(t.date.isoformat(), t.model)][1] += t.cost_usd  # ListCost is BilledCost there
        day = first
        while day < A_FIRST:  # and the legacy usage report's tokens of the charges it bills
            for rec in sim.data.day(0, day).usage:
                if rec.service_tier in LEGACY_COST_TIERS:
                    acc = want[(day.isoformat(), rec.model)]
                    acc[2] += rec.uncached_input_tokens
                    acc[3] += rec.output_tokens
                    acc[4] += rec.cache_read_input_tokens
                    acc[5] += rec.cache_creation_5m + rec.cache_creation_1h
            day += timedelta(days=1)
        for a in analytics_truth(sim.data, 0, A_FIRST, TODAY, "model"):
            acc = want[(a["date"], a["model"])]
            acc[0] += Decimal(a["cost_usd"])
            acc[1] += Decimal(a["list_cost_usd"])
            acc[2:] = [x + y for x, y in zip(acc[2:], (a["input_tokens"], a["output_tokens"], a["cache_read_tokens"],
                                                         a["cache_write_tokens"]), strict=True)]
        assert dict(got) == {k: v for k, v in want.items() if any(v)}
        analytics_rows = [r for r in records if r["ChargePeriodStart"][:10] >= A_FIRST.isoformat()]
        assert {r["ChargeDescription"] for r in analytics_rows} >= {"Output Tokens", "Web Search Requests"}
        assert sum(r["x_ServiceTier"] in PRIORITY_TIERS for r in analytics_rows) > 0
        keys = {(r["ChargePeriodStart"], r["SubAccountId"], r["SkuPriceId"], r["RegionId"]) for r in records}
        assert len(keys) == len(records)


class TestFile:
    def test_formula_cells_are_neutralized(self, tmp_path: Path) -> None:
        """A model id or description that starts like a formula is written as text ('=...), numbers are not."""
        app = watch_app(f"sqlite:///{tmp_path / 'x.db'}", tmp_path)
        try:
            connect_sim(app, make_sim("varied", seed=1), tier="free")
            with app.engine.begin() as conn:
                conn.execute(insert(cost_rows).values(
                    integration_id=1, day=TODAY - timedelta(days=1), workspace_id="@evil", model="=HYPERLINK(\"x\")",
                    cost_type="tokens", token_type="output_tokens", service_tier="standard",
                    context_window="0-200k", inference_geo="global", description="-2+3 Usage", extra="",
                    amount_usd=Decimal("-1.25"), currency="USD"))
            result = CliRunner().invoke(cli, ["export", "--format", "focus", "--since", str(TODAY - timedelta(days=1)),
                                              "--until", str(TODAY - timedelta(days=1))], env=env(app, tmp_path))
        finally:
            app.close()
        assert result.exit_code == 0, result.output
        [row] = [r for r in csv.DictReader(io.StringIO(result.stdout)) if r["x_Model"].startswith("'")]
        assert row["x_Model"] == "'=HYPERLINK(\"x\")" and row["SubAccountId"] == "'@evil"
        assert row["ChargeDescription"] == "'-2+3 Usage" and row["BilledCost"] == "-1.25"
        assert result.stdout.splitlines()[1].endswith("\r") or "\r\n" in result.stdout_bytes.decode()  # RFC 4180

    @pytest.mark.slow  # a year of data
    def test_errors_are_one_line_and_leave_no_file(self, year: tuple[App, SimulatorApp], tmp_path: Path) -> None:
        """Bad usage exits 2 with one line; an unwritable --out leaves nothing behind."""
        app, _ = year
        e = env(app, tmp_path)
        cases = [(["--since", "2026-03-02", "--until", "2026-03-01"], "--until is before --since"),
                 (["--since", "2026-03-01", "--until", "2026-03-02", "--integration", "9"], "no integration 9"),
                 (["--since", "2026-03-01", "--until", "2026-03-02", "--out", str(tmp_path / "no" / "x.csv")],
                  "cannot write")]
        for args, message in cases:
            result = CliRunner().invoke(cli, ["export", "--format", "focus", *args], env=e)
            assert result.exit_code == 2 and message in result.output, result.output
            assert len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "no").exists()
        result = CliRunner().invoke(cli, ["export", "--format", "parquet", "--since", "2026-03-01", "--until",
                                          "2026-03-01"], env=e)
        assert result.exit_code == 2

    @pytest.mark.slow  # a year of data
    def test_one_month_to_stdout_and_by_integration(self, year: tuple[App, SimulatorApp], tmp_path: Path) -> None:
        """Without --out the CSV goes to stdout; --integration keeps that integration's rows."""
        app, sim = year
        result = CliRunner().invoke(cli, ["export", "--format", "focus", "--since", "2026-02-01", "--until",
                                          "2026-02-28", "--integration", "1"], env=env(app, tmp_path))
        assert result.exit_code == 0
        records = list(csv.DictReader(io.StringIO(result.stdout)))
        assert {r["x_IntegrationId"] for r in records} == {"1"}
        assert sum(Decimal(r["BilledCost"]) for r in records) == whole_bill(sim, date(2026, 2, 1), date(2026, 2, 28))


@pytest.mark.slow  # a year of data
class TestParquet:
    def test_the_same_records_typed(self, exported: Any, year: tuple[App, SimulatorApp], tmp_path: Path) -> None:
        """`--format focus-parquet --out`: the CSV's records, column for column, with Decimal columns as exact
        decimals (BilledCost sums to the truth, ListCost to the CSV's), Date/Time columns as UTC timestamps."""
        pq = pytest.importorskip("pyarrow.parquet")
        import pyarrow as pa

        _, csv_records, _ = exported
        app, sim = year
        out = tmp_path / "focus.parquet"
        result = CliRunner().invoke(cli, ["export", "--format", "focus-parquet", "--since", str(FIRST), "--until",
                                          str(TODAY), "--out", str(out)], env=env(app, tmp_path))
        assert result.exit_code == 0, result.output
        table = pq.read_table(out)
        assert table.column_names == list(csv_records[0])
        assert table.schema.field("BilledCost").type == pa.decimal128(38, 16)
        assert table.schema.field("ChargePeriodStart").type == pa.timestamp("ms", tz="UTC")
        rows = table.to_pylist()
        assert len(rows) == len(csv_records) > 5000
        total = sum((r["BilledCost"] for r in rows), Decimal(0))
        assert total == whole_bill(sim, FIRST, TODAY)
        assert f"wrote {len(rows)} FOCUS 1.2 Parquet rows (365 days {FIRST}..{TODAY}, BilledCost total " in result.stderr
        for got, want in zip(rows, csv_records, strict=True):
            for name, value in got.items():
                if value is None:
                    assert want[name] == "", (name, want)
                elif isinstance(value, Decimal):
                    assert value == Decimal(want[name]), (name, value, want[name])
                elif isinstance(value, datetime):
                    assert value.strftime("%Y-%m-%dT%H:%M:%SZ") == want[name]
                else:
                    assert want[name] in (value, "'" + value), (name, value)  # the CSV neutralizes formulas

    def test_needs_out_and_pyarrow(self, year: tuple[App, SimulatorApp], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
        """Parquet is binary: without --out, exit 2 in one line; without pyarrow, one line naming the extra."""
        app, _ = year
        args = ["export", "--format", "focus-parquet", "--since", "2026-03-01", "--until", "2026-03-01"]
        result = CliRunner().invoke(cli, args, env=env(app, tmp_path))
        assert result.exit_code == 2
        assert result.output.strip().splitlines() == [
            "error: --format focus-parquet writes a binary file: give --out FILE"]
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
        result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "x.parquet")], env=env(app, tmp_path))
        assert result.exit_code == 2 and not (tmp_path / "x.parquet").exists()
        assert result.output.strip().splitlines() == [
            "error: --format focus-parquet needs pyarrow, an optional extra: pip install 'cost-worker[parquet]' "
            "(or --format focus, CSV)"]


def test_parquet_refuses_a_value_it_cannot_hold_exactly() -> None:
    """A Decimal with more than 16 decimal places would be rounded by decimal128(38, 16): refused instead."""
    pytest.importorskip("pyarrow")
    from worker.export.parquet import InexactValue, _decimal

    assert _decimal("BilledCost", "0.0000000000000001") == Decimal("1E-16")
    with pytest.raises(InexactValue, match="more than 16 decimal places"):
        _decimal("BilledCost", "0.00000000000000001")
