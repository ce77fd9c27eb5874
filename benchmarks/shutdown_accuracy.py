"""Accuracy of event detection over random scenarios: recall and precision per kind.

Each scenario (``tests.support.scenario.random_scenario``) has random countries, networks and vantage
points and randomly placed shutdowns (full or partial, national or one network), new blocks,
a site outage and a probe fault. A planted event is found when an event of the same kind covers
its networks (or, for an outage, its target) with start and end within one hour (a probe fault:
overlapping it, since a faulty laptop is only seen while it runs).

    .venv/bin/python benchmarks/shutdown_accuracy.py [--scenarios 10] [--first-seed 100] [-v]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.events import Event, network_spans  # noqa: E402
from analysis.shutdown import detect  # noqa: E402
from tests.support import scenario as sc  # noqa: E402

HOUR = dt.timedelta(hours=1)


def close(a: dt.datetime | None, b: dt.datetime | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= HOUR)


def found(p: sc.PlantedEvent, e: Event) -> bool:
    if e.kind != p.kind:
        return False
    if p.kind == "site_outage":
        return set(p.inputs) <= set(e.inputs) and close(p.start, e.start) and close(p.end, e.end)
    if p.kind == "service_blocking" and not set(p.inputs) <= set(e.inputs):
        return False
    if p.kind == "probe_fault":  # dated by when the faulty vantage point ran (laptops sleep): overlap
        return set(p.asns) <= set(e.networks) and e.overlaps(p.start, p.end)
    spans = network_spans(e)
    return all(a in spans and close(spans[a][0], p.start) and close(spans[a][1], p.end) for a in p.asns)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenarios", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("-v", "--verbose", action="store_true", help="print every miss and every unmatched event")
    args = ap.parse_args()
    planted: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    reported: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    t0 = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.scenarios):
        scn = sc.random_scenario(seed)
        con = duckdb.connect()
        con.register("measurements", sc.generate_measurements(scn))
        events = detect(con).events
        con.close()
        for p in scn.planted:
            planted[p.kind] += 1
            if any(found(p, e) for e in events):
                hits[p.kind] += 1
            elif args.verbose:
                near = [(e.kind, f"{e.start:%m-%d %H:%M}", e.networks) for e in events if e.overlaps(p.start, p.end)]
                print(f"seed {seed}: MISSED {p.label} {p.start:%m-%d %H:%M}-{p.end and f'{p.end:%m-%d %H:%M}'} "
                      f"{p.asns} {p.inputs}; overlapping: {near}")
        for e in events:
            reported[e.kind] += 1
            if any(found(p, e) or (p.kind == e.kind and e.overlaps(p.start, p.end) and set(p.asns) & set(e.networks))
                   for p in scn.planted):
                correct[e.kind] += 1
            elif args.verbose:
                print(f"seed {seed}: UNMATCHED {e.kind} {e.start:%m-%d %H:%M} {e.networks} {e.inputs} {e.reason}")
    print(f"{args.scenarios} random scenarios of 28 days in {time.perf_counter() - t0:.1f} s")
    print(f"{'kind':<18}{'planted':>8}{'found':>7}{'recall':>8}{'reported':>10}{'right':>7}{'precision':>11}")
    for kind in ("shutdown", "service_blocking", "site_outage", "probe_fault", "connectivity_lost", "unclassified"):
        rec = f"{hits[kind] / planted[kind]:.0%}" if planted[kind] else "-"
        prec = f"{correct[kind] / reported[kind]:.0%}" if reported[kind] else "-"
        print(f"{kind:<18}{planted[kind]:>8}{hits[kind]:>7}{rec:>8}{reported[kind]:>10}{correct[kind]:>7}{prec:>11}")
    print("found = same kind, networks covered, start and end within 1 h (probe faults: overlapping); "
          "right = matches or overlaps a planted event of its kind in its networks")


if __name__ == "__main__":
    main()
