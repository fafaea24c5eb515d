"""Page floor: the CPU the leanest pipeline on the design card's packages spends on a daily sync's requests.

    python bench/page_floor.py                     # 20 organizations, each request replayed 200 times
    python bench/page_floor.py --orgs 50 --reps 500

What `bench/sync_cpu.py` and `bench/fleet.py` measure is the worker's whole daily sync. This measures what no
implementation can go below. The daily syncs of N organizations (`--source both`, the fleet's shape: a 7-day
backfill, then yesterday restated) are run once against the simulator and their report requests recorded.
Each request is then replayed `--reps` times by a bare pipeline in one thread:
- one kept-alive `httpx.AsyncClient` GET of the same URL and headers, on the sync's transport (httpcore on
  asyncio's streams, `worker.sync.engine.api_transport`: cheaper per request than httpx's default);
- `msgspec.json.decode` of the body into plain objects, each row flattened to a tuple of its values;
- one `sqlite3` transaction (no SQLAlchemy) that deletes the page's rows and inserts them again with
  `executemany`, into a table with a unique key over the row's day and dimensions, then commits (WAL,
  synchronous=NORMAL, as the worker's SQLite).

There is no lease, rate bucket, run record, digest, revision, total, checkpoint, Decimal or bound check, and
no second thread: what is left is what any implementation with these packages pays per request. CPU is this
process's (`time.process_time`; the simulator is another process). The table gives, per endpoint, the mean
per request; the last lines sum them over one organization's daily sync, legacy alone and both sources.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import statistics
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
from _common import Simulator, table
from fleet import RESYNC_DAYS, TODAY, setup
from sqlalchemy import update

from worker.app import App
from worker.settings import Settings
from worker.storage.tables import integrations
from worker.sync import engine
from worker.sync.engine import sync_integration
from worker.vault import MasterKey

LEGACY = ("cost_report", "usage_report/messages")
Recorded = tuple[int, str, str, dict[str, str]]  # (organization, endpoint, URL, headers)


def record(n: int, tmp: Path, base_url: str) -> list[Recorded]:
    """The report requests of N organizations' daily sync with both sources, in the order sent."""
    master = MasterKey.generate()
    pairs = setup(n, f"sqlite:///{tmp / 'cw.db'}", tmp, master, 7, "both")
    seen: list[Recorded] = []
    org_of: dict[str, int] = {}
    observed = engine.ObservedTransport.handle_async_request

    async def handle(self: engine.ObservedTransport, request: httpx.Request) -> httpx.Response:
        path = request.url.path.split("/v1/organizations/", 1)[-1]
        if path in LEGACY or path.startswith("analytics/"):
            key = request.headers.get("x-api-key", "")
            seen.append((org_of.setdefault(key, len(org_of)), path, str(request.url), dict(request.headers)))
        return await observed(self, request)

    engine.ObservedTransport.handle_async_request = handle  # type: ignore[method-assign]
    app = App(Settings.model_validate({
        "data_dir": tmp / "data", "database_url": f"sqlite:///{tmp / 'cw.db'}", "master_key": master.to_text(),
        "api_base_url": base_url, "requests_per_minute": 6000, "burst": 1, "resync_days": RESYNC_DAYS}))
    try:
        slot = datetime.now(UTC).replace(second=0, microsecond=0)
        with app.engine.begin() as conn:  # the previous slot is handled: this one is due
            conn.execute(update(integrations).values(last_daily_slot=slot - timedelta(days=1)))

        async def daily() -> None:
            for iid, _ in pairs:  # one at a time: each organization's requests recorded together
                outcome = await sync_integration(app, iid, "daily", daily_slot=slot)
                if not outcome.ok:
                    raise SystemExit(f"a daily sync failed: {outcome.message}")
        asyncio.run(daily())
    finally:
        app.close()
        engine.ObservedTransport.handle_async_request = observed  # type: ignore[method-assign]
    return seen


def _scalar(value: Any) -> Any:
    # What sqlite3 binds as it is (text, numbers, null); an object (an actor, cache_creation) as its JSON.
    return msgspec.json.encode(value) if type(value) is dict else value


def flat(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """A page's rows as (day, dimensions..., values...): legacy buckets' results or analytics rows."""
    out: list[tuple[Any, ...]] = []
    for item in body["data"]:
        if "results" in item:  # a legacy bucket
            day = item["starting_at"][:10]
            out.extend((day, *map(_scalar, r.values())) for r in item["results"])
        else:
            values = item.get("cost") or item.get("usage")
            out.append((item["starting_at"][:10], *map(_scalar, item["group"].values()),
                        *map(_scalar, values.values())))
    return out


async def replay(requests: list[Recorded], reps: int, db: Path) -> list[tuple[int, str, int, int, float]]:
    """(organization, endpoint, rows, bytes, mean CPU seconds) of each request (its stages go to STAGES)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    out = []
    # The sync's own transport (httpcore on asyncio's streams: cheaper per request than httpx's default).
    async with httpx.AsyncClient(timeout=30, transport=engine.api_transport()) as client:
        for i, (org, endpoint, url, headers) in enumerate(requests):
            rows = flat(msgspec.json.decode((await client.get(url, headers=headers)).content))
            width = max((len(r) for r in rows), default=1)
            columns = [f"c{j}" for j in range(width)]
            conn.execute(f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY, page INTEGER NOT NULL, "
                         f"{', '.join(columns)}, UNIQUE (page, {', '.join(columns)}))")
            insert = f"INSERT INTO t{i} (page, {', '.join(columns)}) VALUES (?, {', '.join('?' * width)})"
            http = decode = store = 0.0
            size = 0
            for _ in range(reps):
                t0 = time.process_time()
                content = (await client.get(url, headers=headers)).content
                t1 = time.process_time()
                params = [(i, *r, *(None,) * (width - len(r))) for r in flat(msgspec.json.decode(content))]
                t2 = time.process_time()
                conn.execute("BEGIN")
                conn.execute(f"DELETE FROM t{i} WHERE page = ?", (i,))
                conn.executemany(insert, params)
                conn.execute("COMMIT")
                t3 = time.process_time()
                http, decode, store, size = http + t1 - t0, decode + t2 - t1, store + t3 - t2, len(content)
            STAGES[endpoint].append((http / reps, decode / reps, store / reps))
            out.append((org, endpoint, len(rows), size, (http + decode + store) / reps))
    conn.close()
    return out


STAGES: dict[str, list[tuple[float, float, float]]] = defaultdict(list)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", type=int, default=20, help="organizations recorded (default 20)")
    parser.add_argument("--reps", type=int, default=200, help="replays of each request (default 200)")
    args = parser.parse_args()
    logging.getLogger("worker").setLevel(logging.WARNING)
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with Simulator("--orgs", str(args.orgs), "--requests-per-minute", "0", *TODAY,
                       "--fault", f"restate:day={yesterday.isoformat()}") as sim:
            # The setup backfills from its own simulator (no restatement); the daily sync reads this one.
            requests = record(args.orgs, tmp, sim.base_url)
            results = asyncio.run(replay(requests, args.reps, tmp / "floor.db"))
    rows: list[list[object]] = []
    for endpoint in sorted({e for _, e, *_ in results}, key=lambda e: (e not in LEGACY, e)):
        mine = [r for r in results if r[1] == endpoint]
        stages = STAGES[endpoint]
        rows.append([endpoint, len(mine), f"{statistics.mean(r[2] for r in mine):.0f}",
                     f"{statistics.mean(r[3] for r in mine):.0f}",
                     *(f"{statistics.mean(s[k] for s in stages) * 1e3:.3f}" for k in range(3)),
                     f"{statistics.mean(r[4] for r in mine) * 1e3:.3f}"])
    print(table(["endpoint", "requests", "rows", "bytes", "http ms", "decode ms", "store ms", "CPU ms"], rows))
    per_org: dict[int, list[float]] = {}
    for org, endpoint, _, _, cpu in results:
        legacy_both = per_org.setdefault(org, [0.0, 0.0])
        legacy_both[1] += cpu
        if endpoint in LEGACY:
            legacy_both[0] += cpu
    legacy = statistics.mean(v[0] for v in per_org.values()) * 1e3
    both = statistics.mean(v[1] for v in per_org.values()) * 1e3
    print()
    print(table(["daily sync", "requests/org", "floor CPU ms/org", "x legacy"],
                [["legacy", f"{sum(e in LEGACY for _, e, *_ in results) / len(per_org):g}", f"{legacy:.2f}", "1.00"],
                 ["both", f"{len(results) / len(per_org):g}", f"{both:.2f}", f"{both / legacy:.2f}"]]))


if __name__ == "__main__":
    main()
