"""Tracker formats: one module per format, a registry, and automatic detection.

Every parser takes a binary or text stream (or any iterable of lines) and lazily yields
`TrackedEvent | BadRecord`; line numbers are 1-based physical lines. Parsers leave
`TrackedEvent.model` as None: `read_events` (or the caller) normalizes it. Each format also
yields `EventRow | BadRecord` (`read_rows`): the same events as the tuples the `events` table
stores, with the model normalized while the row is built; `events import` reads those.

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

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from worker.reconcile.formats import anthropic, cmdrdata, fluxgate, generic, marginfront, otlp
from worker.reconcile.formats._common import (
    ModelOf,
    ParseResult,
    RowResult,
    Source,
    as_events,
    model_lookup,
    no_model,
)
from worker.reconcile.formats.detect import DetectionError, detect

__all__ = [
    "AUTO",
    "FORMATS",
    "DetectionError",
    "Format",
    "ParseResult",
    "RowResult",
    "Source",
    "UnknownFormatError",
    "detect",
    "model_lookup",
    "parse",
    "read_events",
    "read_rows",
]

AUTO = "auto"


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    description: str
    rows: Callable[[Source, ModelOf], RowResult]

    def parse(self, source: Source) -> ParseResult:
        return as_events(self.rows(source, no_model))


FORMATS: Mapping[str, Format] = MappingProxyType({
    f.name: f
    for f in (
        Format(anthropic.NAME, "Anthropic Messages API responses or usage objects (JSON lines)", anthropic.rows),
        Format(marginfront.NAME, "MarginFront usage records ({records: [...]} or one per line)", marginfront.rows),
        Format(cmdrdata.NAME, "cmdrdata-anthropic events (JSON lines)", cmdrdata.rows),
        Format(fluxgate.NAME, "FluxGate tracked calls (JSON lines)", fluxgate.rows),
        Format(otlp.NAME, "Claude Code OTLP/JSON metric exports (one export per line)", otlp.rows),
        Format(generic.CSV_NAME, "generic CSV with a header row", generic.rows_csv),
        Format(generic.JSONL_NAME, "generic JSON lines", generic.rows_jsonl),
    )
})


class UnknownFormatError(ValueError):
    """A format name that is neither `auto` nor registered."""


def _format(format: str) -> Format:
    try:
        return FORMATS[format]
    except KeyError:
        names = ", ".join([AUTO, *FORMATS])
        raise UnknownFormatError(f"unknown format {format!r}; expected one of {names}") from None


def parse(source: Source, format: str) -> ParseResult:
    """Parse a stream in a named (not `auto`) format."""
    return _format(format).parse(source)


def read_rows(source: Source, format: str = AUTO, model_of: ModelOf = no_model) -> tuple[str, RowResult]:
    """Return (format name, lazy `EventRow | BadRecord`), detecting the format when `auto`.

    `model_of` gives each row's bill model ('' = unmatched), e.g. `model_lookup(normalizer.normalize)`.
    Raises `DetectionError` or `UnknownFormatError` before anything is yielded.
    """
    if format != AUTO:
        return format, _format(format).rows(source, model_of)
    name, replay = detect(source)
    return name, _format(name).rows(replay, model_of)


def read_events(
    source: Source,
    format: str = AUTO,
    normalize: Callable[[str], str | None] | None = None,
) -> tuple[str, ParseResult]:
    """Return (format name, lazy events), detecting the format when `auto`.

    With `normalize` (e.g. `ModelNormalizer.normalize`), each event's `model` is filled in.
    Raises `DetectionError` or `UnknownFormatError` before anything is yielded.
    """
    name, rows = read_rows(source, format, model_lookup(normalize))
    return name, as_events(rows)
