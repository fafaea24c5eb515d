"""Deterministic organizations, usage records and the exact ground truth behind every report.

Everything is derived from ``(seed, org index, day, version)``: the same seed gives the same
organizations, keys and numbers in every process. A day's usage records are the single source
that both reports aggregate, so the cost report, the usage report and ``truth()`` always agree.
Restating a day bumps its version, which reseeds that day only. A spike multiplies one day's
token volume (or one API key's) by a factor (the day's other draws unchanged), for budget and anomaly tests. The
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from worker.simulator.prices import (
    CODE_EXECUTION_DESCRIPTION,
    CODE_EXECUTION_PICO_PER_UNIT,
    LEGACY_COST_TIERS,
    MODELS,
    TOKEN_TYPES,
    WEB_SEARCH_DESCRIPTION,
    WEB_SEARCH_PICO_PER_REQUEST,
    billed_unit_price_pico,
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
class User:
    """A member: `removed` users left the organization (email kept, `deleted` true in actor objects)."""

    id: str
    email: str
    name: str | None
    removed: bool = False


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    workspace_id: str | None  # the legacy reports' id: None is the default workspace
    service_account_id: str | None
    name: str = ""
    user_id: str | None = None  # the user principal the key acts as (its usage is attributed to them)


@dataclass(frozen=True, slots=True)
class Workspace:
    id: str | None  # None is the default workspace (the legacy reports' null)
    name: str
    api_keys: tuple[ApiKey, ...]
    tagged_id: str = ""  # its real id, which the Analytics API and /workspaces give even for the default


@dataclass(frozen=True, slots=True)
class OrgShape:
    """A fixed organization size (benchmarks): workspaces besides the default, API keys, users, models."""

    workspaces: int
    api_keys: int
    users: int
    models: int

    @classmethod
    def parse(cls, text: str) -> OrgShape:
        """`small`, `medium`, `large` or `W,K,U,M` (workspaces, keys, users, models)."""
        if text in SHAPES:
            return SHAPES[text]
        try:
            w, k, u, m = (int(p) for p in text.split(","))
        except ValueError:
            raise ValueError(f"org shape must be small, medium, large or W,K,U,M, got {text!r}") from None
        if w < 0 or k < 1 or u < 1 or not 1 <= m <= len(_MODEL_WEIGHTS):
            raise ValueError(f"org shape {text!r} out of range (keys, users >= 1; models 1..{len(_MODEL_WEIGHTS)})")
        return cls(w, k, u, m)


SHAPES: dict[str, OrgShape] = {
    "small": OrgShape(workspaces=1, api_keys=3, users=4, models=2),
    "medium": OrgShape(workspaces=3, api_keys=8, users=15, models=3),
    "large": OrgShape(workspaces=4, api_keys=20, users=50, models=5),
}


@dataclass(frozen=True, slots=True)
class Org:
    """One simulated organization and its fake credentials."""

    index: int
    id: str
    name: str
    admin_key: str
    regular_key: str  # an ``sk-ant-api03-`` key: rejected by the Admin API
    workspaces: tuple[Workspace, ...]
    users: tuple[User, ...]
    scale: float  # relative traffic volume
    discount_pct: int = 0  # negotiated discount on token prices: Analytics `amount` vs `list_amount`
    models: tuple[str, ...] = ()  # the models it uses (all of _MODEL_WEIGHTS when empty)

    def user(self, user_id: str) -> User:
        for u in self.users:
            if u.id == user_id:
                return u
        raise KeyError(user_id)

    @property
    def api_keys(self) -> tuple[ApiKey, ...]:
        return tuple(k for w in self.workspaces for k in w.api_keys)


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
    product: str = "messages_api"  # the Analytics API's product surface
    requests: int = 1

    def tokens(self, token_type: str) -> int:
        if token_type == "cache_creation.ephemeral_5m_input_tokens":
            return self.cache_creation_5m
        if token_type == "cache_creation.ephemeral_1h_input_tokens":
            return self.cache_creation_1h
        value: int = getattr(self, token_type)
        return value

    def cost_pico(self) -> int:
        """Token cost at list prices."""
        return sum(
            self.tokens(tt)
            * unit_price_pico(self.model, self.service_tier, self.context_window, tt)
            for tt in TOKEN_TYPES
        )

    def billed_pico(self, discount_pct: int) -> int:
        """Token cost after the organization's discount: what both cost reports bill."""
        return sum(
            self.tokens(tt)
            * billed_unit_price_pico(self.model, self.service_tier, self.context_window, tt, discount_pct)
            for tt in TOKEN_TYPES
        )


@dataclass(frozen=True, slots=True)
class CodeExecution:
    """Code execution billed to one workspace on one day (no model, key or actor)."""

    workspace_id: str | None
    minute: int
    units: int

    @property
    def pico(self) -> int:
        return self.units * CODE_EXECUTION_PICO_PER_UNIT


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

    __slots__ = ("_code", "_cost", "_make_code", "_make_cost", "fragments", "usage")

    def __init__(
        self,
        usage: tuple[UsageRecord, ...],
        make_cost: Callable[[], tuple[CostRow, ...]] = tuple,
        make_code: Callable[[], tuple[CodeExecution, ...]] = tuple,
    ) -> None:
        self.usage = usage
        self.fragments: dict[Any, Any] = {}
        self._cost: tuple[CostRow, ...] | None = None
        self._make_cost = make_cost
        self._code: tuple[CodeExecution, ...] | None = None
        self._make_code = make_code

    @property
    def cost(self) -> tuple[CostRow, ...]:
        """The legacy cost report's rows (no Priority Tier)."""
        if self._cost is None:
            self._cost = self._make_cost()
        return self._cost

    @property
    def code_execution(self) -> tuple[CodeExecution, ...]:
        if self._code is None:
            self._code = self._make_code()
        return self._code


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


_FIRST_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kemal", "Lena",
                "Mo", "Nia", "Omar", "Pia", "Quinn", "Ravi", "Sara", "Tomas", "Uma", "Vik", "Wen", "Xavi",
                "Yara", "Zoe")


def _users(seed: int, index: int, count: int) -> tuple[User, ...]:
    users = []
    for u in range(count):
        first = _FIRST_NAMES[u % len(_FIRST_NAMES)]
        email = f"{first.lower()}{'' if u < len(_FIRST_NAMES) else u // len(_FIRST_NAMES)}@org{index}.example.com"
        removed = count >= 3 and u == count - 1  # one former member: email kept, `deleted` in actor objects
        users.append(User(_ident("user_01", seed, index, "user", u), email, f"{first} Example", removed))
    return tuple(users)


def _key(seed: int, index: int, w: int, k: int, ws_id: str | None, ws_name: str, service_account: str | None,
         users: tuple[User, ...]) -> ApiKey:
    # A fifth of the keys without a service account act as a user (their usage is attributed to that user).
    pick = stable_hash("principal", seed, index, w, k)
    user_id = users[pick // 5 % len(users)].id if service_account is None and pick % 5 == 0 else None
    return ApiKey(_ident("apikey_01", seed, index, "key", w, k), ws_id, service_account,
                  f"{ws_name} key {k + 1}", user_id)


def _make_org(seed: int, index: int, shape: OrgShape | None = None) -> Org:
    rng = random.Random(stable_hash("org", seed, index))
    org_uuid = uuid.UUID(
        int=stable_hash("org-id", seed, index) << 64 | stable_hash("org-id-2", seed, index),
        version=4,
    )
    admin_suffix = f"{stable_hash('admin', seed, index):016x}"
    api_suffix = f"{stable_hash('api', seed, index):016x}"
    workspaces = []
    models: tuple[str, ...] = ()
    if shape is None:
        users = _users(seed, index, rng.randint(1, 4))
        names = ["Default"] + [f"Workspace {chr(ord('A') + i)}" for i in range(rng.randint(2, 4))]
        for w, name in enumerate(names):
            ws_id = None if w == 0 else _ident("wrkspc_01", seed, index, "ws", w)
            keys = []
            for k in range(rng.randint(1, 3)):
                service_account = (
                    _ident("svac_01", seed, index, "sa", w, k) if rng.random() < 0.3 else None
                )
                keys.append(_key(seed, index, w, k, ws_id, name, service_account, users))
            workspaces.append(Workspace(ws_id, name, tuple(keys), _ident("wrkspc_01", seed, index, "ws", w)))
        scale = rng.choice((0.3, 1.0, 1.0, 2.0, 5.0))
    else:
        users = _users(seed, index, shape.users)
        names = ["Default"] + [f"Workspace {i + 1}" for i in range(shape.workspaces)]
        per_ws: list[list[ApiKey]] = [[] for _ in names]
        for k in range(shape.api_keys):
            w = k % len(names)
            ws_id = None if w == 0 else _ident("wrkspc_01", seed, index, "ws", w)
            service_account = (_ident("svac_01", seed, index, "sa", w, k)
                               if stable_hash("sa", seed, index, k) % 5 == 0 else None)
            per_ws[w].append(_key(seed, index, w, len(per_ws[w]), ws_id, names[w], service_account, users))
        for w, name in enumerate(names):
            ws_id = None if w == 0 else _ident("wrkspc_01", seed, index, "ws", w)
            workspaces.append(Workspace(ws_id, name, tuple(per_ws[w]), _ident("wrkspc_01", seed, index, "ws", w)))
        models = tuple(m for m, _ in _MODEL_WEIGHTS[: shape.models])
        scale = 1.0
    return Org(
        index=index,
        id=str(org_uuid),
        name=f"Simulated Org {index}",
        admin_key=f"sk-ant-admin01-sim-{index}-{admin_suffix}",
        regular_key=f"sk-ant-api03-sim-{index}-{api_suffix}",
        workspaces=tuple(workspaces),
        users=users,
        scale=scale,
        discount_pct=(5, 10, 15, 20)[stable_hash("discount", seed, index) % 4],
        models=models,
    )


def _generate_day(
    seed: int, org: Org, day: date, version: int, *, traffic: str = "varied", factor: float = 1.0,
    key_factors: Mapping[str, float] | None = None,
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
    allowed = org.models
    for ws in org.workspaces:
        if shape.random() < 0.15 or not ws.api_keys:
            continue
        # Every model's draw happens (so an organization's other numbers do not depend on its models).
        models = [m for m, p in _MODEL_WEIGHTS if shape.random() < p and (not allowed or m in allowed)]
        models = models or [allowed[0] if allowed else "claude-sonnet-4-6"]
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
                        keyed = (key_factors or {}).get(caller.id, 1.0) if caller else 1.0
                        records.append(
                            _make_record(shape, org, ws, model, tier, window, caller, volume * jitter * keyed)
                        )
    if records:
        records.extend(_more_records(seed, org, day, version, volume, steady=traffic == "steady",
                                     key_factors=key_factors))
    return tuple(records)


def _more_records(seed: int, org: Org, day: date, version: int, volume: float, *,
                  steady: bool = False, key_factors: Mapping[str, float] | None = None) -> list[UsageRecord]:
    """Priority Tier calls and Claude Code sessions (a stream of its own: the records above stay as they were).
    With steady traffic the same keys and users call every day; only their volume varies a little."""
    rng = random.Random(stable_hash("day-more", seed, org.index, day.isoformat(), version))
    shape = random.Random(stable_hash("shape-more", seed, org.index)) if steady else rng

    def size() -> float:
        return volume if not steady else volume * math.exp(0.5 * (rng.random() + rng.random() + rng.random() - 1.5))

    first = org.models[0] if org.models else "claude-sonnet-4-6"
    out = []
    for ws in org.workspaces:
        for key in ws.api_keys:
            if shape.random() < 0.15:
                out.append(_make_record(shape, org, ws, first, "priority", "0-200k", key,
                                        size() * (key_factors or {}).get(key.id, 1.0)))
    coding = [m for m in ("claude-sonnet-4-6", "claude-opus-4-1") if not org.models or m in org.models] or [first]
    default = org.workspaces[0]
    for user in org.users:
        if shape.random() < 0.5:
            model = coding[int(shape.random() * len(coding))]
            out.append(_make_record(shape, org, default, model, "standard", "0-200k", None, size() * 0.3,
                                    account=user.id, product="claude_code"))
    return out


def _make_record(
    rng: random.Random,
    org: Org,
    ws: Workspace,
    model: str,
    tier: str,
    window: str,
    caller: ApiKey | None,
    volume: float,
    *,
    account: str | None = None,
    product: str | None = None,
) -> UsageRecord:
    r = rng.random  # only random() draws: several times faster than randint/uniform/lognormvariate
    uncached = max(1, int(math.exp(10.5 + 5.0 * r()) * volume * (3 if window == "200k-1M" else 1)))
    minute = int(r() * 1440)  # draws in the order they always had
    if caller is not None:
        account_id = caller.user_id
    elif account is not None:
        account_id = account
    else:
        account_id = org.users[int(r() * len(org.users))].id
    if product is None:
        product = "claude_console" if caller is None else "message_batches_api" if tier == "batch" else "messages_api"
    return UsageRecord(
        minute=minute,
        workspace_id=ws.id,
        api_key_id=caller.id if caller else None,
        account_id=account_id,
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
        product=product,
        requests=1 + uncached // 20000,
    )


def _code_executions(seed: int, org: Org, day: date, version: int,
                     usage: tuple[UsageRecord, ...]) -> tuple[CodeExecution, ...]:
    if not usage:
        return ()
    rng = random.Random(stable_hash("code", seed, org.index, day.isoformat(), version))
    out = []
    for w, ws in enumerate(org.workspaces):
        if rng.random() < 0.2:
            units = rng.randint(1, 500)
            out.append(CodeExecution(ws.id, stable_hash("code-minute", seed, org.index, day.isoformat(), w) % 1440,
                                     units))
    return tuple(out)


def _cost_rows(org: Org, usage: tuple[UsageRecord, ...], code: tuple[CodeExecution, ...]) -> tuple[CostRow, ...]:
    """The legacy cost report of a day: billed (discounted) token prices, no Priority Tier."""
    rows: dict[tuple[str | None, str], list[Any]] = {}
    searches: dict[str | None, int] = {}
    discount = org.discount_pct
    for r in usage:
        if r.web_search_requests:
            searches[r.workspace_id] = searches.get(r.workspace_id, 0) + r.web_search_requests
        if r.service_tier not in LEGACY_COST_TIERS:
            continue
        counts = (r.uncached_input_tokens, r.output_tokens, r.cache_read_input_tokens,
                  r.cache_creation_5m, r.cache_creation_1h)
        for tt, tokens in zip(TOKEN_TYPES, counts, strict=True):
            if not tokens:
                continue
            desc = description(r.model, r.service_tier, r.context_window, tt)
            key = (r.workspace_id, desc)
            pico = tokens * billed_unit_price_pico(r.model, r.service_tier, r.context_window, tt, discount)
            if key in rows:
                rows[key][-1] += pico
            else:
                rows[key] = [r.workspace_id, desc, "tokens", r.model, tt, r.service_tier,
                             r.context_window, r.inference_geo, pico]
    for ws_id, n in searches.items():
        rows[(ws_id, WEB_SEARCH_DESCRIPTION)] = [
            ws_id, WEB_SEARCH_DESCRIPTION, "web_search", None, None, None, None, None,
            n * WEB_SEARCH_PICO_PER_REQUEST,
        ]
    for c in code:
        rows[(c.workspace_id, CODE_EXECUTION_DESCRIPTION)] = [
            c.workspace_id, CODE_EXECUTION_DESCRIPTION, "code_execution", None, None, None, None, None, c.pico,
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
        shapes: dict[int, OrgShape] | None = None,
        analytics_lag_minutes: int = 180,
    ) -> None:
        if orgs < 1:
            raise ValueError("orgs must be at least 1")
        if traffic not in TRAFFIC:
            raise ValueError(f"traffic must be one of {', '.join(TRAFFIC)}")
        if not 0 <= analytics_lag_minutes <= 7 * 1440:
            raise ValueError("analytics_lag_minutes must be 0 .. 10080")
        self.seed = seed
        self.traffic = traffic
        self.history_days = history_days
        self.analytics_lag_minutes = analytics_lag_minutes
        self._today = today
        self._cache_days = cache_days
        self._cache: OrderedDict[tuple[int, date, int, float, tuple[tuple[str, float], ...]], DayData] = OrderedDict()
        self._versions: dict[tuple[int, date], int] = {}
        self._spikes: dict[tuple[int, date], float] = {}
        self._key_spikes: dict[tuple[int, date, str], float] = {}  # one API key's volume on one day
        self._lock = threading.Lock()
        shapes = shapes or {}
        self.orgs: tuple[Org, ...] = tuple(_make_org(seed, i, shapes.get(i)) for i in range(orgs))

    def today(self) -> date:
        """The last day with data."""
        return self._today if self._today is not None else datetime.now(UTC).date()

    def now(self) -> datetime:
        """The simulated present: the last second of `today` (the real time when today is not fixed)."""
        if self._today is None:
            return datetime.now(UTC).replace(microsecond=0)
        return datetime.combine(self._today + timedelta(days=1), datetime.min.time(), UTC) - timedelta(seconds=1)

    def refreshed_at(self) -> datetime:
        """`data_refreshed_at` of the Analytics API: it serves usage up to this minute (a lag behind now)."""
        moment = self.now() + timedelta(seconds=1) - timedelta(minutes=self.analytics_lag_minutes)
        return moment.replace(second=0, microsecond=0)

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
            self._key_spikes.clear()

    def spike(self, org: int, day: date, factor: float, api_key: str | None = None) -> None:
        """Multiply one day's token volume (or one API key's, of every record it made) by ``factor`` (1 removes
        the spike); its other draws stay."""
        self.org(org)
        if day > self.today():
            raise ValueError(f"cannot spike {day}: it is after today ({self.today()})")
        if not 0 < factor <= 1000:
            raise ValueError("spike factor must be in (0, 1000]")
        with self._lock:
            if api_key is not None:
                if api_key not in {k.id for k in self.org(org).api_keys}:
                    raise ValueError(f"org {org} has no API key {api_key}")
                if factor == 1:
                    self._key_spikes.pop((org, day, api_key), None)
                else:
                    self._key_spikes[(org, day, api_key)] = factor
            elif factor == 1:
                self._spikes.pop((org, day), None)
            else:
                self._spikes[(org, day)] = factor

    def spikes(self) -> dict[tuple[int, date], float]:
        with self._lock:
            return dict(self._spikes)

    def variant(self, org: int, day: date) -> tuple[Any, ...]:
        """What the day's numbers depend on besides (seed, org, day): its version and spikes (a cache key)."""
        with self._lock:
            keyed = tuple(sorted((k, f) for (o, d, k), f in self._key_spikes.items() if (o, d) == (org, day)))
            return self._versions.get((org, day), 0), self._spikes.get((org, day), 1.0), keyed

    def key_spikes(self) -> dict[tuple[int, date, str], float]:
        with self._lock:
            return dict(self._key_spikes)

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
            keyed = tuple(sorted((k, f) for (o, d, k), f in self._key_spikes.items() if (o, d) == (org, day)))
        key = (org, day, version, factor, keyed)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        o = self.org(org)
        usage = _generate_day(self.seed, o, day, version, traffic=self.traffic, factor=factor,
                              key_factors=dict(keyed))
        seed = self.seed

        def code() -> tuple[CodeExecution, ...]:
            return _code_executions(seed, o, day, version, usage)

        data = DayData(usage, lambda: _cost_rows(o, usage, code()), code)
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
        """Exact legacy cost (Decimal dollars) and tokens per (day, model) for days in ``[start, end)``.

        Model None carries web search and code execution cost (they have no model in the cost
        report). Web search request counts stay on the model that made them, as in usage. Cost is
        billed (discounted) and leaves Priority Tier out, as the legacy cost report does; tokens
        include every tier, as the usage report does.
        """
        out: list[TruthRow] = []
        discount = self.org(org).discount_pct
        d = start
        while d < end:
            data = self.day(org, d)
            per_model: dict[str | None, list[int]] = {}
            for r in data.usage:
                acc = per_model.setdefault(r.model, [0] * 7)
                if r.service_tier in LEGACY_COST_TIERS:
                    acc[0] += r.billed_pico(discount)
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
