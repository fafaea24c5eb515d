"""Every CSV this program writes goes through `csv_writer`: cells a spreadsheet would run are neutralized.

A text cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets (CSV injection: `=HYPERLINK(...)`, `=cmd|...`); following OWASP, such a
cell is written with a leading single quote, which spreadsheets show as text. Model ids, labels,
workspace ids and causes come from the API or from tracker files, so any of them can start that way.

Numbers are left alone, negative ones included: OWASP's rule is about text, and `-1.5` is a number to
every spreadsheet, not a formula, so prefixing it would only turn it into text. A cell is numeric when
it is an int, a Decimal or a float, or text that is a plain decimal number (`-1.5`, `+3`, `-0.000012`,
`1e-3`); anything else that starts like a formula (`-1+2`, `-cmd`, `+A1`) is prefixed.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

__all__ = ["FORMULA_START", "CsvWriter", "csv_cell", "csv_writer"]

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def csv_cell(value: Any) -> Any:
    """One cell, safe to open in a spreadsheet: text starting like a formula gets a leading `'`."""
    if type(value) is str and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


class CsvWriter:
    """`csv.writer` (rows) and `csv.DictWriter` (records by `fieldnames`) in one; every cell through `csv_cell`.

    Rows end with `lineterminator` (`\n` by default), and a cell holding a CR or an LF is always quoted:
    `csv.writer` quotes only the characters of its own line terminator, so with `\n` a bare CR would
    end the row for every reader. Each row is written with `\r\n` (quoting both) and its end replaced.
    """

    def __init__(self, stream: IO[str], fieldnames: Sequence[str] | None = None, **options: Any) -> None:
        self._stream = stream
        self._end = options.pop("lineterminator", "\n")
        self._row = io.StringIO()
        self._writer = csv.writer(self._row, lineterminator="\r\n", **options)
        self.fieldnames = list(fieldnames) if fieldnames is not None else None

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([csv_cell(cell) for cell in row])
        text = self._row.getvalue()
        self._row.seek(0)
        self._row.truncate()
        self._stream.write(text[:-2] + self._end)

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)

    def writeheader(self) -> None:
        self.writerow(self._names())

    def writerecord(self, record: Mapping[str, Any]) -> None:
        """One record, its values in `fieldnames` order (a missing or None value is an empty cell)."""
        self.writerow(["" if record.get(name) is None else record[name] for name in self._names()])

    def _names(self) -> list[str]:
        if self.fieldnames is None:
            raise ValueError("this CsvWriter was made without fieldnames")
        return self.fieldnames


def csv_writer(stream: IO[str], fieldnames: Sequence[str] | None = None, **options: Any) -> CsvWriter:
    """The writer for every CSV this program writes (`\\n` line ends unless `lineterminator` says otherwise)."""
    return CsvWriter(stream, fieldnames, **options)
