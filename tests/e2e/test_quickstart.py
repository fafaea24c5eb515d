"""The README's "Try it without an Anthropic key" lines work as written, as processes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .procs import ROOT, Simulator, clean_env

pytestmark = pytest.mark.slow


def _section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Try it without an Anthropic key", 1)[1].split("\n## ", 1)[0]


def _shell_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", _section(), re.S)]


def test_readme_key_is_the_simulators_default_org_0_key(tmp_path: Path) -> None:
    """The key shown in the README is the one `cost-worker simulate` prints for org 0 (default seed)."""
    with Simulator() as sim:
        assert f"ANTHROPIC_ADMIN_KEY={sim.keys[0]} " in _shell_blocks()[1]


def test_two_commands_connect_sync_and_report(tmp_path: Path) -> None:
    """Terminal 1 runs the simulator, terminal 2's one line connects, syncs and prints a report."""
    first, second = _shell_blocks()
    assert first == "cost-worker simulate"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "cost-worker"  # `cost-worker` as installed by pip, running this checkout
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m worker "$@"\n')
    shim.chmod(0o755)
    env = clean_env(PATH=f"{bin_dir}:{clean_env()['PATH']}")
    with Simulator() as sim:  # the same command on a free port instead of 8765
        port = sim.base_url.rsplit(":", 1)[1]
        line = second.replace("http://127.0.0.1:8765", sim.base_url).replace(
            "/tmp/cost-worker-demo", str(tmp_path / "demo"))
        assert line != second and port
        result = subprocess.run(["sh", "-c", line], env=env, cwd=tmp_path, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr[-3000:]
        lines = result.stdout.strip().splitlines()
        assert lines[0] == "1"  # the integration id printed by connect
        assert "integration 1: ok" in result.stdout
        total = sim.control("GET", "/_sim/truth")["total_cost_usd"]  # the last 30 days, as the free tier
    header, last = next(ln for ln in lines if ln.startswith("date ")), lines[-1].split()
    assert header.split()[:3] == ["date", "model", "cost_usd"]
    assert last[0] == "total"
    assert last[1].rstrip("0") == total.rstrip("0")
