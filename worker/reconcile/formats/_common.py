"""Shared reading helpers: physical lines, JSON records, and exact value coercion.

Parsers raise `RecordError` for a field they cannot read; the record loop turns it into a
`BadRecord` with the line number, so one broken record never stops the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from worker.reconcile.events import BadRecord, TrackedEvent

Source = Iterable[str] | Iterable[bytes]
"""What a parser reads: a binary or text file object, or any iterable of lines (str or bytes)."""

ParseResult = Iterator[TrackedEvent | BadRecord]

JSON_WHOLE_DOCUMENT_LIMIT = 512 * 1024 * 1024
"""A pretty-printed (multi-line) JSON document is read whole; refuse beyond this many characters."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RecordError(ValueError):
    """A record (or one of its fields) cannot be read; the message says why."""


def iter_lines(source: Source) -> Iterator[tuple[int, str]]:
    """Yield (1-based physical line number, text without line ending), lazily.

    Bytes are decoded as UTF-8 (a leading BOM is dropped); undecodable bytes become U+FFFD so the
    record fails to parse and is reported instead of aborting the stream.
    """
    for number, raw in enumerate(source, start=1):
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        if number == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield number, text.rstrip("\r\n")


_DECODER = json.JSONDecoder(parse_float=Decimal)  # one decoder: json.loads(..., parse_float=) builds one per call


def loads(text: str) -> Any:
    """JSON with exact numbers: fractions become `Decimal`, never float."""
    return _DECODER.decode(text)


def iter_json_values(lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, Any] | BadRecord]:
    """Yield (line, value) per JSON-lines record; a bad line yields a `BadRecord`.

    When the first non-empty line is not JSON on its own but opens an object or array, the input
    is one pretty-printed document: it is read WHOLE (up to `JSON_WHOLE_DOCUMENT_LIMIT`) and a
    top-level array yields each element, all numbered with the document's first line.
    """
    first = True
    for number, text in lines:
        stripped = text.strip()
        if not stripped:
            continue
        try:
            value = loads(stripped)
        except json.JSONDecodeError as exc:
            if first and stripped[0] in "[{":
                yield from _whole_document(number, text, lines)
                return
            yield BadRecord(number, f"invalid JSON: {exc.msg} (column {exc.colno})")
            first = False
            continue
        first = False
        yield number, value


def _whole_document(
    number: int, head: str, lines: Iterator[tuple[int, str]]
) -> Iterator[tuple[int, Any] | BadRecord]:
    parts = [head]
    size = len(head)
    for _, text in lines:
        parts.append(text)
        size += len(text) + 1
        if size > JSON_WHOLE_DOCUMENT_LIMIT:
            yield BadRecord(number, "multi-line JSON document too large; convert it to JSON lines")
            return
    try:
        value = loads("\n".join(parts))
    except json.JSONDecodeError as exc:
        yield BadRecord(number + exc.lineno - 1, f"invalid JSON: {exc.msg} (column {exc.colno})")
        return
    if isinstance(value, list):
        for item in value:
            yield number, item
    else:
        yield number, value


def run_records(
    values: Iterable[tuple[int, Any] | BadRecord],
    convert: Callable[[Any], Iterable[TrackedEvent]],
) -> ParseResult:
    """Apply a record converter to each value, turning its `RecordError` into a `BadRecord`."""
    for item in values:
        if isinstance(item, BadRecord):
            yield item
            continue
        number, value = item
        try:
            events = list(convert(value))
        except RecordError as exc:
            yield BadRecord(number, str(exc))
            continue
        yield from events


# -- value coercion ---------------------------------------------------------------------------


def require_mapping(value: Any, what: str = "record") -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RecordError(f"{what} is not a JSON object")
    return value


def first_key(record: Mapping[str, Any], *names: str) -> Any:
    """The value of the first of `names` present with a non-null value, else None."""
    for name in names:
        value = record.get(name)
        if value is not None:
            return value
    return None


def token_count(value: Any, field: str) -> int:
    """A non-negative integer token count; null/missing is 0. Integral decimals are accepted."""
    if type(value) is int and value >= 0:  # the common case, first: this runs six times per event
        return value
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise RecordError(f"{field} is a boolean, not a token count")
    if isinstance(value, int):
        number = value
    else:
        try:
            decimal = Decimal(str(value).strip()) if isinstance(value, str | Decimal | float) else None
        except InvalidOperation:
            decimal = None
        if decimal is None or not decimal.is_finite() or decimal != decimal.to_integral_value():
            raise RecordError(f"{field} is not an integer token count: {value!r}")
        number = int(decimal)
    if number < 0:
        raise RecordError(f"{field} is negative: {number}")
    return number


def money(value: Any, field: str) -> Decimal | None:
    """A USD amount as an exact Decimal; null/missing/empty is None (unknown, not zero)."""
    if type(value) is Decimal and value.is_finite():
        return value
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RecordError(f"{field} is a boolean, not an amount")
    if isinstance(value, float):  # only reachable for inputs not read through `loads`
        value = repr(value)
    try:
        amount = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise RecordError(f"{field} is not a number: {value!r}") from None
    if not amount.is_finite():
        raise RecordError(f"{field} is not finite: {value!r}")
    return amount


def optional_str(value: Any) -> str | None:
    if value is None:
        return None
    if type(value) is str:
        return value.strip() or None
    text = str(value).strip()
    return text or None


_DIGITS = re.compile(r"^-?\d+(\.\d+)?$")


def timestamp(value: Any, field: str, *, unit: str | None = None) -> datetime:
    """An aware UTC datetime from ISO 8601 (with offset or Z) or a number since the epoch.

    `unit` ("s", "ms", "us", "ns") fixes the epoch unit when the format defines it; otherwise it is
    inferred from the magnitude (seconds < 1e11 <= ms < 1e14 <= us < 1e17 <= ns). ISO times without
    an offset are taken as UTC: a tracker writing local time then shows up as `day_boundary` drift.
    """
    if type(value) is str and len(value) >= 19 and value[4] == "-" and value[10] in "Tt ":
        # ISO 8601 first (the common case); Python 3.11 reads `Z` itself.
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    if value is None or value == "":
        raise RecordError(f"missing {field}")
    if isinstance(value, bool):
        raise RecordError(f"{field} is a boolean, not a time")
    if isinstance(value, int | Decimal | float) or (isinstance(value, str) and _DIGITS.match(value.strip())):
        return _from_epoch(Decimal(str(value).strip()), unit, field)
    if not isinstance(value, str):
        raise RecordError(f"{field} is not a time: {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise RecordError(f"{field} is not an ISO 8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _from_epoch(number: Decimal, unit: str | None, field: str) -> datetime:
    if unit is None:
        size = abs(number)
        unit = "s" if size < 10**11 else "ms" if size < 10**14 else "us" if size < 10**17 else "ns"
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    # Exact integer microseconds: no float rounding can move an event across midnight.
    micros = int(number * 10**6 / per_second)
    try:
        return _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise RecordError(f"{field} is out of range: {number}") from None
