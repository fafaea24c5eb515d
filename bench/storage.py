"""Storage: rows per second storing a year-long, 50-model, multi-workspace report, worker vs raw driver.

    python bench/storage.py [--db sqlite] [--db postgresql] [--pg-url URL] [--days 365] [--models 50]
                            [--workspaces 4] [--repeat 3]

The report is built as the worker's own parsed objects (`Page` of `DayBucket`s of `CostRow` /
`UsageRow`, amounts through `cents_to_dollars`), 31 days per page like the sync's pages. Every
(day, workspace, model, service tier, context window) has a usage row and one cost row per token
type, plus web search and code execution fees per workspace.

worker = the storage path of `IntegrationSync._store`: for each page, one transaction holding
`cost_table_rows`/`usage_table_rows` and `repo.replace_cost_days`/`replace_usage_days` (table
rows are built inside the timed section, as the sync does).
raw = the same final table rows (pre-converted to the driver's types, outside the timed section)
written by the DBAPI driver's own `executemany` (sqlite3 / psycopg), one transaction per page.

Two scenarios per table: `store` (a backfill: the days are empty) and `re-store` (a re-read of days
that hold the same rows: the worker reads them, finds no revision, deletes and inserts; raw deletes
the days and inserts). The table is cleared between runs; worker and raw runs alternate, --repeat
times, and the best time of each is kept (the machine may be shared).
SQLite is a temporary file; PostgreSQL is a private schema of --pg-url (dropped afterwards), both
made by the worker's migrations.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import ROOT, private_pg_schema, table

sys.path.insert(0, str(ROOT))
from sqlalchemy import Engine, text

from worker.api.models import CostRow, DayBucket, Page, UsageRow, cents_to_dollars
from worker.storage import repo
from worker.storage.db import make_engine, upgrade
from worker.storage.rows import cost_table_rows, usage_table_rows
from worker.storage.tables import cost_rows, usage_rows

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NOW = datetime(2026, 3, 10, 6, tzinfo=UTC)
TOKEN_TYPES = ("uncached_input_tokens", "output_tokens", "cache_read_input_tokens",
               "cache_creation.ephemeral_5m_input_tokens", "cache_creation.ephemeral_1h_input_tokens")
TIERS = ("standard", "batch")


# --- the report ------------------------------------------------------------------------------------

def build_report(days: int, models: int, workspaces: int, page_days: int = 31,
                 ) -> tuple[list[Page[CostRow]], list[Page[UsageRow]]]:
    rng = random.Random(0)
    first = date(2026, 3, 10) - timedelta(days=days - 1)
    names = [f"claude-bench-{i:02d}-20260101" for i in range(models)]
    long_context = {m for i, m in enumerate(names) if i % 5 == 0}  # a fifth also bill 200k-1M
    spaces: list[str | None] = [None] + [f"wrkspc_01bench{w:010d}" for w in range(1, workspaces)]
    keys = {w: f"apikey_01bench{i:010d}" for i, w in enumerate(spaces)}
    grains = [(w, m, tier, cw) for w in spaces for m in names for tier in TIERS
              for cw in (("0-200k", "200k-1M") if m in long_context else ("0-200k",))]
    cost_pages, usage_pages = [], []
    for offset in range(0, days, page_days):
        cost_buckets, usage_buckets = [], []
        for day in (first + timedelta(days=d) for d in range(offset, min(offset + page_days, days))):
            costs, usages = [], []
            for w, m, tier, cw in grains:
                counts = [rng.randrange(1, 10**9) for _ in TOKEN_TYPES]
                usages.append(UsageRow(
                    day=day, workspace_id=w, model=m, service_tier=tier, context_window=cw, api_key_id=keys[w],
                    inference_geo="global", uncached_input_tokens=counts[0], output_tokens=counts[1],
                    cache_read_input_tokens=counts[2], cache_creation_5m_input_tokens=counts[3],
                    cache_creation_1h_input_tokens=counts[4], web_search_requests=rng.randrange(0, 300)))
                for tt in TOKEN_TYPES:
                    # The API's amount: a decimal string of cents with up to 10 fractional digits.
                    cents = f"{rng.randrange(0, 10**6)}.{rng.randrange(0, 10**10):010d}".rstrip("0").rstrip(".")
                    costs.append(CostRow(
                        day=day, workspace_id=w, description=f"{m} {tier} {cw} {tt}", cost_type="tokens",
                        model=m, token_type=tt, service_tier=tier, context_window=cw, inference_geo="global",
                        amount_usd=cents_to_dollars(cents), currency="USD"))
            for w in spaces:
                for fee, desc in (("web_search", "Web Search Usage"), ("code_execution", "Code Execution Usage")):
                    costs.append(CostRow(
                        day=day, workspace_id=w, description=desc, cost_type=fee, model=None, token_type=None,
                        service_tier=None, context_window=None, inference_geo=None,
                        amount_usd=cents_to_dollars(str(rng.randrange(1, 10**5))), currency="USD"))
            cost_buckets.append(DayBucket(day, tuple(costs)))
            usage_buckets.append(DayBucket(day, tuple(usages)))
        cost_pages.append(Page(tuple(cost_buckets), request_id=None, limit=page_days))
        usage_pages.append(Page(tuple(usage_buckets), request_id=None, limit=page_days))
    return cost_pages, usage_pages


# --- the two writers ---------------------------------------------------------------------------------

def worker_store(engine: Engine, integration_id: int, endpoint: str, pages: list[Page[Any]]) -> float:
    """The sync's storage path for every page, one transaction each; seconds."""
    t0 = time.perf_counter()
    for page in pages:
        days = [b.day for b in page.buckets]
        all_rows = [r for b in page.buckets for r in b.rows]
        with engine.begin() as conn:
            if endpoint == "cost":
                repo.replace_cost_days(conn, integration_id, days, cost_table_rows(integration_id, all_rows), NOW)
            else:
                repo.replace_usage_days(conn, integration_id, days, usage_table_rows(integration_id, all_rows), NOW)
    return time.perf_counter() - t0


def raw_pages(dialect: str, integration_id: int, endpoint: str, pages: list[Page[Any]],
              ) -> Iterator[tuple[list[Any], list[str], list[tuple[Any, ...]]]]:
    """Per page: its days, the column names and the final rows as the driver takes them."""
    convert = cost_table_rows if endpoint == "cost" else usage_table_rows
    for page in pages:
        rows = convert(integration_id, [r for b in page.buckets for r in b.rows])
        columns = list(rows[0])
        out = []
        for r in rows:
            if dialect == "sqlite":  # what SQLAlchemy stores there: ISO dates, exact decimal text
                r = dict(r, day=r["day"].isoformat())
                if "amount_usd" in r:
                    r["amount_usd"] = format(r["amount_usd"], "f")
            out.append(tuple(r.values()))
        days = [b.day.isoformat() if dialect == "sqlite" else b.day for b in page.buckets]
        yield days, columns, out


def raw_store(engine: Engine, integration_id: int, endpoint: str, pages: list[Page[Any]], replace: bool) -> float:
    """The same rows through the driver's executemany, one transaction per page; seconds (writes only)."""
    dialect = engine.dialect.name
    name = "cost_rows" if endpoint == "cost" else "usage_rows"
    mark = "?" if dialect == "sqlite" else "%s"
    raw = engine.raw_connection()  # the worker's own connection settings (WAL, synchronous=NORMAL, ...)
    try:
        cur = raw.cursor()
        elapsed = 0.0
        for days, columns, rows in raw_pages(dialect, integration_id, endpoint, pages):
            insert = f"INSERT INTO {name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"
            delete = (f"DELETE FROM {name} WHERE integration_id = {mark} AND day IN "
                      f"({', '.join([mark] * len(days))})")
            t0 = time.perf_counter()
            if dialect == "sqlite":
                cur.execute("BEGIN IMMEDIATE")
            if replace:
                cur.execute(delete, [integration_id, *days])
            cur.executemany(insert, rows)
            raw.commit() if dialect != "sqlite" else cur.execute("COMMIT")
            elapsed += time.perf_counter() - t0
        cur.close()
    finally:
        raw.close()
    return elapsed


# --- the databases -----------------------------------------------------------------------------------

@contextmanager
def database(kind: str, pg_url: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{Path(tmp) / 'cw.db'}"
        return
    with private_pg_schema(pg_url) as url:
        yield url


def clear(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(cost_rows.delete())
        conn.execute(usage_rows.delete())
    raw = engine.raw_connection()
    if engine.dialect.name == "sqlite":  # autocommit connection: the checkpoint runs outside a transaction
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
    else:
        import psycopg

        pg = raw.driver_connection
        assert isinstance(pg, psycopg.Connection)
        try:
            raw.rollback()
            pg.autocommit = True  # VACUUM runs outside a transaction
            pg.execute("VACUUM ANALYZE cost_rows, usage_rows")
        finally:
            pg.autocommit = False
            raw.close()


def count(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one())


def measure(kind: str, pg_url: str, reports: dict[str, list[Page[Any]]], repeat: int) -> list[list[object]]:
    out: list[list[object]] = []
    with database(kind, pg_url) as url:
        engine = make_engine(url)
        upgrade(engine)
        with engine.begin() as conn:
            iid = repo.insert_integration(
                conn, label="bench", tier="ultimate", organization_id="org-bench", organization_name="Bench",
                key_ciphertext=b"x", key_id="k", key_hint="sk-ant-admin01-...bnch", status="ok", created_at=NOW,
                updated_at=NOW, backfill_start=NOW.date(), backfill_end=NOW.date(), cost_checkpoint=NOW.date(),
                usage_checkpoint=NOW.date(), backfill_done=True)
        for endpoint, pages in reports.items():
            name = f"{endpoint}_rows"
            runs: dict[str, dict[str, list[float]]] = {"store": {"worker": [], "raw": []},
                                                       "re-store": {"worker": [], "raw": []}}
            for _ in range(repeat):
                for writer in ("worker", "raw"):
                    clear(engine)
                    for scenario in ("store", "re-store"):
                        if writer == "worker":
                            seconds = worker_store(engine, iid, endpoint, pages)
                        else:
                            seconds = raw_store(engine, iid, endpoint, pages, replace=scenario == "re-store")
                        runs[scenario][writer].append(seconds)
                    rows = count(engine, name)
            with engine.connect() as conn:
                assert not repo.revisions_for(conn, iid), "re-storing the same rows made revisions"
            clear(engine)
            for scenario, times in runs.items():
                worker_s, raw_s = min(times["worker"]), min(times["raw"])
                out.append([kind, name, scenario, f"{rows:,}", f"{worker_s:.2f}", f"{rows / worker_s:,.0f}",
                            f"{rows / raw_s:,.0f}", f"{raw_s / worker_s:.2f}"])
                print(f"  {kind} {name} {scenario}: worker {sorted(times['worker'])} raw {sorted(times['raw'])}",
                      file=sys.stderr)
        engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=("sqlite", "postgresql"), action="append")
    parser.add_argument("--pg-url", default=PG_URL)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--workspaces", type=int, default=3, help="including the default workspace")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("cost", "usage"))
    args = parser.parse_args()
    t0 = time.perf_counter()
    cost_pages, usage_pages = build_report(args.days, args.models, args.workspaces)
    reports: dict[str, list[Page[Any]]] = {"cost": cost_pages, "usage": usage_pages}
    if args.only:
        reports = {args.only: reports[args.only]}
    n = {k: sum(len(b.rows) for p in v for b in p.buckets) for k, v in reports.items()}
    print(f"report: {args.days} days, {args.models} models, {args.workspaces} workspaces, "
          f"{len(cost_pages)} pages per endpoint; " + ", ".join(f"{k} {v:,} rows" for k, v in n.items())
          + f" (built in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    rows: list[list[object]] = []
    for kind in args.db or ["sqlite", "postgresql"]:
        rows += measure(kind, args.pg_url, reports, args.repeat)
    print(table(["database", "table", "scenario", "rows", "worker s", "worker rows/s", "raw rows/s",
                 "worker/raw"], rows))


if __name__ == "__main__":
    main()
