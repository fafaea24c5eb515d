"""Budgets: spend of a UTC month or day against a limit, with a forecast to the period's end and a status.

`spend_usd` is the synced bill (the legacy cost report; for an `api_key` or `actor` scope the Analytics
API's, the only one with those dimensions, which must cover the whole period: else BudgetError), exact,
from the period's start through the evaluation day (`at`, inclusive). `forecast_usd` adds the expected
spend (worker.watch.forecast, fitted on the complete days before) of the period's days after `at`, and for
the days up to `at` whose bill is not complete yet (today, the day of the last sync, days not synced
since) whatever they are still expected to add beyond what is billed so far; the projection is rounded to the cent. Status, first match wins:
`over` (spend > limit), `forecast_over` (forecast > limit), `warn` (spend >= warn_at x limit), `ok`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from sqlalchemy import Connection

from worker.money import money_sum, money_text
from worker.settings import Budget
from worker.storage import analytics, repo
from worker.watch import forecast
from worker.watch.spend import (
    Coverage,
    Filter,
    analytics_coverage,
    combined,
    coverage,
    daily_spend,
    workspace_key,
)

STATUSES = ("ok", "warn", "over", "forecast_over")
CENT = Decimal("0.01")


class BudgetError(Exception):
    """A budget that cannot be evaluated (its integration is not connected, or a key or actor scope without the
    Analytics API's bill for its period); one line naming it."""


@dataclass(frozen=True)
class BudgetStatus:
    name: str
    scope: str
    period: str
    period_start: date
    period_end: date  # exclusive
    limit_usd: Decimal
    spend_usd: Decimal
    forecast_usd: Decimal
    status: str

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "scope": self.scope, "period_start": self.period_start.isoformat(),
                "period_end": self.period_end.isoformat(), "limit_usd": money(self.limit_usd),
                "spend_usd": money(self.spend_usd), "forecast_usd": money(self.forecast_usd),
                "status": self.status}


def money(value: Decimal) -> str:
    """Exact dollars with at least two decimals (`18.432075`, `5000.00`): never a float, never rounded."""
    return money_text(value)


def period_of(budget: Budget, at: date) -> tuple[date, date]:
    """The UTC period `[start, end)` holding `at`."""
    if budget.period == "day":
        return at, at + timedelta(days=1)
    start = at.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def resolve_integrations(conn: Connection, budget: Budget) -> tuple[int, ...] | None:
    """The budget's integration as ids (None: every integration); raises BudgetError for an unknown one."""
    if budget.integration is None:
        return None
    rows = repo.integration_labels(conn).items()
    wanted = budget.integration
    if isinstance(wanted, int):
        ids = [iid for iid, _ in rows if iid == wanted]
    else:
        ids = [iid for iid, label in rows if label == wanted] or [
            iid for iid, _ in rows if wanted.isdigit() and iid == int(wanted)]
    if not ids:
        raise BudgetError(f"budget {budget.name!r}: no integration {wanted!r} (see `cost-worker integrations list`)")
    return tuple(ids)


def analytics_scope(conn: Connection, budget: Budget, ids: tuple[int, ...] | None, start: date) -> dict[int, Coverage]:
    """The Analytics API's coverage of every integration of a key or actor budget; BudgetError (naming the
    integration and what to do) when one of them has no Analytics API bill, or it starts after `start`."""
    labels = repo.integration_labels(conn)
    wanted = ids if ids is not None else tuple(sorted(labels))
    what = f"budget {budget.name!r}: an api_key or actor scope needs the Analytics API's bill"
    if not wanted:
        raise BudgetError(f"{what}, and no integration is connected")
    covered = analytics_coverage(conn, wanted)
    for iid in wanted:
        name = f"integration {iid} ({labels.get(iid, '?')})"
        cover = covered.get(iid)
        if cover is None:
            narrow = "" if ids is not None else "; or narrow the budget to an `integration` that has it"
            raise BudgetError(f"{what}, which {name} has not: {_why_no_analytics(conn, iid)}{narrow}")
        if cover.start > start:
            raise BudgetError(f"{what} for the whole period, and that of {name} starts {cover.start}, after "
                              f"the period's start {start}")
    return covered


def _why_no_analytics(conn: Connection, iid: int) -> str:
    integration = repo.get_integration(conn, iid)
    state = analytics.get_state(conn, iid)
    if integration is not None and integration.source == "legacy":
        return f"its source is legacy (`cost-worker integrations set-source {iid} both`)"
    if state is not None and state.status == "refused":
        return "the Analytics API refuses it (HIPAA readiness; the daily sync asks again)"
    return "none of its days are stored yet (its backfill has not reached them)"


def evaluate(conn: Connection, budget: Budget, at: date, today: date) -> BudgetStatus:
    """The budget as of `at` (inclusive; at most `today`, the current UTC date)."""
    start, end = period_of(budget, at)
    ids = resolve_integrations(conn, budget)
    actors = None
    if budget.actor is not None:
        actors = tuple(analytics.actor_ids(conn, budget.actor, ids))
        if not actors:
            raise BudgetError(f"budget {budget.name!r}: no user with the email {budget.actor!r} in the Analytics "
                              "API's bill (users are known once they have spent)")
    where = Filter(ids, None if budget.workspace is None else workspace_key(budget.workspace), budget.model,
                   budget.api_key, actors)
    covers = analytics_scope(conn, budget, ids, start) if budget.analytics else coverage(conn, ids)
    cover = combined(covers.values())
    complete = min(at + timedelta(days=1), today, cover.complete if cover else today)  # days before it: final
    history_from = min(start, complete - timedelta(days=forecast.HISTORY_DAYS))
    daily = daily_spend(conn, history_from, at + timedelta(days=1), where)
    spend = money_sum(v for d, v in daily.items() if start <= d <= at)
    model = forecast.fit(daily, complete - timedelta(days=1), cover.start if cover else None)
    ahead = forecast.projection(model, at + timedelta(days=1), end)
    day = max(complete, start)
    while day <= at:  # billed so far, not final: expect at least the usual
        ahead += max(Decimal(0), model.expected(day) - daily.get(day, Decimal(0)))
        day += timedelta(days=1)
    projected = (spend + ahead.quantize(CENT, rounding=ROUND_HALF_EVEN)) if ahead else spend
    limit = budget.limit_usd
    if spend > limit:
        status = "over"
    elif projected > limit:
        status = "forecast_over"
    elif spend >= budget.warn_at * limit:
        status = "warn"
    else:
        status = "ok"
    return BudgetStatus(budget.name, budget.scope, budget.period, start, end, limit, spend, projected, status)
