"""Comparison: a known bill, tracked events with injected drift, and the causes named."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from billgen import PRICES, Call, bill, days, generate_calls, random_org

from worker.reconcile import (
    BilledCell,
    Cause,
    Reconciliation,
    Status,
    TokenCounts,
    TokenType,
    TrackedAggregate,
    TrackedEvent,
    aggregate_events,
    compare,
)

SONNET = "claude-sonnet-4-6"
HAIKU = "claude-haiku-4-5-20251001"
DATES = days(date(2026, 3, 1), 10)
D = {i + 1: day for i, day in enumerate(DATES)}  # D[1] = 2026-03-01


def on(calls: list[Call], day: int, model: str) -> list[Call]:
    return [c for c in calls if c.at.date() == D[day] and c.model == model]


@pytest.fixture(scope="module")
def calls() -> list[Call]:
    return generate_calls(DATES, [SONNET, HAIKU])


def drifting(result: Reconciliation) -> dict[tuple[date, str | None], tuple[Cause, ...]]:
    return {(r.date, r.model or r.cost_type): r.causes for r in result.rows if r.status is Status.DRIFT}


class TestCleanEvents:
    @pytest.mark.parametrize("with_cost", [True, False])
    def test_clean_events_reconcile_to_zero(self, calls: list[Call], with_cost: bool) -> None:
        """Every call tracked once: no drift, zero delta, exact to the last digit."""
        builder = bill(calls)
        tracked = aggregate_events(c.event(with_cost=with_cost) for c in calls)
        result = compare(builder.cells(), tracked.values(), builder.fees())
        assert drifting(result) == {}
        assert result.exit_code == 0
        assert result.summary.delta_usd == 0
        assert result.summary.unexplained_usd == 0
        expected = sum((c.cost() for c in calls), Decimal(0))
        assert result.summary.billed_cost_usd == expected == result.summary.tracked_cost_usd
        assert all(r.cost_delta_usd == 0 for r in result.rows)

    def test_ground_truth_prices(self, calls: list[Call]) -> None:
        """The bill generator's cost is the documented list price (independent check of the fixture)."""
        call = calls[0]
        sonnet = PRICES[SONNET]
        assert sonnet[0] * 1_000_000 == 3 and sonnet[1] * 1_000_000 == 15
        manual = (call.tokens.uncached_input * Decimal("3") + call.tokens.output * Decimal("15")
                  + call.tokens.cache_read * Decimal("0.30") + call.tokens.cache_write_5m * Decimal("3.75")
                  + call.tokens.cache_write_1h * Decimal("6")) / 1_000_000
        assert call.cost() == manual


@pytest.fixture(scope="module")
def result(calls: list[Call]) -> Reconciliation:
    """One comparison with every kind of drift injected (module-scoped: built once)."""
    web_search = {D[9]: Decimal("0.50")}
    builder = bill(calls, web_search=web_search)
    events: list[TrackedEvent] = []
    for call in calls:
        day, model = call.at.date(), call.model
        if day == D[2] and model == SONNET:
            index = int(call.id.rsplit("_", 1)[1])
            if index % 5 == 0:  # drop 20%
                continue
        if day == D[3] and model == SONNET:  # x4, re-sent with fresh tracking ids
            events += [call.event(event_id=f"{call.id}#{n}") for n in range(1, 4)]
        if day == D[4] and model == SONNET:  # cache writes priced at zero
            events.append(call.event(cost_usd=call.cost(zero_cache_writes=True)))
            continue
        if day == D[5] and model == HAIKU:  # cache writes not tracked at all
            tokens = TokenCounts(call.tokens.uncached_input, call.tokens.output, call.tokens.cache_read)
            events.append(call.event(tokens=tokens, cost_usd=None))
            continue
        if day == D[7] and model == SONNET:  # stamped 8 h early (local time read as UTC)
            events.append(call.event(occurred_at=call.at - timedelta(hours=8)))
            continue
        if day == D[10] and model == HAIKU:  # nothing tracked
            continue
        events.append(call.event())
    extra = on(calls, 8, SONNET)[:5]
    events += [c.event(event_id=f"opus-{c.id}", raw_model="claude-opus-4-6", model=None) for c in extra]
    tracked = aggregate_events(events)
    return compare(builder.cells(), tracked.values(), builder.fees(), tolerance_pct=Decimal("1"))


class TestInjectedDrift:

    def test_exactly_the_injected_rows_and_causes(self, result: Reconciliation) -> None:
        """Each injected drift, and nothing else, is named with its cause."""
        assert drifting(result) == {
            (D[2], SONNET): (Cause.MISSING_EVENTS,),
            (D[3], SONNET): (Cause.DUPLICATED_EVENTS,),
            (D[4], SONNET): (Cause.CACHE_PRICING,),
            (D[5], HAIKU): (Cause.CACHE_WRITES_MISSING,),
            (D[6], SONNET): (Cause.DAY_BOUNDARY,),
            (D[7], SONNET): (Cause.DAY_BOUNDARY,),
            (D[8], "claude-opus-4-6"): (Cause.NOT_BILLED, Cause.UNMATCHED_MODEL),
            (D[9], "web_search"): (Cause.FEES_NOT_TRACKED,),
            (D[10], HAIKU): (Cause.UNTRACKED,),
        }
        assert result.exit_code == 3

    def test_deltas_are_priced_from_the_bill(self, result: Reconciliation, calls: list[Call]) -> None:
        """Cost-less events are priced at the day's implied rates: the gap is the cache-write cost."""
        row = next(r for r in result.rows if r.date == D[5] and r.model == HAIKU)
        writes = sum((c.cost() - c.cost(zero_cache_writes=True) for c in on(calls, 5, HAIKU)), Decimal(0))
        assert row.cost_delta_usd == -writes
        assert row.token_delta(TokenType.CACHE_WRITE) == -row.billed(TokenType.CACHE_WRITE)

    def test_summary(self, result: Reconciliation) -> None:
        """Bill, tracked total, and a remainder that only tolerated noise could leave."""
        summary = result.summary
        assert summary.delta_usd == summary.tracked_cost_usd - summary.billed_cost_usd
        assert summary.unexplained_usd == summary.delta_usd - summary.explained_usd
        assert summary.unexplained_usd == 0
        assert summary.drift_rows == 9

    def test_duplicated_ratio_and_untracked_cost(self, result: Reconciliation, calls: list[Call]) -> None:
        """x4 shows as +300%; the untracked day's delta is its whole bill."""
        dup = next(r for r in result.rows if r.date == D[3] and r.model == SONNET)
        assert dup.cost_delta_pct == Decimal("300.00")
        untracked = next(r for r in result.rows if r.date == D[10] and r.model == HAIKU)
        assert untracked.cost_delta_usd == -sum((c.cost() for c in on(calls, 10, HAIKU)), Decimal(0))


class TestRules:
    def test_duplicate_ids_are_stored_once(self, calls: list[Call]) -> None:
        """Re-sent events with the SAME id are counted as duplicates, not as usage."""
        day_calls = on(calls, 1, SONNET)
        tracked = aggregate_events([c.event() for c in day_calls for _ in range(4)])
        (aggregate,) = tracked.values()
        assert aggregate.events == len(day_calls)
        assert aggregate.duplicate_ids == 3 * len(day_calls)
        result = compare(bill(day_calls).cells(), tracked.values())
        assert drifting(result) == {}

    def test_duplicate_ids_explain_a_surplus(self) -> None:
        """A surplus that is not an integer multiple is still blamed on duplicates when ids repeated."""
        day = D[1]
        cell = BilledCell(day, SONNET, None, TokenCounts(1000, 100), None)
        tracked = TrackedAggregate(day, SONNET, None, TokenCounts(1500, 150), TokenCounts(), Decimal("0.00375"),
                                   events=3, duplicate_ids=1)
        result = compare([cell], [tracked], prices=bill(on(generate_calls([day], [SONNET], 2), 1, SONNET)).prices())
        assert drifting(result)[(day, SONNET)][0] is Cause.DUPLICATED_EVENTS

    def test_cache_folded_into_input(self, calls: list[Call]) -> None:
        """Cache tokens counted as input (MarginFront --fold-cache) are recognized."""
        day_calls = on(calls, 1, SONNET)
        folded = [c.event(tokens=TokenCounts(c.tokens.uncached_input + c.tokens.cache_read + c.tokens.cache_write,
                                             c.tokens.output), cost_usd=c.cost()) for c in day_calls]
        result = compare(bill(day_calls).cells(), aggregate_events(folded).values())
        assert drifting(result) == {(D[1], SONNET): (Cause.CACHE_FOLDED_INTO_INPUT,)}

    def test_tolerance_absorbs_small_gaps(self, calls: list[Call]) -> None:
        """One missing call out of 48 is drift at 1% and ok at 5%."""
        day_calls = on(calls, 1, SONNET)
        tracked = aggregate_events(c.event() for c in day_calls[1:])
        cells = bill(day_calls).cells()
        assert compare(cells, tracked.values(), tolerance_pct=Decimal("1")).exit_code == 3
        assert compare(cells, tracked.values(), tolerance_pct=Decimal("5")).exit_code == 0

    def test_rows_by_workspace_when_both_sides_have_it(self, calls: list[Call]) -> None:
        """With workspace ids on events, rows split per workspace; a missing workspace is found."""
        day_calls = on(calls, 1, SONNET)
        builder = bill(day_calls, by="workspace")
        tracked = aggregate_events((c.event() for c in day_calls if c.workspace_id == "wrkspc_0"), by="workspace")
        result = compare(builder.cells(), tracked.values())
        assert {(r.key, r.status, r.causes) for r in result.rows} == {
            ("wrkspc_0", Status.OK, ()),
            ("wrkspc_1", Status.DRIFT, (Cause.UNTRACKED,)),
        }

    def test_keys_collapse_when_events_have_none(self, calls: list[Call]) -> None:
        """A tracker without workspace ids is compared per model, not reported as all-untracked."""
        day_calls = on(calls, 1, SONNET)
        builder = bill(day_calls, by="workspace")
        tracked = aggregate_events(c.event(workspace_id=None) for c in day_calls)
        result = compare(builder.cells(), tracked.values())
        assert [(r.key, r.status) for r in result.rows] == [(None, Status.OK)]

    def test_api_key_cells_are_priced_from_the_bill(self, calls: list[Call]) -> None:
        """The cost report has no API-key grouping: per-key billed cost comes from implied prices."""
        day_calls = on(calls, 1, SONNET)
        builder = bill(day_calls, by="api_key")
        tracked = aggregate_events((c.event(api_key_id=f"apikey_{c.workspace_id[-1]}") for c in day_calls),
                                   by="api_key")
        result = compare(builder.cells(), tracked.values(), prices=builder.prices())
        assert [(r.key, r.status) for r in result.rows] == [("apikey_0", Status.OK), ("apikey_1", Status.OK)]
        assert result.summary.billed_cost_usd == sum((c.cost() for c in day_calls), Decimal(0))

    def test_accepted_causes(self, calls: list[Call]) -> None:
        """A drift row is accepted only when all its causes are; accepted rows stay drift rows but exit 0."""
        day_calls = on(calls, 1, SONNET)
        builder = bill(day_calls, web_search={D[1]: Decimal("0.50")})
        tracked = aggregate_events([c.event() for c in day_calls] + [c.event(event_id=f"opus-{c.id}",
                                   raw_model="claude-opus-4-6", model=None) for c in day_calls[:2]])

        def run(*accept: Cause | str) -> Reconciliation:
            return compare(builder.cells(), tracked.values(), builder.fees(), accept=accept)

        assert run().exit_code == 3 and run().summary.accepted_rows == 0
        fees = run(Cause.FEES_NOT_TRACKED)
        assert fees.exit_code == 3 and (fees.summary.drift_rows, fees.summary.accepted_rows) == (2, 1)
        assert [r.accepted for r in fees.rows if r.status is Status.DRIFT] == [False, True]
        # (not_billed, unmatched_model): accepting one of the two is not enough
        assert run("fees_not_tracked", "not_billed").exit_code == 3
        both = run("fees_not_tracked", "not_billed", "unmatched_model")
        assert both.exit_code == 0 and both.summary.drift_rows == 2
        with pytest.raises(ValueError):
            run("fees")

    def test_tolerance_must_not_be_negative(self) -> None:
        """A negative tolerance is a caller error."""
        with pytest.raises(ValueError):
            compare([], [], tolerance_pct=Decimal("-1"))


class TestDayBoundary:
    def test_whole_day_shifted_into_the_previous_one(self) -> None:
        """All of a day's calls stamped 8 h early: a doubled day and an empty one pair up."""
        dates = days(date(2026, 3, 1), 3)
        calls = generate_calls(dates, [SONNET], per_day=10)  # all calls before 05:00 UTC
        shifted = [c.event(occurred_at=c.at - timedelta(hours=8)) if c.at.date() == dates[1] else c.event()
                   for c in calls]
        result = compare(bill(calls).cells(), aggregate_events(shifted).values())
        assert drifting(result) == {(dates[0], SONNET): (Cause.DAY_BOUNDARY,), (dates[1], SONNET): (Cause.DAY_BOUNDARY,)}
        assert result.summary.unexplained_usd == 0

    ORGS = range(60)
    """Generated organizations per variant: on today's rules about half of the cost-less ones fail."""

    @pytest.mark.slow  # 60 generated organizations per variant
    @pytest.mark.parametrize("variant", ["evening_to_next_day", "morning_to_previous_day", "evening_lost"])
    def test_a_shifted_day_over_generated_organizations(self, variant: str) -> None:
        """One day's calls cross midnight (clock 8 h ahead: 16:00-24:00 into the next day; 8 h behind:
        00:00-08:00 into the previous one) in 60 generated organizations, half tracked with costs and
        half without: both rows name `day_boundary` (or stay within tolerance), every other row is ok.
        The same calls lost instead of moved are never taken for a shift."""
        dates = days(date(2026, 3, 1), 4)
        shifted_day = dates[1] if variant != "morning_to_previous_day" else dates[2]
        found = 0
        for seed in self.ORGS:
            calls = random_org(seed, dates)
            with_cost = seed % 2 == 0
            events = []
            for call in calls:
                event = call.event(with_cost=with_cost)
                if call.at.date() == shifted_day:
                    if variant == "evening_to_next_day" and call.at.hour >= 16:
                        event = call.event(with_cost=with_cost, occurred_at=call.at + timedelta(hours=8))
                    elif variant == "morning_to_previous_day" and call.at.hour < 8:
                        event = call.event(with_cost=with_cost, occurred_at=call.at - timedelta(hours=8))
                    elif variant == "evening_lost" and call.at.hour >= 16:
                        continue
                events.append(event)
            builder = bill(calls)
            result = compare(builder.cells(), aggregate_events(events).values(), prices=builder.prices())
            pair = {dates[1], dates[2]}
            for row in result.rows:
                where = f"org {seed} ({'with' if with_cost else 'without'} costs) {row.date} {row.model}"
                if row.date not in pair:
                    assert row.status is Status.OK, where
                elif variant == "evening_lost":
                    assert Cause.DAY_BOUNDARY not in row.causes, where
                    assert row.status is Status.OK or row.date == dates[1], where
                else:
                    assert row.status is Status.OK or row.causes == (Cause.DAY_BOUNDARY,), f"{where}: {row.causes}"
                    found += row.causes == (Cause.DAY_BOUNDARY,)
        if variant != "evening_lost":
            assert found >= len(self.ORGS)  # the shift is material: most organizations show it on both days


class TestBillBuilder:
    def test_costs_are_summed_per_cell_and_token_type_exactly(self) -> None:
        """Several cost rows of one cell and type add up exactly, each type in its own field; fees apart."""
        from worker.reconcile import BillBuilder
        from worker.reconcile.pricing import TokenCosts

        day = D[1]
        builder = BillBuilder("workspace")
        for amount, token_type, workspace in [("0.10", "output_tokens", "w1"), ("0.05", "output_tokens", "w1"),
                                              ("1E+1", "cache_read_input_tokens", "w1"), ("0.3", "output_tokens", "w2"),
                                              ("0.001", "brand_new_type", "w1")]:
            builder.add_cost(day, Decimal(amount), cost_type="tokens", model=SONNET, token_type=token_type,
                             workspace_id=workspace)
        builder.add_cost(day, Decimal("0.25"), cost_type="web_search", workspace_id="w1")
        builder.add_usage(day, SONNET, TokenCounts(output=10), workspace_id="w1")
        cells = {cell.key: cell for cell in builder.cells()}
        assert cells["w1"].cost == TokenCosts(output=Decimal("0.15"), cache_read=Decimal("10"), other=Decimal("0.001"))
        assert str(cells["w1"].cost.cache_read) == "10"  # summed from zero, as TokenCosts additions do
        assert cells["w2"].cost == TokenCosts(output=Decimal("0.3")) and cells["w2"].tokens == TokenCounts()
        assert [(f.key, f.cost_type, f.cost_usd) for f in builder.fees()] == [("w1", "web_search", Decimal("0.25"))]
        assert builder.prices().unit_price(day, SONNET, "output") == Decimal("0.045")

    def test_api_key_cells_have_no_cost(self) -> None:
        """The cost report has no API-key grouping: cells per key are priced from the day's rates."""
        from worker.reconcile import BillBuilder

        builder = BillBuilder("api_key")
        builder.add_cost(D[1], Decimal("1"), cost_type="tokens", model=SONNET, token_type="output_tokens")
        builder.add_usage(D[1], SONNET, TokenCounts(output=100), api_key_id="k1")
        (cell,) = builder.cells()
        assert cell.key == "k1" and cell.cost is None
        assert builder.prices().unit_price(D[1], SONNET, "output") == Decimal("0.01")
