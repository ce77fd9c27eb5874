"""Every verdict rule on small hand-built measurements (written with probe.dataset), including the
false-positive traps: CDN answers that validate over TLS, the control down too, NXDOMAIN
everywhere, slow but working, a probe without IPv6."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from analysis.db import open_datasets
from analysis.rules import RULES_BY_ID
from analysis.verdicts import STATUSES, VERDICT_SCHEMA, BogonChecker, VerdictError, compute_verdicts, host_of
from probe.dataset import write_records
from probe.schema import (
    DnsAnswer,
    DnsLateResponse,
    DnsQuery,
    HttpHeader,
    HttpRequest,
    Measurement,
    TcpConnect,
    TlsHandshake,
    VpnHandshake,
    VpnPacket,
    new_uuid7,
)
from tests.support.paths import SHARED_DATA

T0 = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
SITE_IP = "93.184.216.34"
TITLE = "Example Domain Welcome Page"
PAGE = f"<html><head><title>{TITLE}</title></head><body>{'lorem ipsum ' * 200}</body></html>"
BLOCKPAGE = "<html><head><title>Blocked</title></head><body><!-- vantage-lab-blockpage -->Denied</body></html>"


def web(
    role: str = "probe",
    *,
    url: str = "http://site.example/",
    ips: Sequence[str] = (SITE_IP,),
    asns: dict[str, str] | None = None,
    dns_failure: str | None = None,
    late: Sequence[str] | None = None,
    tcp_failure: str | dict[str, str] | None = None,
    tls_failure: str | None = None,
    tls_valid: bool = True,
    status: int = 200,
    body: str = PAGE,
    title: str | None = TITLE,
    headers: Sequence[tuple[str, str]] = (("Server", "nginx"), ("Content-Type", "text/html")),
    http_failure: str | None = None,
    http: bool = True,
    slow: float = 0.0,
    at: dt.datetime = T0,
    failure: str | None = None,
    control_for: str | None = None,
) -> Measurement:
    """A web_connectivity measurement as the probe (or a control) would write it."""
    host = host_of(url) or ""
    https = url.startswith("https")
    port = 443 if https else 80
    m = Measurement(
        measurement_id=new_uuid7(), run_id=f"run-{role}", experiment="web_connectivity",
        experiment_version="0.1.0", input=url, measurement_start_time=at, role=role, probe_cc="IR",
        probe_asn="AS197207" if role == "probe" else "AS64500", failure=failure, control_for=control_for,
    )
    if failure:
        return m
    q = DnsQuery(t0=0.0, t=0.05 + slow, failure=dns_failure, resolver="system", engine="system", query_type="A",
                 hostname=host, rcode="NXDOMAIN" if dns_failure == "dns_nxdomain" else "NOERROR")
    if not dns_failure:
        q.answers = [DnsAnswer("A", ip, 300, asn=(asns or {}).get(ip)) for ip in ips]
    if late is not None:
        q.late_responses = [DnsLateResponse(t=0.07, rcode="NOERROR", answers=[DnsAnswer("A", ip) for ip in late])]
    m.dns = [q]
    if dns_failure:
        return m
    for ip in ips:
        f = tcp_failure.get(ip) if isinstance(tcp_failure, dict) else tcp_failure
        m.tcp.append(TcpConnect(t0=0.1, t=0.2 + slow, failure=f, ip=ip, port=port))
    connected = [c.ip for c in m.tcp if c.failure is None]
    if not connected:
        return m
    if https:
        for ip in connected:
            m.tls.append(TlsHandshake(t0=0.2, t=0.3 + slow, failure=tls_failure, ip=ip, port=port, sni=host,
                                      tls_version=None if tls_failure else "TLSv1.3",
                                      cert_valid=None if tls_failure else tls_valid))
        if tls_failure:
            return m
    if http:
        hop = HttpRequest(t0=0.3, t=0.6 + slow, failure=http_failure, url=url, ip=connected[0])
        if not http_failure:
            hop.status_code = status
            hop.headers = [HttpHeader(n, v) for n, v in headers]
            hop.body_length = len(body.encode())
            hop.body_sha256 = hashlib.sha256(body.encode()).hexdigest()
            hop.body_sample = body
            hop.title = title
        m.http = [hop]
    return m


def control_of(probe: Measurement, **kw: Any) -> Measurement:
    """The control helper's measurement for a probe measurement (linked by control_for)."""
    kw.setdefault("url", probe.input)
    return web("control", control_for=probe.measurement_id, at=probe.measurement_start_time, **kw)


# Fingerprints of the test blockpage and sinkhole (OONI blocking-fingerprints format), loaded
# next to the project's own for every test.
TEST_FINGERPRINTS = (
    "name,scope,other_names,location_found,pattern_type,pattern,confidence_no_fp,expected_countries,source,exp_url,notes\n"
    "test.blockpage,isp,,body,contains,<!-- vantage-lab-blockpage -->,10,ZZ,test,,\n"
    "test.sinkhole,isp,,dns,full,198.18.0.66,10,ZZ,test,,\n"
)


def verdicts(tmp_path: Path, records: Iterable[Measurement], **kw: Any) -> dict[str, dict[str, Any]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    fp = tmp_path / "test-fingerprints.csv"
    fp.write_text(TEST_FINGERPRINTS, encoding="utf-8")
    kw["fingerprints"] = [fp, *kw.get("fingerprints", [])]
    root = tmp_path / "ds"
    write_records(root, "run-test", list(records))
    con = open_datasets([root])
    try:
        table = compute_verdicts(con, **kw)
        assert_one_verdict_per_measurement(con, table)
    finally:
        con.close()
    return {r["measurement_id"]: r for r in table.to_pylist()}


def assert_one_verdict_per_measurement(con: duckdb.DuckDBPyConnection, table: pa.Table) -> None:
    """count(verdicts) == count(distinct probe measurement ids), every verdict names a rule of
    the table, and the table has the verdict schema."""
    assert table.schema.equals(VERDICT_SCHEMA)
    ((n,),) = con.sql("SELECT count(DISTINCT measurement_id) FROM measurements WHERE role = 'probe'").fetchall()
    ids = table.column("measurement_id").to_pylist()
    assert len(ids) == n == len(set(ids)), (len(ids), n, len(set(ids)))
    for status, method in zip(table.column("status").to_pylist(), table.column("method").to_pylist(), strict=True):
        assert status in STATUSES, status
        rule = RULES_BY_ID.get((method or "").split(":", 1)[0])
        assert rule is not None and rule.status == status, (status, method)


def judge(tmp_path: Path, probe: Measurement, control: Measurement | None = None, **kw: Any) -> dict[str, Any]:
    records = [probe] + ([control] if control is not None else [])
    return verdicts(tmp_path, records, **kw)[probe.measurement_id]


def expect(v: dict[str, Any], status: str, layer: str | None, method: str) -> None:
    """The verdict, and the rule that gave it (every verdict names one, ok and down included)."""
    assert (v["status"], v["layer"], v["method"]) == (status, layer, method), v


# --------------------------------------------------------------------------- ok and traps


def test_same_page_is_ok(tmp_path: Path) -> None:
    p = web()
    v = judge(tmp_path, p, control_of(p))
    expect(v, "ok", None, "ok.http_matches")
    assert v["confirmed"] is False and v["fingerprint"] is None and 0 < v["confidence"] <= 1


def test_cdn_answer_validated_over_tls_is_ok(tmp_path: Path) -> None:
    # geo-DNS: the probe gets another CDN address than the control; TLS validates for the SNI.
    p = web(url="https://cdn.example/", ips=["104.16.1.9"])
    v = judge(tmp_path, p, control_of(p, ips=["151.101.1.1"]))
    expect(v, "ok", None, "ok.https_validated")


def test_cdn_answer_same_page_over_http_is_ok(tmp_path: Path) -> None:
    # Different address, no TLS, but the page is the control's: OONI's http comparison wins.
    p = web(ips=["104.16.1.9"])
    expect(judge(tmp_path, p, control_of(p, ips=["151.101.1.1"])), "ok", None, "ok.http_matches")


def test_slow_but_working_is_ok(tmp_path: Path) -> None:
    p = web(slow=9.5)
    expect(judge(tmp_path, p, control_of(p)), "ok", None, "ok.http_matches")


def test_nxdomain_everywhere_is_down(tmp_path: Path) -> None:
    p = web(dns_failure="dns_nxdomain")
    expect(judge(tmp_path, p, control_of(p, dns_failure="dns_nxdomain")), "down", None, "down.dns_both_failed")


def test_control_down_too_is_down(tmp_path: Path) -> None:
    p = web(tcp_failure="generic_timeout")
    expect(judge(tmp_path, p, control_of(p, tcp_failure="generic_timeout")), "down", None, "down.both_failed")


def test_http_failure_at_both_ends_is_down(tmp_path: Path) -> None:
    p = web(http_failure="eof")
    expect(judge(tmp_path, p, control_of(p, http_failure="eof")), "down", None, "down.both_failed")


def test_probe_without_ipv6_is_not_tcp_blocking(tmp_path: Path) -> None:
    v6 = "2606:2800:220:1:248:1893:25c8:1946"
    p = web(ips=[SITE_IP, v6], tcp_failure={v6: "network_unreachable"})
    c = control_of(p, ips=[SITE_IP, v6])
    expect(judge(tmp_path, p, c), "ok", None, "ok.http_matches")


def test_probe_failure(tmp_path: Path) -> None:
    p = web(failure="unknown_failure:bad_input")
    expect(judge(tmp_path, p), "probe_failure", None, "probe_failure.measurement")


def test_no_control(tmp_path: Path) -> None:
    expect(judge(tmp_path, web(tcp_failure="connection_reset")), "no_control", None, "no_control.none")


def test_validated_https_needs_no_control(tmp_path: Path) -> None:
    expect(judge(tmp_path, web(url="https://site.example/")), "ok", None, "ok.https_no_control")


# --------------------------------------------------------------------------- DNS


def test_bogon_answer_is_dns_blocking(tmp_path: Path) -> None:
    p = web(ips=["10.10.34.35"])
    expect(judge(tmp_path, p, control_of(p)), "blocked", "dns", "dns.bogon")


def test_bogon_in_the_control_too_is_not_blocking(tmp_path: Path) -> None:
    # An intranet name (or a site pointing at localhost) resolves to a private address everywhere.
    p = web(ips=["127.0.0.1"], tcp_failure="connection_refused")
    expect(judge(tmp_path, p, control_of(p, ips=["127.0.0.1"], tcp_failure="connection_refused")), "down", None,
           "down.both_failed")


def test_public_net_makes_a_lab_address_public(tmp_path: Path) -> None:
    p = web(ips=["127.0.0.42"], body=PAGE, headers=[("Server", "lab")])
    c = control_of(p, body=PAGE.replace("lorem", "other") + "x" * 5000, title="Something else entirely")
    assert judge(tmp_path / "a", p, c)["method"] == "dns.bogon"
    # With the lab declared public, the differing answer is judged on the page instead.
    v = judge(tmp_path / "b", p, c, public_nets=["127.0.0.0/8"])
    assert v["method"] != "dns.bogon" and v["layer"] == "dns" and v["method"] == "dns.inconsistent"


def test_dns_fingerprint_confirms(tmp_path: Path) -> None:
    p = web(ips=["198.18.0.66"])
    v = judge(tmp_path, p, control_of(p))
    expect(v, "blocked", "dns", "dns.blockpage_ip")
    assert v["confirmed"] is True and v["fingerprint"] == "test.sinkhole" and v["confidence"] == 1.0


def test_ooni_dns_fingerprint_from_extra_file(tmp_path: Path) -> None:
    shared = SHARED_DATA / "fingerprints"
    p = web(ips=["8.7.198.45"])
    v = judge(tmp_path, p, control_of(p), fingerprints=[shared / "fingerprints_dns.csv"])
    expect(v, "blocked", "dns", "dns.blockpage_ip")
    assert v["fingerprint"] == "ooni.cn_0"


def test_late_differing_answer_is_injection(tmp_path: Path) -> None:
    p = web(ips=["1.2.3.4"], late=[SITE_IP])
    expect(judge(tmp_path, p, control_of(p)), "blocked", "dns", "dns.injected")


def test_late_duplicate_same_answer_is_not_injection(tmp_path: Path) -> None:
    p = web(late=[SITE_IP])
    expect(judge(tmp_path, p, control_of(p)), "ok", None, "ok.http_matches")


def test_injection_check_answered_is_injection(tmp_path: Path) -> None:
    p = web()
    p.dns.append(DnsQuery(t0=0.0, t=0.1, failure=None, resolver="192.0.2.1:53", engine="udp", query_type="A",
                          hostname="site.example", rcode="NOERROR", answers=[DnsAnswer("A", "1.2.3.4")],
                          tag="injection_check"))
    expect(judge(tmp_path, p, control_of(p)), "blocked", "dns", "dns.injected")


def test_nxdomain_with_control_ok(tmp_path: Path) -> None:
    p = web(dns_failure="dns_nxdomain")
    v = judge(tmp_path, p, control_of(p))
    expect(v, "blocked", "dns", "dns.nxdomain_ctrl_ok")


def test_servfail_with_control_ok(tmp_path: Path) -> None:
    p = web(dns_failure="dns_servfail")
    expect(judge(tmp_path, p, control_of(p)), "blocked", "dns", "dns.failure_ctrl_ok")


def test_lying_resolver_next_to_an_honest_one(tmp_path: Path) -> None:
    # The system resolver lies, the configured one is honest, the lie leads to a different page.
    p = web(ips=["130.192.182.17"], body=BLOCKPAGE.replace("vantage-lab-blockpage", "x"), title="Blocked",
            headers=[("Server", "filter")])
    p.dns.append(DnsQuery(t0=0.0, t=0.05, failure=None, resolver="8.8.8.8:53", engine="udp", query_type="A",
                          hostname="site.example", rcode="NOERROR", answers=[DnsAnswer("A", SITE_IP)]))
    expect(judge(tmp_path, p, control_of(p)), "blocked", "dns", "dns.inconsistent")


def test_same_network_answer_is_consistent(tmp_path: Path) -> None:
    # Another address in the control's /24 (a load-balancer pool) with a different page is http-diff.
    p = web(ips=["93.184.216.35"], status=500, body="error")
    expect(judge(tmp_path, p, control_of(p)), "blocked", "http-diff", "http.status_diff")


def test_ghost_answer_for_a_name_that_does_not_exist(tmp_path: Path) -> None:
    p = web(ips=["83.224.65.41"])
    expect(judge(tmp_path, p, control_of(p, dns_failure="dns_nxdomain")), "blocked", "dns", "dns.answer_ctrl_nxdomain")


# --------------------------------------------------------------------------- TCP / TLS / HTTP


@pytest.mark.parametrize(
    ("failure", "method"),
    [("connection_reset", "tcp.reset"), ("generic_timeout", "tcp.timeout"), ("connection_refused", "tcp.refused")],
)
def test_tcp_failure_with_control_ok(tmp_path: Path, failure: str, method: str) -> None:
    p = web(tcp_failure=failure)
    v = judge(tmp_path, p, control_of(p))
    expect(v, "blocked", "tcp_ip", method)
    assert v["confirmed"] is False


def test_tcp_failure_on_a_lying_answer_is_dns(tmp_path: Path) -> None:
    p = web(ips=["130.192.182.17"], tcp_failure="connection_refused")
    expect(judge(tmp_path, p, control_of(p)), "blocked", "dns", "dns.inconsistent")


def test_tcp_failure_against_a_control_run_on_other_addresses(tmp_path: Path) -> None:
    # A control run (no helper) resolved another address of the same network and connected.
    p = web(ips=["93.184.216.40"], tcp_failure="generic_timeout")
    c = web("control", at=T0 + dt.timedelta(minutes=20))
    expect(judge(tmp_path, p, c), "blocked", "tcp_ip", "tcp.timeout")


@pytest.mark.parametrize(
    ("failure", "method"),
    [("connection_reset", "tls.reset_sni"), ("generic_timeout", "tls.timeout"), ("eof", "tls.eof"),
     ("ssl_unknown_authority", "tls.invalid_cert")],
)
def test_tls_failure_with_control_ok(tmp_path: Path, failure: str, method: str) -> None:
    p = web(url="https://site.example/", tls_failure=failure)
    expect(judge(tmp_path, p, control_of(p)), "blocked", "tls", method)


def test_bad_certificate_everywhere_is_down(tmp_path: Path) -> None:
    p = web(url="https://expired.example/", tls_failure="ssl_invalid_certificate")
    expect(judge(tmp_path, p, control_of(p, tls_failure="ssl_invalid_certificate")), "down", None, "down.both_failed")


def test_http_failure_with_control_ok(tmp_path: Path) -> None:
    p = web(http_failure="connection_reset")
    expect(judge(tmp_path, p, control_of(p)), "blocked", "http-failure", "http.failure")


def test_status_code_difference(tmp_path: Path) -> None:
    p = web(status=403, body="forbidden", title="Forbidden")
    expect(judge(tmp_path, p, control_of(p)), "blocked", "http-diff", "http.status_diff")


def test_body_length_difference(tmp_path: Path) -> None:
    # Same status, short body, other uncommon headers, other title: every OONI check fails.
    p = web(body="<html><title>Notice</title>short</html>", title="Notice", headers=[("X-Filter", "1")])
    c = control_of(p, headers=[("X-Origin", "a")])
    expect(judge(tmp_path, p, c), "blocked", "http-diff", "http.body_diff")


def test_body_difference_with_same_title_is_ok(tmp_path: Path) -> None:
    # OONI: status match and title match is enough (dynamic pages change length).
    p = web(body=f"<html><title>{TITLE}</title>short</html>", headers=[("X-Filter", "1")])
    expect(judge(tmp_path, p, control_of(p, headers=[("X-Origin", "a")])), "ok", None, "ok.http_matches")


def test_blockpage_body_fingerprint(tmp_path: Path) -> None:
    p = web(body=BLOCKPAGE, title="Blocked")
    v = judge(tmp_path, p, control_of(p))
    expect(v, "blocked", "http-diff", "http.blockpage:test.blockpage")
    assert v["confirmed"] is True and v["fingerprint"] == "test.blockpage"


def test_blockpage_header_fingerprint_from_ooni_file(tmp_path: Path) -> None:
    shared = SHARED_DATA / "fingerprints"
    p = web(status=302, body="", title=None, headers=[("Location", "https://internet.mts.by/blocked/?u=x")])
    v = judge(tmp_path, p, control_of(p), fingerprints=[shared / "fingerprints_http.csv"])
    expect(v, "blocked", "http-diff", "http.blockpage:ooni.by_2")


def test_blockpage_without_control_is_still_confirmed(tmp_path: Path) -> None:
    v = judge(tmp_path, web(body=BLOCKPAGE, title="Blocked"))
    assert (v["status"], v["confirmed"]) == ("blocked", True)


def test_blockpage_behind_a_lying_answer_is_dns(tmp_path: Path) -> None:
    p = web(ips=["10.10.34.35"], body=BLOCKPAGE, title="Blocked")
    v = judge(tmp_path, p, control_of(p))
    expect(v, "blocked", "dns", "http.blockpage:test.blockpage")


def test_same_blockpage_at_the_control_is_not_a_match(tmp_path: Path) -> None:
    # The site itself serves a page that looks like a blockpage: not the network's doing.
    p = web(body=BLOCKPAGE, title="Blocked")
    expect(judge(tmp_path, p, control_of(p, body=BLOCKPAGE, title="Blocked")), "ok", None, "ok.http_matches")


# --------------------------------------------------------------------------- VPN


def vpn(role: str = "probe", *, ok: bool, failure: str | None = None, received: int = 0,
        at: dt.datetime = T0, control_for: str | None = None) -> Measurement:
    packets = [VpnPacket(t=0.01, direction="sent", size=54)]
    packets += [VpnPacket(t=0.05 + i / 100, direction="received", size=54) for i in range(received)]
    hs = VpnHandshake(t0=0.0, t=10.0, failure=None if ok else failure, protocol="openvpn",
                      endpoint="openvpn://203.0.113.5:1194/?transport=udp", ip="203.0.113.5", port=1194,
                      transport="udp", handshake_ok=ok, packets=packets)
    return Measurement(measurement_id=new_uuid7(), run_id=f"run-{role}", experiment="openvpn",
                       experiment_version="0.1.0", input=hs.endpoint, measurement_start_time=at, role=role,
                       probe_cc="IR", control_for=control_for, vpn=[hs])


@pytest.mark.parametrize(
    ("failure", "received", "method"),
    [("generic_timeout", 0, "vpn.timeout"), ("generic_timeout", 2, "vpn.no_answer_after_first"),
     ("connection_reset", 0, "vpn.reset"), ("vpn_handshake_failure", 1, "vpn.handshake_failure")],
)
def test_vpn_blocked(tmp_path: Path, failure: str, received: int, method: str) -> None:
    p = vpn(ok=False, failure=failure, received=received)
    c = vpn("control", ok=True, control_for=p.measurement_id)
    expect(judge(tmp_path, p, c), "blocked", "vpn", method)


def test_vpn_down_and_ok(tmp_path: Path) -> None:
    p1 = vpn(ok=False, failure="generic_timeout")
    c1 = vpn("control", ok=False, failure="generic_timeout", control_for=p1.measurement_id)
    p2 = vpn(ok=True, at=T0 + dt.timedelta(days=1))
    out = verdicts(tmp_path, [p1, c1, p2])
    expect(out[p1.measurement_id], "down", None, "down.vpn_both_failed")
    expect(out[p2.measurement_id], "ok", None, "ok.vpn_handshake")


# --------------------------------------------------------------------------- pairing


def test_control_run_paired_by_input_within_window(tmp_path: Path) -> None:
    p = web(tcp_failure="connection_reset")
    near = web("control", at=T0 + dt.timedelta(hours=2))
    v = judge(tmp_path, p, near)
    expect(v, "blocked", "tcp_ip", "tcp.reset")
    far = web("control", at=T0 + dt.timedelta(hours=7))
    expect(judge(tmp_path / "far", p, far), "no_control", None, "no_control.none")
    expect(judge(tmp_path / "wide", p, far, control_window_h=8), "blocked", "tcp_ip", "tcp.reset")


def test_nearest_control_run_wins(tmp_path: Path) -> None:
    p = web(tcp_failure="connection_reset")
    down = web("control", at=T0 - dt.timedelta(hours=1), tcp_failure="connection_reset")
    up = web("control", at=T0 + dt.timedelta(minutes=10))
    out = verdicts(tmp_path, [p, down, up])
    expect(out[p.measurement_id], "blocked", "tcp_ip", "tcp.reset")


def test_helper_control_beats_a_nearer_control_run(tmp_path: Path) -> None:
    p = web(tcp_failure="connection_reset", at=T0)
    helper = control_of(p, tcp_failure="connection_reset")
    helper.measurement_start_time = T0 + dt.timedelta(seconds=30)
    run = web("control", at=T0)
    out = verdicts(tmp_path, [p, helper, run])
    expect(out[p.measurement_id], "down", None, "down.both_failed")


def test_only_probe_rows_get_verdicts(tmp_path: Path) -> None:
    p = web()
    out = verdicts(tmp_path, [p, control_of(p), web("control", at=T0 + dt.timedelta(days=2))])
    assert list(out) == [p.measurement_id]


def test_bad_option_values(tmp_path: Path) -> None:
    with pytest.raises(VerdictError, match="public-net"):
        BogonChecker(["not-a-network"])
    with pytest.raises(VerdictError, match="control-window"):
        judge(tmp_path, web(), control_window_h=-1)


def test_bogon_checker() -> None:
    b = BogonChecker(["127.0.0.0/8"])
    import ipaddress

    assert b(ipaddress.ip_address("10.1.2.3")) and b(ipaddress.ip_address("100.64.0.1"))
    assert b(ipaddress.ip_address("::ffff:192.168.1.1")) and b(ipaddress.ip_address("fe80::1"))
    assert not b(ipaddress.ip_address("127.0.0.1")) and not b(ipaddress.ip_address(SITE_IP))
    assert not b(ipaddress.ip_address("2606:4700::1111"))


# --------------------------------------------------------------------------- resolver paths


def test_lying_system_resolver_beats_https_success_via_honest_resolver(tmp_path: Path) -> None:
    # The system resolver answers a bogon; the page still arrives over HTTPS through the
    # configured resolver's (honest) answer. Users of the system resolver are blocked.
    p = web(url="https://site.example/", ips=[SITE_IP])
    p.dns.insert(0, DnsQuery(t0=0.0, t=0.01, failure=None, resolver="system", engine="system", query_type="A",
                             hostname="site.example", rcode="NOERROR", answers=[DnsAnswer("A", "127.0.0.1")]))
    p.dns[1].engine, p.dns[1].resolver = "udp", "8.8.8.8:53"
    expect(judge(tmp_path, p, control_of(p)), "blocked", "dns", "dns.bogon")


def test_redirect_target_that_does_not_resolve(tmp_path: Path) -> None:
    p = web(http_failure="unknown_failure:dns_lookup")
    p.dns.append(DnsQuery(t0=0.5, t=0.6, failure="dns_nxdomain", resolver="system", engine="system", query_type="A",
                          hostname="next.example", rcode="NXDOMAIN", tag="redirect"))
    expect(judge(tmp_path, p, control_of(p)), "blocked", "dns", "dns.redirect_nxdomain_ctrl_ok")


def test_tls_passthrough_box_serving_a_blockpage_is_dns(tmp_path: Path) -> None:
    # The lying answer is a proxy: TLS to it validates (it relays), cleartext HTTP gets a blockpage.
    p = web(url="http://site.example/", ips=["130.192.182.17"], body=BLOCKPAGE, title="Blocked")
    p.tls.append(TlsHandshake(t0=0.2, t=0.3, failure=None, ip="130.192.182.17", port=443, sni="site.example",
                              cert_valid=True))
    v = judge(tmp_path, p, control_of(p))
    expect(v, "blocked", "dns", "http.blockpage:test.blockpage")


def test_answer_in_the_controls_asn_is_consistent(tmp_path: Path) -> None:
    netaddr = pytest.importorskip("netaddr", reason="netaddr (mmdb-writer's dependency) is not installed")
    mmdb_writer = pytest.importorskip("mmdb_writer", reason="mmdb-writer (a test extra) is not installed")
    writer = mmdb_writer.MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    writer.insert_network(netaddr.IPSet(["151.101.0.0/16"]), {"autonomous_system_number": 54113})
    asn_db = tmp_path / "asn.mmdb"
    writer.to_db_file(str(asn_db))
    p = web(ips=["151.101.1.1"], status=503, body="busy", title="Busy")
    c = control_of(p, ips=["151.101.200.5"])
    # Another /24, no ASN known: the answer is foreign, the different page is blamed on DNS.
    expect(judge(tmp_path / "a", p, c), "blocked", "dns", "dns.inconsistent")
    # Same ASN as the control's answer: DNS is fine, the page itself differs.
    expect(judge(tmp_path / "b", p, c, asn_db=asn_db), "blocked", "http-diff", "http.status_diff")


def test_redirect_to_an_intranet_host_is_not_a_bogon(tmp_path: Path) -> None:
    # The site redirects to a host with a private address everywhere: not the measured host's answer.
    p = web(http_failure="generic_timeout")
    p.dns.append(DnsQuery(t0=0.5, t=0.6, failure=None, resolver="system", engine="system", query_type="A",
                          hostname="intranet.site.example", rcode="NOERROR", answers=[DnsAnswer("A", "10.0.0.8")],
                          tag="redirect"))
    c = control_of(p, http_failure="generic_timeout")
    expect(judge(tmp_path, p, c), "down", None, "down.both_failed")


def test_a_measurement_present_twice_gets_one_verdict(tmp_path: Path) -> None:
    # The same probe row (and its helper control) written by two runs into one dataset.
    p = web(tcp_failure="connection_reset")
    c = control_of(p)
    root = tmp_path / "ds"
    write_records(root, "run-a", [p, c])
    write_records(root, "run-b", [p, c])
    con = open_datasets([root])
    try:
        ((rows,),) = con.sql("SELECT count(*) FROM measurements WHERE role = 'probe'").fetchall()
        assert rows == 2  # the duplicate is really there
        table = compute_verdicts(con)
        assert_one_verdict_per_measurement(con, table)
    finally:
        con.close()
    (v,) = table.to_pylist()
    expect(v, "blocked", "tcp_ip", "tcp.reset")
