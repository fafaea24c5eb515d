"""The per-organization request budget, state in the database, driven by a fake clock (no real sleeps)."""

from __future__ import annotations

import asyncio

import pytest

from worker.clock import FakeClock
from worker.ratelimit import OrgGate, RateBudget, reserve
from worker.storage.db import make_engine


def _acquire_many(gate: OrgGate, n: int) -> list[float]:
    async def go() -> list[float]:
        return [await gate.acquire() for _ in range(n)]
    return asyncio.run(go())


class TestGate:
    @pytest.mark.parametrize(("rpm", "burst", "expected"), [
        (1.0, 1, [0, 60, 60, 60, 60]),
        (1.0, 3, [0, 0, 0, 60, 60]),
        (60.0, 1, [0, 1, 1, 1, 1]),
        (0.5, 2, [0, 0, 120, 120, 120]),
    ])
    def test_spacing(self, engine, rpm: float, burst: int, expected: list[float]) -> None:
        """Waits follow the budget exactly: `burst` back to back, then one every 60/rpm seconds."""
        clock = FakeClock(1_000_000.0)
        waits = _acquire_many(OrgGate(engine, "org:a", RateBudget(rpm, burst), clock), 5)
        assert waits == pytest.approx(expected)
        assert clock.time() == pytest.approx(1_000_000.0 + sum(expected))

    def test_refills_when_idle(self, engine) -> None:
        """After a quiet period the next request goes at once."""
        clock = FakeClock(1_000_000.0)
        gate = OrgGate(engine, "org:a", RateBudget(1.0, 1), clock)
        _acquire_many(gate, 1)
        clock.advance(61)
        assert _acquire_many(gate, 1) == [0]

    def test_buckets_are_per_organization(self, engine) -> None:
        """Two organizations never wait for each other."""
        clock = FakeClock(1_000_000.0)
        a = OrgGate(engine, "org:a", RateBudget(1.0, 1), clock)
        b = OrgGate(engine, "org:b", RateBudget(1.0, 1), clock)
        assert _acquire_many(a, 1) == [0]
        assert _acquire_many(b, 1) == [0]

    def test_shared_across_processes_and_restarts(self, db_url: str, engine) -> None:
        """A second engine on the same database (another process, or a restart) sees the first one's request."""
        clock = FakeClock(1_000_000.0)
        budget = RateBudget(1.0, 1)
        assert _acquire_many(OrgGate(engine, "org:a", budget, clock), 1) == [0]
        other = make_engine(db_url)
        try:
            assert _acquire_many(OrgGate(other, "org:a", budget, clock), 1) == [pytest.approx(60)]
            # and the first one now queues behind the second's reservation
            assert reserve(engine, "org:a", budget, clock.time()) == pytest.approx(60)
        finally:
            other.dispose()

    def test_concurrent_waiters_queue(self, engine) -> None:
        """Concurrent requests to one organization are spaced, never sent together."""
        clock = FakeClock(1_000_000.0)
        budget = RateBudget(1.0, 1)
        offsets = sorted(reserve(engine, "org:a", budget, clock.time()) for _ in range(4))
        assert offsets == pytest.approx([0, 60, 120, 180])

    def test_next_slot_counts_from_the_answer(self, engine) -> None:
        """A slow request (connection set-up, latency) pushes the next one to a full interval after its answer."""
        clock = FakeClock(1_000_000.0)
        gate = OrgGate(engine, "org:a", RateBudget(1.0, 1), clock)

        async def go() -> list[float]:
            first = await gate.acquire()
            clock.advance(0.7)  # the request takes 0.7 s to answer
            await gate.done()
            return [first, await gate.acquire()]

        assert asyncio.run(go()) == [0, pytest.approx(60)]  # 60 s after the answer, not 59.3 after the slot
        assert clock.time() == pytest.approx(1_000_000.0 + 0.7 + 60)

    def test_charge_counts_a_request_made_elsewhere(self, engine) -> None:
        """charge() books a request already sent, so the next one waits its turn."""
        clock = FakeClock(1_000_000.0)
        gate = OrgGate(engine, "org:a", RateBudget(1.0, 1), clock)
        gate.charge()
        assert _acquire_many(gate, 1) == [pytest.approx(60)]


class TestReservedAhead:
    """A sync reserves the next request's slot in its page store's transaction (worker.sync.engine)."""

    def test_a_slot_reserved_ahead_is_the_next_requests_slot(self, engine) -> None:
        """The next `acquire` takes the committed reservation (no reservation of its own: a second one would
        push the bucket a further interval) and waits exactly as long as it would have, settle included."""
        clock = FakeClock(1_000_000.0)
        budget = RateBudget(1.0, 1)
        gate = OrgGate(engine, "org:a", budget, clock)

        async def go() -> list[float]:
            first = await gate.acquire()
            clock.advance(0.7)
            await gate.done()  # the answer: the next slot counts from here
            with engine.begin() as conn:
                ahead = gate.reserve_ahead(conn)
            gate.hold(ahead)
            return [first, await gate.acquire()]

        assert asyncio.run(go()) == [0, pytest.approx(60)]
        assert clock.time() == pytest.approx(1_000_000.0 + 0.7 + 60)
        # one slot each: a third request (another process) queues one interval behind the second
        assert reserve(engine, "org:a", budget, clock.time()) == pytest.approx(60)

    def test_a_rolled_back_reservation_is_not_held(self, engine) -> None:
        """A page store that rolls back takes its reservation with it: the gate reserves normally again."""
        clock = FakeClock(1_000_000.0)
        budget = RateBudget(1.0, 1)
        gate = OrgGate(engine, "org:a", budget, clock)
        with pytest.raises(RuntimeError), engine.begin() as conn:
            gate.reserve_ahead(conn)
            raise RuntimeError("the store failed")
        assert _acquire_many(gate, 1) == [0]  # nothing was reserved: the bucket is full

    def test_an_unused_slot_is_given_back_unless_reserved_since(self, engine) -> None:
        """The run ended after its last page: its slot goes back to the bucket, unless another reservation came
        after it (then it stays used: the polite side)."""
        clock = FakeClock(1_000_000.0)
        budget = RateBudget(1.0, 1)
        gate = OrgGate(engine, "org:a", budget, clock)
        assert _acquire_many(gate, 1) == [0]
        clock.advance(60)
        with engine.begin() as conn:
            gate.hold(gate.reserve_ahead(conn))
        with engine.begin() as conn:
            gate.release_ahead(conn)
        assert reserve(engine, "org:a", budget, clock.time()) == 0  # given back: the next request goes at once
        clock.advance(60)
        with engine.begin() as conn:
            gate.hold(gate.reserve_ahead(conn))
        assert reserve(engine, "org:a", budget, clock.time()) == pytest.approx(60)  # another process, after it
        with engine.begin() as conn:
            gate.release_ahead(conn)
        assert reserve(engine, "org:a", budget, clock.time()) == pytest.approx(120)  # nothing was given back


def test_budget_rejects_nonsense() -> None:
    """A non-positive rate or zero burst is refused."""
    with pytest.raises(ValueError):
        RateBudget(0, 1)
    with pytest.raises(ValueError):
        RateBudget(1, 0)


class TestUnusedSlot:
    def test_a_request_that_never_connected_gives_its_slot_back(self, engine) -> None:
        """`unused` after `acquire` (no connection was made): the next request goes at once."""
        clock = FakeClock(1_000_000.0)
        gate = OrgGate(engine, "key:abc", RateBudget(1.0, 1), clock)

        async def go() -> list[float]:
            first = await gate.acquire()
            await gate.unused()
            return [first, await gate.acquire()]

        assert asyncio.run(go()) == [0, 0]

    def test_a_slot_reserved_since_is_not_undercut(self, engine) -> None:
        """If another request reserved after ours, giving ours back changes nothing (compare-and-set)."""
        clock = FakeClock(1_000_000.0)
        budget = RateBudget(1.0, 1)
        gate = OrgGate(engine, "org:a", budget, clock)

        async def go() -> None:
            await gate.acquire()
            assert reserve(engine, "org:a", budget, clock.time()) == pytest.approx(60)  # someone else
            await gate.unused()

        asyncio.run(go())
        assert reserve(engine, "org:a", budget, clock.time()) == pytest.approx(120)

    def test_waits_name_their_budget(self, engine) -> None:
        """The connection test's first request waits on its key's budget, everything else on the org's."""
        clock = FakeClock()
        assert "this key's" in OrgGate(engine, "key:abc", RateBudget(1.0), clock).waits_for
        assert "organization's" in OrgGate(engine, "org:a", RateBudget(1.0), clock).waits_for
