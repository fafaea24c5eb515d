"""A known bill stored as synced rows, and the calls behind it written in several tracker formats."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from billgen import FIELDS, TOKEN_TYPES, Call
from sqlalchemy import Engine

from worker.api.models import CostRow, UsageRow
from worker.reconcile import TokenCounts
from worker.storage import repo
from worker.storage.rows import cost_table_rows, usage_table_rows

NOW = datetime(2026, 3, 20, tzinfo=UTC)


def seed_bill(engine: Engine, calls: Iterable[Call], fees: dict[date, Decimal] | None = None) -> int:
    """Store the Admin API's view of `calls` (plus web-search fees) as one integration's synced rows."""
    calls = list(calls)
    costs: list[CostRow] = []
    usage: list[UsageRow] = []
    for call in calls:
        day = call.at.date()
        t = call.tokens
        usage.append(UsageRow(day=day, workspace_id=call.workspace_id, model=call.model,
                              service_tier=call.service_tier, context_window=call.context_window, api_key_id=f"apikey_{call.workspace_id[-1]}",
                              inference_geo=None, uncached_input_tokens=t.uncached_input,
                              cache_read_input_tokens=t.cache_read, cache_creation_5m_input_tokens=t.cache_write_5m,
                              cache_creation_1h_input_tokens=t.cache_write_1h, output_tokens=t.output,
                              web_search_requests=0))
        for price, name, token_type in zip(call.unit_prices(), FIELDS, TOKEN_TYPES, strict=True):
            costs.append(CostRow(day=day, workspace_id=call.workspace_id,
                                 description=f"{call.model} {call.service_tier} {call.context_window} {token_type}",
                                 cost_type="tokens", model=call.model, token_type=token_type,
                                 service_tier=call.service_tier, context_window=call.context_window,
                                 inference_geo=None,
                                 amount_usd=price * getattr(t, name), currency="USD"))
    for day, amount in (fees or {}).items():
        costs.append(CostRow(day=day, workspace_id=None, description="Web search", cost_type="web_search",
                             model=None, token_type=None, service_tier=None, context_window=None,
                             inference_geo=None, amount_usd=amount, currency="USD"))
    days = sorted({c.day for c in costs} | {u.day for u in usage})
    with engine.begin() as conn:
        integration_id = repo.insert_integration(
            conn, label="t", tier="pro", organization_id="org-1", organization_name="Org", key_ciphertext=b"x",
            key_id="k", key_hint="sk-ant-admin01-...abcd", status="ok", created_at=NOW, updated_at=NOW,
            backfill_start=days[0], backfill_end=days[-1], cost_checkpoint=days[-1], usage_checkpoint=days[-1],
            backfill_done=True)
        repo.replace_cost_days(conn, integration_id, days, cost_table_rows(integration_id, costs), NOW)
        repo.replace_usage_days(conn, integration_id, days, usage_table_rows(integration_id, usage), NOW)
    return integration_id


@dataclass(frozen=True)
class Record:
    """One tracked call as a tracker would log it (cost None = the tracker gives none)."""

    id: str
    at: datetime
    model: str
    tokens: TokenCounts
    cost: Decimal | None
    workspace_id: str | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def of(cls, call: Call, *, with_cost: bool = True, **changes: object) -> Record:
        record = cls(call.id, call.at, call.model, call.tokens, call.cost() if with_cost else None,
                     call.workspace_id)
        return _replace(record, **changes) if changes else record


def _replace(record: Record, **changes: Any) -> Record:
    from dataclasses import replace

    return replace(record, **changes)


def _number(payload: dict[str, object], cost: Decimal | None, key: str) -> str:
    """JSON with `key` written as an exact JSON number (trackers write numbers, not strings)."""
    if cost is None:
        payload[key] = None
        return json.dumps(payload)
    payload[key] = "__COST__"
    return json.dumps(payload).replace('"__COST__"', format(cost, "f"))


def anthropic(r: Record) -> str:
    t = r.tokens
    return json.dumps({
        "id": r.id, "type": "message", "role": "assistant", "model": r.model, "content": [],
        "usage": {"input_tokens": t.uncached_input, "output_tokens": t.output,
                  "cache_read_input_tokens": t.cache_read, "cache_creation_input_tokens": t.cache_write,
                  "cache_creation": {"ephemeral_5m_input_tokens": t.cache_write_5m,
                                     "ephemeral_1h_input_tokens": t.cache_write_1h}},
        "timestamp": r.at.isoformat(), "workspace_id": r.workspace_id,
    })


def jsonl(r: Record) -> str:
    t = r.tokens
    payload: dict[str, object] = {
        "timestamp": r.at.isoformat().replace("+00:00", "Z"), "model": r.model, "input_tokens": t.uncached_input,
        "output_tokens": t.output, "cache_read_tokens": t.cache_read, "cache_write_5m_tokens": t.cache_write_5m,
        "cache_write_1h_tokens": t.cache_write_1h, "event_id": r.id, "workspace_id": r.workspace_id,
    }
    if r.cost is not None:
        payload["cost_usd"] = format(r.cost, "f")
    return json.dumps(payload)


def fluxgate(r: Record) -> str:
    t = r.tokens
    payload: dict[str, object] = {
        "trackingId": r.id, "createdAt": int(r.at.timestamp() * 1000), "status": "SUCCESS", "model": r.model,
        "inputTokens": t.uncached_input, "outputTokens": t.output, "cacheReadTokens": t.cache_read,
        "cacheWriteTokens": t.cache_write, "feature": "chat",
    }
    return _number(payload, r.cost, "cost")


def marginfront(r: Record) -> str:
    t = r.tokens
    metadata: dict[str, object] = {"sessionId": "s1"}
    payload: dict[str, object] = {
        "customerExternalId": "acme", "agentCode": "bot", "signalName": "tokens", "model": r.model,
        "inputTokens": t.uncached_input, "outputTokens": t.output, "cacheReadTokens": t.cache_read,
        "cacheWriteTokens": t.cache_write, "usageDate": r.at.isoformat(), "idempotencyKey": r.id,
        "metadata": metadata,
    }
    if r.cost is None:
        return json.dumps(payload)
    metadata["claudeCodeCostUsd"] = "__COST__"
    return json.dumps(payload).replace('"__COST__"', format(r.cost, "f"))


CSV_HEADER = ("timestamp", "model", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_5m_tokens",
              "cache_write_1h_tokens", "cost_usd", "event_id", "workspace_id")


def csv_text(records: Iterable[Record]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for r in records:
        t = r.tokens
        writer.writerow([r.at.isoformat(), r.model, t.uncached_input, t.output, t.cache_read, t.cache_write_5m,
                         t.cache_write_1h, "" if r.cost is None else format(r.cost, "f"), r.id,
                         r.workspace_id or ""])
    return out.getvalue()


LINE_WRITERS = {"anthropic": anthropic, "jsonl": jsonl, "fluxgate": fluxgate, "marginfront": marginfront}


def write(records: Iterable[Record], fmt: str) -> str:
    """The records as one file's text in format `fmt`."""
    if fmt == "csv":
        return csv_text(records)
    return "".join(LINE_WRITERS[fmt](r) + "\n" for r in records)
