"""Benchmark: 30 days x 200 networks of generated hourly signals through the shutdown detector.

Prints the wall time of each stage, the total (goal: under 30 s on the 2-core CI machine), the
peak RSS, and how many planted shutdowns were found with start and end within one hour.
With ``--measurements`` it also times the SQL that turns raw measurements into those signals.

    .venv/bin/python benchmarks/shutdown_detector.py [--networks 200] [--days 30] [--measurements]
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import sys
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import scenario as sc  # noqa: E402
from analysis.events import network_spans  # noqa: E402
from analysis.shutdown import detect, detect_from_signals  # noqa: E402

HOUR = dt.timedelta(hours=1)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", type=int, default=200)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--shutdowns", type=int, default=40)
    ap.add_argument("--measurements", action="store_true",
                    help="also time signals from raw measurements (a generated multi-vantage scenario)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    sig = sc.generate_signals(args.networks, args.days, n_shutdowns=args.shutdowns)
    t_gen = time.perf_counter() - t0
    con = duckdb.connect()
    con.execute("SET threads = 2")
    t0 = time.perf_counter()
    detection = detect_from_signals(con, sig.table)
    t_detect = time.perf_counter() - t0
    found = 0
    for p in sig.events:
        spans = [network_spans(e).get(p.asns[0]) for e in detection.events if e.kind == "shutdown"]
        if any(sp and abs(sp[0] - p.start) <= HOUR and sp[1] is not None and p.end is not None
               and abs(sp[1] - p.end) <= HOUR for sp in spans):
            found += 1
    others = [e for e in detection.events if not any(p.asns[0] in e.networks and e.overlaps(p.start, p.end)
                                                     for p in sig.events)]
    print(f"signals: {args.networks} networks x {args.days} days = {sig.table.num_rows:,} network-hours "
          f"(generated in {t_gen:.2f} s)")
    print(f"detector (baselines, levels, alert runs, classification, merging): {t_detect:.2f} s "
          f"-> {sig.table.num_rows / t_detect:,.0f} network-hours/s; goal < 30 s: "
          f"{'met' if t_detect < 30 else 'NOT met'}")
    print(f"planted shutdowns found and dated within 1 h: {found}/{len(sig.events)}; "
          f"events not matching a planted one: {len(others)}")

    if args.measurements:
        scn = sc.default_scenario(days=args.days)
        t0 = time.perf_counter()
        table = sc.generate_measurements(scn)
        t_gen = time.perf_counter() - t0
        con.register("measurements", table)
        t0 = time.perf_counter()
        d = detect(con)
        t_full = time.perf_counter() - t0
        print(f"raw measurements: {table.num_rows:,} rows ({len(scn.networks)} networks, generated in {t_gen:.2f} s); "
              f"full pipeline (facts, signals, baselines, CUSUM, classification): {t_full:.2f} s, "
              f"{len(d.events)} events")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
