"""How well budgets forecast and anomalies detect, on the simulator's steady traffic (its ground truth).

    python bench/watch_accuracy.py            # 8 organizations x a year; --orgs N for fewer

Forecast: evaluated on the 3rd, 8th, 13th, 18th and 23rd of ten months, the error of the projected rest
of the month against what those days really cost, for this code's method (weekday medians x recent level)
and three plain ones; then again with a 5x spike two days before the evaluation.

Anomalies: every day of a year judged per integration, workspace and model (ordinary days: every anomaly
found is a false alarm), then days restated to k x their volume one at a time (found: the integration's
total flagged that day, in the right direction). Per API key and actor (the Analytics API's bill, from
2026-01-01): its ordinary days, then one key's day restated to k x its calls (found: that key flagged;
and how often the integration's total would have caught it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal
from statistics import mean, median

from _common import ROOT, table

sys.path.insert(0, str(ROOT))
from worker.simulator.data import SimulatorData
from worker.simulator.prices import pico_to_dollars
from worker.simulator.truth import analytics_truth
from worker.watch import forecast
from worker.watch.anomalies import analytics_series, judge

TODAY = date(2026, 3, 10)
FIRST = TODAY - timedelta(days=364)
A_FIRST = date(2026, 1, 1)  # the Analytics API's first day


def daily_series(data: SimulatorData, org: int) -> dict[tuple[str, str], dict[date, Decimal]]:
    out: dict[tuple[str, str], dict[date, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    day = FIRST
    while day <= TODAY:
        for row in data.day(org, day).cost:
            amount = pico_to_dollars(row.pico)
            out[("integration", "total")][day] += amount
            out[("workspace", row.workspace_id or "default")][day] += amount
            out[("model", row.model or "(no model)")][day] += amount
        day += timedelta(days=1)
    return out


def forecast_errors(orgs: list[tuple[SimulatorData, int]]) -> list[list[object]]:
    errors: dict[tuple[str, bool], list[float]] = defaultdict(list)
    for data, org in orgs:
        daily = daily_series(data, org)[("integration", "total")]
        at = FIRST + timedelta(days=40)
        while at < TODAY - timedelta(days=20):
            end = (at.replace(day=1) + timedelta(days=32)).replace(day=1)
            if at.day in (3, 8, 13, 18, 23):
                rest = [at + timedelta(days=i) for i in range(1, (end - at).days)]
                truth = sum((daily[d] for d in rest), Decimal(0))
                for spiked in (False, True):
                    history = dict(daily)
                    if spiked:
                        history[at - timedelta(days=2)] *= 5
                    last = [history.get(at - timedelta(days=i), Decimal(0)) for i in range(28)]
                    model = forecast.fit(history, at)
                    guesses: dict[str, Decimal] = {
                               "weekday medians x level (this code)": sum((model.expected(d) for d in rest), Decimal(0)),
                               "mean of the last 7 days": mean(last[:7]) * len(rest),
                               "mean of the last 28 days": mean(last) * len(rest),
                               "median of the last 28 days": median(last) * len(rest)}
                    for name, guess in guesses.items():
                        errors[(name, spiked)].append(float(abs(guess - truth) / truth))
            at += timedelta(days=1)
    rows: list[list[object]] = []
    for (name, spiked), values in sorted(errors.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        values.sort()
        rows.append([name, "5x day 2 days before" if spiked else "none", len(values), f"{mean(values):.1%}",
                     f"{median(values):.1%}", f"{values[int(len(values) * 0.9)]:.1%}"])
    return rows


def false_alarms(orgs: list[tuple[SimulatorData, int]]) -> list[list[object]]:
    judged: dict[str, int] = defaultdict(int)
    found: dict[str, int] = defaultdict(int)
    for data, org in orgs:
        for (scope, _key), series in daily_series(data, org).items():
            day = FIRST + timedelta(days=28)
            while day < TODAY:
                verdict = judge(series, day, FIRST)
                if verdict is not None:
                    judged[scope] += 1
                    found[scope] += verdict.direction is not None
                day += timedelta(days=1)
    return [[scope, judged[scope], found[scope], f"{1000 * found[scope] / max(judged[scope], 1):.2f}"]
            for scope in ("integration", "workspace", "model")]


def detection(orgs: list[tuple[SimulatorData, int]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for factor in (5.0, 3.0, 2.0, 0.5, 0.2, 0.1):
        hits = tries = 0
        scores = []
        for data, org in orgs:
            for offset in range(40, 360, 23):
                day = FIRST + timedelta(days=offset)
                data.spike(org, day, factor)
                window = {d: data.truth_total(org, d, d + timedelta(days=1))
                          for d in (day - timedelta(days=i) for i in range(29))}
                data.spike(org, day, 1)
                verdict = judge(window, day, FIRST)
                tries += 1
                want = "spike" if factor > 1 else "drop"
                if verdict is not None:
                    scores.append(verdict.score)
                    hits += verdict.direction == want
        rows.append([f"{factor:g}x", tries, hits, f"{hits / tries:.0%}", f"{median(scores):+.1f}"])
    return rows


def who_series(data: SimulatorData, org: int, last: date = TODAY - timedelta(days=1),
               ) -> dict[tuple[int, str, str], dict[date, Decimal]]:
    """The api_key and actor series the worker judges (worker.watch.anomalies.analytics_series), from the
    simulator's analytics truth of each day."""
    rows: dict[tuple[int, date, str, str], Decimal] = defaultdict(Decimal)
    for by in ("api_key", "actor"):
        for r in analytics_truth(data, org, A_FIRST, last, by):
            if r["key"]:
                # one (day, key, actor) cell per row: the key in its own slot, the other left blank
                key = (0, date.fromisoformat(r["date"]), r["key"] if by == "api_key" else "",
                       r["key"] if by == "actor" else "")
                rows[key] += Decimal(r["cost_usd"])
    return analytics_series(rows.items())


def who_false_alarms(orgs: list[tuple[SimulatorData, int]]) -> list[list[object]]:
    judged: dict[str, int] = defaultdict(int)
    found: dict[str, int] = defaultdict(int)
    for data, org in orgs:
        for (_, scope, _key), series in who_series(data, org).items():
            day = A_FIRST + timedelta(days=14)
            while day < TODAY:
                verdict = judge(series, day, A_FIRST)
                if verdict is not None:
                    judged[scope] += 1
                    found[scope] += verdict.direction is not None
                day += timedelta(days=1)
    return [[scope, judged[scope], found[scope], f"{1000 * found[scope] / max(judged[scope], 1):.2f}"]
            for scope in ("api_key", "actor")]


def who_detection(orgs: list[tuple[SimulatorData, int]]) -> list[list[object]]:
    rows: list[list[object]] = []
    for factor in (5.0, 3.0):
        hits = tries = by_total = 0
        scores = []
        for data, org in orgs:
            for day in (TODAY - timedelta(days=d) for d in (30, 23, 16, 9, 2)):
                base = who_series(data, org, day)
                total = {d: data.truth_total(org, d, d + timedelta(days=1)) for d in base[next(iter(base))]}
                for (_, scope, key), series in base.items():
                    usual = sum(series.get(day - timedelta(days=i), Decimal(0)) for i in range(1, 8)) / 7
                    if scope != "api_key" or usual < 5:
                        continue  # keys of $5 a day or more: below, anomaly_min_usd decides
                    data.spike(org, day, factor, key)
                    spiked = analytics_truth(data, org, day, day, "api_key")
                    data.spike(org, day, 1, key)
                    value = sum((Decimal(r["cost_usd"]) for r in spiked if r["key"] == key), Decimal(0))
                    verdict = judge({**series, day: value}, day, A_FIRST)
                    grown = {**total, day: total[day] + value - series.get(day, Decimal(0))}
                    whole = judge(grown, day, FIRST)
                    tries += 1
                    if verdict is not None:
                        scores.append(verdict.score)
                        hits += verdict.direction == "spike"
                    by_total += whole is not None and whole.direction == "spike"
        rows.append([f"{factor:g}x", tries, hits, f"{hits / max(tries, 1):.0%}", f"{median(scores):+.1f}",
                     f"{by_total / max(tries, 1):.0%}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orgs", type=int, default=8, help="organizations (seeds 0.. x 2 orgs each)")
    args = parser.parse_args()
    orgs = [(SimulatorData(seed, 2, TODAY, traffic="steady"), org) for seed in range(-(-args.orgs // 2))
            for org in range(2)][: args.orgs]
    started = time.monotonic()
    print(f"steady simulator traffic, {len(orgs)} organizations, {FIRST}..{TODAY}\n")
    print("Forecast of the rest of the month: relative error against the truth")
    print(table(["method", "spike", "evaluations", "mean", "median", "p90"], forecast_errors(orgs)))
    print("\nAnomalies on ordinary days (every one found is a false alarm)")
    print(table(["scope", "key-days judged", "anomalies", "per 1000"], false_alarms(orgs)))
    print("\nA day restated to k x its volume: the integration's total flagged in the right direction")
    print(table(["k", "days", "found", "rate", "median score"], detection(orgs)))
    print("\nPer API key and actor (the Analytics API's bill, 2026-01-01 on): ordinary days")
    print(table(["scope", "key-days judged", "anomalies", "per 1000"], who_false_alarms(orgs)))
    print("\nOne API key's day restated to k x its calls (keys of $5+ a day, 5 days per organization)")
    print(table(["k", "key-days", "found", "rate", "median score", "the total would have"], who_detection(orgs)))
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
