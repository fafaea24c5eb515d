"""The application context the commands share: settings, the migrated database, the keyring, the clock."""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sqlalchemy import Engine

from worker.clock import Clock, SystemClock
from worker.ratelimit import RateBudget
from worker.settings import Settings
from worker.storage.db import make_engine, upgrade
from worker.vault import InvalidMasterKey, Keyring, MasterKey, read_master_key_file, write_master_key_file

log = logging.getLogger(__name__)

GENERATED_KEY_WARNING = (
    "WARNING: no master key configured; generated one at {path}. It encrypts every stored Admin key: "
    "PRODUCTION MUST SUPPLY ITS OWN (COST_WORKER_MASTER_KEY_FILE from a secret store, or COST_WORKER_MASTER_KEY) "
    "and back it up; losing it means reconnecting every integration."
)


def load_keyring(settings: Settings) -> Keyring:
    """The current master key (env, file, or a generated default file) plus the previous ones for rotation."""
    if settings.master_key is not None and settings.master_key_file is not None:
        raise InvalidMasterKey("set only one of COST_WORKER_MASTER_KEY and COST_WORKER_MASTER_KEY_FILE")
    if settings.master_key is not None:
        current = MasterKey.from_text(settings.master_key.get_secret_value(), source="COST_WORKER_MASTER_KEY")
    elif settings.master_key_file is not None:
        current = read_master_key_file(settings.master_key_file)
    else:
        path = settings.default_master_key_file
        if not path.exists():
            write_master_key_file(path, MasterKey.generate())
            print(GENERATED_KEY_WARNING.format(path=path), file=sys.stderr)
        current = read_master_key_file(path)
    previous = [MasterKey.from_text(k.get_secret_value(), source="COST_WORKER_PREVIOUS_MASTER_KEYS")
                for k in settings.previous_master_keys]
    previous += [read_master_key_file(p) for p in settings.previous_master_key_files]
    return Keyring(current, [k for k in previous if k.id != current.id])


@dataclass
class App:
    settings: Settings
    config_path: Path | None = None
    clock: Clock = field(default_factory=SystemClock)
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")

    @cached_property
    def engine(self) -> Engine:
        engine = make_engine(self.settings.effective_database_url)
        upgrade(engine)  # migrations are applied at start of every command that touches the database
        return engine

    @cached_property
    def keyring(self) -> Keyring:
        return load_keyring(self.settings)

    @property
    def budget(self) -> RateBudget:
        return RateBudget(self.settings.requests_per_minute, self.settings.burst)

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
