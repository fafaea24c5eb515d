"""What `run` does for watching at every poll: `on_poll(app)`, the scheduler's single call into this package.

1. Evaluate when something changed: a sync started or ended, a re-read restated a day, an integration
   came or went, a reconcile run was recorded, the UTC day turned, or the budgets/notify/anomaly
   settings differ from the last evaluation's; and at least every `REEVALUATE_SECONDS` anyway. While any
   sync holds its lease (it writes pages, each a change) the evaluation waits for the syncs to end, or for
   `REEVALUATE_SECONDS` since the last one: once per change of the settled bill, not once per poll. One
   replica evaluates at a time: it claims the `watch:evaluation` row of `watch_states` (a conditional
   UPDATE; a dead claimer's claim expires after `CLAIM_SECONDS`). An evaluation
   - stores each budget's state (`budget_states`, for /metrics and the dashboard) and queues a
     notification per budget, period and status reached (warn, over, forecast_over);
   - re-judges the last `JUDGE_DAYS` complete days for spend anomalies, replaces the stored ones of
     those days (`spend_anomalies`: a restated day's anomalies are its current ones) and queues one
     notification per integration and anomalous day;
   - follows each integration's error/ok state and each reconcile scope's drift/ok state
     (`watch_states`, `seq` counting the changes) and queues a notification on error, recovery and drift.
2. Send the notifications that are due (worker.watch.notify), within a few seconds per poll.

Nothing here raises into the scheduler: a failure is logged and retried at a later poll.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from worker.logs import scrub
from worker.storage import repo
from worker.storage.tables import budget_states, reconcile_runs, spend_anomalies, watch_states
from worker.watch import notify
from worker.watch.anomalies import Anomaly, Thresholds, find
from worker.watch.budgets import BudgetError, BudgetStatus, evaluate, money
from worker.watch.notify import Event

if TYPE_CHECKING:
    from worker.app import App

log = logging.getLogger("worker.watch")

EVALUATION = "watch:evaluation"
REEVALUATE_SECONDS = 600.0
CLAIM_SECONDS = 120.0
RETRY_SECONDS = 60.0
JUDGE_DAYS = 7
DELIVERY_SECONDS = 4.0
ALERTING = ("warn", "over", "forecast_over")
_STATUS_WORDS = {"warn": "reached its warning level", "over": "is over its limit",
                 "forecast_over": "is forecast to go over its limit"}


async def on_poll(app: App) -> None:
    """Evaluate if due, then deliver due notifications. Never raises (the poll must go on)."""
    try:
        await app.db(evaluate_if_due, app, bulk=True)  # a read of weeks of rows: small calls go first
    except Exception:  # logged; the next due poll tries again
        log.exception("watch: evaluation failed; retrying in %.0fs", RETRY_SECONDS)
    if app.settings.notify:
        try:
            await notify.deliver(app, budget_seconds=DELIVERY_SECONDS)
        except Exception:  # a broken webhook must never stop the service
            log.exception("watch: delivering notifications failed")


def marker(conn: Connection, app: App, today: date) -> str:
    """A digest of everything an evaluation depends on: it changes exactly when one is due."""
    version = repo.data_version(conn)
    last_reconcile = conn.execute(select(func.max(reconcile_runs.c.id))).scalar()
    s = app.settings
    config = json.dumps([[b.model_dump(mode="json") for b in s.budgets], [notify.target_id(t) for t in s.notify],
                         s.anomaly_min_score, str(s.anomaly_min_usd)], sort_keys=True)
    text = f"{today}|{version}|{last_reconcile}|{config}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _insert_ignore(conn: Connection, table: Any, values: dict[str, Any], keys: list[str]) -> int:
    insert = sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert
    return conn.execute(insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)).rowcount or 0


def evaluate_if_due(app: App) -> bool:
    """One poll's evaluation step (in a database thread); True when this process evaluated."""
    now = app.clock.now()
    w = watch_states.c
    with app.engine.begin() as conn:
        current = marker(conn, app, now.date())
        _insert_ignore(conn, watch_states, {"subject": EVALUATION, "state": "", "seq": 0, "changed_at": now},
                       ["subject"])
        state, changed_at = conn.execute(select(w.state, w.changed_at).where(w.subject == EVALUATION)).one()
        recent = changed_at > now - timedelta(seconds=REEVALUATE_SECONDS)
        if state == current and recent:
            return False
        if state and recent and repo.syncs_running(conn, now):
            # Every stored page changes the marker: while syncs write, evaluate once they end (or after
            # REEVALUATE_SECONDS), not at every poll (a fleet's sync window would re-read weeks of rows each time).
            return False
        claimed = conn.execute(update(watch_states).where(
            w.subject == EVALUATION,
            or_(w.claimed_until.is_(None), w.claimed_until < now, w.claimed_by == app.owner))
            .values(claimed_by=app.owner, claimed_until=now + timedelta(seconds=CLAIM_SECONDS))).rowcount
    if not claimed:
        return False  # another replica is evaluating
    try:
        evaluate_all(app, now)
    except Exception:
        with app.engine.begin() as conn:  # keep the claim a while: back off instead of failing every poll
            conn.execute(update(watch_states).where(w.subject == EVALUATION, w.claimed_by == app.owner)
                         .values(claimed_until=now + timedelta(seconds=RETRY_SECONDS)))
        raise
    with app.engine.begin() as conn:
        conn.execute(update(watch_states).where(w.subject == EVALUATION, w.claimed_by == app.owner)
                     .values(state=current, seq=w.seq + 1, changed_at=now, claimed_by=None, claimed_until=None))
    return True


def evaluate_all(app: App, now: datetime) -> None:
    """Budgets, anomalies, integration and reconcile states: store them and queue what changed."""
    today = now.date()
    _budgets(app, now, today)
    _anomalies(app, now, today)
    _integration_states(app, now)
    _reconcile_states(app, now)


# --- budgets ----------------------------------------------------------------------------------------

def _budget_event(b: BudgetStatus) -> Event:
    title = f"Budget {b.name} {_STATUS_WORDS[b.status]}"
    text = (f"{b.period} {b.period_start}..{b.period_end} (end exclusive), scope {b.scope}: spent "
            f"${money(b.spend_usd)} of ${money(b.limit_usd)}, forecast ${money(b.forecast_usd)}")
    return Event(f"budget:{b.name}:{b.period_start}:{b.status}", "budget", title, text, b.as_json())


def _budgets(app: App, now: datetime, today: date) -> None:
    budgets = app.settings.budgets
    results = []
    with app.engine.connect() as conn, conn.begin():
        for budget in budgets:
            try:
                results.append(evaluate(conn, budget, today, today))
            except BudgetError as exc:
                log.warning("watch: %s; skipped", exc)
    with app.engine.begin() as conn:
        # A budget skipped (BudgetError) keeps no stale numbers on /metrics: only what was evaluated now stays.
        conn.execute(delete(budget_states).where(budget_states.c.name.not_in([b.name for b in results])))
        for b in results:
            values = {"scope": b.scope, "period": b.period, "period_start": b.period_start,
                      "period_end": b.period_end, "limit_usd": b.limit_usd, "spend_usd": b.spend_usd,
                      "forecast_usd": b.forecast_usd, "status": b.status, "evaluated_at": now}
            if not conn.execute(update(budget_states).where(budget_states.c.name == b.name).values(**values)).rowcount:
                _insert_ignore(conn, budget_states, {"name": b.name, **values}, ["name"])
            if b.status in ALERTING:
                notify.enqueue(conn, _budget_event(b), app.settings.notify, now)


# --- anomalies --------------------------------------------------------------------------------------

def _anomaly_event(iid: int, label: str, day: date, found: list[Anomaly]) -> Event:
    lines = [f"{a.scope} {a.key}: ${money(a.cost_usd)} against a usual ${money(a.baseline_usd)} "
             f"({a.direction}, score {a.score:.1f})" for a in found]
    title = f"Spend anomaly on {day} for integration {iid} ({label})"
    return Event(f"anomaly:{iid}:{day}", "anomaly", title, "\n".join(lines),
                 {"integration_id": iid, "date": day.isoformat(), "anomalies": [a.as_json() for a in found]})


def _anomalies(app: App, now: datetime, today: date) -> None:
    first = today - timedelta(days=JUDGE_DAYS)
    thresholds = Thresholds(app.settings.anomaly_min_score, app.settings.anomaly_min_usd)
    with app.engine.connect() as conn, conn.begin():
        found = find(conn, first, today - timedelta(days=1), today, thresholds)
        labels = repo.integration_labels(conn)
    by_day: dict[tuple[int, date], list[Anomaly]] = defaultdict(list)
    for a in found:
        by_day[(a.integration_id, a.date)].append(a)
    a_c = spend_anomalies.c
    with app.engine.begin() as conn:
        # The judged days hold exactly their current anomalies: a restated day's old ones go.
        conn.execute(delete(spend_anomalies).where(a_c.day >= first, a_c.day < today))
        if found:
            conn.execute(spend_anomalies.insert(), [
                {"integration_id": a.integration_id, "day": a.date, "scope": a.scope, "key": a.key,
                 "cost_usd": a.cost_usd, "baseline_usd": a.baseline_usd, "score": a.score,
                 "direction": a.direction, "detected_at": now} for a in found])
        for (iid, day), items in sorted(by_day.items()):
            notify.enqueue(conn, _anomaly_event(iid, labels.get(iid, "?"), day, items), app.settings.notify, now)


# --- integration and reconcile states ---------------------------------------------------------------

def transition(conn: Connection, subject: str, state: str, now: datetime) -> tuple[str | None, int] | None:
    """Record `state` for `subject`. When it changed: (the previous state, None for a first sighting; the
    change's number). Replicas racing on the same change: one wins (conditional UPDATE), the others get None."""
    w = watch_states.c
    row = conn.execute(select(w.state, w.seq).where(w.subject == subject)).first()
    if row is None:
        added = _insert_ignore(conn, watch_states, {"subject": subject, "state": state, "seq": 1, "changed_at": now},
                               ["subject"])
        return (None, 1) if added else None
    if row.state == state:
        return None
    won = conn.execute(update(watch_states).where(w.subject == subject, w.seq == row.seq)
                       .values(state=state, seq=row.seq + 1, changed_at=now)).rowcount
    return (row.state, row.seq + 1) if won else None


def _integration_states(app: App, now: datetime) -> None:
    with app.engine.begin() as conn:
        rows = repo.integration_health(conn)
        live = {f"integration:{iid}" for iid, *_ in rows}
        w = watch_states.c
        conn.execute(delete(watch_states).where(w.subject.like("integration:%"), w.subject.not_in(live)))
        for iid, label, status, last_error in rows:
            state = "error" if status == "error" else "ok"
            changed = transition(conn, f"integration:{iid}", state, now)
            if changed is None:
                continue
            previous, seq = changed
            if state == "error":
                error = scrub(last_error or "its last sync failed")
                event = Event(f"integration:{iid}:{seq}:error", "integration",
                              f"Integration {iid} ({label}) is failing", error,
                              {"integration_id": iid, "state": "error", "last_error": error})
            elif previous == "error":
                event = Event(f"integration:{iid}:{seq}:ok", "integration",
                              f"Integration {iid} ({label}) recovered", "its last sync succeeded",
                              {"integration_id": iid, "state": "ok"})
            else:
                continue
            notify.enqueue(conn, event, app.settings.notify, now)


def _reconcile_states(app: App, now: datetime) -> None:
    r = reconcile_runs.c
    latest = select(func.max(r.id)).group_by(r.integration_id).scalar_subquery()
    with app.engine.begin() as conn:
        for run in conn.execute(select(reconcile_runs).where(r.id.in_(latest))).all():
            scope = "all" if run.integration_id is None else str(run.integration_id)
            state = "drift" if run.drift_rows > 0 else "ok"
            changed = transition(conn, f"reconcile:{scope}", state, now)
            if changed is None or state != "drift":
                continue
            share = (abs(run.delta_usd) / run.billed_cost_usd * 100) if run.billed_cost_usd else Decimal(0)
            event = Event(f"reconcile:{scope}:{changed[1]}:drift", "reconcile",
                          f"Reconcile drift for integration {scope}",
                          f"{run.drift_rows} of {run.rows} rows beyond the tolerance over {run.since}..{run.until}: "
                          f"tracked minus billed ${money(run.delta_usd)} ({share:.2f} % of ${money(run.billed_cost_usd)})",
                          {"integration_id": scope, "since": run.since.isoformat(), "until": run.until.isoformat(),
                           "drift_rows": run.drift_rows, "delta_usd": money(run.delta_usd),
                           "billed_usd": money(run.billed_cost_usd)})
            notify.enqueue(conn, event, app.settings.notify, now)
