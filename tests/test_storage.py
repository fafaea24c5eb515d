"""Storage on SQLite and PostgreSQL: exact money, day replacement, revision history, the report query."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, select

from worker.api.models import CostRow, UsageRow
from worker.storage import repo
from worker.storage.db import current_revision, head_revision, make_engine, upgrade
from worker.storage.rows import cost_table_rows, usage_table_rows
from worker.storage.tables import cost_rows, usage_rows

D1, D2 = date(2026, 3, 1), date(2026, 3, 2)
NOW = datetime(2026, 3, 10, tzinfo=UTC)


@pytest.fixture
def integration_id(engine: Engine) -> int:
    with engine.begin() as conn:
        return repo.insert_integration(
            conn, label="t", tier="free", organization_id="org-1", organization_name="Org", key_ciphertext=b"x",
            key_id="k", key_hint="sk-ant-admin01-...abcd", status="pending", created_at=NOW, updated_at=NOW,
            backfill_start=D1, backfill_end=D2, cost_checkpoint=D1, usage_checkpoint=D1, backfill_done=False)


def cost(day: date, amount: str, model: str | None = "claude-sonnet-4-6", token_type: str | None = "output_tokens",
         workspace: str | None = None, cost_type: str = "tokens") -> CostRow:
    return CostRow(day=day, workspace_id=workspace, description=f"{model} {token_type}", cost_type=cost_type,
                   model=model, token_type=token_type, service_tier="standard" if model else None,
                   context_window="0-200k" if model else None, inference_geo=None, amount_usd=Decimal(amount),
                   currency="USD")


def usage(day: date, model: str = "claude-sonnet-4-6", uncached: int = 10, out: int = 5, read: int = 3,
          w5: int = 2, w1: int = 1, extra: dict[str, object] | None = None) -> UsageRow:
    return UsageRow(day=day, workspace_id=None, model=model, service_tier="standard", context_window="0-200k",
                    api_key_id="apikey_1", inference_geo=None, uncached_input_tokens=uncached,
                    cache_read_input_tokens=read, cache_creation_5m_input_tokens=w5,
                    cache_creation_1h_input_tokens=w1, output_tokens=out, web_search_requests=0,
                    extra=extra or {})


def store_cost(engine: Engine, iid: int, days: list[date], rows: list[CostRow], when: datetime = NOW) -> None:
    with engine.begin() as conn:
        repo.replace_cost_days(conn, iid, days, cost_table_rows(iid, rows), when)


class TestSchema:
    def test_migrations_reach_head_and_are_idempotent(self, engine: Engine) -> None:
        """`db upgrade` twice leaves the schema at the newest revision."""
        upgrade(engine)
        assert current_revision(engine) == head_revision()


class TestExactMoney:
    @pytest.mark.parametrize("amount", ["18.432075", "0.000001", "123456789.123456789", "0", "-1.5"])
    def test_round_trip(self, engine: Engine, integration_id: int, amount: str) -> None:
        """Amounts come back exactly as stored, digit for digit."""
        store_cost(engine, integration_id, [D1], [cost(D1, amount)])
        with engine.begin() as conn:
            stored = conn.execute(select(cost_rows.c.amount_usd)).scalar_one()
        assert isinstance(stored, Decimal) and stored == Decimal(amount)

    def test_float_is_refused(self, engine: Engine, integration_id: int) -> None:
        """A float amount never reaches the database."""
        row = cost_table_rows(integration_id, [cost(D1, "1")])[0] | {"amount_usd": 1.5}
        with pytest.raises(Exception, match="Decimal"), engine.begin() as conn:
            repo.replace_cost_days(conn, integration_id, [D1], [row], NOW)

    def test_same_grain_sum_is_exact_beyond_28_digits(self, engine: Engine, integration_id: int) -> None:
        """Same-grain amounts are summed without the default context's 28-digit rounding."""
        big, tiny = "12345678901234567890.123456789012", "0.000000000001"
        store_cost(engine, integration_id, [D1], [cost(D1, big), cost(D1, tiny)])
        with engine.begin() as conn:
            stored = conn.execute(select(cost_rows.c.amount_usd)).scalar_one()
        assert stored == Decimal("12345678901234567890.123456789013")

    def test_report_sum_is_exact_beyond_28_digits(self, engine: Engine, integration_id: int) -> None:
        """The report adds a (day, model)'s rows without the default context's rounding too."""
        store_cost(engine, integration_id, [D1], [cost(D1, "12345678901234567890.123456789012"),
                                                  cost(D1, "0.000000000001", token_type="input_tokens")])
        with engine.begin() as conn:
            (r,) = repo.report(conn, D1, D1)
        assert r.cost_usd == Decimal("12345678901234567890.123456789013")

    def test_stored_exactly_as_the_typed_path_stores(self, engine: Engine, integration_id: int) -> None:
        """Rows go to the driver without SQLAlchemy's types; what lands is what those types would store
        (SQLite: ISO date text and the exact decimal text; PostgreSQL: DATE and NUMERIC), and reads back typed."""
        store_cost(engine, integration_id, [D1], [cost(D1, "0.0000001843")])
        with engine.begin() as conn:
            day, amount = conn.execute(select(cost_rows.c.day, cost_rows.c.amount_usd)).one()
            raw = conn.exec_driver_sql("SELECT day, amount_usd FROM cost_rows").one()
        assert (day, amount) == (D1, Decimal("0.0000001843")) and str(amount) == "1.843E-7"
        if engine.dialect.name == "sqlite":
            assert tuple(raw) == ("2026-03-01", "0.0000001843")
        else:
            assert tuple(raw) == (D1, Decimal("0.0000001843"))

    def test_report_sums_exactly(self, engine: Engine, integration_id: int) -> None:
        """Ten thousand 0.000001 amounts sum to exactly 0.01 (floats would not)."""
        rows = [cost(D1, "0.000001", workspace=f"w{i}") for i in range(10_000)]
        store_cost(engine, integration_id, [D1], rows)
        with engine.begin() as conn:
            (r,) = repo.report(conn, D1, D1)
        assert r.cost_usd == Decimal("0.01")


class TestDayReplacement:
    def test_replace_is_idempotent(self, engine: Engine, integration_id: int) -> None:
        """Storing the same day twice gives the same rows and no revisions."""
        rows = [cost(D1, "1.25"), cost(D1, "2.5", token_type="uncached_input_tokens")]
        store_cost(engine, integration_id, [D1], rows)
        store_cost(engine, integration_id, [D1], rows)
        with engine.begin() as conn:
            assert repo.count_rows(conn, integration_id) == (2, 0)
            assert repo.revisions_for(conn, integration_id) == []

    def test_vanished_row_vanishes_and_change_is_recorded(self, engine: Engine, integration_id: int) -> None:
        """A restated day replaces the stored one; the old amounts and the change time are kept."""
        store_cost(engine, integration_id, [D1, D2], [cost(D1, "1.25"), cost(D1, "9", model="claude-haiku-4-5"),
                                                       cost(D2, "3")])
        later = datetime(2026, 3, 11, 6, tzinfo=UTC)
        store_cost(engine, integration_id, [D1], [cost(D1, "1.50")], when=later)
        with engine.begin() as conn:
            rep = {(r.date, r.model): r.cost_usd for r in repo.report(conn, D1, D2)}
            revs = repo.revisions_for(conn, integration_id)
        assert rep == {(D1, "claude-sonnet-4-6"): Decimal("1.50"), (D2, "claude-sonnet-4-6"): Decimal("3")}
        changes = sorted((r["previous"], r["current"]) for r in revs)
        assert changes == [("1.25 USD", "1.50 USD"), ("9 USD", None)]
        assert all(r["changed_at"] == later for r in revs)

    def test_reread_rewrites_only_what_changed(self, engine: Engine, integration_id: int) -> None:
        """A re-read keeps unchanged rows as stored (same ids) and rewrites changed, new and vanished ones."""
        same, changed = cost(D1, "1.25"), cost(D1, "2", token_type="uncached_input_tokens")
        gone = cost(D1, "3", token_type="cache_read_input_tokens")
        store_cost(engine, integration_id, [D1, D2], [same, changed, gone, cost(D2, "4")])
        with engine.begin() as conn:
            before = {(r.token_type, r.day): (r.id, r.amount_usd) for r in conn.execute(select(cost_rows))}
        new = cost(D1, "5", model="claude-haiku-4-5")
        store_cost(engine, integration_id, [D1, D2], [new, cost(D1, "2.5", token_type="uncached_input_tokens"),
                                                       cost(D2, "4"), same])
        with engine.begin() as conn:
            after = {(r.model, r.token_type, r.day): (r.id, r.amount_usd) for r in conn.execute(select(cost_rows))}
            revs = sorted((r["previous"] or "", r["current"] or "") for r in repo.revisions_for(conn, integration_id))
        sonnet = "claude-sonnet-4-6"
        assert after[(sonnet, "output_tokens", D1)] == before[("output_tokens", D1)]  # untouched
        assert after[(sonnet, "output_tokens", D2)] == before[("output_tokens", D2)]
        assert after[(sonnet, "uncached_input_tokens", D1)][1] == Decimal("2.5")
        assert after[("claude-haiku-4-5", "output_tokens", D1)][1] == Decimal("5")
        assert (sonnet, "cache_read_input_tokens", D1) not in after
        assert revs == [("", "5 USD"), ("2 USD", "2.5 USD"), ("3 USD", "")]

    def test_rows_written_by_the_typed_path_are_recognized(self, engine: Engine, integration_id: int) -> None:
        """Rows stored through SQLAlchemy's typed insert (as earlier versions did) compare equal to the same
        rows re-read: no revision, nothing rewritten."""
        rows = [cost(D1, "18.432075"), cost(D1, "0.0000001", token_type="cache_read_input_tokens"),
                cost(D1, "100.00", model=None, token_type=None, cost_type="web_search")]
        with engine.begin() as conn:
            conn.execute(insert(cost_rows), cost_table_rows(integration_id, rows))
            conn.execute(insert(usage_rows), usage_table_rows(integration_id, [usage(D1, extra={"n": 2})]))
            ids = sorted(conn.execute(select(cost_rows.c.id)).scalars())
        store_cost(engine, integration_id, [D1], rows)
        with engine.begin() as conn:
            repo.replace_usage_days(conn, integration_id, [D1], usage_table_rows(integration_id, [
                usage(D1, extra={"n": 2})]), NOW)
            assert sorted(conn.execute(select(cost_rows.c.id)).scalars()) == ids
            assert repo.revisions_for(conn, integration_id) == []

    def test_usage_revision_and_extra_counters(self, engine: Engine, integration_id: int) -> None:
        """Usage: same-grain rows are summed (unknown counters too; unknown strings are part of the grain);
        a changed day keeps the previous and new counts as JSON."""
        first = [usage(D1, extra={"tool_calls": 1}), usage(D1, uncached=5, extra={"tool_calls": 2, "calls": 4}),
                 usage(D1, extra={"region": "eu"})]
        with engine.begin() as conn:
            repo.replace_usage_days(conn, integration_id, [D1], usage_table_rows(integration_id, first), NOW)
            stored = {r.extra_key: r for r in conn.execute(select(usage_rows))}
        assert set(stored) == {"", '{"region":"eu"}'}
        assert stored[""].uncached_input_tokens == 15 and stored[""].extra_counts == '{"calls":4,"tool_calls":3}'
        with engine.begin() as conn:
            repo.replace_usage_days(conn, integration_id, [D1], usage_table_rows(integration_id, [
                usage(D1, uncached=16, extra={"tool_calls": 3, "calls": 4}), usage(D1, extra={"region": "eu"})]), NOW)
            (rev,) = repo.revisions_for(conn, integration_id)
        assert rev["kind"] == "usage" and rev["day"] == D1
        assert rev["grain"] == ('{"api_key_id":"apikey_1","context_window":"0-200k","extra_key":"","inference_geo":"",'
                               '"model":"claude-sonnet-4-6","service_tier":"standard","workspace_id":""}')
        extra = '"extra":"{\\"calls\\":4,\\"tool_calls\\":3}"'
        assert rev["previous"] == ('{"cache_creation_1h_input_tokens":2,"cache_creation_5m_input_tokens":4,'
                                   '"cache_read_input_tokens":6,' + extra + ',"output_tokens":10,'
                                   '"uncached_input_tokens":15,"web_search_requests":0}')
        assert rev["current"] == ('{"cache_creation_1h_input_tokens":1,"cache_creation_5m_input_tokens":2,'
                                  '"cache_read_input_tokens":3,' + extra + ',"output_tokens":5,'
                                  '"uncached_input_tokens":16,"web_search_requests":0}')

    def test_empty_day_clears_it(self, engine: Engine, integration_id: int) -> None:
        """A day that comes back empty removes what was stored for it."""
        store_cost(engine, integration_id, [D1], [cost(D1, "1")])
        store_cost(engine, integration_id, [D1], [])
        with engine.begin() as conn:
            assert repo.count_rows(conn, integration_id) == (0, 0)

    def test_same_grain_rows_are_summed(self, engine: Engine, integration_id: int) -> None:
        """Two API rows with the same grain are both charges: stored as their sum."""
        store_cost(engine, integration_id, [D1], [cost(D1, "1.1"), cost(D1, "2.2")])
        with engine.begin() as conn:
            assert [r.cost_usd for r in repo.report(conn, D1, D1)] == [Decimal("3.3")]

    def test_other_integrations_untouched(self, engine: Engine, integration_id: int) -> None:
        """Replacing one integration's day leaves another's rows alone."""
        with engine.begin() as conn:
            other = repo.insert_integration(
                conn, label="o", tier="free", organization_id="org-2", organization_name="O", key_ciphertext=b"x",
                key_id="k", key_hint="h", status="ok", created_at=NOW, updated_at=NOW, backfill_start=D1,
                backfill_end=D2, cost_checkpoint=D1, usage_checkpoint=D1, backfill_done=True)
        store_cost(engine, other, [D1], [cost(D1, "7")])
        store_cost(engine, integration_id, [D1], [cost(D1, "1")])
        store_cost(engine, integration_id, [D1], [])
        with engine.begin() as conn:
            assert [r.cost_usd for r in repo.report(conn, D1, D1, other)] == [Decimal("7")]


class TestReport:
    def test_rows_per_date_and_model(self, engine: Engine, integration_id: int) -> None:
        """Cost and tokens meet per (date, model); fees without a model get model None; until is inclusive."""
        store_cost(engine, integration_id, [D1, D2], [
            cost(D1, "1.5"), cost(D1, "0.5", token_type="cache_read_input_tokens"),
            cost(D1, "1", model=None, token_type=None, cost_type="web_search"), cost(D2, "4")])
        with engine.begin() as conn:
            repo.replace_usage_days(conn, integration_id, [D1, D2], usage_table_rows(
                integration_id, [usage(D1), usage(D1, uncached=1), usage(D2, out=7)]), NOW)
            rows = repo.report(conn, D1, D2)
            only_d1 = repo.report(conn, D1, D1)
        assert [(r.date, r.model, r.cost_usd, r.input_tokens, r.output_tokens, r.cache_read_tokens,
                 r.cache_write_tokens) for r in rows] == [
            (D1, "claude-sonnet-4-6", Decimal("2.0"), 11, 10, 6, 6),
            (D1, None, Decimal("1"), 0, 0, 0, 0),
            (D2, "claude-sonnet-4-6", Decimal("4"), 10, 7, 3, 3),
        ]
        assert {r.date for r in only_d1} == {D1}


class TestLeases:
    def test_one_owner_at_a_time(self, engine: Engine, integration_id: int) -> None:
        """A held lease refuses others until it expires or is released."""
        later = datetime(2026, 3, 10, 0, 10, tzinfo=UTC)
        with engine.begin() as conn:
            assert repo.take_lease(conn, integration_id, "a", NOW, later)
            assert not repo.take_lease(conn, integration_id, "b", NOW, later)
            assert repo.take_lease(conn, integration_id, "a", NOW, later)  # renewal
            assert repo.take_lease(conn, integration_id, "b", datetime(2026, 3, 10, 0, 11, tzinfo=UTC), later)
            repo.release_lease(conn, integration_id, "a")  # not the owner any more: no effect
            assert repo.holds_lease(conn, integration_id, "b")

    def test_a_claim_holder_takes_the_lease_whatever_it_says(self, engine: Engine, integration_id: int) -> None:
        """`force` (the caller holds the integration's claim: the lease's holder is dead) takes a live lease;
        `since` is when the holder took it, kept by renewals, which only the holder can make."""
        later, much_later = NOW + timedelta(minutes=5), NOW + timedelta(minutes=10)
        with engine.begin() as conn:
            assert repo.take_lease(conn, integration_id, "dead", NOW, much_later)
            assert not repo.take_lease(conn, integration_id, "b", later, much_later)
            assert repo.take_lease(conn, integration_id, "b", later, much_later, force=True)
            assert repo.lease_holder(conn, integration_id) == repo.LeaseHolder("b", later, much_later)
            assert repo.take_lease(conn, integration_id, "b", much_later, much_later + timedelta(minutes=5))
            assert not repo.renew_lease(conn, integration_id, "dead", much_later)
            assert repo.renew_lease(conn, integration_id, "b", much_later + timedelta(minutes=9))
            assert repo.lease_holder(conn, integration_id) == repo.LeaseHolder(
                "b", later, much_later + timedelta(minutes=9))
            repo.release_lease(conn, integration_id, "b")
            assert repo.lease_holder(conn, integration_id) is None
            assert not repo.take_lease(conn, 999_999, "b", NOW, later, force=True)  # no such integration

    def test_daily_slot_claimed_once(self, engine: Engine, integration_id: int) -> None:
        """Each daily slot can be claimed once per integration."""
        slot = datetime(2026, 3, 10, 6, tzinfo=UTC)
        with engine.begin() as conn:
            assert repo.claim_daily_slot(conn, integration_id, slot)
            assert not repo.claim_daily_slot(conn, integration_id, slot)
            assert repo.claim_daily_slot(conn, integration_id, datetime(2026, 3, 11, 6, tzinfo=UTC))


def test_sqlite_file_created_in_new_directory(tmp_path: Path) -> None:
    """The default SQLite file's directory is created on first use."""
    eng = make_engine(f"sqlite:///{tmp_path / 'a' / 'b' / 'cw.db'}")
    upgrade(eng)
    eng.dispose()
    assert (tmp_path / "a" / "b" / "cw.db").exists()


def test_canonical_json_is_the_standard_librarys_text_for_any_value() -> None:
    """Revision and grain texts are compared and kept: the fast encoder must give json.dumps' very text."""
    import json
    import random

    from worker.storage.rows import CANONICAL_JSON

    rng = random.Random(7)
    alphabet = [chr(i) for i in range(128)] + ["é", "ü", "中", "\u2028", "\ufeff", "😀", "\udc80"]
    values: list[object] = [{}, {"a": None, "b": True, "c": False}, {"n": -(10 ** 40), "m": 0, "l": [1, "x", None]},
                         {"z": {"y": {"x": "deep"}}, "a": ""}]
    for _ in range(2000):
        values.append({"".join(rng.choices(alphabet, k=rng.randint(0, 4))): "".join(rng.choices(alphabet, k=rng.randint(0, 12)))
                       for _ in range(rng.randint(1, 5))})
    for value in values:
        assert CANONICAL_JSON.encode(value) == json.dumps(value, sort_keys=True, separators=(",", ":")), value
