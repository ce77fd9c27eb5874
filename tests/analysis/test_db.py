"""open_datasets: views over one or more datasets; corrupt and foreign Parquet files are skipped
with a warning naming them, and a dataset with nothing usable is one clear error."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.db import VIEWS, DatasetError, SkippedFileWarning, check_file, open_datasets
from probe.dataset import write_records
from probe.schema import (
    MEASUREMENT_SCHEMA,
    DnsAnswer,
    DnsQuery,
    HttpRequest,
    Measurement,
    TcpConnect,
    new_uuid7,
    records_to_table,
)

T0 = dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)


def record(cc: str = "IR", role: str = "probe", hops: int = 2) -> Measurement:
    return Measurement(
        measurement_id=new_uuid7(), run_id="r1", experiment="web_connectivity", experiment_version="0.1.0",
        input="http://site.example/", measurement_start_time=T0, probe_cc=cc, role=role,
        dns=[DnsQuery(0.0, 0.1, None, "system", "system", "A", "site.example",
                      answers=[DnsAnswer("A", "93.184.216.34"), DnsAnswer("A", "93.184.216.35")])],
        tcp=[TcpConnect(0.1, 0.2, None, "93.184.216.34", 80)],
        http=[HttpRequest(0.2, 0.3, None, f"http://site.example/{i}", status_code=200 if i == hops - 1 else 301)
              for i in range(hops)],
    )


def dataset(tmp_path: Path, *records: Measurement) -> Path:
    root = tmp_path / "ds"
    write_records(root, "r1", list(records) or [record()])
    return root


def count(con: object, view: str) -> int:
    return con.sql(f"SELECT count(*) FROM {view}").fetchall()[0][0]  # type: ignore[attr-defined]


def test_views_over_two_datasets(tmp_path: Path) -> None:
    a = dataset(tmp_path / "a", record("IR"), record("IR", role="control"))
    b = dataset(tmp_path / "b", record("RU"))
    con = open_datasets([a, b])
    assert count(con, "measurements") == 3
    assert count(con, "probe_measurements") == 2 and count(con, "control_measurements") == 1
    assert con.sql("SELECT DISTINCT probe_cc FROM measurements ORDER BY 1").fetchall() == [("IR",), ("RU",)]
    assert con.sql("SELECT DISTINCT date FROM measurements").fetchall() == [("2026-11-01",)]
    assert count(con, "dns_answers") == 6 and count(con, "dns_queries") == 3
    assert count(con, "tcp_connects") == 3 and count(con, "tls_handshakes") == 0 and count(con, "vpn_handshakes") == 0
    hops = con.sql("SELECT hop_index, url, status_code FROM http_requests ORDER BY measurement_id, hop_index").fetchall()
    assert hops[:2] == [(1, "http://site.example/0", 301), (2, "http://site.example/1", 200)]
    for view in VIEWS:
        con.sql(f"SELECT * FROM {view} LIMIT 1").to_arrow_table()


def test_plain_directory_of_parquet_files(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    pq.write_table(records_to_table([record(), record()]), flat / "some.parquet")
    con = open_datasets([flat])
    assert count(con, "measurements") == 2
    assert con.sql("SELECT DISTINCT date FROM measurements").fetchall() == [("2026-11-01",)]


def test_corrupt_and_foreign_files_are_skipped_with_a_warning(tmp_path: Path) -> None:
    root = dataset(tmp_path)
    part = next((root / "measurements").rglob("*.parquet")).parent
    (part / "corrupt.parquet").write_bytes(b"PAR1 this is not a parquet file")
    pq.write_table(pa.table({"name": ["x"], "value": [1]}), part / "foreign.parquet")
    bad_type = records_to_table([record()]).set_column(
        MEASUREMENT_SCHEMA.get_field_index("measurement_start_time"), "measurement_start_time", pa.array(["yesterday"]))
    pq.write_table(bad_type, part / "wrongtype.parquet")
    with pytest.warns(SkippedFileWarning) as caught:
        con = open_datasets([root])
    messages = " | ".join(str(w.message) for w in caught)
    for name in ("corrupt.parquet", "foreign.parquet", "wrongtype.parquet"):
        assert name in messages
    assert "missing columns" in messages and "measurement_start_time" in messages
    assert count(con, "measurements") == 1


def test_truncated_file_is_skipped(tmp_path: Path) -> None:
    root = dataset(tmp_path, record(), record())
    good = next((root / "measurements").rglob("*.parquet"))
    data = good.read_bytes()
    (good.parent / "truncated.parquet").write_bytes(data[: len(data) // 2])
    assert check_file(good.parent / "truncated.parquet") is not None
    with pytest.warns(SkippedFileWarning, match="truncated.parquet"):
        con = open_datasets([root])
    assert count(con, "measurements") == 2


def test_nothing_valid_is_one_clear_error(tmp_path: Path) -> None:
    d = tmp_path / "bad" / "measurements" / "date=2026-11-01" / "probe_cc=IR"
    d.mkdir(parents=True)
    (d / "x.parquet").write_bytes(b"garbage")
    with pytest.warns(SkippedFileWarning), pytest.raises(DatasetError, match="no valid Vantage Parquet file.*x.parquet"):
        open_datasets([tmp_path / "bad"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no Parquet files"):
        open_datasets([tmp_path / "empty"])
    with pytest.raises(DatasetError, match="no such dataset directory"):
        open_datasets([tmp_path / "missing"])
    with pytest.raises(DatasetError):
        open_datasets([])


def test_writes_in_flight_are_ignored(tmp_path: Path) -> None:
    root = dataset(tmp_path)
    part = next((root / "measurements").rglob("*.parquet")).parent
    (part / ".part-r1-00009.parquet.123.tmp").write_bytes(b"half")
    (part / ".hidden.parquet").write_bytes(b"half")
    con = open_datasets([root])
    assert count(con, "measurements") == 1


def test_file_of_an_older_schema_without_some_columns_is_skipped(tmp_path: Path) -> None:
    root = dataset(tmp_path, record(), record())
    part = next((root / "measurements").rglob("*.parquet")).parent
    pq.write_table(records_to_table([record()]).drop_columns(["vpn", "control_for"]), part / "old.parquet")
    with pytest.warns(SkippedFileWarning, match=r"old.parquet.*missing columns: control_for, vpn"):
        con = open_datasets([root])
    assert count(con, "measurements") == 2


def test_the_same_dataset_twice_counts_once(tmp_path: Path) -> None:
    root = dataset(tmp_path, record(), record())
    con = open_datasets([root, root, root / "measurements"])
    assert count(con, "measurements") == 2
