"""Benchmark: verdicts for N synthetic probe measurements (default 1,000,000) and their controls.

The dataset is generated in DuckDB (no Python object per row), cast to the Vantage Arrow schema
and written as a hive-partitioned dataset; then compute_verdicts runs over it and the script
prints rows per second, wall time and peak RSS. Goal: 1,000,000 probe rows in under 30 s.

    .venv/bin/python benchmarks/analyze_throughput.py [--rows N] [--keep DIR] [--generate-only]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.db import open_datasets  # noqa: E402
from analysis.verdicts import compute_verdicts  # noqa: E402
from probe.schema import MEASUREMENT_SCHEMA  # noqa: E402

# Blockpage fingerprints: the project's own plus OONI's full lists (1,955 rows) when the shared
# data is there, so matching costs what it costs in real use.
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fingerprints"
OONI_FINGERPRINTS = [p for p in (SHARED / "fingerprints_http.csv", SHARED / "fingerprints_dns.csv") if p.exists()]

# Scenario by (i % 100): most measurements are fine, the rest exercise every rule.
GENERATE = """
CREATE OR REPLACE TABLE gen AS
WITH base AS (
  SELECT i, i % 100 AS s, i % {inputs} AS site,
         TIMESTAMPTZ '2026-11-01 00:00:00+00' + to_seconds(i * 86400 * {days} // {rows}) AS t,
         ['IR', 'RU', 'CN', 'TR'][1 + i % 4] AS cc
  FROM range({rows}) r(i)
), w AS (
  SELECT *, CASE WHEN s BETWEEN 90 AND 91 OR s = 98 THEN 'https' ELSE 'http' END AS scheme,
         'site' || site || '.example' AS host,
         '93.' || (site // 65536) % 256 || '.' || (site // 256) % 256 || '.' || site % 256 AS ip,
         '<html><head><title>Site ' || site || ' welcome page</title></head><body>' || repeat('content ', 40) || '</body></html>' AS body
  FROM base
)
SELECT *, scheme || '://' || host || '/' AS url,
       CASE WHEN scheme = 'https' THEN 443 ELSE 80 END AS port FROM w
"""

ROW = """
SELECT
  {mid} AS measurement_id, 'bench-{role}' AS run_id, 'web_connectivity' AS experiment, '0.1.0' AS experiment_version,
  url AS input, NULL::VARCHAR AS input_category, '{role}' AS role,
  {asn} AS probe_asn, NULL::VARCHAR AS probe_network, NULL::VARCHAR AS resolver_asn, 'linux' AS platform,
  'bench' AS software_version, t + INTERVAL ({dt}) SECOND AS measurement_start_time, 1.5 AS runtime_s,
  NULL::VARCHAR AS failure, {control_for} AS control_for, 'vantage' AS origin, NULL::VARCHAR AS origin_uid,
  [{{'t0': 0.0, 't': 0.05, 'failure': {dns_failure}, 'resolver': 'system', 'engine': 'system', 'query_type': 'A',
     'hostname': host, 'rcode': {rcode}, 'answers': {answers},
     'late_responses': [], 'tag': NULL::VARCHAR}}] AS dns,
  {tcp} AS tcp,
  {tls} AS tls,
  {http} AS http,
  [] AS vpn,
  [] AS downloads,
  strftime(t, '%Y-%m-%d') AS date, cc AS probe_cc
FROM gen {where}
"""


def probe_sql() -> str:
    answer_ip = "CASE WHEN s BETWEEN 80 AND 83 THEN '10.10.34.35' WHEN s = 98 THEN '104.16.' || site % 256 || '.9' ELSE ip END"
    return ROW.format(
        mid="'p-' || i", role="probe", asn="'AS' || (1000 + i % 50)", dt="0", control_for="NULL::VARCHAR",
        dns_failure="CASE WHEN s BETWEEN 84 AND 86 THEN 'dns_nxdomain' END",
        rcode="CASE WHEN s BETWEEN 84 AND 86 THEN 'NXDOMAIN' ELSE 'NOERROR' END",
        answers=f"CASE WHEN s BETWEEN 84 AND 86 THEN [] ELSE [{{'answer_type': 'A', 'value': {answer_ip}, 'ttl': 300}}] END",
        tcp=f"""CASE WHEN s BETWEEN 84 AND 86 THEN [] ELSE [{{'t0': 0.1, 't': 0.2,
                 'failure': CASE WHEN s BETWEEN 87 AND 89 THEN 'connection_reset' WHEN s = 97 THEN 'generic_timeout' END,
                 'ip': {answer_ip}, 'port': port, 'tag': NULL::VARCHAR}}] END""",
        tls=f"""CASE WHEN scheme = 'https' THEN [{{'t0': 0.2, 't': 0.3,
                 'failure': CASE WHEN s BETWEEN 90 AND 91 THEN 'connection_reset' END, 'ip': {answer_ip}, 'port': 443,
                 'sni': host, 'tls_version': 'TLSv1.3', 'cipher_suite': NULL::VARCHAR, 'alpn': NULL::VARCHAR,
                 'peer_cert_sha256': NULL::VARCHAR, 'peer_cert_names': [host], 'peer_cert_issuer': NULL::VARCHAR,
                 'cert_valid': s NOT BETWEEN 90 AND 91, 'tag': NULL::VARCHAR}}] ELSE [] END""",
        http="""CASE WHEN s BETWEEN 84 AND 91 OR s = 97 THEN [] ELSE [{'t0': 0.3, 't': 0.6, 'failure': NULL::VARCHAR,
                 'url': url, 'method': 'GET', 'ip': NULL::VARCHAR,
                 'status_code': CASE WHEN s BETWEEN 95 AND 96 THEN 403 ELSE 200 END, 'http_version': 'HTTP/1.1',
                 'headers': [{'name': 'Server', 'value': 'nginx'}, {'name': 'Content-Type', 'value': 'text/html'}],
                 'body_length': CASE WHEN s BETWEEN 92 AND 96 THEN 120 ELSE length(body) END,
                 'body_truncated': false,
                 'body_sha256': CASE WHEN s BETWEEN 92 AND 96 THEN 'blocked' ELSE sha256(body) END,
                 'body_sample': CASE WHEN s BETWEEN 92 AND 94
                                     THEN '<html><title>Access Denied</title><body><h1>Access Denied</h1><p>This request cannot be served in your jurisdiction.</p></body></html>'
                                     WHEN s BETWEEN 95 AND 96 THEN '<html><title>Forbidden</title>forbidden</html>'
                                     ELSE body END,
                 'title': CASE WHEN s BETWEEN 92 AND 96 THEN 'Blocked' ELSE 'Site ' || site || ' welcome page' END,
                 'tag': NULL::VARCHAR}] END""",
        where="",
    )


def control_sql() -> str:
    # Half the controls come from a control helper (control_for), half from a control run
    # minutes later (paired by input and time).
    return ROW.format(
        mid="'c-' || i", role="control", asn="'AS64500'", dt="CASE WHEN i % 2 = 0 THEN 0 ELSE 120 END",
        control_for="CASE WHEN i % 2 = 0 THEN 'p-' || i END",
        dns_failure="NULL::VARCHAR", rcode="'NOERROR'",
        answers="[{'answer_type': 'A', 'value': ip, 'ttl': 300}]",
        tcp="""[{'t0': 0.1, 't': 0.2, 'failure': CASE WHEN s = 97 THEN 'generic_timeout' END,
                 'ip': ip, 'port': port, 'tag': NULL::VARCHAR}]""",
        tls="""CASE WHEN scheme = 'https' THEN [{'t0': 0.2, 't': 0.3, 'failure': NULL::VARCHAR, 'ip': ip, 'port': 443,
                 'sni': host, 'tls_version': 'TLSv1.3', 'cipher_suite': NULL::VARCHAR, 'alpn': NULL::VARCHAR,
                 'peer_cert_sha256': NULL::VARCHAR, 'peer_cert_names': [host], 'peer_cert_issuer': NULL::VARCHAR,
                 'cert_valid': true, 'tag': NULL::VARCHAR}] ELSE [] END""",
        http="""CASE WHEN s = 97 THEN [] ELSE [{'t0': 0.3, 't': 0.6, 'failure': NULL::VARCHAR,
                 'url': url, 'method': 'GET', 'ip': NULL::VARCHAR, 'status_code': 200, 'http_version': 'HTTP/1.1',
                 'headers': [{'name': 'Server', 'value': 'nginx'}, {'name': 'Content-Type', 'value': 'text/html'}],
                 'body_length': length(body), 'body_truncated': false, 'body_sha256': sha256(body),
                 'body_sample': body, 'title': 'Site ' || site || ' welcome page', 'tag': NULL::VARCHAR}] END""",
        where="WHERE s <> 99",  # 1 % of probe measurements have no control at all
    )


def generate(root: Path, rows: int, inputs: int, days: int) -> int:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(GENERATE.format(rows=rows, inputs=inputs, days=days))
    n = 0
    for role, sql in (("probe", probe_sql()), ("control", control_sql())):
        parts = con.sql(f"SELECT DISTINCT date, probe_cc FROM ({sql}) ORDER BY ALL").fetchall()
        for date, cc in parts:
            table = con.sql(f"SELECT * EXCLUDE (date, probe_cc) FROM ({sql}) WHERE date = '{date}' AND probe_cc = '{cc}'").to_arrow_table()
            for field in MEASUREMENT_SCHEMA:  # observation lists the generator does not fill: empty
                if field.name not in table.column_names:
                    table = table.append_column(field, pa.array([[]] * table.num_rows, field.type))
            table = table.select(MEASUREMENT_SCHEMA.names).cast(MEASUREMENT_SCHEMA)
            out = root / "measurements" / f"date={date}" / f"probe_cc={cc}"
            out.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, out / f"part-bench-{role}-00000.parquet", compression="zstd")
            n += table.num_rows
    con.close()
    return n


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="probe measurements (default 1,000,000)")
    ap.add_argument("--inputs", type=int, default=20_000, help="distinct URLs")
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--keep", type=Path, help="write the dataset here and keep it (reused when present)")
    ap.add_argument("--generate-only", action="store_true", help="only write the dataset (with --keep)")
    args = ap.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="vantage-bench-"))
    try:
        if not (root / "measurements").is_dir():
            t = time.perf_counter()
            n = generate(root, args.rows, args.inputs, args.days)
            print(f"generated {n:,} rows (probe + control) in {time.perf_counter() - t:.1f} s", flush=True)
            if not args.generate_only:
                # Measure in a fresh process, so peak RSS is the analysis's, not the generator's.
                cmd = [sys.executable, __file__, "--keep", str(root), "--rows", str(args.rows)]
                sys.exit(subprocess.call(cmd))
        if args.generate_only:
            return
        rss_before = peak_rss_mb()
        print(f"dataset: {root}", flush=True)
        load_before = os.getloadavg()[0]
        cpu = time.process_time()
        t = time.perf_counter()
        con = open_datasets([root])
        verdicts = compute_verdicts(con, fingerprints=OONI_FINGERPRINTS)
        elapsed = time.perf_counter() - t
        cpu = time.process_time() - cpu
        con.close()
        counts: dict[str, int] = {}
        for s in verdicts.column("status").to_pylist():
            counts[s] = counts.get(s, 0) + 1
        print(f"fingerprints: the project's own + {', '.join(p.name for p in OONI_FINGERPRINTS) or 'none'}")
        print(f"verdicts: {verdicts.num_rows:,} probe measurements in {elapsed:.1f} s = {verdicts.num_rows / elapsed:,.0f} rows/s")
        print(f"CPU time: {cpu:.1f} s over {os.cpu_count()} cores; machine load average before: {load_before:.1f}"
              f" (other processes share these cores)")
        print(f"peak RSS: {peak_rss_mb():,.0f} MB (before analysis: {rss_before:,.0f} MB)")
        print("statuses:", ", ".join(f"{k}={v:,}" for k, v in sorted(counts.items())))
        print("goal: 1,000,000 rows in < 30 s:", "MET" if verdicts.num_rows >= 1_000_000 and elapsed < 30 else
              ("not measured at full size" if verdicts.num_rows < 1_000_000 else "MISSED"))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
