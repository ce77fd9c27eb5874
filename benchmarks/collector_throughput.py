"""Collector throughput on loopback: 4 probe processes (`vantage upload`) each upload 100,000
synthetic measurements to one `vantage collector serve` at once.

Prints the rows per second the collector stored (from the first byte sent to the last
receipt), its peak RSS (VmHWM) and CPU time, and checks that it holds every measurement
exactly once. The probes' datasets are generated with pyarrow from a few hundred
web_connectivity rows made with probe.schema records (new ids, times spread over a day), in
files of 5,000 rows, so generating takes seconds. Nothing leaves loopback.

    .venv/bin/python benchmarks/collector_throughput.py [--probes 4] [--rows 100000] [--file-rows 5000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from probe.schema import (
    DnsAnswer,
    DnsQuery,
    HttpHeader,
    HttpRequest,
    Measurement,
    TcpConnect,
    new_uuid7,
    records_to_table,
)
from probe.store import iter_dataset_files, partition_dir, write_table_atomic

VANTAGE = Path(sys.executable).with_name("vantage")
COUNTRIES = ("IR", "RU", "CN", "TR", "MM", "PK", "EG", "VN")


def template(n: int, cc: str) -> pa.Table:
    """n distinct web_connectivity rows as a probe writes them (DNS, TCP, HTTP with a body sample)."""
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    rows = []
    for i in range(n):
        url = f"http://site{i}.example/"
        body = f"<html><head><title>site {i}</title></head><body>{'lorem ipsum ' * (20 + i % 50)}</body></html>"
        m = Measurement(measurement_id=new_uuid7(), run_id=f"bench-{cc}", experiment="web_connectivity",
                        experiment_version="0.1.0", input=url, measurement_start_time=start, probe_cc=cc,
                        probe_asn="AS64500", runtime_s=0.4)
        m.dns = [DnsQuery(t0=0.0, t=0.03, failure=None, resolver="system", engine="system", query_type="A",
                          hostname=f"site{i}.example", rcode="NOERROR", answers=[DnsAnswer("A", f"192.0.2.{i % 250 + 1}", 300)])]
        m.tcp = [TcpConnect(t0=0.04, t=0.08, failure="connection_reset" if i % 7 == 0 else None, ip=f"192.0.2.{i % 250 + 1}", port=80)]
        if i % 7:
            m.http = [HttpRequest(t0=0.1, t=0.3, failure=None, url=url, ip=f"192.0.2.{i % 250 + 1}", status_code=200,
                                  headers=[HttpHeader("Server", "nginx")], body_length=len(body),
                                  body_sha256=hashlib.sha256(body.encode()).hexdigest(), body_sample=body, title=f"site {i}")]
        rows.append(m)
    return records_to_table(rows)


def probe_dataset(root: Path, cc: str, rows: int, file_rows: int, base: pa.Table) -> None:
    """rows measurements: the template repeated, each row with a new id and its own second."""
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=1)
    date = start.strftime("%Y-%m-%d")
    for n, first in enumerate(range(0, rows, file_rows)):
        count = min(file_rows, rows - first)
        idx = pa.array([i % base.num_rows for i in range(first, first + count)])
        t = base.take(idx)
        t = t.set_column(t.schema.get_field_index("measurement_id"), "measurement_id",
                         pa.array([new_uuid7() for _ in range(count)]))
        times = pa.array([start + dt.timedelta(seconds=(first + i) * 86_000 // rows) for i in range(count)],
                         type=t.schema.field("measurement_start_time").type)
        t = t.set_column(t.schema.get_field_index("measurement_start_time"), "measurement_start_time", times)
        write_table_atomic(t, partition_dir(root, date, cc) / f"part-bench-{n:05d}.parquet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--rows", type=int, default=100_000, help="measurements per probe")
    ap.add_argument("--file-rows", type=int, default=5_000)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="vantage-collector-bench-") as tmp:
        work = Path(tmp)
        t0 = time.monotonic()
        datasets = []
        for p in range(args.probes):
            cc = COUNTRIES[p % len(COUNTRIES)]
            base = template(500, cc)
            probe_dataset(work / f"probe-{p}", cc, args.rows, args.file_rows, base)
            datasets.append(work / f"probe-{p}")
        size = sum(f.stat().st_size for d in datasets for f in iter_dataset_files(d))
        print(f"generated {args.probes} x {args.rows:,} measurements ({size / 2**20:.1f} MB of Parquet) "
              f"in {time.monotonic() - t0:.1f} s", flush=True)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        data = work / "collector"
        log = open(work / "collector.log", "wb")  # noqa: SIM115 - closed below
        server = subprocess.Popen([str(VANTAGE), "collector", "serve", "--listen", f"127.0.0.1:{port}", "--data", str(data)],
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(url + "/health", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        print((work / "collector.log").read_text(), file=sys.stderr)
                        return 1
                    time.sleep(0.1)
            rss_idle = peak_rss_mb(server.pid)
            cpu0 = cpu_s(server.pid)
            start = time.monotonic()
            uploads = [subprocess.Popen([str(VANTAGE), "upload", "--collector", url, "--output", str(d), "--no-progress"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for d in datasets]
            results = [u.communicate() for u in uploads]
            wall = time.monotonic() - start
            health = httpx.get(url + "/health", timeout=5).json()
            rss = peak_rss_mb(server.pid)
            cpu = cpu_s(server.pid) - cpu0
        finally:
            server.terminate()
            server.wait(30)
            log.close()
        failed = [(u.returncode, err) for u, (_, err) in zip(uploads, results, strict=True) if u.returncode]
        ids = pa.chunked_array([pq.read_table(f, columns=["measurement_id"]).column(0) for f in iter_dataset_files(data)])
        total = args.probes * args.rows
        stored, distinct = len(ids), len(pc.unique(ids))
        c = health["counters"]
        print(f"collector: {stored:,} rows stored ({distinct:,} distinct, {total:,} measured) in {wall:.1f} s: "
              f"{stored / wall:,.0f} rows/s")
        print(f"collector: peak RSS {rss:.0f} MB (idle {rss_idle:.0f} MB), CPU {cpu:.1f} s; "
              f"batches {c['batches']}, busy (503) {c['busy']}, max in flight {c['max_in_flight']}")
        print(f"collector files: {len(list(iter_dataset_files(data)))}")
        if failed or not stored == distinct == total:
            print(f"FAILED: uploads {failed}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
