"""Reconciliation benchmark: import speed, reconcile time, and peak memory vs file size (SQLite).

    python bench/reconcile_bench.py                  # 1,000,000 events over a year (the targets)
    python bench/reconcile_bench.py --events 100000  # a quick run

Generates a year of generic-JSONL events (3 models, 2 workspaces, ids on every event, half with
a cost) and the matching bill (cost and usage rows), then measures, each in a fresh process:

- `events import FILE` into an empty SQLite database (target >= 100,000 events/s);
- `reconcile --since <year start> --until <year end> --format json` (target <= 2 s), both the
  whole command and the work inside it (bill + aggregation queries, compare, render);
- the peak RSS of the import for a file a tenth the size and the full one (flat = streaming):
  the storing process, and the parsing process it forks (`worker.reconcile.importer`).

`--repeat N` runs each measure N times (each in a fresh process, the import into a fresh
database) and keeps the fastest. Prints a table. Nothing here is part of the package.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypedDict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

YEAR_START = date(2026, 1, 1)
DAYS = 365
MTOK = Decimal(1_000_000)
PRICES = {  # USD per token: uncached input, output, cache read, 5m write, 1h write
    "claude-sonnet-4-6": tuple(Decimal(p) / MTOK for p in ("3", "15", "0.30", "3.75", "6")),
    "claude-haiku-4-5-20251001": tuple(Decimal(p) / MTOK for p in ("1", "5", "0.10", "1.25", "2")),
    "claude-opus-4-6": tuple(Decimal(p) / MTOK for p in ("5", "25", "0.50", "6.25", "10")),
}
MODELS = list(PRICES)
TOKEN_TYPES = ("uncached_input_tokens", "output_tokens", "cache_read_input_tokens",
               "cache_creation.ephemeral_5m_input_tokens", "cache_creation.ephemeral_1h_input_tokens")


def generate(path: Path, count: int, seed: int = 1) -> dict[tuple[date, str, str], list[int]]:
    """Write `count` events spread over the year; return the bill's token sums per (day, model, workspace)."""
    rng = random.Random(seed)
    sums: dict[tuple[date, str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    start = datetime(YEAR_START.year, YEAR_START.month, YEAR_START.day, tzinfo=UTC)
    step = DAYS * 86400 / count
    with path.open("w") as out:
        for i in range(count):
            at = start + timedelta(seconds=int(i * step))
            model = MODELS[i % 3]
            workspace = f"wrkspc_{i % 2}"
            tokens = [rng.randint(500, 1500), rng.randint(100, 400), rng.randint(0, 6000), rng.randint(0, 400),
                      rng.randint(0, 100)]
            record: dict[str, object] = {
                "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "model": model, "input_tokens": tokens[0],
                "output_tokens": tokens[1], "cache_read_tokens": tokens[2], "cache_write_5m_tokens": tokens[3],
                "cache_write_1h_tokens": tokens[4], "event_id": f"evt_{i:09d}", "workspace_id": workspace,
            }
            if i % 2:
                record["cost_usd"] = format(sum(p * n for p, n in zip(PRICES[model], tokens, strict=True)), "f")
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
            cell = sums[(at.date(), model, workspace)]
            for k in range(5):
                cell[k] += tokens[k]
    return sums


def seed_bill(url: str, sums: dict[tuple[date, str, str], list[int]]) -> None:
    from worker.api.models import CostRow, UsageRow
    from worker.storage import repo
    from worker.storage.db import make_engine, upgrade
    from worker.storage.rows import cost_table_rows, usage_table_rows

    now = datetime.now(UTC)
    engine = make_engine(url)
    upgrade(engine)
    costs, usage = [], []
    for (day, model, workspace), tokens in sums.items():
        usage.append(UsageRow(day, workspace, model, "standard", "0-200k", f"apikey_{workspace[-1]}", None,
                              tokens[0], tokens[2], tokens[3], tokens[4], tokens[1], 0))
        for price, count, token_type in zip(PRICES[model], tokens, TOKEN_TYPES, strict=True):
            costs.append(CostRow(day, workspace, f"{model} {token_type}", "tokens", model, token_type, "standard",
                                 "0-200k", None, price * count, "USD"))
    days = sorted({day for day, _, _ in sums})
    with engine.begin() as conn:
        iid = repo.insert_integration(
            conn, label="bench", tier="pro", organization_id="org", organization_name="Bench", key_ciphertext=b"x",
            key_id="k", key_hint="-", status="ok", created_at=now, updated_at=now, backfill_start=days[0],
            backfill_end=days[-1], cost_checkpoint=days[-1], usage_checkpoint=days[-1], backfill_done=True)
        repo.replace_cost_days(conn, iid, days, cost_table_rows(iid, costs), now)
        repo.replace_usage_days(conn, iid, days, usage_table_rows(iid, usage), now)
    engine.dispose()


def _env(url: str, data: Path) -> dict[str, str]:
    return {**os.environ, "COST_WORKER_DATABASE_URL": url, "COST_WORKER_DATA_DIR": str(data),
            "COST_WORKER_MASTER_KEY": "A" * 43 + "=", "PYTHONPATH": str(ROOT)}


def child(argv: list[str]) -> None:
    """Run one CLI command in this process; print its wall time, inner timings and peak RSS as JSON."""
    from click.testing import CliRunner

    import worker.reconcile.compare  # noqa: F401 - loads the module patched below
    from worker.cli import cli

    compare_module = sys.modules["worker.reconcile.compare"]  # the package re-exports a function of that name

    timings: dict[str, float] = {}

    original = compare_module.compare

    def timed_compare(*args: Any, **kwargs: Any) -> Any:  # whatever compare takes and gives
        begin = time.perf_counter()
        result = original(*args, **kwargs)
        timings["compare_s"] = time.perf_counter() - begin
        return result

    vars(compare_module)["compare"] = timed_compare  # the command imports it at call time
    start = time.perf_counter()
    result = CliRunner().invoke(cli, argv, catch_exceptions=False)
    elapsed = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the import's parsing process
    from worker.reconcile.formats import _common

    print(json.dumps({"exit": result.exit_code, "seconds": elapsed, "peak_mb": peak_kb / 1024,
                      "child_peak_mb": child_kb / 1024, "msgspec": _common.FAST_DECODE is not None, **timings,
                      "error": result.output[-400:] if result.exit_code not in (0, 3) else ""}))


class ChildResult(TypedDict, total=False):
    """What `child` prints: the command's exit code, wall time, peak RSS (itself and its parser) and timings."""

    exit: int
    seconds: float
    peak_mb: float
    child_peak_mb: float
    msgspec: bool
    compare_s: float
    error: str


def run_child(url: str, data: Path, *argv: str) -> ChildResult:
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], env=_env(url, data), capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child failed: {proc.stderr[-2000:]}")
    result: ChildResult = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["exit"] not in (0, 3):
        raise SystemExit(f"command failed: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the full file (default 1,000,000)")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measure; the fastest is kept (default 1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        rows = []
        sizes = [max(args.events // 10, 1), args.events]
        big_url = ""
        for size in sizes:
            path = work / f"events_{size}.jsonl"
            begin = time.perf_counter()
            sums = generate(path, size)
            generated = time.perf_counter() - begin
            runs = []
            for _ in range(max(args.repeat, 1)):
                database = work / f"bench_{size}.db"
                for leftover in work.glob(f"bench_{size}.db*"):  # each import starts from an empty database
                    leftover.unlink()
                url = f"sqlite:///{database}"
                seed_bill(url, sums)
                runs.append(run_child(url, work / "data", "events", "import", str(path)))
            result = min(runs, key=lambda run: run["seconds"])
            seconds = result["seconds"]
            decoder = "msgspec" if result.get("msgspec") else "stdlib json"
            rows.append((f"import {size:,} events (JSONL, {path.stat().st_size / 2**20:,.0f} MiB)",
                         f"{seconds:.2f} s", f"{size / seconds:,.0f} events/s", f"{result['peak_mb']:.0f} MiB",
                         f"parser {result['child_peak_mb']:.0f} MiB; {decoder}; generated in {generated:.1f} s"))
            big_url = url
        reconciles = [run_child(big_url, work / "data", "reconcile", "--since", str(YEAR_START),
                                "--until", str(YEAR_START + timedelta(days=DAYS - 1)), "--format", "json")
                      for _ in range(max(args.repeat, 1))]
        result = min(reconciles, key=lambda run: run["seconds"])
        rows.append((f"reconcile a year ({args.events:,} events, exit {result['exit']})",
                     f"{result['seconds']:.2f} s", f"compare {result.get('compare_s', 0.0):.2f} s",
                     f"{result['peak_mb']:.0f} MiB", ""))
        print(f"{'measure':<52} {'time':>9} {'rate':>22} {'peak RSS':>9}  note")
        for name, took, rate, peak, note in rows:
            print(f"{name:<52} {took:>9} {rate:>22} {peak:>9}  {note}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
