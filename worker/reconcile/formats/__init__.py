"""Tracker formats: one module per format, a registry, and automatic detection.

Every parser takes a binary or text stream (or any iterable of lines) and lazily yields
`TrackedEvent | BadRecord`; line numbers are 1-based physical lines. Parsers leave
`TrackedEvent.model` as None: `read_events` (or the caller) normalizes it.

| name          | module        | what                                                          |
|---------------|---------------|---------------------------------------------------------------|
| `anthropic`   | anthropic.py  | Messages API responses / usage objects, JSON lines            |
| `marginfront` | marginfront.py| MarginFront usage records, `{records: [...]}` or one per line  |
| `cmdrdata`    | cmdrdata.py   | cmdrdata-anthropic events                                     |
| `fluxgate`    | fluxgate.py   | FluxGate tracked calls                                        |
| `otlp`        | otlp.py       | Claude Code OTLP/JSON metric exports                          |
| `csv`/`jsonl` | generic.py    | the documented generic format                                 |
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from worker.reconcile.events import BadRecord, TrackedEvent
from worker.reconcile.formats import anthropic, cmdrdata, fluxgate, generic, marginfront, otlp
from worker.reconcile.formats._common import ParseResult, Source
from worker.reconcile.formats.detect import DetectionError, detect

__all__ = [
    "AUTO",
    "FORMATS",
    "DetectionError",
    "Format",
    "ParseResult",
    "Source",
    "UnknownFormatError",
    "detect",
    "parse",
    "read_events",
]

AUTO = "auto"


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    description: str
    parse: Callable[[Source], ParseResult]


FORMATS: Mapping[str, Format] = MappingProxyType({
    f.name: f
    for f in (
        Format(anthropic.NAME, "Anthropic Messages API responses or usage objects (JSON lines)", anthropic.parse),
        Format(marginfront.NAME, "MarginFront usage records ({records: [...]} or one per line)", marginfront.parse),
        Format(cmdrdata.NAME, "cmdrdata-anthropic events (JSON lines)", cmdrdata.parse),
        Format(fluxgate.NAME, "FluxGate tracked calls (JSON lines)", fluxgate.parse),
        Format(otlp.NAME, "Claude Code OTLP/JSON metric exports (one export per line)", otlp.parse),
        Format(generic.CSV_NAME, "generic CSV with a header row", generic.parse_csv),
        Format(generic.JSONL_NAME, "generic JSON lines", generic.parse_jsonl),
    )
})


class UnknownFormatError(ValueError):
    """A format name that is neither `auto` nor registered."""


def parse(source: Source, format: str) -> ParseResult:
    """Parse a stream in a named (not `auto`) format."""
    try:
        return FORMATS[format].parse(source)
    except KeyError:
        names = ", ".join([AUTO, *FORMATS])
        raise UnknownFormatError(f"unknown format {format!r}; expected one of {names}") from None


def read_events(
    source: Source,
    format: str = AUTO,
    normalize: Callable[[str], str | None] | None = None,
) -> tuple[str, ParseResult]:
    """Return (format name, lazy events), detecting the format when `auto`.

    With `normalize` (e.g. `ModelNormalizer.normalize`), each event's `model` is filled in.
    Raises `DetectionError` or `UnknownFormatError` before anything is yielded.
    """
    name = format
    if format == AUTO:
        name, source = detect(source)
    events = parse(source, name)
    if normalize is None:
        return name, events
    return name, _normalized(events, normalize)


def _normalized(events: ParseResult, normalize: Callable[[str], str | None]) -> Iterator[TrackedEvent | BadRecord]:
    # The parser's event is fresh and not shared yet: filling in `model` in place instead of
    # `dataclasses.replace` (which re-runs __init__ and its checks) saves a fifth of import time.
    set_model = object.__setattr__
    for item in events:
        if type(item) is TrackedEvent:
            set_model(item, "model", normalize(item.raw_model))
        yield item
