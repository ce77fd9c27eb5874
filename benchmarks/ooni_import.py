"""Benchmark `vantage ooni import`: throughput and peak memory on synthetic OONI JSON-lines.

Generates web_connectivity measurements (with test-helper controls, base64 bodies every
tenth line) as .jsonl and .jsonl.gz in a temporary directory, then imports each size in a
fresh child process and prints measurements per second, the child's peak RSS and its largest
worker's (the import converts on one worker per core). Flat memory means the peak RSS does not
grow with the number of lines.

    .venv/bin/python benchmarks/ooni_import.py                 # 100k and 300k lines
    .venv/bin/python benchmarks/ooni_import.py --sizes 20000 60000
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CCS = ["IR", "RU", "CN", "TR", "MM", "VE", "IT", "DE"]
BODY = "<!doctype html><html><head><title>Example Domain</title></head><body>" + "x" * 600 + "</body></html>"


def synthetic(i: int) -> dict:
    """One small but complete OONI web_connectivity measurement (v0.4 shape)."""
    host = f"site{i % 5000}.example"
    ip = f"93.184.{(i // 250) % 250}.{i % 250 + 1}"
    blocked = i % 7 == 0
    body: object = BODY if i % 10 else {"format": "base64", "data": base64.b64encode(BODY.encode()).decode()}
    day = 1 + (i // 20000) % 28
    return {
        "measurement_uid": f"202402{day:02d}000000.000000_{CCS[i % len(CCS)]}_webconnectivity_{i:016x}",
        "report_id": f"202402{day:02d}T000000Z_webconnectivity_{CCS[i % len(CCS)]}_1234_n1_{i // 1000:016x}",
        "input": f"https://{host}/",
        "measurement_start_time": f"2024-02-{day:02d} {i % 24:02d}:{i % 60:02d}:{(i // 60) % 60:02d}",
        "test_start_time": f"2024-02-{day:02d} 00:00:00",
        "probe_asn": f"AS{1000 + i % 50}",
        "probe_cc": CCS[i % len(CCS)],
        "probe_ip": "127.0.0.1",
        "probe_network_name": "Example Telecom",
        "resolver_asn": f"AS{1000 + i % 50}",
        "software_name": "ooniprobe-android",
        "software_version": "3.8.0",
        "annotations": {"platform": "android"},
        "test_name": "web_connectivity",
        "test_version": "0.4.2",
        "test_runtime": 1.5,
        "data_format_version": "0.2.0",
        "test_keys": {
            "queries": [
                {"engine": "system", "resolver_address": "", "hostname": host, "query_type": "ANY", "t": 0.05,
                 "failure": None, "answers": [{"answer_type": "A", "ipv4": "10.10.34.35" if blocked else ip, "ttl": None}]},
            ],
            "tcp_connect": [{"ip": ip, "port": 443, "t": 0.1, "status": {"success": True, "failure": None}}],
            "tls_handshakes": [{"address": f"{ip}:443", "server_name": host, "failure": None, "t": 0.2,
                                "tls_version": "TLSv1.3", "cipher_suite": "TLS_AES_128_GCM_SHA256", "no_tls_verify": False}],
            "requests": [{"failure": None, "t": 0.4,
                          "request": {"url": f"https://{host}/", "method": "GET", "headers_list": [["Host", host]], "body": ""},
                          "response": {"code": 200, "body": body, "body_is_truncated": False,
                                       "headers_list": [["Content-Type", "text/html"], ["Server", "nginx"]]}}],
            "control": {
                "dns": {"failure": None, "addrs": [ip]},
                "tcp_connect": {f"{ip}:443": {"status": True, "failure": None}},
                "http_request": {"body_length": len(BODY), "failure": None, "title": "Example Domain",
                                 "headers": {"Content-Type": "text/html", "Server": "nginx"}, "status_code": 200},
            },
            "blocking": "dns" if blocked else False,
            "accessible": not blocked,
        },
    }


def generate(path: Path, start: int, count: int) -> None:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:  # type: ignore[operator]
        for i in range(start, start + count):
            fh.write(json.dumps(synthetic(i), separators=(",", ":")) + "\n")


def child(sources: list[str], output: str) -> None:
    from analysis.ingest.ooni import import_ooni

    t = time.perf_counter()
    summary = import_ooni([Path(s) for s in sources], Path(output))
    elapsed = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    worker_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest worker process
    print(json.dumps({"measurements": summary.measurements, "controls": summary.controls,
                      "base64": summary.base64_bodies, "seconds": elapsed, "peak_rss_mib": peak_kib / 1024,
                      "worker_rss_mib": worker_kib / 1024,
                      "files_written": len(summary.output_files)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000])
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[:-1], args.child[-1])
        return
    with tempfile.TemporaryDirectory(prefix="ooni-bench-") as tmp:
        print(f"{'lines':>8} {'files':>22} {'import s':>9} {'meas/s':>8} {'rows/s':>8} {'peak RSS MiB':>13} "
              f"{'worker MiB':>11}")
        for n in args.sizes:
            # Half plain JSON-lines, half gzip, so both readers are measured.
            src = Path(tmp) / f"src-{n}"
            src.mkdir()
            generate(src / "a.jsonl", 0, n // 2)
            generate(src / "b.jsonl.gz", n // 2, n - n // 2)
            out = Path(tmp) / f"out-{n}"
            proc = subprocess.run(
                [sys.executable, __file__, "--child", str(src), str(out)], capture_output=True, text=True, check=True
            )
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            assert r["measurements"] == n, r
            rows = r["measurements"] + r["controls"]
            print(f"{n:>8} {'.jsonl + .jsonl.gz':>22} {r['seconds']:>9.1f} {n / r['seconds']:>8.0f} "
                  f"{rows / r['seconds']:>8.0f} {r['peak_rss_mib']:>13.1f} {r['worker_rss_mib']:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
