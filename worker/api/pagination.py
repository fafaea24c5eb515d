"""Cursor pagination and day coverage for the daily report endpoints.

Two small state objects keep the page loop in the client short: `CursorPaginator` follows the opaque
`next_page` cursor and refuses a broken chain; `DayCoverage` checks that buckets arrive in order, once each,
inside the window, and that no past day is missing when the API says it is done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from worker.api.errors import ProtocolViolation

Params = list[tuple[str, str | int]]


class CursorPaginator:
    """Follows `has_more`/`next_page`. The cursor is opaque: it is sent back verbatim, never parsed."""

    def __init__(self) -> None:
        self._cursor: str | None = None
        self._seen: set[str] = set()
        self.has_next_page = True

    def update_state(self, body: Mapping[str, Any]) -> None:
        has_more = body.get("has_more")
        if not isinstance(has_more, bool):
            raise ProtocolViolation(f"has_more must be a boolean, got {type(has_more).__name__}")
        if not has_more:
            self.has_next_page = False
            self._cursor = None
            return
        cursor = body.get("next_page")
        if not isinstance(cursor, str) or not cursor:
            # Stopping here would silently call a partial window complete.
            raise ProtocolViolation("has_more is true but next_page is missing or empty")
        if cursor in self._seen:
            raise ProtocolViolation("the API sent a page cursor it had sent before (a pagination loop)")
        self._seen.add(cursor)
        self._cursor = cursor

    def update_request(self, params: Sequence[tuple[str, str | int]]) -> Params:
        """The same parameters, plus `page` when following a cursor."""
        out = [(k, v) for k, v in params if k != "page"]
        if self._cursor is not None:
            out.append(("page", self._cursor))
        return out


class DayCoverage:
    """Which days of `[start, end)` the API has delivered; `today` and later may still be absent."""

    def __init__(self, start: date, end: date, today: date) -> None:
        self.start, self.end, self.today = start, end, today
        self._seen: set[date] = set()
        self._last: date | None = None

    @property
    def resume_day(self) -> date:
        """The first day not yet delivered after the last delivered one (where a restart begins)."""
        return self.start if self._last is None else self._last + timedelta(days=1)

    def accept(self, days: Sequence[date]) -> None:
        window = f"[{self.start}, {self.end})"
        for day in days:
            if not self.start <= day < self.end:
                raise ProtocolViolation(f"bucket {day} is outside the requested window {window}")
            if day in self._seen:
                raise ProtocolViolation(f"bucket {day} appeared twice in the window {window}")
            if self._last is not None and day < self._last:
                raise ProtocolViolation(f"bucket {day} arrived after {self._last}: buckets must be ascending")
            self._seen.add(day)
            self._last = day

    def missing(self) -> list[date]:
        last = min(self.end, self.today)
        days = (self.start + timedelta(days=i) for i in range(max(0, (last - self.start).days)))
        return [d for d in days if d not in self._seen]

    def finish(self) -> None:
        """Called once the API says there is nothing more: every past day must have come."""
        missing = self.missing()
        if missing:
            shown = ", ".join(d.isoformat() for d in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise ProtocolViolation(
                f"the API reported the window [{self.start}, {self.end}) complete but {len(missing)} "
                f"day(s) never appeared: {shown}{more}"
            )
