"""Reconciliation output as table, CSV or JSON; the CLI only picks one and prints it.

Money is printed exactly, every digit, in every format (`worker.money`: never through float or
the decimal context's 28-digit rounding; the table groups thousands and shows at least two
decimals). JSON carries money as decimal STRINGS (`"12.345"`) so no consumer parses it into a
float by accident. Deltas are tracked minus
billed. The summary line goes with every format (`render_summary`; the CLI prints it on stderr for
csv/json, where it would corrupt the data).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from worker.csvsafe import csv_writer
from worker.money import decimal_text, money_text
from worker.reconcile.compare import Reconciliation, Row, Summary
from worker.reconcile.events import TokenType
from worker.textsafe import printable

__all__ = ["CSV_COLUMNS", "FORMATS", "render", "render_csv", "render_json", "render_summary", "render_table",
           "row_dict"]

CSV_COLUMNS = (
    "date", "model", "key", "cost_type",
    *(f"{side}_{t.value}_tokens" for t in TokenType for side in ("billed", "tracked")),
    "billed_cost_usd", "tracked_cost_usd", "cost_delta_usd", "cost_delta_pct",
    "tracked_events", "duplicate_ids", "unpriced_tokens", "status", "causes", "accepted",
)


def _money(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)


def row_dict(row: Row) -> dict[str, Any]:
    """A row as JSON-ready primitives (money and percentages as strings, causes as a list)."""
    data: dict[str, Any] = {
        "date": row.date.isoformat(),
        "model": row.model,
        "key": row.key,
        "cost_type": row.cost_type,
        "billed_cost_usd": _money(row.billed_cost_usd),
        "tracked_cost_usd": _money(row.tracked_cost_usd),
        "cost_delta_usd": _money(row.cost_delta_usd),
        "cost_delta_pct": _money(row.cost_delta_pct),
        "tokens": {
            t.value: {
                "billed": row.billed(t),
                "tracked": row.tracked(t),
                "delta": row.token_delta(t),
                "delta_pct": _money(row.token_delta_pct(t)),
            }
            for t in TokenType
        },
        "tracked_events": row.tracked_events,
        "duplicate_ids": row.duplicate_ids,
        "unpriced_tokens": row.unpriced_tokens,
        "status": row.status.value,
        "causes": [c.value for c in row.causes],
        "accepted": row.accepted,
    }
    return data


def summary_dict(summary: Summary) -> dict[str, Any]:
    return {
        "billed_cost_usd": _money(summary.billed_cost_usd),
        "tracked_cost_usd": _money(summary.tracked_cost_usd),
        "delta_usd": _money(summary.delta_usd),
        "explained_usd": _money(summary.explained_usd),
        "unexplained_usd": _money(summary.unexplained_usd),
        "rows": summary.rows,
        "drift_rows": summary.drift_rows,
        "accepted_rows": summary.accepted_rows,
        "tolerance_pct": _money(summary.tolerance_pct),
    }


def render_json(result: Reconciliation) -> str:
    """`{"rows": [...], "summary": {...}}`."""
    return json.dumps({"rows": [row_dict(r) for r in result.rows], "summary": summary_dict(result.summary)},
                      indent=2)


def render_csv(result: Reconciliation) -> str:
    """One line per row under a `CSV_COLUMNS` header; causes joined with `;`; cells safe for spreadsheets."""
    out = io.StringIO()
    writer = csv_writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in result.rows:
        tokens = [n for t in TokenType for n in (row.billed(t), row.tracked(t))]
        writer.writerow([
            row.date.isoformat(), row.model or "", row.key or "", row.cost_type, *tokens,
            _money(row.billed_cost_usd), _money(row.tracked_cost_usd), _money(row.cost_delta_usd),
            _money(row.cost_delta_pct) or "", row.tracked_events, row.duplicate_ids, row.unpriced_tokens,
            row.status.value, ";".join(c.value for c in row.causes), "yes" if row.accepted else "",
        ])
    return out.getvalue()


def _usd(value: Decimal) -> str:
    return money_text(value, grouping=True)


def render_table(result: Reconciliation) -> str:
    """Aligned text: one line per row (key column only when rows have keys), then the summary."""
    keyed = any(r.key is not None for r in result.rows)
    header = ["date", "model", *(["key"] if keyed else []), "billed $", "tracked $", "delta $", "delta %",
              "status", "causes"]
    lines = [header]
    for r in result.rows:
        model = printable(r.model if r.model is not None else f"({r.cost_type})")  # ids from tracker files
        pct = "" if r.cost_delta_pct is None else ("+" if r.cost_delta_pct >= 0 else "") + money_text(r.cost_delta_pct)
        lines.append([r.date.isoformat(), model, *([printable(r.key or "-")] if keyed else []), _usd(r.billed_cost_usd),
                      _usd(r.tracked_cost_usd), _usd(r.cost_delta_usd), pct, f"{r.status.value} (accepted)" if r.accepted else r.status.value,
                      ",".join(c.value for c in r.causes)])
    numeric = {header.index(name) for name in ("billed $", "tracked $", "delta $", "delta %")}
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(line))
        .rstrip()
        for line in lines
    ]
    return "\n".join([*text, "", render_summary(result.summary)]) + "\n"


def render_summary(summary: Summary) -> str:
    """One line: the bill, the tracked total, and the unexplained remainder for the period."""
    return (
        f"billed ${_usd(summary.billed_cost_usd)}  tracked ${_usd(summary.tracked_cost_usd)}  "
        f"delta ${_usd(summary.delta_usd)}  explained ${_usd(summary.explained_usd)}  "
        f"unexplained ${_usd(summary.unexplained_usd)}  "
        f"({summary.drift_rows} of {summary.rows} rows beyond ±{decimal_text(summary.tolerance_pct)}%"
        + (f", {summary.accepted_rows} of them accepted)" if summary.accepted_rows else ")")
    )


FORMATS: dict[str, Callable[[Reconciliation], str]] = {
    "table": render_table,
    "csv": render_csv,
    "json": render_json,
}


def render(result: Reconciliation, format: str = "table") -> str:
    """Render in `table`, `csv` or `json`."""
    try:
        return FORMATS[format](result)
    except KeyError:
        raise ValueError(f"unknown output format {format!r}; expected one of {', '.join(FORMATS)}") from None
