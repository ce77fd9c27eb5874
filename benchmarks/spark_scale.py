"""Benchmark: DuckDB vs a Spark standalone cluster on 1M and 5M probe rows (plus their controls).

For each size: the synthetic dataset of benchmarks/analyze_throughput.py (same generator, seven
days, 20,000 URLs), then `analyze` with the DuckDB engine in a fresh process and with the Spark
engine (a master and two one-core workers on 127.0.0.1, analysis/spark_cluster.py; the driver in
a fresh process too). Prints wall time, the peak memory of the driver (Python plus its JVM) and
of each executor (its JVM plus its Python workers), sampled from /proc every 0.25 s. The property
that matters: executor memory stays bounded (within 1.5x) when the data grows 5x, because shards
have a fixed size (analysis/spark_engine.py: buckets grow with the busiest day).

    .venv/bin/python benchmarks/spark_scale.py [--rows 1000000 5000000] [--keep DIR] [--executor-memory 1g]

With --keep DIR the datasets are generated once and reused, and each size's results are kept in
DIR/results.json: a later run of other sizes (e.g. ``--rows 5000000 --skip-duckdb``) prints the
earlier sizes' rows too, with when they were measured and the load average then, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(d.name))
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _tree(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


class Sampler(threading.Thread):
    """Peak RSS of the driver's process tree and of each executor's (a worker's child JVM and its
    Python workers), sampled until stopped."""

    def __init__(self, driver_pid: int, worker_pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.driver_pid, self.worker_pids = driver_pid, worker_pids
        self.driver_peak = 0.0
        self.executor_peak: dict[int, float] = {}
        self.done = threading.Event()
        self.t0 = self.last = time.perf_counter()

    def run(self) -> None:
        while not self.done.is_set():
            kids = _children()
            self.driver_peak = max(self.driver_peak, sum(_rss_mb(p) for p in _tree(self.driver_pid, kids)))
            for w in self.worker_pids:
                for executor in kids.get(w, []):  # the worker JVM forks one executor JVM per application
                    rss = sum(_rss_mb(p) for p in _tree(executor, kids))
                    self.executor_peak[executor] = max(self.executor_peak.get(executor, 0.0), rss)
            if time.perf_counter() - self.last >= 60:  # progress: a run cut short still says what it measured
                self.last = time.perf_counter()
                print(f"  [{self.last - self.t0:.0f} s] driver peak {self.driver_peak:,.0f} MB, executors peak "
                      f"{' / '.join(f'{m:,.0f}' for m in self.executor_peak.values() if m > 100) or '-'} MB",
                      flush=True)
            self.done.wait(0.25)


def run_child(args: list[str], sampler_workers: list[int] | None = None) -> tuple[dict, float, Sampler | None]:
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    sampler = None
    try:
        if sampler_workers is not None:
            sampler = Sampler(proc.pid, sampler_workers)
            sampler.start()
        out, _ = proc.communicate()
    finally:  # interrupted: the driver goes too (by its PID), before the cluster is stopped
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    wall = time.perf_counter() - t
    if sampler is not None:
        sampler.done.set()
        sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed with {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), wall, sampler


def child_duckdb(root: Path, out: Path) -> None:
    from analysis.pipeline import AnalysisOptions, analyze

    t = time.perf_counter()
    res = analyze([root], out, options=AnalysisOptions())
    print(json.dumps({"verdicts": res.verdicts.num_rows, "stage_s": time.perf_counter() - t,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child_spark(root: Path, out: Path, master: str, executor_memory: str, rows_per_shard: int) -> None:
    from analysis.pipeline import AnalysisOptions
    from analysis.spark_cluster import cluster_conf, loopback_env
    from analysis.spark_engine import analyze_spark

    os.environ.update(loopback_env())
    t = time.perf_counter()
    res = analyze_spark([root], out, options=AnalysisOptions(engine="spark", spark_master=master),
                        rows_per_shard=rows_per_shard, conf=cluster_conf(executor_memory=executor_memory))
    print(json.dumps({"verdicts": res.verdicts.num_rows, "stage_s": time.perf_counter() - t}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--keep", type=Path, help="keep the generated datasets here (reused when present)")
    ap.add_argument("--executor-memory", default="1g")
    ap.add_argument("--rows-per-shard", type=int, default=100_000)
    ap.add_argument("--skip-duckdb", action="store_true", help="Spark only (e.g. DuckDB does not fit in memory)")
    ap.add_argument("--skip-spark", action="store_true", help="DuckDB only (Spark's figures from an earlier run)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "duckdb":
            child_duckdb(Path(rest[0]), Path(rest[1]))
        else:
            child_spark(Path(rest[0]), Path(rest[1]), rest[2], rest[3], int(rest[4]))
        return

    from analyze_throughput import generate

    from analysis.spark_cluster import LocalCluster, loopback_env

    os.environ.update(loopback_env())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the cluster is stopped on the way out
    base = args.keep or Path(tempfile.mkdtemp(prefix="vantage-spark-bench-"))
    results: list[dict] = []
    saved: dict[str, dict] = {}
    if args.keep is not None and (base / "results.json").is_file():
        saved = json.loads((base / "results.json").read_text())
    print(f"machine: {os.cpu_count()} cores; cluster: master + 2 workers x 1 core, executor memory "
          f"{args.executor_memory}; shards of ~{args.rows_per_shard:,} rows", flush=True)
    try:
        for n in args.rows:
            root = base / f"rows-{n}"
            if not (root / "measurements").is_dir():
                t = time.perf_counter()
                total = generate(root, n, 20_000, 7)
                print(f"{n:,} probe rows: generated {total:,} rows (probe + control) in "
                      f"{time.perf_counter() - t:.0f} s, {sum(f.stat().st_size for f in root.rglob('*.parquet')) / 1e6:,.0f} MB",
                      flush=True)
            row: dict = {"rows": n}
            if not args.skip_duckdb:
                d, wall, _ = run_child(["--child", "duckdb", str(root), str(base / f"duck-{n}.parquet")])
                row.update(duck_s=wall, duck_mb=d["peak_rss_mb"], verdicts=d["verdicts"])
                print(f"{n:,}: DuckDB {wall:.0f} s, peak RSS {d['peak_rss_mb']:,.0f} MB", flush=True)
            if args.skip_spark:  # DuckDB only; Spark's figures of an earlier run (results.json) stay
                row["measured_at_duckdb"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                if args.keep is not None:
                    saved[str(n)] = {**saved.get(str(n), {}), **row}
                    (base / "results.json").write_text(json.dumps(saved, indent=1))
                results.append(saved.get(str(n), row))
                continue
            with LocalCluster(workers=2, worker_cores=1, worker_memory="2g") as cluster:
                workers = cluster.pids()[1:]
                s, wall, sampler = run_child(["--child", "spark", str(root), str(base / f"spark-{n}.parquet"),
                                              cluster.master_url, args.executor_memory, str(args.rows_per_shard)],
                                             workers)
            assert sampler is not None
            # a worker's short-lived helper processes are not executors
            execs = sorted((m for m in sampler.executor_peak.values() if m > 100), reverse=True)
            row.update(spark_s=wall, driver_mb=sampler.driver_peak, executors_mb=execs, spark_verdicts=s["verdicts"])
            print(f"{n:,}: Spark {wall:.0f} s (cluster start not included), driver peak {sampler.driver_peak:,.0f} MB, "
                  f"executors peak {', '.join(f'{m:,.0f}' for m in execs)} MB", flush=True)
            if "verdicts" in row and row["verdicts"] != s["verdicts"]:
                print(f"  VERDICT COUNT DIFFERS: DuckDB {row['verdicts']:,}, Spark {s['verdicts']:,}")
            row["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            row["load"] = os.getloadavg()[0]
            results.append(row)
            if args.keep is not None:  # a later run (other sizes) prints this one's row too
                saved[str(n)] = {**saved.get(str(n), {}), **row}
                (base / "results.json").write_text(json.dumps(saved, indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    if args.keep is not None:  # sizes measured by earlier runs on the same datasets, for the ratio
        results = sorted([*results, *(r for k, r in saved.items() if int(k) not in args.rows)], key=lambda r: r["rows"])
    print()
    print(f"{'probe rows':>12} {'DuckDB s':>9} {'DuckDB MB':>10} {'Spark s':>8} {'driver MB':>10} "
          f"{'executor MB (each)':>20}  measured (load average)")
    results = [r for r in results if "spark_s" in r]  # sizes Spark never ran are left out of the table
    for r in results:
        print(f"{r['rows']:>12,} {r.get('duck_s', float('nan')):>9.0f} {r.get('duck_mb', float('nan')):>10,.0f} "
              f"{r['spark_s']:>8.0f} {r['driver_mb']:>10,.0f} {' / '.join(f'{m:,.0f}' for m in r['executors_mb']):>20}"
              f"  {r.get('measured_at', '?')} ({r.get('load', float('nan')):.1f})")
    if len(results) >= 2 and results[0]["executors_mb"] and results[-1]["executors_mb"]:
        a, b = max(results[0]["executors_mb"]), max(results[-1]["executors_mb"])
        growth = results[-1]["rows"] / results[0]["rows"]
        print(f"executor peak memory at {results[-1]['rows']:,} / at {results[0]['rows']:,} probe rows: "
              f"{b:,.0f} / {a:,.0f} MB = {b / a:.2f}x for {growth:.0f}x the data: "
              + ("BOUNDED (within 1.5x)" if b <= 1.5 * a else "NOT bounded (over 1.5x)"))
    elif len(results) < 2:
        print("only one size measured: the bound needs two")


if __name__ == "__main__":
    main()
