"""The events table on SQLite and PostgreSQL: the import sink's counting, what it stores, the
period's sources, the aggregates against the in-memory reference, the covering index, and the
0004 migration."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, delete, func, inspect, select

from alembic import command
from worker.reconcile import GroupBy, TokenCounts, TrackedEvent, aggregate_events, import_events
from worker.reconcile.aggregate import TrackedAggregate
from worker.reconcile.events import EventRow, row_from_event
from worker.reconcile.store import CommittingSink, SqlEventSink, events, sources_between, tracked_aggregates
from worker.storage.db import _alembic_config, make_engine, upgrade

DAY = date(2026, 3, 2)


def row(event_id: str, *, at: str = "2026-03-02 10:00:00.000000", model: str = "m", cost: str = "",
        workspace: str = "", tokens: tuple[int, ...] = (1, 2, 3, 4, 5, 6), extra: str = "") -> EventRow:
    inp, out, read, write_5m, write_1h, unsplit = tokens
    return (event_id, at, "raw-" + model, model, inp, out, read, write_5m, write_1h, unsplit, cost, workspace, "", "",
            extra)


def stored(engine: Engine) -> list[tuple[object, ...]]:
    e = events.c
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(e.source, e.event_id, e.occurred_at, e.day, e.raw_model, e.model, e.uncached_input_tokens,
                   e.cache_write_unsplit_tokens, e.cost_usd, e.workspace_id, e.api_key_id, e.customer, e.extra,
                   e.seen_count).order_by(e.id))]


class TestSink:
    def test_new_rows_and_sightings_are_counted_exactly(self, engine: Engine) -> None:
        """Ids repeated in a batch, ids already stored, id-less rows: new = first sightings only."""
        with engine.connect() as conn:
            sink = CommittingSink(conn)
            assert sink.add("s", [row("a"), row("b"), row("a"), row(""), row("")]) == 4
            assert sink.add("s", [row("b"), row("c"), row("a"), row("c")]) == 1
            assert sink.add("t", [row("a")]) == 1  # another source: another event
            assert sink.add("s", []) == 0
        seen = {(r[0], r[1]): r[-1] for r in stored(engine)}
        assert seen == {("s", "a"): 3, ("s", "b"): 2, ("s", None): 1, ("s", "c"): 2, ("t", "a"): 1}
        assert len(stored(engine)) == 6

    def test_counts_stay_exact_after_deleting_the_newest_rows(self, engine: Engine) -> None:
        """New rows are counted by rowid on SQLite: deleted rows at the top do not confuse it."""
        with engine.connect() as conn:
            sink = CommittingSink(conn)
            sink.add("s", [row(f"e{i}") for i in range(10)])
            with conn.begin():
                conn.execute(delete(events).where(events.c.event_id.in_(["e8", "e9"])))
            assert sink.add("s", [row("e9"), row("e7"), row("e10")]) == 2

    def test_values_are_stored_as_the_column_types_read_them(self, engine: Engine) -> None:
        """'' is NULL, the day is the UTC day, money is the exact decimal, times are aware UTC."""
        with engine.connect() as conn:
            CommittingSink(conn).add("it's", [
                row("x", at="2026-03-02 23:59:59.999999", cost="0.1000000000000000055", workspace="w", extra='{"k":1}'),
                ("", "2026-03-03 00:00:00.000001", "raw", "", 0, 0, 0, 0, 0, 2**63 - 1, "", "", "", "", ""),
            ])
        first, second = stored(engine)
        assert first == ("it's", "x", datetime(2026, 3, 2, 23, 59, 59, 999999, tzinfo=UTC), date(2026, 3, 2),
                         "raw-m", "m", 1, 6, Decimal("0.1000000000000000055"), "w", None, None, '{"k":1}', 1)
        assert second == ("it's", None, datetime(2026, 3, 3, 0, 0, 0, 1, tzinfo=UTC), date(2026, 3, 3), "raw", None,
                          0, 2**63 - 1, None, None, None, None, "", 1)

    def test_strict_sink_rolls_back_with_the_transaction(self, engine: Engine) -> None:
        """SqlEventSink writes in the caller's transaction (--strict: one per file)."""
        with engine.connect() as conn, pytest.raises(RuntimeError), conn.begin():
            SqlEventSink(conn).add("s", [row("a")])
            raise RuntimeError("bad row")
        assert stored(engine) == []

    def test_a_source_with_nul_is_refused(self, engine: Engine) -> None:
        if engine.dialect.name != "sqlite":
            pytest.skip("the source is a literal only in the SQLite statement")
        with engine.connect() as conn, pytest.raises(ValueError, match="NUL"):
            CommittingSink(conn).add("a\x00b", [row("a")])


def _events(rng: random.Random, count: int) -> list[TrackedEvent]:
    models = ["claude-sonnet-4-6", "claude-haiku-4-5-20251001", "Claude-Sonnet-4.6", "acme"]
    result = []
    for _ in range(count):
        at = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(6 * 24 * 60))
        tokens = TokenCounts(*(rng.randrange(0, 1000) for _ in range(6)))
        cost = None if rng.random() < 0.4 else Decimal(rng.randrange(1, 10**6)).scaleb(-rng.randrange(0, 12))
        event_id = None if rng.random() < 0.1 else f"id{rng.randrange(count)}"
        result.append(TrackedEvent(event_id, at, rng.choice(models), tokens, cost,
                                   workspace_id=rng.choice([None, "w1", "w2"]), api_key_id=rng.choice([None, "k1"])))
    return result


class TestAggregates:
    @pytest.fixture
    def loaded(self, engine: Engine) -> dict[str, list[TrackedEvent]]:
        rng = random.Random(11)
        per_source = {"alpha": _events(rng, 700), "beta": _events(rng, 300)}
        with engine.connect() as conn:
            for source, items in per_source.items():
                import_events(items, CommittingSink(conn), source=source, format="jsonl", batch_size=128)
        return per_source

    def test_sources_of_a_period(self, engine: Engine, loaded: dict[str, list[TrackedEvent]]) -> None:
        """Only sources with events on those days; none outside the stored range."""
        with engine.connect() as conn:
            CommittingSink(conn).add("gamma", [row("g", at="2026-04-01 00:00:00.000000")])
            assert sources_between(conn, date(2026, 3, 1), date(2026, 3, 31)) == ["alpha", "beta"]
            assert sources_between(conn, date(2026, 3, 1), date(2026, 4, 1)) == ["alpha", "beta", "gamma"]
            assert sources_between(conn, date(2026, 4, 1), date(2026, 4, 1)) == ["gamma"]
            assert sources_between(conn, date(2025, 1, 1), date(2025, 12, 31)) == []

    @pytest.mark.parametrize("by", list(GroupBy))
    @pytest.mark.parametrize("sources", [None, ["alpha"], ["alpha", "beta"]])
    def test_sql_aggregates_equal_the_reference(self, engine: Engine, loaded: dict[str, list[TrackedEvent]],
                                                by: GroupBy, sources: list[str] | None) -> None:
        """Token sums, unpriced tokens, exact cost sums, events and duplicate ids per cell, any grouping."""
        since, until = date(2026, 3, 2), date(2026, 3, 5)

        def normalize(raw: str) -> str | None:
            return None if raw == "acme" else raw.lower().replace(".", "-")

        expected: dict[tuple[date, str, str | None], TrackedAggregate] = {}
        for source in sources or ["alpha", "beta"]:
            # The first sighting of an id is the stored event (its day decides); later ones are duplicates.
            normalized = [_normalized(e, normalize) for e in loaded[source]]
            for cell, aggregate in aggregate_events(normalized, by).items():
                if not since <= cell[0] <= until:
                    continue
                current = expected.get(cell)
                expected[cell] = aggregate if current is None else current + aggregate
        with engine.connect() as conn:
            got = tracked_aggregates(conn, since, until, sources, by, normalize)
        assert {(a.day, a.model, a.key): a for a in got} == expected

    def test_the_year_query_reads_only_the_covering_index(self, engine: Engine,
                                                          loaded: dict[str, list[TrackedEvent]]) -> None:
        """--by model: SQLite aggregates while scanning ix_events_reconcile, with no sort and no table read."""
        if engine.dialect.name != "sqlite":
            pytest.skip("SQLite's plan")
        statements: list[tuple[str, Any]] = []
        from sqlalchemy import event

        def remember(_conn: object, _cursor: object, statement: str, parameters: Any, *_: object) -> None:
            statements.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", remember)
        try:
            with engine.connect() as conn:
                tracked_aggregates(conn, date(2026, 1, 1), date(2026, 12, 31), ["alpha"])
                statement, parameters = statements[-1]
                plan = " ".join(r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
        finally:
            event.remove(engine, "before_cursor_execute", remember)
        assert "COVERING INDEX ix_events_reconcile" in plan and "TEMP B-TREE" not in plan


def _normalized(event: TrackedEvent, normalize: Callable[[str], str | None]) -> TrackedEvent:
    from dataclasses import replace

    return replace(event, model=normalize(event.raw_model))


class TestMigration:
    def test_0004_replaces_the_index_and_keeps_the_rows(self, db_url: str) -> None:
        """From 0003 with events stored: the covering index replaces (day, source); downgrade restores it."""
        eng = make_engine(db_url)
        try:
            with eng.begin() as conn:
                command.upgrade(_alembic_config(conn), "0003_reconcile_runs")
            with eng.connect() as conn:
                before = {ix["name"] for ix in inspect(conn).get_indexes("events")}
                conn.exec_driver_sql(
                    "INSERT INTO events (source, event_id, occurred_at, day, raw_model, uncached_input_tokens, "
                    "output_tokens, cache_read_tokens, cache_write_5m_tokens, cache_write_1h_tokens, "
                    "cache_write_unsplit_tokens, extra, seen_count) VALUES ('s', 'a', '2026-03-02 00:00:00', "
                    "'2026-03-02', 'm', 1, 0, 0, 0, 0, 0, '', 1)")
                conn.commit()
            upgrade(eng)
            with eng.connect() as conn:
                after = {ix["name"]: ix["column_names"] for ix in inspect(conn).get_indexes("events")}
                assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 1
            assert "ix_events_day_source" in before and "ix_events_day_source" not in after
            assert after["ix_events_reconcile"][:5] == ["source", "day", "raw_model", "seen_count", "cost_usd"]
            with eng.begin() as conn:
                command.downgrade(_alembic_config(conn), "0003_reconcile_runs")
            with eng.connect() as conn:
                assert {ix["name"] for ix in inspect(conn).get_indexes("events")} == before
        finally:
            eng.dispose()


def test_rows_from_events_store_like_the_events(engine: Engine) -> None:
    """A TrackedEvent imported as such and its row are the same stored event."""
    event = TrackedEvent("a", datetime(2026, 3, 2, 5, tzinfo=UTC), "raw", TokenCounts(1), Decimal("1.50"),
                         model="m", workspace_id="w", extra={"b": 1, "a": "x"})
    with engine.connect() as conn:
        assert CommittingSink(conn).add("s", [row_from_event(event)]) == 1
    (stored_row,) = stored(engine)
    assert stored_row[8] == Decimal("1.50") and stored_row[12] == '{"a":"x","b":1}' and stored_row[3] == DAY


def test_the_sink_begins_a_transaction_when_the_caller_has_not(engine: Engine) -> None:
    """SqlEventSink on a fresh connection writes in a transaction that the caller commits (or not)."""
    with engine.connect() as conn:
        assert SqlEventSink(conn).add("s", [row("a"), row("b")]) == 2
        assert conn.in_transaction()
        conn.rollback()
    assert stored(engine) == []


def test_bulk_import_checkpoints_less_often_and_restores(engine: Engine) -> None:
    """SQLite: the WAL is checkpointed every ~40 MB during an import, as before afterwards; no transaction begun."""
    from worker.reconcile.store import IMPORT_WAL_AUTOCHECKPOINT, bulk_import
    from worker.storage.db import sqlite_driver

    with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            with bulk_import(conn):
                assert not conn.in_transaction()
            return
        pragma = sqlite_driver(conn).execute
        (before,) = pragma("PRAGMA wal_autocheckpoint").fetchone()
        with bulk_import(conn):
            assert pragma("PRAGMA wal_autocheckpoint").fetchone() == (IMPORT_WAL_AUTOCHECKPOINT,)
            assert not conn.in_transaction()
            assert CommittingSink(conn).add("s", [row("a")]) == 1
        assert pragma("PRAGMA wal_autocheckpoint").fetchone() == (before,) and before != IMPORT_WAL_AUTOCHECKPOINT
