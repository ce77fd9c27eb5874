"""The data contract round-trips through Parquet and DuckDB; the store writes atomically."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from probe import schema as S
from probe.dataset import DatasetWriter, iter_dataset_files, measured_inputs, write_records
from tests.support.paths import REPO


def full_record(**kw: object) -> S.Measurement:
    start = dt.datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=dt.UTC)
    rec = S.Measurement(
        measurement_id=S.new_uuid7(),
        run_id="20261122T100000Z-abcd1234",
        experiment="web_connectivity",
        experiment_version="0.1.0",
        input="https://example.org/",
        input_category="NEWS",
        measurement_start_time=start,
        role="probe",
        probe_cc="IR",
        probe_asn="AS1234",
        probe_network="Example Telecom",
        resolver_asn="AS1234",
        platform="linux",
        software_version="0.1.0",
        runtime_s=1.5,
        dns=[
            S.DnsQuery(
                t0=0.0, t=0.01, failure=None, resolver="127.0.0.1:53", engine="udp", query_type="A",
                hostname="example.org", rcode="NOERROR",
                answers=[S.DnsAnswer("A", "127.0.0.10", 300)],
                late_responses=[S.DnsLateResponse(t=0.02, rcode="NOERROR", answers=[S.DnsAnswer("A", "127.0.0.66", 60)])],
                tag=None,
            ),
            S.DnsQuery(t0=0.0, t=4.0, failure="generic_timeout", resolver="system", engine="system",
                       query_type="AAAA", hostname="example.org"),
        ],
        tcp=[S.TcpConnect(t0=0.02, t=0.03, failure="connection_reset", ip="127.0.0.10", port=443)],
        tls=[S.TlsHandshake(t0=0.03, t=0.05, failure=None, ip="127.0.0.10", port=443, sni="example.org",
                            tls_version="TLSv1.3", cipher_suite="TLS_AES_128_GCM_SHA256", alpn="h2",
                            peer_cert_sha256="ab" * 32, peer_cert_names=["example.org", "www.example.org"],
                            peer_cert_issuer="CN=Lab CA", cert_valid=True)],
        http=[S.HttpRequest(t0=0.05, t=0.1, failure=None, url="https://example.org/", ip="127.0.0.10",
                            status_code=200, http_version="HTTP/1.1",
                            headers=[S.HttpHeader("Server", "nginx")], body_length=1234,
                            body_truncated=False, body_sha256="cd" * 32, body_sample="<html>…é",
                            title="Example")],
        vpn=[S.VpnHandshake(t0=0.0, t=0.2, failure="vpn_handshake_failure", protocol="openvpn",
                            endpoint="openvpn://127.0.0.5:1194/?transport=udp", ip="127.0.0.5", port=1194,
                            transport="udp", handshake_ok=False,
                            packets=[S.VpnPacket(0.0, "sent", 54, "P_CONTROL_HARD_RESET_CLIENT_V2")],
                            detail="garbage")],
    )
    for k, v in kw.items():
        setattr(rec, k, v)
    return rec


def test_failure_set_is_closed() -> None:
    assert S.is_valid_failure(None)
    assert S.is_valid_failure("dns_nxdomain")
    assert S.is_valid_failure("unknown_failure:weird thing")
    assert not S.is_valid_failure("unknown_failure:")
    assert not S.is_valid_failure("dns_nxdomain_error")
    with pytest.raises(ValueError):
        S.validate(full_record(failure="it broke"))
    with pytest.raises(ValueError):
        S.validate(full_record(role="observer"))


def test_uuid7_sorts_by_time() -> None:
    ids = [S.new_uuid7(now=1_700_000_000 + i) for i in range(50)]
    assert ids == sorted(ids)
    assert all(i[14] == "7" for i in ids)


def test_no_ip_address_field_for_the_probe() -> None:
    names = {f.name for f in S.FULL_SCHEMA}
    assert not any(n in names for n in ("probe_ip", "client_ip", "ip", "probe_address"))


def test_record_round_trips_through_parquet_and_duckdb(tmp_path: Path) -> None:
    rec = full_record()
    ctrl = full_record(measurement_id=S.new_uuid7(), role="control", probe_cc="DE", control_for=rec.measurement_id)
    files = write_records(tmp_path, rec.run_id, [rec, ctrl])
    assert len(files) == 2  # two partitions
    assert {f.parent.name for f in files} == {"probe_cc=IR", "probe_cc=DE"}
    assert all(f.parent.parent.name == "date=2026-11-22" for f in files)

    # back through pyarrow (hive partitions restore probe_cc)
    back = {}
    for f in files:
        row = pq.read_table(f).to_pylist()[0]
        row["probe_cc"] = f.parent.name.split("=", 1)[1]
        back[row["measurement_id"]] = S.row_to_record(row)
    assert back[rec.measurement_id] == rec
    assert back[ctrl.measurement_id] == ctrl

    # and through DuckDB
    con = duckdb.connect()
    glob = str(tmp_path / "measurements" / "**" / "*.parquet")
    rows = con.sql(
        f"SELECT * EXCLUDE (date) FROM read_parquet('{glob}', hive_partitioning=true) ORDER BY role"
    ).to_arrow_table().to_pylist()
    assert [S.row_to_record(r) for r in rows] == [ctrl, rec]
    n, = con.execute(
        "SELECT count(*) FROM read_parquet(?, hive_partitioning=true), unnest(dns) AS d(q)"
        " WHERE q.failure = 'generic_timeout'",
        [str(tmp_path / "measurements" / "**" / "*.parquet")],
    ).fetchone()
    assert n == 2


def test_batches_by_count_and_resume_numbering(tmp_path: Path) -> None:
    run_id = "run-1"
    with DatasetWriter(tmp_path, run_id, batch_size=3, max_age_s=1e9) as w:
        for i in range(7):
            w.add(full_record(measurement_id=S.new_uuid7(), input=f"https://s{i}.example/", run_id=run_id))
        assert len(w.files_written) == 2  # 3 + 3 flushed, 1 buffered
    assert len(w.files_written) == 3
    with DatasetWriter(tmp_path, run_id, batch_size=3) as w2:
        w2.add(full_record(measurement_id=S.new_uuid7(), input="https://s7.example/", run_id=run_id))
    names = sorted(p.name for p in iter_dataset_files(tmp_path))
    assert names[-1] == "part-run-1-00003.parquet"
    assert len(measured_inputs(tmp_path, run_id, "web_connectivity")) == 8


def test_batches_by_age(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path, "r", batch_size=1000, max_age_s=0.05) as w:
        w.add(full_record(run_id="r"))
        time.sleep(0.1)
        assert w.due()
        w.add(full_record(measurement_id=S.new_uuid7(), run_id="r"))
        assert len(w.files_written) == 1


def test_sigkill_mid_run_leaves_only_complete_files(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, itertools
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_schema_store import full_record
        from probe import schema as S
        from probe.dataset import DatasetWriter
        w = DatasetWriter({str(tmp_path)!r}, "killed", batch_size=50, max_age_s=1e9)
        for i in itertools.count():
            w.add(full_record(measurement_id=S.new_uuid7(), run_id="killed", input=f"https://{{i}}.example/"))
            if i == 500:
                print("ready", flush=True)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=REPO
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    files = list(iter_dataset_files(tmp_path))
    assert len(files) >= 10
    total = 0
    for f in files:
        total += pq.read_table(f).num_rows  # every visible file is complete and readable
    assert total % 50 == 0 and total >= 500
    con = duckdb.connect()
    (n,) = con.execute(
        "SELECT count(*) FROM read_parquet(?, hive_partitioning=true)",
        [str(tmp_path / "measurements" / "**" / "*.parquet")],
    ).fetchone()
    assert n == total


def test_new_writer_removes_only_dead_writers_temporaries(tmp_path: Path) -> None:
    part = tmp_path / "measurements" / "date=2026-11-22" / "probe_cc=IR"
    part.mkdir(parents=True)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as live:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        in_flight = part / f".part-other-run-00000.parquet.{live.pid}.tmp"
        left_over = part / f".part-crashed-00000.parquet.{int(dead.stdout)}.tmp"
        in_flight.write_bytes(b"half a file")
        left_over.write_bytes(b"half a file")
        DatasetWriter(tmp_path, "new-run")
        live.kill()
    assert in_flight.exists()  # another live run is still writing it
    assert not left_over.exists()


def test_temporaries_with_a_thread_id_are_cleaned_like_the_others(tmp_path: Path) -> None:
    """Temporaries are named .part-...parquet.<pid>.<thread>.tmp now (one writer thread per
    run); a dead writer's are removed, a live one's kept, as before."""
    part = tmp_path / "measurements" / "date=2026-11-22" / "probe_cc=IR"
    part.mkdir(parents=True)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as live:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        in_flight = part / f".part-a-00000.parquet.{live.pid}.140213.tmp"
        left_over = part / f".part-b-00000.parquet.{int(dead.stdout)}.140213.tmp"
        in_flight.write_bytes(b"x")
        left_over.write_bytes(b"x")
        DatasetWriter(tmp_path, "new-run")
        live.kill()
    assert in_flight.exists() and not left_over.exists()


def test_a_flush_that_fails_halfway_never_writes_a_partition_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two partitions in one batch, the second write fails (disk full): the retry writes only
    the second; the first partition's rows are on disk once."""
    import probe.dataset as store

    real = store.write_table_atomic
    calls = {"n": 0}

    def flaky(*a: object, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "write_table_atomic", flaky)
    w = DatasetWriter(tmp_path, "r1", batch_size=10**6, max_age_s=1e9)
    for cc in ("IR", "RU"):
        w.add(full_record(probe_cc=cc))
    with pytest.raises(store.StoreError, match="No space left"):
        w.flush()
    assert w.records_written == 1
    w.flush()
    rows = duckdb.sql(
        f"SELECT probe_cc, count(*) FROM read_parquet('{tmp_path}/measurements/**/*.parquet', hive_partitioning=true) "
        "GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert rows == [("IR", 1), ("RU", 1)] and w.records_written == 2


def test_a_part_number_taken_by_another_writer_is_never_overwritten(tmp_path: Path) -> None:
    w = DatasetWriter(tmp_path, "r1", batch_size=10**6, max_age_s=1e9)  # computed n = 0
    first = write_records(tmp_path, "r1", [full_record(run_id="r1")])  # another writer takes 00000
    assert first[0].name == "part-r1-00000.parquet"
    w.add(full_record(run_id="r1"))
    (mine,) = w.flush()
    assert mine.name == "part-r1-00001.parquet"
    assert len(list(iter_dataset_files(tmp_path))) == 2
