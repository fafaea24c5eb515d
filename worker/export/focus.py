"""The synced bill as FOCUS 1.2 rows (FinOps Open Cost and Usage Specification, FinOps Foundation).

One row per UTC day and charge: each stored cost row (integration x day x workspace x model x cost type x
token type x service tier x context window x inference geo) is a charge; token rows and fee rows (web
search, code execution, and cost types this code does not know) alike. The columns, and why each holds
what it holds, are tabled in docs/export.md; in short:

- Every Mandatory column, and the Conditional and Recommended ones that apply to this bill: consumed and
  pricing quantity (the usage report's tokens and web-search requests), SKU columns, region (the
  inference geo), sub account (the workspace), charge frequency and service subcategory.
- `BilledCost` is the stored amount itself, exact (Decimal, never rounded), so the file sums to the bill.
  `EffectiveCost` and `ContractedCost` equal it (no amortized commitments; no contracted unit prices in
  this source). `ListCost` is the Analytics API's `list_amount` where that bill is synced and agrees with
  the legacy charge (`list_costs`), else it equals BilledCost: the legacy cost report holds billed
  amounts only.
- Quantities come from the usage report, joined on (day, workspace, model, tier, context window). They are
  left empty where the source does not determine them: a cost type with no counted unit (code execution),
  or a charge split by inference geo, which the usage report (grouped by five dimensions at most) does
  not carry. Docs/export.md lists this deviation from the Usage rule.
- On the days the Analytics API is an integration's bill of record, what it bills and the legacy rows do
  not comes from its cost rows (`_analytics_charges`): every charge for source `analytics`, the Priority
  Tier ones (which the legacy cost report leaves out) for source `both`. One row per day, workspace,
  model, cost type, token type and tier, summed over API keys and actors, with its `list_amount` as
  ListCost and its counts as quantities. So on those days too the file sums to the whole bill.
- Provider-specific facts are `x_` columns after the FOCUS ones.
"""

from __future__ import annotations

import heapq
import json
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, func, select

from worker.money import EXACT, decimal_text, money_sum
from worker.storage import analytics, repo
from worker.storage.analytics import PRIORITY_TIERS
from worker.storage.tables import analytics_cost_rows, analytics_usage_rows, cost_rows, usage_rows

FOCUS_VERSION = "1.2"
PROVIDER = "Anthropic"
SERVICE_NAME = "Claude API"
SERVICE_CATEGORY = "AI and Machine Learning"
SERVICE_SUBCATEGORY = "Generative AI"
TOKENS_PER_PRICING_UNIT = 6  # prices are per million tokens: PricingUnit "1000000 Tokens"
REQUESTS_PER_PRICING_UNIT = 3  # web search is priced per thousand requests

# FOCUS columns first (alphabetical, as the specification lists them), then this provider's `x_` columns.
FOCUS_COLUMNS = (
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingCurrency", "BillingPeriodEnd",
    "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription", "ChargeFrequency",
    "ChargePeriodEnd", "ChargePeriodStart", "ConsumedQuantity", "ConsumedUnit", "ContractedCost",
    "EffectiveCost", "InvoiceIssuerName", "ListCost", "PricingQuantity", "PricingUnit", "ProviderName",
    "PublisherName", "RegionId", "RegionName", "ServiceCategory", "ServiceName", "ServiceSubcategory", "SkuId",
    "SkuMeter", "SkuPriceDetails", "SkuPriceId", "SubAccountId", "SubAccountName",
)
EXTRA_COLUMNS = ("x_IntegrationId", "x_WorkspaceId", "x_Model", "x_CostType", "x_TokenType", "x_ServiceTier",
                 "x_ContextWindow", "x_InferenceGeo", "x_Extra")
COLUMNS = FOCUS_COLUMNS + EXTRA_COLUMNS
# The specification's data types other than String/JSON (typed columns of the Parquet format).
DECIMAL_COLUMNS = frozenset({"BilledCost", "ConsumedQuantity", "ContractedCost", "EffectiveCost", "ListCost",
                             "PricingQuantity"})
DATETIME_COLUMNS = frozenset({"BillingPeriodEnd", "BillingPeriodStart", "ChargePeriodEnd", "ChargePeriodStart"})

# The usage report's count behind each token type of the cost report.
TOKEN_COLUMNS = {
    "uncached_input_tokens": "uncached_input_tokens",
    "output_tokens": "output_tokens",
    "cache_read_input_tokens": "cache_read_input_tokens",
    "cache_creation.ephemeral_5m_input_tokens": "cache_creation_5m_input_tokens",
    "cache_creation.ephemeral_1h_input_tokens": "cache_creation_1h_input_tokens",
}
_TOKEN_COLUMN_NAMES = sorted(set(TOKEN_COLUMNS.values()))  # the usage tables' token columns, summed in this order
METERS = {
    "uncached_input_tokens": "Input Tokens",
    "output_tokens": "Output Tokens",
    "cache_read_input_tokens": "Cache Read Input Tokens",
    "cache_creation.ephemeral_5m_input_tokens": "5m Cache Write Input Tokens",
    "cache_creation.ephemeral_1h_input_tokens": "1h Cache Write Input Tokens",
    "web_search": "Web Search Requests",
    "code_execution": "Code Execution",
}
REGIONS = {"global": "Global", "us": "United States", "eu": "European Union"}
LIST_SHARE_QUANTUM = Decimal("1e-12")  # a pico-dollar: a list amount shared by several charges is split to it

Record = dict[str, str | None]


def timestamp(day: date) -> str:
    """A UTC day's start in FOCUS's Date/Time format (ISO 8601, `Z`)."""
    return f"{day.isoformat()}T00:00:00Z"


def number(value: Decimal | int) -> str:
    """FOCUS Numeric Format: plain decimal notation, no exponent, no `+`, exact."""
    return decimal_text(value) if isinstance(value, Decimal) else str(value)


def month_of(day: date) -> tuple[date, date]:
    start = day.replace(day=1)
    return start, (start + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class Account:
    organization_id: str
    organization_name: str


def _quantities(conn: Connection, since: date, until: date, integration_id: int | None) -> tuple[
        dict[tuple[Any, ...], dict[str, int]], dict[tuple[Any, ...], int], dict[tuple[Any, ...], int]]:
    """Usage-report counts over `[since, until)`: tokens per (integration, day, workspace, model, tier, window);
    web-search requests per (integration, day, workspace, model) and per (integration, day, workspace)."""
    u = usage_rows.c
    where = [u.day >= since, u.day < until]
    if integration_id is not None:
        where.append(u.integration_id == integration_id)
    token_cols = _TOKEN_COLUMN_NAMES
    grain = (u.integration_id, u.day, u.workspace_id, u.model, u.service_tier, u.context_window)
    tokens: dict[tuple[Any, ...], dict[str, int]] = {}
    searches_by_model: dict[tuple[Any, ...], int] = defaultdict(int)
    searches: dict[tuple[Any, ...], int] = defaultdict(int)
    q = (select(*grain, *(func.sum(u[c]) for c in token_cols), func.sum(u.web_search_requests))
         .where(*where).group_by(*grain))
    for row in conn.execute(q):
        key = tuple(row[:6])
        tokens[key] = {c: int(v) for c, v in zip(token_cols, row[6:-1], strict=True)}
        searches_by_model[key[:4]] += int(row[-1])
        searches[key[:3]] += int(row[-1])
    return tokens, dict(searches_by_model), dict(searches)


def months(since: date, until: date) -> Iterator[tuple[date, date]]:
    """`[since, until]` (inclusive) as half-open calendar-month pieces `[first, end)`."""
    month = since.replace(day=1)
    while month <= until:
        yield max(month, since), min(month_of(month)[1], until + timedelta(days=1))
        month = month_of(month)[1]


def focus_rows(conn: Connection, first: date, end: date, integration_id: int | None = None) -> Iterator[Record]:
    """The FOCUS records of the UTC days `[first, end)`, by day and integration: the legacy rows in (workspace,
    model, cost type, token type, tier, window, geo) order, then the Analytics API's in the same order. One
    month's charges are held at a time."""
    accounts = {iid: Account(org_id, org_name) for iid, org_id, org_name in repo.integration_accounts(conn)}
    bills = _bills(conn, integration_id)
    for piece in months(first, end - timedelta(days=1)):
        yield from _month(conn, *piece, integration_id, accounts, bills)


@dataclass(frozen=True)
class _Bills:
    """Which bill gives an integration's charges on a day: the Analytics API's days (`coverage`), and which of
    those it bills alone (source `analytics`: legacy rows stored there before a switch are not its bill)."""

    covered: dict[int, analytics.Coverage]
    alone: frozenset[int]

    def analytics_alone(self, iid: int, day: date) -> bool:
        return iid in self.alone and self.covered[iid].covers(day)


def _bills(conn: Connection, integration_id: int | None) -> _Bills:
    covered = analytics.coverage(conn)
    if integration_id is not None:
        covered = {i: c for i, c in covered.items() if i == integration_id}
    alone = frozenset(i.id for i in repo.list_integrations(conn) if i.source == "analytics" and i.id in covered)
    return _Bills(covered, alone)


def _month(conn: Connection, first: date, end: date, integration_id: int | None,
           accounts: dict[int, Account], bills: _Bills) -> Iterator[Record]:
    # Both come sorted by (day, integration, 0 for legacy | 1 for the Analytics API): merged, each day and
    # integration's Analytics API rows follow its legacy rows and the file stays in day order.
    for _, record in heapq.merge(_legacy_month(conn, first, end, integration_id, accounts, bills),
                                 _analytics_charges(conn, first, end, accounts, bills), key=itemgetter(0)):
        yield record


def _legacy_month(conn: Connection, first: date, end: date, integration_id: int | None,
                  accounts: dict[int, Account], bills: _Bills) -> Iterator[tuple[tuple[date, int, int], Record]]:
    c = cost_rows.c
    where = [c.day >= first, c.day < end]
    if integration_id is not None:
        where.append(c.integration_id == integration_id)
    order = (c.day, c.integration_id, c.workspace_id, c.model, c.cost_type, c.token_type, c.service_tier,
             c.context_window, c.inference_geo, c.description, c.extra)
    charges = [r for r in conn.execute(select(*order, c.amount_usd, c.currency).where(*where).order_by(*order))
               if not bills.analytics_alone(r.integration_id, r.day)]
    tokens, searches_by_model, searches = _quantities(conn, first, end, integration_id)
    listed = list_costs(charges, _analytics_grains(conn, first, end, bills.covered))
    # A quantity is attributed to a charge only when the charge is alone on its usage grain (one geo, one
    # description): the usage report cannot split one grain's tokens between two cost rows.
    per_grain: dict[tuple[Any, ...], int] = defaultdict(int)
    for r in charges:
        per_grain[(r.integration_id, r.day, r.workspace_id, r.model, r.cost_type, r.token_type, r.service_tier,
                   r.context_window)] += 1
    for r, list_cost in zip(charges, listed, strict=True):
        alone = per_grain[(r.integration_id, r.day, r.workspace_id, r.model, r.cost_type, r.token_type,
                           r.service_tier, r.context_window)] == 1
        quantity: int | None = None
        unit, scale = None, 0
        if r.cost_type == "tokens" and r.token_type in TOKEN_COLUMNS:
            counts = tokens.get((r.integration_id, r.day, r.workspace_id, r.model, r.service_tier,
                                 r.context_window))
            if alone and counts is not None:
                quantity, unit, scale = counts[TOKEN_COLUMNS[r.token_type]], "Tokens", TOKENS_PER_PRICING_UNIT
        elif r.cost_type == "web_search" and alone:
            found = (searches_by_model.get((r.integration_id, r.day, r.workspace_id, r.model)) if r.model
                     else searches.get((r.integration_id, r.day, r.workspace_id)))
            if found is not None:
                quantity, unit, scale = found, "Requests", REQUESTS_PER_PRICING_UNIT
        yield (r.day, r.integration_id, 0), _record(r, accounts.get(r.integration_id), quantity, unit, scale,
                                                    list_cost)


@dataclass(frozen=True)
class _Charge:
    """A charge of the Analytics API's bill, with the attributes `_record` reads of a legacy cost row."""

    day: date
    integration_id: int
    workspace_id: str
    model: str
    cost_type: str
    token_type: str
    service_tier: str
    context_window: str
    inference_geo: str
    amount_usd: Decimal
    currency: str
    description: str
    extra: str = ""


def priority_grouping_note(group_by: Sequence[str]) -> str | None:
    """What the export says when the configured analytics cost grouping (`analytics_cost_group_by`) cannot
    give Priority Tier charges their rows."""
    if "service_tier" in group_by:
        return None
    return ("note: analytics_cost_group_by has no service_tier, so Priority Tier charges cannot be told apart: "
            "the file leaves them out for integrations with source both")


def _analytics_charges(conn: Connection, first: date, end: date, accounts: dict[int, Account],
                       bills: _Bills) -> Iterator[tuple[tuple[date, int, int], Record]]:
    """The charges of `[first, end)` the Analytics API bills and the legacy rows do not, from its cost rows
    (grouping 'main') summed exactly over API keys and actors per (day, workspace, model, cost type, token
    type, tier, window, geo), on the days it is the integration's bill of record:
    - with source `analytics`, every charge (the legacy report is not read there);
    - with source `both`, the Priority Tier ones, which the legacy cost report leaves out; a (day, model,
      tier) whose legacy rows carry that priority tier themselves is left to them (never billed twice).
    Without `service_tier` in the configured grouping Priority Tier charges cannot be told apart: with
    source `both` they are then missing (`priority_grouping_note` says so)."""
    covered = bills.covered
    if not covered:
        return
    c, u, legacy = analytics_cost_rows.c, analytics_usage_rows.c, cost_rows.c
    billed_by_legacy = {(iid, day, model, tier) for iid, day, model, tier in conn.execute(
        select(legacy.integration_id, legacy.day, legacy.model, legacy.service_tier).distinct()
        .where(legacy.day >= first, legacy.day < end, legacy.service_tier.in_(PRIORITY_TIERS),
               legacy.integration_id.in_(list(covered))))}
    grain = (c.day, c.integration_id, c.workspace_id, c.model, c.cost_type, c.token_type, c.service_tier,
             c.context_window, c.inference_geo, c.currency)
    sums: dict[tuple[Any, ...], list[Decimal]] = {}
    add = EXACT.add
    for row in conn.execute(select(*grain, c.amount_usd, c.list_amount_usd).where(
            c.day >= first, c.day < end, c.grouping == analytics.MAIN, c.integration_id.in_(list(covered)))):
        key = tuple(row[:10])
        day, iid, model, tier = key[0], key[1], key[3], key[6]
        if not covered[iid].covers(day):
            continue
        if not bills.analytics_alone(iid, day) and (
                tier not in PRIORITY_TIERS or (iid, day, model, tier) in billed_by_legacy):
            continue
        acc = sums.get(key)
        if acc is None:
            sums[key] = [row.amount_usd, row.list_amount_usd]
        else:
            acc[0], acc[1] = add(acc[0], row.amount_usd), add(acc[1], row.list_amount_usd)
    if not sums:
        return
    # The Analytics API's counts, per (day, integration, workspace, model, tier, window, geo): tokens of that
    # grain; web-search requests per (day, integration, workspace, model), for a search charge alone there.
    token_cols = _TOKEN_COLUMN_NAMES
    usage_grain = (u.day, u.integration_id, u.workspace_id, u.model, u.service_tier, u.context_window,
                   u.inference_geo)
    tokens: dict[tuple[Any, ...], dict[str, int]] = {}
    searches: dict[tuple[Any, ...], int] = defaultdict(int)
    for r in conn.execute(select(*usage_grain, *(func.sum(u[col]) for col in token_cols),
                                 func.sum(u.web_search_requests)).where(
            u.day >= first, u.day < end, u.grouping == analytics.MAIN,
            u.integration_id.in_(list(covered))).group_by(*usage_grain)):
        tokens[tuple(r[:7])] = dict(zip(token_cols, (int(v) for v in r[7:-1]), strict=True))
        searches[tuple(r[:4])] += int(r[-1])
    search_charges: dict[tuple[Any, ...], int] = defaultdict(int)
    for key in sums:
        if key[4] == "web_search":
            search_charges[key[:4]] += 1
    for key in sorted(sums):
        day, iid, workspace, model, cost_type, token_type, tier, window, geo, currency = key
        amount, listed = sums[key]
        kind = token_type or cost_type
        description = ("Priority Tier " if tier in PRIORITY_TIERS else "") + METERS.get(kind, kind)
        charge = _Charge(day, iid, workspace, model, cost_type, token_type, tier, window, geo, amount, currency,
                         description.strip())
        quantity: int | None = None
        unit, scale = None, 0
        counts = tokens.get((day, iid, workspace, model, tier, window, geo))
        if cost_type == "tokens" and token_type in TOKEN_COLUMNS and counts is not None:
            quantity, unit, scale = counts[TOKEN_COLUMNS[token_type]], "Tokens", TOKENS_PER_PRICING_UNIT
        elif cost_type == "web_search" and search_charges[key[:4]] == 1 and key[:4] in searches:
            quantity, unit, scale = searches[key[:4]], "Requests", REQUESTS_PER_PRICING_UNIT
        yield (day, iid, 1), _record(charge, accounts.get(iid), quantity, unit, scale, listed)


ListGrain = tuple[Any, ...]
"""Where the two bills meet: (integration, day, cost type, token type, service tier, model) for tokens,
(integration, day, cost type) for other costs (the legacy report gives web search no model)."""


def _grain(iid: int, day: date, cost_type: str, token_type: str, tier: str, model: str) -> ListGrain:
    return (iid, day, cost_type, token_type, tier, model) if cost_type == "tokens" else (iid, day, cost_type)


def _analytics_grains(conn: Connection, first: date, end: date,
                      covered: dict[int, analytics.Coverage]) -> dict[ListGrain, tuple[Decimal, Decimal]]:
    """The Analytics API's (amount, list amount) per grain over `[first, end)`, on the days it is the bill of
    record of (`covered`: worker.storage.analytics.coverage, of the exported integrations), summed exactly
    over keys, actors and workspaces."""
    out: dict[ListGrain, tuple[Decimal, Decimal]] = {}
    if not covered:
        return out
    add = EXACT.add
    for iid, day, model, _key, _actor, tier, cost_type, token_type, amount, listed in analytics.cost_lines(
            conn, first, end - timedelta(days=1), list(covered)):
        if not covered[iid].covers(day):
            continue
        g = _grain(iid, day, cost_type, token_type, tier, model)
        billed, total = out.get(g, (Decimal(0), Decimal(0)))
        out[g] = (add(billed, amount), add(total, listed))
    return out


def list_costs(charges: Sequence[Any], grains: dict[ListGrain, tuple[Decimal, Decimal]]) -> list[Decimal]:
    """Each legacy charge's list cost: the Analytics API's list amount of its grain where the two bills charge
    that grain the same (else the billed amount: a day not synced or still partial there, a dimension the
    configured grouping lacks). Several charges of one grain (context windows, inference geos, workspaces)
    share its list amount in proportion to their billed amounts, to the pico-dollar, the largest taking the
    remainder: the grain's list costs sum to its list amount exactly."""
    members: dict[ListGrain, list[int]] = defaultdict(list)
    for i, r in enumerate(charges):
        members[_grain(r.integration_id, r.day, r.cost_type, r.token_type, r.service_tier, r.model)].append(i)
    out = [Decimal(r.amount_usd) for r in charges]
    for g, idx in members.items():
        found = grains.get(g)
        billed = money_sum(out[i] for i in idx)
        if found is None or found[0] != billed:
            continue
        total = found[1]
        if len(idx) == 1:
            out[idx[0]] = total
            continue
        if not billed:
            continue  # no shares to split by
        largest = max(idx, key=lambda i: abs(out[i]))
        shares = {i: (out[i] * total / billed).quantize(LIST_SHARE_QUANTUM) for i in idx if i != largest}
        shares[largest] = total - money_sum(shares.values())
        for i, share in shares.items():
            out[i] = share
    return out


def _record(r: Any, account: Account | None, quantity: int | None, unit: str | None, scale: int,
            list_cost: Decimal) -> Record:
    start, end = month_of(r.day)
    amount = number(r.amount_usd)
    org_id = account.organization_id if account else f"integration-{r.integration_id}"
    sku = _sku(r)
    price_details = {k: v for k, v in (("x_ServiceTier", r.service_tier), ("x_ContextWindow", r.context_window)) if v}
    return {
        "BilledCost": amount,
        "BillingAccountId": org_id,
        "BillingAccountName": account.organization_name if account else None,
        "BillingCurrency": r.currency or "USD",
        "BillingPeriodEnd": timestamp(end),
        "BillingPeriodStart": timestamp(start),
        "ChargeCategory": "Usage",
        "ChargeClass": None,  # every row is the day's current charge, never a correction of an invoiced one
        "ChargeDescription": r.description or r.cost_type or None,
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": timestamp(r.day + timedelta(days=1)),
        "ChargePeriodStart": timestamp(r.day),
        "ConsumedQuantity": None if quantity is None else str(quantity),
        "ConsumedUnit": unit if quantity is not None else None,
        "ContractedCost": amount,
        "EffectiveCost": amount,
        "InvoiceIssuerName": PROVIDER,
        # ListCost: the Analytics API's list amount where synced (list_costs), else the billed amount.
        "ListCost": number(list_cost),
        "PricingQuantity": None if quantity is None else number(Decimal(quantity).scaleb(-scale)),
        "PricingUnit": f"1{'0' * scale} {unit}" if quantity is not None else None,
        "ProviderName": PROVIDER,
        "PublisherName": PROVIDER,
        "RegionId": r.inference_geo or None,
        "RegionName": REGIONS.get(r.inference_geo, r.inference_geo) if r.inference_geo else None,
        "ServiceCategory": SERVICE_CATEGORY,
        "ServiceName": SERVICE_NAME,
        "ServiceSubcategory": SERVICE_SUBCATEGORY,
        "SkuId": sku,
        "SkuMeter": METERS.get(r.token_type or r.cost_type, r.token_type or r.cost_type or sku),
        "SkuPriceDetails": json.dumps(price_details, sort_keys=True) if price_details else None,
        "SkuPriceId": "/".join([sku, *(v for v in (r.service_tier, r.context_window) if v)]),
        "SubAccountId": r.workspace_id or f"{org_id}/default",
        "SubAccountName": r.workspace_id or "Default",  # workspace names are not synced: the id names it
        "x_IntegrationId": str(r.integration_id),
        "x_WorkspaceId": r.workspace_id or None,
        "x_Model": r.model or None,
        "x_CostType": r.cost_type or None,
        "x_TokenType": r.token_type or None,
        "x_ServiceTier": r.service_tier or None,
        "x_ContextWindow": r.context_window or None,
        "x_InferenceGeo": r.inference_geo or None,
        "x_Extra": r.extra or None,
    }


def _sku(r: Any) -> str:
    """Stable per model and token type (or fee type): `claude-sonnet-4-6/output_tokens`, `web_search`."""
    kind = r.token_type if r.cost_type == "tokens" and r.token_type else (r.cost_type or "unknown")
    return f"{r.model}/{kind}" if r.model else kind
