"""Shutdown detection on generated scenarios: planted shutdowns found, dated and classified; no
false shutdowns; new blocks found as blocking; the faulty probe found as a probe fault."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from rich.table import Table

from analysis.events import Event, network_spans
from analysis.shutdown import (
    Detection,
    DetectorConfig,
    detect,
    detect_from_signals,
    find_events,
    render_events,
)
from tests.support import scenario as sc

HOUR = dt.timedelta(hours=1)


# The second scenario (another seed) is slow: generating and detecting four weeks of measurements
# takes ~8 s a seed; the quick run checks one, CI both.
@pytest.fixture(scope="module", params=[7, pytest.param(1234, marks=pytest.mark.slow)], ids=lambda s: f"seed{s}")
def detected(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[sc.Scenario, Detection]:
    scn = sc.default_scenario(seed=request.param)
    root = tmp_path_factory.mktemp(f"scenario{request.param}")
    sc.write_dataset(sc.generate_measurements(scn), root)
    detection = find_events([root])  # through Parquet files, as `vantage events` reads them
    _print(scn, detection)
    return scn, detection


def _close(a: dt.datetime | None, b: dt.datetime | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= HOUR


def _matches(p: sc.PlantedEvent, e: Event) -> bool:
    if p.kind in ("site_outage",):
        return bool(set(p.inputs) & set(e.inputs)) and _close(p.start, e.start) and _close(p.end, e.end)
    return (p.cc in e.regions and set(p.asns) <= set(e.networks) and _close(p.start, e.start)
            and _close(p.end, e.end) and set(p.inputs) <= set(e.inputs))


def _print(scn: sc.Scenario, d: Detection) -> None:
    console = Console(width=220, force_terminal=False)
    console.print(render_events(d.events, title=f"Detected events (seed {scn.seed})"))
    table = Table(title="Planted vs found")
    for col in ("planted", "kind", "start", "end", "found as", "found start", "found end"):
        table.add_column(col)
    for p in scn.planted:
        hit = next((e for e in d.events if _matches(p, e)), None)
        table.add_row(p.label, p.kind, f"{p.start:%m-%d %H:%M}", f"{p.end:%m-%d %H:%M}" if p.end else "ongoing",
                      hit.kind if hit else "MISSED", f"{hit.start:%m-%d %H:%M}" if hit else "",
                      (f"{hit.end:%m-%d %H:%M}" if hit.end else "ongoing") if hit else "")
    console.print(table)


@pytest.mark.slow  # a week of synthetic measurements per seed: ~10 s
def test_every_planted_shutdown_found_dated_and_classified(detected: tuple[sc.Scenario, Detection]) -> None:
    scn, d = detected
    planted = [p for p in scn.planted if p.kind == "shutdown"]
    assert len(planted) == 4  # full + partial, national + one-ASN
    for p in planted:
        hits = [e for e in d.events if _matches(p, e)]
        assert hits, f"planted {p.label} ({p.start:%m-%d %H:%M}..{p.end:%m-%d %H:%M}) not found"
        assert all(e.kind == "shutdown" for e in hits), (p.label, [e.kind for e in hits])
        assert sorted(hits[0].networks) == sorted(p.asns) and hits[0].regions == [p.cc]


def test_no_false_shutdown(detected: tuple[sc.Scenario, Detection]) -> None:
    scn, d = detected
    planted = [p for p in scn.planted if p.kind == "shutdown"]
    for e in d.of_kind("shutdown"):
        assert any(_matches(p, e) for p in planted), f"false shutdown {e.start} {e.networks} {e.reason}"
    # the weeks without a planted shutdown (1 and 3) hold no shutdown at all
    for week in (0, 2):
        lo, hi = scn.start + dt.timedelta(days=7 * week), scn.start + dt.timedelta(days=7 * (week + 1))
        assert not [e for e in d.of_kind("shutdown") if e.overlaps(lo, hi)], f"shutdown in week {week + 1}"


def test_new_blocks_are_blocking_events_with_start(detected: tuple[sc.Scenario, Detection]) -> None:
    scn, d = detected
    blocks = [p for p in scn.planted if p.kind == "service_blocking"]
    assert blocks
    for p in blocks:
        hits = [e for e in d.events if _matches(p, e)]
        assert hits, f"new block {p.label} not found"
        assert all(e.kind == "service_blocking" for e in hits)
        assert p.method in hits[0].methods
        # and it is no shutdown anywhere in its networks
        assert not [e for e in d.of_kind("shutdown") if e.overlaps(p.start, p.end) and set(e.networks) & set(p.asns)]
    # steady blocks (in place before the data starts) are not new events
    steady = {i for p in scn.events if p.kind == "steady_block" for i in p.inputs}
    assert not [e for e in d.of_kind("service_blocking") if set(e.inputs) & steady]


def test_faulty_probe_is_a_probe_fault(detected: tuple[sc.Scenario, Detection]) -> None:
    scn, d = detected
    (fault,) = [p for p in scn.planted if p.kind == "probe_fault"]
    hits = [e for e in d.events if e.overlaps(fault.start, fault.end) and set(e.networks) == set(fault.asns)
            and not e.inputs]
    assert hits and all(e.kind == "probe_fault" for e in hits), [(e.kind, e.reason) for e in hits]
    assert _close(hits[0].start, fault.start)


def test_site_outage_is_not_blocking(detected: tuple[sc.Scenario, Detection]) -> None:
    scn, d = detected
    (outage,) = [p for p in scn.planted if p.kind == "site_outage"]
    hits = [e for e in d.events if _matches(outage, e)]
    assert hits and hits[0].kind == "site_outage"
    assert len(hits[0].regions) == 3  # seen from every country, as one event
    assert not [e for e in d.of_kind("service_blocking") if set(outage.inputs) & set(e.inputs)]


def test_nothing_but_planted_events(detected: tuple[sc.Scenario, Detection]) -> None:
    scn, d = detected
    unexplained = [e for e in d.events if not any(_matches(p, e) or (p.kind == "probe_fault" and e.kind == p.kind)
                                                  for p in scn.planted)]
    assert not unexplained, [(e.kind, e.start, e.networks, e.inputs, e.reason) for e in unexplained]


def test_fault_tied_to_software_version_on_a_lone_probe(tmp_path: Path) -> None:
    # One vantage point only: nothing to compare it with in its network, but its failures start
    # with a software version that network never ran before.
    start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    fault = sc.PlantedEvent("probe_fault", start + dt.timedelta(days=9, hours=5), start + dt.timedelta(days=9, hours=11),
                            "MM", ("AS2002",), vantage=0, software_version="0.2.0.dev1", label="bad upgrade")
    shut = sc.PlantedEvent("shutdown", start + dt.timedelta(days=10, hours=5), start + dt.timedelta(days=10, hours=9),
                           "MM", ("AS2002",), label="real shutdown")
    nets = [sc.Network("MM", "AS2002", "Example Mobile MM", ("pi",), 6),
            sc.Network("NL", "AS9001", "Example Cloud NL", ("pi",), 1, role="control")]
    scn = sc.Scenario(start=start, days=12, networks=nets, events=[fault, shut], seed=3)
    con = duckdb.connect()
    con.register("measurements", sc.generate_measurements(scn))
    d = detect(con)
    Console(width=220).print(render_events(d.events, title="Lone probe: bad upgrade, then a real shutdown"))
    kinds = {e.kind: e for e in d.events}
    assert kinds["probe_fault"].start == fault.start and "0.2.0.dev1" in kinds["probe_fault"].reason
    assert kinds["shutdown"].start == shut.start and kinds["shutdown"].end == shut.end
    con.close()


def test_thresholds_are_configurable() -> None:
    sig = sc.generate_signals(n_networks=12, days=12, n_shutdowns=4, seed=5)
    con = duckdb.connect()
    default = detect_from_signals(con, sig.table)
    strict = detect_from_signals(con, sig.table, DetectorConfig(warning=0.2, critical=0.1))
    levels = default.hourly.column("level").to_numpy()
    strict_levels = strict.hourly.column("level").to_numpy()
    assert (strict_levels <= levels).all() and strict_levels.sum() < levels.sum()
    for p in sig.events:  # signal-only mode still finds and dates each planted shutdown (per network)
        spans = [network_spans(e).get(p.asns[0]) for e in default.events if e.kind == "shutdown"]
        assert any(sp and _close(sp[0], p.start) and _close(sp[1], p.end) for sp in spans), p
    con.close()


def test_events_parquet_roundtrip(detected: tuple[sc.Scenario, Detection], tmp_path: Path) -> None:
    _, d = detected
    path = tmp_path / "events.parquet"
    pq.write_table(d.table(), path)
    back = pq.read_table(path)
    assert back.num_rows == len(d.events)
    assert set(back.column("kind").to_pylist()) <= {"shutdown", "service_blocking", "site_outage", "probe_fault",
                                                      "unclassified"}
    assert back.schema.field("start").type.tz == "UTC"


def test_shutdown_without_anchors(tmp_path: Path) -> None:
    # OONI imports and old probes have no anchors: a critical fall of every target still
    # dates a shutdown (with less confidence), and a blocked target alone is still blocking.
    start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    shut = sc.PlantedEvent("shutdown", start + dt.timedelta(days=9, hours=3), start + dt.timedelta(days=9, hours=9),
                           "MM", ("AS2001",), label="dark")
    block = sc.PlantedEvent("service_blocking", start + dt.timedelta(days=10, hours=12), None, "MM", ("AS2001",),
                            ("https://news-a.example/",), "dns.dns_nxdomain")
    nets = [sc.Network("MM", "AS2001", "Example Telecom MM", ("pi", "pi"), 6),
            sc.Network("NL", "AS9001", "Example Cloud NL", ("pi",), 1, role="control")]
    scn = sc.Scenario(start=start, days=12, networks=nets, events=[shut, block], anchors=(), seed=4)
    con = duckdb.connect()
    con.register("measurements", sc.generate_measurements(scn))
    d = detect(con)
    Console(width=220).print(render_events(d.events, title="No anchors"))
    (s,) = d.of_kind("shutdown")
    assert (s.start, s.end) == (shut.start, shut.end) and "no anchors" in s.reason and s.confidence < 0.9
    (b,) = d.of_kind("service_blocking")
    assert b.start == block.start and b.inputs == list(block.inputs)
    assert len(d.events) == 2
    con.close()


@pytest.mark.slow  # random topologies: ~4 s
def test_random_topology_shutdowns() -> None:
    # Another topology and random placement (benchmarks/shutdown_accuracy.py runs many more).
    scn = sc.random_scenario(102)
    con = duckdb.connect()
    con.register("measurements", sc.generate_measurements(scn))
    d = detect(con)
    con.close()
    planted = [p for p in scn.planted if p.kind == "shutdown"]
    assert planted
    for p in planted:
        spans = [network_spans(e) for e in d.of_kind("shutdown")]
        assert any(all(a in sp and _close(sp[a][0], p.start) and _close(sp[a][1], p.end) for a in p.asns)
                   for sp in spans), p.label
    for e in d.of_kind("shutdown"):
        assert any(e.overlaps(p.start, p.end) and set(p.asns) & set(e.networks) for p in planted), e
