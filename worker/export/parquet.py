"""The FOCUS 1.2 export as Parquet (`--format focus-parquet`), with pyarrow (the optional `parquet` extra).

The same records as the CSV (worker.export.focus), typed by the specification's data types: Decimal columns
as `decimal128(38, 16)` (money and quantities exact: a value with more fractional digits is refused, never
rounded), Date/Time columns as UTC timestamps (milliseconds, the coarsest unit Parquet has), everything else (String, JSON) as text. One row
group per calendar month, each read in its own transaction like the CSV. No formula neutralization: a
Parquet cell is typed data, not something a spreadsheet evaluates.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from worker.export.focus import COLUMNS, DATETIME_COLUMNS, DECIMAL_COLUMNS, Record, focus_rows, months
from worker.money import EXACT

if TYPE_CHECKING:
    from datetime import date

    from sqlalchemy import Engine

DECIMAL_SCALE = 16
DECIMAL = pa.decimal128(38, DECIMAL_SCALE)
TIMESTAMP = pa.timestamp("ms", tz="UTC")  # Parquet has no second unit: milliseconds
SCHEMA = pa.schema([pa.field(name, DECIMAL if name in DECIMAL_COLUMNS else TIMESTAMP if name in DATETIME_COLUMNS
                             else pa.string()) for name in COLUMNS],
                   metadata={"focus_version": "1.2", "source": "cost-worker"})


class InexactValue(ValueError):
    """A Decimal value with more fractional digits than the Parquet column holds."""


def _decimal(name: str, text: str | None) -> Decimal | None:
    if text is None:
        return None
    value = Decimal(text)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -DECIMAL_SCALE:
        raise InexactValue(f"{name} {text} has more than {DECIMAL_SCALE} decimal places: it cannot be written "
                           "exactly to Parquet (the CSV format keeps every digit)")
    return value


def _timestamp(text: str | None) -> datetime | None:
    return None if text is None else datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def table(records: list[Record]) -> pa.Table:
    """A pyarrow table of FOCUS records in SCHEMA."""
    columns: list[list[Any]] = []
    for name in COLUMNS:
        values = [r[name] for r in records]
        if name in DECIMAL_COLUMNS:
            columns.append([_decimal(name, v) for v in values])
        elif name in DATETIME_COLUMNS:
            columns.append([_timestamp(v) for v in values])
        else:
            columns.append(values)
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, SCHEMA, strict=True)],
                                schema=SCHEMA)


def write(engine: Engine, stream: IO[bytes], since: date, until: date,
          integration_id: int | None) -> tuple[int, Decimal]:
    """Write `[since, until]` (inclusive) to `stream` as Parquet; (rows, BilledCost total)."""
    rows, total = 0, Decimal(0)
    with pq.ParquetWriter(stream, SCHEMA, compression="zstd") as writer:
        for first, end in months(since, until):
            with engine.connect() as conn, conn.begin():
                records = list(focus_rows(conn, first, end, integration_id))
            if records:
                writer.write_table(table(records))
            rows += len(records)
            for r in records:
                total = EXACT.add(total, Decimal(r["BilledCost"] or 0))
    return rows, total
