"""Fixtures: a steady simulator, and Apps on the test database (several, sharing it like replicas)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKENDS, PG_URL, private_pg_schema
from worker.app import App
from worker.clock import FakeClock
from worker.simulator import SimulatorApp

from .simbill import WATCH_KEY, connect_sim, make_sim, watch_app


@pytest.fixture
def steady_sim() -> SimulatorApp:
    return make_sim("steady")


@pytest.fixture
def app_factory(db_url: str, tmp_path: Path) -> Iterator[Any]:
    """Make Apps on the test database (several share it, like replicas); all closed afterwards."""
    made: list[App] = []
    key = WATCH_KEY  # shared by the Apps, like replicas, and by the copied backfills (simbill)

    def make(clock: FakeClock | None = None, **settings: Any) -> App:
        application = watch_app(db_url, tmp_path, clock, key, **settings)
        made.append(application)
        return application

    yield make
    for application in made:
        application.close()


@pytest.fixture(scope="session", params=BACKENDS)
def bill(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[App, SimulatorApp]]:
    """A year of the steady simulator's org 0 synced once per test session and backend: for tests that only
    read (they must not change it)."""
    sim = make_sim("steady")
    tmp = tmp_path_factory.mktemp("bill")
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp / 'bill.db'}" if request.param == "sqlite" else stack.enter_context(
            private_pg_schema(PG_URL or ""))
        application = watch_app(url, tmp)
        stack.callback(application.close)
        connect_sim(application, sim)
        yield application, sim


@pytest.fixture
def own(app_factory: Any, steady_sim: SimulatorApp) -> tuple[App, SimulatorApp]:
    """Sixty days of the steady simulator's org 0 synced for this test alone (it may change the simulator and
    re-sync): enough for a 28-day baseline and a month's forecast."""
    app = app_factory(backfill_days_pro=60)
    connect_sim(app, steady_sim)
    return app, steady_sim
