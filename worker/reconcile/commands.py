"""`cost-worker events import` and `cost-worker reconcile`: parse options, call the core, print.

Exit codes: 0 ok; 2 bad usage or input (unreadable file, unknown or ambiguous format, `--strict`
with a bad row); 3 (reconcile) a row drifts beyond the tolerance.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import click

from worker.cli_support import EXIT_USAGE, UsageFailure, get_app, parse_day
from worker.reconcile.aggregate import GroupBy
from worker.reconcile.compare import DEFAULT_TOLERANCE_PCT, Cause
from worker.reconcile.formats import AUTO, FORMATS
from worker.textsafe import printable

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from worker.app import App
    from worker.reconcile.importer import ImportReport
    from worker.reconcile.models import ModelNormalizer

__all__ = ["events_group", "reconcile_command"]

IMPORT_BATCH = 20_000
"""Events per batch: one upsert, and one transaction unless --strict."""
SOURCE_MAX = 100


def _tolerance(_ctx: click.Context, param: click.Parameter, value: str) -> Decimal:
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not a number", param=param) from None
    if not number.is_finite() or number < 0:
        raise click.BadParameter("must be a percentage >= 0", param=param)
    return number


def _normalizer(app: App, conn: Connection, integration_id: int | None = None) -> ModelNormalizer:
    """Bill ids (then known Claude ids) for matching; the config's [models] table wins over both."""
    from worker.reconcile.models import KNOWN_CLAUDE_MODELS, ModelNormalizer
    from worker.reconcile.store import bill_models
    from worker.settings import config_section

    aliases = config_section(app.config_path, "models")
    bad = [str(k) for k, v in aliases.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise UsageFailure(f"[models] in the config maps tracker ids to bill ids (strings); bad entry: {bad[0]}")
    return ModelNormalizer(bill_models(conn, integration_id), {str(k): v.strip() for k, v in aliases.items()},
                           fallback_models=KNOWN_CLAUDE_MODELS)


# --- events import --------------------------------------------------------------------------------

@click.group("events")
def events_group() -> None:
    """Tracked events (from your own SDK wrappers or collectors), imported for `reconcile`."""


@events_group.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True, allow_dash=True, path_type=str))
@click.option("--format", "fmt", type=click.Choice([AUTO, *FORMATS]), default=AUTO, show_default=True,
              help="Input format; auto detects it from the first record.")
@click.option("--source", default=None,
              help="Name to store the events under (default: the format's name). Ids are unique per source.")
@click.option("--strict", is_flag=True,
              help="A bad row is fatal: nothing from that file is stored, exit 2.")
@click.pass_context
def import_command(ctx: click.Context, files: tuple[str, ...], fmt: str, source: str | None, strict: bool) -> None:
    """Import tracked events from FILE... (`-` for stdin), streaming; prints what was read and stored."""
    if source is not None and not (0 < len(source.strip()) <= SOURCE_MAX):
        raise UsageFailure(f"--source must be 1 to {SOURCE_MAX} characters")
    from worker.reconcile.store import bulk_import

    app = get_app(ctx)
    with app.engine.connect() as conn:
        with conn.begin():
            normalizer = _normalizer(app, conn)
        with bulk_import(conn):
            failed = [path for path in files if not _import_file(app, conn, path, fmt, source, strict, normalizer)]
    if failed:
        ctx.exit(EXIT_USAGE)


def _import_file(app: App, conn: Connection, path: str, fmt: str, source: str | None, strict: bool,
                 normalizer: ModelNormalizer) -> bool:
    """Import one file; print its summary or its error. False when the file failed."""
    from worker.reconcile.formats import DetectionError, model_lookup, read_rows
    from worker.reconcile.formats.source import open_source
    from worker.reconcile.importer import StrictImportError, chunks, import_chunks, parsed_in_child
    from worker.reconcile.store import CommittingSink, SqlEventSink

    name = "<stdin>" if path == "-" else path
    try:
        with open_source(path) as stream:
            detected, rows = read_rows(stream, fmt, model_lookup(normalizer.normalize))
            label = source.strip() if source else detected
            # Reading and parsing run in a second process (when this one can fork) while this one stores.
            with parsed_in_child(chunks(rows)) as parsed:
                if strict:
                    # One transaction for the file: the first bad row rolls all of it back.
                    with conn.begin():
                        report = import_chunks(parsed, SqlEventSink(conn), source=label, format=detected,
                                               strict=True, batch_size=IMPORT_BATCH)
                else:
                    report = import_chunks(parsed, CommittingSink(conn), source=label, format=detected,
                                           batch_size=IMPORT_BATCH)
    except DetectionError as exc:
        _error(f"{name}: {exc}")
        return False
    except StrictImportError as exc:
        _error(f"{name}: line {exc.bad.line}: {exc.bad.reason} (--strict: nothing from this file was stored)")
        return False
    except OSError as exc:
        _error(f"{name}: cannot read: {exc.strerror or exc}")
        return False
    _print_report(name, report)
    return True


def _error(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def _print_report(name: str, report: ImportReport) -> None:
    click.echo(f"{name}: format {report.format}, source {report.source}")
    click.echo(f"  read {report.read + report.bad}  imported {report.imported}  "
               f"duplicates {report.duplicates}  bad {report.bad}")
    for bad in report.bad_samples:
        click.echo(f"  bad {printable(str(bad))}")
    if report.bad > len(report.bad_samples):
        click.echo(f"  ... and {report.bad - len(report.bad_samples)} more bad rows")
    if report.unmatched_models:
        click.echo(f"  unmatched model ids: {_counts(report.unmatched_models)} "
                   "(stored; map them in the config's [models] table)")


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{printable(model)} ({count})" for model, count in counter.most_common())


# --- reconcile --------------------------------------------------------------------------------------

@click.command("reconcile")
@click.option("--since", required=True, callback=parse_day, help="First UTC day (YYYY-MM-DD).")
@click.option("--until", required=True, callback=parse_day, help="Last UTC day, inclusive (YYYY-MM-DD).")
@click.option("--integration", "integration_id", type=int, default=None, help="Only this integration's bill.")
@click.option("--source", "sources", multiple=True,
              help="Events of this source (repeatable). Required when several sources have events in the period.")
@click.option("--by", type=click.Choice([g.value for g in GroupBy]), default=GroupBy.MODEL.value, show_default=True,
              help="Rows per day and model, or also per workspace / API key / actor (a user's email; when both sides "
                   "carry it). By API key and actor the bill is the Analytics API's cost of each.")
@click.option("--tolerance", default=str(DEFAULT_TOLERANCE_PCT), callback=_tolerance, show_default=True,
              help="Percentage of a row's billed cost a delta may reach and still be ok.")
@click.option("--accept", "accept", multiple=True, type=click.Choice([c.value for c in Cause]),
              help="A cause whose drift is shown but does not make the exit code 3 (repeatable), e.g. "
                   "fees_not_tracked. A row is accepted when all its causes are.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.pass_context
def reconcile_command(ctx: click.Context, since: date, until: date, integration_id: int | None,
                      sources: tuple[str, ...], by: str, tolerance: Decimal, accept: tuple[str, ...],
                      fmt: str) -> None:
    """Billed vs tracked per UTC day and model: deltas, status and likely causes. Exit 3 on drift."""
    from worker.reconcile.compare import compare
    from worker.reconcile.render import render, render_summary
    from worker.reconcile.runs import record_run
    from worker.reconcile.store import sources_between, tracked_aggregates
    from worker.storage import repo

    if until < since:
        raise UsageFailure("--until is before --since")
    app = get_app(ctx)
    with app.engine.connect() as conn, conn.begin():
        if integration_id is not None and repo.get_integration(conn, integration_id) is None:
            raise UsageFailure(f"no integration {integration_id}")
        stored = sources_between(conn, since, until)
        if not sources and len(stored) > 1:
            raise UsageFailure(f"events from several sources in this period ({', '.join(stored)}): "
                               "pass --source (repeatable)")
        for missing in sorted(set(sources) - set(stored)) if sources else []:
            _warn(f"source {missing!r} has no events between {since} and {until}")
        if not stored:
            _warn(f"no tracked events between {since} and {until}: every billed row is untracked")
        normalizer = _normalizer(app, conn, integration_id)
        bill, rekey = _bill(conn, since, until, by, integration_id)
        tracked = rekey(tracked_aggregates(conn, since, until, sources or None, by, normalizer.normalize))
    result = compare(bill.cells(), tracked, bill.fees(), tolerance_pct=tolerance, prices=bill.prices(), accept=accept)
    with app.engine.begin() as conn:  # the summary feeds /metrics: latest drift per integration
        record_run(conn, result.summary, integration_id=integration_id, sources=sources, since=since, until=until,
                   group_by=by, finished_at=app.clock.now())
    output = render(result, fmt)
    click.echo(output, nl=not output.endswith("\n"))
    if fmt != "table":  # the table ends with it; csv/json consumers read stdout, people read stderr
        click.echo(render_summary(result.summary), err=True)
    ctx.exit(result.exit_code)


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def _bill(conn: Connection, since: date, until: date, by: str, integration_id: int | None) -> tuple[Any, Any]:
    """The bill to reconcile with, and how tracked keys are matched to it.

    By API key or actor, the Analytics API's billed cost of each key or user (when it was synced for the
    period); otherwise the legacy reports (by key: tokens priced at the day's implied rates).
    """
    from worker.reconcile.analytics_bill import covered, load_analytics_bill, rekey_actors
    from worker.reconcile.store import load_bill

    if by in (GroupBy.API_KEY, GroupBy.ACTOR):
        if covered(conn, since, until, integration_id):
            bill = load_analytics_bill(conn, since, until, by, integration_id)
            if by == GroupBy.ACTOR:
                return bill, lambda tracked: rekey_actors(tracked, bill.user_emails)
            return bill, lambda tracked: tracked
        if by == GroupBy.ACTOR:
            raise UsageFailure("--by actor needs the Analytics API's bill for the whole period (an integration with "
                               "source analytics or both, synced for these days)")
        _warn("the Analytics API's bill does not cover the period: API keys are priced at the legacy report's "
              "implied rates")
    return load_bill(conn, since, until, by, integration_id), lambda tracked: tracked
