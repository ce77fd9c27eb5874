"""`vantage analyze`: the summary, the Parquet and DuckDB outputs with aggregates, and one clear
line (never a traceback) for bad input."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from analysis.aggregates import aggregate
from probe.cli import main
from probe.schema import DnsAnswer, DnsQuery, HttpRequest, Measurement, TcpConnect, new_uuid7
from probe.store import write_records

T0 = dt.datetime(2026, 11, 1, 12, tzinfo=dt.timezone.utc)


def web(role: str, tcp_failure: str | None = None, control_for: str | None = None, url: str = "http://a.example/",
        at: dt.datetime = T0) -> Measurement:
    m = Measurement(
        measurement_id=new_uuid7(), run_id="r1", experiment="web_connectivity", experiment_version="0.1.0",
        input=url, measurement_start_time=at, probe_cc="IR", probe_asn="AS197207", role=role, control_for=control_for,
        dns=[DnsQuery(0.0, 0.1, None, "system", "system", "A", "a.example", answers=[DnsAnswer("A", "93.184.216.34")])],
        tcp=[TcpConnect(0.1, 0.2, tcp_failure, "93.184.216.34", 80)],
    )
    if tcp_failure is None:
        m.http = [HttpRequest(0.2, 0.3, None, url, status_code=200, body_length=5000, body_sha256="aa", title="Hello")]
    return m


def dataset(tmp_path: Path) -> tuple[Path, list[Measurement]]:
    p1 = web("probe")
    p2 = web("probe", tcp_failure="connection_reset", at=T0 + dt.timedelta(minutes=5))
    p3 = web("probe", url="http://b.example/", at=T0 + dt.timedelta(days=1))
    records = [p1, web("control", control_for=p1.measurement_id), p2, web("control", control_for=p2.measurement_id), p3]
    root = tmp_path / "ds"
    write_records(root, "r1", records)
    return root, records


def test_analyze_writes_verdicts_db_and_summary(tmp_path: Path) -> None:
    root, records = dataset(tmp_path)
    out, db = tmp_path / "v.parquet", tmp_path / "v.duckdb"
    result = CliRunner().invoke(main, ["analyze", str(root), "--output", str(out), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "3 probe measurements" in result.output and "blocked" in result.output and "no_control" in result.output
    table = pq.read_table(out)
    assert table.num_rows == 3
    by_id = {r["measurement_id"]: r for r in table.to_pylist()}
    assert by_id[records[0].measurement_id]["status"] == "ok"
    assert by_id[records[2].measurement_id]["method"] == "tcp.reset"
    assert by_id[records[4].measurement_id]["status"] == "no_control"
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.sql("SELECT count(*) FROM verdicts").fetchall() == [(3,)]
        assert con.sql("SELECT count(*) FROM measurements").fetchall() == [(5,)]
        rows = con.sql("""SELECT input, measurement_count, ok_count, anomaly_count, confirmed_count, failure_count,
                                 no_control_count FROM aggregates ORDER BY input""").fetchall()
    finally:
        con.close()
    assert rows == [("http://a.example/", 2, 1, 1, 0, 0, 0), ("http://b.example/", 1, 0, 0, 0, 0, 1)]


def test_aggregates_per_day_country_asn_input() -> None:
    t = pa.table({
        "measurement_start_time": pa.array([T0, T0, T0 + dt.timedelta(days=1)], pa.timestamp("us", tz="UTC")),
        "probe_cc": ["IR", "IR", "IR"], "probe_asn": ["AS1", "AS1", "AS1"], "input": ["u", "u", "u"],
        "experiment": ["web_connectivity"] * 3, "status": ["blocked", "probe_failure", "ok"],
        "layer": ["http-diff", None, None], "method": ["http.blockpage:x", None, None], "confirmed": [True, False, False],
    })
    rows = aggregate(t).to_pylist()
    assert [(r["measurement_count"], r["ok_count"], r["anomaly_count"], r["confirmed_count"], r["failure_count"])
            for r in rows] == [(2, 0, 1, 1, 1), (1, 1, 0, 0, 0)]
    assert rows[0]["top_method"] == "http.blockpage:x"


def test_corrupt_file_is_a_warning_naming_it(tmp_path: Path) -> None:
    root, _ = dataset(tmp_path)
    part = next((root / "measurements").rglob("*.parquet")).parent
    (part / "broken.parquet").write_bytes(b"PAR1\x00\x01garbage")
    result = CliRunner().invoke(main, ["analyze", str(root), "-o", str(tmp_path / "v.parquet")])
    assert result.exit_code == 0, result.output
    assert "warning: skipped" in result.stderr and "broken.parquet" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad" / "measurements" / "date=2026-11-01" / "probe_cc=IR"
    bad.mkdir(parents=True)
    (bad / "x.parquet").write_bytes(b"not parquet at all")
    root, _ = dataset(tmp_path)
    cases = [
        (["analyze", str(tmp_path / "bad"), "-o", str(tmp_path / "v.parquet")], "no valid Vantage Parquet file"),
        (["analyze", str(tmp_path / "nope"), "-o", str(tmp_path / "v.parquet")], "no such dataset directory"),
        (["analyze", str(root), "-o", str(tmp_path / "v.csv")], "must be a .parquet file"),
        (["analyze", str(root), "-o", str(tmp_path / "v.parquet"), "--public-net", "300.1.0.0/8"], "--public-net"),
        (["analyze", str(root), "-o", str(tmp_path / "v.parquet"), "--control-window", "-2"], "--control-window"),
        (["analyze", str(root), "-o", str(tmp_path / "v.parquet"), "--fingerprints", str(tmp_path / "none.csv")],
         "cannot read fingerprints"),
    ]
    for args, message in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == 1, (args, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], (args, result.stderr)
    assert not (tmp_path / "v.parquet").exists()


def test_help_text() -> None:
    result = CliRunner().invoke(main, ["analyze", "--help"])
    assert result.exit_code == 0
    for flag in ("--output", "--db", "--public-net", "--fingerprints", "--control-window"):
        assert flag in result.output
