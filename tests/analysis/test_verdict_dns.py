"""DNS consistency from all the evidence, on the class of case seen on real OONI data: a CDN or
geo-DNS site where the probe and the control get different addresses in the same network, TLS
validates on the probe's address and the page arrives. Each piece of evidence (the answers' own
ASN, an ASN database, a validated TLS handshake, a matching page) is shown to decide on its own,
and each is paired with the trap beside it (another network, TLS or the connection failing, a
bogon, a known blockpage address), which must stay DNS blocking.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_verdicts import PAGE, T0, assert_one_verdict_per_measurement, control_of, expect, judge, web

from analysis.db import open_datasets
from analysis.verdicts import compute_verdicts
from probe.dataset import write_records
from probe.schema import DnsAnswer, DnsQuery, Measurement, TcpConnect
from tests.support.paths import SHARED_DATA

URL = "https://video.example/"
CDN = "AS13335"
PROBE_IP = "104.16.1.9"  # the edge the probe's resolver picked
PROBE_IP_B = "104.17.8.20"  # the edge a public resolver picked for the probe (geo-DNS via ECS)
CONTROL_IP = "104.24.200.7"  # the control's edge, another /24 (another continent)
CENSOR_NET = "AS64496"


def second_resolver(p: Measurement, ip: str, *, asn: str | None = None, tcp_failure: str | None = "generic_timeout") -> Measurement:
    """The configured resolver's answer (another edge of the CDN) and the connect to it."""
    host = "video.example"
    p.dns.append(DnsQuery(t0=0.0, t=0.05, failure=None, resolver="8.8.8.8:53", engine="udp", query_type="A",
                          hostname=host, rcode="NOERROR", answers=[DnsAnswer("A", ip, 300, asn=asn)]))
    p.tcp.append(TcpConnect(t0=0.1, t=10.1, failure=tcp_failure, ip=ip, port=443 if p.input.startswith("https") else 80))
    return p


def asn_database(tmp_path: Path, nets: dict[str, int]) -> Path:
    netaddr = pytest.importorskip("netaddr", reason="netaddr (mmdb-writer's dependency) is not installed")
    mmdb_writer = pytest.importorskip("mmdb_writer", reason="mmdb-writer (the test extra) is not installed")
    writer = mmdb_writer.MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    for net, asn in nets.items():
        writer.insert_network(netaddr.IPSet([net]), {"autonomous_system_number": asn,
                                                     "autonomous_system_organization": f"AS{asn} org"})
    path = tmp_path / "asn.mmdb"
    writer.to_db_file(str(path))
    return path


# --------------------------------------------------------------------------- must be ok


def test_cdn_site_whole_class_is_ok(tmp_path: Path) -> None:
    # Different addresses in the same ASN (recorded with the answers), TLS validates on the
    # probe's address, HTTPS 200 with the expected page.
    p = web(url=URL, ips=[PROBE_IP], asns={PROBE_IP: CDN})
    c = control_of(p, ips=[CONTROL_IP], asns={CONTROL_IP: CDN})
    expect(judge(tmp_path, p, c), "ok", None, "ok.https_validated")


def test_asn_known_only_from_the_answers(tmp_path: Path) -> None:
    # The system resolver's edge validates and serves the page; the public resolver's edge (same
    # CDN, recorded by OONI with the answer) timed out. Only the ASN vouches for that answer.
    p = second_resolver(web(url=URL, ips=[PROBE_IP], asns={PROBE_IP: CDN}), PROBE_IP_B, asn=CDN)
    c = control_of(p, ips=[CONTROL_IP], asns={CONTROL_IP: CDN})
    expect(judge(tmp_path / "same", p, c), "ok", None, "ok.https_validated")
    # Trap: the same shape, but the public resolver's answer is in another network.
    p = second_resolver(web(url=URL, ips=[PROBE_IP], asns={PROBE_IP: CDN}), PROBE_IP_B, asn=CENSOR_NET)
    c = control_of(p, ips=[CONTROL_IP], asns={CONTROL_IP: CDN})
    expect(judge(tmp_path / "other", p, c), "blocked", "dns", "dns.inconsistent")


def test_ooni_style_asn_numbers_are_understood(tmp_path: Path) -> None:
    # OONI writes the ASN as a bare number; the import may keep it so.
    p = second_resolver(web(url=URL, ips=[PROBE_IP], asns={PROBE_IP: "13335"}), PROBE_IP_B, asn="13335")
    c = control_of(p, ips=[CONTROL_IP], asns={CONTROL_IP: "AS13335"})
    expect(judge(tmp_path, p, c), "ok", None, "ok.https_validated")


def test_asn_known_only_from_a_database(tmp_path: Path) -> None:
    db = asn_database(tmp_path, {"104.16.0.0/12": 13335, "198.51.0.0/16": 64496})
    p = second_resolver(web(url=URL, ips=[PROBE_IP]), PROBE_IP_B)
    c = control_of(p, ips=[CONTROL_IP])
    # Without the database nothing vouches for the public resolver's answer.
    expect(judge(tmp_path / "nodb", p, c), "blocked", "dns", "dns.inconsistent")
    expect(judge(tmp_path / "db", p, c, asn_db=db), "ok", None, "ok.https_validated")


def test_the_answers_own_asn_comes_before_the_database(tmp_path: Path) -> None:
    # The database (stale) says the edge is elsewhere; the measuring side knew better.
    db = asn_database(tmp_path, {"104.17.0.0/16": 64496, "104.24.0.0/16": 13335})
    p = second_resolver(web(url=URL, ips=[PROBE_IP]), PROBE_IP_B, asn=CDN)
    c = control_of(p, ips=[CONTROL_IP])
    expect(judge(tmp_path, p, c, asn_db=db), "ok", None, "ok.https_validated")


def test_no_asn_but_tls_validated(tmp_path: Path) -> None:
    # Two edges from the system resolver, one times out; TLS validated on the other.
    p = web(url=URL, ips=[PROBE_IP, PROBE_IP_B], tcp_failure={PROBE_IP_B: "generic_timeout"})
    c = control_of(p, ips=[CONTROL_IP])
    expect(judge(tmp_path, p, c), "ok", None, "ok.https_validated")


def test_no_asn_no_tls_but_the_page_matches(tmp_path: Path) -> None:
    # Cleartext HTTP: the page fetched from the probe's edge is the control's page.
    p = web(url="http://video.example/", ips=[PROBE_IP, PROBE_IP_B], tcp_failure={PROBE_IP_B: "generic_timeout"})
    c = control_of(p, ips=[CONTROL_IP])
    expect(judge(tmp_path, p, c), "ok", None, "ok.http_matches")
    # Trap: the page fetched from the odd address is another page.
    p = web(url="http://video.example/", ips=[PROBE_IP, PROBE_IP_B], tcp_failure={PROBE_IP_B: "generic_timeout"},
            body="<html><title>Notice</title>short</html>", title="Notice", headers=[("X-Filter", "1")])
    c = control_of(p, ips=[CONTROL_IP], headers=[("X-Origin", "a")])
    expect(judge(tmp_path / "trap", p, c), "blocked", "dns", "dns.inconsistent")


def test_a_matching_page_vouches_only_for_the_address_it_came_from(tmp_path: Path) -> None:
    # The system resolver lies (its address times out); the page arrives through the honest
    # public resolver's address. Users of the system resolver are blocked: DNS.
    p = web(url="http://video.example/", ips=[CONTROL_IP])
    p.dns.insert(0, DnsQuery(t0=0.0, t=0.01, failure=None, resolver="system", engine="system", query_type="A",
                             hostname="video.example", rcode="NOERROR", answers=[DnsAnswer("A", "198.51.7.7")]))
    p.tcp.append(TcpConnect(t0=0.1, t=10.1, failure="generic_timeout", ip="198.51.7.7", port=80))
    p.dns[1].engine, p.dns[1].resolver = "udp", "8.8.8.8:53"
    c = control_of(p, ips=[CONTROL_IP])
    expect(judge(tmp_path, p, c), "blocked", "dns", "dns.inconsistent")


def test_same_24_is_consistent_a_different_one_is_not_evidence(tmp_path: Path) -> None:
    # Another address of the control's /24 (a load-balancer pool) whose connect failed: TCP.
    p = web(ips=["104.24.200.99"], tcp_failure="connection_reset")
    expect(judge(tmp_path / "pool", p, control_of(p, ips=[CONTROL_IP])), "blocked", "tcp_ip", "tcp.reset")
    # Another /24 of the same CDN, the page matches: geo-DNS, ok (a different /24 proves nothing).
    p = web(ips=["104.16.77.1"], body=PAGE)
    expect(judge(tmp_path / "geo", p, control_of(p, ips=[CONTROL_IP])), "ok", None, "ok.http_matches")


# --------------------------------------------------------------------------- traps: DNS blocking


def test_other_network_and_tls_fails_is_dns(tmp_path: Path) -> None:
    # The censor's address answers TLS with its own certificate (or resets): no vouching.
    for failure in ("ssl_invalid_hostname", "connection_reset"):
        p = web(url=URL, ips=["198.51.7.7"], asns={"198.51.7.7": CENSOR_NET}, tls_failure=failure)
        c = control_of(p, ips=[CONTROL_IP], asns={CONTROL_IP: CDN})
        expect(judge(tmp_path / failure, p, c), "blocked", "dns", "dns.inconsistent")


def test_other_network_and_connection_fails_is_dns(tmp_path: Path) -> None:
    p = web(url=URL, ips=["198.51.7.7"], asns={"198.51.7.7": CENSOR_NET}, tcp_failure="generic_timeout")
    c = control_of(p, ips=[CONTROL_IP], asns={CONTROL_IP: CDN})
    expect(judge(tmp_path, p, c), "blocked", "dns", "dns.inconsistent")


def test_bogon_answer_even_with_an_asn_is_dns(tmp_path: Path) -> None:
    p = web(url=URL, ips=["10.10.34.35"], asns={"10.10.34.35": CDN}, tcp_failure="connection_refused")
    c = control_of(p, ips=[CONTROL_IP], asns={CONTROL_IP: CDN})
    expect(judge(tmp_path, p, c), "blocked", "dns", "dns.bogon")


def test_known_blockpage_address_is_confirmed(tmp_path: Path) -> None:
    shared = SHARED_DATA / "fingerprints"
    p = web(url=URL, ips=["8.7.198.45"], asns={"8.7.198.45": CENSOR_NET}, tls_failure="connection_reset")
    c = control_of(p, ips=[CONTROL_IP], asns={CONTROL_IP: CDN})
    v = judge(tmp_path, p, c, fingerprints=[shared / "fingerprints_dns.csv"])
    expect(v, "blocked", "dns", "dns.blockpage_ip")
    assert v["confirmed"] is True and v["fingerprint"] == "ooni.cn_0"


def _without_answer_asn(t: pa.DataType) -> pa.DataType:
    """The same Arrow type with DNS answers as they were before DnsAnswer.asn existed."""
    if pa.types.is_list(t):
        return pa.list_(_without_answer_asn(t.value_type))
    if pa.types.is_struct(t):
        names = {t.field(i).name for i in range(t.num_fields)}
        return pa.struct([pa.field(f.name, _without_answer_asn(f.type)) for f in (t.field(i) for i in range(t.num_fields))
                          if not ({"answer_type", "value"} <= names and f.name in ("asn", "as_org_name"))])
    return t


def test_answers_written_before_the_asn_field_still_work(tmp_path: Path) -> None:
    # Old datasets: the DNS answers struct has no asn field in any file.
    p = second_resolver(web(url=URL, ips=[PROBE_IP], at=T0), PROBE_IP_B)
    c = control_of(p, ips=[CONTROL_IP])
    root = tmp_path / "ds"
    write_records(root, "run-old", [p, c])
    for f in root.rglob("*.parquet"):
        t = pq.read_table(f)
        old = pa.schema([pa.field(x.name, _without_answer_asn(x.type)) for x in t.schema])
        assert old != t.schema
        rows = t.to_pylist()
        for r in rows:
            for q in r["dns"]:
                for a in q["answers"] + [a for lr in q["late_responses"] for a in lr["answers"]]:
                    del a["asn"], a["as_org_name"]
        pq.write_table(pa.Table.from_pylist(rows, schema=old), f)
    con = open_datasets([root])
    try:
        table = compute_verdicts(con)
        assert_one_verdict_per_measurement(con, table)
        out = table.to_pylist()
    finally:
        con.close()
    assert [(v["status"], v["method"]) for v in out] == [("blocked", "dns.inconsistent")]
