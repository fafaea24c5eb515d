"""Unit prices implied by the bill: billed cost / billed tokens, per day, model and token type.

Tracked events that carry no cost are priced with these, so a token gap becomes a dollar gap at
the rate actually billed (batch discounts, long-context and data-residency premiums included, as
a blend). Lookup order for (day, model, type): that day's implied price; the model's implied price
over the whole bill given; the optional list prices; else unpriced (reported, never guessed).

Cache writes whose TTL a tracker did not report are priced at the blended cache-write rate (5m and
1h billed together); split ones at their own rate, falling back to the blend.

Amounts are computed as cost x tokens / billed_tokens with one exact Decimal division; a result
with more than 12 decimal places (a non-terminating ratio) is rounded half-even to 1e-12 USD.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from worker.money import EXACT
from worker.reconcile.events import TokenCounts

__all__ = ["PRICED_FIELDS", "PriceBook", "TokenCosts", "exact"]

PRICED_FIELDS = ("uncached_input", "output", "cache_read", "cache_write_5m", "cache_write_1h")
_BLEND = "cache_write"
# Which rates price a field, in order: split writes fall back to the blend, unsplit ones use it.
_FALLBACKS = {
    "cache_write_5m": ("cache_write_5m", _BLEND),
    "cache_write_1h": ("cache_write_1h", _BLEND),
    "cache_write_unsplit": (_BLEND, "cache_write_5m"),
}
_PLACES = Decimal("1E-12")


def exact(value: Decimal) -> Decimal:
    """`value` itself when it has at most 12 decimal places, else rounded half-even to 1e-12."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -12:
        return value.quantize(_PLACES, rounding=ROUND_HALF_EVEN, context=EXACT)
    return value


@dataclass(frozen=True, slots=True)
class TokenCosts:
    """Billed USD per token type; `other` holds token costs of a token_type this code does not know."""

    uncached_input: Decimal = Decimal(0)
    output: Decimal = Decimal(0)
    cache_read: Decimal = Decimal(0)
    cache_write_5m: Decimal = Decimal(0)
    cache_write_1h: Decimal = Decimal(0)
    other: Decimal = Decimal(0)

    def __add__(self, other: TokenCosts) -> TokenCosts:
        add = EXACT.add  # money: never rounded to the default context's 28 digits
        return TokenCosts(
            add(self.uncached_input, other.uncached_input),
            add(self.output, other.output),
            add(self.cache_read, other.cache_read),
            add(self.cache_write_5m, other.cache_write_5m),
            add(self.cache_write_1h, other.cache_write_1h),
            add(self.other, other.other),
        )

    @property
    def cache_write(self) -> Decimal:
        return EXACT.add(self.cache_write_5m, self.cache_write_1h)

    @property
    def total(self) -> Decimal:
        total = self.uncached_input
        for part in (self.output, self.cache_read, self.cache_write_5m, self.cache_write_1h, self.other):
            total = EXACT.add(total, part)
        return total


# A unit price kept as the (cost, tokens) it was implied from, so pricing divides once.
_Rate = tuple[Decimal, int]


@dataclass
class _Sums:
    tokens: TokenCounts = field(default_factory=TokenCounts)
    costs: TokenCosts = field(default_factory=TokenCosts)

    def rates(self) -> dict[str, _Rate]:
        result: dict[str, _Rate] = {}
        for name in PRICED_FIELDS:
            count: int = getattr(self.tokens, name)
            if count > 0:
                result[name] = (getattr(self.costs, name), count)
        blended = self.tokens.cache_write_5m + self.tokens.cache_write_1h
        if blended > 0:
            result[_BLEND] = (self.costs.cache_write, blended)
        return result


class PriceBook:
    """Implied unit prices; build with `from_billed`, then `price` tracked tokens."""

    def __init__(
        self,
        daily: Mapping[tuple[date, str], Mapping[str, _Rate]],
        period: Mapping[str, Mapping[str, _Rate]],
        list_prices: Mapping[str, Mapping[str, Decimal]] | None = None,
    ) -> None:
        self._daily = daily
        self._period = period
        self._list = list_prices or {}

    @classmethod
    def from_billed(
        cls,
        billed: Iterable[tuple[date, str, TokenCounts, TokenCosts]],
        list_prices: Mapping[str, Mapping[str, Decimal]] | None = None,
    ) -> PriceBook:
        """Prices from billed (day, model, tokens, costs) across all keys.

        `list_prices` (model -> field -> USD per token; fields as in `PRICED_FIELDS` plus
        `cache_write`) is the last resort for models the bill never shows.
        """
        daily: dict[tuple[date, str], _Sums] = {}
        period: dict[str, _Sums] = {}
        for day, model, tokens, costs in billed:
            for sums in (daily.setdefault((day, model), _Sums()), period.setdefault(model, _Sums())):
                sums.tokens += tokens
                sums.costs += costs
        return cls(
            {key: sums.rates() for key, sums in daily.items()},
            {key: sums.rates() for key, sums in period.items()},
            list_prices,
        )

    def unit_price(self, day: date, model: str, name: str) -> Decimal | None:
        """USD per token for one field (`PRICED_FIELDS` or `cache_write`), or None when unknown."""
        rate = self._rate(day, model, name)
        if rate is None:
            return None
        if isinstance(rate, Decimal):
            return rate
        with localcontext() as context:
            context.prec = 50
            return rate[0] / rate[1]

    def price(self, day: date, model: str, tokens: TokenCounts) -> tuple[Decimal, int]:
        """(USD for `tokens`, how many of them had no price at all)."""
        total = Decimal(0)
        unpriced = 0
        for name in (*PRICED_FIELDS, "cache_write_unsplit"):
            count: int = getattr(tokens, name)
            if not count:
                continue
            rate = None
            for candidate in _FALLBACKS.get(name, (name,)):
                if (rate := self._rate(day, model, candidate)) is not None:
                    break
            if rate is None:
                unpriced += count
                continue
            total = EXACT.add(total, self._amount(rate, count))
        return exact(total), unpriced

    def _rate(self, day: date, model: str, name: str) -> _Rate | Decimal | None:
        for table in (self._daily.get((day, model)), self._period.get(model)):
            if table and name in table:
                return table[name]
        listed = self._list.get(model, {})
        return listed.get(name)

    @staticmethod
    def _amount(rate: _Rate | Decimal, count: int) -> Decimal:
        if isinstance(rate, Decimal):
            return EXACT.multiply(rate, count)
        with localcontext() as context:
            context.prec = 60
            return exact(rate[0] * count / rate[1])
