"""The /metrics series of budgets and spend anomalies, read from what `run`'s evaluation stored.

Database-backed like the per-integration series, so every replica reports the same values (aggregate
with `max`). Returned as prometheus_client metric families, for a custom collector to yield.
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Connection, Row, func, select

from worker.storage.tables import budget_states, spend_anomalies

_SCOPE_RANK = {"integration": 0, "workspace": 1, "model": 2, "api_key": 3, "actor": 4}


def watch_families(conn: Connection) -> list[GaugeMetricFamily]:
    """Budget limit, spend and forecast per budget; the latest spend anomaly per integration."""
    limit = GaugeMetricFamily("cost_worker_budget_limit_usd", "Budget limit of the current period (USD).",
                              labels=["budget"])
    spend = GaugeMetricFamily("cost_worker_budget_spend_usd",
                              "Budget: spend of the current period so far, from the synced bill (USD).",
                              labels=["budget"])
    projected = GaugeMetricFamily("cost_worker_budget_forecast_usd",
                                  "Budget: spend forecast to the end of the current period (USD).", labels=["budget"])
    status = GaugeMetricFamily("cost_worker_budget_status",
                               "Budget: 1 for its status (ok, warn, over, forecast_over), else 0.",
                               labels=["budget", "status"])
    evaluated = GaugeMetricFamily("cost_worker_budget_evaluated_timestamp_seconds",
                                  "Unix time the budgets were last evaluated by `run`.")
    b = budget_states.c
    latest_eval = None
    for row in conn.execute(select(budget_states).order_by(b.name)):
        limit.add_metric([row.name], float(row.limit_usd))
        spend.add_metric([row.name], float(row.spend_usd))
        projected.add_metric([row.name], float(row.forecast_usd))
        for s in ("ok", "warn", "over", "forecast_over"):
            status.add_metric([row.name, s], 1.0 if row.status == s else 0.0)
        latest_eval = max(latest_eval or row.evaluated_at, row.evaluated_at)
    if latest_eval is not None:
        evaluated.add_metric([], latest_eval.timestamp())

    day = GaugeMetricFamily("cost_worker_spend_anomaly_last_day_timestamp_seconds",
                            "Start (UTC) of the latest day with a spend anomaly of the integration.",
                            labels=["integration_id"])
    score = GaugeMetricFamily("cost_worker_spend_anomaly_last_score",
                              "Score of that day's strongest anomaly (positive: spike, negative: drop).",
                              labels=["integration_id"])
    cost = GaugeMetricFamily("cost_worker_spend_anomaly_last_cost_usd", "Spend of that anomaly's day and key (USD).",
                             labels=["integration_id"])
    baseline = GaugeMetricFamily("cost_worker_spend_anomaly_last_baseline_usd",
                                 "Usual spend (baseline) of that day and key (USD).", labels=["integration_id"])
    info = GaugeMetricFamily("cost_worker_spend_anomaly_last_info",
                             "The latest spend anomaly of the integration (value 1) with its day, scope, key and "
                             "direction.", labels=["integration_id", "date", "scope", "key", "direction"])
    a = spend_anomalies.c
    last_day = (select(a.integration_id, func.max(a.day).label("day")).group_by(a.integration_id)).subquery()
    # A removed integration's anomalies go with it (ON DELETE CASCADE, and repo.delete_integration).
    rows = conn.execute(select(spend_anomalies).join(
        last_day, (a.integration_id == last_day.c.integration_id) & (a.day == last_day.c.day))).all()
    strongest: dict[int, Row[Any]] = {}
    for row in sorted(rows, key=lambda r: (_SCOPE_RANK.get(r.scope, 9), -abs(r.score), r.key)):
        strongest.setdefault(row.integration_id, row)
    for iid in sorted(strongest):
        row = strongest[iid]
        label = [str(iid)]
        day.add_metric(label, datetime.combine(row.day, time(), UTC).timestamp())
        score.add_metric(label, row.score)
        cost.add_metric(label, float(row.cost_usd))
        baseline.add_metric(label, float(row.baseline_usd))
        info.add_metric([str(iid), row.day.isoformat(), row.scope, row.key, row.direction], 1.0)
    return [limit, spend, projected, status, evaluated, day, score, cost, baseline, info]
