"""Paging strategies: one page loop in the client (`AdminApiClient._pages`), one small object per scheme.

A strategy says what a (re)start of its window asks for (`start`), how a cursor is followed
(`update_request`), what a page body means and whether it keeps the contract (`update_state`, which
returns the page to yield or raises ProtocolViolation), whether a rejected request can be recovered by
restarting the window (`restart`), and what must hold once the API says it is done (`finish`).

- `BucketPaging`: the legacy reports. One bucket per day, empty days included, `limit` days a page,
  decoded by its `decode` (worker.api.models); `CursorPaginator` follows `next_page`, `DayCoverage`
  checks the days. "Response too large" halves `limit` and restarts from the first day not yet delivered.
- `RowPaging`: the Analytics API. Rows, not buckets, `limit` rows a page (fan-out rows do not count),
  asked in time order (`order_by=time&order=asc`) so each page completes the days before its last
  row's day: a page yields exactly those days (empty ones included) and holds the last day's rows back
  until it is complete. A 410 or an invalid cursor restarts the window from the first incomplete day
  (a few times at most); a row outside the window or out of time order is a violation.
- `ListPaging`: the directory lists (`api_keys`, `workspaces`), `after_id=<last_id>`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

from worker.api.errors import CursorRejected, ProtocolViolation, RequestRejected, ResponseTooLarge
from worker.api.models import DayBucket, Page, ReportBody

Params = list[tuple[str, str | int]]
RowT = TypeVar("RowT")
PageT = TypeVar("PageT", covariant=True)
ItemT = TypeVar("ItemT")

ONE_DAY = timedelta(days=1)
MAX_IDLE_PAGES = 3  # has_more pages that bring nothing: tolerated a few times, never forever
MAX_RESTARTS = 3  # expired or refused cursors per window before giving up


def _timestamp(day: date) -> str:
    return f"{day.isoformat()}T00:00:00Z"


class Paging(Protocol[PageT]):
    """A paging scheme driven by `AdminApiClient._pages` (see the module docstring)."""

    has_next_page: bool

    def start(self) -> Params: ...

    def update_request(self, params: Params) -> Params: ...

    def update_state(self, body: Any, request_id: str | None) -> PageT: ...

    def restart(self, error: RequestRejected) -> bool: ...

    def finish(self) -> None: ...


class CursorPaginator:
    """Follows `has_more`/`next_page`. The cursor is opaque: it is sent back verbatim, never parsed."""

    def __init__(self) -> None:
        self._cursor: str | None = None
        self._seen: set[str] = set()
        self.has_next_page = True

    def update_state(self, body: Mapping[str, Any]) -> None:
        self.advance(body.get("has_more"), body.get("next_page"))

    def advance(self, has_more: object, cursor: object) -> None:
        if not isinstance(has_more, bool):
            raise ProtocolViolation(f"has_more must be a boolean, got {type(has_more).__name__}")
        if not has_more:
            self.has_next_page = False
            self._cursor = None
            return
        if not isinstance(cursor, str) or not cursor:
            # Stopping here would silently call a partial window complete.
            raise ProtocolViolation("has_more is true but next_page is missing or empty")
        if cursor in self._seen:
            raise ProtocolViolation("the API sent a page cursor it had sent before (a pagination loop)")
        self._seen.add(cursor)
        self._cursor = cursor

    def update_request(self, params: Sequence[tuple[str, str | int]], name: str = "page") -> Params:
        """The same parameters, plus the cursor (as `name`) when following one."""
        out = [(k, v) for k, v in params if k != name]
        if self._cursor is not None:
            out.append((name, self._cursor))
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
        return self.start if self._last is None else self._last + ONE_DAY

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


class BucketPaging(Generic[RowT]):
    """The legacy reports' daily buckets over `[start, end)`."""

    def __init__(self, base: Params, start: date, end: date, today: date, limit: int,
                 decode_page: Callable[[bytes, int], ReportBody[RowT]]) -> None:
        self.base, self.end, self.limit, self.decode_page = base, end, limit, decode_page
        self.coverage = DayCoverage(start, end, today)
        self.paginator = CursorPaginator()
        self.has_next_page = True
        self._idle = 0

    def decode(self, content: bytes) -> ReportBody[RowT]:
        """A page body, at most `limit` buckets (the client's `decode=`)."""
        return self.decode_page(content, self.limit)

    def start(self) -> Params:
        # A restart never reuses a cursor: it asks again from the first day not yet yielded.
        self.paginator = CursorPaginator()
        self.has_next_page = self.coverage.resume_day < self.end
        self._idle = 0
        return [*self.base, ("starting_at", _timestamp(self.coverage.resume_day)),
                ("ending_at", _timestamp(self.end)), ("limit", self.limit)]

    def update_request(self, params: Params) -> Params:
        return self.paginator.update_request(params)

    def update_state(self, body: ReportBody[RowT], request_id: str | None) -> Page[RowT]:
        buckets = body.buckets
        self.coverage.accept([b.day for b in buckets])
        self.paginator.advance(body.has_more, body.next_page)
        self.has_next_page = self.paginator.has_next_page
        self._idle = 0 if buckets else self._idle + 1
        if self._idle > MAX_IDLE_PAGES:
            raise ProtocolViolation(f"{self._idle} pages in a row without a bucket")
        return Page(buckets=buckets, request_id=request_id, limit=self.limit)

    def restart(self, error: RequestRejected) -> bool:
        if isinstance(error, ResponseTooLarge) and self.limit > 1:
            self.limit = max(1, self.limit // 2)
            return True
        return False

    def finish(self) -> None:
        self.coverage.finish()


class DayRow(Protocol):
    """A parsed analytics row: its UTC day and its key without the cost_type/token_type fan-out."""

    @property
    def day(self) -> date: ...

    @property
    def base_key(self) -> tuple[Any, ...]: ...


DayRowT = TypeVar("DayRowT", bound=DayRow)


@dataclass(frozen=True, slots=True)
class RowsBody(Generic[DayRowT]):
    """A decoded Analytics API page."""

    rows: list[DayRowT]
    has_more: bool
    next_page: str | None
    refreshed_at: datetime | None


class RowPaging(Generic[DayRowT]):
    """The Analytics API's rows over `[start, end)`, in daily buckets, yielded as complete days."""

    def __init__(self, base: Params, start: date, end: date, limit: int) -> None:
        self.base, self.window_start, self.end, self.limit = base, start, end, limit
        self.resume_day = start  # the first day not yet yielded
        self.paginator = CursorPaginator()
        self.has_next_page = start < end
        self.restarts = 0
        self._held: list[DayRowT] = []  # rows of the day the last page ended in (it may go on)
        self._held_day: date | None = None
        self._idle = 0

    def start(self) -> Params:
        self.paginator = CursorPaginator()
        self.has_next_page = self.resume_day < self.end
        self._held, self._held_day, self._idle = [], None, 0
        return [*self.base, ("starting_at", _timestamp(self.resume_day)), ("ending_at", _timestamp(self.end)),
                ("time_bucket_width", "1d"), ("order_by", "time"), ("order", "asc"), ("limit", self.limit)]

    def update_request(self, params: Params) -> Params:
        return self.paginator.update_request(params)

    def update_state(self, body: RowsBody[DayRowT], request_id: str | None) -> Page[DayRowT]:
        window = f"[{self.window_start}, {self.end})"
        base_rows = {(r.day, r.base_key) for r in body.rows}
        if len(base_rows) > self.limit:
            raise ProtocolViolation(f"page holds {len(base_rows)} rows, more than limit={self.limit}")
        floor = self._held_day if self._held_day is not None else self.resume_day
        by_day: dict[date, list[DayRowT]] = {}
        last = floor
        for row in body.rows:
            day = row.day
            if not self.window_start <= day < self.end:
                raise ProtocolViolation(f"row of {day} is outside the requested window {window}")
            if day < last:
                raise ProtocolViolation(f"row of {day} arrived after one of {last}: rows must be in time order"
                                        if day >= self.resume_day else
                                        f"row of {day} arrived after that day was complete")
            last = day
            by_day.setdefault(day, []).append(row)
        self.paginator.advance(body.has_more, body.next_page)
        self.has_next_page = self.paginator.has_next_page
        if self._held_day is not None:
            by_day[self._held_day] = self._held + by_day.get(self._held_day, [])
        if self.has_next_page:
            # Days before the last row's day are complete; that day may go on on the next page.
            pending = last if body.rows else self._held_day
            complete_until = pending if pending is not None else self.resume_day
            self._held = by_day.pop(pending, []) if pending is not None else []
            self._held_day = pending
        else:
            complete_until, self._held, self._held_day = self.end, [], None
        days = []
        day = self.resume_day
        while day < complete_until:
            days.append(DayBucket(day=day, rows=tuple(by_day.get(day, ()))))
            day += ONE_DAY
        self.resume_day = max(self.resume_day, complete_until)
        self._idle = 0 if body.rows else self._idle + 1
        if self._idle > MAX_IDLE_PAGES:
            raise ProtocolViolation(f"{self._idle} pages in a row without a row")
        return Page(buckets=tuple(days), request_id=request_id, limit=self.limit, refreshed_at=body.refreshed_at)

    def restart(self, error: RequestRejected) -> bool:
        if isinstance(error, CursorRejected) and self.restarts < MAX_RESTARTS:
            self.restarts += 1  # resumes at the first day not yet complete, without a cursor
            return True
        if isinstance(error, ResponseTooLarge) and self.limit > 1:
            self.limit = max(1, self.limit // 2)
            return True
        return False

    def finish(self) -> None:
        if self._held:  # pragma: no cover - update_state releases them on the last page
            raise ProtocolViolation("the window ended with rows of an unfinished day")


@dataclass(frozen=True, slots=True)
class ListPage(Generic[ItemT]):
    items: tuple[ItemT, ...]
    request_id: str | None


class ListPaging(Generic[ItemT]):
    """`data`/`has_more`/`last_id` lists, followed with `after_id`."""

    def __init__(self, base: Params, parse_item: Callable[[object], ItemT], limit: int = 1000) -> None:
        self.base, self.parse_item, self.limit = base, parse_item, limit
        self.paginator = CursorPaginator()
        self.has_next_page = True
        self._idle = 0

    def start(self) -> Params:
        self.paginator = CursorPaginator()
        self.has_next_page = True
        return [*self.base, ("limit", self.limit)]

    def update_request(self, params: Params) -> Params:
        return self.paginator.update_request(params, name="after_id")

    def update_state(self, body: Any, request_id: str | None) -> ListPage[ItemT]:
        if not isinstance(body, Mapping) or not isinstance(body.get("data"), list):
            raise ProtocolViolation("list body must be a JSON object with a data list")
        data = body["data"]
        if len(data) > self.limit:
            raise ProtocolViolation(f"page holds {len(data)} items, more than limit={self.limit}")
        self.paginator.advance(body.get("has_more"), body.get("last_id"))
        self.has_next_page = self.paginator.has_next_page
        self._idle = 0 if data else self._idle + 1
        if self._idle > MAX_IDLE_PAGES:
            raise ProtocolViolation(f"{self._idle} pages in a row without an item")
        return ListPage(tuple(self.parse_item(item) for item in data), request_id)

    def restart(self, error: RequestRejected) -> bool:
        return False

    def finish(self) -> None:
        return None
