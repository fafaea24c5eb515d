"""Table rows from report rows: '' for absent dimensions, canonical JSON extras, same grains summed.

Storage says what it reads from a report row (`CostRecord`, `UsageRecord`) instead of importing the
API's types: any object with those attributes is stored (worker.api.models' rows are).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date
from decimal import Decimal
from typing import Any, Protocol

import msgspec

from worker.storage.types import EXACT

COST_GRAIN = ("workspace_id", "model", "cost_type", "token_type", "service_tier", "context_window",
              "inference_geo", "description", "extra")
USAGE_GRAIN = ("workspace_id", "model", "service_tier", "context_window", "api_key_id", "inference_geo", "extra_key")
USAGE_COUNTS = ("uncached_input_tokens", "cache_read_input_tokens", "cache_creation_5m_input_tokens",
                "cache_creation_1h_input_tokens", "output_tokens", "web_search_requests")


class CostRecord(Protocol):
    """One charge of a day's cost report: an exact amount in dollars and its dimensions (None: absent)."""

    @property
    def day(self) -> date: ...
    @property
    def workspace_id(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def cost_type(self) -> str | None: ...
    @property
    def token_type(self) -> str | None: ...
    @property
    def service_tier(self) -> str | None: ...
    @property
    def context_window(self) -> str | None: ...
    @property
    def inference_geo(self) -> str | None: ...
    @property
    def description(self) -> str | None: ...
    @property
    def amount_usd(self) -> Decimal: ...
    @property
    def currency(self) -> str: ...
    @property
    def extra(self) -> Mapping[str, Any]: ...


class UsageRecord(Protocol):
    """One line of a day's message usage report: token counts and their dimensions (None: absent)."""

    @property
    def day(self) -> date: ...
    @property
    def workspace_id(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def service_tier(self) -> str | None: ...
    @property
    def context_window(self) -> str | None: ...
    @property
    def api_key_id(self) -> str | None: ...
    @property
    def inference_geo(self) -> str | None: ...
    @property
    def uncached_input_tokens(self) -> int: ...
    @property
    def cache_read_input_tokens(self) -> int: ...
    @property
    def cache_creation_5m_input_tokens(self) -> int: ...
    @property
    def cache_creation_1h_input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def web_search_requests(self) -> int: ...
    @property
    def extra(self) -> Mapping[str, Any]: ...


def canonical_json(value: Mapping[str, Any]) -> str:
    if not value:
        return ""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# Column order of the tuples the storage layer writes (worker.storage.repo); the grain (the unique
# key without integration_id) is columns 1 .. 1 + len(grain): day first, then the dimensions.
COST_COLUMNS = ("integration_id", "day", *COST_GRAIN, "amount_usd", "currency")
USAGE_COLUMNS = ("integration_id", "day", *USAGE_GRAIN, *USAGE_COUNTS, "extra_counts")


def cost_table_rows(integration_id: int, rows: Iterable[CostRecord]) -> list[dict[str, Any]]:
    """Table rows for one or more days; rows with the same grain are summed (both are charges).

    Hot path of every stored page (a year of a large organization is ~10^6 rows): one key tuple per
    row, dicts built once per distinct grain. An absent dimension (None) becomes '' (`x or ""`).
    """
    amounts: dict[tuple[Any, ...], Decimal] = {}
    for r in rows:
        extra = r.extra
        key = (r.day, r.workspace_id or "", r.model or "", r.cost_type or "", r.token_type or "",
               r.service_tier or "", r.context_window or "", r.inference_geo or "", r.description or "",
               canonical_json(extra) if extra else "", r.currency or "USD")
        n = len(amounts)
        first = amounts.setdefault(key, r.amount_usd)  # one hash of the key in the common case
        if len(amounts) == n:  # the grain was already there
            amounts[key] = EXACT.add(first, r.amount_usd)
    return [
        {"integration_id": integration_id, "day": k[0], "workspace_id": k[1], "model": k[2], "cost_type": k[3],
         "token_type": k[4], "service_tier": k[5], "context_window": k[6], "inference_geo": k[7],
         "description": k[8], "extra": k[9], "amount_usd": amount, "currency": k[10]}
        for k, amount in amounts.items()
    ]


def _split_usage_extra(extra: Mapping[str, Any]) -> tuple[dict[str, int], str]:
    """Unknown fields of a usage row: integer counters (summed), and the rest (part of the grain)."""
    counts = {k: v for k, v in extra.items() if isinstance(v, int) and not isinstance(v, bool)}
    return counts, canonical_json({k: v for k, v in extra.items() if k not in counts})


def usage_table_rows(integration_id: int, rows: Iterable[UsageRecord]) -> list[dict[str, Any]]:
    merged: dict[tuple[Any, ...], list[Any]] = {}
    for r in rows:
        extra = r.extra
        extra_counts, extra_key = _split_usage_extra(extra) if extra else (None, "")
        key = (r.day, r.workspace_id or "", r.model or "", r.service_tier or "", r.context_window or "",
               r.api_key_id or "", r.inference_geo or "", extra_key)
        into = merged.get(key)
        if into is None:
            merged[key] = [key, r.uncached_input_tokens, r.cache_read_input_tokens, r.cache_creation_5m_input_tokens,
                           r.cache_creation_1h_input_tokens, r.output_tokens, r.web_search_requests,
                           dict(extra_counts) if extra_counts else None]
            continue
        into[1] += r.uncached_input_tokens
        into[2] += r.cache_read_input_tokens
        into[3] += r.cache_creation_5m_input_tokens
        into[4] += r.cache_creation_1h_input_tokens
        into[5] += r.output_tokens
        into[6] += r.web_search_requests
        if extra_counts:
            summed = into[7] if into[7] is not None else {}
            for k, v in extra_counts.items():
                summed[k] = summed.get(k, 0) + v
            into[7] = summed
    return [
        {"integration_id": integration_id, "day": k[0], "workspace_id": k[1], "model": k[2], "service_tier": k[3],
         "context_window": k[4], "api_key_id": k[5], "inference_geo": k[6], "extra_key": k[7],
         "uncached_input_tokens": a, "cache_read_input_tokens": b, "cache_creation_5m_input_tokens": c,
         "cache_creation_1h_input_tokens": d, "output_tokens": e, "web_search_requests": f,
         "extra_counts": canonical_json(extra_counts) if extra_counts else ""}
        for k, a, b, c, d, e, f, extra_counts in merged.values()
    ]


class CanonicalJson:
    """`json.dumps(value, sort_keys=True, separators=(",", ":"))`, the text of every revision and grain.

    A restated day writes a revision per row, and the standard library's pure-Python encoder (the C one
    does not sort keys) was a measurable part of storing it. msgspec gives the very same bytes for ASCII
    other than DEL; for anything else (the standard library escapes it as \\uXXXX) the standard library
    encodes it, so stored texts stay equal whatever encoded them.
    """

    def __init__(self) -> None:
        self._fast = msgspec.json.Encoder(order="sorted")
        self._exact = json.JSONEncoder(sort_keys=True, separators=(",", ":"))

    def encode(self, value: Any) -> str:
        try:
            out = self._fast.encode(value)
        except UnicodeEncodeError:  # a lone surrogate, which only the standard library escapes
            return self._exact.encode(value)
        if out.isascii() and b"\x7f" not in out:
            return out.decode("ascii")
        return self._exact.encode(value)


CANONICAL_JSON = CanonicalJson()


def usage_value(rec: Mapping[str, Any]) -> str:
    return CANONICAL_JSON.encode({c: rec[c] for c in USAGE_COUNTS}
                                 | ({"extra": rec["extra_counts"]} if rec["extra_counts"] else {}))


def none_if_empty(value: str) -> str | None:
    return value or None
