"""Determinism, many concurrent keep-alive clients, and the ``simulate`` command."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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


async def raw_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str,
                  key: str) -> tuple[bytes, dict[str, Any]]:
    """One keep-alive HTTP/1.1 GET on an open connection (httpx's pool is too slow for 1000s)."""
    writer.write(f"GET {target} HTTP/1.1\r\nhost: sim\r\nx-api-key: {key}\r\n"
                 f"anthropic-version: {VERSION}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", head)
    assert length is not None
    return head, json.loads(await reader.readexactly(int(length[1])))


@pytest.mark.slow
class TestConcurrency:
    def test_many_orgs_concurrently(self) -> None:
        """A thousand keep-alive connections on one loop each page through 15 days of usage."""
        orgs = 1000
        query = urlencode(report_params(TODAY - timedelta(days=15), TODAY, 5), doseq=True)

        async def one(port: int, key: str) -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            days, page = 0, ""
            try:
                while True:
                    head, body = await raw_get(reader, writer, f"{USAGE}?{query}{page}", key)
                    assert head.startswith(b"HTTP/1.1 200 ") and b"connection: keep-alive" in head
                    days += len(body["data"])
                    if body["next_page"] is None:
                        return days
                    page = "&" + urlencode({"page": body["next_page"]})
            finally:
                writer.close()
                await writer.wait_closed()

        async def main(sim: SimulatorHandle) -> list[int]:
            port = int(sim.base_url.rsplit(":", 1)[1])
            return await asyncio.gather(*(one(port, k) for k in sim.keys))

        with running_simulator(orgs=orgs, seed=1, today=TODAY, requests_per_minute=60, burst=5) as s:
            counts = asyncio.run(main(s))
            stats = s.stats()
        assert counts == [15] * orgs
        assert stats["total"]["requests"] == orgs * 3 and stats["total"]["rate_limited"] == 0


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
