"""Money as exact Decimal, in arithmetic and in text: every digit, never a float, never the context's rounding.

The default decimal context rounds to 28 significant digits, silently: `normalize()`, unary `+x`/`-x`,
`abs()`, `sum()` and every `a + b` whose result is longer all round (a stored
`123456.781234567890123456789012` printed through `normalize()` shows `123456.781234567890123456789`).
Money is therefore added with `EXACT` (or `money_sum`) and written with `money_text` / `decimal_text`,
which only use `format(value, "f")`: formatting without a precision never consults the context.

Standard library only, so every layer (storage, reconcile, the CLI) uses the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal

__all__ = ["EXACT", "decimal_text", "money_sum", "money_text"]

EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
"""Adds, subtracts and multiplies money without rounding whatever its digits. Never divide in it:
an inexact quotient would be computed to MAX_PREC digits."""


def money_sum(values: Iterable[Decimal]) -> Decimal:
    """The exact sum (`sum()` rounds each step to the context's 28 digits)."""
    total = Decimal(0)
    for value in values:
        total = EXACT.add(total, value)
    return total


def decimal_text(value: Decimal) -> str:
    """The exact plain text of a finite Decimal for data (JSON, CSV): no exponent, no rounding;
    integral values without their fraction (`12.00` -> `12`), others with the digits they have
    (`0.50`); never `-0`."""
    text = format(value, "f")
    whole, point, fraction = text.partition(".")
    if point and not fraction.strip("0"):
        text = whole
    return "0" if text == "-0" else text


def money_text(value: Decimal, *, places: int = 2, grouping: bool = False) -> str:
    """Exact dollars for people: every digit, trailing zeros dropped down to `places` decimals
    (`18.432075`, `12.50`, `3.00`); thousands separated with `grouping`; never `-0.00`."""
    text = format(value, ",f" if grouping else "f")
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(places, "0")
    if whole == "-0" and not fraction.strip("0"):
        whole = "0"
    return f"{whole}.{fraction}" if fraction else whole
