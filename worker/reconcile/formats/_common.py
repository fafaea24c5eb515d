"""Shared reading helpers: physical lines, JSON records, and exact value coercion.

Parsers raise `RecordError` for a field they cannot read; the record loop turns it into a
`BadRecord` with the line number, so one broken record never stops the rest.

JSON is decoded by msgspec (about four times faster than the standard
library), with every fraction handed to `Decimal` as written, exactly like the standard decoder
this falls back to: for a line msgspec refuses (invalid JSON, invalid UTF-8, NaN, a lone surrogate,
a BOM...) the standard library decides, so results and error messages never depend on msgspec.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Self

import msgspec  # a declared dependency; FAST_DECODE = None (tests) exercises the stdlib path

from worker.reconcile.events import BadRecord, EventRow, TrackedEvent, event_from_row

Source = Iterable[str] | Iterable[bytes]
"""What a parser reads: a binary or text file object, or any iterable of lines (str or bytes)."""

ParseResult = Iterator[TrackedEvent | BadRecord]
RowResult = Iterator[EventRow | BadRecord]
ModelOf = Callable[[str], str]
"""The bill's model id for a raw tracker id, '' when none matches (see `model_lookup`)."""

JSON_WHOLE_DOCUMENT_LIMIT = 512 * 1024 * 1024
"""A pretty-printed (multi-line) JSON document is read whole; refuse beyond this many characters."""

MAX_TOKENS = 2**63 - 1
"""The largest token count a BIGINT column holds."""

MAX_EVENT_ID = 500
MAX_MODEL_ID = 200
"""Longest event id / model id (characters) accepted: both are indexed, and PostgreSQL refuses an
index entry over ~2.7 kB (which would fail a whole batch); real ids are far shorter."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RecordError(ValueError):
    """A record (or one of its fields) cannot be read; the message says why."""


class BrokenLine(bytes):
    """A line the reader could not hand over (`formats.source`): longer than the bound, or where the
    compressed data became unreadable. It is empty bytes (blank to every parser) and carries why;
    the record loops report it as one bad record at its line number."""

    reason: str

    def __new__(cls, reason: str) -> Self:
        line = super().__new__(cls, b"")
        line.reason = reason
        return line

    def __reduce__(self) -> tuple[type[BrokenLine], tuple[str]]:
        return BrokenLine, (self.reason,)


_DECODER = json.JSONDecoder(parse_float=Decimal)  # one decoder: json.loads(..., parse_float=) builds one per call

FAST_DECODE: Callable[[bytes | str], Any] | None = msgspec.json.Decoder(float_hook=Decimal).decode
"""msgspec's decoder with exact fractions; None (tests) leaves the standard library alone."""


def loads(text: str) -> Any:
    """JSON with exact numbers: fractions become `Decimal`, never float."""
    return _DECODER.decode(text)


def no_model(_raw: str) -> str:
    """The `ModelOf` of parsers run without a normalizer: nothing matched yet."""
    return ""


def model_lookup(normalize: Callable[[str], str | None] | None) -> ModelOf:
    """`normalize` (e.g. `ModelNormalizer.normalize`) as a `ModelOf`, memoized per raw id."""
    if normalize is None:
        return no_model
    cache: dict[str, str] = {}

    def model_of(raw: str) -> str:
        found = cache.get(raw)
        if found is None:
            if len(cache) >= 4096:  # bounded whatever the input: a file of random ids stays flat
                cache.clear()
            found = cache[raw] = normalize(raw) or ""
        return found

    return model_of


def as_events(rows: RowResult) -> ParseResult:
    """Rows as `TrackedEvent`s (bad records pass through)."""
    for item in rows:
        yield item if isinstance(item, BadRecord) else event_from_row(item)


def json_records(source: Source) -> Iterator[tuple[int, Any] | BadRecord]:
    """Yield (1-based physical line, decoded value) per JSON-lines record; a bad line yields a `BadRecord`.

    Blank lines are skipped; a `BrokenLine` (too long, or unreadable compressed data) is a bad record.
    When the first non-empty line is not JSON on its own but opens an object or array, it is either
    a broken first record of a JSON-lines file or the start of one pretty-printed document; the next
    non-empty line decides (`opens_document`). A document is read WHOLE (up to
    `JSON_WHOLE_DOCUMENT_LIMIT`) and a top-level array yields each element, all numbered with the
    document's first line; one too large, or one that does not parse while lines of it are records
    on their own, is read as JSON lines after its first line (`_whole_document`): a file is never
    lost to one broken line.
    """
    lines: Iterator[tuple[int, str | bytes]] = enumerate(source, start=1)
    for number, raw in lines:  # the first non-empty line
        text = line_text(number, raw)
        stripped = text.strip()
        if not stripped:
            if type(raw) is BrokenLine:
                yield BadRecord(number, raw.reason)
            continue
        try:
            value = _DECODER.decode(stripped)
        except json.JSONDecodeError as exc:
            if stripped[0] not in "[{":
                yield BadRecord(number, f"invalid JSON: {exc.msg} (column {exc.colno})")
                break
            following: list[tuple[int, str | bytes]] = []
            second: str | None = None
            for item in lines:  # up to the next non-empty line: is this a document or a broken record?
                following.append(item)
                second = line_text(*item).strip()
                if second:
                    break
            rest = itertools.chain(following, lines)
            if opens_document(stripped, second or None):
                yield from _whole_document(number, raw, rest)
                return
            yield BadRecord(number, f"invalid JSON: {exc.msg} (column {exc.colno})")
            lines = rest
            break
        except (ValueError, RecursionError) as exc:  # an integer beyond Python's digit limit, deep nesting
            yield BadRecord(number, f"invalid JSON: {exc}")
            break
        yield number, value
        break
    yield from _json_lines(lines)


def _json_lines(lines: Iterator[tuple[int, str | bytes]]) -> Iterator[tuple[int, Any] | BadRecord]:
    """Every line its own record (the hot loop of an import)."""
    fast = FAST_DECODE
    for number, raw in lines:
        if fast is not None:
            try:
                value = fast(raw)
            except (ValueError, RecursionError):  # DecodeError, UnicodeDecodeError...: the standard library decides
                pass
            else:
                yield number, value
                continue
        text = line_text(number, raw)
        stripped = text.strip()
        if not stripped:
            if type(raw) is BrokenLine:
                yield BadRecord(number, raw.reason)
            continue
        try:
            value = _DECODER.decode(stripped)
        except json.JSONDecodeError as exc:
            yield BadRecord(number, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except (ValueError, RecursionError) as exc:  # an integer beyond Python's digit limit, deep nesting
            yield BadRecord(number, f"invalid JSON: {exc}")
            continue
        yield number, value


def decodes_alone(text: str) -> bool:
    """Whether one line is, by itself, a whole JSON object or array (a JSON-lines record)."""
    try:
        return isinstance(_DECODER.decode(text), dict | list)
    except (ValueError, RecursionError):
        return False


def opens_document(first: str, second: str | None) -> bool:
    """Whether a first line that is not JSON by itself (but starts with `{` or `[`) opens a multi-line
    document, given the next non-empty line (None: there is none).

    A pretty-printer breaks the line right after an opening bracket, and never puts a whole object on
    the next line by itself; JSON lines put one on every line. So: a document when the first line ends
    with `{` or `[`, or when the next line is not a JSON object or array on its own; otherwise the
    first line is a broken record (truncated, say) of a JSON-lines file.
    """
    if second is None or first.rstrip().endswith(("{", "[")):
        return True
    return not decodes_alone(second)


def line_text(number: int, raw: str | bytes) -> str:
    """One raw line as text: UTF-8 (undecodable bytes as U+FFFD), without its line ending or a leading BOM."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    if number == 1 and text.startswith("\ufeff"):
        text = text[1:]
    return text.rstrip("\r\n")


def _whole_document(
    number: int, head: str | bytes, rest: Iterator[tuple[int, str | bytes]]
) -> Iterator[tuple[int, Any] | BadRecord]:
    """The document that starts at line `number`, read whole. One too large, holding a `BrokenLine`, or
    not parsing while some of its lines are JSON records on their own, is read as JSON lines: the
    first line is reported bad and every other line is a record of its own."""
    lines: list[tuple[int, str | bytes]] = [(number, head)]
    size = len(head)
    for item in rest:
        lines.append(item)
        size += len(item[1]) + 1
        if size > JSON_WHOLE_DOCUMENT_LIMIT or type(item[1]) is BrokenLine:
            reason = ("a multi-line JSON document is read whole up to "
                      f"{JSON_WHOLE_DOCUMENT_LIMIT // 2**20} MiB: convert it to JSON lines" if size > JSON_WHOLE_DOCUMENT_LIMIT
                      else "invalid JSON (the document holds an unreadable line)")
            yield BadRecord(number, f"{reason}; the lines after this one are read as JSON lines")
            yield from _json_lines(itertools.chain(lines[1:], rest))
            return
    try:
        value = loads("\n".join(line_text(n, raw) for n, raw in lines))
    except json.JSONDecodeError as exc:
        if any(decodes_alone(line_text(n, raw).strip()) for n, raw in lines[1:]):
            # JSON lines after a broken first one (a truncated line that ended at a bracket)
            yield BadRecord(number, f"invalid JSON: {_first_line_error(number, head)}")
            yield from _json_lines(iter(lines[1:]))
            return
        yield BadRecord(number + exc.lineno - 1, f"invalid JSON: {exc.msg} (column {exc.colno})")
        return
    except (ValueError, RecursionError) as exc:
        yield BadRecord(number, f"invalid JSON: {exc}")
        return
    if isinstance(value, list):
        for item in value:
            yield number, item
    else:
        yield number, value


def _first_line_error(number: int, raw: str | bytes) -> str:
    try:
        _DECODER.decode(line_text(number, raw).strip())
    except json.JSONDecodeError as exc:
        return f"{exc.msg} (column {exc.colno})"
    except (ValueError, RecursionError) as exc:
        return str(exc)
    return "not a whole record"


def checked(row: EventRow) -> EventRow:
    """`row` when its event id and model id are within `MAX_EVENT_ID` / `MAX_MODEL_ID`."""
    if len(row[0]) > MAX_EVENT_ID:
        raise RecordError(f"event id longer than {MAX_EVENT_ID} characters")
    if len(row[2]) > MAX_MODEL_ID:
        raise RecordError(f"model id longer than {MAX_MODEL_ID} characters")
    return row


def run_rows(source: Source, convert: Callable[[Any, ModelOf], EventRow], model_of: ModelOf) -> RowResult:
    """One row per JSON-lines record: `convert(value, model_of)`, its `RecordError` becoming a `BadRecord`."""
    for item in json_records(source):
        if isinstance(item, BadRecord):
            yield item
            continue
        number, value = item
        try:
            row = convert(value, model_of)
        except RecordError as exc:
            yield BadRecord(number, str(exc))
            continue
        yield row


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
    """A token count in 0..MAX_TOKENS; null/missing/'' is 0. Integral decimals and digit strings are accepted."""
    if type(value) is int and 0 <= value <= MAX_TOKENS:  # the common case, first: this runs six times per event
        return value
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise RecordError(f"{field} is a boolean, not a token count")
    if isinstance(value, int):
        number = value
    elif type(value) is str and len(value) <= 18 and value.isascii() and value.isdigit():  # CSV cells
        number = int(value)
    else:
        try:
            decimal = Decimal(str(value).strip()) if isinstance(value, str | Decimal | float) else None
        except InvalidOperation:
            decimal = None
        if decimal is None or not decimal.is_finite() or decimal != decimal.to_integral_value():
            raise RecordError(f"{field} is not an integer token count: {value!r}")
        if decimal.adjusted() > 18:  # never build a huge int from an exponent such as 1E+999999999
            raise RecordError(f"{field} is too large: {value!r}")
        number = int(decimal)
    if number < 0:
        raise RecordError(f"{field} is negative: {number}")
    if number > MAX_TOKENS:
        raise RecordError(f"{field} is too large: {number}")
    return number


def money(value: Any, field: str) -> Decimal | None:
    """A USD amount as an exact Decimal; null/missing/empty is None (unknown, not zero).

    Amounts of 10**18 USD or more, or with more than 60 decimal places, are refused: no tracker
    writes them, and their text would not be bounded.
    """
    if value is None or value == "":
        return None
    if type(value) is str:
        try:
            amount = Decimal(value)  # surrounding whitespace allowed, as Decimal itself does
        except InvalidOperation:
            raise RecordError(f"{field} is not a number: {value!r}") from None
    elif type(value) is Decimal:
        amount = value
    elif isinstance(value, bool):
        raise RecordError(f"{field} is a boolean, not an amount")
    else:
        if isinstance(value, float):  # only reachable for inputs not read through the JSON readers
            value = repr(value)
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            raise RecordError(f"{field} is not a number: {value!r}") from None
    if not amount.is_finite():
        raise RecordError(f"{field} is not finite: {value!r}")
    exponent = amount.as_tuple().exponent  # an int: the amount is finite
    if amount and (amount.adjusted() >= 18 or (isinstance(exponent, int) and exponent < -60)):
        raise RecordError(f"{field} is out of range: {value!r}")
    return amount


_PLAIN_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,60})?")
"""Decimal text that is already what `format(Decimal(text), "f")` gives, and in `money`'s range."""


def money_text(value: Any, field: str) -> str:
    """`money` as the exact decimal text a row stores ('' for unknown)."""
    if type(value) is str and _PLAIN_DECIMAL.fullmatch(value):
        return value  # the common case: a plain decimal string, stored as written
    amount = money(value, field)
    return "" if amount is None else format(amount, "f")


def optional_text(value: Any) -> str:
    """A text field as a row stores it: stripped, '' for null/missing/blank (numbers as written)."""
    if type(value) is str:
        return value.strip()
    if value is None:
        return ""
    return str(value).strip()


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
    try:
        return _timestamp(value, field, unit)
    except OverflowError:  # an offset moving the time out of datetime's years 1..9999
        raise RecordError(f"{field} is out of range: {value!r}") from None


def _timestamp(value: Any, field: str, unit: str | None) -> datetime:
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


_UTC_SUFFIXES = frozenset(("", "Z", "z", "+00:00", "-00:00"))
_DATE_TIME_SEPARATORS = frozenset(("--T", "--t", "-- "))


def timestamp_text(value: Any, field: str, *, unit: str | None = None) -> str:
    """`timestamp` as the naive UTC text a row stores (`YYYY-MM-DD HH:MM:SS.ffffff`).

    ISO 8601 times already in UTC (`Z`, `+00:00`, or no offset) in the usual extended layout
    (`YYYY-MM-DDTHH:MM:SS`, then a fraction or not) are rewritten as text once
    `datetime.fromisoformat` has accepted them: formatting a datetime costs more than all the rest
    of an event. Everything else goes through `timestamp`.
    """
    if type(value) is str and value[4:11:3] in _DATE_TIME_SEPARATORS and value[13:17:3] == "::":
        # '-' at 4 and 7, T at 10, ':' at 13 and 16: once fromisoformat accepts it, these positions
        # hold YYYY-MM-DD and HH:MM:SS in ASCII digits.
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            zone = parsed.tzinfo
            if zone is None or zone is UTC:
                tail = value[19:]
                if tail in _UTC_SUFFIXES:
                    return f"{value[:10]} {value[11:19]}.000000"
                if tail[0] in ".," and tail[1:2].isdigit():
                    return f"{value[:10]} {value[11:19]}.{parsed.microsecond:06d}"
            return _utc_text(parsed, field, value)
    return _utc_text(timestamp(value, field, unit=unit), field, value)


def _utc_text(at: datetime, field: str, value: Any) -> str:
    try:
        if at.tzinfo is not None:
            at = at.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        raise RecordError(f"{field} is out of range: {value!r}") from None
    return at.isoformat(" ", "microseconds")
