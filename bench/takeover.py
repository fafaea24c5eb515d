"""Takeover: a worker SIGKILLed mid-backfill, and how soon another process resumes its integration.

    python bench/takeover.py                          # SQLite, 3 kills per scenario
    python bench/takeover.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    python bench/takeover.py --repeat 5 --default-budget

Per kill: a `cost-worker simulate` process (900 requests/min, so only the worker's own budget paces), a
fresh database, one organization connected on the pro tier (365 days: 24 report pages), default
settings except the budget (`--requests-per-minute`, 120) and nothing about leases or polls
(`COST_WORKER_LEASE_SECONDS` 300, `COST_WORKER_POLL_SECONDS` 5). The first process is SIGKILLed after 3
answered report pages; then
- SQLite `sync-now -> sync-now`: a new `sync-now` is started;
- SQLite `run -> run`: a new `run` is started;
- PostgreSQL `replica -> replica`: a second `run`, started before the kill, resumes at its own poll.
Columns: claim = SIGKILL to the resumed run's `sync_runs.started_at`; 1st request = SIGKILL to its first
report request reaching the simulator (/_sim/stats); both median and max over the kills. Extra pages =
report requests answered beyond the least the backfill (and a sync-now's re-read) needs: the page in flight
at the kill, fetched again. Exact = the final `report` equals /_sim/truth.

`--default-budget` adds a row at the default 1 request/min (a 60-day backfill): the resumed run starts as
soon, but its first request waits for the organization's budget, which the dead process had just used.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from _common import Simulator, Worker, private_pg_schema, table, window
from e2e.procs import diff
from e2e.takeover import Takeover, kill_and_resume, report_answers


def one(kind: str, database_url: str | None, rpm: float, days: int, pages_before_kill: int) -> tuple[Takeover, bool]:
    with tempfile.TemporaryDirectory() as tmp, Simulator("--requests-per-minute", "900") as sim:
        scope: AbstractContextManager[str | None] = (private_pg_schema(database_url) if database_url
                                                     else nullcontext(None))
        with scope as url:
            worker = Worker(Path(tmp), sim.base_url, requests_per_minute=rpm, database_url=url,
                            lease_seconds=300, backfill_days_pro=days)
            worker.connect(sim.keys[0], "pro")
            baseline = report_answers(sim)
            first = worker.popen("sync-now" if kind == "sync-now" else "run")
            others = []
            if kind == "replica":
                deadline = time.monotonic() + 60
                while report_answers(sim) == baseline:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                others.append(worker.popen("run"))
            measured, resumer = kill_and_resume(
                sim, worker, first, baseline=baseline, days=days, reread=kind == "sync-now",
                start_after_kill=None if kind == "replica" else [kind if kind == "sync-now" else "run"],
                pages_before_kill=pages_before_kill, timeout=600)
            if resumer is not None:
                others.append(resumer)
            for proc in others:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            since, until = window(sim.today(), days)
            exact = diff(worker.report(since, until), sim.truth(0, since, until)) == []
            return measured, exact


def row(backend: str, scenario: str, rpm: float, results: list[tuple[Takeover, bool]]) -> list[object]:
    claims = [m.to_claim for m, _ in results]
    firsts = [m.to_request for m, _ in results]

    def fmt(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} / {max(values):.2f}"
    return [backend, scenario, f"{rpm:g}", len(results), fmt(claims), fmt(firsts),
            max(m.answered - m.minimum for m, _ in results), "yes" if all(e for _, e in results) else "NO"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="PostgreSQL base URL: adds the replica scenario")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--requests-per-minute", type=float, default=120)
    parser.add_argument("--default-budget", action="store_true", help="add a row at 1 request/min")
    args = parser.parse_args()
    scenarios: list[tuple[str, str, str, str | None]] = [
        ("SQLite", "sync-now -> sync-now", "sync-now", None), ("SQLite", "run -> run", "run", None)]
    if args.database_url:
        scenarios.append(("PostgreSQL", "replica -> replica", "replica", args.database_url))
    rows = []
    for backend, scenario, kind, url in scenarios:
        results = [one(kind, url, args.requests_per_minute, 365, 3) for _ in range(args.repeat)]
        rows.append(row(backend, scenario, args.requests_per_minute, results))
        print(table(HEADER, rows[-1:]), flush=True)
    if args.default_budget:
        rows.append(row("SQLite", "sync-now -> sync-now", 1, [one("sync-now", None, 1, 60, 1)]))
    print()
    print(table(HEADER, rows))


HEADER = ["backend", "killed -> resumed by", "budget/min", "kills", "claim s (median / max)",
          "1st request s (median / max)", "extra pages", "exact"]

if __name__ == "__main__":
    main()
