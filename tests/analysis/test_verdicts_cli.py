"""`vantage analyze`: the summary, the Parquet (with its provenance) and DuckDB outputs with
aggregates, one clear line (never a traceback) for bad input; and verdicts as one stage: the
options shared by analyze, report and events, which agree row for row."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from analysis.aggregates import aggregate
from probe.dataset import write_records
from probe.schema import DnsAnswer, DnsQuery, HttpRequest, Measurement, TcpConnect, new_uuid7
from tests.support.verdict_checks import assert_one_verdict_per_measurement, read_only_dir
from vantage.cli import main

T0 = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)


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
    assert_one_verdict_per_measurement(out, [root])
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
        "throttle_factor": pa.array([None] * 3, pa.float64()),
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
        (["analyze", str(root), "-o", str(tmp_path / "v.parquet"), "--asn-db", str(tmp_path / "none.mmdb")],
         "no such ASN database file"),
        (["analyze", str(root), "-o", str(tmp_path / "v.parquet"), "--asn-db", str(bad / "x.parquet")],
         "not a MaxMind ASN database"),
    ]
    for args, message in cases:
        result = runner.invoke(main, args)
        # a malformed option value is a usage error (2); a dataset or file that fails is 1
        want = 2 if message in ("--public-net", "--control-window") else 1
        assert result.exit_code == want, (args, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], (args, result.stderr)
    assert not (tmp_path / "v.parquet").exists()


def test_help_text() -> None:
    result = CliRunner().invoke(main, ["analyze", "--help"])
    assert result.exit_code == 0
    for flag in ("--output", "--db", "--public-net", "--fingerprints", "--control-window"):
        assert flag in result.output


# --------------------------------------------------------------------------- verdicts as one stage

SINKHOLE = "10.10.10.10"  # a censor's sinkhole address: a bogon, and fingerprinted in sinkhole.csv


def options_dataset(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A dataset whose verdicts depend on the options (a sinkhole answer is dns.bogon without
    options, dns.blockpage_ip (confirmed) with the fingerprint), the fingerprint file, and
    {what: measurement id}."""
    probe_sink = web("probe", url="http://c.example/")
    probe_sink.dns = [DnsQuery(0.0, 0.1, None, "system", "system", "A", "c.example", answers=[DnsAnswer("A", SINKHOLE)])]
    probe_sink.tcp = [TcpConnect(0.1, 0.2, None, SINKHOLE, 80)]
    probe_sink.http = [HttpRequest(0.2, 0.3, None, "http://c.example/", status_code=200, body_length=300,
                                   body_sha256="bb", title="Access denied")]
    ok, reset = web("probe"), web("probe", tcp_failure="connection_reset", at=T0 + dt.timedelta(minutes=5))
    records = [probe_sink, web("control", control_for=probe_sink.measurement_id, url="http://c.example/"),
               ok, web("control", control_for=ok.measurement_id), reset, web("control", control_for=reset.measurement_id)]
    root = tmp_path / "opts-ds"
    write_records(root, "r2", records)
    fp = tmp_path / "sinkhole.csv"
    fp.write_text("name,scope,other_names,location_found,pattern_type,pattern,confidence_no_fp,expected_countries,"
                  f"source,exp_url,notes\ntest_sinkhole,nat,,dns,full,{SINKHOLE},9,IR,,,\n")
    return root, fp, {"sinkhole": probe_sink.measurement_id, "ok": ok.measurement_id, "reset": reset.measurement_id}


def _rows(path: Path) -> dict[str, tuple]:
    """measurement id -> (status, layer, method, confirmed) of a verdicts Parquet or CSV file."""
    if path.suffix == ".csv":
        import csv

        with open(path, newline="") as fh:
            return {r["measurement_id"]: (r["status"], r["layer"] or None, r["method"] or None,
                                          r["confirmed"].lower() == "true") for r in csv.DictReader(fh)}
    return {r["measurement_id"]: (r["status"], r["layer"], r["method"], bool(r["confirmed"]))
            for r in pq.read_table(path).to_pylist()}


@pytest.mark.slow  # three commands over one dataset: ~5 s
def test_analyze_report_and_events_agree_row_for_row(tmp_path: Path) -> None:
    root, fp, ids = options_dataset(tmp_path)
    runner = CliRunner()
    opts = ["--public-net", "192.0.2.0/24", "--fingerprints", str(fp), "--control-window", "3"]
    res = runner.invoke(main, ["analyze", str(root), "-o", str(tmp_path / "v.parquet"), *opts])
    assert res.exit_code == 0, res.output
    analyzed = _rows(tmp_path / "v.parquet")
    assert analyzed[ids["sinkhole"]] == ("blocked", "dns", "dns.blockpage_ip", True)
    assert_one_verdict_per_measurement(tmp_path / "v.parquet", [root])
    # the report computing from the datasets with the same options: the same stage, same rows
    res = runner.invoke(main, ["report", str(root), "-o", str(tmp_path / "a.md"), "--csv", str(tmp_path / "a.csv"), *opts])
    assert res.exit_code == 0, res.output
    assert _rows(tmp_path / "a.csv") == analyzed
    # the report reading the verdicts file (datasets from its metadata): same rows again
    res = runner.invoke(main, ["report", "--verdicts", str(tmp_path / "v.parquet"), "-o", str(tmp_path / "b.md"),
                               "--csv", str(tmp_path / "b.csv")])
    assert res.exit_code == 0, res.output
    assert _rows(tmp_path / "b.csv") == analyzed
    text = (tmp_path / "b.md").read_text()
    assert "## Method" in text and "sinkhole.csv (1, " in text and "192.0.2.0/24" in text
    assert "control window: 3 hours" in text and "read from v.parquet" in text
    assert str(tmp_path) not in text  # the published report names files, not the analyst's directories
    # trap: without the options the sinkhole is only a bogon, so agreement above is not for free
    res = runner.invoke(main, ["report", str(root), "-o", str(tmp_path / "c.md"), "--csv", str(tmp_path / "c.csv")])
    assert res.exit_code == 0, res.output
    assert _rows(tmp_path / "c.csv")[ids["sinkhole"]][2] == "dns.bogon"
    # events over the same verdicts file
    res = runner.invoke(main, ["events", "--verdicts", str(tmp_path / "v.parquet"), "-o", str(tmp_path / "e.parquet"), "-q"])
    assert res.exit_code == 0, res.output
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0  # 3 measurements in an hour: no event to find


def test_verdicts_file_records_its_provenance(tmp_path: Path) -> None:
    import datetime as _dt

    from analysis.pipeline import read_verdicts

    netaddr = pytest.importorskip("netaddr", reason="netaddr (mmdb-writer's dependency) is not installed")
    mmdb_writer = pytest.importorskip("mmdb_writer", reason="mmdb-writer (a test extra) is not installed")
    writer = mmdb_writer.MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    writer.insert_network(netaddr.IPSet(["93.184.216.0/24"]), {"autonomous_system_number": 15133,
                                                               "autonomous_system_organization": "Example"})
    asn_db = tmp_path / "asn.mmdb"
    writer.to_db_file(str(asn_db))
    root, fp, _ = options_dataset(tmp_path)
    res = CliRunner().invoke(main, ["analyze", str(root), "-o", str(tmp_path / "v.parquet"), "--public-net", "192.0.2.0/24",
                                    "--fingerprints", str(fp), "--asn-db", str(asn_db), "--control-window", "1.5"])
    assert res.exit_code == 0, res.output
    assert "sinkhole.csv (1, " in res.output and "GeoLite2-ASN" in res.output  # said on the terminal too
    table, meta = read_verdicts(tmp_path / "v.parquet")
    assert table.num_rows == 3
    assert meta["options"] == {"public_nets": ["192.0.2.0/24"], "fingerprint_files": [str(fp.resolve())],
                               "asn_db": str(asn_db.resolve()), "control_window_h": 1.5, "use_defaults": True}
    sets = {s["name"]: s for s in meta["fingerprints"]["sets"]}
    assert sets["sinkhole.csv"]["count"] == 1 and len(sets["sinkhole.csv"]["sha256"]) == 64
    assert any(s["origin"] == "built-in" for s in sets.values()) and meta["fingerprints"]["total"] == sum(s["count"] for s in sets.values())
    assert meta["asn_db"]["type"] == "GeoLite2-ASN" and re_date(meta["asn_db"]["date"])
    assert meta["datasets"] == [str(root.resolve())] and meta["written_by"] == "vantage analyze"
    from importlib.metadata import version

    assert meta["vantage_version"] == version("vantage")
    made = _dt.datetime.strptime(meta["created_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.UTC)
    assert abs((_dt.datetime.now(_dt.UTC) - made).total_seconds()) < 600
    assert meta["counts"] == {"verdicts": 3, "probe_measurements": 3, "skipped_files": 0}


def re_date(text: str) -> bool:
    import re

    return re.fullmatch(r"\d{4}-\d\d-\d\d", text) is not None


def test_read_verdicts_names_a_file_that_is_not_verdicts(tmp_path: Path) -> None:
    from analysis.pipeline import METADATA_KEY, VerdictsFileError, read_verdicts

    root, _ = dataset(tmp_path)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet")
    bad_json = tmp_path / "bad-json.parquet"
    pq.write_table(pa.table({"measurement_id": ["x"]}).replace_schema_metadata({METADATA_KEY: b"{not json"}), bad_json)
    measurements = next((root / "measurements").rglob("*.parquet"))
    cases = [(tmp_path / "none.parquet", "no such verdicts file"), (garbage, "not a readable Parquet file"),
             (measurements, "not a Vantage verdicts file"), (bad_json, "corrupt verdicts metadata")]
    for path, message in cases:
        with pytest.raises(VerdictsFileError, match=message) as err:
            read_verdicts(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        for cmd in ("report", "events"):
            res = CliRunner().invoke(main, [cmd, "--verdicts", str(path), "-o", str(tmp_path / f"out.{'md' if cmd == 'report' else 'parquet'}")])
            assert res.exit_code == 1 and "Traceback" not in res.output, res.output
            assert res.output.startswith("Error: ") and message in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "out.md").exists() and not (tmp_path / "out.parquet").exists()


def test_verdicts_file_excludes_other_options_and_other_datasets(tmp_path: Path) -> None:
    root, _ = dataset(tmp_path)
    other, _, _ = options_dataset(tmp_path)
    runner = CliRunner()
    assert runner.invoke(main, ["analyze", str(root), "-o", str(tmp_path / "v.parquet")]).exit_code == 0
    v = str(tmp_path / "v.parquet")
    cases = [
        (["report", "--verdicts", v, "-o", str(tmp_path / "r.md"), "--public-net", "10.0.0.0/8"], 2,
         "--public-net cannot be combined with --verdicts"),
        (["events", "--verdicts", v, "-o", str(tmp_path / "e.parquet"), "--control-window", "2"], 2,
         "--control-window cannot be combined with --verdicts"),
        (["events", "--verdicts", v, "-o", str(tmp_path / "e.parquet"), "--no-verdicts"], 2, "exclude each other"),
        (["report", str(other), "--verdicts", v, "-o", str(tmp_path / "r.md")], 1, "was made from"),
        (["report", "-o", str(tmp_path / "r.md")], 2, "give DATASETS"),
    ]
    for args, code, message in cases:
        res = runner.invoke(main, args)
        assert res.exit_code == code and message in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    # the same datasets given again beside the file are fine
    res = runner.invoke(main, ["report", str(root), "--verdicts", v, "-o", str(tmp_path / "r.md")])
    assert res.exit_code == 0, res.output


def test_report_stops_on_verdicts_of_other_measurements(tmp_path: Path) -> None:
    """Same directory, different data (the dataset was replaced since analyze): the report
    refuses the stale verdicts rather than mixing them with other measurements."""
    import shutil

    root, _ = dataset(tmp_path)
    assert CliRunner().invoke(main, ["analyze", str(root), "-o", str(tmp_path / "v.parquet")]).exit_code == 0
    shutil.rmtree(root)
    dataset(tmp_path)  # new measurement ids in the same place
    res = CliRunner().invoke(main, ["report", "--verdicts", str(tmp_path / "v.parquet"), "-o", str(tmp_path / "r.md")])
    assert res.exit_code == 1 and "verdicts name measurements that are not in the datasets" in res.output, res.output
    assert not (tmp_path / "r.md").exists()


def test_the_three_commands_share_one_set_of_analysis_options() -> None:
    import click

    def params(name: str) -> dict[str, tuple]:
        cmd = main.get_command(click.Context(main), name)
        assert cmd is not None
        return {p.opts[0]: (p.type.to_info_dict(), p.default, p.multiple, getattr(p, "help", None)) for p in cmd.params
                if isinstance(p, click.Option)}

    shared = ("--public-net", "--fingerprints", "--asn-db", "--control-window", "-v", "-q")
    analyze, report, events = params("analyze"), params("report"), params("events")
    for flag in shared:
        assert flag in analyze and analyze[flag] == report[flag] == events[flag], flag
    assert analyze["--control-window"][:2] == ({"param_type": "Float", "name": "float"}, 6.0)
    assert report["--verdicts"] == events["--verdicts"]


def test_printed_options_parse_back_to_the_same_options(tmp_path: Path) -> None:
    import click

    from vantage.cli.options import build_options, command_args

    for opts in (build_options(), build_options(["127.64.0.0/10", "10.0.0.0/8"], [tmp_path / "a b.csv"],
                                                tmp_path / "asn.mmdb", 2.5)):
        cmd = main.get_command(click.Context(main), "analyze")
        assert cmd is not None
        ctx = cmd.make_context("analyze", ["ds", "-o", "v.parquet", *command_args(opts)])
        p = ctx.params
        assert build_options(p["public_nets"], p["fingerprint_files"], p["asn_db"], p["control_window"]) == opts


# --------------------------------------------------------------------------- --db and write failures


@pytest.mark.slow  # several analyses into one database: ~3 s
def test_db_onto_an_analysts_database_keeps_their_tables(tmp_path: Path) -> None:
    root, _ = dataset(tmp_path)
    db = tmp_path / "work.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE my_notes AS SELECT 'IR blocks a.example' AS note")
    con.close()
    runner = CliRunner()
    for run in range(2):  # a second run replaces Vantage's own tables and views again
        res = runner.invoke(main, ["analyze", str(root), "-o", str(tmp_path / "v.parquet"), "--db", str(db)])
        assert res.exit_code == 0, res.output
        if run == 0:  # the analyst builds on Vantage's table: their view outlives the next run
            con = duckdb.connect(str(db))
            con.execute("CREATE VIEW my_blocked AS SELECT * FROM verdicts WHERE status = 'blocked'")
            con.close()
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.sql("SELECT note FROM my_notes").fetchall() == [("IR blocks a.example",)]
        assert con.sql("SELECT count(*) FROM my_blocked").fetchall() == [(1,)]
        assert con.sql("SELECT count(*) FROM verdicts").fetchall() == [(3,)]
        comment = con.sql("SELECT comment FROM duckdb_tables() WHERE table_name = 'verdicts'").fetchall()[0][0]
        assert comment.startswith("vantage analyze; provenance: {") and '"format": "vantage-verdicts"' in comment
    finally:
        con.close()


def test_db_never_replaces_an_analysts_table_of_the_same_name(tmp_path: Path) -> None:
    root, _ = dataset(tmp_path)
    db = tmp_path / "work.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE verdicts AS SELECT 42 AS my_own_column")
    con.close()
    not_db = tmp_path / "notes.duckdb"
    not_db.write_text("my notes, not a database\n")
    runner = CliRunner()
    for target, message in ((db, "holds a table 'verdicts' that Vantage did not write"),
                            (not_db, "cannot open as a DuckDB database")):
        res = runner.invoke(main, ["analyze", str(root), "-o", str(tmp_path / "v.parquet"), "--db", str(target)])
        assert res.exit_code == 1 and message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.sql("SELECT * FROM verdicts").fetchall() == [(42,)]
        assert con.sql("SELECT count(*) FROM duckdb_views() WHERE NOT internal").fetchall() == [(0,)]
    finally:
        con.close()
    assert not_db.read_text() == "my notes, not a database\n"
    assert not (tmp_path / "v.parquet").exists()  # refused before any work


@pytest.mark.slow  # one analysis per failing output: ~5 s
def test_write_failures_are_one_line_and_leave_nothing_half_written(tmp_path: Path) -> None:
    root, _ = dataset(tmp_path)
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "out"
    out.mkdir()
    runner = CliRunner()
    with read_only_dir(tmp_path / "ro") as ro:
        cases = [
            (["report", str(root), "-o", str(tmp_path / "a-file" / "r.html")], "a-file is a file"),
            (["analyze", str(root), "-o", str(tmp_path / "a-file" / "v.parquet")], "a-file is a file"),
            (["analyze", str(root), "-o", str(ro / "v.parquet")], "v.parquet"),
            (["events", str(root), "-o", str(ro / "e.parquet")], "e.parquet"),
            # the report is fine, its CSV is not: neither appears
            (["report", str(root), "-o", str(out / "r.html"), "--csv", str(ro / "v.csv")], "v.csv"),
            (["report", str(root), "-o", str(out / "r.md"), "--csv", str(ro / "v.csv")], "v.csv"),
        ]
        for args, message in cases:
            res = runner.invoke(main, args)
            assert res.exit_code == 1 and res.output.startswith("Error: ") and message in res.output, (args, res.output)
            assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
            assert ".tmp" not in res.output  # names the file asked for, never a temporary one
        assert list(ro.iterdir()) == []
    assert list(out.iterdir()) == []  # no report, no charts directory, no temporary file
    # a missing directory is created, like the report's own (documented in docs/cli.md)
    res = runner.invoke(main, ["report", str(root), "-o", str(out / "r.html"), "--csv", str(out / "new" / "v.csv")])
    assert res.exit_code == 0, res.output
    assert (out / "r.html").exists() and (out / "new" / "v.csv").exists()
    assert_one_verdict_per_measurement(out / "new" / "v.csv", [root])


@pytest.mark.slow  # an analysis per failing write: ~4 s
def test_a_write_failing_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills after the report's temporary file was written, while the CSV is: neither
    file appears, no temporary one stays, and the error is one line naming the CSV."""
    import errno

    import analysis.report as report_mod
    from analysis.pipeline import OutputError, run_stage

    root, _ = dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()

    def disk_full(table: pa.Table, where: Path) -> None:
        Path(where).write_bytes(b"half a csv")
        raise OSError(errno.ENOSPC, "No space left on device", str(where))  # the temporary name

    monkeypatch.setattr(report_mod.pacsv, "write_csv", disk_full)
    for name in ("r.html", "r.md"):
        with pytest.raises(OutputError, match="No space left on device") as err:
            report_mod.write_report([root], out / name, csv=out / "v.csv", verdicts=run_stage([root]))
        assert "v.csv" in str(err.value) and ".tmp" not in str(err.value)
        assert list(out.iterdir()) == []
