"""Fleet: the 06:00 daily sync of N organizations at one request per minute each.

    python bench/fleet.py                      # N = 100 and 1000 on SQLite
    python bench/fleet.py --orgs 50            # a quick run
    python bench/fleet.py --orgs 1000 --source legacy --source both   # CPU per organization, both sources
    python bench/fleet.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    python bench/fleet.py --orgs 1000 --database-url ... --replicas 2   # two `run` processes

Per N, untimed setup: a first simulator (same seed, no rate limit) serves the connections (rows
written with `worker.integrations.connect`) and an in-process `sync_now` that backfills every
organization (`--backfill-days`, default 7) and re-reads the trailing window. Then a second
simulator process at `--requests-per-minute 1` per key, with every organization's yesterday
restated (so only a real re-read makes the stored rows equal its truth), and `cost-worker run` at
the default budget (1 request/min, burst 1), default lease, poll and pool settings, with its daily
time set to the next whole minute at least `--lead` seconds away. Nothing is due when it starts;
at that minute the cron job (and the poll) dispatch the daily slot of every integration. (A run
that crosses 00:00 UTC mixes two simulator days: avoid the minutes around midnight.)

Columns: run procs = `run` processes (replicas); requests answered and 429s (the simulator's /_sim/stats, every key); floor = (R - burst)
x 60 s, the time one organization needing R = 2 requests takes at 1/min (the first request goes at
once, the second one interval later); wall = the latest `finished_at` of the N `ok` daily runs
(sync_runs) minus the slot time; all 1st by = when every organization's first request had reached
the simulator, from the slot; min gap = the closest two requests of one key (>= 60 s, or 429s);
CPU = CPU seconds of the `run` process(es) from the slot to the end, CPU ms/org = that per organization,
x legacy = CPU ms/org over the legacy-only row's of the same N in this run; idle RSS = its VmRSS just
before the slot, peak RSS = its VmHWM (/proc; the largest replica's); exact = for every organization, day and model of the
re-read window, the stored cost (Decimal) and token sums equal the simulator's /_sim/truth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from _common import Simulator, private_pg_schema, table
from e2e.procs import WORKER, clean_env, normalize
from sqlalchemy import create_engine, func, select, update

from worker.api import Organization
from worker.app import App
from worker.integrations import connect
from worker.secret import AdminKey
from worker.settings import Settings
from worker.sources.report import report_by
from worker.storage import repo
from worker.storage.tables import integrations, sync_runs
from worker.sync.engine import sync_now
from worker.sync.progress import Progress
from worker.sync.streams import Source
from worker.sync.windows import window_ending
from worker.vault import MasterKey

BURST = 1  # the default
RESYNC_DAYS = 3  # the default re-read window
# A daily sync of one organization: one page per stream (3 days < 31 per page): the two legacy reports, and
# with `--source both` the Analytics API's cost and usage, by the configured grouping and by product.
REQUESTS: dict[Source, int] = {"legacy": 2, "both": 6}


# The simulator's today is the real UTC date, fixed for the run (the Analytics API serves it up to its
# `data_refreshed_at`, which then stays put while the benchmark runs).
TODAY = ("--today", datetime.now(UTC).date().isoformat())


class Quiet(Progress):
    """No progress output during the setup."""

    def start(self, *_: Any) -> None: ...
    def page(self, *_: Any) -> None: ...
    def wait(self, *_: Any) -> None: ...
    def finish(self, *_: Any) -> None: ...


@contextlib.contextmanager
def database(base_url: str | None, tmp: Path) -> Iterator[str]:
    """An empty database: an SQLite file, or a private schema on the given PostgreSQL (dropped afterwards)."""
    if base_url is None:
        yield f"sqlite:///{tmp / 'cw.db'}"
        return
    with private_pg_schema(base_url) as url:
        yield url


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


def setup(n: int, db_url: str, tmp: Path, master: MasterKey, backfill_days: int,
          source: Source = "legacy") -> list[tuple[int, int]]:
    """N integrations connected and backfilled; returns (integration id, simulator org index) pairs."""
    with Simulator("--orgs", str(n), "--requests-per-minute", "0", *TODAY) as sim:
        settings = Settings.model_validate({
            "data_dir": tmp / "data", "database_url": db_url, "master_key": master.to_text(),
            "api_base_url": sim.base_url, "requests_per_minute": 6000, "burst": 1,
            "backfill_days_free": backfill_days, "resync_days": RESYNC_DAYS})
        app = App(settings)
        try:
            pairs = []
            for org in sim.control("GET", "/_sim/keys")["orgs"]:
                iid = connect(app, AdminKey(org["admin_key"]), Organization(org["id"], org["name"], "organization"),
                              label=f"fleet {org['org']}", tier="free", source=source)
                pairs.append((iid, org["org"]))
            outcomes = asyncio.run(sync_now(app, None, progress=Quiet()))
            failed = [o for o in outcomes if not o.ok]
            if failed:
                raise SystemExit(f"setup backfill failed: {failed[0].message}")
        finally:
            app.close()
    return pairs


def next_slot(lead: float) -> datetime:
    """The next whole minute at least `lead` seconds from now (UTC)."""
    at = datetime.now(UTC) + timedelta(seconds=lead)
    return at.replace(second=0, microsecond=0) + timedelta(minutes=1)


@dataclass
class Run:
    wall: float  # slot -> the last `ok` daily run's finished_at
    first: float  # slot -> every organization's first request had arrived (simulator clock)
    gap: float  # smallest time between two requests of one key
    answered: int
    rate_limited: int
    cpu: float  # CPU seconds of the `run` process from the slot to the end
    idle_kib: int
    peak_kib: int
    runs: str


def measure(n: int, base_url: str | None, backfill_days: int, lead: float, timeout: float,
            keep_log: Path | None = None, replicas: int = 1, source: Source = "legacy") -> list[object]:
    logging.getLogger("worker").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmpdir, database(base_url, Path(tmpdir)) as db_url:
        tmp = Path(tmpdir)
        master = MasterKey.generate()
        t_setup = time.monotonic()
        pairs = setup(n, db_url, tmp, master, backfill_days, source)
        yesterday = datetime.now(UTC).date() - timedelta(days=1)
        with Simulator("--orgs", str(n), "--requests-per-minute", "1", "--burst", str(BURST), *TODAY,
                       "--fault", f"restate:day={yesterday.isoformat()}") as sim:
            slot = next_slot(lead)
            engine = create_engine(db_url)
            with engine.begin() as conn:  # the previous slot is handled: nothing is due before `slot`
                conn.execute(update(integrations).values(last_daily_slot=slot - timedelta(days=1)))
            setup_s = time.monotonic() - t_setup
            env = clean_env(
                COST_WORKER_DATA_DIR=str(tmp / "data"), COST_WORKER_DATABASE_URL=db_url,
                COST_WORKER_MASTER_KEY=master.to_text(), COST_WORKER_API_BASE_URL=sim.base_url,
                COST_WORKER_REQUESTS_PER_MINUTE="1", COST_WORKER_BURST=str(BURST),
                COST_WORKER_RESYNC_DAYS=str(RESYNC_DAYS), COST_WORKER_DAILY_SYNC_TIME=slot.strftime("%H:%M"),
                COST_WORKER_HTTP_PORT="0", COST_WORKER_LOG_FORMAT="json",
            )
            log_path = tmp / "run.log"
            with log_path.open("w") as log_file:  # replicas (PostgreSQL) share the log file
                procs = [subprocess.Popen([*WORKER, "run"], env=env, cwd=tmp, stdin=subprocess.DEVNULL,
                                          stdout=log_file, stderr=subprocess.STDOUT) for _ in range(replicas)]
            try:
                run = watch(procs, engine, sim, slot, n, timeout, log_path)
                for proc in procs:
                    proc.send_signal(signal.SIGTERM)
                exit_code = max(proc.wait(15) for proc in procs)
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            if keep_log is not None:
                keep_log.write_text(log_path.read_text())
            exact = check_exact(engine, sim, pairs, source)
            engine.dispose()
    floor = (REQUESTS[source] - BURST) * 60.0
    return [n, source, replicas, run.answered, run.rate_limited, f"{floor:.0f}", f"{run.wall:.1f}", f"{run.wall / floor:.3f}",
            f"{run.first:.1f}", f"{run.gap:.1f}", f"{run.cpu:.1f}", f"{run.cpu / n * 1000:.1f}",
            f"{run.idle_kib / 1024:.0f}",
            f"{run.peak_kib / 1024:.0f}", "yes" if exact else "NO", run.runs, exit_code, f"{setup_s:.0f}"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def watch(procs: list[subprocess.Popen[bytes]], engine: Any, sim: Simulator, slot: datetime, n: int,
          timeout: float, log_path: Path) -> Run:
    """Wait until every integration has an `ok` daily run (the processes are left running). CPU is summed
    over the processes; RSS is the largest process's."""
    def failed(why: str) -> SystemExit:
        return SystemExit(f"{why}; `cost-worker run` log tail:\n{log_path.read_text()[-3000:]}")

    idle, cpu0 = 0, 0.0
    while datetime.now(UTC) < slot - timedelta(seconds=0.5):
        if any(proc.poll() is not None for proc in procs):
            raise failed("`cost-worker run` exited before the slot")
        idle = max(proc_status(proc.pid)["VmRSS"] for proc in procs)
        cpu0 = sum(cpu_seconds(proc.pid) for proc in procs)
        time.sleep(0.25)
    deadline = time.monotonic() + timeout
    daily = sync_runs.c.kind == "daily"
    while True:
        time.sleep(1)
        with engine.connect() as conn:
            counts = dict(conn.execute(select(sync_runs.c.outcome, func.count()).where(daily)
                                       .group_by(sync_runs.c.outcome)).all())
        if counts.get("ok", 0) >= n:
            break
        if any(proc.poll() is not None for proc in procs) or time.monotonic() > deadline:
            raise failed(f"daily runs by outcome: {counts} (want {n} ok)")
    peak = max(proc_status(proc.pid)["VmHWM"] for proc in procs)
    cpu = sum(cpu_seconds(proc.pid) for proc in procs) - cpu0
    with engine.connect() as conn:
        finished = conn.execute(select(func.max(sync_runs.c.finished_at)).where(daily)).scalar_one()
        requests = conn.execute(select(func.sum(sync_runs.c.requests)).where(daily)).scalar_one()
    if not isinstance(finished, datetime):  # SQLite through a plain engine: ISO text
        finished = datetime.fromisoformat(str(finished))
    if finished.tzinfo is None:
        finished = finished.replace(tzinfo=UTC)
    stats = sim.stats()
    keys = stats["keys"].values()
    return Run(
        wall=(finished - slot).total_seconds(),
        first=max(k["first_at"] for k in keys) - slot.timestamp(),
        gap=min(k["last_at"] - k["first_at"] for k in keys),
        answered=sum(c["statuses"].get("200", 0) for p, c in stats["paths"].items() if not p.endswith("/me")),
        rate_limited=stats["total"]["rate_limited"], cpu=cpu, idle_kib=idle, peak_kib=peak,
        runs=f"{', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}; {requests} requests",
    )


def check_exact(engine: Any, sim: Simulator, pairs: list[tuple[int, int]], source: str = "legacy") -> bool:
    """The re-read days as stored equal the simulator's truth, per organization, day and model (and, with the
    Analytics API, per organization, day, model and API key)."""
    first, last = window_ending(sim.today(), RESYNC_DAYS)
    bad = 0
    with engine.connect() as conn:
        for iid, org in pairs:
            stored = normalize([{
                "date": r.date.isoformat(), "model": r.model, "cost_usd": str(r.cost_usd),
                "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                "cache_read_tokens": r.cache_read_tokens, "cache_write_tokens": r.cache_write_tokens,
            } for r in repo.report(conn, first, last, iid)])
            if stored != sim.truth(org, first, last) or not stored:
                bad += 1
            elif source == "both":
                got = {(r.date.isoformat(), r.model, r.key): (r.cost_usd, r.input_tokens, r.output_tokens)
                       for r in report_by(conn, first, last, "api_key", "analytics", iid)}
                want = {(r["date"], r["model"], r["key"]): (Decimal(r["cost_usd"]), r["input_tokens"],
                                                            r["output_tokens"])
                        for r in sim.control("GET", "/_sim/truth", params={
                            "org": org, "since": first.isoformat(), "until": (last + timedelta(days=1)).isoformat(),
                            "source": "analytics", "by": "api_key"})["rows"]}
                bad += got != want or not got
    if bad:
        print(f"{bad} of {len(pairs)} organizations differ from the truth")
    return bad == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", type=int, action="append", help="organizations (repeatable; default 100 and 1000)")
    parser.add_argument("--database-url", help="a PostgreSQL URL (a private schema is made and dropped); "
                                               "default: an SQLite file")
    parser.add_argument("--backfill-days", type=int, default=7, help="setup backfill per organization (free tier or less)")
    parser.add_argument("--lead", type=float, default=20, help="seconds at least between `run` start and the slot")
    parser.add_argument("--timeout", type=float, default=600, help="seconds after the slot before giving up")
    parser.add_argument("--keep-log", type=Path, help="copy the `run` process's log (JSON lines) to this file")
    parser.add_argument("--source", choices=sorted(REQUESTS), action="append",
                        help="the integrations' source (repeatable; default legacy): `both` adds the Analytics API")
    parser.add_argument("--replicas", type=int, default=1,
                        help="`run` processes sharing the database (PostgreSQL only; SQLite allows one)")
    args = parser.parse_args()
    if args.replicas > 1 and not args.database_url:
        parser.error("--replicas needs --database-url (PostgreSQL): SQLite allows one `run` process")
    rows = []
    sources = sorted(set(args.source or ["legacy"]), key=lambda s: s != "legacy")  # legacy first: the yardstick
    for n in args.orgs or [100, 1000]:
        legacy_ms = None
        for source in sources:
            row = measure(n, args.database_url, args.backfill_days, args.lead, args.timeout, args.keep_log,
                          args.replicas, source)
            ms = float(str(row[CPU_MS]))
            legacy_ms = ms if source == "legacy" else legacy_ms
            # CPU per organization against the legacy-only sync of the same run (issue 11: at most 1.00)
            row.insert(CPU_MS + 1, f"{ms / legacy_ms:.2f}" if legacy_ms else "")
            rows.append(row)
            print(table(HEADER, rows[-1:]), flush=True)
    backend = "PostgreSQL" if args.database_url else "SQLite"
    print(f"\n{backend}:")
    print(table(HEADER, rows))


HEADER = ["orgs", "source", "run procs", "requests", "429s", "floor s", "wall s", "wall/floor", "all 1st by s",
          "min gap s", "CPU s", "CPU ms/org", "x legacy", "idle RSS MiB", "peak RSS MiB", "exact", "daily runs", "exit",
          "setup s"]
CPU_MS = HEADER.index("CPU ms/org")


if __name__ == "__main__":
    main()
