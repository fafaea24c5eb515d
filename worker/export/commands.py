"""`cost-worker export`: the synced bill as a file (FOCUS 1.2 CSV).

Exit codes: 0 written, 2 bad usage (dates, an unknown integration, an unwritable --out). With --out the
file appears whole or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

from worker.cli_support import UsageFailure, get_app, parse_day

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["export_command"]



@click.command("export")
@click.option("--format", "fmt", type=click.Choice(["focus"]), required=True,
              help="focus: FinOps FOCUS 1.2 CSV (docs/export.md).")
@click.option("--since", required=True, callback=parse_day, help="First UTC day (YYYY-MM-DD).")
@click.option("--until", required=True, callback=parse_day, help="Last UTC day, inclusive (YYYY-MM-DD).")
@click.option("--integration", "integration_id", type=int, default=None, help="Only this integration.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write this file (whole or not at all) instead of stdout.")
@click.pass_context
def export_command(ctx: click.Context, fmt: str, since: date, until: date, integration_id: int | None,
                   out: Path | None) -> None:
    """The synced bill as a FinOps FOCUS 1.2 CSV file: one row per UTC day and charge."""
    from worker.export.focus import months
    from worker.storage import repo

    if until < since:
        raise UsageFailure("--until is before --since")
    app = get_app(ctx)
    with app.engine.connect() as conn, conn.begin():
        if integration_id is not None and repo.get_integration(conn, integration_id) is None:
            raise UsageFailure(f"no integration {integration_id}")
    if out is None:
        rows, total = _write(app.engine, sys.stdout, since, until, integration_id)
    else:
        rows, total = _write_file(app.engine, out, since, until, integration_id)
    where = "stdout" if out is None else str(out)
    days = sum((end - first).days for first, end in months(since, until))
    click.echo(f"wrote {rows} FOCUS 1.2 rows ({days} days {since}..{until}, BilledCost total "
               f"{format(total, 'f')} USD) to {where}", err=True)


def _write(engine: Engine, stream: IO[str], since: date, until: date,
           integration_id: int | None) -> tuple[int, Decimal]:
    from worker.csvsafe import csv_writer
    from worker.export.focus import COLUMNS, focus_rows, months
    from worker.money import EXACT

    # Formula-looking text cells neutralized (worker.csvsafe); RFC 4180 line ends.
    writer = csv_writer(stream, COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    rows, total = 0, Decimal(0)
    for first, end in months(since, until):
        # A transaction per month: a consistent month (cost and usage), and `run` is not held off for long.
        with engine.connect() as conn, conn.begin():
            for record in focus_rows(conn, first, end, integration_id):
                writer.writerecord(record)
                rows += 1
                total = EXACT.add(total, Decimal(record["BilledCost"] or 0))
    return rows, total


def _write_file(engine: Engine, out: Path, since: date, until: date,
                integration_id: int | None) -> tuple[int, Decimal]:

    directory = out.expanduser().resolve().parent
    try:
        handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="", dir=directory,
                                             prefix=f".{out.name}.", suffix=".tmp", delete=False)
    except OSError as exc:
        raise UsageFailure(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        with handle:
            result = _write(engine, handle, since, until, integration_id)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise
    return result
