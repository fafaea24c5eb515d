"""Claims on integrations die with their process: a file lock beside an SQLite file, a session advisory
lock on PostgreSQL. Exclusive between holders (two processes, or two Apps in one), given back on release,
and freed by the kernel or the server when the holding process is SIGKILLed (real processes). A
`sync-now` that finds one held says who holds it and waits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, QueuePool, text

from tests.conftest import PG_URL, make_settings, private_pg_schema
from worker.app import App
from worker.clock import FakeClock
from worker.integrations import check_connection, connect, remove
from worker.secret import AdminKey
from worker.simulator import running_simulator
from worker.storage import repo
from worker.storage.claims import AdvisoryClaims, Claims, FileClaims, LeaseOnly, claims_for, lock_class
from worker.storage.db import make_engine
from worker.sync.engine import SyncOutcome, describe_holder, sync_now
from worker.vault import MasterKey

ROOT = Path(__file__).resolve().parents[1]
needs_pg = pytest.mark.skipif(not PG_URL, reason="needs COST_WORKER_TEST_DATABASE_URL (PostgreSQL)")


def holder_process(setup: str, integration_id: int) -> subprocess.Popen[str]:
    """A process that takes the claim (`setup` defines `claims`), says "held", and sleeps until killed."""
    code = "\n".join(["import time", setup, f"assert claims.claim({integration_id})", 'print("held", flush=True)',
                      "time.sleep(120)"])
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    if proc.stdout:
        proc.stdout.close()


class TestFileClaims:
    def test_exclusive_and_given_back(self, tmp_path: Path) -> None:
        """Two holders (two Apps of one process hold separate files): one claim at a time per integration."""
        first, second = FileClaims(tmp_path / "cw.db.locks"), FileClaims(tmp_path / "cw.db.locks")
        assert first.claim(1) and first.holds(1)
        assert not second.claim(1) and not first.claim(1)  # nor twice by the same holder
        assert second.claim(2)
        first.release(1)
        assert not first.holds(1) and second.claim(1)
        second.close()
        assert first.claim(1) and first.claim(2)
        first.close()
        assert oct((tmp_path / "cw.db.locks").stat().st_mode & 0o777) == "0o700"

    def test_a_killed_process_frees_its_claim(self, tmp_path: Path) -> None:
        """SIGKILL: no cleanup runs, and the claim is free at once all the same."""
        locks = tmp_path / "cw.db.locks"
        proc = holder_process(f"from pathlib import Path\nfrom worker.storage.claims import FileClaims\n"
                              f"claims = FileClaims(Path({str(locks)!r}))", 7)
        mine = FileClaims(locks)
        try:
            assert not mine.claim(7)
            kill(proc)
            assert mine.claim(7)
        finally:
            kill(proc) if proc.poll() is None else None
            mine.close()

    def test_kind_of_claim_per_database(self, tmp_path: Path) -> None:
        """An SQLite file: file locks beside it; SQLite in memory: the lease alone."""
        on_file = make_engine(f"sqlite:///{tmp_path / 'cw.db'}")
        in_memory = make_engine("sqlite://")
        try:
            claims: Claims = claims_for(on_file)
            assert isinstance(claims, FileClaims) and claims.directory == tmp_path / "cw.db.locks"
            assert isinstance(claims_for(in_memory), LeaseOnly) and not claims_for(in_memory).exclusive
        finally:
            on_file.dispose()
            in_memory.dispose()


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    assert PG_URL
    with private_pg_schema(PG_URL) as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


@needs_pg
class TestAdvisoryClaims:
    def test_exclusive_and_given_back(self, pg_engine: Engine) -> None:
        """Two sessions: one claim at a time per integration; released, it is the other's."""
        first, second = AdvisoryClaims(pg_engine), AdvisoryClaims(pg_engine)
        try:
            assert isinstance(claims_for(pg_engine), AdvisoryClaims)
            assert first.claim(1) and first.holds(1)
            assert not second.claim(1) and not first.claim(1)
            assert second.claim(2)
            first.release(1)
            assert second.claim(1) and not first.holds(1)
        finally:
            first.close()
            second.close()

    def test_the_claims_session_stays_out_of_the_pool(self, pg_engine: Engine) -> None:
        """The claims connection is detached: the pool's connections are all still there for queries."""
        claims = AdvisoryClaims(pg_engine)
        try:
            assert claims.claim(1)
            assert isinstance(pg_engine.pool, QueuePool) and pg_engine.pool.checkedout() == 0
        finally:
            claims.close()

    def test_a_killed_process_frees_its_claim(self, pg_engine: Engine) -> None:
        """SIGKILL: the server ends the session, and with it the lock."""
        url = pg_engine.url.render_as_string(hide_password=False)
        proc = holder_process(f"from worker.storage.db import make_engine\nfrom worker.storage.claims import "
                              f"AdvisoryClaims\nclaims = AdvisoryClaims(make_engine({url!r}))", 7)
        mine = AdvisoryClaims(pg_engine)
        try:
            assert not mine.claim(7)
            kill(proc)
            for _ in range(100):  # the server notices the closed socket at once; give it a moment
                if mine.claim(7):
                    break
                time.sleep(0.05)
            assert mine.holds(7)
        finally:
            kill(proc) if proc.poll() is None else None
            mine.close()

    def test_a_broken_session_loses_its_claims_and_reconnects(self, pg_engine: Engine) -> None:
        """The server ends the claims session (a restart, a network cut): `holds` says so, and the next claim
        opens a new session."""
        claims = AdvisoryClaims(pg_engine)

        def end_session_holding(integration_id: int) -> None:
            with pg_engine.connect() as conn:
                schema = conn.execute(text("SELECT current_schema()")).scalar_one()
                pid = conn.execute(text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = :i "
                                        "AND classid = CAST(:c AS oid)"),
                                   {"i": integration_id, "c": lock_class(schema) & 0xFFFFFFFF}).scalar_one()
                conn.execute(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid})  # waits for it to end
        try:
            assert claims.claim(3)
            end_session_holding(3)
            assert not claims.holds(3)
            assert claims.claim(3) and claims.holds(3)
            end_session_holding(3)
            assert claims.claim(4)  # straight on a dead session: retried once on a new one
            assert not claims.holds(3) and claims.holds(4)
        finally:
            claims.close()

    def test_deployments_in_other_schemas_do_not_collide(self, pg_engine: Engine) -> None:
        """Integration 1 of one schema and integration 1 of another are different claims."""
        assert PG_URL
        with private_pg_schema(PG_URL) as other_url:
            other = make_engine(other_url)
            mine, theirs = AdvisoryClaims(pg_engine), AdvisoryClaims(other)
            try:
                assert mine.claim(1) and theirs.claim(1)
            finally:
                mine.close()
                theirs.close()
                other.dispose()


def test_lock_class_is_stable_across_processes() -> None:
    """Derived with blake2b from the schema (Python's hash() differs per process)."""
    code = "from worker.storage.claims import lock_class; print(lock_class('public'), lock_class('cw_x'))"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "random"}
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                           cwd=ROOT).stdout for _ in range(2)}
    assert runs == {f"{lock_class('public')} {lock_class('cw_x')}\n"}
    assert lock_class("public") != lock_class("cw_x") and -2**31 <= lock_class("public") < 2**31


class TestSyncNowWaits:
    @pytest.fixture
    def two_apps(self, db_url: str, tmp_path: Path, master_key: MasterKey, clock: FakeClock) -> Iterator[tuple[App, App]]:
        """Two processes' Apps on one database, the simulator's organization connected."""
        with running_simulator(orgs=1, seed=2, today=clock.now().date(), requests_per_minute=0) as sim:
            settings = make_settings(db_url, tmp_path, master_key, api_base_url=sim.base_url,
                                     requests_per_minute=6000, burst=10)
            first, second = App(settings, clock=clock), App(settings, clock=clock)
            key = AdminKey(sim.keys[0])
            connect(first, key, asyncio.run(check_connection(first, key)), label="org", tier="free")
            try:
                yield first, second
            finally:
                first.close()
                second.close()

    def hold(self, app: App, iid: int) -> repo.LeaseHolder:
        """`app` claims the integration and records its lease, as a sync of it would."""
        assert app.claims.claim(iid)
        now = app.clock.now()
        with app.engine.begin() as conn:
            assert repo.take_lease(conn, iid, app.owner, now, now + timedelta(seconds=300))
            holder = repo.lease_holder(conn, iid)
        assert holder is not None
        return holder

    def test_says_who_holds_it_once_and_resumes_when_freed(self, two_apps: tuple[App, App], clock: FakeClock) -> None:
        """`sync-now` finds the integration claimed: it reports the holder (owner, since, until) once, keeps
        trying, and syncs as soon as the holder lets go."""
        holding, waiting = two_apps
        held = self.hold(holding, 1)
        heard: list[tuple[int, repo.LeaseHolder]] = []
        tries = 0

        def on_wait(iid: int, holder: repo.LeaseHolder) -> None:
            heard.append((iid, holder))

        async def go() -> list[SyncOutcome]:
            async def release_later() -> None:
                nonlocal tries
                while len(clock.sleeps) < 3:  # three tries found it held
                    await asyncio.sleep(0.01)
                tries = len(clock.sleeps)
                with holding.engine.begin() as conn:
                    repo.release_lease(conn, 1, holding.owner)
                holding.claims.release(1)
            releasing = asyncio.create_task(release_later())
            outcomes = await sync_now(waiting, [1], on_claim_wait=on_wait)
            await releasing
            return outcomes

        [outcome] = asyncio.run(go())
        assert outcome.ok, outcome.message
        assert heard == [(1, held)] and held.owner == holding.owner and tries >= 3
        assert describe_holder(held).startswith(f"held by {holding.owner} since ")

    def test_a_removed_integration_ends_the_wait(self, two_apps: tuple[App, App]) -> None:
        """The integration is removed while `sync-now` waits for it: a failure, not a wait for ever."""
        holding, waiting = two_apps
        self.hold(holding, 1)

        def on_wait(_iid: int, _holder: repo.LeaseHolder) -> None:
            assert remove(holding.engine, 1)

        [outcome] = asyncio.run(sync_now(waiting, [1], on_claim_wait=on_wait))
        assert (outcome.ok, outcome.message) == (False, "failed: the integration was removed meanwhile")
        holding.claims.release(1)
