"""Connectivity lost (issue 12 item 3): a probe whose network died is an event on its FIRST run,
with no history, from the verdicts' ``no_connectivity`` rows or (``--no-verdicts``) from the raw
signals; never blocking; and a failed measurement or a blocked list is not a lost network."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from analysis.shutdown import (
    Detection,
    detect,
    detect_from_signals,
    find_events,
    render_events,
    write_events,
)
from analysis.verdicts import VERDICT_SCHEMA
from tests.support import scenario as sc

UTC = dt.UTC
START = dt.datetime(2026, 11, 1, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
PROBE = sc.Network("IR", "AS1001", "Example Telecom IR", ("pi",), 3)
PROBE2 = sc.Network("IR", "AS1002", "Example Mobile IR", ("pi",), 3)
CONTROL = sc.Network("NL", "AS9001", "Example Cloud NL", ("pi",), 1, role="control")


def at(h: float) -> dt.datetime:
    return START + h * HOUR


def measurements(events: list[sc.PlantedEvent], hours: tuple[int, int], nets: tuple[sc.Network, ...] = (PROBE, CONTROL),
                 seed: int = 11) -> pa.Table:
    """Measurements of a first run: only hours [lo, hi) of a one-day scenario (no history)."""
    scn = sc.Scenario(start=START, days=1, networks=list(nets), events=events, seed=seed)
    table = sc.generate_measurements(scn)
    t = table["measurement_start_time"]
    table = table.filter(pc.and_(pc.greater_equal(t, pa.scalar(at(hours[0]), t.type)),
                                 pc.less(t, pa.scalar(at(hours[1]), t.type))))
    for net in nets:  # the builder's own check: every network measured in the window
        assert pc.sum(pc.equal(table["probe_asn"], net.asn)).as_py() > 0, net
    return table


def verdicts(table: pa.Table, status: Callable[[dict[str, Any]], str]) -> pa.Table:
    """A verdict table (VERDICT_SCHEMA) for the probe rows of ``table``, status chosen per row."""
    rows = []
    for r in table.filter(pc.equal(table["role"], "probe")).select(
            ["measurement_id", "run_id", "input", "experiment", "probe_cc", "probe_asn",
             "measurement_start_time"]).to_pylist():
        s = status(r)
        rows.append({**r, "status": s, "layer": None, "method": "connectivity.lost" if s == "no_connectivity" else None,
                     "confidence": 0.9, "confirmed": False, "fingerprint": None})
    return pa.Table.from_pylist(rows, schema=VERDICT_SCHEMA)


def run(table: pa.Table, verdict_table: pa.Table | None = None, title: str = "") -> Detection:
    con = duckdb.connect()
    con.register("measurements", table)
    try:
        d = detect(con, verdicts=verdict_table)
    finally:
        con.close()
    Console(width=220).print(render_events(d.events, title=title or "events"))
    return d


def dark(asns: tuple[str, ...] = ("AS1001",), start: float = 0, end: float = 24, cc: str = "IR") -> sc.PlantedEvent:
    return sc.PlantedEvent("shutdown", at(start), at(end), cc, asns, label="dark")


def test_dark_first_run_from_verdicts() -> None:
    table = measurements([dark()], (0, 2))
    v = verdicts(table, lambda r: "no_connectivity")
    d = run(table, v, "dark first run (verdicts)")
    (e,) = d.events
    assert (e.kind, e.rule, e.country, e.networks, e.scope) == ("connectivity_lost", "connectivity.lost", "IR",
                                                                ["AS1001"], "vantage_point")
    assert (e.start, e.end) == (at(0), at(2))
    ev = e.evidence
    assert ev["source"] == "verdicts" and ev["no_connectivity_verdicts"] == v.num_rows
    assert ev["anchors"]["failed"] == ev["anchors"]["total"] == 2 * len(sc.DEFAULT_ANCHORS)  # one run an hour
    assert ev["inputs"]["failed"] == ev["inputs"]["total"] > 0
    assert ev["controls"]["fine"] is True and ev["anchors_elsewhere"]["ok_rate"] == 1.0
    assert "shutdown or local fault" in e.reason and "controls elsewhere reached" in e.reason
    assert e.confidence == 0.8
    # the table row says the same
    row = d.table().to_pylist()[0]
    assert (row["kind"], row["country"], row["scope"], row["rule"]) == ("connectivity_lost", "IR", "vantage_point",
                                                                        "connectivity.lost")
    assert json.loads(row["evidence"])["controls"]["fine"] is True


def test_dark_first_run_without_verdicts() -> None:
    table = measurements([dark()], (0, 2))
    d = run(table, None, "dark first run (--no-verdicts)")
    (e,) = d.events
    assert (e.kind, e.networks, e.start, e.end) == ("connectivity_lost", ["AS1001"], at(0), at(2))
    assert e.evidence["source"] == "signals" and e.evidence["controls"]["fine"] is True
    assert e.evidence["top_failure"] == "dns.generic_timeout"


def test_verdicts_decide_when_given() -> None:
    # The verdict stage is the one judgement: a verdict table without no_connectivity rows (it
    # judged otherwise) gives no connectivity event, even over the same dark measurements.
    table = measurements([dark()], (0, 2))
    d = run(table, verdicts(table, lambda r: "probe_failure"), "verdicts say probe_failure")
    assert not [e for e in d.events if e.kind in ("connectivity_lost", "shutdown")]


def test_a_single_failed_measurement_is_no_event() -> None:
    # trap: one target failing once (one run, one hour) in an otherwise fine hour
    one = sc.PlantedEvent("service_blocking", at(1), at(2), "IR", ("AS1001",), ("https://news-a.example/",),
                          "tcp.generic_timeout")
    scn_table = measurements([one], (0, 3))
    failed = run(scn_table, None, "one failed measurement")
    assert failed.events == []
    # and with the verdict stage: fine rows, one blocked verdict
    ids = set(scn_table.filter(pc.equal(scn_table["input"], "https://news-a.example/"))["measurement_id"].to_pylist())
    assert run(scn_table, verdicts(scn_table, lambda r: "blocked" if r["measurement_id"] in ids else "ok")).events == []


def test_anchors_up_and_every_target_blocked_is_not_connectivity_loss() -> None:
    # trap: a censor blocking the whole list leaves the anchors reachable
    targets = tuple(u for u, _ in sc.DEFAULT_TARGETS)
    block = sc.PlantedEvent("service_blocking", at(0), at(24), "IR", ("AS1001",), targets, "dns.dns_nxdomain")
    d = run(measurements([block], (0, 2)), None, "every target blocked, anchors up")
    assert not [e for e in d.events if e.kind in ("connectivity_lost", "shutdown")]


def test_a_software_fault_is_not_connectivity_loss() -> None:
    # trap: every measurement failing inside the probe (unknown_failure) is no network failure
    fault = sc.PlantedEvent("probe_fault", at(0), at(24), "IR", ("AS1001",), vantage=0, software_version="0.2.0rc1")
    d = run(measurements([fault], (0, 2)), None, "software fault")
    assert not [e for e in d.events if e.kind in ("connectivity_lost", "shutdown")]


def test_dark_hours_apart_are_two_events_unless_only_silence_lies_between() -> None:
    two = [dark(start=0, end=2), dark(start=4, end=6)]  # hours 2-3 measured fine in between
    d = run(measurements(two, (0, 6)), None, "dark, fine, dark")
    assert [(e.kind, e.start, e.end) for e in d.events] == [("connectivity_lost", at(0), at(2)),
                                                            ("connectivity_lost", at(4), at(6))]
    quiet = [dark(start=0, end=2), sc.PlantedEvent("quiet", at(2), at(4), "IR", ("AS1001",)), dark(start=4, end=6)]
    d = run(measurements(quiet, (0, 6)), None, "dark, silent, dark")
    assert [(e.kind, e.start, e.end) for e in d.events] == [("connectivity_lost", at(0), at(6))]
    assert d.events[0].evidence["dark_hours"] == 4


def test_several_networks_dark_at_once_is_one_shutdown() -> None:
    table = measurements([dark(("AS1001", "AS1002"))], (0, 2), (PROBE, PROBE2, CONTROL))
    for vt in (None, verdicts(table, lambda r: "no_connectivity")):
        d = run(table, vt, "two networks dark")
        (e,) = d.events
        assert (e.kind, e.rule, e.networks, e.country) == ("shutdown", "shutdown.connectivity_several_networks",
                                                           ["AS1001", "AS1002"], "IR")
        assert (e.scope, e.country_networks) == ("national", 2) and e.reason.startswith("national: 2 of 2")


def test_one_network_dark_beside_a_fine_one_is_not_national() -> None:
    # trap for the above: the other network of the country measured fine
    d = run(measurements([dark(("AS1001",))], (0, 2), (PROBE, PROBE2, CONTROL)), None, "one of two dark")
    (e,) = d.events
    assert (e.kind, e.networks, e.scope, e.country_networks) == ("connectivity_lost", ["AS1001"], "vantage_point", 2)


def test_with_history_the_loss_is_a_shutdown_with_the_dark_hours_as_evidence() -> None:
    shut = sc.PlantedEvent("shutdown", START + dt.timedelta(days=9, hours=5), START + dt.timedelta(days=9, hours=9),
                           "IR", ("AS1001",))
    scn = sc.Scenario(start=START, days=11, networks=[PROBE, CONTROL], events=[shut], seed=3)
    con = duckdb.connect()
    con.register("measurements", sc.generate_measurements(scn))
    d = detect(con)
    con.close()
    (e,) = d.events
    assert (e.kind, e.start, e.end, e.scope) == ("shutdown", shut.start, shut.end, "network")
    (lost,) = e.evidence["connectivity_lost"]
    assert lost["dark_hours"] == 4 and lost["rule"] == "connectivity.lost"


def test_signals_only_dark_hour() -> None:
    counts = sc.generate_signals(n_networks=4, days=1, n_shutdowns=0, seed=3).table
    rows = counts.to_pylist()
    victim = rows[30]  # network 1, hour 6
    for r in rows:
        if (r["asn"], r["hour"]) == (victim["asn"], victim["hour"]):
            r["anchor_ok"] = r["target_ok"] = 0
    con = duckdb.connect()
    d = detect_from_signals(con, pa.Table.from_pylist(rows, schema=counts.schema))
    con.close()
    (e,) = d.events
    assert (e.kind, e.networks, e.evidence["dark_hours"]) == ("connectivity_lost", [victim["asn"]], 1)
    assert e.start == victim["hour"].replace(tzinfo=UTC)


@pytest.fixture()
def dark_dataset(tmp_path: Path) -> tuple[Path, pa.Table]:
    table = measurements([dark()], (0, 2))
    root = tmp_path / "ds"
    sc.write_dataset(table, root)
    return root, verdicts(table, lambda r: "no_connectivity")


def test_entry_points_take_an_already_computed_verdict_table(dark_dataset: tuple[Path, pa.Table],
                                                             tmp_path: Path) -> None:
    root, vt = dark_dataset
    d = find_events([root], verdicts=vt)
    assert [(e.kind, e.evidence["source"]) for e in d.events] == [("connectivity_lost", "verdicts")]
    out = tmp_path / "events.parquet"
    write_events([root], out, verdicts=vt)
    back = pq.read_table(out)
    assert {"country", "scope", "rule", "country_networks", "networks"} <= set(back.column_names)
    assert back.select(["kind", "country", "scope"]).to_pylist() == [
        {"kind": "connectivity_lost", "country": "IR", "scope": "vantage_point"}]
    # the older keyword arguments still work: raw reachability only
    old = write_events([root], tmp_path / "old.parquet", None, verdicts=False)
    assert [(e.kind, e.evidence["source"]) for e in old.events] == [("connectivity_lost", "signals")]
