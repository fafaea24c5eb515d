"""`cost-worker sources compare`: the legacy and the analytics bill side by side (exit 3 on an unexplained gap)."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import click

from worker.cli_support import UsageFailure, get_app, parse_day
from worker.money import money_text
from worker.textsafe import printable

__all__ = ["sources_group"]

EXIT_DRIFT = 3
_money = money_text


def _table(rows: list[list[str]], header: list[str], right_from: int) -> None:
    cells = [header, *[[printable(str(c)) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        click.echo("  ".join(c.rjust(w) if i >= right_from else c.ljust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())


@click.group("sources")
def sources_group() -> None:
    """The legacy cost report and the Usage and Cost Analytics API, side by side."""


@sources_group.command("compare")
@click.option("--since", required=True, callback=parse_day, help="First UTC day (YYYY-MM-DD).")
@click.option("--until", required=True, callback=parse_day, help="Last UTC day, inclusive (YYYY-MM-DD).")
@click.option("--integration", "integration_id", type=int, default=None,
              help="Only this integration (its source must be `both`).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_context
def compare_command(ctx: click.Context, since: date, until: date, integration_id: int | None, fmt: str) -> None:
    """Per day and model: legacy cost, analytics cost, the difference and its causes. Exit 3 if unexplained."""
    from worker.sources.compare import compare
    from worker.storage import repo

    if until < since:
        raise UsageFailure("--until is before --since")
    app = get_app(ctx)
    with app.engine.begin() as conn:
        if integration_id is not None:
            integ = repo.get_integration(conn, integration_id)
            if integ is None:
                raise UsageFailure(f"no integration {integration_id}")
            if integ.source != "both":
                raise UsageFailure(f"integration {integration_id} syncs {integ.source} only: comparing needs both "
                                   f"(`cost-worker integrations set-source {integration_id} both`)")
        result = compare(conn, since, until, integration_id)
    if not result.integrations:
        raise UsageFailure("no integration syncs both sources (`cost-worker integrations set-source ID both`)")
    records: list[dict[str, Any]] = [{
        "date": r.date.isoformat(), "model": r.model, "legacy_cost_usd": _money(r.legacy_cost_usd),
        "analytics_cost_usd": _money(r.analytics_cost_usd), "difference_usd": _money(r.difference_usd),
        "priority_tier_usd": _money(r.priority_tier_usd), "status": r.status, "causes": r.causes,
    } for r in result.rows]
    summary: dict[str, Any] = {
        "legacy_cost_usd": _money(result.total("legacy_cost_usd")),
        "analytics_cost_usd": _money(result.total("analytics_cost_usd")),
        "difference_usd": _money(result.total("difference_usd")),
        "priority_tier_usd": _money(result.total("priority_tier_usd")),
        "unexplained_usd": _money(result.unexplained_usd),
        "data_refreshed_at": {str(k): v.isoformat() if v else None for k, v in result.refreshed_at.items()},
    }
    if fmt == "json":
        click.echo(json.dumps({"rows": records, "summary": summary}, indent=2))
    else:
        header = ["date", "model", "legacy", "analytics", "difference", "priority tier", "status", "causes"]
        body = [[r["date"], r["model"] or "(no model: fees)", r["legacy_cost_usd"], r["analytics_cost_usd"],
                 r["difference_usd"], r["priority_tier_usd"], r["status"], ", ".join(r["causes"])] for r in records]
        body.append(["total", "", summary["legacy_cost_usd"], summary["analytics_cost_usd"], summary["difference_usd"],
                     summary["priority_tier_usd"], "", f"unexplained {summary['unexplained_usd']}"])
        _table(body, header, right_from=2)
    ctx.exit(result.exit_code)
