"""Determinism, many concurrent keep-alive clients, and the ``simulate`` command."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from worker.simulator import SimulatorData, SimulatorHandle, running_simulator

from .helpers import COST, ME, TODAY, USAGE, VERSION, client, report_params

START = TODAY - timedelta(days=45)
REPO = Path(__file__).resolve().parents[2]


def responses(seed: int) -> list[bytes]:
    with running_simulator(orgs=2, seed=seed, today=TODAY, requests_per_minute=0) as s:
        out = []
        for org in range(2):
            with client(s, org) as c:
                out.append(c.get(ME).content)
                first = c.get(COST, params=report_params(START, TODAY, 20, "workspace_id", "description"))
                out.append(first.content)
                page = first.json()["next_page"]
                out.append(c.get(COST, params=report_params(START, TODAY, 20, "workspace_id", "description")
                                 | {"page": page}).content)
                out.append(c.get(USAGE, params=report_params(START, TODAY, 31, "model", "api_key_id")).content)
                out.append(c.get(USAGE, params={"starting_at": f"{TODAY}T00:00:00Z", "bucket_width": "1h",
                                                "limit": 24}).content)
        return out


class TestDeterminism:
    def test_same_seed_same_bytes(self) -> None:
        """Two simulators with one seed answer byte-identical bodies, cursors included."""
        assert responses(11) == responses(11)

    def test_other_seed_other_data(self) -> None:
        """A different seed gives different organizations and numbers."""
        a, b = SimulatorData(1, 2, TODAY), SimulatorData(2, 2, TODAY)
        assert a.orgs[0].admin_key != b.orgs[0].admin_key
        assert a.truth_total(0, START, TODAY) != b.truth_total(0, START, TODAY)

    def test_truth_stable_across_cache_eviction(self) -> None:
        """Regenerating an evicted day gives the same numbers."""
        small = SimulatorData(5, 1, TODAY, cache_days=3)
        first = small.truth(0, START, TODAY)
        assert small.truth(0, START, TODAY) == first == SimulatorData(5, 1, TODAY).truth(0, START, TODAY)


class TestConcurrency:
    def test_many_orgs_concurrently(self) -> None:
        """Hundreds of keep-alive clients on one loop each page through a month of costs."""
        orgs = 200

        async def one(base: str, key: str) -> int:
            headers = {"x-api-key": key, "anthropic-version": VERSION}
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as c:
                n = 0
                params = report_params(START, TODAY, 15, "workspace_id")
                page = None
                while True:
                    r = await c.get(COST, params=params | ({"page": page} if page else {}))
                    assert r.status_code == 200
                    body = r.json()
                    n += len(body["data"])
                    page = body["next_page"]
                    if page is None:
                        return n

        async def main(sim: SimulatorHandle) -> list[int]:
            return await asyncio.gather(*(one(sim.base_url, k) for k in sim.keys))

        with running_simulator(orgs=orgs, seed=1, today=TODAY, requests_per_minute=60, burst=5) as s:
            started = time.monotonic()
            counts = asyncio.run(main(s))
            elapsed = time.monotonic() - started
            stats = s.stats()
        assert counts == [45] * orgs
        assert stats["total"]["requests"] == orgs * 3 and stats["total"]["rate_limited"] == 0
        assert elapsed < 30


@pytest.mark.slow
class TestCommand:
    def test_starts_prints_and_stops_on_sigterm(self) -> None:
        """`simulate` prints one line per org, then the URL; it serves and exits on SIGTERM."""
        code = (
            "from worker.simulator.command import simulate_command; "
            "simulate_command(['--port', '0', '--orgs', '2', '--today', '2026-03-10', '--seed', '4',"
            " '--burst', '5', '--fault', '529:count=1'])"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline() for _ in range(3)]
            expected = SimulatorData(4, 2)
            for org, line in zip(expected.orgs, lines, strict=False):
                assert org.name in line and org.id in line and org.admin_key in line
            match = re.fullmatch(r"listening on (http://127\.0\.0\.1:(\d+))\n", lines[2])
            assert match, lines
            with httpx.Client(base_url=match[1], headers={"x-api-key": expected.orgs[1].admin_key,
                                                          "anthropic-version": VERSION}) as c:
                assert c.get(ME).status_code == 529
                assert c.get(ME).json()["id"] == expected.orgs[1].id
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def test_bad_fault_is_a_usage_error(self) -> None:
        """An unparsable --fault exits with click's usage error status."""
        code = ("from worker.simulator.command import simulate_command; "
                "simulate_command(['--port', '0', '--fault', 'teapot'])")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=30)
        assert result.returncode == 2
        assert "teapot" in result.stderr
