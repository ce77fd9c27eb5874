"""Benchmark: loading every shared blockpage fingerprint set (OONI DNS and HTTP, Censored
Planet blockpage and false-positive signatures) and matching a 10 KB page that matches none.
Goal: load well under a second, a page in well under 10 ms (a 100,000-page dataset in a minute).

    python benchmarks/fingerprint_matching.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.fingerprints import load_fingerprints  # noqa: E402
from tests.support.paths import SHARED_DATA  # noqa: E402

FILES = [SHARED_DATA / "fingerprints" / "fingerprints_dns.csv", SHARED_DATA / "fingerprints" / "fingerprints_http.csv",
         *sorted((SHARED_DATA / "censoredplanet").glob("*_signatures.json"))]


def main() -> None:
    loads = []
    for _ in range(5):
        t0 = time.perf_counter()
        fps = load_fingerprints(FILES)
        matcher = fps.http_matcher
        loads.append(time.perf_counter() - t0)
    body = "<html><body>" + "lorem ipsum dolor sit amet " * 400 + "</body></html>"
    t0 = time.perf_counter()
    for _ in range(500):
        matcher.match_body(body)
    per_body = (time.perf_counter() - t0) / 500
    load = statistics.median(loads)
    print(f"{len(fps)} fingerprints from {len(FILES)} files")
    print(f"load (median of 5): {load:.3f} s   bound 1.0 s   ratio {load / 1.0:.2f}")
    print(f"match a 10 KB page: {per_body * 1000:.2f} ms   bound 10 ms   ratio {per_body / 0.01:.2f}")


if __name__ == "__main__":
    main()
