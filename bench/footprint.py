"""Footprint: `cost-worker --help` start time (target <= 0.3 s), median of N runs.

    python bench/footprint.py [N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from _common import ROOT, table

sys.path.insert(0, str(ROOT / "tests"))
from e2e.procs import WORKER, clean_env  # noqa: E402


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    env = clean_env()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([*WORKER, "--help"], env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    bare = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True, capture_output=True)
        bare.append(time.perf_counter() - t0)
    print(table(["command", "median s", "min s", "max s"], [
        ["cost-worker --help", f"{statistics.median(times):.3f}", f"{min(times):.3f}", f"{max(times):.3f}"],
        ["python -c pass (interpreter alone)", f"{statistics.median(bare):.3f}", f"{min(bare):.3f}",
         f"{max(bare):.3f}"],
    ]))


if __name__ == "__main__":
    main()
