"""Progress of a sync: a bar on a terminal, log lines elsewhere. Long backfills wait minutes per page."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol, TextIO

log = logging.getLogger("worker.sync")


class Progress(Protocol):
    def start(self, label: str, kind: str, total_days: int) -> None: ...
    def page(self, label: str, days: int, rows: int) -> None: ...
    def wait(self, label: str, seconds: float) -> None: ...
    def finish(self, label: str, ok: bool, message: str) -> None: ...


@dataclass
class _Tally:
    kind: str = ""
    total_days: int = 0
    days: int = 0
    pages: int = 0
    rows: int = 0
    waited: float = 0.0
    started: float = field(default_factory=time.monotonic)


class LogProgress:
    """For the service and non-terminals: one log line per page."""

    def __init__(self) -> None:
        self._t: dict[str, _Tally] = {}

    def start(self, label: str, kind: str, total_days: int) -> None:
        self._t[label] = _Tally(kind, total_days)
        log.info("%s: %s sync of %d days started", label, kind, total_days)

    def page(self, label: str, days: int, rows: int) -> None:
        t = self._t.setdefault(label, _Tally())
        t.days += days
        t.pages += 1
        t.rows += rows
        log.info("%s: page %d stored (%d/%d day-reports, %d rows so far)", label, t.pages, t.days,
                 2 * t.total_days, t.rows)

    def wait(self, label: str, seconds: float) -> None:
        t = self._t.setdefault(label, _Tally())
        t.waited += seconds
        if seconds >= 1:
            log.info("%s: waiting %.0fs for the organization's request budget", label, seconds)

    def finish(self, label: str, ok: bool, message: str) -> None:
        self._t.pop(label, None)
        (log.info if ok else log.error)("%s: %s", label, message)


class BarProgress:
    """For `sync-now` on a terminal: one redrawn line per integration (days, pages, rows, rate-limit wait)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self._t: dict[str, _Tally] = {}

    def _draw(self, label: str, note: str = "") -> None:
        t = self._t[label]
        total = max(1, 2 * t.total_days)  # each day is read from both endpoints
        done = min(t.days, total)
        width = 24
        filled = int(width * done / total)
        bar = "#" * filled + "-" * (width - filled)
        line = (f"\r{label} {t.kind} [{bar}] {done // 2}/{t.total_days} days | {t.pages} pages | "
                f"{t.rows} rows | waited {_fmt(t.waited)} {note}")
        self.stream.write(line[:200].ljust(100))
        self.stream.flush()

    def start(self, label: str, kind: str, total_days: int) -> None:
        self._t[label] = _Tally(kind, total_days)
        self._draw(label)

    def page(self, label: str, days: int, rows: int) -> None:
        t = self._t.setdefault(label, _Tally())
        t.days += days
        t.pages += 1
        t.rows += rows
        self._draw(label)

    def wait(self, label: str, seconds: float) -> None:
        t = self._t.setdefault(label, _Tally())
        t.waited += seconds
        self._draw(label, f"(rate limit: next request in {_fmt(seconds)})" if seconds >= 1 else "")

    def finish(self, label: str, ok: bool, message: str) -> None:
        if label in self._t:
            self._draw(label)
        self.stream.write(f"\n{label}: {message}\n")
        self.stream.flush()
        self._t.pop(label, None)


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
