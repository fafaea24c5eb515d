"""Requests used by a 30- and a 365-day backfill against the minimum: ceil(days/31) per endpoint plus
the connection test (GET /organizations/me + one small cost report = 2).

    python bench/request_efficiency.py

Counts come from the simulator's own /_sim/stats (answered 200s; 429s listed apart). `sync-now` also
re-reads the trailing window after the backfill (one page per endpoint); the table shows it apart.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import Simulator, Worker, min_report_requests, table


def measure(tier: str, days: int) -> list[object]:
    with Simulator("--requests-per-minute", "900") as sim, tempfile.TemporaryDirectory() as tmp:
        worker = Worker(Path(tmp), sim.base_url, requests_per_minute=600)
        worker.connect(sim.keys[0], tier)
        connect = sim.requests()
        worker.run("sync-now")
        end = sim.requests()
    connection = connect["me"] + connect["cost_report"] + connect["usage_report"]
    sync = (end["cost_report"] + end["usage_report"]) - (connect["cost_report"] + connect["usage_report"])
    backfill = sync - 2  # the trailing re-read: one cost and one usage page
    minimum = min_report_requests(days) + 2
    used = connection + backfill
    return [f"{tier} ({days} d)", connection, backfill, used, minimum, f"{used / minimum:.2f}", 2,
            end["rate_limited"]]


def main() -> None:
    rows = [measure("free", 30), measure("pro", 365)]
    print(table(["backfill", "connection test", "backfill pages", "used", "minimum", "used/min",
                 "re-read (apart)", "429s"], rows))


if __name__ == "__main__":
    main()
