"""A worker process SIGKILLed mid-backfill and another resuming it, measured from outside: the time from the
kill to the resumed run's start (its `sync_runs` row) and to its first report request reaching the
simulator, and how many report requests the whole backfill needed. Used by tests/e2e/test_dead_process.py
and bench/takeover.py."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import create_engine, select

from worker.storage.tables import integrations, sync_runs

from .procs import WORKER, Simulator, Worker, min_report_requests


@dataclass
class Takeover:
    """What one kill-and-resume measured (seconds from the SIGKILL; report requests answered in all)."""

    to_claim: float  # the resumed run's record started
    to_request: float  # the first report request after the kill reached the simulator
    answered: int  # report requests answered over the whole backfill, both processes
    minimum: int  # the fewest that backfill can take (plus the final re-read)
    checkpoint: date  # the slower endpoint's checkpoint when the first process died
    resumed_from: date  # where the resumed run started (its window_start)
    killed_run: dict[str, Any]  # the killed process's run record, as it ended
    resumed_run: dict[str, Any]


def report_answers(sim: Simulator, org: int = 0) -> int:
    counts = sim.requests(org)
    return counts["cost_report"] + counts["usage_report"]


def first_request_after(sim: Simulator, total_before: int, deadline: float, org: int = 0) -> float:
    """Wall time (the simulator's clock, this machine's) of the first request of `org` after its count was
    `total_before`, polling its /_sim/stats."""
    while time.monotonic() < deadline:
        entry = sim.stats()["keys"].get(sim.keys[org])
        if entry is not None and entry["requests"] == total_before + 1:
            return float(entry["last_at"])
        if entry is not None and entry["requests"] > total_before + 1:
            raise AssertionError("missed the first request after the kill (polled too slowly)")
        time.sleep(0.01)
    raise AssertionError("no request after the kill before the deadline")


def kill_and_resume(sim: Simulator, worker: Worker, killed: subprocess.Popen[str], *, baseline: int, days: int,
                    reread: bool, start_after_kill: list[str] | None, pages_before_kill: int = 3,
                    timeout: float = 120) -> tuple[Takeover, subprocess.Popen[str] | None]:
    """SIGKILL `killed` once `pages_before_kill` more report pages were answered, start `start_after_kill`
    (a command; None when the resuming process already runs, a replica) and measure until the backfill is
    done. `baseline`: report answers before `killed` started; `reread`: the resuming run also re-reads the
    trailing window (a `sync-now`: one more page per endpoint). Returns the measures and the started process
    (still running if it is a `run`)."""
    engine = create_engine(worker.env["COST_WORKER_DATABASE_URL"])
    try:
        answered_before = report_answers(sim)
        deadline = time.monotonic() + 60
        while report_answers(sim) - answered_before < pages_before_kill:
            assert killed.poll() is None, "the process to kill ended first"
            assert time.monotonic() < deadline, "no pages before the deadline"
            time.sleep(0.02)
        killed.send_signal(signal.SIGKILL)
        killed_at = time.time()
        killed.wait(30)
        time.sleep(0.2)  # a request sent just before the kill may still be counted: not the resumed one
        total = sim.stats()["keys"][sim.keys[0]]["requests"]
        with engine.connect() as conn:
            row = conn.execute(select(integrations)).one()
            checkpoint = min(row.cost_checkpoint, row.usage_checkpoint)
            killed_id = conn.execute(select(sync_runs.c.id).order_by(sync_runs.c.id.desc())).scalars().first()
        resumer = None
        if start_after_kill is not None:
            with (worker.tmp_path / "resumer.log").open("w") as log:
                resumer = subprocess.Popen([*WORKER, *start_after_kill], env=worker.env,
                                           cwd=worker.tmp_path, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, text=True)
        first = first_request_after(sim, total, time.monotonic() + timeout)
        deadline = time.monotonic() + timeout
        while True:
            with engine.connect() as conn:
                done = conn.execute(select(integrations.c.backfill_done)).scalar_one()
                runs = [dict(r._mapping) for r in conn.execute(select(sync_runs).order_by(sync_runs.c.id))]
            resumed = [r for r in runs if r["id"] > (killed_id or 0)]
            if done and resumed and resumed[0]["finished_at"] is not None:
                break
            assert time.monotonic() < deadline, f"backfill not done before the deadline: {runs}"
            time.sleep(0.1)
        killed_run = next(r for r in runs if r["id"] == killed_id)
        return Takeover(
            to_claim=resumed[0]["started_at"].timestamp() - killed_at, to_request=first - killed_at,
            answered=report_answers(sim) - baseline, minimum=min_report_requests(days) + (2 if reread else 0),
            checkpoint=checkpoint,
            resumed_from=resumed[0]["window_start"], killed_run=killed_run, resumed_run=resumed[0],
        ), resumer
    finally:
        engine.dispose()
