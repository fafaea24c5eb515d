"""Engines, transactions and migrations.

SQLite runs in WAL mode with a busy timeout, and every transaction starts with BEGIN IMMEDIATE: a
read-then-write transaction that started deferred could not upgrade its lock when another process
(a `sync-now` beside `run`) wrote first. PostgreSQL uses psycopg 3.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError

import worker

log = logging.getLogger(__name__)

# A stable advisory-lock id (never Python's per-process hash()): "cost-worker migrate".
MIGRATION_LOCK_ID = 0x636F73745F6D6967


class DatabaseError(Exception):
    """The database cannot be reached or used; the message is one line with no credentials."""


def safe_url(url: str) -> str:
    """The URL with any password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def make_engine(url: str, **kwargs: Any) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError("invalid database URL (expected sqlite:///PATH or postgresql+psycopg://...)") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _create_private_file(Path(parsed.database).expanduser())
        engine = create_engine(parsed, connect_args={"timeout": 30, "isolation_level": None}, **kwargs)
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg2", "pg8000", "asyncpg"):
        raise DatabaseError("use the psycopg 3 driver: postgresql+psycopg://...")
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_pre_ping=True, **kwargs)


def _create_private_file(db_file: Path) -> None:
    """Create a missing SQLite file owner-only (0600), in an owner-only (0700) directory if that is missing
    too. SQLite itself would create it under the umask, usually 0644, and give its -wal and -shm files the
    same mode; the file holds every organization's bill and the sealed Admin keys."""
    if db_file.exists():
        return  # its mode is its owner's choice
    try:
        db_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(db_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            return  # another process created it first
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DatabaseError(f"cannot create the SQLite database {db_file}: {reason}") from None
    os.close(fd)  # an empty file is an empty SQLite database


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def alembic_dir() -> Path:
    """The migration scripts: inside the installed package, or alembic/ beside the source tree."""
    package = Path(worker.__file__).parent
    for candidate in (package / "_alembic", package.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise DatabaseError("migration scripts not found (the package is incomplete)")


def _alembic_config(connection: Connection | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent; safe with several processes starting at once)."""
    from alembic import command

    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Replicas starting together: one migrates, the others wait and then find nothing to do.
                conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            if _revision(conn) != head_revision():  # at head: skip loading env.py and every script again
                command.upgrade(_alembic_config(conn), "head")
    except OperationalError as exc:
        raise DatabaseError(f"database {safe_url(str(engine.url))} is not reachable: {_first_line(exc)}") from None
    except SQLAlchemyError as exc:
        raise DatabaseError(f"migrating database {safe_url(str(engine.url))} failed: {_first_line(exc)}") from None


def sqlite_driver(conn: Connection) -> sqlite3.Connection:
    """The sqlite3 connection under `conn`, for what SQLAlchemy does not pass through (executemany of plain
    tuples, a PRAGMA outside a transaction)."""
    driver = conn.connection.driver_connection
    if not isinstance(driver, sqlite3.Connection):
        raise TypeError(f"not an SQLite connection: {conn.dialect.name}")
    return driver


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return _revision(conn)


def _revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


@functools.cache  # the scripts are part of the installed package: reading them once per process is enough
def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]
