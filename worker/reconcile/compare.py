"""Billed vs tracked, per (UTC day, model, key): deltas, a status, and the likely causes.

Sign convention: every delta is TRACKED minus BILLED (negative = tracking shows less than the bill).

Pricing. Tracked cost = the costs events carried + their cost-less tokens priced at the unit
prices the bill implies (`PriceBook`), so token gaps become dollar gaps.

Status. With tolerance t (a percentage), a row is `ok` when
  |cost delta| <= t% of billed cost, and
  for every compared token type (uncached input, output, cache read, cache write), the token
  delta priced at that type's implied unit price is <= t% of billed cost (unpriced: the token
  delta itself is <= t% of the billed tokens of that type);
otherwise `drift`. A row with nothing billed drifts as soon as anything was tracked.

Causes (drift rows only; a row can name several; thresholds are the module constants):

- `fees_not_tracked`: a non-token cost row (web search, code execution, session usage); trackers
  count tokens, not these fees.
- `day_boundary`: a drifting row whose deltas are cancelled by the opposite deltas of the same
  model and key on the adjacent day (drifting or not): events stamped in the wrong timezone.
  Matched per token type (each type's deltas cancel within `DAY_MATCH` of the larger, or leave
  no more than the tolerance) and on cost (the cost deltas cancel within `DAY_MATCH`, or each is
  its token deltas at its own day's implied prices: cost-less events are priced at the day they
  were stamped on). Checked first (a whole day shifted leaves one day `untracked`-looking and its
  neighbour doubled); it replaces every other cause.
- `untracked`: billed, but no tracked event at all.
- `not_billed`: tracked, but nothing billed for that day and model (failed or blocked calls,
  another platform such as Bedrock/Vertex, Priority Tier which the cost report omits, or a
  subscription). Adds `unmatched_model` when no bill id matched the tracker's model id.
- `duplicated_events`: every billed token type's tracked/billed ratio is within
  max(t, `MULTIPLE_SLACK`) of the same integer n >= 2; or the row is in surplus and ids were seen
  more than once.
- `cache_folded_into_input`: no cache tokens tracked while the bill has some, and tracked input
  equals billed uncached input + cache reads + cache writes (within max(t, `MULTIPLE_SLACK`)).
- `cache_reads_missing` / `cache_writes_missing`: that cache type's ratio is below 1 - t and
  more than `SHARE_SPREAD` below the input/output ratios (the tracker drops or ignores it).
- `missing_events`: the remaining billed types are all short (ratio < 1 - t) by a similar share
  (ratios within `SHARE_SPREAD` of each other).
- `extra_events`: the remaining types are all over by a similar, non-integer share.
- `cache_pricing`: every token type agrees within t but the cost does not, and the row has cache
  tokens (a tracker pricing cache reads/writes at the wrong rate); `pricing` when it has none.
- `unknown`: drift no rule explains.

Accepted causes (`compare(..., accept=...)`, the CLI's `--accept CAUSE`): a drift row whose
causes are all accepted is still a drift row, shown with its causes and marked `accepted`, but it
does not make the exit code 3 (fees no tracker can record, for a pipeline that gates on the rest).

Summary: `explained_usd` sums the cost deltas of drift rows with a cause other than `unknown`;
`unexplained_usd` is the total delta minus that (tolerated small deltas included).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from decimal import Decimal, localcontext
from enum import StrEnum

from worker.money import EXACT, money_sum
from worker.reconcile.aggregate import BilledCell, BilledFee, CellKey, TrackedAggregate
from worker.reconcile.events import TokenCounts, TokenType
from worker.reconcile.pricing import PriceBook, exact

__all__ = [
    "DEFAULT_TOLERANCE_PCT",
    "EXIT_DRIFT",
    "EXIT_OK",
    "TOKENS",
    "Cause",
    "Reconciliation",
    "Row",
    "Status",
    "Summary",
    "compare",
]

DEFAULT_TOLERANCE_PCT = Decimal("1")
EXIT_OK = 0
EXIT_DRIFT = 3
TOKENS = "tokens"
"""`Row.cost_type` of model rows; fee rows carry the bill's cost_type."""

SHARE_SPREAD = Decimal("0.10")
"""Token types are short 'by a similar share' when their tracked/billed ratios differ by <= this."""
MULTIPLE_SLACK = Decimal("0.05")
"""Relative slack for 'about an integer multiple' and for folded cache tokens."""
DAY_MATCH = Decimal("0.20")
"""Adjacent-day surplus and deficit match when they cancel to within this share of the larger."""

_ZERO = Decimal(0)
_PRICE_FIELD = {
    TokenType.UNCACHED_INPUT: "uncached_input",
    TokenType.OUTPUT: "output",
    TokenType.CACHE_READ: "cache_read",
    TokenType.CACHE_WRITE: "cache_write",
}


class Status(StrEnum):
    OK = "ok"
    DRIFT = "drift"


class Cause(StrEnum):
    UNTRACKED = "untracked"
    NOT_BILLED = "not_billed"
    UNMATCHED_MODEL = "unmatched_model"
    FEES_NOT_TRACKED = "fees_not_tracked"
    DAY_BOUNDARY = "day_boundary"
    DUPLICATED_EVENTS = "duplicated_events"
    MISSING_EVENTS = "missing_events"
    EXTRA_EVENTS = "extra_events"
    CACHE_FOLDED_INTO_INPUT = "cache_folded_into_input"
    CACHE_READS_MISSING = "cache_reads_missing"
    CACHE_WRITES_MISSING = "cache_writes_missing"
    CACHE_PRICING = "cache_pricing"
    PRICING = "pricing"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Row:
    """One reconciled (date, model, key) -- or one fee (model None, cost_type not `tokens`)."""

    date: date
    model: str | None
    key: str | None
    cost_type: str
    billed_tokens: TokenCounts
    tracked_tokens: TokenCounts
    billed_cost_usd: Decimal
    tracked_cost_usd: Decimal
    cost_delta_usd: Decimal
    cost_delta_pct: Decimal | None
    tracked_events: int
    duplicate_ids: int
    unpriced_tokens: int
    status: Status
    causes: tuple[Cause, ...]
    accepted: bool = False
    """A drift row whose every cause was accepted: shown, but not failing the run."""

    def billed(self, token_type: TokenType) -> int:
        return self.billed_tokens.get(token_type)

    def tracked(self, token_type: TokenType) -> int:
        return self.tracked_tokens.get(token_type)

    def token_delta(self, token_type: TokenType) -> int:
        return self.tracked(token_type) - self.billed(token_type)

    def token_delta_pct(self, token_type: TokenType) -> Decimal | None:
        return _pct(Decimal(self.token_delta(token_type)), Decimal(self.billed(token_type)))


@dataclass(frozen=True, slots=True)
class Summary:
    billed_cost_usd: Decimal
    tracked_cost_usd: Decimal
    delta_usd: Decimal
    explained_usd: Decimal
    unexplained_usd: Decimal
    rows: int
    drift_rows: int
    tolerance_pct: Decimal
    accepted_rows: int = 0
    """Drift rows (counted in `drift_rows`) whose every cause was accepted."""


@dataclass(frozen=True, slots=True)
class Reconciliation:
    rows: tuple[Row, ...]
    summary: Summary

    @property
    def exit_code(self) -> int:
        """0 when every row is within tolerance or its drift accepted, 3 when any other row drifts."""
        return EXIT_DRIFT if self.summary.drift_rows > self.summary.accepted_rows else EXIT_OK


@dataclass
class _Cell:
    tokens_billed: TokenCounts = field(default_factory=TokenCounts)
    cost_billed: Decimal = _ZERO
    tracked: TrackedAggregate | None = None


def compare(
    billed: Iterable[BilledCell],
    tracked: Iterable[TrackedAggregate],
    fees: Iterable[BilledFee] = (),
    *,
    tolerance_pct: Decimal = DEFAULT_TOLERANCE_PCT,
    prices: PriceBook | None = None,
    accept: Iterable[Cause | str] = (),
) -> Reconciliation:
    """Reconcile a bill with tracked aggregates; see the module docstring for every rule.

    Both sides must be grouped the same way. When either side carries no key at all (trackers
    without workspace/API-key ids), keys are dropped on both sides and rows are per model.
    `prices` defaults to the prices implied by the `billed` cells that have costs. A drift row
    whose causes are all in `accept` is marked `accepted` and does not count for the exit code.
    """
    if tolerance_pct < 0:
        raise ValueError("tolerance_pct must be >= 0")
    accepted = frozenset(Cause(c) for c in accept)  # ValueError for a name that is no cause
    billed = list(billed)
    tracked = list(tracked)
    fees = list(fees)
    if prices is None:
        prices = PriceBook.from_billed((c.day, c.model, c.tokens, c.cost) for c in billed if c.cost is not None)
    keyed = any(c.key is not None for c in billed) and any(a.key is not None for a in tracked)

    cells: dict[CellKey, _Cell] = defaultdict(_Cell)
    for cell in billed:
        target = cells[(cell.day, cell.model, cell.key if keyed else None)]
        target.tokens_billed += cell.tokens
        cost = cell.cost.total if cell.cost is not None else prices.price(cell.day, cell.model, cell.tokens)[0]
        target.cost_billed = EXACT.add(target.cost_billed, cost)
    for aggregate in tracked:
        target = cells[(aggregate.day, aggregate.model, aggregate.key if keyed else None)]
        target.tracked = aggregate if target.tracked is None else target.tracked + aggregate

    tol = tolerance_pct / 100
    drafts = [_draft(key, cell, prices, tol) for key, cell in cells.items()]
    paired = _day_boundary_pairs(drafts, prices, tol)
    rows = [d.finish(tol, d.key in paired) for d in drafts]
    rows += _fee_rows(fees, keyed, tol)
    if accepted:
        rows = [replace(r, accepted=True) if r.status is Status.DRIFT and accepted.issuperset(r.causes) else r
                for r in rows]
    rows.sort(key=lambda r: (r.date, r.cost_type != TOKENS, r.model or "", r.cost_type, r.key or ""))
    return Reconciliation(tuple(rows), _summary(rows, tolerance_pct))


@dataclass
class _Draft:
    key: CellKey
    billed: TokenCounts
    tracked: TokenCounts
    billed_cost: Decimal
    tracked_cost: Decimal
    events: int
    duplicate_ids: int
    unpriced: int
    unmatched_model: bool
    drift: bool

    @property
    def delta(self) -> Decimal:
        return EXACT.subtract(self.tracked_cost, self.billed_cost)

    def finish(self, tol: Decimal, day_boundary: bool) -> Row:
        causes = _causes(self, tol, day_boundary) if self.drift else ()
        return Row(
            date=self.key[0],
            model=self.key[1],
            key=self.key[2],
            cost_type=TOKENS,
            billed_tokens=self.billed,
            tracked_tokens=self.tracked,
            billed_cost_usd=self.billed_cost,
            tracked_cost_usd=self.tracked_cost,
            cost_delta_usd=self.delta,
            cost_delta_pct=_pct(self.delta, self.billed_cost),
            tracked_events=self.events,
            duplicate_ids=self.duplicate_ids,
            unpriced_tokens=self.unpriced,
            status=Status.DRIFT if self.drift else Status.OK,
            causes=causes,
        )


def _draft(key: CellKey, cell: _Cell, prices: PriceBook, tol: Decimal) -> _Draft:
    day, model, _ = key
    aggregate = cell.tracked
    tracked_tokens = aggregate.tokens if aggregate else TokenCounts()
    tracked_cost = aggregate.cost_usd if aggregate else _ZERO
    unpriced = 0
    if aggregate is not None:
        priced, unpriced = prices.price(day, model, aggregate.unpriced_tokens)
        tracked_cost = exact(EXACT.add(tracked_cost, priced))
    draft = _Draft(
        key=key,
        billed=cell.tokens_billed,
        tracked=tracked_tokens,
        billed_cost=cell.cost_billed,
        tracked_cost=tracked_cost,
        events=aggregate.events if aggregate else 0,
        duplicate_ids=aggregate.duplicate_ids if aggregate else 0,
        unpriced=unpriced,
        unmatched_model=aggregate.unmatched_model if aggregate else False,
        drift=False,
    )
    draft.drift = _drifts(draft, prices, tol)
    return draft


def _drifts(draft: _Draft, prices: PriceBook, tol: Decimal) -> bool:
    budget = tol * draft.billed_cost
    if draft.billed_cost == 0 and draft.billed.total == 0:
        return draft.tracked.total > 0 or draft.tracked_cost != 0
    if draft.delta.copy_abs() > budget:
        return True
    day, model, _ = draft.key
    for token_type in TokenType:
        gap = draft.tracked.get(token_type) - draft.billed.get(token_type)
        if gap == 0:
            continue
        price = prices.unit_price(day, model, _PRICE_FIELD[token_type])
        if price is not None and draft.billed_cost > 0:
            if abs(gap) * price > budget:
                return True
        elif abs(gap) > tol * draft.billed.get(token_type):
            return True
    return False


def _day_boundary_pairs(drafts: list[_Draft], prices: PriceBook, tol: Decimal) -> set[CellKey]:
    """The cells whose drift is the same calls stamped on the neighbouring UTC day (see `_shifted`).

    Every row takes part, drifting or not: a day's evening moved into a much busier next day can
    leave that day within tolerance while its own row drifts (the drifting one still names the
    cause). Days pair left to right; a row pairs at most once.
    """
    series: dict[tuple[str, str | None], list[_Draft]] = defaultdict(list)
    for draft in drafts:
        series[(draft.key[1], draft.key[2])].append(draft)
    paired: set[CellKey] = set()
    for row in series.values():
        row.sort(key=lambda d: d.key[0])
        for first, second in itertools.pairwise(row):
            if first.key in paired or second.key[0] - first.key[0] != timedelta(days=1):
                continue
            if (first.drift or second.drift) and _shifted(first, second, prices, tol):
                paired.update((first.key, second.key))
    return paired


def _shifted(first: _Draft, second: _Draft, prices: PriceBook, tol: Decimal) -> bool:
    """Whether one day's deficit is the other day's surplus: the same calls, on the wrong side of midnight.

    Tokens, per compared type: the two days' deltas have opposite signs and cancel to within
    `DAY_MATCH` of the larger, for at least one type; every other type cancels that way too or is
    left within the tolerance of the two days' billed tokens (a type the moved calls barely had).
    Cost: the deltas have opposite signs and either cancel to within `DAY_MATCH` (events carrying
    their own cost) or each is, to within `DAY_MATCH`, its own token deltas priced at that day's
    implied unit prices: cost-less events are priced at the day they were stamped on, and adjacent
    days' prices differ with their batch, long-context and cache mix.
    """
    matched = False
    for token_type in TokenType:
        x = first.tracked.get(token_type) - first.billed.get(token_type)
        y = second.tracked.get(token_type) - second.billed.get(token_type)
        if _cancel(Decimal(x), Decimal(y)):
            matched = True
        elif abs(x + y) > tol * (first.billed.get(token_type) + second.billed.get(token_type)):
            return False
    if not matched:
        return False
    a, b = first.delta, second.delta
    if a == 0 or b == 0 or (a > 0) == (b > 0):
        return False
    if _cancel(a, b):
        return True
    return _priced_like_its_tokens(first, prices) and _priced_like_its_tokens(second, prices)


def _priced_like_its_tokens(draft: _Draft, prices: PriceBook) -> bool:
    """Whether the row's cost delta is its token deltas at its day's implied unit prices (within `DAY_MATCH`)."""
    day, model, _ = draft.key
    value = _ZERO
    for token_type in TokenType:
        gap = draft.tracked.get(token_type) - draft.billed.get(token_type)
        if gap:
            price = prices.unit_price(day, model, _PRICE_FIELD[token_type])
            if price is None:
                return False
            value += price * gap
    delta = draft.delta
    return abs(delta - value) <= DAY_MATCH * max(abs(delta), abs(value))


def _cancel(a: Decimal, b: Decimal) -> bool:
    if a == 0 or b == 0 or (a > 0) == (b > 0):
        return False
    return abs(a + b) <= DAY_MATCH * max(abs(a), abs(b))


def _causes(draft: _Draft, tol: Decimal, day_boundary: bool) -> tuple[Cause, ...]:
    billed, tracked = draft.billed, draft.tracked
    if day_boundary:
        return (Cause.DAY_BOUNDARY,)
    if draft.events == 0 and tracked.total == 0:
        return (Cause.UNTRACKED,)
    if billed.total == 0 and draft.billed_cost == 0:
        return (Cause.NOT_BILLED, Cause.UNMATCHED_MODEL) if draft.unmatched_model else (Cause.NOT_BILLED,)

    causes: list[Cause] = []
    slack = max(tol, MULTIPLE_SLACK)
    surplus = draft.delta > 0 or tracked.total > billed.total
    if draft.duplicate_ids and surplus:
        causes.append(Cause.DUPLICATED_EVENTS)

    billed_cache = billed.cache_read + billed.cache_write
    if billed_cache and tracked.cache_read + tracked.cache_write == 0 and billed.uncached_input:
        folded = billed.uncached_input + billed_cache
        if abs(tracked.uncached_input - folded) <= slack * folded and _agrees(tracked.output, billed.output, tol):
            return (*causes, Cause.CACHE_FOLDED_INTO_INPUT)

    ratios = {t: Decimal(tracked.get(t)) / billed.get(t) for t in TokenType if billed.get(t) > 0}
    base_types = [ratios[t] for t in (TokenType.UNCACHED_INPUT, TokenType.OUTPUT) if t in ratios]
    base = min(base_types) if base_types else Decimal(1)
    for token_type, cause in (
        (TokenType.CACHE_READ, Cause.CACHE_READS_MISSING),
        (TokenType.CACHE_WRITE, Cause.CACHE_WRITES_MISSING),
    ):
        ratio = ratios.get(token_type)
        if ratio is not None and ratio < 1 - tol and ratio < base - SHARE_SPREAD:
            causes.append(cause)
            del ratios[token_type]

    rest = list(ratios.values())
    if rest:
        low, high = min(rest), max(rest)
        similar = high - low <= SHARE_SPREAD
        multiple = round(sum(rest) / len(rest))
        if all(abs(r - 1) <= tol for r in rest):
            token_causes = {Cause.CACHE_READS_MISSING, Cause.CACHE_WRITES_MISSING}
            if not token_causes.intersection(causes) and abs(draft.delta) > tol * draft.billed_cost:
                causes.append(Cause.CACHE_PRICING if billed_cache else Cause.PRICING)
        elif similar and high < 1 - tol:
            causes.append(Cause.MISSING_EVENTS)
        elif multiple >= 2 and all(abs(r / multiple - 1) <= slack for r in rest):
            if Cause.DUPLICATED_EVENTS not in causes:
                causes.append(Cause.DUPLICATED_EVENTS)
        elif similar and low > 1 + tol and Cause.DUPLICATED_EVENTS not in causes:
            causes.append(Cause.EXTRA_EVENTS)
    return tuple(causes) or (Cause.UNKNOWN,)


def _agrees(tracked: int, billed: int, tol: Decimal) -> bool:
    return abs(tracked - billed) <= tol * billed


def _fee_rows(fees: list[BilledFee], keyed: bool, tol: Decimal) -> list[Row]:
    totals: dict[tuple[date, str | None, str], Decimal] = defaultdict(Decimal)
    for fee in fees:
        cell = (fee.day, fee.key if keyed else None, fee.cost_type)
        totals[cell] = EXACT.add(totals[cell], fee.cost_usd)
    rows = []
    for (day, key, cost_type), amount in totals.items():
        drift = amount.copy_abs() > tol * amount.copy_abs() if amount else False
        rows.append(Row(
            date=day, model=None, key=key, cost_type=cost_type,
            billed_tokens=TokenCounts(), tracked_tokens=TokenCounts(),
            billed_cost_usd=amount, tracked_cost_usd=_ZERO, cost_delta_usd=amount.copy_negate(),
            cost_delta_pct=_pct(amount.copy_negate(), amount), tracked_events=0, duplicate_ids=0, unpriced_tokens=0,
            status=Status.DRIFT if drift else Status.OK,
            causes=(Cause.FEES_NOT_TRACKED,) if drift else (),
        ))
    return rows


def _summary(rows: list[Row], tolerance_pct: Decimal) -> Summary:
    billed = money_sum(r.billed_cost_usd for r in rows)
    tracked = money_sum(r.tracked_cost_usd for r in rows)
    explained = money_sum(r.cost_delta_usd for r in rows if r.status is Status.DRIFT and r.causes != (Cause.UNKNOWN,))
    delta = EXACT.subtract(tracked, billed)
    return Summary(
        billed_cost_usd=billed,
        tracked_cost_usd=tracked,
        delta_usd=delta,
        explained_usd=explained,
        unexplained_usd=EXACT.subtract(delta, explained),
        rows=len(rows),
        drift_rows=sum(1 for r in rows if r.status is Status.DRIFT),
        tolerance_pct=tolerance_pct,
        accepted_rows=sum(1 for r in rows if r.accepted),
    )


def _pct(delta: Decimal, base: Decimal) -> Decimal | None:
    """100 x delta / base to 0.01 (half-even), however many digits the amounts have."""
    if base == 0:
        return None
    if delta == 0:
        return Decimal("0.00")
    with localcontext() as context:  # enough digits for the integral part, plus the two decimals
        context.prec = max(28, delta.adjusted() - base.adjusted() + 8)
        return (delta * 100 / base).quantize(Decimal("0.01"))

