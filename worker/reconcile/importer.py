"""The import loop: parsed events -> batches for storage, and a report of what happened.

`cost-worker events import` is: `read_events(...)` -> `import_events(items, sink, source=...)` ->
print the `ImportReport`. Storage implements `EventSink`; the caller owns the transaction (with
`strict`, roll back on `StrictImportError`).

Events are handed over in batches of distinct ids, each with the number of times it appeared in
the batch, so an upsert can count sightings (`seen_count += copies`) without touching a row twice
in one statement. Duplicates = sightings that were not new.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from worker.reconcile.events import BadRecord, TrackedEvent

__all__ = ["DEFAULT_BATCH_SIZE", "EventSink", "ImportReport", "InMemorySink", "StrictImportError", "import_events"]

DEFAULT_BATCH_SIZE = 1000
BAD_SAMPLES = 5


class EventSink(Protocol):
    def add(self, source: str, batch: Sequence[tuple[TrackedEvent, int]]) -> int:
        """Store (event, copies) pairs once per (source, event_id); return how many were new.

        Events without an id are always new. Ids within one batch are distinct.
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


def import_events(
    items: Iterable[TrackedEvent | BadRecord],
    sink: EventSink,
    *,
    source: str,
    format: str,
    strict: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ImportReport:
    """Stream `items` into `sink` batch by batch; never holds more than one batch."""
    report = ImportReport(source=source, format=format)
    batch: dict[str | int, TrackedEvent] = {}
    copies: Counter[str | int] = Counter()

    def flush() -> None:
        if not batch:
            return
        new = sink.add(source, [(event, copies[slot]) for slot, event in batch.items()])
        report.imported += new
        report.duplicates += copies.total() - new
        batch.clear()
        copies.clear()

    for item in items:
        if isinstance(item, BadRecord):
            if strict:
                raise StrictImportError(item)
            report.bad += 1
            if len(report.bad_samples) < BAD_SAMPLES:
                report.bad_samples.append(item)
            continue
        report.read += 1
        if item.model is None:
            report.unmatched_models[item.raw_model] += 1
        # Id-less events cannot be de-duplicated: each gets a slot of its own.
        slot: str | int = item.event_id if item.event_id is not None else report.read
        batch.setdefault(slot, item)
        copies[slot] += 1
        if len(batch) >= batch_size:
            flush()
    flush()
    return report


class InMemorySink:
    """An `EventSink` in a dict: for tests and dry runs. `events` holds what was stored."""

    def __init__(self) -> None:
        self.events: list[TrackedEvent] = []
        self.sightings: dict[tuple[str, str], int] = {}

    def add(self, source: str, batch: Sequence[tuple[TrackedEvent, int]]) -> int:
        new = 0
        for event, copies in batch:
            if event.event_id is None:
                self.events.append(event)
                new += 1
                continue
            key = (source, event.event_id)
            if key not in self.sightings:
                self.events.append(event)
                new += 1
                self.sightings[key] = copies
            else:
                self.sightings[key] += copies
        return new
