"""The scenario generator writes the probe's schema, plants what its ground truth says, and has the
diurnal cycle and noise the detector must cope with."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from analysis.db import open_datasets
from probe import schema as S
from tests.support import scenario as sc


@pytest.fixture(scope="module")
def small() -> tuple[sc.Scenario, pa.Table]:
    start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    nets = [sc.Network("IR", "AS1001", "Example Telecom IR", ("pi", "laptop", "laptop"), 3),
            sc.Network("NL", "AS9001", "Example Cloud NL", ("pi",), 1, role="control")]
    events = [sc.PlantedEvent("shutdown", start + dt.timedelta(days=2, hours=10), start + dt.timedelta(days=2, hours=14),
                              "IR", ("AS1001",)),
              sc.PlantedEvent("service_blocking", start + dt.timedelta(days=3), None, "IR", ("AS1001",),
                              ("https://news-a.example/",), "dns.dns_nxdomain")]
    scn = sc.Scenario(start=start, days=5, networks=nets, events=events, seed=9)
    return scn, sc.generate_measurements(scn)


def test_table_is_the_probe_schema(small: tuple[sc.Scenario, pa.Table]) -> None:
    _, table = small
    assert table.schema.names == S.FULL_SCHEMA.names
    files_part = table.drop_columns(["date", "probe_cc"]).cast(S.MEASUREMENT_SCHEMA)
    for row in files_part.slice(0, 200).to_pylist():
        row["probe_cc"] = "IR"
        S.validate(S.row_to_record(row))  # every failure string in the closed set, UTC times
    ids = table.column("measurement_id").to_pylist()
    assert len(set(ids)) == len(ids)


def test_dataset_round_trips_through_parquet(small: tuple[sc.Scenario, pa.Table], tmp_path: Path) -> None:
    _, table = small
    paths = sc.write_dataset(table, tmp_path)
    assert {p.parent.name for p in paths} == {"probe_cc=IR", "probe_cc=NL"}
    con = open_datasets([tmp_path])
    assert con.sql("SELECT count(*) FROM measurements").fetchall() == [(table.num_rows,)]
    con.close()


def test_planted_events_and_diurnal_volume(small: tuple[sc.Scenario, pa.Table]) -> None:
    scn, table = small
    con = duckdb.connect()
    con.register("m", table)
    q = """SELECT hour(measurement_start_time AT TIME ZONE 'UTC') AS h, count(*) AS n,
                  count(*) FILTER (WHERE len(dns) > 0 AND dns[1].failure = 'generic_timeout') AS dark
           FROM m WHERE role = 'probe' AND date = '2026-10-03' GROUP BY ALL ORDER BY h"""
    rows = {h: (n, dark) for h, n, dark in con.sql(q).fetchall()}
    for h in range(10, 14):  # the full shutdown: everything times out, fewer targets measured
        assert rows[h][1] == rows[h][0]
        assert rows[h][0] <= 3 * (len(scn.anchors) + scn.shutdown_targets_measured)
    assert rows[9][1] < rows[9][0] / 4 and rows[14][1] < rows[14][0] / 4
    # laptops sleep at night (local time UTC+3): fewer measurements at 01 UTC than at 12 UTC
    night = con.sql("SELECT count(*) FROM m WHERE role='probe' AND hour(measurement_start_time AT TIME ZONE 'UTC') = 1").fetchall()[0][0]
    day = con.sql("SELECT count(*) FROM m WHERE role='probe' AND hour(measurement_start_time AT TIME ZONE 'UTC') = 12").fetchall()[0][0]
    assert night < 0.6 * day
    # the new block: news-a answers NXDOMAIN from day 3 on, and never before
    blocked = con.sql("""SELECT date >= '2026-10-04', count(*) FILTER (WHERE dns[1].rcode = 'NXDOMAIN') , count(*)
                         FROM m WHERE role = 'probe' AND input = 'https://news-a.example/' GROUP BY ALL ORDER BY 1""").fetchall()
    assert blocked[0][1] == 0 and blocked[1][1] == blocked[1][2] > 0
    # controls never see a block
    assert con.sql("SELECT count(*) FROM m WHERE role = 'control' AND len(dns) > 0 AND dns[1].rcode = 'NXDOMAIN'").fetchall() == [(0,)]
    con.close()


def test_noise_is_present_but_small(small: tuple[sc.Scenario, pa.Table]) -> None:
    _, table = small
    control = table.filter(pc.equal(table["role"], "control"))
    failed = sum(1 for t in control.column("tcp").to_pylist() if t and t[0]["failure"])
    assert 0 < failed < 0.05 * control.num_rows


def test_signals_for_the_benchmark() -> None:
    sig = sc.generate_signals(n_networks=10, days=9, n_shutdowns=3, seed=2)
    assert sig.table.num_rows == 10 * 9 * 24 and len(sig.events) == 3
    for p in sig.events:
        rows = sig.table.filter(pc.equal(sig.table["asn"], p.asns[0])).to_pylist()
        dark = [r for r in rows if p.active(r["hour"].replace(tzinfo=dt.UTC))]
        assert dark and all(r["anchor_ok"] == 0 for r in dark)


def test_random_scenarios_keep_events_apart() -> None:
    for seed in (1, 2, 3):
        scn = sc.random_scenario(seed)
        assert {p.kind for p in scn.planted} >= {"shutdown", "service_blocking", "site_outage"}
        by_net: dict[str, list[sc.PlantedEvent]] = {}
        for p in scn.planted:
            assert p.start >= scn.start + dt.timedelta(days=8)  # after a week of baseline
            for asn in p.asns:
                by_net.setdefault(asn, []).append(p)
        for events in by_net.values():  # no two events of one network overlap
            events.sort(key=lambda p: p.start)
            for first, second in zip(events, events[1:], strict=False):
                assert first.end is not None and first.end <= second.start
