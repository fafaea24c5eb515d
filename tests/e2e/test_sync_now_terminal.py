"""`sync-now` on a terminal (stderr a pseudo-terminal), syncing several integrations at once: the screen
ends with one progress line per integration, each with its own figures, below every integration's result
(one shared line redrawn by each in turn left them interleaved with the results)."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.test_progress import screen

from .procs import WORKER, Simulator, Worker

pytestmark = pytest.mark.slow


def read_until_exit(proc: subprocess.Popen[bytes], fd: int, timeout: float) -> str:
    """Everything written to the pseudo-terminal until the process exits (bounded by `timeout`)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the other side closed
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode("utf-8", "replace")


def test_sync_now_of_three_integrations_shows_a_line_each(make_worker: Callable[..., Worker]) -> None:
    """Three organizations synced by one `sync-now`: the terminal's final screen has three bar lines, one per
    integration and each with its own days, pages and rows, plus each one's result line."""
    with Simulator("--orgs", "3", "--requests-per-minute", "900") as sim:
        worker = make_worker(sim)
        ids = [worker.connect(key) for key in sim.keys]
        controller, terminal = os.openpty()
        try:
            proc = subprocess.Popen([*WORKER, "sync-now"], env={**worker.env, "COLUMNS": "160", "TERM": "xterm"},
                                    cwd=worker.tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=terminal)
            os.close(terminal)
            shown = screen(read_until_exit(proc, controller, timeout=120))
            out, _ = proc.communicate(timeout=30)
        finally:
            os.close(controller)
    assert proc.returncode == 0, shown
    assert [f"integration {i}: ok" in out.decode() for i in ids] == [True] * 3
    bars = [line for line in shown if " days | " in line]
    assert len(bars) == 3 and shown[-3:] == bars, shown  # the lines stay together, below every message
    for iid, line in zip(ids, bars, strict=True):
        assert line.startswith(f"[{iid}] Anthropic - "), line
        assert re.search(r" (\d+)/\1 days \| \d+ pages \| \d+ rows \| waited ", line), line  # all done
    results = [line for line in shown[:-3] if ": manual sync ok:" in line]
    assert sorted(line.split("]")[0] for line in results) == [f"[{i}" for i in ids]
