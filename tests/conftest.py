"""Shared fixtures: a migrated database per test (SQLite always, PostgreSQL when
COST_WORKER_TEST_DATABASE_URL is set), an App with a fake clock, and a master key."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text

from worker.app import App
from worker.clock import FakeClock
from worker.settings import Settings
from worker.storage.db import make_engine, upgrade
from worker.vault import MasterKey

PG_URL = os.environ.get("COST_WORKER_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])

# Never let a developer's own environment leak into tests.
for _name in list(os.environ):
    if _name.startswith("COST_WORKER_") and _name != "COST_WORKER_TEST_DATABASE_URL":
        del os.environ[_name]
os.environ.pop("ANTHROPIC_ADMIN_KEY", None)


@contextmanager
def private_pg_schema(base_url: str) -> Iterator[str]:
    """A URL on a fresh private schema of the test PostgreSQL, dropped afterwards (tests never collide)."""
    schema = f"cw_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL: an SQLite file, or a private schema on the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cw.db'}"
        return
    assert PG_URL
    with private_pg_schema(PG_URL) as url:
        yield url


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file migrated to head once per session. Migrating a fresh file costs about 0.15 s and
    hundreds of tests need one: they start from a copy of this (the same bytes a migration leaves)."""
    path = tmp_path_factory.mktemp("migrated") / "cw.db"
    eng = make_engine(f"sqlite:///{path}")
    upgrade(eng)
    eng.dispose()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, which is what is copied
    return path


DriverParams = Sequence[Any] | Mapping[str, Any] | None  # what a DBAPI cursor's execute takes


@functools.cache
def pg_migration() -> tuple[tuple[str, DriverParams], ...]:
    """The statements (and parameters) a migration of an empty PostgreSQL schema runs, but its reads of the
    catalog: recorded once per session from a real `upgrade`. The names in them are unqualified (each test's
    schema is its search_path), so they build the same schema anywhere."""
    assert PG_URL
    recorded: list[tuple[str, DriverParams]] = []

    def record(_conn: object, _cursor: object, statement: str, parameters: DriverParams, *_: object) -> None:
        if not statement.lstrip().upper().startswith(("SELECT", "SHOW")):
            recorded.append((statement, parameters))

    with private_pg_schema(PG_URL) as url:
        eng = make_engine(url)
        event.listen(eng, "before_cursor_execute", record)
        try:
            upgrade(eng)
        finally:
            eng.dispose()
    return tuple(recorded)


def premigrate(db_url: str, migrated_sqlite: Path) -> None:
    """Migrate a fresh `db_url` the cheap way: a copy of the migrated SQLite file, or on PostgreSQL a replay
    of `pg_migration` (alembic itself takes about 0.2 s a schema: it loads every script and inspects the
    catalog before each step). tests/test_schema.py checks both against the metadata."""
    if db_url.startswith("sqlite:///"):
        shutil.copyfile(migrated_sqlite, db_url.removeprefix("sqlite:///"))
        return
    eng = make_engine(db_url)
    try:
        with eng.begin() as conn:
            for statement, parameters in pg_migration():
                conn.exec_driver_sql(statement, parameters)
    finally:
        eng.dispose()


@pytest.fixture
def engine(db_url: str, migrated_sqlite: Path) -> Iterator[Engine]:
    """A migrated engine on the fresh database of `db_url`."""
    premigrate(db_url, migrated_sqlite)
    eng = make_engine(db_url)
    upgrade(eng)  # a no-op on the copy (at head already)
    yield eng
    eng.dispose()


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 10, 12, 0, tzinfo=UTC))


def fake_clock(app: App) -> FakeClock:
    """The FakeClock a test's App runs on (the `app` fixture's is the `clock` fixture), typed as one."""
    assert isinstance(app.clock, FakeClock), app.clock
    return app.clock


def master_key_text(app: App) -> str:
    """The master key a test's App was given (for a command run on its database)."""
    assert app.settings.master_key is not None, "the App reads its key from a file"
    return app.settings.master_key.get_secret_value()


def make_settings(db_url: str, tmp_path: Path, master_key: MasterKey, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data", "database_url": db_url, "master_key": master_key.to_text(),
        "api_base_url": "https://api.test", "requests_per_minute": 1.0, "burst": 1,
    }
    values.update(overrides)
    return Settings.model_validate(values)  # validated like the keyword arguments (and the environment)


@pytest.fixture
def app(db_url: str, tmp_path: Path, master_key: MasterKey, clock: FakeClock, migrated_sqlite: Path) -> Iterator[App]:
    premigrate(db_url, migrated_sqlite)
    application = App(make_settings(db_url, tmp_path, master_key), clock=clock)
    yield application
    application.close()
