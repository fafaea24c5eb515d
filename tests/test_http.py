"""The health and metrics server of `cost-worker run`: liveness follows the scheduler, readiness the
database and its schema, /metrics is valid Prometheus text whose numbers match the simulator's own
request log and the stored rows; sync logs carry integration, window and request-id, never a key."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import OperationalError

from tests.simulated import COST_PATH, TODAY, USAGE_PATH, make_sim, report_requests
from tests.test_sync import integration, onboard
from worker.app import App
from worker.http import HealthServer
from worker.logs import setup_logging
from worker.simulator import SimulatorHandle
from worker.storage import repo
from worker.storage.db import head_revision
from worker.storage.tables import cost_rows, reconcile_runs, usage_rows
from worker.sync.engine import sync_now
from worker.sync.scheduler import SyncService

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = re.compile(r'^(cost_worker_[a-z0-9_]+)(\{([a-z_]+="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|NaN)$')


@pytest.fixture
def sim() -> SimulatorHandle:
    return make_sim(seed=9)


Client = Callable[[str], Awaitable[httpx.Response]]


@asynccontextmanager
async def serving(app: App, sim: SimulatorHandle, *, scheduler: bool = True) -> AsyncIterator[tuple[SyncService, HealthServer, Client]]:
    """A SyncService on the simulator (its scheduler started or not) and its HealthServer on a free port."""
    service = SyncService(app, transport=sim.transport())
    server = HealthServer(app, service, 0, host="127.0.0.1")
    await server.start()
    stop = asyncio.Event()
    task = asyncio.create_task(service.serve(stop)) if scheduler else None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
        async def get(path: str) -> httpx.Response:
            return await http.get(path)
        try:
            if task is not None:
                await asyncio.sleep(0)  # let serve() start the scheduler
                await service.dispatch_due()  # the poll job's first run, without waiting for its trigger
            yield service, server, get
        finally:
            stop.set()
            if task is not None:
                await task
            await server.close()


def parse_metrics(body: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text -> {sample name: [(labels, value)]}; asserts every line is well formed."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    typed: set[str] = set()
    for line in body.splitlines():
        if line.startswith("# HELP "):
            assert line.split(" ")[2].startswith("cost_worker_"), line
            continue
        if line.startswith("# TYPE "):
            name, kind = line.split(" ")[2:4]
            assert kind in ("gauge", "counter", "summary"), line
            typed.add(name)
            continue
        match = SAMPLE.match(line)
        assert match, f"bad sample line: {line!r}"
        name = match.group(1)
        assert name in typed or re.sub(r"_(sum|count)$", "", name) in typed, f"{name} has no TYPE"
        labels = dict(re.findall(r'([a-z_]+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        samples.setdefault(name, []).append((labels, float(match.group(4))))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


async def until_idle(service: SyncService) -> None:
    """Poll and wait for the dispatched syncs, a few times (a backfill, then anything due after it)."""
    for _ in range(3):
        await service.dispatch_due()
        while service.tasks:
            await asyncio.gather(*list(service.tasks.values()))


class TestHealthz:
    async def _get(self, app: App, sim: SimulatorHandle, *, scheduler: bool = True,
                   stale: bool = False) -> httpx.Response:
        async with serving(app, sim, scheduler=scheduler) as (service, _server, get):
            if stale:
                service.last_poll = time.monotonic() - 3600
            return await get("/healthz")

    def test_alive_while_the_scheduler_polls(self, app: App, sim: SimulatorHandle) -> None:
        """200 once the scheduler runs and has polled."""
        response = asyncio.run(self._get(app, sim))
        assert response.status_code == 200 and response.text.startswith("ok: scheduler running")

    def test_unhealthy_without_a_recent_poll(self, app: App, sim: SimulatorHandle) -> None:
        """503 when the poll job has not started for longer than the limit (a stuck loop or hung poll)."""
        response = asyncio.run(self._get(app, sim, stale=True))
        assert response.status_code == 503 and "no poll for" in response.text

    def test_unhealthy_before_the_scheduler_starts(self, app: App, sim: SimulatorHandle) -> None:
        """503 while no scheduler runs."""
        response = asyncio.run(self._get(app, sim, scheduler=False))
        assert response.status_code == 503 and "scheduler not running" in response.text

    def test_unknown_path_and_method(self, app: App, sim: SimulatorHandle) -> None:
        """404 for other paths, 405 for other methods."""
        async def go() -> tuple[int, int]:
            async with serving(app, sim) as (_s, server, get):
                async with httpx.AsyncClient() as http:
                    post = await http.post(f"http://127.0.0.1:{server.port}/healthz")
                return (await get("/nope")).status_code, post.status_code
        assert asyncio.run(go()) == (404, 405)


class TestReadyz:
    def test_ready_when_migrated(self, app: App, sim: SimulatorHandle) -> None:
        """200 naming the head revision when the database answers and is migrated."""
        async def go() -> httpx.Response:
            async with serving(app, sim, scheduler=False) as (_s, _server, get):
                return await get("/readyz")
        response = asyncio.run(go())
        assert response.status_code == 200 and str(head_revision()) in response.text

    def test_not_ready_when_schema_is_not_at_head(self, app: App, sim: SimulatorHandle) -> None:
        """503 when the database was migrated by another build (its revision differs from this head)."""
        with app.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0001_initial'"))

        async def go() -> httpx.Response:
            async with serving(app, sim, scheduler=False) as (_s, _server, get):
                return await get("/readyz")
        response = asyncio.run(go())
        assert response.status_code == 503 and "expects" in response.text

    def test_not_ready_when_database_fails(self, app: App, sim: SimulatorHandle,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """503 with one line (no credentials) when the database does not answer."""
        def down(_self: HealthServer) -> None:
            raise OperationalError("SELECT 1", {}, Exception("connection refused to postgresql://u:pw@db"))
        monkeypatch.setattr(HealthServer, "_check_database", down)

        async def go() -> httpx.Response:
            async with serving(app, sim, scheduler=False) as (_s, _server, get):
                return await get("/readyz")
        response = asyncio.run(go())
        assert response.status_code == 503 and "database unavailable" in response.text
        assert response.text.count("\n") == 1

    def test_not_ready_when_the_integrations_table_is_malformed(self, app: App, sim: SimulatorHandle) -> None:
        """An overwritten page of `integrations`: `SELECT 1` and the schema revision still answer, but every
        poll fails ("database disk image is malformed"), so /readyz, which runs the poll's queries, is 503."""
        if app.engine.dialect.name != "sqlite":
            pytest.skip("overwrites a page of the SQLite file")
        onboard(app, sim)
        with app.engine.begin() as conn:
            root = conn.exec_driver_sql("SELECT rootpage FROM sqlite_master WHERE name = 'integrations'").scalar_one()
            size = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
        app.engine.dispose()
        path = Path(app.engine.url.database or "")
        with contextlib.closing(sqlite3.connect(path)) as raw:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
        with path.open("r+b") as db:
            db.seek((root - 1) * size)
            db.write(b"\xff" * size)
        with app.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")  # what readiness used to check: still fine

        async def go() -> tuple[httpx.Response, httpx.Response]:
            async with serving(app, sim, scheduler=False) as (_s, _server, get):
                return await get("/readyz"), await get("/healthz")
        ready, _alive = asyncio.run(go())
        assert ready.status_code == 503, ready.text
        assert ready.text == "not ready: database unavailable: database disk image is malformed\n"


class TestMetrics:
    def test_metrics_match_the_simulator_and_the_tables(self, app: App, sim: SimulatorHandle) -> None:
        """After a backfill: requests equal the simulator's log, rows the tables, status ok."""
        iid = onboard(app, sim)
        sim.requests.clear()

        async def go() -> httpx.Response:
            async with serving(app, sim, scheduler=False) as (service, _server, get):
                await until_idle(service)
                return await get("/metrics")
        response = asyncio.run(go())
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        m = parse_metrics(response.text)
        i = str(iid)
        reports = report_requests(sim)
        assert value(m, "cost_worker_requests_total", integration_id=i) == len(reports)
        by_path = {path: len(report_requests(sim, path)) for path in (COST_PATH, USAGE_PATH)}
        assert value(m, "cost_worker_process_http_requests_total", integration_id=i, endpoint="cost",
                     status="200") == by_path[COST_PATH]
        assert value(m, "cost_worker_process_http_requests_total", integration_id=i, endpoint="usage",
                     status="200") == by_path[USAGE_PATH]
        assert value(m, "cost_worker_rate_limited_total", integration_id=i) == 0
        assert value(m, "cost_worker_retries_total", integration_id=i) == 0
        with app.engine.begin() as conn:
            runs = repo.recent_runs(conn, iid)
            stored = sum(conn.execute(select(func.count()).select_from(t).where(t.c.integration_id == iid))
                         .scalar_one() for t in (cost_rows, usage_rows))
        assert value(m, "cost_worker_rows_upserted_total", integration_id=i) == sum(r["rows"] for r in runs)
        assert value(m, "cost_worker_rows_upserted_total", integration_id=i) >= stored > 0
        assert value(m, "cost_worker_integration_status", integration_id=i, status="ok") == 1
        assert value(m, "cost_worker_integration_status", integration_id=i, status="error") == 0
        assert value(m, "cost_worker_backfill_progress_ratio", integration_id=i) == 1
        assert value(m, "cost_worker_backfill_days_remaining", integration_id=i) == 0
        last_success_at = integration(app, iid).last_success_at
        assert last_success_at is not None
        assert value(m, "cost_worker_last_success_timestamp_seconds", integration_id=i) == last_success_at.timestamp()
        assert value(m, "cost_worker_sync_runs_total", integration_id=i, kind="backfill", outcome="ok") == 1
        assert value(m, "cost_worker_sync_duration_seconds_count", integration_id=i) == 1
        assert value(m, "cost_worker_last_sync_outcome", integration_id=i, outcome="ok") == 1
        assert value(m, "cost_worker_sync_in_progress", integration_id=i) == 0
        assert value(m, "cost_worker_process_sync_runs_total", kind="backfill", result="ok") == 1
        assert value(m, "cost_worker_database_up") == 1
        assert sim.keys[0] not in response.text

    def test_backfill_progress_midway(self, app: App, sim: SimulatorHandle) -> None:
        """The ratio follows the slower endpoint's checkpoint."""
        iid = onboard(app, sim)
        integ = integration(app, iid)
        total = (integ.backfill_end - integ.backfill_start).days + 1
        with app.engine.begin() as conn:
            repo.update_integration(conn, iid, cost_checkpoint=integ.backfill_start + timedelta(days=20),
                                    usage_checkpoint=integ.backfill_start + timedelta(days=10))

        async def go() -> httpx.Response:
            async with serving(app, sim, scheduler=False) as (_s, _server, get):
                return await get("/metrics")
        m = parse_metrics(asyncio.run(go()).text)
        assert value(m, "cost_worker_backfill_progress_ratio", integration_id=str(iid)) == pytest.approx(10 / total)
        assert value(m, "cost_worker_backfill_days_remaining", integration_id=str(iid)) == total - 10
        assert value(m, "cost_worker_integration_status", integration_id=str(iid), status="pending") == 1

    def test_label_values_are_escaped(self, app: App, sim: SimulatorHandle) -> None:
        """Quotes, backslashes and newlines in a label (prometheus_client escapes them) keep the text valid."""
        iid = onboard(app, sim)
        with app.engine.begin() as conn:
            repo.update_integration(conn, iid, label='a "b"\\\nc')

        async def go() -> httpx.Response:
            async with serving(app, sim, scheduler=False) as (_s, _server, get):
                return await get("/metrics")
        body = asyncio.run(go()).text
        [line] = [ln for ln in body.splitlines() if ln.startswith("cost_worker_integration_info{")]
        assert 'label="a \\"b\\"\\\\\\nc"' in line
        assert value(parse_metrics(body), "cost_worker_integration_info", integration_id=str(iid)) == 1

    def test_every_documented_series_and_only_those(self, app: App, sim: SimulatorHandle) -> None:
        """The metric families of a scrape (after a sync and a reconcile) are exactly docs/operations.md's table."""
        iid = onboard(app, sim)
        with app.engine.begin() as conn:
            conn.execute(insert(reconcile_runs).values(
                finished_at=app.clock.now(), integration_id=iid, sources="", since=TODAY, until=TODAY,
                group_by="model", tolerance_pct=Decimal(1), billed_cost_usd=Decimal(1), tracked_cost_usd=Decimal(1),
                delta_usd=Decimal(0), unexplained_usd=Decimal(0), rows=1, drift_rows=0))

        async def go() -> httpx.Response:
            async with serving(app, sim, scheduler=False) as (service, _server, get):
                await until_idle(service)
                return await get("/metrics")
        served = set(re.findall(r"^# TYPE (\S+) ", asyncio.run(go()).text, re.MULTILINE))
        table = [ln for ln in (ROOT / "docs" / "operations.md").read_text().splitlines() if ln.startswith("| `cost_worker_")]
        documented = {name for ln in table for name in re.findall(r"`(cost_worker_[a-z_]+)", ln)}
        assert served == documented


class TestLogs:
    def test_page_and_failure_lines_carry_integration_window_and_request_id(self, app: App,
                                                                            sim: SimulatorHandle) -> None:
        """JSON lines of a sync: integration_id, window and request_id on page lines; no key anywhere."""
        iid = onboard(app, sim)
        sim.add_fault("500")  # the sync's first request fails once, then retries
        stream = io.StringIO()
        root = logging.getLogger()
        saved = (root.level, list(root.handlers))
        setup_logging("json", "info", stream=stream)
        try:
            async def go() -> None:
                async with serving(app, sim, scheduler=False) as (service, _server, _get):
                    await until_idle(service)
            asyncio.run(go())
        finally:
            root.handlers[:] = saved[1]
            root.setLevel(saved[0])
        lines = [json.loads(ln) for ln in stream.getvalue().splitlines()]
        pages = [ln for ln in lines if "stored" in ln["message"]]
        assert pages
        for ln in pages:
            assert ln["integration_id"] == iid
            assert re.fullmatch(r"\d{4}-\d\d-\d\d\.\.\d{4}-\d\d-\d\d", ln["window"])
            assert ln["request_id"]
            assert ln["sync_kind"] in ("backfill", "daily")
        failures = [ln for ln in lines if "failed (attempt" in ln["message"]]
        assert len(failures) == 1 and failures[0]["level"] == "warning"
        assert failures[0]["integration_id"] == iid and failures[0]["window"] and failures[0]["request_id"]
        started = [ln for ln in lines if "sync of" in ln["message"]]
        assert started and all(ln["integration_id"] == iid for ln in started)
        assert sim.keys[0] not in stream.getvalue()

    def test_sync_now_lines_carry_integration_window_and_request_id(self, app: App, sim: SimulatorHandle) -> None:
        """`sync-now` runs outside the service: its lines name the integration, window and request-id too."""
        iid = onboard(app, sim)
        stream = io.StringIO()
        root = logging.getLogger()
        saved = (root.level, list(root.handlers))
        setup_logging("json", "info", stream=stream)
        try:
            [outcome] = asyncio.run(sync_now(app, [iid], transport=sim.transport()))
        finally:
            root.handlers[:] = saved[1]
            root.setLevel(saved[0])
        assert outcome.ok
        lines = [json.loads(ln) for ln in stream.getvalue().splitlines()]
        pages = [ln for ln in lines if "stored" in ln["message"]]
        assert pages
        for ln in pages:
            assert (ln["integration_id"], ln["sync_kind"]) == (iid, "manual")
            assert re.fullmatch(r"\d{4}-\d\d-\d\d\.\.\d{4}-\d\d-\d\d", ln["window"])
            assert ln["request_id"]
        assert all(ln.get("integration_id") == iid for ln in lines if "sync of" in ln["message"])
        assert sim.keys[0] not in stream.getvalue()


# --- the real process ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def run_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "COST_WORKER_DATA_DIR": str(tmp_path), "COST_WORKER_LOG_FORMAT": "json",
           "COST_WORKER_POLL_SECONDS": "1"}


@pytest.mark.slow
class TestProcess:
    def test_run_serves_health_ready_and_metrics(self, run_env: dict[str, str]) -> None:
        """`cost-worker run` answers /healthz, /readyz and /metrics on COST_WORKER_HTTP_PORT."""
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "worker", "run"], env={**run_env,
                                "COST_WORKER_HTTP_PORT": str(port)}, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics")
            assert value(parse_metrics(metrics.text), "cost_worker_database_up") == 1
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0
            assert proc.stderr is not None
            proc.stderr.close()

    def test_run_listens_on_http_host_only(self, run_env: dict[str, str]) -> None:
        """COST_WORKER_HTTP_HOST=127.0.0.2 (a loopback address of its own): answers there, refuses 127.0.0.1."""
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "worker", "run"], env={
            **run_env, "COST_WORKER_HTTP_PORT": str(port), "COST_WORKER_HTTP_HOST": "127.0.0.2"},
            stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.2:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            assert httpx.get(f"http://127.0.0.2:{port}/healthz").status_code == 200
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/healthz")
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0

    @pytest.mark.parametrize(("host", "named"), [("192.0.2.1", "COST_WORKER_HTTP_HOST"),
                                                 ("no host!", "COST_WORKER_HTTP_HOST")])
    def test_bad_http_host_is_a_clear_usage_error(self, run_env: dict[str, str], host: str, named: str) -> None:
        """An address not of this machine, or not an address at all: exit 2, one line naming the setting."""
        result = subprocess.run([sys.executable, "-m", "worker", "run"], capture_output=True, text=True,
                                env={**run_env, "COST_WORKER_HTTP_PORT": str(free_port()),
                                     "COST_WORKER_HTTP_HOST": host}, timeout=30)
        assert result.returncode == 2, result.stderr
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and named in errors[0], result.stderr
        assert "Traceback" not in result.stderr

    def test_port_in_use_is_a_clear_usage_error(self, run_env: dict[str, str]) -> None:
        """A taken port stops `run` with exit 2 and one line naming COST_WORKER_HTTP_PORT."""
        with socket.socket() as busy:
            busy.bind(("0.0.0.0", 0))
            busy.listen()
            port = busy.getsockname()[1]
            result = subprocess.run([sys.executable, "-m", "worker", "run"], capture_output=True, text=True,
                                    env={**run_env, "COST_WORKER_HTTP_PORT": str(port)}, timeout=30)
        assert result.returncode == 2
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "COST_WORKER_HTTP_PORT" in errors[0]
