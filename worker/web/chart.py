"""The overview's daily spend by model: a stacked bar chart as inline SVG, drawn here (no script, no CDN).

Every text in it (model ids, days, amounts) is escaped; each bar segment's <title> carries the exact amount.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from markupsafe import Markup, escape

from worker.money import money_sum, money_text

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 900, 260, 70, 30, 10
# Distinguishable on white and in grey; the rest of the models share the last colour.
COLOURS = ["#3b6fb6", "#e07b39", "#4c9a5b", "#b9474f", "#7d5ba6", "#8c6d46", "#c7609c", "#7f7f7f"]


def colour(index: int) -> str:
    return COLOURS[min(index, len(COLOURS) - 1)]


def _nice_top(value: Decimal) -> Decimal:
    """The axis maximum: 1, 2 or 5 times a power of ten at or above `value`."""
    if value <= 0:
        return Decimal(1)
    exponent = value.adjusted()
    for step in (1, 2, 5, 10):
        top = Decimal(step).scaleb(exponent)
        if top >= value:
            return top
    return Decimal(10).scaleb(exponent)


def daily_spend_svg(daily: dict[date, dict[str | None, Decimal]], models: list[str | None], since: date,
                    until: date) -> Markup:
    days = [since + timedelta(days=n) for n in range((until - since).days + 1)]
    totals = {d: money_sum(daily.get(d, {}).values()) for d in days}
    top = _nice_top(max(totals.values(), default=Decimal(0)))
    plot_w, plot_h = WIDTH - LEFT - 10, HEIGHT - BOTTOM - TOP
    step = plot_w / max(1, len(days))
    bar = max(1.0, step * 0.8)
    index = {m: i for i, m in enumerate(models)}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="Daily spend by model, {since} to {until}">']
    for tick in range(5):
        value = top * tick / 4
        y = TOP + plot_h - plot_h * tick / 4
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{LEFT - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">'
                     f'${escape(money_text(value.quantize(Decimal("0.01")), grouping=True))}</text>')
    for n, day in enumerate(days):
        x = LEFT + n * step + (step - bar) / 2
        y = TOP + plot_h
        for model in models:
            amount = daily.get(day, {}).get(model)
            if not amount:
                continue
            h = float(amount / top) * plot_h
            y -= h
            name = model or "(no model: fees)"
            parts.append(f'<rect x="{x:.2f}" y="{y:.2f}" width="{bar:.2f}" height="{max(h, 0.0):.2f}" '
                         f'fill="{colour(index[model])}"><title>{escape(day.isoformat())} {escape(name)}: '
                         f'${escape(money_text(amount))}</title></rect>')
        if n % max(1, len(days) // 8) == 0 or n == len(days) - 1:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - 10}" class="axis" text-anchor="middle">'
                         f'{escape(day.strftime("%m-%d"))}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
