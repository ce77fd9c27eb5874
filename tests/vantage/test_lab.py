"""The loopback lab behaves as its plan declares: resolvers, sites, the censor's tricks, cleanup."""

from __future__ import annotations

import csv
import errno
import ipaddress
import os
import socket
import ssl
import threading

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from vantage.lab import LoopbackLab, plan
from vantage.lab.dns_server import LabZone
from vantage.lab.web import BLOCKPAGE_MARKER, CENSOR_SERVER, blockpage, site_page

SILENT_FOR = 1.0  # seconds without an answer before a test calls a lab server silent
ANSWER_WITHIN = 10.0  # generous: a loaded 2-core CI box must not turn an answer into silence


def _split(resolver: str) -> tuple[str, int]:
    ip, port = resolver.rsplit(":", 1)
    return ip, int(port)


def _query(
    resolver: str, name: str, qtype: str = "A", *, tcp: bool = False, timeout: float = ANSWER_WITHIN
) -> dns.message.Message:
    ip, port = _split(resolver)
    q = dns.message.make_query(name, qtype)
    if tcp:
        return dns.query.tcp(q, ip, port=port, timeout=timeout)
    return dns.query.udp(q, ip, port=port, timeout=timeout)


def _a(msg: dns.message.Message) -> list[str]:
    return sorted(r.address for rrset in msg.answer for r in rrset if rrset.rdtype == dns.rdatatype.A)


def _client(lab: LoopbackLab) -> httpx.Client:
    return httpx.Client(verify=ssl.create_default_context(cafile=str(lab.ca_bundle)), timeout=ANSWER_WITHIN)


def _get(lab: LoopbackLab, url: str, address: str) -> httpx.Response:
    """GET a lab URL at a given address, with the right Host and SNI, without any DNS."""
    u = httpx.URL(url)
    with _client(lab) as client:
        return client.get(
            u.copy_with(host=address),
            headers={"Host": u.netloc.decode()},
            extensions={"sni_hostname": u.host},
        )


def _tls_connect(lab: LoopbackLab, address: str, sni: str) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(lab.ca_bundle))
    raw = socket.create_connection((address, lab.https_port), timeout=ANSWER_WITHIN)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise


def _site(hostname: str, scheme: str | None = None) -> plan.Site:
    return next(s for s in plan.SITES if s.hostname == hostname and (scheme is None or s.scheme == scheme))


# ---------------------------------------------------------------- the plan itself


def test_every_address_handed_out_is_loopback_and_lab_owned() -> None:
    public = ipaddress.ip_network(plan.PUBLIC_NET)
    served = plan.served_addresses()
    handed_out = set(plan.site_names().values()) | {
        a for a in plan.censored_dns().values() if a not in ("nxdomain", "drop")
    }
    for address in handed_out:
        ip = ipaddress.ip_address(address)
        assert ip.is_loopback, address
        assert address in served or address in plan.closed_addresses(), address
    assert ipaddress.ip_address(plan.BOGON_IP) not in public  # stays a bogon for the analyzer
    assert all(ipaddress.ip_address(a) in public for a in served)


def test_ground_truth_covers_every_site_with_a_known_verdict() -> None:
    urls = [s.url(80, 443) for s in plan.SITES]
    assert len(urls) == len(set(urls))
    for s in plan.SITES:
        assert s.status in ("ok", "blocked", "down")
        assert (s.layer is None) == (s.status != "blocked"), s
    layers = {s.layer for s in plan.SITES if s.status == "blocked"}
    assert layers == {"dns", "tcp_ip", "tls", "http-failure", "http-diff"}


def test_lab_fingerprints_are_ooni_format_and_match_the_censor() -> None:
    with open(LoopbackLab.fingerprints, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) >= {
        "name",
        "location_found",
        "pattern_type",
        "pattern",
        "expected_countries",
    }
    by_location = {r["location_found"]: r for r in rows}
    assert by_location["dns"]["pattern"] == plan.BLOCKPAGE_IP
    assert by_location["body"]["pattern"] == BLOCKPAGE_MARKER
    assert by_location["header.server"]["pattern"] == CENSOR_SERVER
    assert all(r["pattern_type"] in ("full", "prefix", "contains", "regexp") for r in rows)


def test_analyzer_loads_the_lab_fingerprints_and_they_match_the_censor() -> None:
    from analysis.fingerprints import load_file

    fps = load_file(LoopbackLab.fingerprints)
    assert fps.problems == [] and len(fps.fingerprints) == 4
    assert fps.match_dns(plan.BLOCKPAGE_IP) is not None
    assert fps.match_dns("127.64.1.1") is None  # an honest lab address is no blockpage
    matcher = fps.http_matcher
    assert matcher.match_body(blockpage("x.lab.test").decode()) is not None
    assert matcher.match_body(site_page("www.lab.test").decode()) is None
    assert matcher.match_headers([("Server", CENSOR_SERVER)]) is not None
    assert matcher.match_headers([("Location", f"http://{plan.BLOCKPAGE_IP}:8080/blocked")]) is not None


# ---------------------------------------------------------------- DNS, without sockets


def test_zone_logic_without_sockets() -> None:
    zone = LabZone("lab.test", {"a.lab.test": "127.64.1.1"}, {"b.lab.test": "drop", "c.lab.test": "nxdomain"})
    reply = dns.message.from_wire(zone.respond(dns.message.make_query("A.LAB.TEST.", "A").to_wire()) or b"")
    assert _a(reply) == ["127.64.1.1"]
    assert zone.respond(dns.message.make_query("b.lab.test", "A").to_wire()) is None
    nx = dns.message.from_wire(zone.respond(dns.message.make_query("c.lab.test", "A").to_wire()) or b"")
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert zone.respond(b"\x00garbage") is None


# ---------------------------------------------------------------- DNS, over the wire


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_honest_resolver_knows_every_site(loopback_lab: LoopbackLab, tcp: bool) -> None:
    for name, address in plan.site_names().items():
        reply = _query(loopback_lab.honest_resolver, name, tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR and _a(reply) == [address], name
    aaaa = _query(loopback_lab.honest_resolver, "www.lab.test", "AAAA", tcp=tcp)
    assert aaaa.rcode() == dns.rcode.NOERROR and not aaaa.answer
    assert _query(loopback_lab.honest_resolver, "nosuch.lab.test", tcp=tcp).rcode() == dns.rcode.NXDOMAIN
    # Not a recursive resolver: a lab test can never cause a query beyond loopback.
    assert _query(loopback_lab.honest_resolver, "example.org", tcp=tcp).rcode() == dns.rcode.REFUSED


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_censoring_resolver_lies_as_planned(loopback_lab: LoopbackLab, tcp: bool) -> None:
    resolver = loopback_lab.censoring_resolver
    for site in plan.SITES:
        if site.dns == "drop":
            with pytest.raises(dns.exception.Timeout):
                _query(resolver, site.hostname, tcp=tcp, timeout=SILENT_FOR)
            continue
        reply = _query(resolver, site.hostname, tcp=tcp)
        if site.dns == "nxdomain":
            assert reply.rcode() == dns.rcode.NXDOMAIN
        elif site.dns == "honest":
            assert _a(reply) == [site.address], site.hostname
        else:
            assert _a(reply) == [site.dns] != [site.address], site.hostname
    assert _a(_query(resolver, "dns-blockpage.lab.test", tcp=tcp)) == [plan.BLOCKPAGE_IP]
    assert _a(_query(resolver, "dns-bogon.lab.test", tcp=tcp)) == [plan.BOGON_IP]


# ---------------------------------------------------------------- web: honest view


def test_ordinary_sites_serve_valid_https_and_http(loopback_lab: LoopbackLab) -> None:
    ok = [s for s in loopback_lab.sites if s.status == "ok"]
    assert len(ok) >= 5
    for s in ok:
        r = _get(loopback_lab, s.url, s.site.address)
        assert r.status_code == 200, s.url
        assert r.content == site_page(s.site.hostname)
        assert f"<title>{s.site.hostname.split('.')[0]} - Vantage lab</title>" in r.text


def test_cdn_trap_both_addresses_serve_a_valid_certificate(loopback_lab: LoopbackLab) -> None:
    url = loopback_lab.url("cdn.lab.test")
    honest = _get(loopback_lab, url, _site("cdn.lab.test").address)
    other = _get(loopback_lab, url, plan.CDN_ALT_IP)
    assert honest.status_code == other.status_code == 200
    assert honest.content == other.content


def test_blockpage_server_is_fingerprintable_and_not_valid_for_sites(loopback_lab: LoopbackLab) -> None:
    r = _get(loopback_lab, loopback_lab.url("dns-blockpage.lab.test", "http"), plan.BLOCKPAGE_IP)
    assert r.status_code == 403
    assert BLOCKPAGE_MARKER in r.text and r.headers["server"] == CENSOR_SERVER
    # Its certificate names only the blockpage, so TLS for a site at the censor's address fails.
    with pytest.raises(ssl.SSLCertVerificationError):
        _tls_connect(loopback_lab, plan.BLOCKPAGE_IP, "dns-bogon.lab.test").close()


@pytest.mark.parametrize("address", plan.closed_addresses())
def test_closed_addresses_refuse_both_ports(loopback_lab: LoopbackLab, address: str) -> None:
    for port in (loopback_lab.http_port, loopback_lab.https_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=ANSWER_WITHIN).close()


# ---------------------------------------------------------------- web: the censor on


def test_censor_refuses_tcp_then_serves_when_off(loopback_lab: LoopbackLab) -> None:
    site = _site("tcp-refused.lab.test")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((site.address, loopback_lab.http_port), timeout=ANSWER_WITHIN).close()
    with loopback_lab.uncensored():
        assert _get(loopback_lab, loopback_lab.url(site.hostname, "http"), site.address).status_code == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((site.address, loopback_lab.http_port), timeout=ANSWER_WITHIN).close()


def test_censor_resets_the_tls_handshake(loopback_lab: LoopbackLab) -> None:
    site = _site("tls-reset.lab.test")
    with pytest.raises(ConnectionResetError):
        _tls_connect(loopback_lab, site.address, site.hostname).close()
    with loopback_lab.uncensored():
        with _tls_connect(loopback_lab, site.address, site.hostname) as tls:
            assert tls.version() is not None


def test_sni_filter_resets_only_the_blocked_name(loopback_lab: LoopbackLab) -> None:
    blocked, allowed = _site("sni-blocked.lab.test"), _site("sni-open.lab.test")
    assert blocked.address == allowed.address
    with pytest.raises(ConnectionResetError):
        _tls_connect(loopback_lab, blocked.address, blocked.hostname).close()
    with _tls_connect(loopback_lab, allowed.address, allowed.hostname) as tls:
        assert tls.getpeercert() is not None
    assert _get(loopback_lab, loopback_lab.url(allowed.hostname), allowed.address).status_code == 200
    with loopback_lab.uncensored():
        assert _get(loopback_lab, loopback_lab.url(blocked.hostname), blocked.address).status_code == 200


def test_silent_site_accepts_and_never_answers(loopback_lab: LoopbackLab) -> None:
    site = _site("http-silent.lab.test")
    with socket.create_connection((site.address, loopback_lab.http_port), timeout=ANSWER_WITHIN) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {site.hostname}\r\n\r\n".encode())
        sock.settimeout(SILENT_FOR)
        with pytest.raises(TimeoutError):
            sock.recv(1)
    with loopback_lab.uncensored():
        assert _get(loopback_lab, loopback_lab.url(site.hostname, "http"), site.address).status_code == 200


def test_redirect_to_blockpage(loopback_lab: LoopbackLab) -> None:
    site = _site("http-redirect.lab.test")
    url = loopback_lab.url(site.hostname, "http")
    r = _get(loopback_lab, url, site.address)
    assert r.status_code == 302
    location = r.headers["location"]
    assert location.startswith(f"http://{plan.BLOCKPAGE_IP}:{loopback_lab.http_port}/")
    with httpx.Client(timeout=ANSWER_WITHIN) as client:
        assert BLOCKPAGE_MARKER in client.get(location).text
    with loopback_lab.uncensored():
        assert _get(loopback_lab, url, site.address).content == site_page(site.hostname)


# ---------------------------------------------------------------- lifecycle


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_close_leaves_no_thread_socket_or_file() -> None:
    threads_before = set(threading.enumerate())
    fds_before = _open_fds()
    lab = LoopbackLab().start()
    workdir = lab.ca_bundle.parent
    ports = (lab.dns_port, lab.http_port, lab.https_port)
    assert lab.ca_bundle.is_file()
    # Exercise a silent connection so that close() must cut a connection still in progress.
    site = _site("http-silent.lab.test")
    hanging = socket.create_connection((site.address, lab.http_port), timeout=ANSWER_WITHIN)
    hanging.sendall(b"GET / HTTP/1.1\r\n\r\n")
    lab.close()
    hanging.close()
    lab.close()  # idempotent
    assert set(threading.enumerate()) <= threads_before
    assert not workdir.exists()
    leaked = [
        os.readlink(f"/proc/self/fd/{fd}")
        for fd in _open_fds() - fds_before
        if os.path.exists(f"/proc/self/fd/{fd}")
    ]
    assert not [x for x in leaked if x.startswith("socket:")], leaked
    # Nothing listens on the lab's ports any more (SO_REUSEADDR tolerates TIME_WAIT leftovers
    # of closed connections, never a listening socket).
    for ip, port in (
        (plan.HONEST_RESOLVER_IP, ports[0]),
        (site.address, ports[1]),
        (plan.BLOCKPAGE_IP, ports[2]),
    ):
        with socket.socket() as again:
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind((ip, port))
            again.listen()


def test_errno_of_a_closed_port_is_refused(loopback_lab: LoopbackLab) -> None:
    # What the probe will record for the down site: a refusal, the same for probe and control.
    with socket.socket() as s:
        s.settimeout(ANSWER_WITHIN)
        assert s.connect_ex((plan.DOWN_IP, loopback_lab.https_port)) == errno.ECONNREFUSED
