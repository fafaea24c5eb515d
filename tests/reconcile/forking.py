"""Whether a test may exercise `events import`'s forked parser in this process."""

from __future__ import annotations

import threading
import time

import pytest

from worker.reconcile import importer


def require_fork() -> None:
    """Skip unless `events import` may fork here. Threads an earlier test started may still be winding down on a
    loaded machine (an App's database threads exit within 2 s of its close, or 30 s idle): wait for them (35 s at
    most), and name any that stay."""
    deadline = time.monotonic() + 35
    while not importer.can_fork() and time.monotonic() < deadline:
        for thread in threading.enumerate():
            if thread is not threading.current_thread():
                thread.join(timeout=0.1)
    if not importer.can_fork():
        others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        pytest.skip(f"this process cannot fork safely (not POSIX, or threads running: {others})")
