"""Conversions between the API's parsed rows and table rows: '' for absent dimensions, canonical JSON extras."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from worker.api.models import CostRow, UsageRow

COST_GRAIN = ("workspace_id", "model", "cost_type", "token_type", "service_tier", "context_window",
              "inference_geo", "description", "extra")
USAGE_GRAIN = ("workspace_id", "model", "service_tier", "context_window", "api_key_id", "inference_geo", "extra_key")
USAGE_COUNTS = ("uncached_input_tokens", "cache_read_input_tokens", "cache_creation_5m_input_tokens",
                "cache_creation_1h_input_tokens", "output_tokens", "web_search_requests")


def canonical_json(value: Mapping[str, Any]) -> str:
    if not value:
        return ""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _dim(value: str | None) -> str:
    return "" if value is None else value


def cost_table_rows(integration_id: int, rows: Iterable[CostRow]) -> list[dict[str, Any]]:
    """Table rows for one or more days; rows with the same grain are summed (both are charges)."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        rec = {
            "integration_id": integration_id, "day": r.day, "workspace_id": _dim(r.workspace_id),
            "model": _dim(r.model), "cost_type": _dim(r.cost_type), "token_type": _dim(r.token_type),
            "service_tier": _dim(r.service_tier), "context_window": _dim(r.context_window),
            "inference_geo": _dim(r.inference_geo), "description": _dim(r.description),
            "extra": canonical_json(r.extra), "amount_usd": r.amount_usd, "currency": r.currency or "USD",
        }
        key = (r.day, rec["currency"], *(rec[c] for c in COST_GRAIN))
        if key in merged:
            merged[key]["amount_usd"] += r.amount_usd
        else:
            merged[key] = rec
    return list(merged.values())


def usage_table_rows(integration_id: int, rows: Iterable[UsageRow]) -> list[dict[str, Any]]:
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        extra_counts = {k: v for k, v in r.extra.items() if isinstance(v, int) and not isinstance(v, bool)}
        extra_key = {k: v for k, v in r.extra.items() if k not in extra_counts}
        rec: dict[str, Any] = {
            "integration_id": integration_id, "day": r.day, "workspace_id": _dim(r.workspace_id),
            "model": _dim(r.model), "service_tier": _dim(r.service_tier),
            "context_window": _dim(r.context_window), "api_key_id": _dim(r.api_key_id),
            "inference_geo": _dim(r.inference_geo), "extra_key": canonical_json(extra_key),
            "uncached_input_tokens": r.uncached_input_tokens, "cache_read_input_tokens": r.cache_read_input_tokens,
            "cache_creation_5m_input_tokens": r.cache_creation_5m_input_tokens,
            "cache_creation_1h_input_tokens": r.cache_creation_1h_input_tokens,
            "output_tokens": r.output_tokens, "web_search_requests": r.web_search_requests,
            "_extra_counts": extra_counts,
        }
        key = (r.day, *(rec[c] for c in USAGE_GRAIN))
        if key in merged:
            into = merged[key]
            for c in USAGE_COUNTS:
                into[c] += rec[c]
            for k, v in extra_counts.items():
                into["_extra_counts"][k] = into["_extra_counts"].get(k, 0) + v
        else:
            merged[key] = rec
    out = []
    for rec in merged.values():
        rec["extra_counts"] = canonical_json(rec.pop("_extra_counts"))
        out.append(rec)
    return out


def grain_json(rec: Mapping[str, Any], grain: tuple[str, ...]) -> str:
    return json.dumps({c: rec[c] for c in grain}, sort_keys=True, separators=(",", ":"))


def cost_value(rec: Mapping[str, Any]) -> str:
    amount: Decimal = rec["amount_usd"]
    return f"{format(amount, 'f')} {rec['currency']}"


def usage_value(rec: Mapping[str, Any]) -> str:
    return json.dumps({c: rec[c] for c in USAGE_COUNTS} | ({"extra": rec["extra_counts"]} if rec["extra_counts"] else {}),
                      sort_keys=True, separators=(",", ":"))


def none_if_empty(value: str) -> str | None:
    return value or None
