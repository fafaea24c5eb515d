"""`cost-worker export`: the synced bill as a file (FOCUS 1.2 CSV, or Parquet with the `parquet` extra).

Exit codes: 0 written, 2 bad usage (dates, an unknown integration, an unwritable --out, focus-parquet
without pyarrow or without --out, a value Parquet cannot hold exactly). With --out the file appears whole
or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from worker.cli_support import UsageFailure, get_app, parse_day

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["export_command"]

PARQUET_MISSING = ("--format focus-parquet needs pyarrow, an optional extra: pip install 'cost-worker[parquet]' "
                   "(or --format focus, CSV)")


@click.command("export")
@click.option("--format", "fmt", type=click.Choice(["focus", "focus-parquet"]), required=True,
              help="focus: FinOps FOCUS 1.2 CSV; focus-parquet: the same as Parquet (needs pyarrow and --out; "
                   "docs/export.md).")
@click.option("--since", required=True, callback=parse_day, help="First UTC day (YYYY-MM-DD).")
@click.option("--until", required=True, callback=parse_day, help="Last UTC day, inclusive (YYYY-MM-DD).")
@click.option("--integration", "integration_id", type=int, default=None, help="Only this integration.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write this file (whole or not at all) instead of stdout.")
@click.pass_context
def export_command(ctx: click.Context, fmt: str, since: date, until: date, integration_id: int | None,
                   out: Path | None) -> None:
    """The synced bill as a FinOps FOCUS 1.2 CSV file: one row per UTC day and charge."""
    from worker.export.focus import months, priority_grouping_note
    from worker.storage import repo

    if until < since:
        raise UsageFailure("--until is before --since")
    parquet = fmt == "focus-parquet"
    if parquet and importlib.util.find_spec("pyarrow") is None:
        raise UsageFailure(PARQUET_MISSING)
    if parquet and out is None:
        raise UsageFailure("--format focus-parquet writes a binary file: give --out FILE")
    app = get_app(ctx)
    with app.engine.connect() as conn, conn.begin():
        if integration_id is not None and repo.get_integration(conn, integration_id) is None:
            raise UsageFailure(f"no integration {integration_id}")
    if out is None:
        rows, total = _write(app.engine, sys.stdout, since, until, integration_id)
    elif parquet:
        from worker.export import parquet as focus_parquet

        try:
            rows, total = _write_file(app.engine, out, since, until, integration_id, focus_parquet.write, binary=True)
        except focus_parquet.InexactValue as exc:
            raise UsageFailure(str(exc)) from None
    else:
        rows, total = _write_file(app.engine, out, since, until, integration_id)
    where = "stdout" if out is None else str(out)
    days = sum((end - first).days for first, end in months(since, until))
    kind = "Parquet" if parquet else ""
    click.echo(f"wrote {rows} FOCUS 1.2 {kind + ' ' if kind else ''}rows ({days} days {since}..{until}, BilledCost "
               f"total {format(total, 'f')} USD) to {where}", err=True)
    note = priority_grouping_note(app.settings.analytics_cost_group_by)
    if note:
        click.echo(note, err=True)


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


def _write_file(engine: Engine, out: Path, since: date, until: date, integration_id: int | None,
                write: Callable[[Engine, Any, date, date, int | None], tuple[int, Decimal]] = _write,
                binary: bool = False) -> tuple[int, Decimal]:
    """`write` (the CSV's, or Parquet's, `binary`) into a file beside `out`, renamed onto it when whole."""
    directory = out.expanduser().resolve().parent
    handle: Any
    try:
        if binary:
            handle = tempfile.NamedTemporaryFile("wb", dir=directory, prefix=f".{out.name}.", suffix=".tmp",
                                                 delete=False)
        else:
            handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="", dir=directory,
                                                 prefix=f".{out.name}.", suffix=".tmp", delete=False)
    except OSError as exc:
        raise UsageFailure(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        with handle:
            result = write(engine, handle, since, until, integration_id)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise
    return result
