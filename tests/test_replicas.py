"""Real `cost-worker run` processes against the real-HTTP simulator: SIGTERM mid-backfill, several
replicas on one PostgreSQL (shared work, one daily run, one request budget, takeover after SIGKILL,
`sync-now` beside them) and SQLite's one-`run` rule. Every test checks the stored data against the
simulator's independent ground truth and counts requests on the simulator's side.

Both sides allow 60 requests/minute per organization (the simulator's token bucket, burst 1, the
worker's shared GCRA bucket): two replicas that did not share the budget would send 120/minute and
be refused constantly, so zero 429s proves the budget is shared.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from tests.conftest import PG_URL, private_pg_schema
from worker.app import App
from worker.integrations import check_connection, connect
from worker.secret import AdminKey
from worker.settings import Settings
from worker.simulator import SimulatorHandle, running_simulator
from worker.storage import repo
from worker.storage.tables import cost_rows, integrations, revisions, usage_rows
from worker.sync.engine import TAKEN_OVER
from worker.vault import MasterKey

pytestmark = pytest.mark.slow

WORKER_RPM, SIM_RPM = 60, 60
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]  # (name, labels) -> value
needs_pg = pytest.mark.skipif(not PG_URL, reason="needs COST_WORKER_TEST_DATABASE_URL (PostgreSQL)")


# --- fixtures and helpers ----------------------------------------------------------------------------

@pytest.fixture
def pg_url() -> Iterator[str]:
    """A private schema on the test PostgreSQL (dropped afterwards)."""
    assert PG_URL
    with private_pg_schema(PG_URL) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cw.db'}"


class Deployment:
    """One database, one master key, one simulator; worker processes started on demand."""

    def __init__(self, db_url: str, sim: SimulatorHandle, tmp_path: Path, **settings: Any) -> None:
        self.sim, self.tmp_path = sim, tmp_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COST_WORKER_")}
        self.env.update({
            "COST_WORKER_DATABASE_URL": db_url, "COST_WORKER_MASTER_KEY": MasterKey.generate().to_text(),
            "COST_WORKER_API_BASE_URL": sim.base_url, "COST_WORKER_REQUESTS_PER_MINUTE": str(WORKER_RPM),
            "COST_WORKER_BURST": "1", "COST_WORKER_POLL_SECONDS": "1", "COST_WORKER_LEASE_SECONDS": "10",
            "COST_WORKER_HTTP_PORT": "0", "COST_WORKER_LOG_FORMAT": "json",
            "COST_WORKER_DATA_DIR": str(tmp_path / "data"),
            **{f"COST_WORKER_{k.upper()}": str(v) for k, v in settings.items()},
        })
        values = {k.removeprefix("COST_WORKER_").lower(): v for k, v in self.env.items()
                  if k.startswith("COST_WORKER_") and k != "COST_WORKER_TEST_DATABASE_URL"}
        self.app = App(Settings.model_validate(values))
        self.procs: list[subprocess.Popen[str]] = []
        self.ports: dict[int, int] = {}  # pid -> the /metrics port of a replica started with http=True

    def connect(self, org: int) -> int:
        key = AdminKey(self.sim.keys[org])
        organization = asyncio.run(check_connection(self.app, key))
        return connect(self.app, key, organization, label=f"org {org}", tier="free", source="legacy")

    def start(self, *args: str, name: str = "run", http: bool = False) -> subprocess.Popen[str]:
        """Start a worker command (`run` by default); with `http`, its /metrics on a port of its own."""
        env = dict(self.env)
        if http:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            env.update(COST_WORKER_HTTP_PORT=str(port), COST_WORKER_HTTP_HOST="127.0.0.1")
        with (self.tmp_path / f"{name}-{len(self.procs)}.log").open("w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "worker", *(args or ("run",))], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        if http:
            self.ports[proc.pid] = port
        return proc

    def metrics(self, proc: subprocess.Popen[str]) -> tuple[float, Series] | None:
        """(wall time just before the scrape, its samples) of a replica's /metrics; None while it does not
        answer."""
        at = time.time()
        try:
            response = httpx.get(f"http://127.0.0.1:{self.ports[proc.pid]}/metrics", timeout=5)
        except httpx.TransportError:
            return None
        if response.status_code != 200:
            return None
        series: Series = {}
        for line in response.text.splitlines():
            match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
            if match:
                labels = frozenset(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
                series[(match.group(1), labels)] = float(match.group(3))
        return at, series

    def polled_since(self, proc: subprocess.Popen[str], moment: float) -> bool:
        """Whether the replica's scheduler has started a poll after wall time `moment` (the scrape began after
        the poll did, so `at - age` is never later than the poll's start)."""
        scraped = self.metrics(proc)
        if scraped is None:
            return False
        at, series = scraped
        age = series.get(("cost_worker_scheduler_last_poll_age_seconds", frozenset()), -1.0)
        return age >= 0 and at - age > moment

    def outcomes(self, proc: subprocess.Popen[str]) -> dict[frozenset[tuple[str, str]], float]:
        """The replica's own sync outcomes (cost_worker_process_sync_runs_total, by kind and result)."""
        scraped = self.metrics(proc)
        assert scraped is not None
        return {labels: v for (name, labels), v in scraped[1].items() if name == "cost_worker_process_sync_runs_total"}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker", *args], env=self.env, capture_output=True,
                              text=True, timeout=120)

    def integration(self, iid: int) -> repo.Integration:
        with self.app.engine.begin() as conn:
            found = repo.get_integration(conn, iid)
        assert found is not None
        return found

    def runs(self, iid: int) -> list[dict[str, Any]]:
        with self.app.engine.begin() as conn:
            return sorted(repo.recent_runs(conn, iid, limit=1000), key=lambda r: r["id"])

    def stop_all(self) -> list[int | None]:
        """SIGTERM every live process; each must exit within 10 s."""
        codes: list[int | None] = []
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=10))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(None)
        return codes

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.app.close()


@contextmanager
def deployment(db_url: str, tmp_path: Path, orgs: int = 1, sim_options: dict[str, Any] | None = None,
               **settings: Any) -> Iterator[Deployment]:
    with running_simulator(orgs=orgs, seed=23, requests_per_minute=SIM_RPM, burst=1, **(sim_options or {})) as sim:
        d = Deployment(db_url, sim, tmp_path, **settings)
        try:
            yield d
        finally:
            d.close()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def all_polled_since(d: Deployment, replicas: list[subprocess.Popen[str]], moment: float) -> bool:
    return all(d.polled_since(r, moment) for r in replicas)


def assert_report_equals_truth(d: Deployment, iid: int, org: int) -> None:
    """`cost-worker report --format json` equals the simulator's truth, per (day, model), exactly."""
    integ = d.integration(iid)
    first, last = integ.backfill_start, integ.backfill_end
    result = d.cli("report", "--since", first.isoformat(), "--until", last.isoformat(),
                   "--integration", str(iid), "--format", "json")
    assert result.returncode == 0, result.stderr
    stored = {(r["date"], r["model"]): (Decimal(r["cost_usd"]), r["input_tokens"], r["output_tokens"],
                                        r["cache_read_tokens"], r["cache_write_tokens"])
              for r in json.loads(result.stdout)}
    truth = {(t.date.isoformat(), t.model): (t.cost_usd, t.uncached_input_tokens, t.output_tokens,
                                             t.cache_read_input_tokens,
                                             t.cache_creation_5m_input_tokens + t.cache_creation_1h_input_tokens)
             for t in d.sim.data.truth(org, first, last + timedelta(days=1))}
    truth = {k: v for k, v in truth.items() if any(v)}
    stored = {k: v for k, v in stored.items() if any(v)}
    assert len(truth) > 20
    assert stored == truth


def sim_requests(d: Deployment, org: int) -> tuple[int, int]:
    """(requests, 429s) the simulator counted for one organization's key."""
    stats = d.sim.stats()
    entries = [v for v in stats["keys"].values() if v["org"] == org]
    return sum(e["requests"] for e in entries), sum(e["rate_limited"] for e in entries)


def pages(days: int) -> int:
    """Report requests one process makes for a backfill of `days` (31 days a page, both endpoints)."""
    return 2 * math.ceil(days / 31)


def stored_days(d: Deployment, table: Any, iid: int) -> set[date]:
    with d.app.engine.begin() as conn:
        return set(conn.execute(select(table.c.day).where(table.c.integration_id == iid).distinct()).scalars())


def truth_days(d: Deployment, org: int, first: date, end: date, kind: str) -> set[date]:
    """Days in [first, end) with any cost (kind cost) or any token (kind usage) in the truth."""
    rows = d.sim.data.truth(org, first, end)
    if kind == "cost":
        return {r.date for r in rows if r.cost_usd}
    return {r.date for r in rows if r.model is not None and any(list(r.as_json().values())[3:])}


def no_revisions(d: Deployment) -> bool:
    with d.app.engine.begin() as conn:
        return conn.execute(select(func.count()).select_from(revisions)).scalar_one() == 0


# --- SIGTERM -----------------------------------------------------------------------------------------

class TestSigterm:
    def test_sigterm_mid_backfill_leaves_a_consistent_database_and_a_restart_completes(
            self, sqlite_url: str, tmp_path: Path) -> None:
        """SIGTERM while pages are in flight: exit 0 within 10 s, run `interrupted`, lease released, every
        stored day below its checkpoint and none above; a restart finishes with data equal to the truth."""
        days = 200
        # Each answer takes 0.7 s, so the signal most likely lands while a request is in flight.
        with deployment(sqlite_url, tmp_path, sim_options={"faults": ["delay:count=100000,seconds=0.7"]},
                        backfill_days_free=days) as d:
            iid = d.connect(0)
            proc = d.start()
            wait_for(lambda: (d.integration(iid).cost_checkpoint - d.integration(iid).backfill_start).days >= 62,
                     60, "two cost pages stored")
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert time.monotonic() - t0 < 10

            integ = d.integration(iid)
            assert integ.lease_owner is None and integ.lease_expires_at is None
            assert not integ.backfill_done
            (run,) = d.runs(iid)
            assert run["outcome"] == "interrupted" and run["error"] == "stopped by shutdown"
            assert run["finished_at"] is not None
            for table, checkpoint, kind in ((cost_rows, integ.cost_checkpoint, "cost"),
                                            (usage_rows, integ.usage_checkpoint, "usage")):
                assert stored_days(d, table, iid) == truth_days(d, 0, integ.backfill_start, checkpoint, kind), kind

            d.start()
            wait_for(lambda: d.integration(iid).status == "ok", 60, "the restarted backfill")
            assert d.stop_all()[-1] == 0
            assert_report_equals_truth(d, iid, 0)
            assert no_revisions(d)
            total, limited = sim_requests(d, 0)
            assert limited == 0
            # One page (the one in flight at SIGTERM) may be asked twice; nothing else is.
            assert pages(days) + 2 <= total <= pages(days) + 3  # +2: check_connection's two requests
            assert [r["outcome"] for r in d.runs(iid)] == ["interrupted", "ok"]


# --- SQLite: one `run` -----------------------------------------------------------------------------

class TestSqliteSingleRun:
    def test_second_run_refused_but_sync_now_cooperates(self, sqlite_url: str, tmp_path: Path) -> None:
        """A second `run` on the same SQLite file exits 2 with one line; `sync-now` beside `run` succeeds."""
        with deployment(sqlite_url, tmp_path, backfill_days_free=40) as d:
            iid = d.connect(0)
            first = d.start()
            wait_for(lambda: "cost-worker running" in (tmp_path / "run-0.log").read_text(), 30, "run to start")
            second = d.cli("run")
            assert second.returncode == 2
            errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
            assert len(errors) == 1 and "another `cost-worker run` is already using" in errors[0], second.stderr
            assert first.poll() is None
            now = d.cli("sync-now")
            assert now.returncode == 0, now.stderr
            assert d.stop_all() == [0]
            assert_report_equals_truth(d, iid, 0)
            assert sim_requests(d, 0)[1] == 0
            # after `run` stopped, the lock is free again
            again = d.start()
            wait_for(lambda: "cost-worker running" in (tmp_path / "run-1.log").read_text(), 30, "restart")
            again.send_signal(signal.SIGTERM)
            assert again.wait(timeout=10) == 0


# --- replicas on PostgreSQL ------------------------------------------------------------------------

@needs_pg
class TestReplicas:
    def test_three_replicas_share_the_work_the_budget_and_the_daily_slot(self, pg_url: str,
                                                                       tmp_path: Path) -> None:
        """3 replicas + a `sync-now`, 2 organizations: requests equal one process's, zero 429s, one daily run
        per integration, runs of an integration never overlap, data equal to the truth."""
        days = 100
        with deployment(pg_url, tmp_path, orgs=2, backfill_days_free=days) as d:
            ids = [d.connect(0), d.connect(1)]
            with d.app.engine.begin() as conn:  # make today's daily slot due once the backfill is done
                conn.execute(update(integrations).values(last_daily_slot=None))
            d.sim.reset_stats()
            replicas = [d.start(http=True) for _ in range(3)]
            wait_for(functools.partial(all_polled_since, d, replicas, 0), 30, "every replica to poll")
            manual = d.start("sync-now", name="sync-now")
            wait_for(lambda: manual.poll() is not None, 80, "sync-now")
            assert manual.returncode == 0
            wait_for(lambda: all(len([r for r in d.runs(i) if r["kind"] == "daily"]) == 1
                                 and all(r["outcome"] != "running" for r in d.runs(i)) for i in ids),
                     40, "the daily runs")
            # Every replica then polls twice more; the first of those polls ran to its end before the second
            # started (one poll at a time), and anything it started had a poll interval to record a run or an
            # outcome: nothing else may run.
            before: list[dict[frozenset[tuple[str, str]], float]] = []
            for _ in range(2):
                moment = time.time()
                wait_for(functools.partial(all_polled_since, d, replicas, moment), 30, "a poll by every replica")
                before = before or [d.outcomes(r) for r in replicas]
            assert [d.outcomes(r) for r in replicas] == before
            assert d.stop_all() == [0, 0, 0, 0]

            for org, iid in enumerate(ids):
                runs = d.runs(iid)
                assert sorted(r["kind"] for r in runs) == ["backfill", "daily", "manual"] or \
                    sorted(r["kind"] for r in runs) == ["daily", "manual"], runs
                assert all(r["outcome"] == "ok" for r in runs), runs
                spans = sorted((r["started_at"], r["finished_at"]) for r in runs)
                assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
                requests, limited = sim_requests(d, org)
                # One process: the backfill's pages, then the manual and the daily re-read (one page each way).
                assert limited == 0
                assert requests == pages(days) + 2 + 2
                assert sum(r["requests"] for r in runs) == requests
                integ = d.integration(iid)
                assert integ.status == "ok" and integ.lease_owner is None
                assert_report_equals_truth(d, iid, org)
            assert no_revisions(d)

    def test_a_killed_replica_is_taken_over_at_once(self, pg_url: str, tmp_path: Path) -> None:
        """SIGKILL mid-backfill: another replica resumes from the last committed page at its next poll (the
        dead one's advisory lock ended with its connection; its 10 s lease is not waited out); nothing lost
        or duplicated, zero 429s, at most the page in flight asked twice."""
        days = 200
        with deployment(pg_url, tmp_path, backfill_days_free=days) as d:
            iid = d.connect(0)
            d.sim.reset_stats()
            victim = d.start()
            wait_for(lambda: (d.integration(iid).cost_checkpoint - d.integration(iid).backfill_start).days >= 62,
                     60, "two cost pages stored")
            survivor = d.start(http=True)
            skipped = frozenset({("kind", "backfill"), ("result", "skipped")})
            wait_for(lambda: d.polled_since(survivor, 0) and d.outcomes(survivor).get(skipped, 0) >= 1, 30,
                     "the survivor to poll and find the lease held")
            victim.kill()
            victim.wait()
            killed_at = datetime.now(UTC)
            integ = d.integration(iid)
            resume_from = min(integ.cost_checkpoint, integ.usage_checkpoint)
            assert integ.lease_owner is not None  # the dead process's lease, until the survivor takes it

            wait_for(lambda: d.integration(iid).status == "ok", 60, "the takeover to finish the backfill")
            assert survivor.poll() is None
            assert d.stop_all()[-1] == 0

            first, second = d.runs(iid)
            assert (first["outcome"], first["error"]) == ("interrupted", TAKEN_OVER)
            assert second["outcome"] == "ok"
            assert second["window_start"] == resume_from
            assert second["started_at"] >= killed_at
            assert_report_equals_truth(d, iid, 0)
            assert no_revisions(d)
            requests, limited = sim_requests(d, 0)
            assert limited == 0
            assert pages(days) <= requests <= pages(days) + 1
