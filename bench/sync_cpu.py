"""Sync CPU: the daily sync of N organizations in this process, without the one-request-a-minute spacing.

    python bench/sync_cpu.py                                  # 200 organizations, legacy and both sources
    python bench/sync_cpu.py --orgs 1000 --source both --reps 5

`bench/fleet.py` measures the real thing (`cost-worker run` at 06:00, one request a minute per
organization, minutes per run). This measures the same daily syncs in seconds: per source, N
organizations connected and backfilled (`--backfill-days`, untimed, against a simulator without a rate
limit), then a second simulator process with every organization's yesterday restated (so each re-read
replaces a day and writes its revisions, as in fleet.py), and `--reps` times: the database copied back to
its state after the backfill, and `sync_integration(..., "daily")` of every organization at once. CPU is
this process's (`time.process_time`: the event loop and the database threads; the simulator is another
process). Columns: CPU ms/org of the fastest and the median repetition, x legacy = median over the
legacy row's median, wall s = median wall time of a repetition, requests per organization.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _common import Simulator, table
from fleet import RESYNC_DAYS, TODAY, setup
from sqlalchemy import func, select, update

from worker.app import App
from worker.settings import Settings
from worker.storage.tables import integrations, sync_runs
from worker.sync.engine import PAGES_IN_FLIGHT, SyncOutcome, sync_integration
from worker.sync.streams import Source
from worker.vault import MasterKey


def measure(n: int, source: Source, reps: int, backfill_days: int) -> tuple[list[float], list[float], int]:
    """CPU seconds and wall seconds of each repetition, and the requests of one organization's sync."""
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        master = MasterKey.generate()
        pairs = setup(n, f"sqlite:///{tmp / 'cw.db'}", tmp, master, backfill_days, source)
        shutil.copy(tmp / "cw.db", tmp / "backfilled.db")
        yesterday = datetime.now(UTC).date() - timedelta(days=1)
        cpu, wall, requests = [], [], 0
        with Simulator("--orgs", str(n), "--requests-per-minute", "0", *TODAY,
                       "--fault", f"restate:day={yesterday.isoformat()}") as sim:
            for _ in range(reps):
                shutil.copy(tmp / "backfilled.db", tmp / "cw.db")
                app = App(Settings.model_validate({
                    "data_dir": tmp / "data", "database_url": f"sqlite:///{tmp / 'cw.db'}",
                    "master_key": master.to_text(), "api_base_url": sim.base_url, "requests_per_minute": 6000,
                    "burst": 1, "resync_days": RESYNC_DAYS}))
                try:
                    slot = datetime.now(UTC).replace(second=0, microsecond=0)
                    with app.engine.begin() as conn:  # the previous slot is handled: this one is due
                        conn.execute(update(integrations).values(last_daily_slot=slot - timedelta(days=1)))
                    slots = asyncio.Semaphore(PAGES_IN_FLIGHT)

                    async def daily(app: App = app, slot: datetime = slot, slots: asyncio.Semaphore = slots) -> list[SyncOutcome]:
                        return await asyncio.gather(*(sync_integration(app, iid, "daily", daily_slot=slot,
                                                                       page_slots=slots) for iid, _ in pairs))
                    t0, w0 = time.process_time(), time.monotonic()
                    outcomes = asyncio.run(daily())
                    cpu.append(time.process_time() - t0)
                    wall.append(time.monotonic() - w0)
                    with app.engine.connect() as conn:
                        requests = conn.execute(select(func.max(sync_runs.c.requests))
                                                .where(sync_runs.c.kind == "daily")).scalar_one()
                finally:
                    app.close()
                failed = [o for o in outcomes if not o.ok]
                if failed:
                    raise SystemExit(f"a daily sync failed: {failed[0].message}")
    return cpu, wall, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", type=int, default=200, help="organizations (default 200)")
    parser.add_argument("--source", choices=["legacy", "both"], action="append",
                        help="the integrations' source (repeatable; default legacy and both)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per source (default 3)")
    parser.add_argument("--backfill-days", type=int, default=7, help="setup backfill per organization")
    args = parser.parse_args()
    logging.getLogger("worker").setLevel(logging.WARNING)
    rows: list[list[object]] = []
    legacy_median = None
    for source in sorted(set(args.source or ["legacy", "both"]), key=lambda s: s != "legacy"):
        cpu, wall, requests = measure(args.orgs, source, args.reps, args.backfill_days)
        per_org = [c / args.orgs * 1000 for c in cpu]
        median = statistics.median(per_org)
        legacy_median = median if source == "legacy" else legacy_median
        rows.append([source, args.orgs, args.reps, requests, f"{min(per_org):.1f}", f"{median:.1f}",
                     f"{median / legacy_median:.2f}" if legacy_median else "", f"{statistics.median(wall):.1f}"])
        print(table(HEADER, rows[-1:]), flush=True)
    print()
    print(table(HEADER, rows))


HEADER = ["source", "orgs", "reps", "requests/org", "CPU ms/org min", "CPU ms/org median", "x legacy", "wall s"]


if __name__ == "__main__":
    main()
