"""Probe throughput on loopback: 1,000 URLs (10 % black holes that accept and never answer)
through `vantage run` with default settings, then a --concurrency 1 sample for comparison.

Prints wall time, URLs per second and the peak RSS of the `vantage run` process (from
os.wait4, so the farm's own memory is not counted). Goal: 1,000 URLs in < 60 s, peak RSS
< 200 MB on a 2-core machine. Nothing leaves loopback: the farm (tests/probe/experiments/loopfarm.py)
serves the sites and the only resolver the probe is given.

    .venv/bin/python benchmarks/probe_throughput.py [--sites 1000] [--sample 20]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
FARM = ROOT / "tests" / "probe" / "experiments" / "loopfarm.py"


@dataclass
class Result:
    urls: int
    wall_s: float
    run_s: float | None  # the runner's own figure (without interpreter start-up)
    peak_rss_mb: float
    cpu_s: float  # user + system CPU of the `vantage run` process
    rows: int
    fetched: int  # rows whose page arrived (HTTP 200)
    exit_code: int


def vantage_run(args: list[str], output: Path) -> Result:
    cmd = [sys.executable, "-c", "from vantage.cli import main; main()", "run", *args, "--output", str(output), "--no-progress"]
    # The benchmark's own volunteer has consented, in a config file of its own (loopback only).
    from probe.config import record_consent

    config = output.parent / f"{output.name}-config.toml"
    record_consent(True, config)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "VANTAGE_CONFIG": str(config)})
    # wait4 gives this child's own rusage (ru_maxrss in KiB on Linux).
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(stdout, stderr, sep="\n", file=sys.stderr)
    m = re.search(r"records\) in ([\d.]+)s", stdout)
    rows = fetched = 0
    if (output / "measurements").exists():
        con = duckdb.connect()
        glob = f"{output}/measurements/**/*.parquet"
        rows, fetched = con.sql(
            f"SELECT count(*), count(*) FILTER (WHERE http[len(http)].status_code = 200) "
            f"FROM read_parquet('{glob}', hive_partitioning=true)"
        ).fetchall()[0]
        con.close()
    return Result(
        urls=0, wall_s=wall, run_s=float(m.group(1)) if m else None, peak_rss_mb=usage.ru_maxrss / 1024,
        cpu_s=usage.ru_utime + usage.ru_stime,
        rows=rows, fetched=fetched, exit_code=proc.returncode,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--blackhole-fraction", type=float, default=0.1)
    parser.add_argument("--sample", type=int, default=20, help="URLs measured with --concurrency 1 (0: skip)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vantage-bench-") as tmp:
        work = Path(tmp)
        url_list = work / "urls.txt"
        farm = subprocess.Popen(
            [sys.executable, str(FARM), "--sites", str(args.sites), "--blackhole-fraction", str(args.blackhole_fraction),
             "--list", str(url_list)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        try:
            assert farm.stdout is not None and farm.stdin is not None
            info = json.loads(farm.stdout.readline())
            urls = url_list.read_text().split()
            black = sum("-blackhole." in u for u in urls)
            print(f"farm: {len(urls)} URLs on 127.0.0.0/8 ({black} black holes), resolver {info['resolver']}")
            print(f"machine: {os.cpu_count()} CPUs, shared with other developers' work (figures vary run to run)")

            full = vantage_run(["--list", str(url_list), "--resolver", info["resolver"]], work / "full")
            full.urls = len(urls)
            report("default settings (concurrency 100, timeouts 4 s DNS / 10 s steps)", full)

            if args.sample:
                # The same mix of black holes in the sample as in the whole list.
                n_black = round(args.sample * args.blackhole_fraction)
                sample = [u for u in urls if "-blackhole." in u][:n_black] + [u for u in urls if "-blackhole." not in u][: args.sample - n_black]
                sample_list = work / "sample.txt"
                sample_list.write_text("\n".join(sample) + "\n")
                one = vantage_run(["--list", str(sample_list), "--resolver", info["resolver"], "--concurrency", "1"], work / "one")
                one.urls = len(sample)
                report(f"--concurrency 1, {len(sample)}-URL sample ({n_black} black holes)", one)
                per_url = (one.run_s or one.wall_s) / len(sample)
                print(
                    f"  extrapolated to {len(urls)} URLs: {per_url * len(urls):.0f} s "
                    f"({1 / per_url:.2f} URLs/s; EXTRAPOLATED from the sample, not measured)"
                )
                if full.run_s:
                    print(f"speed-up of the default over --concurrency 1: {per_url * len(urls) / full.run_s:.0f}x")
        finally:
            if farm.stdin is not None:
                farm.stdin.close()
            farm.wait(30)
            if farm.stdout is not None:
                farm.stdout.close()


def report(label: str, r: Result) -> None:
    run_s = r.run_s if r.run_s is not None else r.wall_s
    print(f"{label}:")
    print(f"  URLs measured: {r.rows} of {r.urls}, pages fetched: {r.fetched} (exit code {r.exit_code})")
    print(f"  wall time: {r.wall_s:.1f} s for the process, {run_s:.1f} s in the runner")
    print(f"  throughput: {r.urls / run_s:.1f} URLs/s")
    print(f"  peak RSS of `vantage run`: {r.peak_rss_mb:.0f} MB; CPU time {r.cpu_s:.1f} s")


if __name__ == "__main__":
    main()
