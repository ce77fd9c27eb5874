"""Benchmark: 30 days x 200 networks of generated hourly signals through the shutdown detector.

Prints the wall time of each stage (goal for the detector: under 30 s on the 2-core CI machine),
the peak RSS, and how many planted shutdowns were found with start and end within one hour;
then the change detector over 30 targets per network (planted blocks, dated within one hour).
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
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.detector import DetectorConfig, cusum_changes  # noqa: E402
from analysis.events import network_spans  # noqa: E402
from analysis.shutdown import detect, detect_from_signals  # noqa: E402
from tests.support import scenario as sc  # noqa: E402

HOUR = dt.timedelta(hours=1)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", type=int, default=200)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--shutdowns", type=int, default=40)
    ap.add_argument("--inputs", type=int, default=30, help="targets per network for the change detector")
    ap.add_argument("--blocks", type=int, default=50, help="planted blocks for the change detector")
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

    t0 = time.perf_counter()
    inp = sc.generate_input_failures(args.networks, args.days, args.inputs, n_blocks=args.blocks)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    hour0 = np.datetime64("2026-10-01T00:00")
    changes = cusum_changes(inp.table, hour0, args.days * 24, DetectorConfig())
    t_cusum = time.perf_counter() - t0
    start0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    hits = 0
    for p in inp.events:
        for c in changes:
            if c.asn == p.asns[0] and c.input == p.inputs[0] and abs(start0 + c.start_h * HOUR - p.start) <= HOUR:
                end = None if c.end_h is None else start0 + c.end_h * HOUR
                if (end is None and p.end is None) or (end is not None and p.end is not None and abs(end - p.end) <= HOUR):
                    hits += 1
                    break
    print(f"change detector (CUSUM): {args.networks} networks x {args.inputs} targets x {args.days} days = "
          f"{inp.table.num_rows:,} rows (generated in {t_gen:.2f} s) in {t_cusum:.2f} s; planted blocks found with "
          f"start and end within 1 h: {hits}/{len(inp.events)}; changes found: {len(changes)}")

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
