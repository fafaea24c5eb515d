"""What a sync reads: an integration's streams and the days each one covers.

A stream is one report read per UTC day: the legacy `cost` and `usage` reports, and the Analytics API's
cost and usage, once per grouping (`main`: the configured `group_by[]`; `product`: model and product,
for `report --by product`). Which streams an integration has follows its source:

- `legacy`: the legacy reports for every day of the backfill window and after;
- `both`: the legacy reports as above, and the Analytics API for the days it has (from 2026-01-01, at
  most 365 days back);
- `analytics`: the Analytics API for the days it has, and the legacy reports only for the days before
  (the legacy bill stays the bill of record there).

Wherever the Analytics API refuses the organization (HIPAA readiness: a 400), the legacy reports cover
every day and the refusal is recorded (`analytics_state`, the integration's `last_error`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from worker.api.analytics import EARLIEST, HISTORY_DAYS
from worker.settings import Settings
from worker.storage.analytics import MAIN, PRODUCT

Source = Literal["legacy", "analytics", "both"]
SOURCES: tuple[Source, ...] = ("legacy", "analytics", "both")
ONE_DAY = timedelta(days=1)


@dataclass(frozen=True)
class Stream:
    name: str  # cost | usage | a_cost | a_usage | a_cost_product | a_usage_product
    endpoint: Literal["cost", "usage"]
    grouping: str | None = None  # None: the legacy reports
    group_by: tuple[str, ...] = ()

    @property
    def analytics(self) -> bool:
        return self.grouping is not None


LEGACY_STREAMS = (Stream("cost", "cost"), Stream("usage", "usage"))


def analytics_streams(settings: Settings) -> tuple[Stream, ...]:
    streams = [Stream("a_cost", "cost", MAIN, tuple(settings.analytics_cost_group_by)),
               Stream("a_usage", "usage", MAIN, tuple(settings.analytics_usage_group_by))]
    if settings.analytics_product_report:
        streams += [Stream("a_cost_product", "cost", PRODUCT, ("model", "product")),
                    Stream("a_usage_product", "usage", PRODUCT, ("model", "product"))]
    return tuple(streams)


def analytics_floor(today: date) -> date:
    """The first day the Analytics API serves today: 2026-01-01, or 364 days ago if later."""
    return max(EARLIEST, today - timedelta(days=HISTORY_DAYS - 1))


def uses_analytics(source: str, refused: bool) -> bool:
    return source in ("analytics", "both") and not refused


def legacy_last_day(source: str, refused: bool, backfill_end: date, analytics_first: date) -> date:
    """The last backfill day of the legacy reports: all of them, unless the Analytics API is the source."""
    if source == "analytics" and not refused:
        return min(backfill_end, analytics_first - ONE_DAY)
    return backfill_end


def legacy_reread(source: str, refused: bool, first: date, last: date, analytics_first: date,
                  ) -> tuple[date, date] | None:
    """The part of a re-read window `[first, last]` the legacy reports cover."""
    if source == "analytics" and not refused:
        last = min(last, analytics_first - ONE_DAY)
    return (first, last) if first <= last else None


__all__ = ["LEGACY_STREAMS", "SOURCES", "Source", "Stream", "analytics_floor", "analytics_streams",
           "legacy_last_day", "legacy_reread", "uses_analytics"]
