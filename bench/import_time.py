#!/usr/bin/env python3
"""Import cost of virtkit: `import virt` and `import virt.driver`, against a bare interpreter.

Each variant runs N times as `python -c ...` in a fresh process (interleaved, so drift hits
every variant alike); the median wall time is reported, and next to it the time the import
statement itself took inside the child (process start-up and exit excluded; on some
sandboxed kernels process wall times come in coarse ticks, this does not). The goal is
`import virt` under 100 ms. The last line is the ratio of `import virt` to the bare
`python -c pass` measured in this same run.

usage: bench/import_time.py [-n RUNS]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"python -c pass": "pass", "import virt": "import virt",
            "import virt.driver": "import virt.driver"}
TIMED = ("import time; t = time.perf_counter(); {stmt}; "
         "print(time.perf_counter() - t)")
GOAL_MS = 100.0


def once(stmt: str) -> tuple[float, float]:
    """(wall time of the whole process, time of `stmt` inside it), in seconds."""
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", TIMED.format(stmt=stmt)], cwd=REPO,
                         check=True, timeout=60, capture_output=True, text=True).stdout
    return time.perf_counter() - began, float(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=15, help="runs per variant")
    args = parser.parse_args()
    walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
    inside: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for code in VARIANTS.values():
        once(code)  # warm the page cache and the bytecode cache
    for _ in range(args.runs):
        for name, code in VARIANTS.items():
            wall, stmt = once(code)
            walls[name].append(wall)
            inside[name].append(stmt)
    medians = {name: statistics.median(times) * 1000 for name, times in walls.items()}
    base = medians["python -c pass"]
    for name, ms in medians.items():
        own = statistics.median(inside[name]) * 1000
        print(f"{name:<22} median {ms:7.1f} ms  (+{ms - base:6.1f} ms over bare python; "
              f"the statement itself {own:6.1f} ms)")
    virt_ms = medians["import virt"]
    verdict = "meets" if virt_ms < GOAL_MS else "MISSES"
    print(f"import virt {verdict} the {GOAL_MS:.0f} ms goal ({args.runs} runs per variant)")
    print(f"ratio import virt / python -c pass = {virt_ms / base:.2f} "
          f"(import virt.driver: {medians['import virt.driver'] / base:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
