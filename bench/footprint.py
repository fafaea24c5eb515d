"""Footprint: start time, idle memory of the service, peak memory of the largest backfill.

    python bench/footprint.py [N] [--integrations 100] [--sample-seconds 10] [--rpm 6000] [--only start|memory]

1. `cost-worker --help` start time (target <= 0.3 s), median of N runs (default 10).
2. Resident memory of an idle `cost-worker run` with 100 integrations (target <= 100 MB): a
   `cost-worker simulate --orgs 100` process; each organization connected (`cost-worker connect`, free
   tier) and backfilled (`cost-worker sync-now`), so every integration is `ok` with its daily slot done;
   then `cost-worker run` (its HTTP server on a free port) is started, `/healthz` tells when it is up, and
   once it is idle (nothing in flight or run after two polls) VmRSS is sampled from /proc/PID/status for
   --sample-seconds; VmHWM is its peak since start. The same is measured with no integration, as a base.
3. Peak memory of the largest backfill: the organization with the most stored rows above, connected with
   the ultimate tier (365 days) to a fresh database and backfilled by `cost-worker sync-now`, simulator and
   worker at --rpm; the peak is the process's maximum RSS (wait4's ru_maxrss, i.e. its VmHWM at exit).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _common import ROOT, Simulator, Worker, table

sys.path.insert(0, str(ROOT / "tests"))
from e2e.procs import WORKER, clean_env

MIB = 1024 * 1024


def start_time(runs: int) -> None:
    env = clean_env()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([*WORKER, "--help"], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    bare = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True, capture_output=True)
        bare.append(time.perf_counter() - t0)
    print(table(["command", "median s", "min s", "max s"], [
        ["cost-worker --help", f"{statistics.median(times):.3f}", f"{min(times):.3f}", f"{max(times):.3f}"],
        ["python -c pass (interpreter alone)", f"{statistics.median(bare):.3f}", f"{min(bare):.3f}",
         f"{max(bare):.3f}"],
    ]))


# --- memory --------------------------------------------------------------------------------------------

def status_kib(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB (VmRSS: resident now; VmHWM: peak resident since start)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def idle_run(worker: Worker, sample_seconds: float) -> dict[str, float]:
    """Start `cost-worker run`, wait until it is up and idle, sample its memory, stop it with SIGTERM."""
    port = free_port()
    worker.env.update(COST_WORKER_HTTP_PORT=str(port), COST_WORKER_HTTP_HOST="127.0.0.1")
    proc = worker.popen("run")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"`cost-worker run` exited {proc.returncode}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("`cost-worker run` did not become healthy")
            time.sleep(0.2)
        up = time.monotonic()
        time.sleep(2 * 5 + 2)  # two polls (poll_seconds 5): anything due would have started by now
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        in_flight = [ln for ln in metrics.splitlines() if ln.startswith("cost_worker_process_syncs_in_flight ")]
        runs = [ln for ln in metrics.splitlines() if ln.startswith("cost_worker_process_sync_runs_total{")]
        if in_flight != ["cost_worker_process_syncs_in_flight 0"] or runs:
            raise RuntimeError(f"`cost-worker run` is not idle: {in_flight} {runs}")
        samples = []
        t_end = time.monotonic() + sample_seconds
        while time.monotonic() < t_end:
            samples.append(status_kib(proc.pid, "VmRSS"))
            time.sleep(0.25)
        hwm = status_kib(proc.pid, "VmHWM")
        idle_after = time.monotonic() - up
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"`cost-worker run` exited {proc.returncode} on SIGTERM")
    return {"median": statistics.median(samples) * 1024 / MIB, "max": max(samples) * 1024 / MIB,
            "hwm": hwm * 1024 / MIB, "samples": len(samples), "after": idle_after}


def peak_sync_now(worker: Worker) -> tuple[float, float]:
    """`cost-worker sync-now` in a child process: its maximum RSS (MiB, from wait4) and wall seconds."""
    t0 = time.monotonic()
    proc = subprocess.Popen([*WORKER, "sync-now"], env=worker.env, cwd=worker.tmp_path, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"`cost-worker sync-now` exited {proc.returncode}")
    return usage.ru_maxrss / 1024, wall  # ru_maxrss is in KiB on Linux


# What `run` imports (SQLite; PostgreSQL adds psycopg), alembic included: it migrates at start.
RUN_IMPORTS = "worker.cli, worker.sync.scheduler, worker.sync.engine, worker.http, alembic.command"


def imports_rss() -> float:
    """VmRSS (MiB) of a fresh interpreter that has only imported what `run` imports."""
    code = (f"import {RUN_IMPORTS}\n"
            "print([ln for ln in open('/proc/self/status') if ln.startswith('VmRSS:')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(), check=True, capture_output=True, text=True)
    return int(out.stdout.strip()) / 1024


def stored_rows(db: Path) -> dict[str, tuple[int, int, str]]:
    """organization_id -> (cost rows, usage rows, tier) of every integration in a worker's SQLite file."""
    with sqlite3.connect(db) as conn:
        return {org: (c, u, tier) for org, c, u, tier in conn.execute(
            "SELECT i.organization_id, (SELECT count(*) FROM cost_rows c WHERE c.integration_id = i.id),"
            " (SELECT count(*) FROM usage_rows u WHERE u.integration_id = i.id), i.tier FROM integrations i")}


def memory(integrations: int, sample_seconds: float, rpm: float) -> None:
    rows: list[list[object]] = [[f"imports only (`import {RUN_IMPORTS}`)", f"{imports_rss():.1f}", "", "", ""]]
    with Simulator("--orgs", str(integrations), "--requests-per-minute", str(rpm)) as sim, \
            tempfile.TemporaryDirectory() as tmp:
        # Base: the service with an empty database.
        empty = Worker(Path(tmp) / "empty", sim.base_url, requests_per_minute=rpm)
        (Path(tmp) / "empty").mkdir()
        m = idle_run(empty, sample_seconds)
        rows.append(["idle `run`, no integration", f"{m['median']:.1f}", f"{m['max']:.1f}", f"{m['hwm']:.1f}", ""])

        # 100 integrations, backfilled, daily slot done (connect marks today's slot; the backfill covers it).
        fleet_dir = Path(tmp) / "fleet"
        fleet_dir.mkdir()
        fleet = Worker(fleet_dir, sim.base_url, requests_per_minute=rpm)
        t0 = time.monotonic()
        ids = [fleet.connect(sim.keys[0])]  # the first one migrates the new database alone
        with ThreadPoolExecutor(4) as pool:
            ids += list(pool.map(fleet.connect, sim.keys[1:integrations]))
        fleet.run("sync-now", timeout=1800)
        listed = fleet.integrations()
        assert len(listed) == integrations and all(i["status"] == "ok" for i in listed), listed[:3]
        per_org = stored_rows(fleet_dir / "cw.db")
        print(f"setup: {integrations} integrations connected and backfilled in {time.monotonic() - t0:.0f} s, "
              f"{sum(c + u for c, u, _ in per_org.values()):,} rows", file=sys.stderr)
        m = idle_run(fleet, sample_seconds)
        rows.append([f"idle `run`, {integrations} integrations", f"{m['median']:.1f}", f"{m['max']:.1f}",
                     f"{m['hwm']:.1f}", "<= 100 MB (95.4 MiB)"])

        # The largest organization (most rows over the 30 days above), backfilled for 365 days.
        org_of = {i["id"]: i["organization_id"] for i in listed}
        orgs = [org_of[i] for i in ids]  # ids[k] is the integration of sim.keys[k]
        largest = max(range(len(orgs)), key=lambda k: per_org[orgs[k]][0] + per_org[orgs[k]][1])
        big_dir = Path(tmp) / "largest"
        big_dir.mkdir()
        big = Worker(big_dir, sim.base_url, requests_per_minute=rpm)
        big.connect(sim.keys[largest], "ultimate")
        peak, wall = peak_sync_now(big)
        cost_n, usage_n, _tier = stored_rows(big_dir / "cw.db")[orgs[largest]]
        rows.append([f"`sync-now`, 365-day backfill of org {largest} ({cost_n:,} cost + {usage_n:,} usage rows, "
                     f"{wall:.0f} s)", "", "", f"{peak:.1f}", ""])
    print(table(["process", "VmRSS MiB (median)", "VmRSS MiB (max)", "VmHWM MiB (peak)", "target"], rows))
    print(f"(idle samples: every 0.25 s for {sample_seconds:g} s, from 12 s after /healthz answered; "
          f"simulator and worker at {rpm:g} requests/min)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="?", type=int, default=10, help="start-time runs")
    parser.add_argument("--integrations", type=int, default=100)
    parser.add_argument("--sample-seconds", type=float, default=10)
    parser.add_argument("--rpm", type=float, default=6000, help="simulator and worker budget per organization")
    parser.add_argument("--only", choices=("start", "memory"))
    args = parser.parse_args()
    if args.only != "memory":
        start_time(args.runs)
    if args.only != "start":
        memory(args.integrations, args.sample_seconds, args.rpm)


if __name__ == "__main__":
    main()
