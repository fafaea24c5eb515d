"""`reconcile --by actor` and `--by api_key` on the Analytics API's billed cost per user and per key.

The seed case (Claude Code spend per engineer, by email): Claude Code's OTLP export carries `user.email`;
the Analytics API bills each user (actor) with their email. One engineer's telemetry is complete, another
lost a day of it: the first reconciles to the fraction of a cent, the second drifts on that day only, and
the bill side is the user's billed cost (not tokens at implied rates).
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.conftest import make_settings
from worker.app import App
from worker.cli import cli
from worker.clock import FakeClock
from worker.integrations import check_connection, connect
from worker.secret import AdminKey
from worker.simulator import SimulatorHandle, running_simulator
from worker.simulator.data import UsageRecord
from worker.simulator.prices import TOKEN_TYPES, billed_unit_price_pico, pico_to_dollars
from worker.sync.engine import sync_integration
from worker.vault import MasterKey

TODAY = date(2026, 3, 10)
SINCE, UNTIL = date(2026, 2, 20), date(2026, 3, 9)  # days the Analytics API has fully refreshed


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorHandle]:
    with running_simulator(orgs=1, seed=8, today=TODAY, requests_per_minute=0) as handle:
        yield handle


@pytest.fixture
def synced(sim: SimulatorHandle, db_url: str, tmp_path: Path, master_key: MasterKey) -> dict[str, str]:
    """Both sources synced for 30 days; the CLI environment on the same database."""
    app = App(make_settings(db_url, tmp_path, master_key, api_base_url=sim.base_url), clock=FakeClock())
    try:
        key = AdminKey(sim.keys[0])
        org = asyncio.run(check_connection(app, key))
        iid = connect(app, key, org, label=None, tier="free", source="both")
        assert asyncio.run(sync_integration(app, iid, "backfill")).ok
    finally:
        app.close()
    return {"COST_WORKER_DATABASE_URL": db_url, "COST_WORKER_MASTER_KEY": master_key.to_text(),
            "COST_WORKER_DATA_DIR": str(tmp_path / "data"), "COST_WORKER_LOG_FORMAT": "json"}


def invoke(env: dict[str, str], *args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def record_cost(r: UsageRecord, discount: int) -> Decimal:
    """The billed token cost of one record: its tokens at the discounted prices (web search is a fee row)."""
    return pico_to_dollars(sum(r.tokens(tt) * billed_unit_price_pico(r.model, r.service_tier, r.context_window, tt,
                                                                      discount) for tt in TOKEN_TYPES))


def otlp_line(email: str, r: UsageRecord, day: date, n: int, cost: Decimal) -> str:
    """One Claude Code OTLP/JSON export line for one record: token usage by type, and its cost."""
    when = datetime.combine(day, datetime.min.time(), UTC) + timedelta(minutes=r.minute)
    nanos = str(int(when.timestamp()) * 10**9)
    attrs = [{"key": "model", "value": {"stringValue": r.model}},
             {"key": "user.email", "value": {"stringValue": email}},
             {"key": "session.id", "value": {"stringValue": f"sess-{day}-{n}"}}]
    tokens = {"input": r.uncached_input_tokens, "output": r.output_tokens, "cacheRead": r.cache_read_input_tokens,
              "cacheCreation": r.cache_creation_5m + r.cache_creation_1h}
    points = [{"attributes": [{"key": "type", "value": {"stringValue": t}}, *attrs], "startTimeUnixNano": nanos,
               "timeUnixNano": nanos, "asInt": str(v)} for t, v in tokens.items()]
    cost_point = {"attributes": attrs, "startTimeUnixNano": nanos, "timeUnixNano": nanos, "asDouble": "COST"}
    doc = {"resourceMetrics": [{"resource": {"attributes": []}, "scopeMetrics": [{"scope": {"name": "claude_code"},
           "metrics": [{"name": "claude_code.token.usage", "sum": {"aggregationTemporality": 1, "dataPoints": points}},
                       {"name": "claude_code.cost.usage", "sum": {"aggregationTemporality": 1,
                                                                  "dataPoints": [cost_point]}}]}]}]}
    return json.dumps(doc).replace('"COST"', format(cost, "f"))  # the cost as an exact JSON number


def test_claude_code_spend_per_engineer_by_email(sim: SimulatorHandle, synced: dict[str, str],
                                                 tmp_path: Path) -> None:
    """Complete telemetry reconciles exactly per (day, model, email); a lost day drifts (missing events) on that
    day only; the billed side is the user's billed cost as the Analytics API has it."""
    org = sim.orgs[0]
    users = [u for u in org.users if not u.removed]
    full, partial = users[0], users[1]
    lost_day = date(2026, 3, 2)
    lines = []
    billed: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    day = SINCE
    while day <= UNTIL:
        for n, r in enumerate(sim.data.records(0, day)):
            user = next((u for u in (full, partial) if r.account_id == u.id), None)
            if user is None:
                continue
            cost = record_cost(r, org.discount_pct)
            billed[(day.isoformat(), r.model, user.email)] += cost
            if user is partial and day == lost_day:
                continue  # the collector was down that day
            lines.append(otlp_line(user.email.upper() if n % 2 else user.email, r, day, n, cost))  # any case
        day += timedelta(days=1)
    export = tmp_path / "claude-code.jsonl"
    export.write_text("\n".join(lines) + "\n")
    assert invoke(synced, "events", "import", str(export), "--source", "claude-code").exit_code == 0

    result = invoke(synced, "reconcile", "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(), "--by", "actor",
                    "--source", "claude-code", "--format", "json")
    assert result.exit_code == 3  # other identities' usage is untracked here
    rows = json.loads(result.stdout)["rows"]
    mine = {(r["date"], r["model"], r["key"]): r for r in rows if r["key"] in (full.email, partial.email)
            and r["cost_type"] == "tokens"}
    assert mine
    for (d, model, email), row in mine.items():
        assert Decimal(row["billed_cost_usd"]) == billed[(d, model, email)]
        if email == full.email or d != lost_day.isoformat():
            assert row["status"] == "ok", row
            assert Decimal(row["cost_delta_usd"]) == 0
        else:
            assert row["status"] == "drift" and "untracked" in row["causes"], row
    assert any(k[0] == lost_day.isoformat() and k[2] == partial.email for k in mine)


def test_by_api_key_uses_each_keys_billed_cost(sim: SimulatorHandle, synced: dict[str, str], tmp_path: Path) -> None:
    """--by api_key: each key's billed cost is the Analytics API's (Priority Tier included), exactly."""
    events = []
    want: dict[tuple[str, str, str], Decimal] = defaultdict(Decimal)
    day = SINCE
    org = sim.orgs[0]
    while day <= UNTIL:
        for n, r in enumerate(sim.data.records(0, day)):
            if r.api_key_id is None:
                continue
            cost = record_cost(r, org.discount_pct)
            want[(day.isoformat(), r.model, r.api_key_id)] += cost
            events.append(json.dumps({
                "timestamp": f"{day.isoformat()}T12:00:00Z", "model": r.model, "event_id": f"e-{day}-{n}",
                "input_tokens": r.uncached_input_tokens, "output_tokens": r.output_tokens,
                "cache_read_tokens": r.cache_read_input_tokens, "cache_write_5m_tokens": r.cache_creation_5m,
                "cache_write_1h_tokens": r.cache_creation_1h, "api_key_id": r.api_key_id,
                "cost_usd": format(cost, "f")}))
        day += timedelta(days=1)
    path = tmp_path / "calls.jsonl"
    path.write_text("\n".join(events) + "\n")
    assert invoke(synced, "events", "import", str(path), "--format", "jsonl", "--source", "app").exit_code == 0
    result = invoke(synced, "reconcile", "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(), "--by", "api_key",
                    "--source", "app", "--format", "json")
    rows = [r for r in json.loads(result.stdout)["rows"] if r["cost_type"] == "tokens" and r["key"]]
    got = {(r["date"], r["model"], r["key"]): Decimal(r["billed_cost_usd"]) for r in rows}
    assert got == dict(want)
    assert all(r["status"] == "ok" for r in rows)  # tracked = billed, priority calls included
