"""`cost-worker budgets` and `cost-worker anomalies`: parse options, evaluate on the stored bill, print.

Both read the database as it is (no sync, no writes), so they work beside `run` and without it.
Exit codes: 0 ok, 2 bad usage or input (an unknown integration, `--at` after today).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date

import click

from worker.cli_support import UsageFailure, get_app, parse_day

__all__ = ["anomalies_command", "budgets_command", "render_table"]

BUDGET_FIELDS = ["name", "scope", "period_start", "period_end", "limit_usd", "spend_usd", "forecast_usd", "status"]
ANOMALY_FIELDS = ["date", "integration_id", "scope", "key", "cost_usd", "baseline_usd", "score", "direction"]


def render_table(rows: Sequence[Sequence[object]], header: Sequence[str], right: Sequence[str] = ()) -> str:
    """Aligned columns; the columns named in `right` are right-aligned (numbers)."""
    cells = [[str(c) for c in header], *[[("" if c is None else str(c)) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.rjust(w) if header[i] in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
    return "\n".join(lines)


@click.command("budgets")
@click.option("--at", "at", callback=parse_day, default=None,
              help="Evaluate as of this UTC day (YYYY-MM-DD, inclusive; default today).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def budgets_command(ctx: click.Context, at: date | None, fmt: str) -> None:
    """Each [[budgets]] entry: spend of its period so far, the forecast to the period's end, and status."""
    from worker.watch.budgets import BudgetError, evaluate

    app = get_app(ctx)
    today = app.clock.now().date()
    day = at or today
    if day > today:
        raise UsageFailure(f"--at {day} is after today ({today}, UTC)")
    budgets = app.settings.budgets
    try:
        with app.engine.connect() as conn, conn.begin():
            results = [evaluate(conn, b, day, today) for b in budgets]
    except BudgetError as exc:
        raise UsageFailure(str(exc)) from None
    records = [r.as_json() for r in results]
    if fmt == "json":
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("no budgets: add [[budgets]] tables to the config file (see docs/watch.md)")
        return
    click.echo(render_table([[r[f] for f in BUDGET_FIELDS] for r in records], BUDGET_FIELDS,
                            right=("limit_usd", "spend_usd", "forecast_usd")))


@click.command("anomalies")
@click.option("--since", required=True, callback=parse_day, help="First UTC day judged (YYYY-MM-DD).")
@click.option("--until", required=True, callback=parse_day, help="Last UTC day judged, inclusive (YYYY-MM-DD).")
@click.option("--integration", "integration_id", type=int, default=None, help="Only this integration.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def anomalies_command(ctx: click.Context, since: date, until: date, integration_id: int | None, fmt: str) -> None:
    """Days whose spend per integration, workspace or model breaks from its trailing 28 days (spike or drop)."""
    from worker.storage import repo
    from worker.watch.anomalies import Thresholds, find

    if until < since:
        raise UsageFailure("--until is before --since")
    app = get_app(ctx)
    today = app.clock.now().date()
    thresholds = Thresholds(app.settings.anomaly_min_score, app.settings.anomaly_min_usd)
    with app.engine.connect() as conn, conn.begin():
        if integration_id is not None and repo.get_integration(conn, integration_id) is None:
            raise UsageFailure(f"no integration {integration_id}")
        found = find(conn, since, until, today, thresholds,
                     None if integration_id is None else (integration_id,))
    if until >= today:
        click.echo(f"note: days from {max(since, today)} on are not judged: today's bill is partial until "
                   "tomorrow's sync", err=True)
    records = [a.as_json() for a in found]
    if fmt == "json":
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo(f"no spend anomalies between {since} and {until}")
        return
    click.echo(render_table([[r[f] for f in ANOMALY_FIELDS] for r in records], ANOMALY_FIELDS,
                            right=("cost_usd", "baseline_usd", "score")))
