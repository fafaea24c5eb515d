"""Hostile answers against real worker processes: a body that trickles, one that never ends, amounts and
token counts no bill has. Each ends as a recorded, explained failure (exit 1, run `error`, status `error`,
`last_error` naming the cause), never a hang, never gigabytes of memory, never a stored absurdity.

The worker runs with its address space capped (`MEMORY_CAP`): a process that tried to hold a whole
oversized body, or to expand a billion-digit Decimal, dies of MemoryError instead of taking the machine.
"""

from __future__ import annotations

import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from worker.storage.db import make_engine
from worker.storage.tables import cost_rows, sync_runs, usage_rows

from .conftest import RPM
from .hostile import HostileProxy
from .procs import WORKER, Simulator, Worker

pytestmark = pytest.mark.slow

MEMORY_CAP = 1536 * 1024 * 1024  # bytes of address space per worker process


@pytest.fixture
def proxy(sim: Simulator) -> Iterator[HostileProxy]:
    with HostileProxy(sim.base_url) as handle:
        yield handle


def _worker(tmp_path: Path, proxy: HostileProxy, **settings: object) -> Worker:
    worker = Worker(tmp_path, proxy.base_url, requests_per_minute=RPM)
    worker.env.update({f"COST_WORKER_{name.upper()}": str(value) for name, value in settings.items()})
    return worker


def _run_capped(worker: Worker, *args: str, key: str | None = None,
                timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`worker.run(..., check=False)` with the address space capped at MEMORY_CAP."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    env = dict(worker.env, **({"ANTHROPIC_ADMIN_KEY": key} if key else {}))
    return subprocess.run([*WORKER, *args], env=env, cwd=worker.tmp_path, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, preexec_fn=cap, check=False)


def _last_run(worker: Worker) -> dict[str, Any]:
    engine = make_engine(worker.env["COST_WORKER_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            row = conn.execute(select(sync_runs).order_by(sync_runs.c.id.desc()).limit(1)).mappings().one()
            counts = {"cost_rows": conn.execute(select(func.count()).select_from(cost_rows)).scalar_one(),
                      "usage_rows": conn.execute(select(func.count()).select_from(usage_rows)).scalar_one()}
        return {**row, **counts}
    finally:
        engine.dispose()


def _assert_recorded_failure(worker: Worker, result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 1, one FAILED line, the run closed as `error` and the integration `error`, each naming `words`."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr[-3000:]
    [item] = worker.integrations()
    assert item["status"] == "error", item
    run = _last_run(worker)
    assert run["outcome"] == "error" and run["finished_at"] is not None, run
    for text in (item["last_error"], run["error"]):
        assert "\n" not in text
        for word in words:
            assert word in text, (word, text)
    return str(item["last_error"])


class TestSlowBody:
    def test_sync_fails_as_a_timeout_after_its_attempts(self, tmp_path: Path, sim: Simulator,
                                                        proxy: HostileProxy) -> None:
        """200, content-length 100000, one byte at a time: each attempt ends at COST_WORKER_HTTP_TIMEOUT,
        is retried like a timeout, and the sync ends as a recorded failure after its attempts."""
        worker = _worker(tmp_path, proxy, http_timeout=2, max_attempts=3)
        worker.connect(sim.keys[0])
        proxy.spoil("slow", "cost_report", interval=0.2)
        result = _run_capped(worker, "sync-now", timeout=120)
        _assert_recorded_failure(worker, result, "COST_WORKER_HTTP_TIMEOUT", "3 attempt")
        assert proxy.served()["served"]["slow"] == 3  # every attempt was a real request, cut at the deadline

    def test_connection_test_does_not_hang(self, tmp_path: Path, sim: Simulator, proxy: HostileProxy) -> None:
        """A trickling /me makes `connect` fail after its attempts, with one line, storing nothing."""
        worker = _worker(tmp_path, proxy, http_timeout=2, max_attempts=2)
        proxy.spoil("slow", "/organizations/me", interval=0.2)
        result = _run_capped(worker, "connect", key=sim.keys[0], timeout=120)
        assert result.returncode == 1, result.stderr[-3000:]
        [line] = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        assert "COST_WORKER_HTTP_TIMEOUT" in line and "2 attempt" in line
        assert worker.integrations() == []


class TestBodySize:
    @pytest.mark.parametrize("declare", [False, True], ids=["chunked", "content-length"])
    def test_oversized_body_fails_naming_the_cap(self, tmp_path: Path, sim: Simulator, proxy: HostileProxy,
                                                 declare: bool) -> None:
        """A 3 GB answer (streamed, or announced by content-length) is dropped after at most the cap:
        the page is asked for again with fewer days, then the sync fails naming the setting."""
        worker = _worker(tmp_path, proxy, max_response_bytes=1024 * 1024)
        worker.connect(sim.keys[0])
        proxy.spoil("huge", "cost_report", size=3 * 1024**3, declare=declare)
        result = _run_capped(worker, "sync-now")
        _assert_recorded_failure(worker, result, "COST_WORKER_MAX_RESPONSE_BYTES", "1048576")
        served = proxy.served()
        assert served["served"]["huge"] <= 5  # limit 31, 15, 7, 3, 1: then it gives up
        assert served["body_bytes"] < 200 * 1024 * 1024  # never read whole: the connection was dropped
        assert _last_run(worker)["cost_rows"] == 0


class TestMagnitudes:
    @pytest.mark.parametrize(("path", "field", "raw", "words"), [
        ("cost_report", "amount", '"1e999999999"', "amount 1E+999999999"),
        ("cost_report", "amount", "1.5e999999999", "amount 1.5E+999999999"),
        ("cost_report", "amount", '"1e400"', "amount 1E+400"),
        ("usage_report", "output_tokens", "1.5e999999999", "output_tokens 1.5E+999999999"),
        ("usage_report", "cache_creation.ephemeral_5m_input_tokens", "1e400", "ephemeral_5m 1E+400"),
        ("usage_report", "uncached_input_tokens", "9223372036854775808", "uncached_input_tokens 9223372036854775808"),
    ], ids=["amount-text", "amount-number", "amount-1e400", "tokens-number", "cache-1e400", "tokens-2^63"])
    def test_out_of_bounds_is_a_protocol_violation(self, tmp_path: Path, sim: Simulator, proxy: HostileProxy,
                                                   path: str, field: str, raw: str, words: str) -> None:
        """An amount or token count no bill has fails the page with a one-line reason before any
        arithmetic: nothing of that page is stored, the process stays small."""
        worker = _worker(tmp_path, proxy)
        worker.connect(sim.keys[0])
        proxy.spoil("field", path, field=field, raw=raw)
        result = _run_capped(worker, "sync-now")
        _assert_recorded_failure(worker, result, words, "sane bound")
        stored = _last_run(worker)
        assert stored["cost_rows" if path == "cost_report" else "usage_rows"] == 0
