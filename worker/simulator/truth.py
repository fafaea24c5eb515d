"""Ground truth of the Analytics API, straight from the usage records (not from its rendered rows).

`analytics_truth` gives, per (UTC day, model, key of one dimension), the billed and list cost and the
tokens the Analytics API serves (only what was refreshed by `data_refreshed_at`), in the shape of
`cost-worker report --by DIM --source analytics --format json`. Web search cost stays on the model
that searched (with no service tier); code execution has no model, key or actor.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from worker.simulator.data import Org, SimulatorData, UsageRecord
from worker.simulator.prices import (
    TOKEN_TYPES,
    WEB_SEARCH_PICO_PER_REQUEST,
    billed_unit_price_pico,
    pico_to_dollars,
    unit_price_pico,
)

BY = ("model", "workspace", "api_key", "actor", "service_tier", "product")
PRIORITY_TIERS = frozenset({"priority", "priority_on_demand"})


def _names(org: Org) -> dict[str, dict[str, str]]:
    keys = {k.id: k.name for k in org.api_keys}
    users = {u.id: u.email for u in org.users}
    return {
        "workspace": {w.tagged_id: w.name for w in org.workspaces},
        "api_key": dict(keys),
        "actor": {**users, **keys},  # an api_actor is named by its key; service accounts have no name here
    }


def _key(org: Org, by: str, r: UsageRecord, tagged: dict[str | None, str], search: bool) -> str | None:
    if by == "model":
        return r.model
    if by == "workspace":
        return tagged[r.workspace_id]
    if by == "api_key":
        return r.api_key_id
    if by == "actor":
        return r.account_id or r.service_account_id or r.api_key_id
    if by == "service_tier":
        return None if search else r.service_tier
    return r.product


def analytics_truth(data: SimulatorData, org_index: int, since: date, until: date, by: str = "model",
                    ) -> list[dict[str, Any]]:
    """Rows for days `since`..`until` (inclusive), sorted by (date, model, key); money as exact strings."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}")
    org = data.org(org_index)
    tagged = {w.id: w.tagged_id for w in org.workspaces}
    names: dict[str, str] = _names(org).get(by, {})
    refreshed = data.refreshed_at()
    discount = org.discount_pct
    # (day, model, key) -> [amount, list, uncached, output, cache read, cache write]
    cells: dict[tuple[date, str | None, str | None], list[int]] = {}

    def cell(day: date, model: str | None, key: str | None) -> list[int]:
        return cells.setdefault((day, model, key), [0] * 6)

    day = since
    while day <= until:
        midnight = datetime.combine(day, datetime.min.time(), UTC)
        day_data = data.day(org_index, day)
        for r in day_data.usage:
            if midnight + timedelta(minutes=r.minute) >= refreshed:
                continue
            acc = cell(day, r.model, _key(org, by, r, tagged, False))
            for tt in TOKEN_TYPES:
                n = r.tokens(tt)
                acc[0] += n * billed_unit_price_pico(r.model, r.service_tier, r.context_window, tt, discount)
                acc[1] += n * unit_price_pico(r.model, r.service_tier, r.context_window, tt)
            acc[2] += r.uncached_input_tokens
            acc[3] += r.output_tokens
            acc[4] += r.cache_read_input_tokens
            acc[5] += r.cache_creation_5m + r.cache_creation_1h
            if r.web_search_requests:
                search = cell(day, r.model, _key(org, by, r, tagged, True))
                search[0] += r.web_search_requests * WEB_SEARCH_PICO_PER_REQUEST
                search[1] += r.web_search_requests * WEB_SEARCH_PICO_PER_REQUEST
        for c in day_data.code_execution:
            if midnight + timedelta(minutes=c.minute) >= refreshed:
                continue
            key = tagged[c.workspace_id] if by == "workspace" else None
            acc = cell(day, None, key)
            acc[0] += c.pico
            acc[1] += c.pico
        day += timedelta(days=1)
    rows = []
    for (d, model, key), a in sorted(cells.items(), key=lambda i: (i[0][0], i[0][1] is None, i[0][1] or "",
                                                                    i[0][2] is None, i[0][2] or "")):
        rows.append({
            "date": d.isoformat(), "model": model, "by": by, "key": key, "name": names.get(key) if key else None,
            "cost_usd": f"{pico_to_dollars(a[0]):f}", "list_cost_usd": f"{pico_to_dollars(a[1]):f}",
            "input_tokens": a[2], "output_tokens": a[3], "cache_read_tokens": a[4], "cache_write_tokens": a[5],
        })
    return rows


def priority_cost(data: SimulatorData, org_index: int, since: date, until: date,
                  ) -> dict[tuple[date, str], Decimal]:
    """Billed Priority Tier cost per (day, model) that the Analytics API serves: the legacy cost report's gap."""
    org = data.org(org_index)
    refreshed = data.refreshed_at()
    out: dict[tuple[date, str], int] = {}
    day = since
    while day <= until:
        midnight = datetime.combine(day, datetime.min.time(), UTC)
        for r in data.day(org_index, day).usage:
            if r.service_tier in PRIORITY_TIERS and midnight + timedelta(minutes=r.minute) < refreshed:
                out[(day, r.model)] = out.get((day, r.model), 0) + r.billed_pico(org.discount_pct)
        day += timedelta(days=1)
    return {k: pico_to_dollars(v) for k, v in out.items()}


__all__ = ["BY", "PRIORITY_TIERS", "analytics_truth", "priority_cost"]
