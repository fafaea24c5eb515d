"""The import loop: parsed rows -> batches for storage, and a report of what happened.

`cost-worker events import` is: `read_rows(...)` -> `import_events(items, sink, source=...)` ->
print the `ImportReport`. Storage implements `EventSink`; the caller owns the transaction (with
`strict`, roll back on `StrictImportError`).

Rows are handed over in batches in file order, repeated ids included: the sink stores each
(source, event id) once, counts every further sighting on the stored row, and says how many rows
were new. Duplicates = rows that were not new. The loop does nothing else per row (it is the
inner loop of a 10^5 events/s import): no per-batch de-duplication, no objects.

`parsed_in_child` runs the parsing (reading, JSON, validation) in a forked process while this one
stores: on two cores the import then takes about as long as storing alone.
"""

from __future__ import annotations

import os
import pickle
import queue
import signal
import struct
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from worker.reconcile.events import BadRecord, EventRow, TrackedEvent, event_from_row, row_from_event

__all__ = ["CHUNK_SIZE", "DEFAULT_BATCH_SIZE", "Chunk", "EventSink", "ImportReport", "InMemorySink",
           "StrictImportError", "can_fork", "chunks", "import_chunks", "import_events", "parsed_in_child"]

T = TypeVar("T")

DEFAULT_BATCH_SIZE = 1000
BAD_SAMPLES = 5


class EventSink(Protocol):
    def add(self, source: str, rows: Sequence[EventRow]) -> int:
        """Store rows once per (source, event_id); return how many were new.

        A row whose id is already stored for `source`, or appeared earlier in `rows`, is not new:
        it adds one sighting to the stored event (`seen_count`). Rows without an id are always new.
        """


class StrictImportError(ValueError):
    """`--strict`: the first unreadable record stops the import."""

    def __init__(self, bad: BadRecord) -> None:
        super().__init__(str(bad))
        self.bad = bad


@dataclass
class ImportReport:
    """What an import did; `bad_samples` holds the first few unreadable records."""

    source: str
    format: str
    read: int = 0
    imported: int = 0
    duplicates: int = 0
    bad: int = 0
    bad_samples: list[BadRecord] = field(default_factory=list)
    unmatched_models: Counter[str] = field(default_factory=Counter)


Chunk = tuple[list[EventRow], list[BadRecord], dict[str, int]]
"""A run of parsed items: its rows and its bad records, each in file order, and how many rows of
each raw model id matched no bill model."""

CHUNK_SIZE = 1000
"""Rows (or bad records) per `Chunk`."""


def chunks(items: Iterable[EventRow | TrackedEvent | BadRecord], size: int = CHUNK_SIZE) -> Iterator[Chunk]:
    """Items (rows, events or bad records) as `Chunk`s: all the per-item work of an import.

    This runs where the parsing runs (the child of `parsed_in_child`), so the storing process only
    extends its batch with whole chunks. Events (`TrackedEvent`) become rows with their `model` as
    it is (None = unmatched).
    """
    rows: list[EventRow] = []
    bad: list[BadRecord] = []
    unmatched: dict[str, int] = {}
    append = rows.append
    for item in items:
        kind = type(item)
        if kind is not tuple:
            if kind is BadRecord:
                bad.append(cast(BadRecord, item))
                if len(bad) >= size:  # a file of bad lines is chunked too
                    yield rows, bad, unmatched
                    rows, bad, unmatched = [], [], {}
                    append = rows.append
                continue
            row = row_from_event(cast(TrackedEvent, item))
        else:  # `type(...) is` above, not isinstance: this loop runs per event
            row = cast(EventRow, item)
        append(row)
        if not row[3]:  # no bill model matched the tracker's id
            raw = row[2]
            unmatched[raw] = unmatched.get(raw, 0) + 1
        if len(rows) >= size:
            yield rows, bad, unmatched
            rows, bad, unmatched = [], [], {}
            append = rows.append
    if rows or bad:
        yield rows, bad, unmatched


def import_events(
    items: Iterable[EventRow | TrackedEvent | BadRecord],
    sink: EventSink,
    *,
    source: str,
    format: str,
    strict: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ImportReport:
    """Stream `items` (rows, or events) into `sink` batch by batch; never holds more than one batch.

    Events (`TrackedEvent`) are stored with their `model` as it is (None = unmatched).
    """
    return import_chunks(chunks(items), sink, source=source, format=format, strict=strict, batch_size=batch_size)


def import_chunks(
    parsed: Iterable[Chunk],
    sink: EventSink,
    *,
    source: str,
    format: str,
    strict: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ImportReport:
    """`import_events` over `chunks(items)`: batches of exactly `batch_size` rows (the last one
    smaller) go to `sink`; with `strict`, the first bad record raises `StrictImportError`."""
    report = ImportReport(source=source, format=format)
    unmatched_models = report.unmatched_models
    batch: list[EventRow] = []

    def store(rows: list[EventRow]) -> None:
        new = sink.add(source, rows)
        report.read += len(rows)
        report.imported += new
        report.duplicates += len(rows) - new

    for rows, bad, unmatched in parsed:
        if bad:
            if strict:
                raise StrictImportError(bad[0])
            report.bad += len(bad)
            room = BAD_SAMPLES - len(report.bad_samples)
            if room > 0:
                report.bad_samples.extend(bad[:room])
        batch += rows
        for raw, count in unmatched.items():
            unmatched_models[raw] += count
        while len(batch) >= batch_size:
            store(batch[:batch_size])
            del batch[:batch_size]
    if batch:
        store(batch)
    return report


class InMemorySink:
    """An `EventSink` in a dict: for tests and dry runs. `events` holds what was stored."""

    def __init__(self) -> None:
        self.events: list[TrackedEvent] = []
        self.sightings: dict[tuple[str, str], int] = {}

    def add(self, source: str, rows: Sequence[EventRow]) -> int:
        new = 0
        for row in rows:
            event_id = row[0]
            if event_id:
                key = (source, event_id)
                if key in self.sightings:
                    self.sightings[key] += 1
                    continue
                self.sightings[key] = 1
            self.events.append(event_from_row(row))
            new += 1
        return new


# --- parsing in a second process -------------------------------------------------------------------

AHEAD_MESSAGES = 48
"""Messages the parent holds unread: the child parses up to this far ahead (48 `Chunk`s: ~48,000
rows, ~6 MB) while the parent stores a batch, instead of stalling on a full pipe (64 kB). Bounded:
memory stays flat."""

_HEADER = struct.Struct("!BI")  # kind, payload size
_ITEM, _END, _ERROR = 0, 1, 2


def can_fork() -> bool:
    """Whether `parsed_in_child` can fork here: POSIX, and no other thread that a fork could break."""
    return hasattr(os, "fork") and threading.active_count() == 1


@contextmanager
def parsed_in_child(items: Iterable[T], *, fork: bool | None = None) -> Iterator[Iterator[T]]:
    """The same items, in the same order, produced by iterating `items` in a forked child process.

    `items` must be lazy and not yet started (e.g. `chunks(parser over a stream)`): the child
    inherits it, the stream and everything already read from it, and the parent never touches them
    again. The child sends each item pickled through a pipe (so items should be big: `Chunk`s); a
    thread of the parent reads them into a bounded queue (reading releases the GIL), so the child
    keeps parsing while the parent stores a batch, and the parent only unpickles and stores. An
    exception in the child is raised again in the parent, after the items before it (as itself
    when it pickles, else as a RuntimeError with the child's traceback). Leaving the block early (an
    error, `--strict`, Ctrl-C) stops the child and the thread. Without `fork` (the default:
    `can_fork()`), the items are iterated here, in this process.
    """
    if fork is None:
        fork = can_fork()
    if not fork:
        yield iter(items)
        return
    for stream in (sys.stdout, sys.stderr):  # nothing buffered may be written twice
        if stream is not None:
            stream.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its work is checked through the parent
        os.close(read_fd)
        _child(items, write_fd)
    os.close(write_fd)
    reader = os.fdopen(read_fd, "rb")
    messages: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=AHEAD_MESSAGES)
    pump = threading.Thread(target=_pump, args=(reader, messages), name="import-parser-pipe", daemon=True)
    pump.start()
    finished: list[bool] = []
    try:
        yield _received(messages, pid, finished)
    finally:
        if not finished:  # left early: the rest of the parsing is of no use
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # pragma: no cover - already reaped elsewhere
                pass
        os.waitpid(pid, 0)  # the child is gone: the pump reads the end of the pipe
        while pump.is_alive():  # unblock a pump waiting for room in the queue
            try:
                messages.get(timeout=0.05)
            except queue.Empty:
                pass
        pump.join()
        reader.close()


def _pump(reader: Any, messages: queue.Queue[tuple[int, bytes] | None]) -> None:
    """Parent thread: pipe -> queue, one message at a time, until the child's last message or EOF."""
    try:
        while True:
            header = reader.read(_HEADER.size)
            if len(header) < _HEADER.size:
                break
            kind, size = _HEADER.unpack(header)
            payload = reader.read(size)
            if len(payload) < size:
                break
            messages.put((kind, payload))
            if kind != _ITEM:
                return
    except (OSError, ValueError):  # the pipe was closed under us: the parent is leaving
        pass
    messages.put(None)  # the child ended without finishing


def _child(items: Iterable[Any], write_fd: int) -> None:  # pragma: no cover - runs in the child
    code = 0
    try:
        with os.fdopen(write_fd, "wb") as out:
            try:
                for item in items:
                    _send(out, _ITEM, item)
                _send(out, _END, None)
            except BrokenPipeError:
                code = 1  # the parent stopped reading: nothing to tell it
            except BaseException as exc:
                code = 1
                _send_error(out, exc)
    except BaseException:
        code = 1
    finally:
        os._exit(code)  # no atexit handlers, no inherited buffers flushed, no connections closed


def _send_error(out: Any, exc: BaseException) -> None:  # pragma: no cover - in the child
    try:
        try:
            payload: Any = pickle.loads(pickle.dumps(exc))
        except Exception:
            payload = RuntimeError("parsing failed in the import's parsing process:\n"
                                   + "".join(traceback.format_exception(exc)))
        _send(out, _ERROR, payload)
    except BaseException:
        pass


def _send(out: Any, kind: int, data: Any) -> None:  # pragma: no cover - runs in the child
    payload = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(kind, len(payload)))
    out.write(payload)
    if kind != _ITEM:
        out.flush()


def _received(messages: queue.Queue[tuple[int, bytes] | None], pid: int, finished: list[bool]) -> Iterator[Any]:
    loads = pickle.loads
    get = messages.get
    while True:
        message = get()
        if message is None:
            raise RuntimeError(f"the import's parsing process (pid {pid}) ended without finishing")
        kind, payload = message
        if kind == _ITEM:
            yield loads(payload)
        elif kind == _END:
            finished.append(True)
            return
        else:
            finished.append(True)  # the child exits by itself after telling
            raise loads(payload)
