"""The application context the commands share: settings, the migrated database, the keyring, the clock."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from worker.clock import Clock, SystemClock
from worker.ratelimit import RateBudget
from worker.settings import Settings, SettingsError
from worker.storage.claims import Claims, claims_for
from worker.storage.db import make_engine, upgrade
from worker.vault import InvalidMasterKey, Keyring, MasterKey, read_master_key_file, write_master_key_file

log = logging.getLogger(__name__)

T = TypeVar("T")


class DbExecutor:
    """Threads for the blocking database calls of async code, small transactions first.

    Two lanes: `bulk` calls (page stores, each a transaction of hundreds of rows) and the rest (leases,
    rate-bucket slots, run records, polls). A free thread always takes a waiting small call before a
    bulk one, and at most `bulk_threads` bulk calls run at once, so what sits on a request's path never
    queues behind a backlog of pages. Threads start on demand and exit after `idle_seconds` idle.
    """

    def __init__(self, threads: int, bulk_threads: int, name: str = "cost-worker-db",
                 idle_seconds: float = 30.0) -> None:
        self.threads, self.bulk_threads = threads, min(bulk_threads, threads)
        self.name, self.idle_seconds = name, idle_seconds
        self._cond = threading.Condition()
        self._small: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._bulk: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._running_bulk = 0
        self._workers = 0
        self._idle = 0
        self._closed = False
        self._threads: set[threading.Thread] = set()

    def submit(self, fn: Callable[[], T], *, bulk: bool = False) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the database executor is shut down")
            (self._bulk if bulk else self._small).append((future, fn))
            if self._idle:
                self._cond.notify()
            elif self._workers < self.threads:
                self._workers += 1
                thread = threading.Thread(target=self._work, name=f"{self.name}-{self._workers}", daemon=True)
                self._threads.add(thread)
                thread.start()
        return future

    def _next(self) -> tuple[Future[Any], Callable[[], Any], bool] | None:
        """The next call to run (small first), or None when this thread should exit; under the lock."""
        while True:
            if self._small:
                return (*self._small.popleft(), False)
            if self._bulk and self._running_bulk < self.bulk_threads:
                self._running_bulk += 1
                return (*self._bulk.popleft(), True)
            if self._closed:
                return None
            self._idle += 1
            woken = self._cond.wait(self.idle_seconds)
            self._idle -= 1
            if not woken and not self._small and not (self._bulk and self._running_bulk < self.bulk_threads):
                return None

    def _work(self) -> None:
        while True:
            with self._cond:
                item = self._next()
                if item is None:
                    self._workers -= 1
                    self._threads.discard(threading.current_thread())
                    return
            future, fn, bulk = item
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # handed to the awaiting task
                        future.set_exception(exc)
            finally:
                if bulk:
                    with self._cond:
                        self._running_bulk -= 1
                        if self._bulk and self._idle:
                            self._cond.notify()

    def shutdown(self, timeout: float = 2.0) -> None:
        """Take no more calls; wait up to `timeout` seconds for the queued ones to finish (a transaction
        cut short by the process exiting would roll back, but a released lease would be lost)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def db_threads(dialect: str) -> tuple[int, int]:
    """(threads, of which at most this many store pages at once) for a database.

    SQLite admits one writer at a time and every transaction here takes the write lock at its BEGIN
    (IMMEDIATE): more threads add no throughput, only contention for that lock and the GIL, and with
    one thread the small-first order is exact. PostgreSQL locks rows, so a few threads overlap their
    round trips; fewer than SQLAlchemy's pool (5), so a call never waits for a connection.
    """
    return (1, 1) if dialect == "sqlite" else (4, 2)


GENERATED_KEY_WARNING = (
    "WARNING: no master key configured; generated one at {path}. It encrypts every stored Admin key: "
    "PRODUCTION MUST SUPPLY ITS OWN (COST_WORKER_MASTER_KEY_FILE from a secret store, or COST_WORKER_MASTER_KEY) "
    "and back it up; losing it means reconnecting every integration."
)


def _keyring(settings: Settings, *, generate: bool) -> Keyring | None:
    """The current master key (env, file, or the default file) plus the previous ones for rotation; None
    when the default file does not exist yet and `generate` is False."""
    if settings.master_key is not None and settings.master_key_file is not None:
        raise InvalidMasterKey("set only one of COST_WORKER_MASTER_KEY and COST_WORKER_MASTER_KEY_FILE")
    previous = [MasterKey.from_text(k.get_secret_value(), source="COST_WORKER_PREVIOUS_MASTER_KEYS")
                for k in settings.previous_master_keys]
    previous += [read_master_key_file(p) for p in settings.previous_master_key_files]
    if settings.master_key is not None:
        current = MasterKey.from_text(settings.master_key.get_secret_value(), source="COST_WORKER_MASTER_KEY")
    elif settings.master_key_file is not None:
        current = read_master_key_file(settings.master_key_file)
    else:
        path = settings.default_master_key_file
        if not path.exists():
            if not generate:
                return None
            ensure_private_dir(settings.data_dir, "COST_WORKER_DATA_DIR")
            write_master_key_file(path, MasterKey.generate())
            print(GENERATED_KEY_WARNING.format(path=path), file=sys.stderr)
        current = read_master_key_file(path)
    return Keyring(current, [k for k in previous if k.id != current.id])


def load_keyring(settings: Settings) -> Keyring:
    """The keyring of `settings`, generating the default master key file when none is configured."""
    keyring = _keyring(settings, generate=True)
    assert keyring is not None
    return keyring


def ensure_private_dir(path: Path, setting: str) -> None:
    """Create `path` owner-only (0700) when missing; a path that cannot be a usable directory is a
    SettingsError naming `setting`. An existing directory keeps the mode its owner gave it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise SettingsError(f"invalid setting {setting}: {path} exists and is not a directory") from None
    except OSError as exc:
        raise SettingsError(f"invalid setting {setting}: cannot create directory {path}: "
                            f"{exc.strerror or type(exc).__name__}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SettingsError(f"invalid setting {setting}: directory {path} is not writable by this user")


def sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL (None for PostgreSQL or an in-memory database)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # make_engine explains a malformed URL
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser()


def check_settings(settings: Settings) -> Keyring | None:
    """What any command could trip over later, checked at its start, so each problem is one line naming
    its setting (exit 2) before anything is read, sent or written: the directories the database and the
    default key file live in, and every configured master key. Warns about the Admin key crossing the
    network unencrypted. Returns the keyring when one is configured or already generated."""
    db_file = sqlite_file(settings.effective_database_url)
    if db_file is not None:
        ensure_private_dir(db_file.parent, "COST_WORKER_DATABASE_URL" if settings.database_url
                           else "COST_WORKER_DATA_DIR")
    keyring = _keyring(settings, generate=False)
    if keyring is None:  # the default key file will be generated in the data directory
        ensure_private_dir(settings.data_dir, "COST_WORKER_DATA_DIR")
    if settings.sends_key_in_clear:
        log.warning("COST_WORKER_API_BASE_URL is %s: plain http to another host sends the Admin API key "
                    "unencrypted over the network; use https", settings.api_base_url)
    return keyring


@dataclass
class App:
    settings: Settings
    config_path: Path | None = None
    clock: Clock = field(default_factory=SystemClock)
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")

    def __post_init__(self) -> None:
        keyring = check_settings(self.settings)
        if keyring is not None:
            self.__dict__["keyring"] = keyring  # the cached_property below: the key files are read once

    @cached_property
    def engine(self) -> Engine:
        engine = make_engine(self.settings.effective_database_url)
        upgrade(engine)  # migrations are applied at start of every command that touches the database
        return engine

    @cached_property
    def claims(self) -> Claims:
        """This process's claims on integrations (locks that die with it: worker.storage.claims)."""
        return claims_for(self.engine)

    @cached_property
    def keyring(self) -> Keyring:
        return load_keyring(self.settings)

    @property
    def budget(self) -> RateBudget:
        return RateBudget(self.settings.requests_per_minute, self.settings.burst)

    @cached_property
    def db_executor(self) -> DbExecutor:
        return DbExecutor(*db_threads(self.engine.dialect.name))

    async def db(self, fn: Callable[..., T], *args: Any, bulk: bool = False) -> T:
        """Run a blocking database call off the event loop, in the caller's context (its log fields).

        On `db_executor`, not asyncio's default executor: that one (min(32, cpus + 4) threads, FIFO)
        also resolves host names for new connections, queued calls of a fleet waited behind each
        other's page stores, and SQLite writers on several threads polled for its lock with sleeps.
        `bulk` marks a page store (see `DbExecutor`).
        """
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.wrap_future(self.db_executor.submit(call, bulk=bulk))

    def close(self) -> None:
        if "db_executor" in self.__dict__:
            self.db_executor.shutdown()
        if "claims" in self.__dict__:
            self.claims.close()
        if "engine" in self.__dict__:
            self.engine.dispose()
