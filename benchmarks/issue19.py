"""Issue 19's table, old code and new side by side, measured in one run (paired, as ratios).

"old" is the code at a given commit (default: the main commit this work started from),
unpacked with ``git archive`` into a temporary directory; "new" is this checkout.
Every measurement runs in a fresh child process (its own peak RSS), old and new one after the
other on the same input, and the outputs are compared (imported rows, verdicts): a row whose
outputs differ says so.

    .venv/bin/python benchmarks/issue19.py                          # small sizes, a few minutes
    .venv/bin/python benchmarks/issue19.py --import-lines 100000 --analyze-rows 1000000
    .venv/bin/python benchmarks/issue19.py --dataset DIR            # an analyze_throughput.py --keep dataset
    .venv/bin/python benchmarks/issue19.py --import-lines 100000 --analyze-rows --no-events   # the import alone

Rows: OONI import (vs a bare ``json.loads`` loop and DuckDB's ``read_json`` of the same file),
analyze peak RSS and time at one or more sizes; events over OONI samples spread over 9 years vs
one day, and the shutdown detector at 200 and 400 networks (old: ``--events-old``). The probe
rows of the issue (DNS late-response window) are not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ooni_import import generate as generate_ooni  # noqa: E402

OLD_COMMIT = "d44a5c1"  # main before issue 19's streamed verdicts (11ec441: before any bound)

# The child: run one job with the code at ROOT first on sys.path; print one JSON line.
CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
job, args = sys.argv[2], sys.argv[3:]
from pathlib import Path
cpu, t = time.process_time(), time.perf_counter()
out = {}
if job == "import":
    from analysis.ingest.ooni import import_ooni
    kw = {"workers": int(args[2])} if len(args) > 2 else {}  # the old code has no workers
    s = import_ooni([Path(args[0])], Path(args[1]), **kw)
    out = {"measurements": s.measurements, "controls": s.controls, "malformed": s.malformed}
elif job == "analyze":
    # What `vantage analyze DATASET -o FILE` runs: the verdict stage and the verdicts file.
    import pyarrow.parquet as pq
    from analysis.pipeline import AnalysisOptions, analyze
    analyze([Path(args[0])], Path(args[1]), options=AnalysisOptions(fingerprint_files=tuple(Path(p) for p in args[2:])))
    out = {"verdicts": pq.read_metadata(args[1]).num_rows}
elif job == "json":
    import json as j
    n = 0
    with open(args[0], "rb") as fh:
        for line in fh:
            j.loads(line)
            n += 1
    out = {"lines": n}
elif job == "read_json":
    import duckdb
    con = duckdb.connect()
    # Materialised, so every column is parsed (a count alone may skip them).
    con.execute(f"CREATE TABLE t AS SELECT * FROM read_json('{args[0]}', format='newline_delimited', "
                "maximum_object_size=100000000)")
    out = {"rows": con.sql("SELECT count(*) FROM t").fetchall()[0][0]}
elif job in ("events", "detector"):
    # events rows (the shutdown stack): a digest of the events table, so old = new can be checked
    import hashlib
    if job == "events":
        from analysis.shutdown import find_events
        d = find_events([Path(args[0])])
    else:
        import duckdb
        from analysis.shutdown import detect_from_signals
        from tests.support import scenario as sc
        signals = sc.generate_signals(int(args[0]), int(args[1]), n_shutdowns=int(args[0]) // 5)
        t, cpu = time.perf_counter(), time.process_time()  # the detector alone, not the generator
        d = detect_from_signals(duckdb.connect(), signals.table)
    rows = d.table().to_pylist()
    out = {"events": len(rows), "digest": hashlib.sha256(repr(rows).encode()).hexdigest()[:16]}
kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # worker processes (the OONI import's pool)
out.update(seconds=time.perf_counter() - t, cpu=time.process_time() - cpu + kids.ru_utime + kids.ru_stime,
           rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, worker_rss_mib=kids.ru_maxrss / 1024,
           module=sys.modules["analysis"].__file__
           if "analysis" in sys.modules else None)
print(json.dumps(out))
"""


def run(root: Path, job: str, *args: object) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(root), job, *map(str, args)], cwd=root,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{job} in {root} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # The verdict stage reruns at twice its memory limit when DuckDB runs out (a logged warning):
    # a peak RSS from such a run is the rerun's, so the table says so.
    result["reruns"] = proc.stderr.count("ran out of memory")
    if result.get("module") and not result["module"].startswith(str(root)):
        raise SystemExit(f"{job}: imported {result['module']}, not the code in {root}")
    return result


def old_checkout(commit: str, where: Path) -> Path:
    where.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def sorted_table(path: Path):  # noqa: ANN201 - pyarrow imported lazily
    import pyarrow.dataset as ds

    table = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    return table.sort_by([(c, "ascending") for c in ("measurement_id", "role")])


def row(what: str, old: float, new: float, unit: str, note: str = "") -> None:
    ratio = new / old if old else float("nan")
    print(f"| {what} | {old:,.1f} {unit} | {new:,.1f} {unit} | {ratio:.2f} | {note} |", flush=True)


IMPORT_OLD_COMMIT = "d44a5c1"  # main before the chunked, parallel import


def bench_import(old: Path, new: Path, tmp: Path, lines: int, old_commit: str) -> None:
    src = tmp / "ooni.jsonl"
    generate_ooni(src, 0, lines)
    bare = run(new, "json", src)
    duck = run(new, "read_json", src)
    r_old = run(old, "import", src, tmp / "import-old")
    r_one = run(new, "import", src, tmp / "import-new-1", 1)
    r_new = run(new, "import", src, tmp / "import-new", os.cpu_count() or 1)
    old_table = sorted_table(tmp / "import-old")
    same = old_table.equals(sorted_table(tmp / "import-new"))
    same_one = old_table.equals(sorted_table(tmp / "import-new-1"))
    assert r_old["measurements"] == r_new["measurements"] == r_one["measurements"] == lines, (r_old, r_new)
    workers = os.cpu_count() or 1
    print(f"\nOONI import, {lines:,} web_connectivity lines ({src.stat().st_size / 2**20:,.0f} MiB .jsonl); "
          f"old = {old_commit}; new = this checkout with {workers} workers (and 1: in-process)")
    print(f"imported rows old = new: {same}; old = new with 1 worker: {same_one}")
    print("| what | old | new | new/old | new, 1 worker |\n|---|---|---|---|---|")
    row("import, wall s", r_old["seconds"], r_new["seconds"], "s", f"{r_one['seconds']:,.1f} s")
    row("import, CPU s (workers included)", r_old["cpu"], r_new["cpu"], "s", f"{r_one['cpu']:,.1f} s")
    row("import, measurements/s (wall)", lines / r_old["seconds"], lines / r_new["seconds"], "/s",
        f"{lines / r_one['seconds']:,.0f} /s")
    row("import, peak RSS (main process)", r_old["rss_mib"], r_new["rss_mib"], "MiB", f"{r_one['rss_mib']:,.0f} MiB")
    print(f"| import, peak RSS of one worker | | {r_new['worker_rss_mib']:,.1f} MiB | | |")
    print("\n| peer | rate | CPU s | import/peer wall: old, new (1 worker) | import/peer CPU: old, new (1 worker) |")
    print("|---|---|---|---|---|")
    # On a shared machine wall time follows the load; CPU time much less: both ratios are given.
    for name, peer, unit in (("bare json.loads loop", bare, "lines"), ("DuckDB read_json", duck, "rows")):
        w, c = peer["seconds"], peer["cpu"]
        print(f"| {name} | {lines / w:,.0f} {unit}/s ({w:.2f} s) | {c:.2f} | "
              f"{r_old['seconds'] / w:.2f}x, **{r_new['seconds'] / w:.2f}x** ({r_one['seconds'] / w:.2f}x) | "
              f"{r_old['cpu'] / c:.2f}x, {r_new['cpu'] / c:.2f}x ({r_one['cpu'] / c:.2f}x) |")
    print(f"(load average after: {os.getloadavg()[0]:.1f} on {workers} cores)")
    if not (same and same_one):
        print("!! the imported rows differ between old and new")


def bench_analyze(old: Path, new: Path, tmp: Path, dataset: Path, label: str) -> None:
    from benchmarks.analyze_throughput import OONI_FINGERPRINTS

    v_old, v_new = tmp / f"verdicts-old-{label}.parquet", tmp / f"verdicts-new-{label}.parquet"
    r_old = run(old, "analyze", dataset, v_old, *OONI_FINGERPRINTS)
    r_new = run(new, "analyze", dataset, v_new, *OONI_FINGERPRINTS)
    import pyarrow.parquet as pq

    a = pq.read_table(v_old).sort_by("measurement_id")
    b = pq.read_table(v_new).sort_by("measurement_id")
    same = a.equals(b)
    print(f"\nanalyze (pipeline.analyze: verdicts to a file), {label} probe rows: verdicts old = new: {same} ({a.num_rows:,} rows)")
    print("| what | old | new | new/old | goal |\n|---|---|---|---|---|")
    row("analyze, peak RSS", r_old["rss_mib"], r_new["rss_mib"], "MiB", "< 1 GB")
    row("analyze, wall s", r_old["seconds"], r_new["seconds"], "s", "<= 1.5x")
    row("analyze, CPU s", r_old["cpu"], r_new["cpu"], "s")
    for side, r in (("old", r_old), ("new", r_new)):
        if r["reruns"]:
            print(f"!! {side}: DuckDB ran out of memory at the default limit and the stage ran again "
                  "at twice the limit; its peak RSS is the rerun's")
    if not same:
        print("!! the verdicts differ between old and new")


# -- events rows (issue 19: "events cost follows the data"; the shutdown stack)
EVENTS_OLD_COMMIT = "e26351a"  # main before the sparse signals


def ooni_events_datasets(tmp: Path) -> tuple[Path, Path]:
    """The public OONI samples imported twice: all of them (about 100 probe measurements over
    2015-2024) and the netem file alone (50 of one day)."""
    from analysis.ingest.ooni import import_ooni

    ooni = REPO.parent / "shared" / "data" / "ooni"
    years, day = tmp / "ooni-9-years", tmp / "ooni-one-day"
    import_ooni([ooni / "fixtures", ooni / "spec-examples", ooni / "netem"], years, on_error=lambda _: None)
    import_ooni([ooni / "netem"], day, on_error=lambda _: None)
    return years, day


def bench_events(old: Path, new: Path, tmp: Path, networks: list[int], days: int) -> None:
    years, day = ooni_events_datasets(tmp)
    print(f"\nevents (find_events, no verdicts) and the detector (detect_from_signals over {days} days of "
          f"generated signals); old = {EVENTS_OLD_COMMIT}")
    print("| what | old | new | new/old | events old = new |\n|---|---|---|---|---|")
    for label, job, args in (("events, ~100 OONI measurements over 9 years", "events", [years]),
                             ("events, 50 OONI measurements of one day", "events", [day]),
                             *((f"detector, {n} networks", "detector", [n, days]) for n in networks)):
        r_old, r_new = run(old, job, *args), run(new, job, *args)
        same = (r_old["events"], r_old["digest"]) == (r_new["events"], r_new["digest"])
        note = f"{same} ({r_new['events']} events)"
        row(f"{label}, wall s", r_old["seconds"], r_new["seconds"], "s", note)
        row(f"{label}, CPU s", r_old["cpu"], r_new["cpu"], "s", note)  # less sensitive to a busy machine
        row(f"{label}, peak RSS", r_old["rss_mib"], r_new["rss_mib"], "MiB", note)
        if not same:
            print(f"!! {label}: the events differ between old and new")


def generate_dataset(rows: int, where: Path) -> Path:
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "analyze_throughput.py"), "--rows", str(rows),
                    "--keep", str(where), "--generate-only"], check=True, capture_output=True)
    return where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default=OLD_COMMIT, help=f"commit of the old code (default {OLD_COMMIT})")
    ap.add_argument("--import-lines", type=int, default=20_000)
    ap.add_argument("--import-old", default=IMPORT_OLD_COMMIT,
                    help=f"old code of the import rows (default {IMPORT_OLD_COMMIT})")
    ap.add_argument("--analyze-rows", type=int, nargs="*", default=[100_000],
                    help="probe rows of generated analyze datasets (several sizes: the memory bound per size)")
    ap.add_argument("--dataset", type=Path, action="append", default=[],
                    help="an existing analyze_throughput.py --keep dataset to analyze as well")
    ap.add_argument("--events", action=argparse.BooleanOptionalAction, default=True,
                    help="the events rows (OONI samples over 9 years vs one day; the detector at --networks)")
    ap.add_argument("--networks", type=int, nargs="*", default=[200, 400])
    ap.add_argument("--events-old", default=EVENTS_OLD_COMMIT, help="old code of the events rows")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="issue19-"))
    old = old_checkout(args.old, tmp / "old")
    try:
        print(f"old: {args.old} ({old}); new: {REPO}; {os.cpu_count()} cores; load before: {os.getloadavg()[0]:.1f}")
        t = time.perf_counter()
        if args.import_lines:
            import_old = old if args.import_old == args.old else old_checkout(args.import_old, tmp / "old-import")
            bench_import(import_old, REPO, tmp, args.import_lines, args.import_old)
        for n in args.analyze_rows:
            bench_analyze(old, REPO, tmp, generate_dataset(n, tmp / f"ds-{n}"), f"{n:,}")
        for d in args.dataset:
            bench_analyze(old, REPO, tmp, d, d.name)
        if args.events:
            events_old = old if args.events_old == args.old else old_checkout(args.events_old, tmp / "old-events")
            bench_events(events_old, REPO, tmp, args.networks, 30)
        print(f"\n({time.perf_counter() - t:.0f} s in all)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
