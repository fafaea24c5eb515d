"""Requests at the floor: a 365-day backfill of both sources for small, medium and large organizations.

    python bench/analytics_floor.py                 # small, medium, large
    python bench/analytics_floor.py --shape large   # one size (repeatable)

Sizes (`cost-worker simulate --org-shape`): small 2 models, 3 API keys, 4 users; medium 3, 8, 15; large
5 models, 20 API keys, 50 users. Each organization is connected (`--tier pro --source both`) to a fresh
worker and backfilled by `sync-now` at 600 requests a minute against the simulator's 900.

Columns: legacy / analytics = requests of `sync-now` per source (answered 200s, from /_sim/stats), names =
the api_keys and workspaces lists; minimum = what the API allows at its widest: ceil(days / 31) per legacy
report, and per Analytics API stream and 31-day window the pages of a `limit=1000` query (asked of the
simulator directly, before the worker runs), plus one request per names list; rows = rows stored (legacy
cost + usage, analytics cost + usage); wall = `sync-now` from start to exit; floor = (requests - 1) x
60 s / 600 (the budget's own pace); at 1/min = the same backfill at the default budget, (requests - 1)
minutes. The simulator's today is the real UTC date, fixed for the run.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from _common import Simulator, Worker, table

from worker.settings import ANALYTICS_COST_GROUP_BY, ANALYTICS_USAGE_GROUP_BY

SHAPES = ("small", "medium", "large")
SIZES = {"small": "2 / 3 / 4", "medium": "3 / 8 / 15", "large": "5 / 20 / 50"}
WORKER_RPM = 600
SIM_RPM = 900
DAYS = 365
EARLIEST = date(2026, 1, 1)
STREAMS = {"cost": [list(ANALYTICS_COST_GROUP_BY), ["model", "product"]],
           "usage": [list(ANALYTICS_USAGE_GROUP_BY), ["model", "product"]]}


def windows(first: date, last: date) -> list[tuple[date, date]]:
    out, start = [], first
    while start <= last:
        end = min(start + timedelta(days=31), last + timedelta(days=1))
        out.append((start, end))
        start = end
    return out


def pages(sim: Simulator, key: str, endpoint: str, group_by: list[str], lo: date, hi: date) -> int:
    """Pages of one Analytics API query at limit=1000: the fewest requests that window and grouping take."""
    params: dict[str, Any] = {"starting_at": f"{lo}T00:00:00Z", "ending_at": f"{hi}T00:00:00Z",
                              "time_bucket_width": "1d", "order_by": "time", "order": "asc", "limit": 1000,
                              "group_by[]": group_by}
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01",
               "anthropic-beta": "analytics-usage-cost-2026-08-24"}
    count = 0
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=60) as client:
        while True:
            answer = client.get(f"/v1/organizations/analytics/{endpoint}", params=params)
            if answer.status_code == 429:  # the simulator's own budget: this count asks it back to back
                time.sleep(float(answer.headers.get("retry-after", "1")))
                continue
            body = answer.raise_for_status().json()
            count += 1
            if not body["has_more"]:
                return count
            params["page"] = body["next_page"]


def minimum(sim: Simulator, key: str, today: date) -> tuple[int, int]:
    """(legacy, analytics) fewest requests of the backfill; names (2) not included."""
    first = today - timedelta(days=DAYS - 1)
    legacy = 2 * -(-DAYS // 31)
    a_first = max(EARLIEST, first, today - timedelta(days=364))
    analytics = sum(pages(sim, key, endpoint, group_by, lo, hi)
                    for endpoint, groupings in STREAMS.items() for group_by in groupings
                    for lo, hi in windows(a_first, today))
    return legacy, analytics


def counts(stats: dict[str, Any], key: str) -> dict[str, int]:
    paths = stats["keys"].get(key, {}).get("paths", {})
    return {p.rsplit("/", 1)[-1]: c["statuses"].get("200", 0) for p, c in paths.items()}


def rows_stored(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        legacy = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("cost_rows", "usage_rows"))
        analytics = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                        for t in ("analytics_cost_rows", "analytics_usage_rows"))
    return legacy, analytics


def measure(shape: str) -> list[object]:
    today = datetime.now(UTC).date()
    with Simulator("--requests-per-minute", str(SIM_RPM), "--org-shape", f"0={shape}", "--today",
                   today.isoformat()) as sim, tempfile.TemporaryDirectory() as tmp:
        key = sim.keys[0]
        legacy_min, analytics_min = minimum(sim, key, today)
        worker = Worker(Path(tmp), sim.base_url, requests_per_minute=WORKER_RPM)
        worker.connect(key, "pro", source="both")
        sim.reset_stats()
        t0 = time.monotonic()
        worker.run("sync-now", timeout=3600)
        wall = time.monotonic() - t0
        used = counts(sim.stats(), key)
        rate_limited = sim.stats()["total"]["rate_limited"]
        legacy_rows, analytics_rows = rows_stored(Path(tmp) / "cw.db")
    legacy = used.get("cost_report", 0) + used.get("messages", 0)
    analytics = used.get("cost", 0) + used.get("usage", 0)
    names = used.get("api_keys", 0) + used.get("workspaces", 0)
    total = legacy + analytics + names
    floor = (total - 1) * 60 / WORKER_RPM
    return [shape, SIZES[shape], legacy, analytics, names, total, legacy_min + analytics_min + 2,
            f"{legacy_rows:,}", f"{analytics_rows:,}", rate_limited, f"{wall:.1f}", f"{floor:.1f}",
            f"{wall / floor:.3f}", f"{(total - 1) / 60:.1f} h"]


HEADER = ["org", "models / keys / users", "legacy", "analytics", "names", "requests", "minimum", "legacy rows",
          "analytics rows", "429s", "wall s", "floor s", "wall/floor", "at 1/min"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, action="append", help="organization size (repeatable)")
    args = parser.parse_args()
    rows = []
    for shape in args.shape or SHAPES:
        rows.append(measure(shape))
        print(table(HEADER, rows[-1:]), flush=True)
    print()
    print(table(HEADER, rows))


if __name__ == "__main__":
    main()
