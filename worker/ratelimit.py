"""The per-organization request budget: a GCRA token bucket whose state lives in the database.

Every process using the same database (the `run` scheduler, a `sync-now` beside it, replicas on
PostgreSQL) reserves its next request slot with one atomic UPDATE ... RETURNING, so no restart or
second process can burst past the budget. A reservation is never given back: a process that dies
while waiting leaves a slot unused, which errs on the polite side.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from worker.clock import Clock
from worker.storage.types import driver_marker


def org_bucket(organization_id: str) -> str:
    return f"org:{organization_id}"


class RateBudget:
    """GCRA parameters: `requests_per_minute` sustained, up to `burst` requests back to back."""

    def __init__(self, requests_per_minute: float, burst: int = 1) -> None:
        if requests_per_minute <= 0 or burst < 1:
            raise ValueError("requests_per_minute must be > 0 and burst >= 1")
        self.interval = 60.0 / requests_per_minute
        self.tolerance = (burst - 1) * self.interval


def _settle_in(conn: Connection, bucket: str, floor: float) -> None:
    """Push the bucket's next slot to at least `floor` (see `settle`), in `conn`'s transaction; driver SQL, as
    every stored page's reservation runs it."""
    mark = driver_marker(conn)
    conn.exec_driver_sql(f"UPDATE rate_buckets SET tat = {mark} WHERE bucket = {mark} AND tat < {mark}",
                         (floor, bucket, floor))


def settle(engine: Engine, bucket: str, budget: RateBudget, finished_at: float) -> None:
    """Space the next request from when this one finished, not from when its slot was reserved.

    The server counts a request when it arrives; arrival lags the reserved slot by a varying delay
    (connection set-up, scheduling), so slots exactly one interval apart can reach the server closer
    than that and draw a 429. A request has surely arrived by the time its answer is back, so
    pushing the next slot to at least `finished_at + interval` keeps arrivals an interval apart.
    """
    with engine.begin() as conn:
        _settle_in(conn, bucket, finished_at + budget.interval)


def reserve(engine: Engine, bucket: str, budget: RateBudget, now: float, settled: float | None = None) -> float:
    """Reserve the bucket's next slot; returns how many seconds to wait before sending (0 = now)."""
    return reserve_slot(engine, bucket, budget, now, settled)[0]


def reserve_slot(engine: Engine, bucket: str, budget: RateBudget, now: float,
                 settled: float | None = None) -> tuple[float, float]:
    """`reserve`, also returning the bucket's state after it (what `release_unused` compares against).

    `settled` is the previous request's `settle` floor (its answer's time + interval), written in the same
    transaction: one transaction per request instead of two.
    """
    with engine.begin() as conn:
        return reserve_in(conn, bucket, budget, now, settled)


def reserve_in(conn: Connection, bucket: str, budget: RateBudget, now: float,
               settled: float | None = None) -> tuple[float, float]:
    """`reserve_slot` in the caller's transaction (a sync's page store: one transaction fewer per request).

    Driver SQL, the bucket's row made only when the reservation finds none: every stored page runs this."""
    mark = driver_marker(conn)
    if settled is not None:
        _settle_in(conn, bucket, settled)
    reserve = (f"UPDATE rate_buckets SET tat = (CASE WHEN tat > {mark} THEN tat ELSE {mark} END) + {mark} "
               f"WHERE bucket = {mark} RETURNING tat")
    args = (now, now, budget.interval, bucket)
    found = conn.exec_driver_sql(reserve, args).fetchone()
    if found is None:  # the bucket's first request ever (its settle, if any, had no row to move either)
        conn.exec_driver_sql(f"INSERT INTO rate_buckets (bucket, tat) VALUES ({mark}, 0) ON CONFLICT (bucket) "
                             "DO NOTHING", (bucket,))
        if settled is not None:
            _settle_in(conn, bucket, settled)
        tat = float(conn.exec_driver_sql(reserve, args).scalar_one())
    else:
        tat = float(found[0])
    allowed_at = tat - budget.interval - budget.tolerance
    return max(0.0, allowed_at - now), tat


_RELEASE = text("UPDATE rate_buckets SET tat = :before WHERE bucket = :bucket AND tat = :tat")


def release_unused(engine: Engine, bucket: str, budget: RateBudget, tat: float) -> bool:
    """Give back the slot that left the bucket at `tat`, if nobody reserved or settled after it.

    For a request that never reached the server (no connection could be made): it spent nothing of
    the organization's allowance there, and keeping its slot would make the next attempt (a corrected
    base URL, a second `test-connection`) wait a whole interval for nothing. Compare-and-set on `tat`,
    so a slot reserved since is never undercut. Returns whether it was given back.
    """
    with engine.begin() as conn:
        result = conn.execute(_RELEASE, {"before": tat - budget.interval, "bucket": bucket, "tat": tat})
    return bool(result.rowcount)


@dataclass(frozen=True)
class Ahead:
    """A slot reserved before its request: when it opens (clock time), the bucket's state after it, and the
    settle floor written with it."""

    opens_at: float
    tat: float
    settled: float | None


class OrgGate:
    """A RequestGate (see worker.api.client) over one bucket: waits for a reserved slot via the injected clock.

    `run` runs the blocking database calls off the event loop (default `asyncio.to_thread`; the service
    passes `App.db`, its own database threads)."""

    def __init__(self, engine: Engine, bucket: str, budget: RateBudget, clock: Clock,
                 run: Callable[..., Awaitable[Any]] = asyncio.to_thread) -> None:
        self.engine, self.bucket, self.budget, self.clock, self.run = engine, bucket, budget, clock, run
        self._slot: float | None = None  # the bucket's state after the last reservation
        self._settled: float | None = None  # the last answer's settle floor, not yet written
        self._ahead: Ahead | None = None  # the next request's slot, reserved in a caller's transaction

    @property
    def waits_for(self) -> str:
        """What a wait at this gate is for, in wait messages (the first request of a connection test is
        counted against its key until the organization is known)."""
        whose = "the organization's" if self.bucket.startswith("org:") else "this key's"
        return f"{whose} request budget (COST_WORKER_REQUESTS_PER_MINUTE)"

    async def acquire(self) -> float:
        wait: float
        if self._ahead is not None:  # reserved with the last page's store: no transaction of its own
            ahead, self._ahead = self._ahead, None
            self._slot = ahead.tat
            wait = max(0.0, ahead.opens_at - self.clock.time())
            if wait > 0:
                await self.clock.sleep(wait)
            return wait
        settled, self._settled = self._settled, None
        wait, self._slot = await self.run(reserve_slot, self.engine, self.bucket, self.budget, self.clock.time(),
                                          settled)
        if wait > 0:
            await self.clock.sleep(wait)
        return wait

    async def done(self) -> None:
        """Called when a request sent through this gate has its answer (or failed). Its settle is written with
        the next reservation (a sync's next request follows at once), or by `flush`/`close` at the end."""
        self._settled = self.clock.time() + self.budget.interval

    def reserve_ahead(self, conn: Connection) -> Ahead | None:
        """Reserve the next request's slot in `conn`'s transaction, with the pending settle, exactly as `acquire`
        would (the next request follows at once). Nothing changes here until the caller, once that transaction
        has committed, passes the result to `hold`. None when a slot is already held."""
        if self._ahead is not None:
            return None
        now = self.clock.time()
        wait, tat = reserve_in(conn, self.bucket, self.budget, now, self._settled)
        return Ahead(now + wait, tat, self._settled)

    def hold(self, ahead: Ahead | None) -> None:
        """Keep a committed `reserve_ahead` for the next `acquire` (its settle is written)."""
        if ahead is not None:
            self._ahead = ahead
            if self._settled == ahead.settled:
                self._settled = None

    def release_ahead(self, conn: Connection) -> None:
        """Give back a slot reserved ahead and never used (the run ended), in `conn`'s transaction; like
        `release_unused`, only if nobody reserved or settled since."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            conn.execute(_RELEASE, {"before": ahead.tat - self.budget.interval, "bucket": self.bucket,
                                    "tat": ahead.tat})

    def flush(self, conn: Connection | None = None) -> None:
        """Write a pending settle (in `conn`'s transaction when given): the end of a sync."""
        floor, self._settled = self._settled, None
        if floor is None:
            return
        if conn is not None:
            _settle_in(conn, self.bucket, floor)
        else:
            with self.engine.begin() as own:
                _settle_in(own, self.bucket, floor)

    async def close(self) -> None:
        """`flush` on a database thread."""
        if self._settled is not None:
            await self.run(self.flush)

    async def unused(self) -> None:
        """Called instead of `done` when the request never reached the server (see `release_unused`)."""
        if self._slot is not None:
            await self.run(release_unused, self.engine, self.bucket, self.budget, self._slot)
            self._slot = None

    def charge(self) -> float:
        """Record a request already sent outside this gate (the /me call made before the org was known)."""
        return reserve(self.engine, self.bucket, self.budget, self.clock.time())

    def __repr__(self) -> str:
        return f"OrgGate({self.bucket!r})"
