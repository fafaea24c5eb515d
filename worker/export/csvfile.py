"""A CSV writer whose cells a spreadsheet will not run.

A text cell beginning with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets (CSV injection); following OWASP it is written with a leading `'`. Cells
that are plain decimal numbers (`-1.5`) are numbers to every spreadsheet and stay as they are: the
export's money must stay machine-readable. Model ids, descriptions and workspace ids come from the API.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from typing import IO

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]-?[0-9]+)?")


def safe_cell(value: str | None) -> str:
    """One cell: '' for null, a leading `'` on text that starts like a formula."""
    if value is None:
        return ""
    if value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


class RecordWriter:
    """Header and records (dicts) in `fieldnames` order, every cell through `safe_cell`."""

    def __init__(self, stream: IO[str], fieldnames: Sequence[str]) -> None:
        self.fieldnames = list(fieldnames)
        self._writer = csv.writer(stream, lineterminator="\r\n")  # RFC 4180; a CR or LF in a cell is quoted

    def writeheader(self) -> None:
        self._writer.writerow(self.fieldnames)

    def writerecord(self, record: Mapping[str, str | None]) -> None:
        self._writer.writerow([safe_cell(record.get(name)) for name in self.fieldnames])
