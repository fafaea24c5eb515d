"""Expected daily spend: per-weekday medians of the trailing four weeks, scaled to the last week's level.

Why this method (docs/watch.md argues it at length): API spend has a strong weekly rhythm (weekends
are a fraction of weekdays), so a flat daily average over- or under-projects depending on which days
remain in the period. The median of the four same-weekday values ignores one spike or one outage day
among them all but a rank's worth (the spiked day becomes the largest, so the middle two of four move at
most to the neighbouring sample, however large the spike). The median of
the last seven days' ratios to that profile then carries a recent growth or decline forward, and is
itself unmoved by one spike day. Money stays Decimal; ratios are Decimal divisions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from statistics import median

HISTORY_DAYS = 28
LEVEL_DAYS = 7
ONE_DAY = timedelta(days=1)


@dataclass(frozen=True)
class DayModel:
    """Median spend per weekday (Monday first) and the recent level relative to it."""

    by_weekday: tuple[Decimal, ...]
    level: Decimal

    def expected(self, day: date) -> Decimal:
        return self.by_weekday[day.weekday()] * self.level


NO_HISTORY = DayModel((Decimal(0),) * 7, Decimal(1))


def fit(daily: Mapping[date, Decimal], last: date, known_from: date | None = None) -> DayModel:
    """The model from the `HISTORY_DAYS` days ending at `last` (inclusive) that are on or after `known_from`.

    A day without rows counts as zero spend; days before `known_from` (before the bill's coverage
    starts) are left out. A weekday without any sample in the history takes the median of all days.
    """
    days = [last - timedelta(days=i) for i in range(HISTORY_DAYS)]
    days = [d for d in days if known_from is None or d >= known_from]
    if not days:
        return NO_HISTORY
    value = {d: daily.get(d, Decimal(0)) for d in days}
    overall = median(value.values())
    profile = []
    for weekday in range(7):
        samples = [v for d, v in value.items() if d.weekday() == weekday]
        profile.append(median(samples) if samples else overall)
    recent = [d for d in days if d > last - timedelta(days=LEVEL_DAYS)]
    ratios = [value[d] / profile[d.weekday()] for d in recent if profile[d.weekday()] > 0]
    return DayModel(tuple(profile), median(ratios) if ratios else Decimal(1))


def projection(model: DayModel, first: date, end: date) -> Decimal:
    """Expected spend over `[first, end)`."""
    total = Decimal(0)
    day = first
    while day < end:
        total += model.expected(day)
        day += ONE_DAY
    return total
