"""Day arithmetic. Days are UTC dates; windows are inclusive [first, last] at the edges of the
product (reports, run records) and half-open [start, end) toward the API."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

ONE_DAY = timedelta(days=1)


def window_ending(today: date, days: int) -> tuple[date, date]:
    """The last `days` days up to and including today: a tier's backfill, or the daily re-read window."""
    return today - timedelta(days=days - 1), today


def chunks(first: date, last: date, size: int) -> list[tuple[date, date]]:
    """[first, last] cut into half-open [start, end) pieces of at most `size` days."""
    out = []
    start = first
    while start <= last:
        end = min(start + timedelta(days=size), last + ONE_DAY)
        out.append((start, end))
        start = end
    return out


def latest_slot(now: datetime, at: time) -> datetime:
    """The most recent daily slot (e.g. 06:00 UTC) at or before `now`."""
    today_slot = datetime.combine(now.astimezone(UTC).date(), at, tzinfo=UTC)
    return today_slot if today_slot <= now else today_slot - ONE_DAY


def days_between(first: date, last: date) -> int:
    return (last - first).days + 1 if last >= first else 0
