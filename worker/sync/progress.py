"""Progress of a sync: a line per integration on a terminal (rich), log lines elsewhere. Long backfills wait
minutes per page."""

from __future__ import annotations

import io
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TextIO

from worker.textsafe import printable

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

log = logging.getLogger("worker.sync")

BUDGET = "the organization's request budget"


class Progress(Protocol):
    def start(self, label: str, kind: str, total_days: int) -> None: ...
    def page(self, label: str, days: int, rows: int) -> None: ...
    def wait(self, label: str, seconds: float, reason: str = BUDGET) -> None:
        """A wait of `seconds`; `reason` says what for (the budget, a backoff, a retry-after)."""
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

    def wait(self, label: str, seconds: float, reason: str = BUDGET) -> None:
        t = self._t.setdefault(label, _Tally())
        t.waited += seconds
        if seconds >= 1:
            log.info("%s: waiting %.0fs for %s", label, seconds, reason)

    def finish(self, label: str, ok: bool, message: str) -> None:
        self._t.pop(label, None)
        (log.info if ok else log.error)("%s: %s", label, message)


class BarProgress:
    """For `sync-now` on a terminal: one line per integration (days, pages, rows, time waited for the rate
    limit), redrawn in place by rich; finished syncs print their message above the lines.

    A context manager: the display runs between enter and exit. Meanwhile stderr (and the log handlers
    writing to it) goes through rich, so a warning is printed above the lines instead of through them.
    """

    def __init__(self, console: Console | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as Bars

        self.console = console or Console(stderr=True)
        self._bars = Bars(TextColumn("{task.description}", markup=False),
                          TextColumn("{task.fields[kind]}", markup=False),
                          BarColumn(bar_width=24),
                          TextColumn("{task.fields[counts]}", markup=False),
                          console=self.console, auto_refresh=False, redirect_stdout=False)
        self._t: dict[str, _Tally] = {}
        self._tasks: dict[str, TaskID] = {}
        self._handlers: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []  # (handler, its own stream)

    def __enter__(self) -> BarProgress:
        original = sys.stderr
        self._bars.start()
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is original:
                handler.setStream(sys.stderr)  # rich's proxy while the display runs
                self._handlers.append((handler, original))
        return self

    def __exit__(self, *_: object) -> None:
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers.clear()
        self._bars.stop()

    def _draw(self, label: str, note: str = "") -> None:
        t = self._t[label]
        total = max(1, 2 * t.total_days)  # each day is read from both endpoints
        done = min(t.days, total)
        counts = (f"{done // 2}/{t.total_days} days | {t.pages} pages | {t.rows} rows | waited {_fmt(t.waited)}"
                  + (f" {note}" if note else ""))
        task = self._tasks.get(label)
        if task is None:
            self._tasks[label] = self._bars.add_task(printable(label), total=total, completed=done, kind=t.kind,
                                                     counts=counts)
            self._bars.refresh()
        else:
            self._bars.update(task, total=total, completed=done, kind=t.kind, counts=counts, refresh=True)

    def start(self, label: str, kind: str, total_days: int) -> None:
        self._t[label] = _Tally(kind, total_days)
        self._draw(label)

    def page(self, label: str, days: int, rows: int) -> None:
        t = self._t.setdefault(label, _Tally())
        t.days += days
        t.pages += 1
        t.rows += rows
        self._draw(label)

    def wait(self, label: str, seconds: float, reason: str = BUDGET) -> None:
        t = self._t.setdefault(label, _Tally())
        t.waited += seconds
        self._draw(label, f"(waiting {_fmt(seconds)} for {reason})" if seconds >= 1 else "")

    def finish(self, label: str, ok: bool, message: str) -> None:
        if label in self._t:
            self._draw(label)
        from rich.text import Text

        # Text: a label's "[1]" is not markup; printable: a label or an API message sends no escape sequence
        self.console.print(Text(f"{printable(label)}: {printable(message)}"))
        self._t.pop(label, None)

    def lines(self) -> list[str]:
        """What the display shows now, one line per integration, as plain text."""
        from rich.console import Console

        snapshot = Console(width=self.console.width, color_system=None, force_terminal=False, record=True,
                           file=io.StringIO())
        snapshot.print(self._bars)
        return [line.rstrip() for line in snapshot.export_text().splitlines() if line.strip()]


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
