"""Real processes over real HTTP: a `cost-worker simulate` process and `cost-worker` worker commands.

Used by the end-to-end tests and by the benchmarks in `bench/`. Every process runs this checkout's
code (`python -m worker` with the repository first on PYTHONPATH), never an installed copy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
WORKER = [sys.executable, "-m", "worker"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any COST_WORKER_* or Admin key, running this checkout's code."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COST_WORKER_") and k != "ANTHROPIC_ADMIN_KEY"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    # As in pytest's own process: a deprecated API used by a child fails it (the child prints the warning
    # as a traceback and exits non-zero), so deprecations surface here before the release that removes them.
    env["PYTHONWARNINGS"] = "error::DeprecationWarning"
    env.update(extra)
    return env


class Simulator:
    """A `cost-worker simulate --port 0` process, its org keys, and its `/_sim/` control API."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = ["simulate", "--port", "0", *args]
        self.proc = subprocess.Popen(
            [*WORKER, *self.args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env or clean_env(), cwd=ROOT,
        )
        self.keys: list[str] = []
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"simulator exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            if " admin_key=" in line:
                self.keys.append(line.rsplit("admin_key=", 1)[1].strip())
            if line.startswith("listening on "):
                self.base_url = line.split()[-1]
                break
            if time.monotonic() > deadline:
                raise RuntimeError("simulator did not start")
        self.http = httpx.Client(base_url=self.base_url, timeout=30)

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()

    def control(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def today(self) -> date:
        """The simulator's last day with data (the real UTC date unless --today was given)."""
        return date.fromisoformat(self.control("GET", "/_sim/truth")["until"]) - timedelta(days=1)

    def truth(self, org: int, since: date, until: date) -> dict[str, Any]:
        """Ground truth of [since, until] (inclusive) in the shape of `cost-worker report --format json`."""
        raw = self.control("GET", "/_sim/truth", params={
            "org": org, "since": since.isoformat(), "until": (until + timedelta(days=1)).isoformat()})
        return normalize(truth_rows(raw["rows"]))

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.control("GET", "/_sim/stats")
        return stats

    def reset_stats(self) -> None:
        self.control("POST", "/_sim/reset-stats")

    def fault(self, *specs: str) -> None:
        self.control("POST", "/_sim/faults", json={"specs": list(specs)})

    def clear_faults(self) -> None:
        self.control("DELETE", "/_sim/faults")

    def requests(self, org: int = 0) -> dict[str, int]:
        """This org's key: answered (200) requests per endpoint (`me`, `cost_report`, `usage_report`),
        plus `total` (every request, any status) and `rate_limited` (429s)."""
        entry = self.stats()["keys"].get(self.keys[org], {"requests": 0, "rate_limited": 0, "paths": {}})
        out = {"total": entry["requests"], "rate_limited": entry["rate_limited"], "me": 0, "cost_report": 0,
               "usage_report": 0}
        for path, counter in entry["paths"].items():
            name = "usage_report" if "usage" in path else path.rsplit("/", 1)[-1]
            out[name] = counter["statuses"].get("200", 0)
        return out


def truth_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{
        "date": r["date"], "model": r["model"], "cost_usd": r["cost_usd"],
        "input_tokens": r["uncached_input_tokens"], "output_tokens": r["output_tokens"],
        "cache_read_tokens": r["cache_read_input_tokens"],
        "cache_write_tokens": r["cache_creation_5m_input_tokens"] + r["cache_creation_1h_input_tokens"],
    } for r in rows]


def normalize(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """{(date, model): row with Decimal cost}; a duplicate (date, model) is an error."""
    out: dict[Any, Any] = {}
    for r in rows:
        key = (r["date"], r["model"])
        assert key not in out, f"duplicate report row {key}"
        out[key] = {**r, "cost_usd": Decimal(r["cost_usd"])}
    return out


def diff(got: dict[str, Any], want: dict[str, Any], limit: int = 5) -> list[str]:
    """Human-readable differences between two normalized reports (empty when equal)."""
    problems = []
    for key in sorted(set(got) | set(want), key=str):
        if got.get(key) != want.get(key):
            problems.append(f"{key}: worker={got.get(key)} truth={want.get(key)}")
    return problems[:limit] + ([f"... {len(problems) - limit} more"] if len(problems) > limit else [])


class Worker:
    """`cost-worker` commands sharing one SQLite database, master key and settings."""

    def __init__(self, tmp_path: Path, base_url: str, *, requests_per_minute: float, burst: int = 1,
                 database_url: str | None = None, **settings: object) -> None:
        from worker.vault import MasterKey

        self.tmp_path = tmp_path
        self.env = clean_env(
            COST_WORKER_DATA_DIR=str(tmp_path / "data"),
            COST_WORKER_DATABASE_URL=database_url or f"sqlite:///{tmp_path / 'cw.db'}",
            COST_WORKER_MASTER_KEY=MasterKey.generate().to_text(),
            COST_WORKER_API_BASE_URL=base_url,
            COST_WORKER_REQUESTS_PER_MINUTE=str(requests_per_minute),
            COST_WORKER_BURST=str(burst),
            COST_WORKER_LEASE_SECONDS="10",
            COST_WORKER_LOG_FORMAT="json",
            COST_WORKER_HTTP_PORT="0",
        )
        for name, value in settings.items():
            self.env[f"COST_WORKER_{name.upper()}"] = str(value)

    def run(self, *args: str, key: str | None = None, timeout: float = 180,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, **({"ANTHROPIC_ADMIN_KEY": key} if key else {}))
        result = subprocess.run([*WORKER, *args], env=env, cwd=self.tmp_path, capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"cost-worker {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([*WORKER, *args], env=self.env, cwd=self.tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, text=True, stdin=subprocess.DEVNULL)

    def connect(self, key: str, tier: str = "free", source: str = "legacy") -> int:
        return int(self.run("connect", "--tier", tier, "--source", source, key=key).stdout.strip())

    def report(self, since: date, until: date, integration: int | None = None) -> dict[str, Any]:
        args = ["report", "--since", since.isoformat(), "--until", until.isoformat(), "--format", "json"]
        if integration is not None:
            args += ["--integration", str(integration)]
        return normalize(json.loads(self.run(*args).stdout))

    def integrations(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = json.loads(self.run("integrations", "list", "--format", "json").stdout)
        return listed


def window(today: date, days: int) -> tuple[date, date]:
    """The tier window: `days` days up to and including today."""
    return today - timedelta(days=days - 1), today


def min_report_requests(days: int, page_days: int = 31) -> int:
    """Fewest report requests for `days` days: ceil(days / 31) per endpoint."""
    return 2 * -(-days // page_days)


__all__: Sequence[str] = ["ROOT", "WORKER", "Simulator", "Worker", "clean_env", "diff", "min_report_requests",
                          "normalize", "truth_rows", "window"]
