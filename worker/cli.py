"""The `cost-worker` command line: parses, prints, and calls the modules that do the work.

Exit codes: 0 success, 1 a sync or connection failed, 2 bad usage or input.
Heavy imports stay inside the commands so `cost-worker --help` starts fast.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from worker import __version__
from worker.cli_support import EXIT_FAILED, EXIT_USAGE, Failure, fail, failure, get_app, parse_day
from worker.textsafe import printable

if TYPE_CHECKING:
    from worker.app import App
    from worker.settings import Tier
    from worker.sync.streams import Source

log = logging.getLogger("worker.cli")

ADMIN_KEY_ENV = "ANTHROPIC_ADMIN_KEY"
T = TypeVar("T")
SOURCE_CHOICES = ["legacy", "analytics", "both"]  # worker.sync.streams.SOURCES, without importing it for --help
REPORT_BY = ["model", "workspace", "api_key", "actor", "service_tier", "product"]


class LazyGroup(click.Group):
    """Subcommands named here are imported only when used, and listed in --help by their one-line help
    written here (importing them costs more than all of `--help`; a test keeps the lines in step)."""

    lazy = {
        "simulate": ("worker.simulator.command", "simulate_command",
                     "Run a local, deterministic copy of Anthropic's Admin API cost and usage reports."),
        "events": ("worker.reconcile.commands", "events_group",
                   "Tracked events (from your own SDK wrappers or collectors), imported for `reconcile`."),
        "reconcile": ("worker.reconcile.commands", "reconcile_command",
                      "Billed vs tracked per UTC day and model: deltas, status and likely causes. Exit 3 on drift."),
        "budgets": ("worker.watch.commands", "budgets_command",
                    "Each [[budgets]] entry: spend of its period so far, the forecast to the period's end, and status."),
        "anomalies": ("worker.watch.commands", "anomalies_command",
                      "Days whose spend per integration, workspace or model breaks from its trailing 28 days "
                      "(spike or drop)."),
        "export": ("worker.export.commands", "export_command",
                   "The synced bill as a FinOps FOCUS 1.2 CSV file: one row per UTC day and charge."),
        "sources": ("worker.sources.commands", "sources_group",
                    "The legacy cost report and the Usage and Cost Analytics API, side by side."),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = []
        for name in names:
            if name in self.lazy:
                rows.append((name, click.Command(name, help=self.lazy[name][2]).get_short_help_str(limit)))
                continue
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        """Turn every error into one line and an exit code: no tracebacks for users."""
        from worker.logs import scrub

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            known = _classify(exc)
            if known:
                raise failure(scrub(known[0]), known[1]) from None
            log.debug("internal error", exc_info=True)
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise Failure(f"internal error: {type(exc).__name__}: {scrub(first)} "
                          "(set COST_WORKER_LOG_LEVEL=debug for the traceback)") from None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            import importlib

            module, attr, _help = self.lazy[name]
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="TOML settings file (default: $COST_WORKER_CONFIG). COST_WORKER_* environment variables win.")
@click.version_option(__version__, prog_name="cost-worker")
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """cost-worker: Anthropic's authoritative cost and usage reports, synced into SQL daily."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


# --- onboarding ---------------------------------------------------------------------------------

def read_admin_key() -> Any:
    """From ANTHROPIC_ADMIN_KEY, else stdin when it is not a terminal, else a hidden prompt. Never argv."""
    from worker.secret import AdminKey

    value = os.environ.get(ADMIN_KEY_ENV)
    if value is None:
        value = sys.stdin.read() if not sys.stdin.isatty() else getpass.getpass(
            "Anthropic Admin API key (sk-ant-admin..., input hidden): ")
    return AdminKey(value)


def _print_wait(seconds: float, reason: str) -> None:
    if seconds >= 1:
        click.echo(f"waiting {seconds:.0f}s for {reason}...", err=True)


def _run_connection_test(app: App, key: Any) -> Any:
    from worker.integrations import check_connection

    return asyncio.run(check_connection(app, key, on_wait=_print_wait))


@cli.command("test-connection")
@click.pass_context
def test_connection_cmd(ctx: click.Context) -> None:
    """Check an Admin key: GET /v1/organizations/me, then one small cost report. Prints the organization."""
    app = get_app(ctx)
    key = read_admin_key()
    org = _run_connection_test(app, key)
    click.echo(f"Connection OK: organization {org.name!r} ({printable(org.id)}); cost report access confirmed.")


@cli.command("connect")
@click.option("--label", default=None, help="Name for this integration (default: 'Anthropic - <organization>').")
@click.option("--tier", type=click.Choice(["free", "pro", "ultimate"]), default="free", show_default=True,
              help="Plan tier: sets how many days are backfilled (free 30, pro/ultimate 365 by default).")
@click.option("--source", type=click.Choice(SOURCE_CHOICES), default="both", show_default=True,
              help="Bills to sync: the legacy cost/usage reports, the Usage and Cost Analytics API, or both "
                   "(the legacy reports stay the bill before 2026-01-01 and wherever the Analytics API is refused).")
@click.pass_context
def connect_cmd(ctx: click.Context, label: str | None, tier: str, source: str) -> None:
    """Test an Admin key, store it encrypted, and queue the tier's backfill. Prints the integration id."""
    from worker.integrations import check_label, connect

    label = check_label(label)  # before any request
    app = get_app(ctx)
    key = read_admin_key()
    org = _run_connection_test(app, key)
    # click.Choice has checked both against the Literal's values.
    integration_id = connect(app, key, org, label=label, tier=cast("Tier", tier), source=cast("Source", source))
    days = app.settings.backfill_days(cast("Tier", tier))
    click.echo(f"Connected organization {org.name!r} as integration {integration_id} (key {key.hint}); "
               f"backfill of {days} days queued: `cost-worker run` or `cost-worker sync-now` performs it.", err=True)
    click.echo(str(integration_id))


# --- integrations -------------------------------------------------------------------------------

@cli.group("integrations")
def integrations_group() -> None:
    """List or remove connected organizations, or replace one's Admin key."""


@integrations_group.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def integrations_list(ctx: click.Context, fmt: str) -> None:
    """Show every integration with its status, key hint and last sync."""
    from worker.integrations import integration_records

    app = get_app(ctx)
    with app.engine.begin() as conn:
        rows = integration_records(conn)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no integrations: add one with `cost-worker connect`")
        return
    cols = ["id", "label", "tier", "source", "status", "key_hint", "last_success_at", "last_error"]
    _table([[printable("" if r[c] is None else str(r[c]))[:60] for c in cols] for r in rows], cols)


@integrations_group.command("set-source")
@click.argument("integration_id", type=int)
@click.argument("source", type=click.Choice(SOURCE_CHOICES))
@click.pass_context
def integrations_set_source(ctx: click.Context, integration_id: int, source: str) -> None:
    """Sync the legacy reports, the Usage and Cost Analytics API, or both; days the source lacks are backfilled."""
    from worker.integrations import set_source

    before = set_source(get_app(ctx), integration_id, cast("Source", source))  # a click.Choice of its values
    if before.source == source:
        click.echo(f"integration {integration_id} ({printable(before.label)}) already syncs {source}")
        return
    click.echo(f"integration {integration_id} ({printable(before.label)}): source {before.source} -> {source}; "
               "`cost-worker run` (or `cost-worker sync-now`) reads what it still lacks")


@integrations_group.command("remove")
@click.argument("integration_id", type=int)
@click.pass_context
def integrations_remove(ctx: click.Context, integration_id: int) -> None:
    """Delete an integration, its encrypted key and every row synced for it."""
    from worker.integrations import remove

    if not remove(get_app(ctx).engine, integration_id):
        fail(f"no integration {integration_id} (see `cost-worker integrations list`)", EXIT_USAGE)
    click.echo(f"removed integration {integration_id} and its stored data")


@integrations_group.command("replace-key")
@click.argument("integration_id", type=int)
@click.pass_context
def integrations_replace_key(ctx: click.Context, integration_id: int) -> None:
    """Swap in a new Admin key of the same organization (after a revocation or rotation); keeps every synced row."""
    from worker.integrations import replace_key
    from worker.storage import repo

    app = get_app(ctx)
    with app.engine.begin() as conn:  # before reading the key or sending a request
        if repo.get_integration(conn, integration_id) is None:
            fail(f"no integration {integration_id} (see `cost-worker integrations list`)", EXIT_USAGE)
    key = read_admin_key()
    org = _run_connection_test(app, key)
    before = replace_key(app, integration_id, key, org)
    click.echo(f"integration {integration_id} ({printable(before.label)}): key {before.key_hint} replaced by {key.hint}; "
               f"`cost-worker sync-now --integration {integration_id}` syncs with it now")


# --- syncing ------------------------------------------------------------------------------------

@cli.command("sync-now")
@click.option("--integration", "ids", type=int, multiple=True, help="Only this integration (repeatable).")
@click.pass_context
def sync_now_cmd(ctx: click.Context, ids: tuple[int, ...]) -> None:
    """Bring integrations up to date now: finish pending backfills, then re-read the trailing window."""
    from worker.storage import repo
    from worker.sync.engine import describe_holder, sync_now
    from worker.sync.progress import BarProgress, LogProgress

    app = get_app(ctx)
    with app.engine.begin() as conn:
        known = {i.id for i in repo.list_integrations(conn)}
    missing = [i for i in ids if i not in known]
    if missing:
        fail(f"no integration {missing[0]} (see `cost-worker integrations list`)", EXIT_USAGE)
    if not known:
        fail("no integrations: add one with `cost-worker connect`", EXIT_USAGE)

    def waiting(integration_id: int, holder: repo.LeaseHolder) -> None:
        click.echo(f"integration {integration_id}: waiting for another process syncing it: "
                   f"{describe_holder(holder)}", err=True)

    if sys.stderr.isatty():
        with BarProgress() as bars:  # one line per integration, redrawn in place
            outcomes = _run_stoppable(sync_now(app, list(ids) or None, progress=bars, on_claim_wait=waiting))
    else:
        outcomes = _run_stoppable(sync_now(app, list(ids) or None, progress=LogProgress(), on_claim_wait=waiting))
    failed = [o for o in outcomes if not o.ok]
    for o in outcomes:
        click.echo(f"integration {o.integration_id}: {'ok' if o.ok else 'FAILED'}: {printable(o.message)}")
    if failed:
        raise SystemExit(EXIT_FAILED)


def _run_stoppable(work: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, with SIGTERM (what a container runtime or a Kubernetes Job sends) stopping the work as
    SIGINT does: the task is cancelled, each sync records its run `interrupted` and gives back its lease and
    claim, and the command ends as an interrupted one (KeyboardInterrupt)."""
    async def main() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await work
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


@cli.command("run")
@click.pass_context
def run_cmd(ctx: click.Context) -> None:
    """The long-running service: backfills queued integrations and syncs daily (06:00 UTC by default)."""
    from worker.http import HealthServer
    from worker.sync.scheduler import SyncService
    from worker.web.auth import load_ui_token

    app = get_app(ctx)
    load_ui_token(app.settings)  # a bad COST_WORKER_UI_TOKEN(_FILE) stops `run` here, whether the port is served or not
    lock = _sqlite_run_lock(app.settings.effective_database_url)  # held until the process exits
    app.engine  # migrate before serving  # noqa: B018

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service = SyncService(app)
        s = app.settings
        http = HealthServer(app, service, s.http_port, host=s.http_host) if s.http_port else None
        if http is not None:
            try:
                await http.start()
            except OSError as exc:
                fail(f"cannot serve /healthz and /metrics on {s.http_host} port {s.http_port}: "
                      f"{exc.strerror or exc} (set COST_WORKER_HTTP_PORT to a free port or 0 to turn the server "
                      "off; COST_WORKER_HTTP_HOST to an address of this machine)", EXIT_USAGE)
        try:
            # Only once the port is ours: a run that cannot start must not leave a new master key behind.
            app.keyring  # noqa: B018 - generate the default key file now, with its warning, not mid-sync
            await service.serve(stop)
        finally:
            if http is not None:
                await http.close()

    try:
        asyncio.run(main())
    finally:
        if lock is not None:
            lock.close()


def _sqlite_run_lock(url: str) -> Any:
    """SQLite is single-process for `run`: an exclusive lock on `<db file>.run.lock` for the process's lifetime.

    Returns the open lock file (None for PostgreSQL, where replicas coordinate through leases). `sync-now`
    and the other commands do not take it: they cooperate with `run` through the integration leases.
    """
    import fcntl

    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    db_file = Path(parsed.database).expanduser().resolve()
    db_file.parent.mkdir(parents=True, exist_ok=True)
    lock = (db_file.parent / f"{db_file.name}.run.lock").open("a+")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        fail(f"another `cost-worker run` is already using {db_file}: SQLite allows one `run` process "
              "(use PostgreSQL for several replicas; `sync-now` works beside it)", EXIT_USAGE)
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


# --- reports ------------------------------------------------------------------------------------

@cli.command("report")
@click.option("--since", required=True, callback=parse_day, help="First UTC day (YYYY-MM-DD).")
@click.option("--until", required=True, callback=parse_day, help="Last UTC day, inclusive (YYYY-MM-DD).")
@click.option("--integration", "integration_id", type=int, default=None, help="Only this integration.")
@click.option("--by", type=click.Choice(REPORT_BY), default=None,
              help="Also per this dimension (key and name columns); api_key, actor and product need the Analytics "
                   "API.")
@click.option("--source", type=click.Choice(["legacy", "analytics"]), default=None,
              help="Read this bill only (default with --by: each day's bill of record).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.pass_context
def report_cmd(ctx: click.Context, since: date, until: date, integration_id: int | None, by: str | None,
               source: str | None, fmt: str) -> None:
    """Billed cost and tokens per UTC day and model, from the synced reports."""
    from worker.money import money_sum, money_text
    from worker.sources.report import REPORT_FIELDS, report_records
    from worker.storage import repo

    if until < since:
        fail("--until is before --since", EXIT_USAGE)
    if by is not None or source is not None:
        _report_by(ctx, since, until, integration_id, by or "model", source, fmt)
        return
    app = get_app(ctx)
    with app.engine.begin() as conn:
        if integration_id is not None and repo.get_integration(conn, integration_id) is None:
            fail(f"no integration {integration_id}", EXIT_USAGE)
        records = report_records(conn, since, until, integration_id=integration_id)
    fields = REPORT_FIELDS
    if not _print_records(records, fields, fmt):
        total = money_sum(Decimal(r["cost_usd"]) for r in records)
        body = [[str(r["date"]), str(r["model"] or "(no model: fees)"), str(r["cost_usd"]),
                 *(f"{r[f]:,}" for f in fields[3:])] for r in records]
        _table(body + [["total", "", money_text(total), "", "", "", ""]], fields, right_from=2)


def _print_records(records: list[dict[str, Any]], fields: Sequence[str], fmt: str) -> bool:
    """`report`'s json and csv formats (True when printed); the table is the caller's."""
    if fmt == "json":
        click.echo(json.dumps(records, indent=2))
    elif fmt == "csv":
        from worker.csvsafe import csv_writer

        writer = csv_writer(sys.stdout, fields)
        writer.writeheader()
        for record in records:
            writer.writerecord(record)
    else:
        return False
    return True


def _report_by(ctx: click.Context, since: date, until: date, integration_id: int | None, by: str,
               source: str | None, fmt: str) -> None:
    """`report --by`: rows per (day, model, key of `by`) from either bill (worker.sources.report)."""
    from worker.money import money_sum, money_text
    from worker.sources.report import REPORT_BY_FIELDS, report_records
    from worker.storage import repo

    if source == "legacy" and by in ("actor", "product"):
        fail(f"the legacy reports have no {by}: use --source analytics (or no --source)", EXIT_USAGE)
    app = get_app(ctx)
    with app.engine.begin() as conn:
        if integration_id is not None and repo.get_integration(conn, integration_id) is None:
            fail(f"no integration {integration_id}", EXIT_USAGE)
        records = report_records(conn, since, until, by=by, source=source, integration_id=integration_id)
    if not _print_records(records, REPORT_BY_FIELDS, fmt):
        total = money_sum(Decimal(r["cost_usd"]) for r in records)
        listed = [r["list_cost_usd"] for r in records]
        list_total = None if any(v is None for v in listed) else money_sum(Decimal(v) for v in listed)
        body = [[str(r["date"]), str(r["model"] or "(no model: fees)"), str(r["key"] or "-"), str(r["name"] or "")[:40],
                 str(r["cost_usd"]), str(r["list_cost_usd"] or ""), *(f"{r[f]:,}" for f in REPORT_BY_FIELDS[7:])]
                for r in records]
        header = ["date", "model", by, "name", "cost_usd", "list_cost_usd", "input_tokens", "output_tokens",
                  "cache_read_tokens", "cache_write_tokens"]
        _table(body + [["total", "", "", "", money_text(total), "" if list_total is None else money_text(list_total),
                        "", "", "", ""]], header, right_from=4)


def _table(rows: list[list[str]], header: list[str], right_from: int = 99) -> None:
    rows = [[printable(str(cell)) for cell in row] for row in rows]  # labels, models, errors: from outside
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i >= right_from else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=False))).rstrip()
    click.echo(line(header))
    for r in rows:
        click.echo(line(r))


# --- maintenance --------------------------------------------------------------------------------

@cli.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply every pending migration (also done at start by every command)."""
    from worker.storage.db import current_revision, safe_url

    app = get_app(ctx)
    click.echo(f"database {safe_url(app.settings.effective_database_url)} at revision {current_revision(app.engine)}")


@cli.group("keys")
def keys_group() -> None:
    """The master key that encrypts stored Admin keys."""


@keys_group.command("generate")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True,
              help="Write a new random master key to this file (mode 0600; never overwrites).")
def keys_generate(out: Path) -> None:
    """Create a new master key file (for first deployment or rotation)."""
    from worker.vault import KeyFilePathRefused, MasterKey, write_master_key_file

    key = MasterKey.generate()
    try:
        write_master_key_file(out, key)
    except KeyFilePathRefused as exc:
        fail(str(exc), EXIT_USAGE)
    click.echo(f"wrote master key {key.id} to {out}")


@keys_group.command("rotate")
@click.pass_context
def keys_rotate(ctx: click.Context) -> None:
    """Re-encrypt every stored Admin key under the current master key (resumable; old keys still decrypt)."""
    from worker.integrations import rotate_keys

    app = get_app(ctx)
    result = rotate_keys(app.engine, app.keyring)
    click.echo(f"master key {app.keyring.current_id}: {result.rotated} re-encrypted, "
               f"{result.already_current} already current, {len(result.failed)} failed")
    for message in result.failed:
        click.echo(f"error: {message}", err=True)
    if result.failed:
        raise SystemExit(EXIT_FAILED)


# --- entry point --------------------------------------------------------------------------------

def _classify(exc: BaseException) -> tuple[str, int] | None:
    """Known errors become one line and an exit code; None means a bug (worker.errors, shared with the HTTP API)."""
    from worker.errors import known_error

    return known_error(exc)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="cost-worker")
