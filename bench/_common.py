"""Shared by the benchmarks: the end-to-end process helpers (tests/e2e/procs.py) and a table printer."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import private_pg_schema  # noqa: E402 - the tests' fresh PostgreSQL schema, dropped afterwards
from e2e.procs import Simulator, Worker, min_report_requests, window  # noqa: E402


def table(header: list[str], rows: list[list[object]]) -> str:
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join("| " + ln + " |" for ln in lines)


__all__ = ["ROOT", "Simulator", "Worker", "min_report_requests", "private_pg_schema", "table", "window"]
