"""The verdict stage on Apache Spark (analysis/spark_engine.py) gives DuckDB's verdicts and events
exactly, on a real standalone cluster on loopback: a master and two workers, each its own JVM
process (analysis/spark_cluster.py), started once per test session and stopped by PID.

Datasets: the demo's (the loopback lab), the OONI netem import, a scenario with shutdowns, the
verdict rules' edge cases (NULLs in lists, controls less than a second apart, empty lists,
redirect lookups at the control) and several days whose pairing windows cross midnight. The
fast tests at the end need no Java: the install hint and the shard invariants (with their traps).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from analysis.pipeline import AnalysisOptions, read_verdicts, run_stage
from analysis.shutdown import find_events
from analysis.verdicts import VERDICT_SCHEMA
from probe.dataset import write_records
from probe.schema import DnsAnswer, DnsQuery, HttpRequest, Measurement, new_uuid7
from tests.analysis.test_verdicts import BLOCKPAGE, TEST_FINGERPRINTS, web
from tests.support import scenario as sc
from tests.support.paths import OONI_DATA, REPO
from vantage.cli import main

NETEM = OONI_DATA / "netem"
HAVE_SPARK = shutil.which("java") is not None and __import__("importlib.util").util.find_spec("pyspark") is not None
# Spark jobs on a 2-core machine shared with other work: a few minutes, not the suite's 300 s.
SPARK_TIMEOUT_S = 900
needs_spark = pytest.mark.skipif(not HAVE_SPARK, reason="needs pyspark and a Java runtime: pip install -e '.[spark]' "
                                 "and apt-get install openjdk-17-jre-headless (scripts/test.sh does both)")


# --------------------------------------------------------------------------- the cluster


@pytest.fixture(scope="session")
def spark_master() -> Iterator[str]:
    """A master and two workers on 127.0.0.1 and one driver session on them, for the session."""
    from analysis.spark_cluster import LocalCluster, cluster_conf, loopback_env
    from analysis.spark_engine import spark_session

    saved = dict(os.environ)
    os.environ.update(loopback_env())
    cluster = LocalCluster(workers=2, worker_cores=1, worker_memory="768m")
    try:
        cluster.start()
        pids = cluster.pids()
        assert len(pids) == 3 and len(set(pids)) == 3  # three processes: master, two workers
        with spark_session(cluster.master_url, cluster_conf(executor_memory="512m", driver_memory="768m")):
            yield cluster.master_url
    finally:
        cluster.stop()
        for pid in pids if "pids" in locals() else []:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        os.environ.clear()
        os.environ.update(saved)


def both(paths: list[Path], options: AnalysisOptions, master: str, rows_per_shard: int = 40) -> tuple[pa.Table, pa.Table]:
    """(DuckDB's verdicts, Spark's verdicts) for the same datasets and options."""
    from analysis.spark_engine import run_stage_spark

    duck = run_stage(paths, options).table
    spark = run_stage_spark(paths, dataclasses.replace(options, engine="spark", spark_master=master),
                            rows_per_shard=rows_per_shard).table
    return duck, spark


def assert_same_verdicts(duck: pa.Table, spark: pa.Table) -> None:
    assert duck.num_rows > 0
    assert duck.schema.equals(VERDICT_SCHEMA) and spark.schema.equals(VERDICT_SCHEMA)
    order = [("measurement_id", "ascending")]
    a, b = duck.sort_by(order), spark.sort_by(order)
    if not a.equals(b):
        diff = [(x, y) for x, y in zip(a.to_pylist(), b.to_pylist(), strict=False) if x != y]
        raise AssertionError(f"{a.num_rows} vs {b.num_rows} rows; first difference: {diff[:1]}")


def assert_same_events(paths: list[Path], duck: pa.Table, spark: pa.Table, master: str) -> int:
    d = find_events(paths, verdicts=duck)
    s = find_events(paths, verdicts=spark, spark_master=master)
    assert d.hourly.equals(s.hourly), "hourly signals differ"
    assert d.table().equals(s.table())
    return len(d.events)


# --------------------------------------------------------------------------- datasets


def edge_cases(root: Path) -> list[Path]:
    """The verdict rules' awkward inputs in one dataset, one input each."""
    t0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
    records: list[Measurement] = []

    def pair(url: str, at: dt.datetime, **kw: object) -> Measurement:
        p = web(url=url, at=at, **kw)  # type: ignore[arg-type]
        records.append(p)
        return p

    # controls less than a second apart, a probe between them (nearer the second), one after both
    p1 = pair("http://close.example/", t0 + dt.timedelta(milliseconds=700), tcp_failure="connection_reset")
    records += [web("control", url=p1.input, at=t0 + dt.timedelta(milliseconds=100)),
                web("control", url=p1.input, at=t0 + dt.timedelta(milliseconds=900), status=404),
                web("control", url=p1.input, at=t0 + dt.timedelta(milliseconds=950))]
    pair("http://close.example/", t0 + dt.timedelta(seconds=1, milliseconds=1))
    # empty lists: a probe that observed nothing, a control that observed nothing
    empty = Measurement(measurement_id=new_uuid7(), run_id="run-probe", experiment="web_connectivity",
                        experiment_version="0.1.0", input="http://empty.example/", measurement_start_time=t0,
                        role="probe", probe_cc="IR", probe_asn="AS197207")
    records.append(empty)
    p2 = pair("http://empty-control.example/", t0, tcp_failure="generic_timeout")
    records.append(Measurement(measurement_id=new_uuid7(), run_id="run-control", experiment="web_connectivity",
                               experiment_version="0.1.0", input=p2.input, measurement_start_time=t0, role="control",
                               probe_cc="NL", probe_asn="AS64500", control_for=p2.measurement_id))
    # redirect lookups at the control: the control also resolved the redirect's host
    p3 = pair("http://redirect.example/", t0, ips=["93.184.216.40"])
    p3.http.insert(0, HttpRequest(t0=0.2, t=0.25, failure=None, url=p3.input, ip="93.184.216.40", status_code=302))
    c3 = web("control", url=p3.input, at=t0, control_for=p3.measurement_id, ips=["93.184.216.41"])
    c3.dns.append(DnsQuery(t0=0.3, t=0.35, failure=None, resolver="system", engine="system", query_type="A",
                           hostname="www.redirect.example", rcode="NOERROR",
                           answers=[DnsAnswer("A", "93.184.216.40", 300)]))
    records.append(c3)
    # blockpage, bogon and NXDOMAIN with their helper controls; a probe with no control at all
    for url, kw in (("http://blockpage.example/", {"body": BLOCKPAGE, "title": "Blocked"}),
                    ("http://bogon.example/", {"ips": ["10.10.34.35"]}),
                    ("http://nx.example/", {"dns_failure": "dns_nxdomain"}),
                    ("http://fail.example/", {"failure": "unknown_failure:x"})):
        p = pair(url, t0, **kw)
        records.append(web("control", url=url, at=t0, control_for=p.measurement_id))
    pair("http://alone.example/", t0, tcp_failure="connection_reset")
    write_records(root, "run-edge", records)
    # NULLs in lists: rewrite one file with a NULL list, a NULL element and a NULL answers list
    f = next(root.rglob("*.parquet"))
    t = pq.read_table(f)
    rows = t.to_pylist()
    for r in rows:
        if r["input"] == "http://empty-control.example/" and r["role"] == "probe":
            r["tcp"] = None
            r["http"] = [None]
        if r["input"] == "http://bogon.example/" and r["role"] == "control":
            r["dns"] = [dict(r["dns"][0], answers=None), None]
        if r["input"] == "http://blockpage.example/" and r["role"] == "probe":
            r["tls"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), f)
    return [root]


def midnight(root: Path) -> list[Path]:
    """Four days; each night probes just after midnight pair with controls of 23:50 the day
    before, probes just before midnight with controls of 00:20 the day after."""
    records: list[Measurement] = []
    start = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    for day in range(4):
        midnight_t = start + dt.timedelta(days=day)
        for i in range(6):
            url = f"http://night{i}.example/"
            kw: dict[str, object] = [{}, {"tcp_failure": "connection_reset"}, {"status": 403},
                                     {"dns_failure": "dns_nxdomain"}, {"ips": ["10.1.1.1"]}, {}][i]
            records.append(web(url=url, at=midnight_t + dt.timedelta(minutes=10 + i), **kw))  # type: ignore[arg-type]
            records.append(web(url=url, at=midnight_t - dt.timedelta(minutes=5 + i), **kw))  # type: ignore[arg-type]
            records.append(web(url=url, at=midnight_t + dt.timedelta(hours=12), **kw))  # type: ignore[arg-type]
            records.append(web("control", url=url, at=midnight_t - dt.timedelta(minutes=10)))
            records.append(web("control", url=url, at=midnight_t + dt.timedelta(minutes=20)))
    write_records(root, "run-night", records)
    return [root]


@pytest.fixture(scope="module")
def fingerprints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("fp") / "test-fingerprints.csv"
    f.write_text(TEST_FINGERPRINTS, encoding="utf-8")
    return f


# --------------------------------------------------------------------------- the comparisons


@pytest.mark.slow
@pytest.mark.timeout(SPARK_TIMEOUT_S)
@needs_spark
def test_edge_cases_and_midnight(spark_master: str, tmp_path: Path, fingerprints: Path) -> None:
    opts = AnalysisOptions(fingerprint_files=(fingerprints,))
    duck, spark = both(edge_cases(tmp_path / "edge"), opts, spark_master, rows_per_shard=3)
    assert_same_verdicts(duck, spark)
    statuses = set(duck.column("status").to_pylist())
    assert {"ok", "blocked", "no_control", "probe_failure"} <= statuses, statuses
    paths = midnight(tmp_path / "night")
    for window in (6.0, 30.0):  # the window crosses midnight; and spans more than a day
        duck, spark = both(paths, dataclasses.replace(opts, control_window_h=window), spark_master, rows_per_shard=5)
        assert_same_verdicts(duck, spark)
        # the after-midnight probes found the control of the evening before
        assert "no_control" not in set(duck.filter(pa.compute.less(
            pa.compute.hour(duck.column("measurement_start_time")), 1)).column("status").to_pylist())
    assert_same_events(paths, duck, spark, spark_master)


@pytest.mark.slow
@pytest.mark.timeout(SPARK_TIMEOUT_S)
@needs_spark
def test_scenario_with_shutdowns(spark_master: str, tmp_path: Path) -> None:
    scn = sc.default_scenario(days=14)
    assert any(e.kind == "shutdown" for e in scn.events)
    sc.write_dataset(sc.generate_measurements(scn), tmp_path / "scn")
    paths = [tmp_path / "scn"]
    duck, spark = both(paths, AnalysisOptions(), spark_master, rows_per_shard=5_000)
    assert_same_verdicts(duck, spark)
    assert "no_connectivity" in set(duck.column("status").to_pylist())  # the shutdowns' hours
    d = find_events(paths, verdicts=duck)
    assert any(e.kind == "shutdown" for e in d.events)
    assert assert_same_events(paths, duck, spark, spark_master) > 0
    # connectivity: partial counts per batch summed by Spark, decided on the driver by the same SQL
    disconnected = assert_same_connectivity(paths, spark_master)
    assert disconnected > 0  # the shutdowns' hours


def assert_same_connectivity(paths: list[Path], master: str) -> int:
    """Spark's connectivity table and offline rows equal DuckDB's; the disconnected count."""
    from analysis import connectivity
    from analysis.db import open_datasets
    from analysis.spark_engine import connectivity_spark, read_measurements, spark_session

    con = open_datasets(paths)
    try:
        table, offline = connectivity.connectivity_table(con), connectivity.offline_table(con)
    finally:
        con.close()
    with spark_session(master) as spark:
        s_offline, s_table, facts = connectivity_spark(spark, read_measurements(spark, paths))
        try:
            s_offline_t = s_offline.toArrow().cast(connectivity.OFFLINE_SCHEMA).sort_by([("mid", "ascending"),
                                                                                      ("role", "ascending")])
        finally:
            facts.unpersist()
    assert s_table.schema.equals(connectivity.CONNECTIVITY_SCHEMA)
    assert table.equals(s_table), "connectivity tables differ"
    assert offline.equals(s_offline_t), f"{offline.num_rows} vs {s_offline_t.num_rows} offline rows"
    return table.num_rows - pa.compute.sum(table.column("connected")).as_py()


@pytest.mark.slow
@pytest.mark.timeout(SPARK_TIMEOUT_S)
@needs_spark
def test_ooni_netem_import(spark_master: str, tmp_path: Path) -> None:
    if not (NETEM / "web_connectivity_netem_simulated.jsonl").exists():
        pytest.skip(f"no OONI netem data at {NETEM}")
    res = CliRunner().invoke(main, ["ooni", "import", str(NETEM / "web_connectivity_netem_simulated.jsonl"),
                                    "-o", str(tmp_path / "ds"), "-q"])
    assert res.exit_code == 0, res.output
    paths = [tmp_path / "ds"]
    duck, spark = both(paths, AnalysisOptions(), spark_master, rows_per_shard=20)
    assert_same_verdicts(duck, spark)
    assert_same_events(paths, duck, spark, spark_master)


def _without_fields(t: pa.DataType, drop: set[str]) -> pa.DataType:
    """``t`` as an older Vantage wrote it: nested struct fields in ``drop`` absent, DNS TTLs int32."""
    if pa.types.is_list(t):
        return pa.list_(_without_fields(t.value_type, drop))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, pa.int32() if f.name == "ttl" else _without_fields(f.type, drop))
                          for f in t if f.name not in drop])
    return t


@pytest.mark.slow
@pytest.mark.timeout(SPARK_TIMEOUT_S)
@needs_spark
def test_datasets_of_different_versions_analysed_together(spark_master: str, tmp_path: Path,
                                                          fingerprints: Path) -> None:
    """An old-shaped dataset (DnsAnswer without asn/as_org_name, observations without tag, int32
    TTLs: fields later versions added) beside a current one whose tls and vpn lists are NULL in
    every row: Spark's merged schema gives DuckDB's verdicts, connectivity and events."""
    old = edge_cases(tmp_path / "old")
    for f in (tmp_path / "old").rglob("*.parquet"):
        t = pq.read_table(f)
        schema = pa.schema([pa.field(x.name, _without_fields(x.type, {"asn", "as_org_name", "tag"})) for x in t.schema])
        pq.write_table(pa.Table.from_pylist(t.to_pylist(), schema=schema), f)
        answers = pq.read_schema(f).field("dns").type.value_type.field("answers").type.value_type
        assert answers.get_field_index("asn") == -1  # really written old-shaped
    new = midnight(tmp_path / "new")
    for f in (tmp_path / "new").rglob("*.parquet"):
        t = pq.read_table(f)
        for col in ("tls", "vpn"):
            i = t.schema.get_field_index(col)
            t = t.set_column(i, col, pa.nulls(t.num_rows, t.schema.field(col).type))
        pq.write_table(t, f)
    paths = old + new
    duck, spark = both(paths, AnalysisOptions(fingerprint_files=(fingerprints,)), spark_master, rows_per_shard=7)
    assert_same_verdicts(duck, spark)
    probes = sum(pa.compute.sum(pa.compute.equal(pq.read_table(f, columns=["role"]).column("role"), "probe")).as_py()
                 for p in paths for f in p.rglob("*.parquet"))
    assert duck.num_rows == probes  # every probe row of both versions judged once
    # the old dataset's blocks are still found (a blockpage, a bogon answer) beside the new one's
    assert {"blocked", "ok", "no_control"} <= set(duck.column("status").to_pylist())
    assert_same_connectivity(paths, spark_master)
    assert_same_events(paths, duck, spark, spark_master)


@pytest.mark.slow
@pytest.mark.timeout(SPARK_TIMEOUT_S)
@needs_spark
def test_demo_datasets_through_the_cli(spark_master: str, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--output", str(out)])
    assert res.exit_code == 0, res.output
    paths = [out / "probe", out / "control"]
    flags = ["--public-net", "127.64.0.0/10", "--fingerprints", str(REPO / "vantage" / "lab" / "fingerprints.csv")]
    runner = CliRunner()
    ds = [str(p) for p in paths]
    res = runner.invoke(main, ["analyze", *ds, "-o", str(tmp_path / "duck.parquet"), *flags])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["analyze", *ds, "-o", str(tmp_path / "spark.parquet"), *flags,
                               "--engine", "spark", "--spark-master", spark_master])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "spark.parquet").is_dir()  # a Parquet dataset: parts + provenance
    duck, dmeta = read_verdicts(tmp_path / "duck.parquet")
    spark, smeta = read_verdicts(tmp_path / "spark.parquet")
    assert_same_verdicts(duck, spark)
    assert duck.equals(spark)  # same order too
    assert smeta["engine"] == {"name": "spark", "master": spark_master} and dmeta["engine"] == {"name": "duckdb"}
    assert {k: v for k, v in smeta.items() if k not in ("created_at", "engine")} == \
           {k: v for k, v in dmeta.items() if k not in ("created_at", "engine")}
    # events and report read the Spark verdicts dataset, or compute on Spark
    res = runner.invoke(main, ["events", "--verdicts", str(tmp_path / "spark.parquet"), "-o",
                               str(tmp_path / "ev-spark.parquet"), "--engine", "spark", "--spark-master", spark_master])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["events", *ds, *flags, "-o", str(tmp_path / "ev-duck.parquet")])
    assert res.exit_code == 0, res.output
    assert pq.read_table(tmp_path / "ev-spark.parquet").equals(pq.read_table(tmp_path / "ev-duck.parquet"))
    res = runner.invoke(main, ["report", *ds, *flags, "-o", str(tmp_path / "r.md"), "--engine", "spark",
                               "--spark-master", spark_master, "-q"])
    assert res.exit_code == 0, res.output
    (tmp_path / "duck").mkdir()
    res = runner.invoke(main, ["report", *ds, *flags, "-o", str(tmp_path / "duck" / "r.md"), "-q"])
    assert res.exit_code == 0, res.output
    # the same report (its events from the signals Spark summed) but for the line naming the
    # engine, once the times the verdicts were made are set aside
    spark_md, duck_md = ([re.sub(r" at \d{4}-\d\d-\d\dT[\d:]+Z", " at T", ln) for ln in p.read_text(encoding="utf-8").splitlines()]
                         for p in (tmp_path / "r.md", tmp_path / "duck" / "r.md"))
    differ = [ln for ln in difflib.ndiff(duck_md, spark_md) if ln.startswith(("- ", "+ "))]
    assert differ and all(ln.startswith("+ ") and "Apache Spark" in ln for ln in differ), differ[:4]
    assert assert_same_events(paths, duck, spark, spark_master) >= 0
    # a second run replaces the verdicts dataset; any other directory is never replaced
    res = runner.invoke(main, ["analyze", *ds, "-o", str(tmp_path / "spark.parquet"), *flags,
                               "--engine", "spark", "--spark-master", spark_master, "-q"])
    assert res.exit_code == 0, res.output
    (tmp_path / "mine.parquet").mkdir()
    (tmp_path / "mine.parquet" / "keep.txt").write_text("x")
    res = runner.invoke(main, ["analyze", *ds, "-o", str(tmp_path / "mine.parquet"), "--engine", "spark",
                               "--spark-master", spark_master])
    assert res.exit_code == 1 and "not a verdicts dataset" in res.output
    assert (tmp_path / "mine.parquet" / "keep.txt").exists()


# --------------------------------------------------------------------------- fast: no Java needed


def test_without_pyspark_the_option_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark -> ImportError
    (tmp_path / "ds").mkdir()
    res = CliRunner().invoke(main, ["analyze", str(tmp_path / "ds"), "-o", str(tmp_path / "v.parquet"),
                                    "--engine", "spark"])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'vantage[spark]'" in lines[0], res.output
    # the trap: the default engine does not need PySpark
    res = CliRunner().invoke(main, ["analyze", str(tmp_path / "ds"), "-o", str(tmp_path / "v.parquet")])
    assert "vantage[spark]" not in res.output


def test_spark_master_needs_the_spark_engine(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["analyze", str(tmp_path), "-o", str(tmp_path / "v.parquet"),
                                    "--spark-master", "local[2]"])
    assert res.exit_code == 2 and "--spark-master needs --engine spark" in res.output


def _shard(day: int, rows: list[tuple[str, str, str | None, int]]) -> pa.Table:
    return pa.table({"measurement_id": [r[0] for r in rows], "role": [r[1] for r in rows],
                     "control_for": pa.array([r[2] for r in rows], pa.string()),
                     "_t_us": pa.array([r[3] for r in rows], pa.int64()), "_s_day": [day] * len(rows)})


def _verdicts_for(mids: list[str]) -> pa.Table:
    return pa.table({"measurement_id": mids})


def test_shard_invariants_catch_a_misplaced_row() -> None:
    pytest.importorskip("numpy")
    from analysis.spark_engine import DAY_US, ShardInvariantError, check_shard

    day, h = 20_000, 3_600_000_000
    noon = day * DAY_US + 12 * h
    ok = _shard(day, [("p1", "probe", None, noon), ("c1", "control", None, day * DAY_US - 5 * h),
                      ("h1", "control", "p1", noon)])
    check_shard(ok, _verdicts_for(["p1"]), 6.0)  # the trap: a control 5 h before midnight serves this day
    with pytest.raises(ShardInvariantError, match="pairing window"):
        check_shard(_shard(day, [("p1", "probe", None, noon), ("c1", "control", None, day * DAY_US - 7 * h)]),
                    _verdicts_for(["p1"]), 6.0)
    with pytest.raises(ShardInvariantError, match="outside its shard's day"):
        check_shard(_shard(day, [("p1", "probe", None, noon + DAY_US)]), _verdicts_for(["p1"]), 6.0)
    with pytest.raises(ShardInvariantError, match="helper"):
        check_shard(_shard(day, [("p1", "probe", None, noon), ("h2", "control", "p9", noon)]),
                    _verdicts_for(["p1"]), 6.0)
    with pytest.raises(ShardInvariantError, match="verdicts for"):
        check_shard(ok, _verdicts_for(["p1", "p1"]), 6.0)
