"""The path_trace experiment: which packet it replays to whom, when it runs the control replay,
the record it returns (through the schema and Parquet), and that old files without the
``traces`` column still read. No sockets: probe.net.pathtrace.trace is scripted."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from probe import schema as S
from probe.dataset import check_file, write_records
from probe.experiments.base import Settings, Target, Vantage, measure
from probe.experiments.path_trace import PathTraceExperiment
from probe.net import pathtrace
from probe.schema import PathHop
from tests.support.fake_net import FakeNet

CENSORED = [PathHop(1, "10.0.1.1", "time_exceeded"), PathHop(2, None, "rst")]
CONTROL = [PathHop(1, "10.0.1.1", "time_exceeded"), PathHop(2, None, "no_response"),
           PathHop(3, "10.0.3.1", "time_exceeded"), PathHop(4, None, "tls")]


@pytest.fixture
def traces(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def fake_trace(protocol: str, ip: str, port: int, hostname: str, settings: Any, *, path: str = "/") -> Any:
        calls.append((protocol, ip, port, hostname))
        return (CONTROL if hostname == "example.com" else CENSORED), None

    monkeypatch.setattr(pathtrace, "trace", fake_trace)
    monkeypatch.setattr(pathtrace, "privilege_problem", lambda: None)
    return calls


def run(url: str, net: FakeNet) -> list[Any]:
    return asyncio.run(PathTraceExperiment().run(Target(url), net))


def test_tls_replay_to_the_resolved_address_with_a_control_replay(traces: list[tuple[Any, ...]]) -> None:
    net = FakeNet(Settings(resolvers=["10.0.0.53"], use_system_resolver=False), dns={"blocked.test": ["192.0.2.7"]})
    *queries, tr = run("https://blocked.test/", net)
    assert queries and all(q.hostname == "blocked.test" for q in queries)
    # The reset drew no time-exceeded: the control replay measured the target's distance.
    assert traces == [("tls", "192.0.2.7", 443, "blocked.test"), ("tls", "192.0.2.7", 443, "example.com")]
    assert (tr.interference_ttl, tr.hop_before, tr.basis, tr.target_ttl) == (2, "10.0.1.1", "before_target", 4)
    assert tr.control_hostname == "example.com" and tr.control_hops == CONTROL


def test_dns_replay_goes_to_the_configured_resolver(traces: list[tuple[Any, ...]]) -> None:
    net = FakeNet(Settings(resolvers=["10.0.0.53:5353"], use_system_resolver=False,
                           extra={"path_layer": "dns", "path_control_name": ""}))
    (tr,) = run("http://blocked.test/", net)
    assert traces == [("dns", "10.0.0.53", 5353, "blocked.test")]  # no control replay asked for
    assert tr.interference_ttl is None and tr.control_hops == []


def test_dns_replay_without_a_resolver_is_an_input_error(traces: list[tuple[Any, ...]]) -> None:
    net = FakeNet(Settings(use_system_resolver=True, extra={"path_layer": "dns"}))
    m = asyncio.run(measure(PathTraceExperiment(), Target("http://blocked.test/"), net.settings, Vantage(), "r",
                            net=net))
    assert m.failure is not None and "resolver" in m.failure and traces == []


def test_http_to_an_explicit_address_resolves_nothing(traces: list[tuple[Any, ...]]) -> None:
    net = FakeNet(Settings(extra={"path_ip": "192.0.2.9"}))
    (tr,) = run("http://blocked.test:8080/x", net)
    assert traces[0] == ("http", "192.0.2.9", 8080, "blocked.test") and net.steps == []
    assert tr.protocol == "http"


def test_without_privilege_the_record_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pathtrace, "privilege_problem", lambda: pathtrace.NEED_PRIVILEGE)
    (tr,) = run("https://192.0.2.7/", FakeNet())
    assert tr.failure is not None and tr.failure.startswith("unknown_failure:") and "CAP_NET_RAW" in tr.failure


def trace_record() -> S.Measurement:
    tr = S.PathTrace(t0=0.1, t=3.2, failure=None, protocol="tls", ip="192.0.2.7", port=443, hostname="blocked.test",
                     hops=list(CENSORED), control_hostname="example.com", control_hops=list(CONTROL), target_ttl=4,
                     interference_ttl=2, interference="rst", hop_before="10.0.1.1", basis="before_target")
    return S.Measurement(measurement_id=S.new_uuid7(), run_id="20261122T101500Z-1a2b3c4d", experiment="path_trace",
                         experiment_version="0.1.0", input="https://blocked.test/", probe_cc="IR",
                         measurement_start_time=dt.datetime(2026, 11, 22, 10, 15, tzinfo=dt.UTC), traces=[tr])


def test_trace_round_trips_through_parquet_and_duckdb(tmp_path: Path) -> None:
    import duckdb

    from analysis.db import open_datasets

    rec = trace_record()
    S.validate(rec)
    (f,) = write_records(tmp_path, rec.run_id, [rec])
    row = pq.read_table(f).to_pylist()[0]
    row["probe_cc"] = "IR"
    assert S.row_to_record(row) == rec
    con = open_datasets([tmp_path], con=duckdb.connect())
    got = con.sql("SELECT interference_ttl, hop_before, hops[2].kind, probe_cc FROM path_traces").fetchall()
    assert got == [(2, "10.0.1.1", "rst", "IR")]
    # A follow-up is no reachability measurement: verdicts and signals never see it.
    assert con.sql("SELECT count(*) FROM measurements").fetchall() == [(0,)]
    assert con.sql("SELECT count(*) FROM all_measurements").fetchall() == [(1,)]


def test_a_file_written_without_the_traces_column_still_reads(tmp_path: Path) -> None:
    import duckdb

    from analysis.db import open_datasets

    old = trace_record()
    old.traces = []
    old.experiment = "web_connectivity"
    (f,) = write_records(tmp_path / "old", old.run_id, [old])
    table = pq.read_table(f)
    pq.write_table(table.drop_columns(["traces"]), f)  # as a writer before this column wrote it
    assert "traces" not in pq.read_schema(f).names
    assert check_file(f) is None
    new = trace_record()
    write_records(tmp_path / "new", new.run_id, [new])
    con = open_datasets([tmp_path / "old", tmp_path / "new"], con=duckdb.connect())
    rows = dict(con.sql("SELECT experiment, len(traces) FROM all_measurements").fetchall())
    assert rows == {"web_connectivity": None, "path_trace": 1}
    # Only old files: no `traces` column in any file; the reader adds it empty (OPTIONAL_COLUMNS),
    # so nothing breaks and path_traces is empty.
    con = open_datasets([tmp_path / "old"], con=duckdb.connect())
    assert con.sql("SELECT count(*) FROM measurements").fetchall() == [(1,)]
    assert con.sql("SELECT count(*) FROM path_traces").fetchall() == [(0,)]
