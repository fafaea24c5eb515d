"""Deterministic organizations, usage records and the exact ground truth behind every report.

Everything is derived from ``(seed, org index, day, version)``: the same seed gives the same
organizations, keys and numbers in every process. A day's usage records are the single source
that both reports aggregate, so the cost report, the usage report and ``truth()`` always agree.
Restating a day bumps its version, which reseeds that day only. A spike multiplies one day's
token volume by a factor (the day's other draws unchanged), for budget and anomaly tests. The
``traffic`` model decides how much days differ: ``varied`` (the default) draws everything per day;
``steady`` keeps each org's workspaces, models and callers fixed and only jitters their volume.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from worker.simulator.prices import (
    CODE_EXECUTION_DESCRIPTION,
    CODE_EXECUTION_PICO_PER_UNIT,
    MODELS,
    TOKEN_TYPES,
    WEB_SEARCH_DESCRIPTION,
    WEB_SEARCH_PICO_PER_REQUEST,
    description,
    pico_to_dollars,
    unit_price_pico,
)

TRAFFIC: tuple[str, ...] = ("varied", "steady")
"""Traffic models: ``varied`` (everything drawn per day) or ``steady`` (a production-like org)."""

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Probability that a workspace uses a model on a given day; sonnet dominates like real traffic.
_MODEL_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("claude-sonnet-4-6", 0.8),
    ("claude-sonnet-4-5", 0.4),
    ("claude-haiku-4-5", 0.45),
    ("claude-opus-4-1", 0.25),
    ("claude-3-5-haiku-20241022", 0.2),
)


def stable_hash(*parts: object) -> int:
    """A 64-bit hash that is the same in every process (unlike ``hash()``)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def _base62(n: int, width: int) -> str:
    chars = []
    for _ in range(width):
        n, r = divmod(n, 62)
        chars.append(_BASE62[r])
    return "".join(chars)


def _ident(prefix: str, *parts: object) -> str:
    n = int.from_bytes(hashlib.blake2b("\x1f".join(map(str, parts)).encode()).digest(), "big")
    return prefix + _base62(n, 22)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    workspace_id: str | None
    service_account_id: str | None


@dataclass(frozen=True, slots=True)
class Workspace:
    id: str | None  # None is the default workspace
    name: str
    api_keys: tuple[ApiKey, ...]


@dataclass(frozen=True, slots=True)
class Org:
    """One simulated organization and its fake credentials."""

    index: int
    id: str
    name: str
    admin_key: str
    regular_key: str  # an ``sk-ant-api03-`` key: rejected by the Admin API
    workspaces: tuple[Workspace, ...]
    users: tuple[str, ...]
    scale: float  # relative traffic volume


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """Usage of one caller/model/tier/window in one minute of one day: the unit everything sums."""

    minute: int
    workspace_id: str | None
    api_key_id: str | None
    account_id: str | None
    service_account_id: str | None
    model: str
    service_tier: str
    context_window: str
    inference_geo: str
    speed: str
    uncached_input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_5m: int
    cache_creation_1h: int
    web_search_requests: int

    def tokens(self, token_type: str) -> int:
        if token_type == "cache_creation.ephemeral_5m_input_tokens":
            return self.cache_creation_5m
        if token_type == "cache_creation.ephemeral_1h_input_tokens":
            return self.cache_creation_1h
        value: int = getattr(self, token_type)
        return value

    def cost_pico(self) -> int:
        return sum(
            self.tokens(tt)
            * unit_price_pico(self.model, self.service_tier, self.context_window, tt)
            for tt in TOKEN_TYPES
        )


@dataclass(frozen=True, slots=True)
class CostRow:
    """One (workspace, description) line of a day's cost report, amount in pico-dollars."""

    workspace_id: str | None
    description: str
    cost_type: str
    model: str | None
    token_type: str | None
    service_tier: str | None
    context_window: str | None
    inference_geo: str | None
    pico: int


class DayData:
    """A generated day of one organization; ``fragments`` caches serialized report results.

    Cost rows are derived from the usage records on first use (a usage-only reader never pays).
    """

    __slots__ = ("usage", "fragments", "_cost", "_make_cost")

    def __init__(
        self,
        usage: tuple[UsageRecord, ...],
        make_cost: Callable[[], tuple[CostRow, ...]] = tuple,
    ) -> None:
        self.usage = usage
        self.fragments: dict[Any, tuple[int, str]] = {}
        self._cost: tuple[CostRow, ...] | None = None
        self._make_cost = make_cost

    @property
    def cost(self) -> tuple[CostRow, ...]:
        if self._cost is None:
            self._cost = self._make_cost()
        return self._cost


@dataclass(frozen=True, slots=True)
class TruthRow:
    """Exact totals of one (day, model); model None holds web search and code execution cost."""

    date: date
    model: str | None
    cost_usd: Decimal
    uncached_input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_5m_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    web_search_requests: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "date": self.date.isoformat(),
            "model": self.model,
            "cost_usd": f"{self.cost_usd:f}",
            "uncached_input_tokens": self.uncached_input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_5m_input_tokens": self.cache_creation_5m_input_tokens,
            "cache_creation_1h_input_tokens": self.cache_creation_1h_input_tokens,
            "web_search_requests": self.web_search_requests,
        }


def _make_org(seed: int, index: int) -> Org:
    rng = random.Random(stable_hash("org", seed, index))
    org_uuid = uuid.UUID(
        int=stable_hash("org-id", seed, index) << 64 | stable_hash("org-id-2", seed, index),
        version=4,
    )
    admin_suffix = f"{stable_hash('admin', seed, index):016x}"
    api_suffix = f"{stable_hash('api', seed, index):016x}"
    users = tuple(_ident("user_01", seed, index, "user", u) for u in range(rng.randint(1, 4)))
    workspaces = []
    names = ["Default"] + [f"Workspace {chr(ord('A') + i)}" for i in range(rng.randint(2, 4))]
    for w, name in enumerate(names):
        ws_id = None if w == 0 else _ident("wrkspc_01", seed, index, "ws", w)
        keys = []
        for k in range(rng.randint(1, 3)):
            service_account = (
                _ident("svcacct_01", seed, index, "sa", w, k) if rng.random() < 0.3 else None
            )
            key_id = _ident("apikey_01", seed, index, "key", w, k)
            keys.append(ApiKey(key_id, ws_id, service_account))
        workspaces.append(Workspace(ws_id, name, tuple(keys)))
    return Org(
        index=index,
        id=str(org_uuid),
        name=f"Simulated Org {index}",
        admin_key=f"sk-ant-admin01-sim-{index}-{admin_suffix}",
        regular_key=f"sk-ant-api03-sim-{index}-{api_suffix}",
        workspaces=tuple(workspaces),
        users=users,
        scale=rng.choice((0.3, 1.0, 1.0, 2.0, 5.0)),
    )


def _generate_day(
    seed: int, org: Org, day: date, version: int, *, traffic: str = "varied", factor: float = 1.0
) -> tuple[UsageRecord, ...]:
    rng = random.Random(stable_hash("day", seed, org.index, day.isoformat(), version))
    # varied: every choice is drawn per day (rows appear and vanish, sizes swing widely), which is what
    # the sync's edge cases need. steady: a production-like org that has the same workspaces, models
    # and callers every day and only their volume varies a little (what budgets and anomalies need).
    shape = random.Random(stable_hash("shape", seed, org.index)) if traffic == "steady" else rng
    # Some varied days have no usage at all; a restated day always has some, so restating changes it.
    if traffic == "varied" and version == 0 and rng.random() < 0.08:
        return ()
    weekday_factor = 0.35 if day.weekday() >= 5 else 1.0
    trend = 1.0 + 0.3 * math.sin(day.toordinal() / 17.0 + org.index)
    volume = org.scale * weekday_factor * trend * factor
    records: list[UsageRecord] = []
    for ws in org.workspaces:
        if shape.random() < 0.15:
            continue
        models = [m for m, p in _MODEL_WEIGHTS if shape.random() < p] or ["claude-sonnet-4-6"]
        for model in models:
            tiers = ["standard"] + (["batch"] if shape.random() < 0.3 else [])
            windows = ["0-200k"]
            if MODELS[model].long_context and shape.random() < 0.35:
                windows.append("200k-1M")
            callers: list[ApiKey | None] = list(
                shape.sample(ws.api_keys, k=shape.randint(1, min(2, len(ws.api_keys))))
            )
            if shape.random() < 0.2:
                callers.append(None)  # Console / Workbench usage: no api key
            for tier in tiers:
                for window in windows:
                    for caller in callers:
                        # steady: the day's own draw is only a jitter of about +-25% on the caller's size
                        jitter = 1.0 if shape is rng else math.exp(
                            0.5 * (rng.random() + rng.random() + rng.random() - 1.5))
                        records.append(
                            _make_record(shape, org, ws, model, tier, window, caller, volume * jitter)
                        )
    return tuple(records)


def _make_record(
    rng: random.Random,
    org: Org,
    ws: Workspace,
    model: str,
    tier: str,
    window: str,
    caller: ApiKey | None,
    volume: float,
) -> UsageRecord:
    r = rng.random  # only random() draws: several times faster than randint/uniform/lognormvariate
    uncached = max(1, int(math.exp(10.5 + 5.0 * r()) * volume * (3 if window == "200k-1M" else 1)))
    return UsageRecord(
        minute=int(r() * 1440),
        workspace_id=ws.id,
        api_key_id=caller.id if caller else None,
        account_id=org.users[int(r() * len(org.users))] if caller is None else None,
        service_account_id=caller.service_account_id if caller else None,
        model=model,
        service_tier=tier,
        context_window=window,
        inference_geo="global",
        speed="standard",
        uncached_input_tokens=uncached,
        output_tokens=max(1, int(uncached * (0.05 + 0.55 * r()))),
        cache_read_input_tokens=int(uncached * (0.5 + 3.5 * r())) if r() < 0.7 else 0,
        cache_creation_5m=int(uncached * (0.05 + 0.45 * r())) if r() < 0.6 else 0,
        cache_creation_1h=int(uncached * (0.05 + 0.25 * r())) if r() < 0.25 else 0,
        web_search_requests=1 + int(r() * 300) if r() < 0.2 else 0,
    )


def _cost_rows(
    seed: int, org: Org, day: date, version: int, usage: tuple[UsageRecord, ...]
) -> tuple[CostRow, ...]:
    rows: dict[tuple[str | None, str], list[Any]] = {}
    searches: dict[str | None, int] = {}
    for r in usage:
        counts = (r.uncached_input_tokens, r.output_tokens, r.cache_read_input_tokens,
                  r.cache_creation_5m, r.cache_creation_1h)
        for tt, tokens in zip(TOKEN_TYPES, counts, strict=True):
            if not tokens:
                continue
            desc = description(r.model, r.service_tier, r.context_window, tt)
            key = (r.workspace_id, desc)
            pico = tokens * unit_price_pico(r.model, r.service_tier, r.context_window, tt)
            if key in rows:
                rows[key][-1] += pico
            else:
                rows[key] = [r.workspace_id, desc, "tokens", r.model, tt, r.service_tier,
                             r.context_window, r.inference_geo, pico]
        if r.web_search_requests:
            searches[r.workspace_id] = searches.get(r.workspace_id, 0) + r.web_search_requests
    for ws_id, n in searches.items():
        rows[(ws_id, WEB_SEARCH_DESCRIPTION)] = [
            ws_id, WEB_SEARCH_DESCRIPTION, "web_search", None, None, None, None, None,
            n * WEB_SEARCH_PICO_PER_REQUEST,
        ]
    if usage:
        rng = random.Random(stable_hash("code", seed, org.index, day.isoformat(), version))
        for ws in org.workspaces:
            if rng.random() < 0.2:
                units = rng.randint(1, 500)
                rows[(ws.id, CODE_EXECUTION_DESCRIPTION)] = [
                    ws.id, CODE_EXECUTION_DESCRIPTION, "code_execution", None, None, None, None,
                    None, units * CODE_EXECUTION_PICO_PER_UNIT,
                ]
    return tuple(CostRow(*v) for v in rows.values())


_EMPTY_DAY = DayData(())


class SimulatorData:
    """Generated data and exact ground truth for ``orgs`` organizations.

    ``today`` is the last day with data (None: the real UTC date, re-read on every call). Days
    after it are empty, as are days more than ``history_days`` before it. Generated days are kept
    in an LRU cache of ``cache_days`` entries. Thread-safe.
    """

    def __init__(
        self,
        seed: int = 0,
        orgs: int = 1,
        today: date | None = None,
        *,
        history_days: int = 730,
        cache_days: int = 50_000,
        traffic: str = "varied",
    ) -> None:
        if orgs < 1:
            raise ValueError("orgs must be at least 1")
        if traffic not in TRAFFIC:
            raise ValueError(f"traffic must be one of {', '.join(TRAFFIC)}")
        self.seed = seed
        self.traffic = traffic
        self.history_days = history_days
        self._today = today
        self._cache_days = cache_days
        self._cache: OrderedDict[tuple[int, date, int, float], DayData] = OrderedDict()
        self._versions: dict[tuple[int, date], int] = {}
        self._spikes: dict[tuple[int, date], float] = {}
        self._lock = threading.Lock()
        self.orgs: tuple[Org, ...] = tuple(_make_org(seed, i) for i in range(orgs))

    def today(self) -> date:
        """The last day with data."""
        return self._today if self._today is not None else datetime.now(UTC).date()

    def org(self, index: int) -> Org:
        if not 0 <= index < len(self.orgs):
            raise KeyError(f"no org {index}")
        return self.orgs[index]

    # -- restatements -------------------------------------------------------------------------

    def version(self, org: int, day: date) -> int:
        return self._versions.get((org, day), 0)

    def restate(self, org: int, day: date) -> int:
        """Change one past day's numbers (deterministically); returns the day's new version."""
        self.org(org)
        if day > self.today():
            raise ValueError(f"cannot restate {day}: it is after today ({self.today()})")
        with self._lock:
            version = self._versions.get((org, day), 0) + 1
            self._versions[(org, day)] = version
        return version

    def restatements(self) -> dict[tuple[int, date], int]:
        with self._lock:
            return dict(self._versions)

    def clear_restatements(self) -> None:
        with self._lock:
            self._versions.clear()
            self._spikes.clear()

    def spike(self, org: int, day: date, factor: float) -> None:
        """Multiply one day's token volume by ``factor`` (1 removes the spike); its other draws stay."""
        self.org(org)
        if day > self.today():
            raise ValueError(f"cannot spike {day}: it is after today ({self.today()})")
        if not 0 < factor <= 1000:
            raise ValueError("spike factor must be in (0, 1000]")
        with self._lock:
            if factor == 1:
                self._spikes.pop((org, day), None)
            else:
                self._spikes[(org, day)] = factor

    def spikes(self) -> dict[tuple[int, date], float]:
        with self._lock:
            return dict(self._spikes)

    # -- generated days -----------------------------------------------------------------------

    def has_data(self, day: date) -> bool:
        today = self.today()
        return today - timedelta(days=self.history_days - 1) <= day <= today

    def day(self, org: int, day: date) -> DayData:
        """The generated day (cached); empty outside the history window."""
        if not self.has_data(day):
            return _EMPTY_DAY
        version = self.version(org, day)
        with self._lock:
            factor = self._spikes.get((org, day), 1.0)
        key = (org, day, version, factor)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        o = self.org(org)
        usage = _generate_day(self.seed, o, day, version, traffic=self.traffic, factor=factor)
        seed = self.seed
        data = DayData(usage, lambda: _cost_rows(seed, o, day, version, usage))
        with self._lock:
            data = self._cache.setdefault(key, data)
            while len(self._cache) > self._cache_days:
                self._cache.popitem(last=False)
        return data

    def records(self, org: int, day: date) -> tuple[UsageRecord, ...]:
        """The day's underlying usage records."""
        return self.day(org, day).usage

    # -- ground truth -------------------------------------------------------------------------

    def truth(self, org: int, start: date, end: date) -> list[TruthRow]:
        """Exact cost (Decimal dollars) and tokens per (day, model) for days in ``[start, end)``.

        Model None carries web search and code execution cost (they have no model in the cost
        report). Web search request counts stay on the model that made them, as in usage.
        """
        out: list[TruthRow] = []
        d = start
        while d < end:
            data = self.day(org, d)
            per_model: dict[str | None, list[int]] = {}
            for r in data.usage:
                acc = per_model.setdefault(r.model, [0] * 7)
                acc[0] += r.cost_pico()
                acc[1] += r.uncached_input_tokens
                acc[2] += r.output_tokens
                acc[3] += r.cache_read_input_tokens
                acc[4] += r.cache_creation_5m
                acc[5] += r.cache_creation_1h
                acc[6] += r.web_search_requests
            other = sum(row.pico for row in data.cost if row.model is None)
            if other:
                per_model[None] = [other, 0, 0, 0, 0, 0, 0]
            for model in sorted(per_model, key=lambda m: (m is None, m or "")):
                a = per_model[model]
                out.append(TruthRow(d, model, pico_to_dollars(a[0]), *a[1:]))
            d += timedelta(days=1)
        return out

    def truth_total(self, org: int, start: date, end: date) -> Decimal:
        """Exact total cost in dollars over ``[start, end)``."""
        return sum((r.cost_usd for r in self.truth(org, start, end)), Decimal(0))
