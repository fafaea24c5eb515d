"""Which format a stream is in, from its first non-empty record.

Every JSON format scores that record: 2 = carries a field only that format has, 1 = plausible,
0 = not it. The single best score of 2 wins; a single plausible format wins when nothing scores 2;
several formats on the top score is ambiguous and `--format` must decide. A first line that is not
JSON but names `timestamp` and `model` columns is the generic CSV.

A first line that is not JSON by itself but opens an object or array is either a broken first
record of JSON lines (then the next line is the record detected from) or the start of a
pretty-printed document (`_common.opens_document` decides, as the parsers do).

Only the first record is consumed, and it is handed back: `detect` returns the format and an
iterator that replays what it read, then the rest, so detection never loads the input.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from worker.reconcile.formats import anthropic, cmdrdata, fluxgate, generic, marginfront, otlp
from worker.reconcile.formats._common import Source, decodes_alone, loads, opens_document

SNIFF_LIMIT = 256 * 1024
"""Characters of a multi-line JSON document read to find its first record."""

SNIFFERS: Mapping[str, Callable[[Mapping[str, Any]], int]] = {
    anthropic.NAME: anthropic.sniff,
    marginfront.NAME: marginfront.sniff,
    cmdrdata.NAME: cmdrdata.sniff,
    fluxgate.NAME: fluxgate.sniff,
    otlp.NAME: otlp.sniff,
    generic.JSONL_NAME: generic.sniff_jsonl,
}


class DetectionError(ValueError):
    """The format cannot be told from the first record (unknown or ambiguous): pass `--format`."""


def detect(source: Source) -> tuple[str, Iterator[str] | Iterator[bytes]]:
    """Return (format name, the same input replayed from its start). Raises `DetectionError`."""
    iterator: Iterator[str | bytes] = iter(source)
    seen: list[Any] = []
    first: str | None = None
    for raw in iterator:
        seen.append(raw)
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        if text.strip():
            first = text.lstrip("\ufeff").strip()
            break
    replay: Iterator[Any] = itertools.chain(seen, iterator)
    if first is None:
        raise DetectionError("the input is empty: nothing to detect")
    try:
        record = loads(first)
    except json.JSONDecodeError:
        if first[0] in "[{":
            record, consumed = _first_record(first, iterator, seen)
            replay = itertools.chain(consumed, iterator)
        elif generic.sniff_csv_header(first):
            return generic.CSV_NAME, replay
        else:
            raise DetectionError(
                "the first line is neither JSON nor a CSV header with timestamp and model columns"
            ) from None
    if isinstance(record, list):
        record = record[0] if record else {}
    if not isinstance(record, Mapping):
        raise DetectionError("the first record is not a JSON object")
    return choose(record), replay


def choose(record: Mapping[str, Any]) -> str:
    """The format of one decoded record, or `DetectionError` naming the candidates."""
    scores = {name: sniff(record) for name, sniff in SNIFFERS.items()}
    best = max(scores.values())
    winners = sorted(name for name, score in scores.items() if score == best and score > 0)
    if not winners:
        keys = ", ".join(sorted(map(str, record))[:12])
        raise DetectionError(f"no known format has records with these fields: {keys}")
    if len(winners) > 1:
        raise DetectionError(
            f"ambiguous format: the first record fits {' and '.join(winners)}; pass --format"
        )
    return winners[0]


_KEY = re.compile(r'"(resourceMetrics|records)"\s*:')


def _first_record(first: str, rest: Iterator[Any], seen: list[Any]) -> tuple[Any, list[Any]]:
    """The record to detect from when the first line is not JSON by itself but opens an object or array:
    the next line's, when the file is JSON lines with a broken first line (`opens_document`), else the
    first record of the pretty-printed document (falling back to the next line's when that fails)."""
    consumed = list(seen)
    second: str | None = None
    for raw in rest:
        consumed.append(raw)
        second = _text(raw).strip()
        if second:
            break
    alone = loads(second) if second and decodes_alone(second) else None
    if alone is not None and not opens_document(first, second):
        return alone, consumed
    try:
        return _first_record_of_document(rest, consumed)
    except DetectionError:
        if alone is None:
            raise
        return alone, consumed


def _first_record_of_document(rest: Iterator[Any], consumed: list[Any]) -> tuple[Any, list[Any]]:
    """Read up to SNIFF_LIMIT characters of a pretty-printed document and decode its first record.

    What it reads is appended to `consumed` (the lines read so far), also when it raises."""
    text = "".join(_text(item) for item in consumed)
    for raw in rest:
        consumed.append(raw)
        text += _text(raw)
        if len(text) >= SNIFF_LIMIT:
            break
    stripped = text.lstrip("\ufeff \t\r\n")
    try:
        return loads(stripped), consumed
    except json.JSONDecodeError:
        pass
    if stripped.startswith("["):
        body = stripped[1:].lstrip()
        try:
            element, _ = json.JSONDecoder(parse_float=Decimal).raw_decode(body)
        except json.JSONDecodeError:
            raise DetectionError("cannot decode the first element of the JSON array") from None
        return element, consumed
    found = _KEY.search(stripped)
    if found is None:
        raise DetectionError("cannot detect the format of a large multi-line JSON document; pass --format")
    return {found.group(1): [] if found.group(1) == "records" else None}, consumed


def _text(item: Any) -> str:
    return item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)

