"""Notifications from `run`'s poll, against a local receiver: once per state change (budget, anomaly,
integration error and recovery, reconcile drift), retried with backoff, final on a 4xx, never twice from two
replicas, and the URL (a secret) never in a log line, a stored row or an error."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select, text

from tests.conftest import fake_clock
from worker.app import App
from worker.clock import FakeClock
from worker.settings import Notify, SettingsError, load_settings
from worker.simulator import SimulatorApp
from worker.storage import repo
from worker.storage.tables import metadata, notifications, reconcile_runs
from worker.watch.notify import MAX_ATTEMPTS
from worker.watch.service import on_poll

from .receiver import Receiver
from .simbill import NOW, TODAY, connect_sim, resync

BUDGET = {"name": "claude", "limit_usd": "100"}  # far under a month of the simulator's spend: `over`


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def watched(app_factory: Any, sim: SimulatorApp, receiver: Receiver, *, fmt: str = "json", connect: bool = True,
            **settings: Any) -> App:
    settings.setdefault("budgets", [BUDGET])
    app: App = app_factory(FakeClock(NOW), backfill_days_pro=40, notify=[{"url": receiver.url, "format": fmt}],
                           **settings)
    if connect:
        connect_sim(app, sim)
    return app


def poll(app: App) -> None:
    asyncio.run(on_poll(app))


def kinds(receiver: Receiver) -> list[str]:
    return [r.json["event"] for r in receiver.received]


class TestOncePerChange:
    def test_budget_over_is_sent_once(self, app_factory: Any, steady_sim: SimulatorApp, receiver: Receiver) -> None:
        """The first poll sends `over` (and nothing else: no anomaly, integration ok); later polls, also after the
        periodic re-evaluation, send nothing more."""
        app = watched(app_factory, steady_sim, receiver)
        poll(app)
        assert kinds(receiver) == ["budget"]
        [got] = receiver.received
        body = got.json
        assert body["key"] == "budget:claude:2026-03-01:over" and body["details"]["status"] == "over"
        assert body["title"] == "Budget claude is over its limit" and "of $100.00" in body["text"]
        assert got.headers["content-type"] == "application/json" and len(got.headers["idempotency-key"]) == 32
        assert got.path == f"/hooks/{receiver.token}"
        poll(app)
        fake_clock(app).advance(3600)
        poll(app)
        assert len(receiver.received) == 1

    def test_slack_format(self, app_factory: Any, steady_sim: SimulatorApp, receiver: Receiver) -> None:
        """format = "slack": a Slack incoming-webhook body, the title in bold and the details below."""
        app = watched(app_factory, steady_sim, receiver, fmt="slack")
        poll(app)
        [got] = receiver.received
        assert set(got.json) == {"text"}
        assert got.json["text"].startswith("*Budget claude is over its limit*\nmonth 2026-03-01..2026-04-01")

    def test_anomaly_once_per_day(self, app_factory: Any, steady_sim: SimulatorApp, receiver: Receiver) -> None:
        """A spike restated into yesterday: one notification for the day, listing its anomalous scopes."""
        app = watched(app_factory, steady_sim, receiver, budgets=[])
        poll(app)
        assert receiver.received == []
        steady_sim.add_fault(f"spike:day={TODAY - timedelta(days=1)},factor=5")
        resync(app, steady_sim, 1)
        poll(app)
        poll(app)
        assert kinds(receiver) == ["anomaly"]
        body = receiver.received[0].json
        assert body["key"] == f"anomaly:1:{TODAY - timedelta(days=1)}"
        assert body["text"].splitlines()[0].startswith("integration total: $")
        assert {a["direction"] for a in body["details"]["anomalies"]} == {"spike"}

    def test_integration_error_and_recovery(self, app_factory: Any, steady_sim: SimulatorApp,
                                            receiver: Receiver) -> None:
        """ok at first sight: nothing; error: one "is failing" (its error scrubbed of key-shaped text); error again:
        nothing; ok: one "recovered"."""
        app = watched(app_factory, steady_sim, receiver, budgets=[])
        poll(app)
        for status, error in (("error", "401: key sk-ant-admin01-abcdefghijklmnopqrstuvwx revoked"),
                              ("error", "401 again"), ("ok", None)):
            with app.engine.begin() as conn:
                repo.update_integration(conn, 1, status=status, last_error=error, updated_at=app.clock.now())
            fake_clock(app).advance(1)
            poll(app)
        titles = [r.json["title"] for r in receiver.received]
        assert titles == ["Integration 1 (Anthropic - Simulated Org 0) is failing",
                          "Integration 1 (Anthropic - Simulated Org 0) recovered"]
        assert "abcdefghijklmnop" not in receiver.received[0].json["text"]

    def test_reconcile_drift_per_change(self, app_factory: Any, receiver: Receiver, steady_sim: SimulatorApp) -> None:
        """A reconcile run with drift rows: one notification; another drifting run: none; ok then drift: one more."""
        app = watched(app_factory, steady_sim, receiver, budgets=[], connect=False)
        for drift_rows in (2, 3, 0, 1):
            with app.engine.begin() as conn:
                conn.execute(insert(reconcile_runs).values(
                    finished_at=app.clock.now(), integration_id=None, sources="", since=date(2026, 3, 1),
                    until=date(2026, 3, 7), group_by="model", tolerance_pct=Decimal(1), billed_cost_usd=Decimal(200),
                    tracked_cost_usd=Decimal(190), delta_usd=Decimal(-10), unexplained_usd=Decimal(0), rows=9,
                    drift_rows=drift_rows))
            poll(app)
        assert [r.json["key"] for r in receiver.received] == ["reconcile:all:1:drift", "reconcile:all:3:drift"]
        assert "5.00 % of $200.00" in receiver.received[0].json["text"]


class TestDelivery:
    def test_retried_with_backoff(self, app_factory: Any, steady_sim: SimulatorApp, receiver: Receiver) -> None:
        """500 then 503 then 200: three posts of the same body and idempotency key, each retry only after its
        backoff (30 s, then 60 s, +-20 %)."""
        receiver.statuses = [500, 503]
        app = watched(app_factory, steady_sim, receiver)
        clock = fake_clock(app)
        poll(app)
        assert len(receiver.received) == 1
        poll(app)
        clock.advance(23)
        poll(app)
        assert len(receiver.received) == 1  # not yet due
        clock.advance(14)
        poll(app)
        assert len(receiver.received) == 2
        clock.advance(47)
        poll(app)
        assert len(receiver.received) == 2
        clock.advance(26)
        poll(app)
        assert len(receiver.received) == 3
        assert len({(r.body, r.headers["idempotency-key"]) for r in receiver.received}) == 1
        assert outbox(app) == [("sent", 3, None)]

    def test_a_4xx_is_final(self, app_factory: Any, steady_sim: SimulatorApp, receiver: Receiver,
                            caplog: pytest.LogCaptureFixture) -> None:
        """404: one post, the row `failed`, one error line naming the webhook by position and host only."""
        receiver.statuses = [404]
        app = watched(app_factory, steady_sim, receiver)
        with caplog.at_level(logging.INFO):
            poll(app)
            fake_clock(app).advance(7200)
            poll(app)
        assert len(receiver.received) == 1
        assert outbox(app)[0][:2] == ("failed", 1)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == ["notification budget:claude:2026-03-01:over to [[notify]] #1 (json, 127.0.0.1) failed "
                          "for good: HTTP 404 (not retried: check the webhook URL and format)"]

    def test_gives_up_after_max_attempts(self, app_factory: Any, steady_sim: SimulatorApp,
                                         receiver: Receiver) -> None:
        """A receiver that always answers 500 gets MAX_ATTEMPTS posts, then the row is `failed`."""
        receiver.statuses = [500] * 50
        app = watched(app_factory, steady_sim, receiver)
        for _ in range(MAX_ATTEMPTS + 3):
            poll(app)
            fake_clock(app).advance(2 * 3600)
        assert len(receiver.received) == MAX_ATTEMPTS
        assert outbox(app) == [("failed", MAX_ATTEMPTS, "HTTP 500")]

    def test_polls_share_the_process_tls_context(self, app_factory: Any, steady_sim: SimulatorApp,
                                                 receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each poll that delivers makes its own transport, all on one TLS context: httpx would load the CA
        bundle again for every poll otherwise (15-70 ms of CPU)."""
        receiver.statuses = [500] * 5
        app = watched(app_factory, steady_sim, receiver)
        made: list[object] = []
        real = httpx.AsyncHTTPTransport

        def recording(**kwargs: Any) -> httpx.AsyncHTTPTransport:
            made.append(kwargs.get("verify"))
            return real(**kwargs)
        monkeypatch.setattr(httpx, "AsyncHTTPTransport", recording)
        for _ in range(3):
            poll(app)
            fake_clock(app).advance(2 * 3600)
        assert len(receiver.received) == 3 and len(made) == 3
        assert isinstance(made[0], ssl.SSLContext) and all(m is made[0] for m in made)

    def test_two_replicas_never_send_twice(self, app_factory: Any, steady_sim: SimulatorApp,
                                           receiver: Receiver) -> None:
        """Two processes on one database polling at the same moments, through a slow receiver, a budget change and
        an anomaly: each event reaches the webhook exactly once."""
        one = watched(app_factory, steady_sim, receiver)
        two = watched(app_factory, steady_sim, receiver, connect=False)
        steady_sim.add_fault(f"spike:day={TODAY - timedelta(days=1)},factor=5")
        resync(one, steady_sim, 1)

        async def together() -> None:
            for _ in range(4):
                await asyncio.gather(on_poll(one), on_poll(two))

        asyncio.run(together())
        assert sorted(kinds(receiver)) == ["anomaly", "budget"]
        assert outbox(one) == [("sent", 1, None), ("sent", 1, None)]


class TestSecretUrl:
    def test_never_logged_stored_or_shown(self, app_factory: Any, steady_sim: SimulatorApp, receiver: Receiver,
                                          caplog: pytest.LogCaptureFixture) -> None:
        """With a receiver that fails (500, then a closed port), no log line, stored row, repr or settings dump
        holds the URL's token."""
        receiver.statuses = [500]
        app = watched(app_factory, steady_sim, receiver)
        with caplog.at_level(logging.DEBUG):
            poll(app)
            receiver.close()
            fake_clock(app).advance(120)
            poll(app)
        assert outbox(app)[0][2] == "ConnectError"
        assert receiver.token not in caplog.text
        with app.engine.connect() as conn:
            for table in metadata.sorted_tables:
                rows = conn.execute(select(table)).all()
                assert receiver.token not in repr(rows), table.name
        assert receiver.token not in repr(app.settings) + str(app.settings) + repr(app.settings.notify[0])
        assert receiver.token not in app.settings.model_dump_json()

    def test_a_bad_url_is_refused_without_echoing_it(self, tmp_path: Any) -> None:
        """An invalid webhook URL stops the command at start with one line that does not repeat it."""
        config = tmp_path / "c.toml"
        config.write_text('[[notify]]\nurl = "hooks.example.com/T0KENsecret"\n')
        with pytest.raises(SettingsError) as caught:
            load_settings(config)
        assert "T0KENsecret" not in str(caught.value)
        assert str(caught.value) == (f"invalid [[notify]] #1 in {config}: url: expected an http(s) URL such as "
                                     "https://hooks.slack.com/services/...")
        assert Notify.model_validate({"url": "https://x.test/T0KEN"}).url.get_secret_value().endswith("T0KEN")


def outbox(app: App) -> list[tuple[str, int, str | None]]:
    n = notifications.c
    with app.engine.connect() as conn:
        return [(r.status, r.attempts, r.last_error)
                for r in conn.execute(select(n.status, n.attempts, n.last_error).order_by(n.id))]


def test_tables_exist(app_factory: Any) -> None:
    """The watch tables are migrated (a guard for the fixtures above)."""
    app: App = app_factory()
    with app.engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM notifications"))
