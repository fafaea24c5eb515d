"""The simulator's bill synced into a test database, in process: the ground truth budgets, anomalies and
the FOCUS export are checked against (`SimulatorData.truth`, its cost rows), never the code's own sums."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import shutil
import sqlite3
import tempfile
import weakref
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from worker.app import App, sqlite_file
from worker.clock import FakeClock
from worker.integrations import check_connection, connect
from worker.secret import AdminKey
from worker.settings import Settings, Tier
from worker.simulator import SimulatorApp, build_app
from worker.simulator.prices import pico_to_dollars
from worker.simulator.truth import analytics_truth
from worker.sync.engine import sync_integration
from worker.vault import MasterKey

TODAY = date(2026, 3, 10)  # the simulator's last day with data; the tests' clock is noon of it
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def sim_transport(sim: SimulatorApp) -> httpx.MockTransport:
    """The simulator as an httpx transport (no sockets, no rate limit)."""
    def handle(request: httpx.Request) -> httpx.Response:
        answer = sim.handle(request.method, request.url.path, list(request.url.params.multi_items()),
                            dict(request.headers), request.content)
        return httpx.Response(answer.status, content=answer.body, headers=answer.headers)
    return httpx.MockTransport(handle)


# The simulators make_sim built, by what they were built from: a fresh one's backfill is the same every time.
_RECIPES: weakref.WeakKeyDictionary[SimulatorApp, tuple[str, int, int]] = weakref.WeakKeyDictionary()
# Backfilled SQLite files, by everything the backfill's rows depend on (see `_synced_copy`).
_SYNCED: dict[str, tuple[Path, int]] = {}
_SYNCED_DIR = Path(tempfile.mkdtemp(prefix="cw-synced-"))
atexit.register(shutil.rmtree, _SYNCED_DIR, ignore_errors=True)


def make_sim(traffic: str = "steady", seed: int = 0, orgs: int = 1) -> SimulatorApp:
    sim = build_app(orgs=orgs, seed=seed, today=TODAY, requests_per_minute=0, traffic=traffic)
    _RECIPES[sim] = (traffic, seed, orgs)
    return sim


# One master key for the session's watch Apps: a copied backfill holds its Admin key sealed with it.
WATCH_KEY = MasterKey.generate()


def watch_app(db_url: str, tmp_path: Path, clock: FakeClock | None = None, master_key: MasterKey | None = None,
              **settings: Any) -> App:
    key = master_key or WATCH_KEY
    values: dict[str, Any] = {"data_dir": tmp_path / "data", "database_url": db_url,
                              "master_key": key.to_text(), "api_base_url": "https://sim.test",
                              "requests_per_minute": 6000, "burst": 100}
    values.update(settings)
    return App(Settings(**values), clock=clock or FakeClock(NOW))


def connect_sim(app: App, sim: SimulatorApp, org: int = 0, tier: Tier = "pro") -> int:
    """Connect the simulated org and run its backfill (pro: 365 days ending today).

    A backfill costs about 10 ms a day and dozens of tests need the same one: the first runs it for real
    into a file of its own, and the others, on an SQLite database nobody opened yet, start from a copy of
    that file (the bytes the same backfill would leave; see `_synced_copy`)."""
    copied = _synced_copy(app, sim, org, tier)
    if copied is not None:
        return copied
    return _connect(app, sim, org, tier)


def _connect(app: App, sim: SimulatorApp, org: int, tier: Tier) -> int:
    transport = sim_transport(sim)
    key = AdminKey(sim.data.orgs[org].admin_key)
    organization = asyncio.run(check_connection(app, key, transport=transport))
    iid = connect(app, key, organization, label=None, tier=tier)
    outcome = asyncio.run(sync_integration(app, iid, "backfill", transport=transport))
    assert outcome.ok, outcome.message
    return iid


def _state(sim: SimulatorApp) -> str:
    """What a simulator answers besides what it was built from: names, keys and revocations, restated and
    spiked days, faults waiting, requests served."""
    return repr([sim.keys_json(), sorted(sim.data.restatements().items()), sorted(sim.data.spikes().items()),
                 sorted(sim.data.key_spikes().items()), sim.faults.active(), sim.stats.as_json()])


_FRESH: dict[tuple[str, int, int], str] = {}  # recipe -> the _state of a simulator just built from it


def _synced_copy(app: App, sim: SimulatorApp, org: int, tier: Tier) -> int | None:
    """Put a backfilled copy at the app's database and return the integration's id, or None when a copy
    would not be what a backfill leaves: the database is PostgreSQL or already exists (other Apps may
    have it open), or the simulator is not as make_sim built it (a fault, a restated day, a request served)."""
    target = sqlite_file(app.settings.effective_database_url)
    recipe = _RECIPES.get(sim)
    if target is None or target.exists() or recipe is None:
        return None
    if recipe not in _FRESH:
        _FRESH[recipe] = _state(make_sim(*recipe))
    if _state(sim) != _FRESH[recipe]:
        return None
    s = app.settings
    assert s.master_key is not None  # watch_app always sets one: the copy's Admin key is sealed with it
    # Everything the stored rows depend on: the simulator, the org and tier, the clock (timestamps), the
    # master key (the sealed Admin key) and every setting but where the files are and what only watching reads.
    depends = json.dumps([recipe, org, tier, app.clock.now().isoformat(), s.master_key.get_secret_value(),
                          s.model_dump(mode="json", exclude={"database_url", "data_dir", "budgets", "notify",
                                                             "anomaly_min_score", "anomaly_min_usd"})], sort_keys=True)
    key = hashlib.sha256(depends.encode()).hexdigest()  # the master key is in it
    if key not in _SYNCED:
        synced = _SYNCED_DIR / f"{len(_SYNCED)}.db"
        template = App(s.model_copy(update={"database_url": f"sqlite:///{synced}", "data_dir": _SYNCED_DIR}),
                       clock=FakeClock(app.clock.now()))
        try:  # on a simulator of its own, so this test's sees what every other test's does: nothing yet
            iid = _connect(template, make_sim(*recipe), org, tier)
        finally:
            template.close()
        with contextlib.closing(sqlite3.connect(synced, isolation_level=None)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file, which is what is copied
        _SYNCED[key] = synced, iid
    synced, iid = _SYNCED[key]
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(synced, target)
    target.chmod(0o600)
    return iid


def resync(app: App, sim: SimulatorApp, iid: int) -> None:
    """A manual sync: re-reads the trailing window (restated days) like the daily one."""
    outcome = asyncio.run(sync_integration(app, iid, "manual", transport=sim_transport(sim)))
    assert outcome.ok, outcome.message


def truth_total(sim: SimulatorApp, first: date, last: date, org: int = 0, *, model: str | None = None,
                workspace: str | None = None) -> Decimal:
    """The simulator's own exact cost over `[first, last]`, optionally of one model or one workspace ('' = the
    default workspace), from its data model."""
    total = Decimal(0)
    day = first
    while day <= last:
        for row in sim.data.day(org, day).cost:
            if model is not None and (row.model or "") != model:
                continue
            if workspace is not None and (row.workspace_id or "") != workspace:
                continue
            total += pico_to_dollars(row.pico)
        day += timedelta(days=1)
    return total


def analytics_total(sim: SimulatorApp, first: date, last: date, by: str, key: str | None, org: int = 0, *,
                    model: str | None = None, list_price: bool = False) -> Decimal:
    """The simulator's Analytics API truth over `[first, last]` for one key of `by` (`api_key`, `actor`, ...),
    optionally of one model: billed `amount` (or `list_amount`), exact, from its usage records."""
    field = "list_cost_usd" if list_price else "cost_usd"
    return sum((Decimal(r[field]) for r in analytics_truth(sim.data, org, first, last, by)
                if r["key"] == key and (model is None or r["model"] == model)), Decimal(0))
