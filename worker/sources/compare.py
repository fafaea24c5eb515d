"""`sources compare`: the legacy and the analytics bill per UTC day and model, and why they differ.

Both are billed amounts (the legacy cost report and the Analytics API's `amount`, post-discount). They are
put on the same footing first: the legacy report has no model for web search, code execution and session
usage cost, so the analytics rows of those cost types go to model None too (this needs `cost_type` in
`analytics_cost_group_by`, as by default). Then each difference `analytics - legacy` is explained by:

- `priority_tier`: the analytics Priority Tier cost of that day and model is the difference (the legacy
  cost report leaves Priority Tier out);
- `not_refreshed`: the day ends after the Analytics API's `data_refreshed_at` (its numbers are partial);
- `list_price`: the legacy amount equals the analytics list amount without Priority Tier (a legacy report
  at list prices, where the Analytics API shows the negotiated discount);
- `not_synced`: the Analytics API has not stored the day (not backfilled yet, refused, or out of its range).

What no cause explains is `unexplained`; the command exits 3 then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Connection

from worker.storage import analytics as astore
from worker.storage import repo
from worker.storage.analytics import PRIORITY_TIERS
from worker.storage.types import EXACT

_ZERO = Decimal(0)


@dataclass
class CompareRow:
    date: date
    model: str | None
    legacy_cost_usd: Decimal = _ZERO
    analytics_cost_usd: Decimal = _ZERO
    analytics_list_cost_usd: Decimal = _ZERO
    priority_tier_usd: Decimal = _ZERO
    priority_list_usd: Decimal = _ZERO
    causes: list[str] = field(default_factory=list)
    explained: bool = True

    @property
    def difference_usd(self) -> Decimal:
        return EXACT.subtract(self.analytics_cost_usd, self.legacy_cost_usd)

    @property
    def status(self) -> str:
        if self.difference_usd == 0:
            return "ok"
        return "explained" if self.explained else "unexplained"


@dataclass
class CompareResult:
    rows: list[CompareRow]
    refreshed_at: dict[int, datetime | None]
    integrations: list[int]

    @property
    def unexplained_usd(self) -> Decimal:
        return sum((r.difference_usd for r in self.rows if not r.explained), _ZERO)

    @property
    def exit_code(self) -> int:
        return 3 if any(not r.explained for r in self.rows) else 0

    def total(self, name: str) -> Decimal:
        return sum((getattr(r, name) for r in self.rows), _ZERO)


def _explain(row: CompareRow, synced: bool, refreshed: datetime | None) -> None:
    delta = row.difference_usd
    if delta == 0:
        if row.priority_tier_usd:  # priority cost, offset by something else: say so anyway
            row.causes.append("priority_tier")
        return
    if not synced:
        row.causes.append("not_synced")
        return
    if row.priority_tier_usd and delta == row.priority_tier_usd:
        row.causes.append("priority_tier")
        return
    day_end = datetime.combine(row.date + timedelta(days=1), datetime.min.time(), UTC)
    if refreshed is None or day_end > refreshed:
        if row.priority_tier_usd:
            row.causes.append("priority_tier")
        row.causes.append("not_refreshed")
        return
    if row.legacy_cost_usd == EXACT.subtract(row.analytics_list_cost_usd, row.priority_list_usd):
        row.causes += ["list_price", *(["priority_tier"] if row.priority_tier_usd else [])]
        return
    row.causes.append("unexplained")
    row.explained = False


def compare(conn: Connection, since: date, until: date, integration_id: int | None = None) -> CompareResult:
    """Legacy vs analytics per (day, model) of `since`..`until` (inclusive) for integrations with source `both`
    (or the one given, which must be `both`)."""
    ids = [i.id for i in repo.list_integrations(conn) if i.source == "both" and integration_id in (None, i.id)]
    coverage: dict[int, astore.Coverage] = astore.coverage(conn, "model")
    states = astore.states(conn)
    refreshed = {iid: states[iid].refreshed_at if iid in states else None for iid in ids}
    rows: dict[tuple[date, str | None], CompareRow] = {}
    synced: dict[tuple[date, str | None], bool] = {}
    worst: dict[tuple[date, str | None], datetime | None] = {}

    def row(day: date, model: str | None, iid: int) -> CompareRow:
        key = (day, model)
        found = rows.get(key)
        if found is None:
            found = rows[key] = CompareRow(day, model)
        mine, seen = refreshed.get(iid), worst.get(key, datetime.max.replace(tzinfo=UTC))
        worst[key] = None if mine is None or seen is None else min(mine, seen)
        return found

    if ids:
        for iid, day, model, _key, amount in astore.legacy_cost_lines(conn, since, until, None, ids):
            r = row(day, model or None, iid)
            r.legacy_cost_usd = EXACT.add(r.legacy_cost_usd, amount)
        for iid, day, model, _api_key, _actor, tier, cost_type, _token_type, amount, listed in astore.cost_lines(
                conn, since, until, ids):
            # The legacy report has no model for cost that is not tokens: neither here.
            r = row(day, None if cost_type not in ("", "tokens") else (model or None), iid)
            r.analytics_cost_usd = EXACT.add(r.analytics_cost_usd, amount)
            r.analytics_list_cost_usd = EXACT.add(r.analytics_list_cost_usd, listed)
            if tier in PRIORITY_TIERS:
                r.priority_tier_usd = EXACT.add(r.priority_tier_usd, amount)
                r.priority_list_usd = EXACT.add(r.priority_list_usd, listed)
        for key in rows:  # a day some integration's Analytics API has not stored is not synced
            synced[key] = all(iid in coverage and coverage[iid].covers(key[0]) for iid in ids)
    out = sorted(rows.values(), key=lambda r: (r.date, r.model is None, r.model or ""))
    for r in out:
        _explain(r, synced.get((r.date, r.model), False), worst.get((r.date, r.model)))
    return CompareResult(out, refreshed, ids)


__all__ = ["CompareResult", "CompareRow", "compare"]
