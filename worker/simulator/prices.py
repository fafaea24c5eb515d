"""The simulator's own price table, in integer pico-dollars so every amount is exact.

Independent of the worker on purpose: the simulator is the ground truth the worker is tested
against, so it must not share pricing code with it. One pico-dollar is 1e-12 USD, so one cent is
1e10 pico-dollars and a list price of $1 per million tokens is 1,000,000 pico-dollars per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

PICO_PER_DOLLAR = 10**12
PICO_PER_CENT = 10**10
_PICO_PER_DOLLAR_PER_MTOK = 10**6  # $1 / MTok expressed in pico-dollars per token

TOKEN_TYPES: tuple[str, ...] = (
    "uncached_input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation.ephemeral_5m_input_tokens",
    "cache_creation.ephemeral_1h_input_tokens",
)
SERVICE_TIERS: tuple[str, ...] = ("standard", "batch", "priority")
#: Tiers the legacy cost report bills; Priority Tier "uses a different billing model and is not
#: included in the cost endpoint" (its cost is in the Analytics API only).
LEGACY_COST_TIERS: frozenset[str] = frozenset({"standard", "batch"})
CONTEXT_WINDOWS: tuple[str, ...] = ("0-200k", "200k-1M")

# Multipliers on the input price for the cache token types; output tokens use the output price.
_INPUT_MULTIPLIER: dict[str, Fraction] = {
    "uncached_input_tokens": Fraction(1),
    "cache_read_input_tokens": Fraction(1, 10),
    "cache_creation.ephemeral_5m_input_tokens": Fraction(5, 4),
    "cache_creation.ephemeral_1h_input_tokens": Fraction(2),
}
_TIER_MULTIPLIER: dict[str, Fraction] = {"standard": Fraction(1), "batch": Fraction(1, 2), "priority": Fraction(5, 4)}
_TOKEN_LABELS: dict[str, str] = {
    "uncached_input_tokens": "Input Tokens",
    "output_tokens": "Output Tokens",
    "cache_read_input_tokens": "Input Tokens, Cache Read",
    "cache_creation.ephemeral_5m_input_tokens": "Input Tokens, Cache Write 5m",
    "cache_creation.ephemeral_1h_input_tokens": "Input Tokens, Cache Write 1h",
}

WEB_SEARCH_PICO_PER_REQUEST = 10 * PICO_PER_DOLLAR // 1000  # $10 per 1,000 searches
# Code execution is billed here in units of 0.01 container-hour at $0.05 per hour.
CODE_EXECUTION_PICO_PER_UNIT = 5 * PICO_PER_DOLLAR // 100 // 100
WEB_SEARCH_DESCRIPTION = "Web Search Usage"
CODE_EXECUTION_DESCRIPTION = "Code Execution Usage"


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """List prices of one model in dollars per million tokens."""

    model: str
    display_name: str
    input: Decimal
    output: Decimal
    long_input: Decimal | None = None  # prices above 200k input tokens; None: no long context
    long_output: Decimal | None = None

    @property
    def long_context(self) -> bool:
        return self.long_input is not None


MODELS: dict[str, ModelPrice] = {
    m.model: m
    for m in (
        ModelPrice("claude-opus-4-1", "Claude Opus 4.1", Decimal("15"), Decimal("75")),
        ModelPrice(
            "claude-sonnet-4-6", "Claude Sonnet 4.6", Decimal("3"), Decimal("15"),
            Decimal("6"), Decimal("22.5"),
        ),
        ModelPrice(
            "claude-sonnet-4-5", "Claude Sonnet 4.5", Decimal("3"), Decimal("15"),
            Decimal("6"), Decimal("22.5"),
        ),
        ModelPrice("claude-haiku-4-5", "Claude Haiku 4.5", Decimal("1"), Decimal("5")),
        ModelPrice("claude-3-5-haiku-20241022", "Claude Haiku 3.5", Decimal("0.8"), Decimal("4")),
    )
}


def _compute_unit_price(model: str, tier: str, context_window: str, token_type: str) -> int:
    price = MODELS[model]
    long = context_window == "200k-1M"
    if long and not price.long_context:
        raise ValueError(f"{model} has no long-context pricing")
    if token_type == "output_tokens":
        base = price.long_output if long else price.output
        multiplier = Fraction(1)
    else:
        base = price.long_input if long else price.input
        multiplier = _INPUT_MULTIPLIER[token_type]
    assert base is not None
    exact = Fraction(base) * _PICO_PER_DOLLAR_PER_MTOK * multiplier * _TIER_MULTIPLIER[tier]
    if exact.denominator != 1:
        raise ValueError(f"price of {model}/{tier}/{context_window}/{token_type} is not whole pico")
    return int(exact)


_UNIT_PRICES: dict[tuple[str, str, str, str], int] = {
    (model, tier, cw, tt): _compute_unit_price(model, tier, cw, tt)
    for model, price in MODELS.items()
    for tier in SERVICE_TIERS
    for cw in (CONTEXT_WINDOWS if price.long_context else CONTEXT_WINDOWS[:1])
    for tt in TOKEN_TYPES
}


def unit_price_pico(model: str, tier: str, context_window: str, token_type: str) -> int:
    """Price of one token in pico-dollars (batch is 50% off; long context has its own prices)."""
    return _UNIT_PRICES[(model, tier, context_window, token_type)]


def billed_unit_price_pico(model: str, tier: str, context_window: str, token_type: str, discount_pct: int) -> int:
    """Price of one token after the organization's negotiated discount on token prices (exact pico)."""
    key = (model, tier, context_window, token_type, discount_pct)
    price = _BILLED.get(key)
    if price is None:
        exact = Fraction(unit_price_pico(model, tier, context_window, token_type) * (100 - discount_pct), 100)
        if exact.denominator != 1:
            raise ValueError(f"discounted price of {key} is not whole pico")
        price = _BILLED[key] = int(exact)
    return price


_BILLED: dict[tuple[str, str, str, str, int], int] = {}


def unit_price_dollars(model: str, tier: str, context_window: str, token_type: str) -> Decimal:
    """Price of one token in dollars, exact."""
    return Decimal(unit_price_pico(model, tier, context_window, token_type)).scaleb(-12)


def _describe(model: str, tier: str, context_window: str, token_type: str) -> str:
    batch = " Batch" if tier == "batch" else " Priority" if tier == "priority" else ""
    long = " (Long Context)" if context_window == "200k-1M" else ""
    return f"{MODELS[model].display_name}{batch} Usage - {_TOKEN_LABELS[token_type]}{long}"


_DESCRIPTIONS: dict[tuple[str, str, str, str], str] = {k: _describe(*k) for k in _UNIT_PRICES}


def description(model: str, tier: str, context_window: str, token_type: str) -> str:
    """The cost report's description of one token line, unique per (model, tier, window, type)."""
    return _DESCRIPTIONS[(model, tier, context_window, token_type)]


def pico_to_cents_string(pico: int) -> str:
    """Format an exact pico-dollar amount as the API's decimal string in cents."""
    sign = "-" if pico < 0 else ""
    whole, frac = divmod(abs(pico), PICO_PER_CENT)
    frac_text = f"{frac:010d}".rstrip("0")
    return f"{sign}{whole}.{frac_text}" if frac_text else f"{sign}{whole}"


def pico_to_dollars(pico: int) -> Decimal:
    """Exact Decimal dollars."""
    return Decimal(pico).scaleb(-12)
