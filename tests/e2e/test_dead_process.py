"""A process that dies without cleaning up (SIGKILL) does not hold its integration: the next `sync-now` or
`run` on the same SQLite file, or another `run` replica on PostgreSQL, resumes at once at the last
committed page (not after `COST_WORKER_LEASE_SECONDS`, left at its default 300 s here), fetching at most the
page in flight twice, and ends equal to the simulator's truth. SIGTERM stops `sync-now` like SIGINT. A
`sync-now` waiting for another process's claim says who holds it. Real processes over real HTTP.

The figures (SIGKILL to the resumed run, and to its first request) are printed (`pytest -s`);
bench/takeover.py tabulates them."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from tests.conftest import PG_URL, private_pg_schema
from worker.storage.tables import integrations, sync_runs
from worker.sync.engine import TAKEN_OVER

from .procs import WORKER, Simulator, Worker, diff, window
from .takeover import Takeover, kill_and_resume, report_answers

pytestmark = pytest.mark.slow

DAYS = 365
LEASE = 300  # the default: nothing here may wait for a lease to expire
needs_pg = pytest.mark.skipif(not PG_URL, reason="needs COST_WORKER_TEST_DATABASE_URL (PostgreSQL)")


@pytest.fixture
def pg_url() -> Iterator[str]:
    assert PG_URL
    with private_pg_schema(PG_URL) as url:
        yield url


def check(sim: Simulator, worker: Worker, measured: Takeover, what: str) -> None:
    """Resumed at the checkpoint, at most one page twice, the dead run marked, data equal to the truth."""
    print(f"\n{what}: SIGKILL -> resumed run {measured.to_claim:.2f} s, -> its first request "
          f"{measured.to_request:.2f} s; {measured.answered} report requests (least {measured.minimum})")
    assert measured.to_request < LEASE / 2  # far from the lease expiring: taken over, not waited out
    assert measured.resumed_from == measured.checkpoint
    assert measured.minimum <= measured.answered <= measured.minimum + 1
    assert (measured.killed_run["outcome"], measured.killed_run["error"]) == ("interrupted", TAKEN_OVER)
    since, until = window(sim.today(), DAYS)
    assert diff(worker.report(since, until), sim.truth(0, since, until)) == []
    [item] = worker.integrations()
    assert (item["status"], item["backfill_done"]) == ("ok", True)


def test_sigkilled_sync_now_then_sync_now(sim: Simulator, make_worker: Callable[..., Worker]) -> None:
    """SQLite: a `sync-now` killed mid-backfill; the next `sync-now` resumes at once."""
    worker = make_worker(sim, requests_per_minute=120, lease_seconds=LEASE)
    worker.connect(sim.keys[0], "pro")
    baseline = report_answers(sim)
    measured, resumer = kill_and_resume(sim, worker, worker.popen("sync-now"), baseline=baseline, days=DAYS,
                                        reread=True, start_after_kill=["sync-now"])
    assert resumer is not None and resumer.wait(120) == 0
    check(sim, worker, measured, "SQLite sync-now -> sync-now")


def test_sigkilled_run_then_run(sim: Simulator, make_worker: Callable[..., Worker]) -> None:
    """SQLite: `run` killed mid-backfill (its one-`run` file lock dies with it too); the next `run` resumes."""
    worker = make_worker(sim, requests_per_minute=120, lease_seconds=LEASE)
    worker.connect(sim.keys[0], "pro")
    baseline = report_answers(sim)
    measured, resumer = kill_and_resume(sim, worker, worker.popen("run"), baseline=baseline, days=DAYS,
                                        reread=False, start_after_kill=["run"])
    assert resumer is not None
    try:
        check(sim, worker, measured, "SQLite run -> run")
    finally:
        resumer.send_signal(signal.SIGTERM)
        assert resumer.wait(15) == 0


@needs_pg
def test_sigkilled_replica_is_taken_over_by_another(sim: Simulator, make_worker: Callable[..., Worker],
                                                     pg_url: str) -> None:
    """PostgreSQL: two `run` replicas at the default poll interval; the one syncing is killed, the other
    resumes at its next poll (its session advisory lock ended with the dead one's connection)."""
    worker = make_worker(sim, requests_per_minute=120, lease_seconds=LEASE, database_url=pg_url,
                         poll_seconds=5)
    worker.connect(sim.keys[0], "pro")
    baseline = report_answers(sim)
    first = worker.popen("run")
    deadline = time.monotonic() + 30
    while report_answers(sim) == baseline:  # the first replica has the integration
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = worker.popen("run")
    try:
        measured, _ = kill_and_resume(sim, worker, first, baseline=baseline, days=DAYS, reread=False,
                                      start_after_kill=None, pages_before_kill=4)
        check(sim, worker, measured, "PostgreSQL replica -> replica")
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sync_now_stops_on_sigterm_as_on_sigint(sim: Simulator, make_worker: Callable[..., Worker],
                                                 sig: signal.Signals) -> None:
    """Either signal: exit promptly with the same code and message, the run `interrupted`, the lease given
    back; the next `sync-now` finishes the backfill exactly."""
    worker = make_worker(sim, requests_per_minute=120, lease_seconds=LEASE)
    worker.connect(sim.keys[0], "pro")
    baseline = report_answers(sim)
    proc = subprocess.Popen([*WORKER, "sync-now"], env=worker.env, cwd=worker.tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while report_answers(sim) - baseline < 3:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 1, err
    assert err.rstrip().endswith("Aborted!") and "Traceback" not in err
    engine = create_engine(worker.env["COST_WORKER_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            run = conn.execute(select(sync_runs).order_by(sync_runs.c.id.desc())).first()
            lease = conn.execute(select(integrations.c.lease_owner, integrations.c.lease_expires_at)).one()
    finally:
        engine.dispose()
    assert run is not None and (run.outcome, run.error) == ("interrupted", "stopped by shutdown")
    assert run.finished_at is not None and tuple(lease) == (None, None)
    worker.run("sync-now", timeout=120)
    since, until = window(sim.today(), DAYS)
    assert diff(worker.report(since, until), sim.truth(0, since, until)) == []


def test_a_waiting_sync_now_says_who_holds_it(sim: Simulator, make_worker: Callable[..., Worker],
                                              tmp_path: Path) -> None:
    """A second `sync-now` while the first runs: one stderr line naming the holder (host:pid:id), since and
    until when; once the first is stopped, the second takes over and finishes."""
    worker = make_worker(sim, requests_per_minute=120, lease_seconds=LEASE)
    worker.connect(sim.keys[0], "pro")
    baseline = report_answers(sim)
    first = worker.popen("sync-now")
    deadline = time.monotonic() + 60
    while report_answers(sim) - baseline < 2:
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.02)
    with (tmp_path / "second.err").open("w") as err:
        second = subprocess.Popen([*WORKER, "sync-now"], env=worker.env, cwd=worker.tmp_path,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
        deadline = time.monotonic() + 30
        while "waiting for another process" not in (tmp_path / "second.err").read_text():
            assert time.monotonic() < deadline and second.poll() is None
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)
        first.wait(10)
        assert second.wait(120) == 0
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
    waits = [ln for ln in (tmp_path / "second.err").read_text().splitlines() if "waiting for another" in ln]
    assert len(waits) == 1, waits
    assert waits[0].startswith("integration 1: waiting for another process syncing it: held by ")
    assert f":{first.pid}:" in waits[0] and " since 20" in waits[0] and "lease until 20" in waits[0]
    since, until = window(sim.today(), DAYS)
    assert diff(worker.report(since, until), sim.truth(0, since, until)) == []
