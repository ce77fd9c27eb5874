"""National shutdowns in OONI-like data (issue 12 item 4): no anchors (OONI measures none), and
in a shutdown the volume falls to a fifth and every measurement fails. A shutdown of every
network of a country is ONE national event listing its networks; a four-hour shutdown of one
network is a shutdown. Traps: one blocked site, a site down everywhere, a probe gone quiet."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest
from rich.console import Console

from analysis.events import Event
from analysis.shutdown import Detection, detect, render_events
from tests.support import scenario as sc

UTC = dt.UTC
START = dt.datetime(2026, 10, 1, tzinfo=UTC)
MM = ("AS2001", "AS2002", "AS2003")
NEWS_A = "https://news-a.example/"
SHOP_A = "https://shop-a.example/"


def at(day: int, hour: int) -> dt.datetime:
    return START + dt.timedelta(days=day, hours=hour)


NATIONAL = sc.PlantedEvent("shutdown", at(9, 3), at(9, 11), "MM", MM, label="MM national")
ONE_NET = sc.PlantedEvent("shutdown", at(10, 14), at(10, 18), "MM", ("AS2002",), label="MM AS2002 4 h")
BLOCK = sc.PlantedEvent("service_blocking", at(11, 20), at(12, 20), "IR", ("AS1001",), (NEWS_A,), "dns.dns_nxdomain",
                        label="one site blocked in one network")
OUTAGE = sc.PlantedEvent("site_outage", at(11, 10), at(11, 15), None, (), (SHOP_A,), "tcp.connection_refused",
                         label="shop-a down everywhere")
QUIET = sc.PlantedEvent("quiet", at(9, 14), at(10, 2), "IR", ("AS1002",), label="volunteer stopped measuring")


@pytest.fixture(scope="module", params=[5, 21], ids=lambda s: f"seed{s}")
def detected(request: pytest.FixtureRequest) -> Detection:
    nets = [sc.Network("MM", "AS2001", "Example Telecom MM", ("pi", "laptop"), 6),
            sc.Network("MM", "AS2002", "Example Mobile MM", ("pi",), 6),
            sc.Network("MM", "AS2003", "Example Fibre MM", ("pi", "pi"), 6),
            sc.Network("IR", "AS1001", "Example Telecom IR", ("pi", "laptop"), 3),
            sc.Network("IR", "AS1002", "Example Mobile IR", ("pi",), 3),
            sc.Network("NL", "AS9001", "Example Cloud NL", ("pi",), 1, role="control")]
    # OONI-like: no anchors; a dark run measures two targets of ten (volume falls to a fifth)
    scn = sc.Scenario(start=START, days=13, networks=nets, events=[NATIONAL, ONE_NET, BLOCK, OUTAGE, QUIET],
                      anchors=(), shutdown_targets_measured=2, seed=request.param)
    con = duckdb.connect()
    con.register("measurements", sc.generate_measurements(scn))
    d = detect(con)
    con.close()
    Console(width=220).print(render_events(d.events, title=f"OONI-like, no anchors (seed {request.param})"))
    return d


def overlapping(d: Detection, p: sc.PlantedEvent) -> list[Event]:
    return [e for e in d.events if e.overlaps(p.start, p.end)]


def test_national_shutdown_is_one_event_listing_its_networks(detected: Detection) -> None:
    hits = [e for e in overlapping(detected, NATIONAL) if e.country == "MM"]
    assert [e.kind for e in hits] == ["shutdown"], [(e.kind, e.networks, e.reason) for e in hits]
    (e,) = hits
    assert e.networks == list(MM) and e.regions == ["MM"]
    assert (e.scope, e.country_networks) == ("national", 3)
    assert e.reason.startswith("national: 3 of 3 networks of MM") and "no anchors" in e.reason
    assert abs(e.start - NATIONAL.start) <= dt.timedelta(hours=1) and abs(e.end - NATIONAL.end) <= dt.timedelta(hours=1)
    # no network of it reported as blocking in those hours
    assert not [x for x in overlapping(detected, NATIONAL) if x.kind == "service_blocking" and x.country == "MM"]


def test_short_shutdown_of_one_network_is_a_shutdown(detected: Detection) -> None:
    hits = [e for e in overlapping(detected, ONE_NET) if "AS2002" in e.networks]
    assert [(e.kind, e.networks, e.scope) for e in hits] == [("shutdown", ["AS2002"], "network")]
    assert (hits[0].start, hits[0].end) == (ONE_NET.start, ONE_NET.end)
    assert hits[0].rule == "shutdown.no_anchors"


def test_one_blocked_site_in_one_network_is_blocking(detected: Detection) -> None:
    hits = [e for e in overlapping(detected, BLOCK) if "AS1001" in e.networks]
    assert [(e.kind, e.inputs, e.scope) for e in hits] == [("service_blocking", [NEWS_A], "network")]
    assert hits[0].start == BLOCK.start and "dns.dns_nxdomain" in hits[0].methods
    assert not [e for e in overlapping(detected, BLOCK) if e.kind == "shutdown" and e.country == "IR"]


def test_site_down_everywhere_is_an_outage_not_a_national_shutdown(detected: Detection) -> None:
    hits = overlapping(detected, OUTAGE)
    outages = [e for e in hits if e.kind == "site_outage"]
    assert len(outages) == 1 and outages[0].inputs == [SHOP_A]
    assert outages[0].regions == ["IR", "MM"] and outages[0].scope == "international" and outages[0].country is None
    assert not [e for e in hits if e.kind in ("shutdown", "connectivity_lost", "service_blocking")]


def test_a_probe_gone_quiet_is_not_a_shutdown(detected: Detection) -> None:
    hits = [e for e in overlapping(detected, QUIET) if e.country == "IR"]
    assert not [e for e in hits if e.kind in ("shutdown", "connectivity_lost")], [(e.kind, e.reason) for e in hits]
    assert not [e for e in hits if e.scope == "national"]
    # at most the silence itself, named as such
    assert all(e.kind in ("probe_fault", "unclassified") and e.networks == ["AS1002"] for e in hits)


def test_nothing_else(detected: Detection) -> None:
    planted = (NATIONAL, ONE_NET, BLOCK, OUTAGE, QUIET)
    stray = [e for e in detected.events if not any(e.overlaps(p.start, p.end) for p in planted)]
    assert not stray, [(e.kind, e.start, e.networks, e.reason) for e in stray]
