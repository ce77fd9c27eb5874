"""Benchmark: wall time of `vantage demo` as a user runs it (a fresh process each time), the
verdict match line, the exit status, and what it leaves behind. Goal: under a minute, nothing
left running, every verdict matching the ground truth.

    .venv/bin/python benchmarks/demo_wall_time.py [--runs N]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 60.0


def _children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc: no extra dependency)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(Path(stat).parent.name))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    labs_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "vantage-lab-*")))
    walls: list[float] = []
    failures = 0
    with tempfile.TemporaryDirectory(prefix="vantage-demo-bench-") as tmp:
        for i in range(args.runs):
            out = Path(tmp) / f"run{i}"
            started = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-c", "from vantage.cli import main; main()", "demo", "--output", str(out)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                env={**os.environ, "COLUMNS": "120"},
            )
            wall = time.monotonic() - started
            walls.append(wall)
            match = re.search(r"(\d+)/(\d+) verdicts match the ground truth", proc.stdout)
            ok = proc.returncode == 0 and match is not None and match.group(1) == match.group(2)
            failures += not ok
            print(
                f"run {i + 1}: {wall:5.1f} s  exit {proc.returncode}  "
                f"{match.group(0) if match else 'no match line: ' + proc.stderr.strip()[-200:]}"
            )
    leftover_children = _children_of(os.getpid())
    leftover_labs = set(glob.glob(os.path.join(tempfile.gettempdir(), "vantage-lab-*"))) - labs_before
    print(
        f"wall time: min {min(walls):.1f} s, median {statistics.median(walls):.1f} s, "
        f"max {max(walls):.1f} s (goal < {GOAL_S:.0f} s); load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    print(f"left behind: {len(leftover_children)} child processes, {len(leftover_labs)} lab directories")
    good = failures == 0 and max(walls) < GOAL_S and not leftover_children and not leftover_labs
    print("PASS" if good else "FAIL")
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
