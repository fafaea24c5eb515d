"""The Admin API in tests: the project's simulator (worker/simulator), in-process, and its ground truth.

Every test that talks to "the API" talks to the simulator, so the API's contract is modelled once: an
API change is made there, and these tests follow. The worker reaches it through
`transport=sim.transport()` (or a respx route, for the CLI); faults are the simulator's own
(`sim.add_fault("529:count=2")`, see worker/simulator/faults.py); every request is recorded
(`sim.requests`). Totals are checked against `Truth`, the simulator's exact numbers from its data model,
never against the worker's arithmetic.

    sim = make_sim()
    outcome = asyncio.run(sync_integration(app, iid, "backfill", transport=sim.transport()))
    assert stored == Truth(sim, first, end).by_day_model()
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta
from decimal import Decimal
from types import EllipsisType
from typing import Any

import httpx
import respx

from worker.simulator import RecordedRequest, SimulatorHandle, TruthRow, in_process

TODAY = date(2026, 3, 10)  # the FakeClock's today (tests/conftest.py)
BASE_URL = "https://api.anthropic.com"
ME_PATH = "/v1/organizations/me"
COST_PATH = "/v1/organizations/cost_report"
USAGE_PATH = "/v1/organizations/usage_report/messages"
COUNTERS = (
    "uncached_input_tokens",
    "cache_read_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "output_tokens",
    "web_search_requests",
)
# `report`'s columns from the truth's counters (cache writes are the two creation counts together).
REPORT_TOKENS = {"input_tokens": ("uncached_input_tokens",), "output_tokens": ("output_tokens",),
                 "cache_read_tokens": ("cache_read_input_tokens",),
                 "cache_write_tokens": ("cache_creation_5m_input_tokens", "cache_creation_1h_input_tokens")}


def make_sim(*, orgs: int = 1, seed: int = 7, today: date = TODAY, base_url: str = BASE_URL,
             **options: Any) -> SimulatorHandle:
    """An in-process simulator recording every request. It enforces no rate limit of its own unless
    asked: the worker's budget, on a FakeClock, is what the tests measure."""
    options.setdefault("requests_per_minute", 0)
    return in_process(base_url, orgs=orgs, seed=seed, today=today, record_requests=True, **options)


def mount(sim: SimulatorHandle, router: respx.Router) -> respx.Route:
    """Route every request for the simulator's host on `router` to the simulator (for code that builds
    its own httpx client, like the CLI)."""
    host = httpx.URL(sim.base_url).host
    return router.route(host=host).mock(side_effect=sim.transport().handle_request)


def report_requests(sim: SimulatorHandle, path: str | None = None) -> list[RecordedRequest]:
    """Recorded requests to the report endpoints (or to one `path`)."""
    paths = (path,) if path else (COST_PATH, USAGE_PATH)
    return [r for r in sim.requests if r.path in paths]


def key_hint(key: str) -> str:
    """How the worker displays an Admin key."""
    return f"sk-ant-admin01-...{key[-4:]}"


class Truth:
    """The simulator's exact totals per (day, model) over days `[start, end)` of one organization.
    Model None carries web search and code execution cost; tokens stay on the model that used them."""

    def __init__(self, sim: SimulatorHandle, start: date, end: date, org: int = 0) -> None:
        self.sim, self.start, self.end, self.org = sim, start, end, org
        self.rows: dict[tuple[date, str | None], TruthRow] = {
            (r.date, r.model): r for r in sim.data.truth(org, start, end)}

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days)]

    @property
    def empty_days(self) -> list[date]:
        """Days without a single cost row (their buckets come with `results: []`)."""
        return [d for d in self.days if not self.sim.data.day(self.org, d).cost]

    def _matching(self, day: date | None, model: str | None | EllipsisType) -> Iterable[TruthRow]:
        return (r for (d, m), r in self.rows.items() if (day is None or d == day) and (model is ... or m == model))

    def cost(self, day: date | None = None, model: str | None | EllipsisType = ...) -> Decimal:
        """Dollars of `day` (None: every day) and `model` (None: non-token costs; omitted: every model)."""
        return sum((r.cost_usd for r in self._matching(day, model)), Decimal(0))

    def tokens(self, day: date | None = None, model: str | None | EllipsisType = ...) -> dict[str, int]:
        """Counters (UsageRow field names) summed over the matching (day, model)s."""
        totals = dict.fromkeys(COUNTERS, 0)
        for r in self._matching(day, model):
            for name in COUNTERS:
                totals[name] += getattr(r, name)
        return totals

    def by_day_model(self) -> dict[tuple[date, str | None], Decimal]:
        """Dollars per (day, model), only where there is any cost."""
        return {k: r.cost_usd for k, r in self.rows.items() if r.cost_usd}

    def report_rows(self) -> dict[tuple[date, str | None], tuple[Decimal, int, int, int, int]]:
        """(cost, input, output, cache read, cache write) per (day, model) as `report` shows them, only where
        there is any cost or token."""
        out = {}
        for key, r in self.rows.items():
            values = (r.cost_usd, *(sum(getattr(r, n) for n in names) for names in REPORT_TOKENS.values()))
            if any(values):
                out[key] = values
        return out
