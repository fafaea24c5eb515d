"""A real `cost-worker run` against a real simulator process (steady traffic, yesterday restated to 5x),
with a budget and a webhook from the environment: it notifies the webhook of the budget and of the
anomaly, once each, serves them on /metrics, and never writes the webhook's secret URL to its logs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.test_http import parse_metrics, value
from tests.watch.receiver import Receiver

from .procs import WORKER, Simulator, Worker

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_run_notifies_and_exports(make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    """Budget `over` and the 5x day each reach the webhook exactly once; /metrics has both; logs hold no URL."""
    receiver = Receiver()
    port = free_port()
    with Simulator("--requests-per-minute", "900", "--traffic", "steady") as sim:
        today = sim.today()
        yesterday = today - timedelta(days=1)
        sim.fault(f"spike:day={yesterday.isoformat()},factor=5")
        worker = make_worker(sim, http_port=port, http_host="127.0.0.1", poll_seconds=1,
                             budgets=json.dumps([{"name": "claude", "limit_usd": "10"}]),
                             notify=json.dumps([{"url": receiver.url, "format": "json"}]))
        worker.connect(sim.keys[0], "free")
        log = (tmp_path / "run.log").open("w")
        proc = subprocess.Popen([*WORKER, "run"], env=worker.env, cwd=tmp_path, stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and {r.json["event"] for r in receiver.received} != {"budget", "anomaly"}:
                assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(3)  # a few more polls: nothing may be sent twice
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(20)
            log.close()
            receiver.close()
    logs = (tmp_path / "run.log").read_text()
    assert code == 0, logs[-3000:]
    events = sorted((r.json["event"], r.json["key"]) for r in receiver.received)
    assert events == [("anomaly", f"anomaly:1:{yesterday}"),
                      ("budget", f"budget:claude:{today.replace(day=1)}:over")], events
    samples = parse_metrics(metrics)
    assert value(samples, "cost_worker_budget_limit_usd", budget="claude") == 10
    assert value(samples, "cost_worker_budget_status", budget="claude", status="over") == 1
    start = datetime.combine(yesterday, datetime.min.time(), UTC).timestamp()
    assert value(samples, "cost_worker_spend_anomaly_last_day_timestamp_seconds", integration_id="1") == start
    assert receiver.token not in logs and "notified [[notify]] #1 (json, 127.0.0.1)" in logs
