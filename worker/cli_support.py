"""What every command shares: exit codes, one-line failures, parsing a UTC day, the App of an invocation.

`worker.cli` and the commands that live beside their package (`worker.reconcile.commands`) import
this module, never each other. It imports only click: `cost-worker --help` stays fast.

Exit codes: 0 success, 1 a sync or connection failed, 2 bad usage or input (reconcile adds 3, drift,
which `worker.reconcile.compare.Reconciliation.exit_code` decides).
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from worker.app import App

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "Failure", "UsageFailure", "fail", "failure", "get_app",
           "parse_day"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Failure(click.ClickException):
    """A one-line error: an operation failed (exit 1). `UsageFailure` is bad usage or input (exit 2)."""

    exit_code = EXIT_FAILED

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class UsageFailure(Failure):
    exit_code = EXIT_USAGE


def failure(message: str, code: int = EXIT_FAILED) -> Failure:
    """The one-line error for an exit code (1 or 2)."""
    return UsageFailure(message) if code == EXIT_USAGE else Failure(message)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    raise failure(message, code)


def parse_day(_ctx: click.Context, param: click.Parameter, value: str | None) -> date | None:
    """Click callback for a UTC day option (YYYY-MM-DD)."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"expected a date YYYY-MM-DD, got {value!r}") from None


def get_app(ctx: click.Context) -> App:
    """The App for this invocation (settings loaded, logging set up; the database migrates on first use).

    Made once per invocation, on the root context (`cli` stores the `--config` path there), and closed
    with it."""
    obj = ctx.find_root().obj
    if "app" not in obj:
        from worker.app import App
        from worker.logs import setup_logging
        from worker.settings import load_settings

        settings = load_settings(obj.get("config"))
        setup_logging(settings.log_format, settings.log_level)
        obj["app"] = App(settings, obj.get("config"))
        ctx.call_on_close(obj["app"].close)
    app: App = obj["app"]
    return app
