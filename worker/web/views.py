"""What the dashboard and the API read: overview, integrations, runs, budgets, anomalies, drift.

Read-only, one connection each, reusing what the commands compute (`report --by`, `budgets`, `anomalies`,
`integrations list`, `sources compare`), so a page never disagrees with the CLI. Money stays Decimal.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, select

from worker.integrations import integration_records
from worker.money import money_sum, money_text
from worker.settings import Settings
from worker.sources.compare import compare
from worker.sources.report import _name as key_name
from worker.sources.report import report_by
from worker.storage import analytics as astore
from worker.storage import analytics_totals, repo
from worker.storage import totals as legacy_totals
from worker.storage.tables import reconcile_runs, spend_anomalies
from worker.watch.anomalies import Thresholds, find
from worker.watch.budgets import BudgetError, evaluate

TOP = 10
RECENT_RUNS = 15


def integration_summaries(conn: Connection, integration_id: int | None = None) -> list[dict[str, Any]]:
    """`integrations list --format json`'s records plus backfill progress (days stored of the window)."""
    records = integration_records(conn, integration_id)
    by_id = {i.id: i for i in repo.list_integrations(conn)} if records else {}
    for record in records:
        done, total = repo.backfill_days(by_id[record["id"]])
        record["backfill_days_done"], record["backfill_days_total"] = done, total
    return records


def budgets(conn: Connection, settings: Settings, today: date) -> list[dict[str, Any]]:
    """`budgets --format json` as of today; a budget that cannot be evaluated carries its one-line `error`."""
    out = []
    for budget in settings.budgets:
        try:
            out.append(evaluate(conn, budget, today, today).as_json())
        except BudgetError as exc:
            out.append({"name": budget.name, "scope": budget.scope, "error": str(exc)})
    return out


def anomalies(conn: Connection, settings: Settings, since: date, until: date, today: date,
              integration_id: int | None = None) -> list[dict[str, Any]]:
    """`anomalies --format json`: the complete days of [since, until] judged now."""
    thresholds = Thresholds(settings.anomaly_min_score, settings.anomaly_min_usd)
    return [a.as_json() for a in find(conn, since, until, today, thresholds,
                                      None if integration_id is None else (integration_id,))]


def recent_anomalies(conn: Connection, limit: int = TOP) -> list[dict[str, Any]]:
    """The newest anomalies `run` recorded (its evaluation keeps the trailing judged days)."""
    a = spend_anomalies.c
    rows = conn.execute(select(spend_anomalies).order_by(a.day.desc(), a.id.desc()).limit(limit)).all()
    return [{"date": r.day.isoformat(), "integration_id": r.integration_id, "scope": r.scope, "key": r.key,
             "cost_usd": money_text(r.cost_usd), "baseline_usd": money_text(r.baseline_usd),
             "score": round(r.score, 2), "direction": r.direction} for r in rows]


def latest_drift(conn: Connection) -> list[dict[str, Any]]:
    """The latest `reconcile` of each scope (an integration, or all): rows beyond tolerance and the delta."""
    r = reconcile_runs.c
    latest = select(func.max(r.id)).group_by(r.integration_id).scalar_subquery()
    out = []
    for run in conn.execute(select(reconcile_runs).where(r.id.in_(latest)).order_by(r.id)).all():
        out.append({"integration_id": run.integration_id, "since": run.since.isoformat(),
                    "until": run.until.isoformat(), "finished_at": run.finished_at.isoformat(),
                    "billed_cost_usd": money_text(run.billed_cost_usd),
                    "tracked_cost_usd": money_text(run.tracked_cost_usd), "delta_usd": money_text(run.delta_usd),
                    "unexplained_usd": money_text(run.unexplained_usd), "rows": run.rows,
                    "drift_rows": run.drift_rows, "status": "drift" if run.drift_rows else "ok"})
    return out


@dataclass
class Ranked:
    key: str | None
    name: str | None
    cost_usd: Decimal


@dataclass
class Overview:
    since: date
    until: date
    total_usd: Decimal
    daily: dict[date, dict[str | None, Decimal]]  # day -> model -> cost (bill of record)
    models: list[str | None]  # by spend over the range, largest first
    top_api_keys: list[Ranked]
    top_users: list[Ranked] | None  # None: no integration has the Analytics API synced
    budgets: list[dict[str, Any]]
    anomalies: list[dict[str, Any]]
    drift: list[dict[str, Any]]
    integrations: list[dict[str, Any]] = field(default_factory=list)


def _ranked(conn: Connection, since: date, until: date, by: str) -> list[Ranked]:
    """The TOP API keys (by=api_key) or actors (by=actor) of the Analytics API's bill, as `report --by BY
    --source analytics` sums them over days, models and integrations, read from its daily totals."""
    totals: dict[str | None, Decimal] = defaultdict(Decimal)
    names: dict[str | None, str | None] = {}
    known = astore.names(conn)
    for iid, key, cost in analytics_totals.per_key(conn, since, until, by):
        totals[key] = money_sum((totals[key], cost))
        names[key] = names.get(key) or key_name(known, by, iid, key)
    order = sorted(totals, key=lambda k: (-totals[k], k or ""))[:TOP]
    return [Ranked(k, names.get(k), totals[k]) for k in order]


def daily_by_model(conn: Connection, since: date, until: date) -> list[tuple[date, str | None, Decimal]]:
    """(day, model, cost) of each day's bill of record, as `report --by model` reads it (the Analytics API's
    bill on the days it covers, the legacy reports elsewhere), from the two daily totals tables."""
    spans = {iid: (c.first, c.until) for iid, c in astore.coverage(conn).items()}
    legacy = [(day, model, cost) for day, model, cost, *_ in legacy_totals.read_grouped(conn, since, until, None, spans)]
    return [(day, model or None, cost)
            for day, model, cost in [*legacy, *analytics_totals.daily_by_model(conn, since, until, spans)]]


def overview(conn: Connection, settings: Settings, since: date, until: date, today: date) -> Overview:
    daily: dict[date, dict[str | None, Decimal]] = defaultdict(dict)
    per_model: dict[str | None, Decimal] = defaultdict(Decimal)
    for day, model, cost in daily_by_model(conn, since, until):
        models = daily[day]
        models[model] = money_sum((models.get(model, Decimal(0)), cost))
        per_model[model] = money_sum((per_model[model], cost))
    synced = any(s.refreshed_at is not None for s in astore.states(conn).values())
    return Overview(
        since, until, money_sum(per_model.values()), dict(daily),
        sorted(per_model, key=lambda m: (-per_model[m], m is None, m or "")),
        # Only the Analytics API attributes cost to API keys and users (legacy rows have no key).
        _ranked(conn, since, until, "api_key") if synced else [],
        _ranked(conn, since, until, "actor") if synced else None,
        budgets(conn, settings, today), recent_anomalies(conn), latest_drift(conn),
        integration_summaries(conn))


@dataclass
class Detail:
    integration: dict[str, Any]
    runs: list[dict[str, Any]]
    priority_gap_usd: Decimal | None  # None: the integration does not sync both bills
    since: date
    until: date
    total_usd: Decimal


def integration_detail(conn: Connection, integration_id: int, since: date, until: date) -> Detail | None:
    found = integration_summaries(conn, integration_id)
    if not found:
        return None
    record = found[0]
    gap = None
    if record["source"].startswith("both"):
        gap = compare(conn, since, until, integration_id).total("priority_tier_usd")
    total = money_sum(r.cost_usd for r in report_by(conn, since, until, "model", None, integration_id))
    return Detail(record, run_records(conn, integration_id), gap, since, until, total)


def run_records(conn: Connection, integration_id: int, limit: int = RECENT_RUNS) -> list[dict[str, Any]]:
    out = []
    for run in repo.recent_runs(conn, integration_id, limit):
        out.append({k: (v.isoformat() if isinstance(v, date) else v) for k, v in run.items()})
    return out


def default_range(today: date, days: int = 30) -> tuple[date, date]:
    return today - timedelta(days=days - 1), today
