"""Claims that die with their process: at most one live process syncs an integration.

A sync holds its integration's claim from before its run record starts until after it is closed. The
claim is something the operating system or the database server gives back the moment the process is
gone (SIGKILL, an OOM kill, a crash), so the next process takes over at once instead of waiting for a
lease to expire:

- SQLite file: an exclusive `fcntl.flock` on `<db file>.locks/sync-<id>.lock`, one open file per
  claim. The kernel drops the lock when the process's last descriptor of it closes, which death does.
  flock locks belong to the open file, not the process, so two Apps in one process exclude each other
  as two processes do.
- PostgreSQL: a session advisory lock, `pg_try_advisory_lock(class, id)`, on one connection per
  process dedicated to claims (taken out of the pool). The server releases every lock of a session
  when its connection ends; the connection asks the server to probe the peer with TCP keepalives every
  few seconds, so even a host that vanished (power loss) frees its claims within about 15 s. One
  connection per process, not per sync: a fleet's 06:00 runs a thousand syncs at once. The class
  key is derived from the schema (blake2b, never Python's per-process hash()), so deployments in
  different schemas of one database never block each other; the id is the integration's.
- Anything else (SQLite in memory): no lock; the row lease alone, which another process may take over
  once it expires (`lease_seconds`).

The row lease (`lease_owner`, `lease_since`, `lease_expires_at`) stays as the record of who holds what:
a process that gets the claim takes the lease whatever it says (only a dead process could have left
it), every page's transaction checks it, and a process waiting for a claim reads it to say who holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

__all__ = ["AdvisoryClaims", "Claims", "FileClaims", "LeaseOnly", "claims_for", "lock_class"]


class Claims(Protocol):
    """Per-integration claims of one process (thread-safe: syncs claim from the database threads)."""

    @property
    def exclusive(self) -> bool:
        """True when a claim proves no other live process syncs the integration (the lease may be taken)."""

    def claim(self, integration_id: int) -> bool:
        """Take the claim without waiting; False when another process (or sync of this one) holds it."""

    def holds(self, integration_id: int) -> bool:
        """Whether this process still holds the claim (a broken PostgreSQL session lost all of them)."""

    def release(self, integration_id: int) -> None: ...

    def close(self) -> None: ...


class LeaseOnly:
    """No lock to take: the row lease (with its expiry) is the only claim."""

    exclusive = False

    def __init__(self) -> None:
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def claim(self, integration_id: int) -> bool:
        with self._lock:
            if integration_id in self._held:
                return False
            self._held.add(integration_id)
            return True

    def holds(self, integration_id: int) -> bool:
        with self._lock:
            return integration_id in self._held

    def release(self, integration_id: int) -> None:
        with self._lock:
            self._held.discard(integration_id)

    def close(self) -> None:
        with self._lock:
            self._held.clear()


class FileClaims:
    """flock on one file per integration, in a directory beside the SQLite file."""

    exclusive = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def _path(self, integration_id: int) -> Path:
        return self.directory / f"sync-{integration_id}.lock"

    def claim(self, integration_id: int) -> bool:
        with self._lock:
            if integration_id in self._fds:
                return False
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._path(integration_id), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            self._fds[integration_id] = fd
            return True

    def holds(self, integration_id: int) -> bool:
        with self._lock:
            return integration_id in self._fds

    def release(self, integration_id: int) -> None:
        with self._lock:
            fd = self._fds.pop(integration_id, None)
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the lock (the file stays: unlinking races)

    def close(self) -> None:
        with self._lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)


# TCP keepalive on the claims session, server side: a peer that stops answering (its host gone) is
# dropped after about idle + count x interval = 12 s, and with it the session's locks.
_KEEPALIVE = ("SET tcp_keepalives_idle = 6", "SET tcp_keepalives_interval = 2", "SET tcp_keepalives_count = 3",
              "SET tcp_user_timeout = 12000")


def lock_class(schema: str) -> int:
    """The advisory lock class (first int4 key) of the sync claims of a schema: stable across processes."""
    digest = hashlib.blake2b(f"cost-worker sync claim {schema}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryClaims:
    """PostgreSQL session advisory locks on one dedicated connection."""

    exclusive = True

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._conn: Connection | None = None
        self._class = 0
        self._held: set[int] = set()
        self._lock = threading.Lock()

    def _session(self) -> Connection:
        """The claims connection, (re)opened on demand; a new session holds none of the old one's locks."""
        if self._conn is None or self._conn.invalidated or self._conn.closed:
            self._held.clear()
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                for statement in _KEEPALIVE:
                    with contextlib.suppress(DBAPIError):  # a server without one of these settings
                        conn.exec_driver_sql(statement)
                self._class = lock_class(str(conn.exec_driver_sql("SELECT current_schema()").scalar_one()))
            except BaseException:
                conn.close()
                raise
            conn.detach()  # out of the pool: its session, and with it the locks, ends only with us
            self._conn = conn
        return self._conn

    def _call(self, sql: str, integration_id: int) -> Any:
        session = self._session()
        try:
            return session.execute(text(sql), {"c": self._class, "i": integration_id}).scalar()
        except DBAPIError:
            # The session is gone, and every lock it held with it: start over at the next call.
            self._held.clear()
            with contextlib.suppress(Exception):
                session.close()
            self._conn = None
            raise

    def claim(self, integration_id: int) -> bool:
        with self._lock:
            if integration_id in self._held:
                return False  # session locks are reentrant: a second sync in this process must not share one
            try:
                taken = self._call("SELECT pg_try_advisory_lock(:c, :i)", integration_id)
            except DBAPIError:  # the session had ended (a server restart, a network cut): once more, on a new one
                taken = self._call("SELECT pg_try_advisory_lock(:c, :i)", integration_id)
            if not taken:
                return False
            self._held.add(integration_id)
            return True

    def holds(self, integration_id: int) -> bool:
        with self._lock:
            if integration_id not in self._held:
                return False
            try:
                self._call("SELECT CAST(:c AS integer) + CAST(:i AS integer)", integration_id)  # the session is up
            except DBAPIError:
                return False
            return integration_id in self._held

    def release(self, integration_id: int) -> None:
        with self._lock:
            if integration_id not in self._held:
                return
            self._held.discard(integration_id)
            try:
                self._call("SELECT pg_advisory_unlock(:c, :i)", integration_id)
            except DBAPIError:
                log.warning("could not release the claim on integration %d (its session is gone, and the lock "
                            "with it)", integration_id)

    def close(self) -> None:
        with self._lock:
            self._held.clear()
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()  # detached: really closes, and the server drops its locks
                self._conn = None


def claims_for(engine: Engine) -> Claims:
    """The kind of claim the engine's database allows (see the module docstring)."""
    url = engine.url
    if engine.dialect.name == "postgresql":
        return AdvisoryClaims(engine)
    if engine.dialect.name == "sqlite" and url.database and url.database != ":memory:":
        db_file = Path(url.database).expanduser().resolve()
        return FileClaims(db_file.parent / f"{db_file.name}.locks")
    return LeaseOnly()
