"""Spend anomalies: a day's spend per integration, workspace and model (the legacy bill) and per API key and
actor (the Analytics API's bill, where an integration has it) against its trailing 28 days.

The method (argued in docs/watch.md): spend is multiplicative (a 5x day and a day at a fifth are the
same size of surprise), so every value is taken as a logarithm, with a floor of 1 % of the window's
median so a day without spend is "about a hundredth of usual", not minus infinity. The baseline of a
day is the median of the same weekday in the window (four values: one spike or outage among them
cannot move it), which makes weekends their own normal. The spread is a robust standard deviation
from the differences between same-weekday values (1.4826 x median |difference| / sqrt 2, like a
pooled MAD that the weekly rhythm does not inflate), widened by 1.17 for the uncertainty of a
four-value median and floored at 0.1 (10 %) so a near-constant series does not alarm at a cent.

A day is an anomaly when its score (log distance from the baseline in spreads) is at least
`anomaly_min_score` either way, it is at least double (a spike) or at most half (a drop) the
baseline, and it is at least `anomaly_min_usd` dollars off. A series is judged only with 14 or more
known days in its window (days before the bill's coverage are unknown, not zero) of which at least
three quarters had spend: intermittent spend has no baseline. Only complete days are judged: not
today, nor the day of an integration's last sync or later (partial or not synced yet), nor for keys and
actors a day after the Analytics API's latest `data_refreshed_at`; their window knows only the days the
Analytics API's bill covers. Judging reads the stored bill as it is now, so a day restated
upstream and re-synced is judged again on its new numbers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from statistics import median
from typing import Any

from sqlalchemy import Connection

from worker.money import EXACT
from worker.storage.analytics import SpendKey
from worker.watch.budgets import money
from worker.watch.spend import (
    Coverage,
    Filter,
    Grain,
    analytics_by_key,
    analytics_coverage,
    coverage,
    spend_by_grain,
)

SCOPES = ("integration", "workspace", "model", "api_key", "actor")
TOTAL_KEY = "total"  # the key of the integration scope
DEFAULT_WORKSPACE_KEY = "default"
NO_MODEL_KEY = "(no model)"  # web search, code execution and other costs without a model
WINDOW_DAYS = 28
MIN_KNOWN_DAYS = 14
MIN_ACTIVE_SHARE = 0.75
MIN_RATIO = 2.0
SCALE_FLOOR = 0.1
MEDIAN_OF_FOUR = 1.17  # sqrt(1 + 0.36): a four-value median's own standard error is about 0.6 of the spread
ZERO_FLOOR = 0.01
CENT = Decimal("0.01")

SeriesKey = tuple[int, str, str]
"""(integration_id, scope, key)."""


@dataclass(frozen=True)
class Thresholds:
    min_score: float = 3.5
    min_usd: Decimal = Decimal(1)


@dataclass(frozen=True)
class Judgement:
    score: float
    baseline_usd: Decimal
    direction: str | None  # spike | drop | None (not an anomaly)


@dataclass(frozen=True)
class Anomaly:
    date: date
    integration_id: int
    scope: str
    key: str
    cost_usd: Decimal
    baseline_usd: Decimal
    score: float
    direction: str

    def as_json(self) -> dict[str, Any]:
        return {"date": self.date.isoformat(), "integration_id": self.integration_id, "scope": self.scope,
                "key": self.key, "cost_usd": money(self.cost_usd), "baseline_usd": money(self.baseline_usd),
                "score": round(self.score, 2), "direction": self.direction}


def judge(series: Mapping[date, Decimal], day: date, known_from: date | None,
          thresholds: Thresholds = Thresholds()) -> Judgement | None:
    """Judge `day` of one daily series against its `WINDOW_DAYS` days before it; None when not judged."""
    window = [day - timedelta(days=i) for i in range(1, WINDOW_DAYS + 1)]
    window = [d for d in window if known_from is None or d >= known_from]
    if len(window) < MIN_KNOWN_DAYS:
        return None
    values = {d: float(series.get(d, 0)) for d in window}
    if sum(v > 0 for v in values.values()) < MIN_ACTIVE_SHARE * len(window):
        return None
    floor = ZERO_FLOOR * median(values.values())
    if floor <= 0:
        return None
    logs = {d: math.log(v + floor) for d, v in values.items()}
    by_weekday: dict[int, list[float]] = defaultdict(list)
    for d, x in logs.items():
        by_weekday[d.weekday()].append(x)
    same = by_weekday.get(day.weekday())
    if not same:
        return None
    pairs = [abs(a - b) for xs in by_weekday.values() for i, a in enumerate(xs) for b in xs[i + 1:]]
    spread = 1.4826 * median(pairs) / math.sqrt(2) if pairs else 0.0
    spread = max(spread * MEDIAN_OF_FOUR, SCALE_FLOOR)
    expected = median(same)
    baseline = max(math.exp(expected) - floor, 0.0)
    cost = series.get(day, Decimal(0))
    score = (math.log(float(cost) + floor) - expected) / spread
    base = Decimal(baseline).quantize(CENT, rounding=ROUND_HALF_EVEN)
    direction = None
    if score >= thresholds.min_score and float(cost) >= MIN_RATIO * baseline and cost - base >= thresholds.min_usd:
        direction = "spike"
    elif score <= -thresholds.min_score and float(cost) <= baseline / MIN_RATIO and base - cost >= thresholds.min_usd:
        direction = "drop"
    return Judgement(score, base, direction)


def series_by_key(grains: Iterable[tuple[Grain, Decimal]]) -> dict[SeriesKey, dict[date, Decimal]]:
    """The daily series of every (integration, scope, key) the grains touch."""
    out: dict[SeriesKey, dict[date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for (iid, day, workspace, model), amount in grains:
        for key in ((iid, "integration", TOTAL_KEY), (iid, "workspace", workspace or DEFAULT_WORKSPACE_KEY),
                    (iid, "model", model or NO_MODEL_KEY)):
            series = out[key]
            series[day] = EXACT.add(series[day], amount)
    return out


def analytics_series(rows: Iterable[tuple[SpendKey, Decimal]]) -> dict[SeriesKey, dict[date, Decimal]]:
    """The daily series of every (integration, `api_key` or `actor`, id) of the Analytics API's rows. Spend
    without a key or actor (code execution, Console calls) is in the integration, workspace and model ones."""
    out: dict[SeriesKey, dict[date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for (iid, day, key, actor), amount in rows:
        for scope, value in (("api_key", key), ("actor", actor)):
            if value:
                series = out[(iid, scope, value)]
                series[day] = EXACT.add(series[day], amount)
    # An actor whose spend is exactly one key's (a key acting as itself, a service account or user with one
    # key) would repeat that key's verdicts: it is judged as the key only.
    keyed = {(iid, frozenset(s.items())) for (iid, scope, _), s in out.items() if scope == "api_key"}
    return {k: s for k, s in out.items() if k[1] != "actor" or (k[0], frozenset(s.items())) not in keyed}


def find(conn: Connection, since: date, until: date, today: date, thresholds: Thresholds = Thresholds(),
         integration_ids: tuple[int, ...] | None = None) -> list[Anomaly]:
    """Anomalies on the complete days of `[since, until]` (inclusive) before `today`, oldest first."""
    last = min(until, today - timedelta(days=1))
    if last < since:
        return []
    first = since - timedelta(days=WINDOW_DAYS)
    grains = spend_by_grain(conn, first, last + timedelta(days=1), Filter(integration_ids))
    legacy = coverage(conn, integration_ids)
    series = [(series_by_key(grains.items()), legacy)]
    by_who = analytics_coverage(conn, integration_ids)
    if by_who:
        rows = analytics_by_key(conn, first, last + timedelta(days=1), Filter(tuple(by_who)))
        series.append((analytics_series(rows.items()), by_who))
    found: list[Anomaly] = []
    scope_order = {s: i for i, s in enumerate(SCOPES)}
    for by_key, covered in series:
        found.extend(_judge_all(by_key, covered, since, last, thresholds))
    found.sort(key=lambda a: (a.date, a.integration_id, scope_order[a.scope], a.key))
    return found


def _judge_all(by_key: Mapping[SeriesKey, Mapping[date, Decimal]], covered: Mapping[int, Coverage], since: date,
               last: date, thresholds: Thresholds) -> Iterable[Anomaly]:
    for (iid, scope, key), series in by_key.items():
        cover = covered.get(iid)
        if cover is None:
            continue
        day = since
        while day <= last and day < cover.complete:
            verdict = judge(series, day, cover.start, thresholds)
            if verdict is not None and verdict.direction is not None:
                yield Anomaly(day, iid, scope, key, series.get(day, Decimal(0)), verdict.baseline_usd,
                              verdict.score, verdict.direction)
            day += timedelta(days=1)
