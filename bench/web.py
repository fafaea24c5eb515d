"""Dashboard and API speed: the overview for N integrations with a year each, and `spend` for one year.

    python bench/web.py [--integrations 100] [--days 365] [--source legacy|both] [--repeat 5]
                        [--db sqlite|postgresql] [--pg-url URL]

One organization of the in-process simulator is synced for `--days` (a real backfill through the worker's own
sync: the legacy reports, and with `--source both` the Usage and Cost Analytics API's bill too, the overview's
bill of record and what its top API keys and users read), then its stored rows are copied to
`--integrations` - 1 more integrations (as if each had synced the same bill). Every request goes through the dashboard's router exactly as `run` serves it
(authentication, views, template, security headers; only the socket is left out), --repeat times, best and
median kept (the machine may be shared):

- overview (the default range, the last 30 days) and overview of the whole year (`?since=&until=`);
- one integration's page;
- GET /api/v1/spend for a year of one integration, and for a year of all of them;
- with `--source both`: GET /api/v1/spend?by=api_key for 30 days and for a year of all integrations.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from _common import ROOT, private_pg_schema, table

sys.path.insert(0, str(ROOT))
from sqlalchemy import func, insert, literal, select

from worker.app import App
from worker.clock import FakeClock
from worker.integrations import check_connection, connect
from worker.secret import AdminKey
from worker.settings import Settings
from worker.simulator import in_process
from worker.storage import repo
from worker.storage.tables import (
    analytics_checkpoints,
    analytics_cost_rows,
    analytics_daily_totals,
    analytics_names,
    analytics_state,
    analytics_usage_rows,
    cost_rows,
    daily_model_totals,
    day_digests,
    integrations,
    usage_rows,
)
from worker.sync.engine import sync_integration
from worker.sync.scheduler import SyncService
from worker.sync.streams import Source
from worker.vault import MasterKey
from worker.web.app import WebApp
from worker.web.auth import UiToken
from worker.web.messages import Request

TODAY = date(2026, 11, 30)
TOKEN = "bench-token-0123456789abcdef"


# Every table the sync writes per integration: copied from the first to the others. Row tables have a
# surrogate `id` (left to the database); the rest are keyed by integration and copied whole.
ROW_TABLES = (cost_rows, usage_rows, analytics_cost_rows, analytics_usage_rows)
KEYED_TABLES = (day_digests, daily_model_totals, analytics_daily_totals, analytics_names, analytics_state, analytics_checkpoints)


def fill(app: App, integrations_n: int, days: int, source: Source) -> int:
    """Sync one simulated organization for `days`, then copy its rows to more integrations; rows stored."""
    sim = in_process("https://api.test", orgs=1, seed=3, today=TODAY, requests_per_minute=0)
    key = AdminKey(sim.keys[0])
    org = asyncio.run(check_connection(app, key, transport=sim.transport()))
    first = connect(app, key, org, label="Org 1", tier="pro", source=source)
    outcome = asyncio.run(sync_integration(app, first, "backfill", transport=sim.transport()))
    assert outcome.ok, outcome.message
    with app.engine.begin() as conn:
        template = repo.get_integration(conn, first)
        assert template is not None
        base = {c.name: getattr(template, c.name) for c in integrations.c if c.name != "id" and hasattr(template, c.name)}
        for n in range(2, integrations_n + 1):
            iid = repo.insert_integration(conn, **{**base, "label": f"Org {n}", "organization_id": f"org-{n}",
                                                   "organization_name": f"Organization {n}",
                                                   "updated_at": template.created_at})
            for table_ in (*ROW_TABLES, *KEYED_TABLES):
                surrogate = table_ in ROW_TABLES
                columns = [c for c in table_.c if c.name != "integration_id" and not (surrogate and c.name == "id")]
                conn.execute(insert(table_).from_select(
                    ["integration_id", *[c.name for c in columns]],
                    select(func.cast(literal(iid), table_.c.integration_id.type), *columns).where(
                        table_.c.integration_id == first)))
        counts = {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                  for t in (*ROW_TABLES, daily_model_totals, analytics_daily_totals)}
        print(", ".join(f"{name}: {n:,}" for name, n in counts.items()), file=sys.stderr)
        return sum(counts[t.name] for t in ROW_TABLES)


def measure(web: WebApp, path: str, query: dict[str, str], repeat: int) -> tuple[float, float, int]:
    """(best, median seconds, body bytes) of GET path?query through the router, bearer-authenticated."""
    times, size = [], 0
    for _ in range(repeat):
        request = Request("GET", path, dict(query), {"authorization": f"Bearer {TOKEN}", "host": "bench"})
        started = time.perf_counter()
        response = asyncio.run(web.handle(request))
        times.append(time.perf_counter() - started)
        assert response.status == 200, (path, response.status, response.body[:300])
        size = len(response.body)
    return min(times), statistics.median(times), size


def run(url: str, integrations_n: int, days: int, source: Source, repeat: int) -> list[list[object]]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate({
            "data_dir": Path(tmp), "database_url": url, "master_key": MasterKey.generate().to_text(),
            "api_base_url": "https://api.test", "backfill_days_pro": days, "ui_token": TOKEN})
        app = App(settings, clock=FakeClock(datetime.combine(TODAY, datetime.min.time(), UTC).replace(hour=12)))
        try:
            started = time.perf_counter()
            rows = fill(app, integrations_n, days, source)
            print(f"stored {rows:,} cost and usage rows for {integrations_n} integrations x {days} days "
                  f"in {time.perf_counter() - started:.1f}s", file=sys.stderr)
            web = WebApp(app, SyncService(app), UiToken(TOKEN))
            year = {"since": (TODAY - timedelta(days=days - 1)).isoformat(), "until": TODAY.isoformat()}
            cases = [("overview, last 30 days (default)", "/", {}),
                     (f"overview, all {days} days", "/", year),
                     ("integration page", "/integrations/1", {}),
                     (f"GET /api/v1/spend, {days} days of one integration", "/api/v1/spend",
                      {**year, "integration": "1"}),
                     (f"GET /api/v1/spend, {days} days of all integrations", "/api/v1/spend", year)]
            if source == "both":
                month = {"since": (TODAY - timedelta(days=29)).isoformat(), "until": TODAY.isoformat()}
                cases += [("GET /api/v1/spend?by=api_key, last 30 days", "/api/v1/spend", {**month, "by": "api_key"}),
                          (f"GET /api/v1/spend?by=api_key, {days} days", "/api/v1/spend", {**year, "by": "api_key"})]
            out: list[list[object]] = []
            for name, path, query in cases:
                best, median, size = measure(web, path, query, repeat)
                out.append([name, f"{best * 1000:.0f}", f"{median * 1000:.0f}", f"{size / 1024:.0f} KiB"])
            return out
        finally:
            app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--integrations", type=int, default=100)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--source", choices=["legacy", "both"], default="legacy")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if args.db == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            rows = run(f"sqlite:///{tmp}/bench.db", args.integrations, args.days, args.source, args.repeat)
    else:
        with private_pg_schema(args.pg_url) as url:
            rows = run(url, args.integrations, args.days, args.source, args.repeat)
    print(f"{args.integrations} integrations x {args.days} days, source {args.source}, on {args.db}, best and median of {args.repeat}:")
    print(table(["request", "best ms", "median ms", "body"], rows))


if __name__ == "__main__":
    main()


