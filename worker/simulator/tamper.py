"""Page faults: a report page, once built, changed the way a broken or newer API might answer.

Only pages hit by a page fault (see ``faults``) are parsed and re-serialized here; every other page
goes out exactly as ``reports`` rendered it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from worker.simulator.faults import Fault

# A cost row of a type the worker has never seen; its amount is deliberately not in the truth.
NOVEL_COST_ROW: dict[str, Any] = {
    "amount": "0.0125", "currency": "USD", "workspace_id": None, "description": "Claude Agent Session",
    "cost_type": "session_usage_v2", "model": None, "token_type": "brand_new_token_type",
    "service_tier": "flex", "context_window": None, "inference_geo": None, "billing_unit": "session-hour",
}  # fmt: skip


class PageView:
    """A parsed page, to decide which faults apply and then to change it."""

    def __init__(self, body: bytes, *, cost: bool, cursor: str | None) -> None:
        self.page: dict[str, Any] = json.loads(body)
        self.cost = cost
        self.cursor = cursor
        self.days = {_day(b["starting_at"]) for b in self.page["data"]}

    def applies(self, fault: Fault) -> bool:
        kind = fault.kind
        if kind in ("missing-day", "duplicate-day"):
            return fault.day in self.days
        if kind == "empty-next-page":
            return bool(self.page["has_more"])
        if kind == "repeat-next-page":
            return self.cursor is not None and bool(self.page["has_more"])
        if kind == "bad-amount":
            return self.cost and any(b["results"] for b in self.page["data"])
        return True

    def render(self, faults: Sequence[Fault]) -> bytes:
        page = self.page
        for fault in faults:
            kind = fault.kind
            if kind == "no-next-page":
                page["has_more"], page["next_page"] = True, None
            elif kind == "empty-next-page":
                page["next_page"] = ""
            elif kind == "repeat-next-page":
                page["next_page"] = self.cursor
            elif kind in ("missing-day", "duplicate-day"):
                buckets: list[dict[str, Any]] = []
                for bucket in page["data"]:
                    copies = 1 if _day(bucket["starting_at"]) != fault.day else 0 if kind == "missing-day" else 2
                    buckets.extend(bucket if i == 0 else copy.deepcopy(bucket) for i in range(copies))
                page["data"] = buckets
            elif kind == "bad-amount":
                first = next(b for b in page["data"] if b["results"])
                first["results"][0]["amount"] = fault.amount
            elif kind == "novel-fields":
                for bucket in page["data"]:
                    if self.cost and bucket["results"]:
                        bucket["results"].append(dict(NOVEL_COST_ROW))
                    elif not self.cost:
                        for row in bucket["results"]:
                            row["cache_creation"]["ephemeral_30m_input_tokens"] = 7
                            row["server_tool_use"]["code_execution_requests"] = 2
                            row["brand_new_field"] = {"nested": [1, 2]}
        return json.dumps(page, separators=(",", ":")).encode()


def _day(stamp: str) -> date:
    return datetime.fromisoformat(stamp).date()
