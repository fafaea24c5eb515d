"""Rate-floor efficiency: wall time of a 365-day backfill divided by the floor the budget sets.

    python bench/rate_floor.py [--rpm 60] [--worker-rpm R ...]

The simulator enforces --rpm per key (burst 1); the worker runs at each --worker-rpm (default: the
same). The backfill is the `sync-now` after `connect --tier pro`: 24 backfill pages + 2 re-read pages.
Floor = (answered requests - 1) x 60 / worker_rpm (the first request may go at once; the connection
test's slot was used over a second earlier). Wall = the `sync-now` process, start to exit (Python
start-up, imports and the migration check included: about 0.5-1 s that does not grow with the
backfill). Run = the sync run's own duration (`sync_runs.duration_seconds`): the rate-bound part.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from _common import Simulator, Worker, table


def measure(rpm: float, worker_rpm: float) -> list[object]:
    with Simulator("--requests-per-minute", str(rpm)) as sim, tempfile.TemporaryDirectory() as tmp:
        worker = Worker(Path(tmp), sim.base_url, requests_per_minute=worker_rpm)
        worker.connect(sim.keys[0], "pro")
        before = sim.requests()
        time.sleep(60 / worker_rpm)  # the connection test's slot is over
        t0 = time.monotonic()
        worker.run("sync-now", timeout=600)
        wall = time.monotonic() - t0
        after = sim.requests()
        waited, run = sqlite3.connect(Path(tmp) / "cw.db").execute(
            "select waited_seconds, duration_seconds from sync_runs order by id desc limit 1").fetchone()
    answered = (after["cost_report"] + after["usage_report"]) - (before["cost_report"] + before["usage_report"])
    floor = (answered - 1) * 60 / worker_rpm
    limited = after["rate_limited"] - before["rate_limited"]
    return [f"{rpm:g}", f"{worker_rpm:g}", answered, limited, f"{floor:.1f}", f"{wall:.1f}", f"{waited:.1f}",
            f"{wall / floor:.3f}", f"{run:.1f}", f"{run / floor:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpm", type=float, default=60)
    parser.add_argument("--worker-rpm", type=float, action="append")
    args = parser.parse_args()
    rows = [measure(args.rpm, w) for w in (args.worker_rpm or [args.rpm])]
    print(table(["simulator rpm", "worker rpm", "requests", "429s", "floor s", "wall s", "waited s",
                 "wall/floor", "run s", "run/floor"], rows))


if __name__ == "__main__":
    main()
