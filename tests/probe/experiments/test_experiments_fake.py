"""Experiment decisions against the fake measurement context (tests/support/fake_net.py): which
steps are taken, in which order, and what a failure leads to. No sockets: milliseconds. The
steps themselves are tested against loopback servers (tests/probe/net, test_experiments_web)."""

from __future__ import annotations

import asyncio

import pytest

from probe.experiments import registry
from probe.experiments.base import Experiment, InputError, Observation, Settings, Target, Vantage, measure
from probe.experiments.common import MAX_ADDRESSES
from probe.experiments.context import MeasurementContext
from probe.experiments.dns_consistency import INJECTION_TAG
from probe.experiments.tunnels.transport import Outcome
from probe.net._client import address_guard
from probe.schema import DnsQuery, HttpRequest, Measurement, QuicHandshake, TcpConnect, TlsHandshake, validate
from tests.support.fake_net import FakeNet, Page

RESOLVER = "192.0.2.53:53"


def lab(**extra: object) -> Settings:
    return Settings(resolvers=[RESOLVER], use_system_resolver=False, extra=dict(extra))


def record(name: str, url: str, net: FakeNet) -> Measurement:
    m = asyncio.run(measure(registry.get(name), Target(url), net.settings, Vantage(), "fake-run", net=net))
    validate(m)
    return m


def kinds(steps: list[tuple[object, ...]]) -> list[object]:
    return [s[0] for s in steps]


# --------------------------------------------------------------------------- web_connectivity


def test_nxdomain_stops_after_dns() -> None:
    net = FakeNet(lab())
    m = record("web_connectivity", "https://gone.test/", net)
    assert kinds(net.steps) == ["dns_udp", "dns_udp"]  # A and AAAA, nothing to connect to
    assert m.tcp == [] and m.tls == [] and m.http == [] and m.failure is None
    assert not registry.get("web_connectivity").succeeded(m)


def test_every_connect_refused_skips_tls_and_http() -> None:
    net = FakeNet(lab(), dns={"a.test": ["192.0.2.1", "192.0.2.2"]},
                  tcp={"192.0.2.1": "connection_refused", "192.0.2.2": "connection_refused"})
    m = record("web_connectivity", "https://a.test/", net)
    assert sorted(c.ip for c in m.tcp) == ["192.0.2.1", "192.0.2.2"]
    assert "tls" not in kinds(net.steps) and "http" not in kinds(net.steps)
    assert not registry.get("web_connectivity").succeeded(m)


def test_one_reachable_address_gets_tls_and_is_pinned_first_for_http() -> None:
    # Trap beside the refused case: one address of two answers, so the page is fetched.
    net = FakeNet(lab(), dns={"a.test": ["192.0.2.1", "192.0.2.2"]}, tcp={"192.0.2.1": "generic_timeout"})
    m = record("web_connectivity", "https://a.test/", net)
    tls = [s for s in net.steps if s[0] == "tls"]
    assert tls == [("tls", "192.0.2.2", 443, "a.test")]  # only where TCP worked, with the SNI
    http = next(s for s in net.steps if s[0] == "http")
    assert http[2] == {"a.test": ["192.0.2.2", "192.0.2.1"]}  # reachable first, then the rest
    assert registry.get("web_connectivity").succeeded(m)


def test_ip_literal_needs_no_dns_and_sends_no_sni() -> None:
    net = FakeNet(lab())
    m = record("web_connectivity", "https://192.0.2.9:8443/x", net)
    assert m.dns == []
    assert [s for s in net.steps if s[0] == "tls"] == [("tls", "192.0.2.9", 8443, None)]


def test_a_flood_of_answers_is_capped() -> None:
    flood: list[str] = [f"192.0.2.{i}" for i in range(1, 40)]
    net = FakeNet(lab(), dns={"a.test": flood}, tcp=dict.fromkeys(flood, "connection_refused"))
    m = record("web_connectivity", "http://a.test/", net)
    assert len(next(q for q in m.dns if q.query_type == "A").answers) == len(flood)  # all on record...
    connected = [s[1] for s in net.steps if s[0] == "tcp"]
    assert connected == flood[:MAX_ADDRESSES]  # ...but only the first few contacted
    assert m.http == []


def test_redirect_to_another_host_is_resolved_on_the_record() -> None:
    net = FakeNet(lab(), dns={"a.test": ["192.0.2.1"], "b.test": ["192.0.2.7"]},
                  http={"http://a.test/": Page(301, location="http://b.test/landing")})
    m = record("web_connectivity", "http://a.test/", net)
    assert [h.url for h in m.http] == ["http://a.test/", "http://b.test/landing"]
    assert m.http[-1].ip == "192.0.2.7"
    redirect = [q for q in m.dns if q.tag == "redirect"]
    assert {q.hostname for q in redirect} == {"b.test"} and len(redirect) == 2
    assert all(q.tag is None for q in m.dns if q.hostname == "a.test")


def test_http_failure_is_not_success() -> None:
    net = FakeNet(lab(), dns={"a.test": ["192.0.2.1"]}, http={"http://a.test/": Page(None, "connection_reset")})
    m = record("web_connectivity", "http://a.test/", net)
    assert m.http[-1].failure == "connection_reset"
    assert not registry.get("web_connectivity").succeeded(m)


def test_https_runs_quic_to_every_address_even_when_tcp_is_blocked() -> None:
    # UDP may pass where TCP does not: the QUIC step does not wait for TCP to work.
    net = FakeNet(lab(), dns={"a.test": ["192.0.2.1", "192.0.2.2"]},
                  tcp={"192.0.2.1": "generic_timeout", "192.0.2.2": "generic_timeout"})
    m = record("web_connectivity", "https://a.test/x", net)
    assert sorted((q.ip, q.port, q.sni, q.failure) for q in m.quic) == [
        ("192.0.2.1", 443, "a.test", None), ("192.0.2.2", 443, "a.test", None)]
    assert [(h.http_version, h.tag, h.status_code) for h in m.http] == [("HTTP/3", "http3", 200)] * 2
    # The page over TCP did not arrive: an HTTP/3 page does not make the measurement ok.
    assert not registry.get("web_connectivity").succeeded(m)


def test_quic_failure_records_no_http3_get_and_tcp_page_still_counts() -> None:
    net = FakeNet(lab(), dns={"a.test": ["192.0.2.1"]}, quic={"192.0.2.1": "generic_timeout"})
    m = record("web_connectivity", "https://a.test/", net)
    assert [q.failure for q in m.quic] == ["generic_timeout"]
    assert [h.tag for h in m.http] == [None]  # the TCP hop only
    assert registry.get("web_connectivity").succeeded(m)


def test_plain_http_and_no_quic_option_take_no_quic_step() -> None:
    net = FakeNet(lab(), dns={"a.test": ["192.0.2.1"]})
    m = record("web_connectivity", "http://a.test/", net)
    assert "quic" not in kinds(net.steps) and m.quic == []
    net = FakeNet(lab(quic=False), dns={"a.test": ["192.0.2.1"]})
    m = record("web_connectivity", "https://a.test/", net)
    assert "quic" not in kinds(net.steps) and m.quic == [] and len(m.tls) == 1


def test_dns_consistency_rejects_an_ip_address() -> None:
    net = FakeNet(lab())
    m = record("dns_consistency", "http://127.0.0.1/", net)
    assert net.steps == [] and m.failure is not None and "invalid_input" in m.failure


def test_bad_url_takes_no_step() -> None:
    net = FakeNet(lab())
    m = record("web_connectivity", "ftp://a.test/", net)
    assert net.steps == []
    assert m.failure is not None and m.failure.startswith("unknown_failure:invalid_input")


# --------------------------------------------------------------------------- dns_consistency


def test_injection_check_that_gets_an_answer_is_injection() -> None:
    net = FakeNet(lab(injection_target="192.0.2.99", dns_tcp=False), dns={"a.test": ["192.0.2.1"]},
                  injected={"a.test": ["198.51.100.1"]})
    m = record("dns_consistency", "a.test", net)
    check = [q for q in m.dns if q.tag == INJECTION_TAG]
    assert len(check) == 1 and check[0].resolver == "192.0.2.99" and check[0].answers
    assert not registry.get("dns_consistency").succeeded(m)


def test_injection_check_silence_is_no_injection() -> None:
    # The trap: the same measurement where nothing answers at the injection target.
    net = FakeNet(lab(injection_target="192.0.2.99", dns_tcp=False), dns={"a.test": ["192.0.2.1"]})
    m = record("dns_consistency", "a.test", net)
    check = [q for q in m.dns if q.tag == INJECTION_TAG]
    assert len(check) == 1 and check[0].failure == "generic_timeout" and not check[0].answers
    assert registry.get("dns_consistency").succeeded(m)


def test_no_injection_target_sends_no_injection_query() -> None:
    net = FakeNet(lab(), dns={"a.test": ["192.0.2.1"]})
    m = record("dns_consistency", "http://a.test/x", net)
    assert not any(s[-1] == INJECTION_TAG for s in net.steps if s[0] == "dns_udp")
    assert sorted({(q.engine, q.query_type) for q in m.dns}) == [("tcp", "A"), ("tcp", "AAAA"), ("udp", "A"),
                                                                  ("udp", "AAAA")]


def test_a_name_without_aaaa_is_consistent_but_a_servfail_is_not() -> None:
    ok = record("dns_consistency", "a.test", FakeNet(lab(dns_tcp=False), dns={"a.test": ["192.0.2.1"]}))
    assert registry.get("dns_consistency").succeeded(ok)  # AAAA: dns_no_answer, not a failure
    bad = record("dns_consistency", "a.test", FakeNet(lab(dns_tcp=False), dns={"a.test": "dns_server_failure"}))
    assert not registry.get("dns_consistency").succeeded(bad)


# --------------------------------------------------------------------------- tunnels

KEY = "A" * 43  # 32 bytes in base64url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("openvpn://192.0.2.5:1194/?key_direction=2", "key_direction must be 0 or 1"),
        ("openvpn://192.0.2.5:1194/?auth=SHA256", "need tls_auth"),
        ("openvpn://vpn.test:1194/", "must be an IP address"),
        ("wireguard://192.0.2.5:51820/?public_key=" + KEY, "missing parameter 'private_key'"),
        ("wireguard://192.0.2.5:51820/?public_key=abc&private_key=" + KEY, "must be 32 bytes"),
        ("tor://192.0.2.5:9001/?cert=x", "takes no parameters"),
        ("obfs4://192.0.2.5:443/", "missing parameter 'cert'"),
        ("ikev2://192.0.2.5:500/?x=1", "unknown parameter"),
        ("ikev2://192.0.2.5/", "missing port"),
    ],
)
def test_tunnel_input_errors_take_no_step(url: str, why: str) -> None:
    name = url.split("://")[0].replace("obfs4", "tor")
    experiment = registry.get(name)
    problem = experiment.input_problem(url)
    assert problem is not None and why in problem
    net = FakeNet()
    with pytest.raises(InputError, match=why):
        asyncio.run(experiment.run(Target(url), net))
    assert net.steps == []
    assert experiment.host_key(Target(url)) == url  # a bad input is its own politeness slot


def test_tunnel_host_key_is_the_endpoint_address() -> None:
    for url in ("openvpn://192.0.2.5:1194/?transport=tcp", "tor://192.0.2.5:9001/", "ikev2://192.0.2.5:500/",
                f"wireguard://192.0.2.5:51820/?public_key={KEY}&private_key={KEY}"):
        name = url.split("://")[0]
        assert registry.get(name).input_problem(url) is None
        assert registry.get(name).host_key(Target(url)) == "192.0.2.5"


def test_wireguard_silence_and_a_rejected_reply() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from probe.experiments.tunnels.endpoints import encode_key
    from probe.experiments.tunnels.wireguard_wire import private_bytes, public_from_private

    server, client = (private_bytes(X25519PrivateKey.generate()) for _ in range(2))
    url = (f"wireguard://192.0.2.5:51820/?public_key={encode_key(public_from_private(server))}"
           f"&private_key={encode_key(client)}")
    silent = record("wireguard", url, FakeNet())
    assert silent.vpn[0].failure == "generic_timeout" and not silent.vpn[0].handshake_ok
    assert [p.direction for p in silent.vpn[0].packets] == ["sent"]

    def garbage(ip: str, port: int, first: bytes) -> Outcome:
        assert len(first) == 148  # a handshake initiation went out
        return Outcome(failure="vpn_handshake_failure", detail="unexpected message type 9")

    answered = record("wireguard", url, FakeNet(udp=garbage))
    assert answered.vpn[0].failure == "vpn_handshake_failure" and answered.vpn[0].detail == "unexpected message type 9"


# --------------------------------------------------------------------------- the context


class _GuardSpy(Experiment):
    name = "guard_spy"
    seen: list[object] = []

    async def run(self, target: Target, net: MeasurementContext) -> list[Observation]:
        guard = address_guard.get()
        self.seen.append(guard("192.0.2.1", 80) if guard else None)
        return [TcpConnect(t0=net.now(), t=net.now(), failure=None, ip="192.0.2.1", port=80)]


def test_measure_switches_the_settings_address_guard_on_for_the_experiment_only() -> None:
    spy = _GuardSpy()
    settings = Settings(address_guard=lambda ip, port: f"{ip} is not public")
    asyncio.run(measure(spy, Target("http://x.test/"), settings, Vantage(), "r"))
    asyncio.run(measure(spy, Target("http://x.test/"), Settings(), Vantage(), "r"))
    assert spy.seen == ["192.0.2.1 is not public", None]
    assert address_guard.get() is None  # reset after the measurement


def test_the_context_holds_the_run_settings() -> None:
    settings = Settings(ca_bundle="/x/ca.pem")
    net = MeasurementContext(settings)
    assert net.timeouts is settings.timeouts and net.ca_bundle == "/x/ca.pem" and net.scrubber is None
    assert 0 <= net.now() < 1


def test_fake_records_are_real_schema_records() -> None:
    net = FakeNet(lab(), dns={"a.test": ["192.0.2.1", "2001:db8::1"]})
    out = asyncio.run(registry.get("web_connectivity").run(Target("https://a.test/"), net))
    types = {type(o) for o in out}
    assert types == {DnsQuery, TcpConnect, TlsHandshake, HttpRequest, QuicHandshake}


def test_every_tunnel_wire_format_raises_the_one_wire_error() -> None:
    from probe.experiments.tunnels import ikev2_wire, openvpn_wire, tor_link, wireguard_wire
    from probe.experiments.tunnels.base import TunnelExperiment
    from probe.experiments.tunnels.wire import WireError

    assert openvpn_wire.WireError is wireguard_wire.WireError is ikev2_wire.WireError is WireError
    with pytest.raises(WireError):
        tor_link.parse_versions(b"\0\0\x07\0\x01", b"\0")  # odd length: malformed VERSIONS
    with pytest.raises(WireError):
        openvpn_wire.parse_static_key(b"not a key")
    for name in ("openvpn", "wireguard", "tor", "ikev2"):
        assert isinstance(registry.get(name), TunnelExperiment)


# -- quic: QUIC is waited for only while the target's HTTPS answer advertises h3 (Alt-Svc)


def _timed(url: str, net: FakeNet) -> tuple[Measurement, float]:
    import time

    start = time.monotonic()
    m = record("web_connectivity", url, net)
    return m, time.monotonic() - start


def test_no_h3_advertised_stops_waiting_for_a_silent_quic_server() -> None:
    # The server answers over HTTPS without Alt-Svc and drops UDP 443 (most of the internet):
    # the measurement must not hold its slot for the QUIC step limit (here 5 s of real time).
    net = FakeNet(lab(), dns={"a.test": ["192.0.2.1", "192.0.2.2"]},
                  quic={"192.0.2.1": "generic_timeout", "192.0.2.2": "generic_timeout"}, quic_wait=5.0)
    m, took = _timed("https://a.test/", net)
    assert took < 1.0, took
    assert [q.failure for q in m.quic] == ["interrupted", "interrupted"]
    assert registry.get("web_connectivity").succeeded(m)


def test_h3_advertised_keeps_waiting_for_quic_to_its_end() -> None:
    # The trap beside it: the same silent QUIC, but the answer offers h3: the timeout is evidence.
    net = FakeNet(lab(), dns={"a.test": ["192.0.2.1"]}, quic={"192.0.2.1": "generic_timeout"}, quic_wait=0.3,
                  http={"https://a.test/": Page(alt_svc='h3-29=":443"; ma=3600, h3=":443"; ma=86400')})
    m, took = _timed("https://a.test/", net)
    assert took >= 0.3, took
    assert [q.failure for q in m.quic] == ["generic_timeout"]
    assert [h.value for h in m.http[0].headers if h.name == "alt-svc"]  # recorded for the analyst


def test_tcp_blocked_keeps_quic_to_its_end() -> None:
    # No answer over TCP (blocked?): QUIC may pass where TCP does not, so it is measured.
    net = FakeNet(lab(), dns={"a.test": ["192.0.2.1"]}, tcp={"192.0.2.1": "generic_timeout"},
                  quic_wait=0.3)
    m, took = _timed("https://a.test/", net)
    assert took >= 0.3, took
    assert [q.failure for q in m.quic] == [None]


def test_quic_wanted_reads_the_targets_own_origin() -> None:
    from probe.experiments.web_connectivity import quic_wanted
    from probe.schema import HttpHeader, HttpRequest

    def hop(url: str, alt: str | None = None, status: int | None = 200) -> HttpRequest:
        h = HttpRequest(t0=0, t=0, failure=None if status else "connection_reset", url=url, status_code=status)
        h.headers = [HttpHeader("server", "x")] + ([HttpHeader("alt-svc", alt)] if alt else [])
        return h

    url = "https://a.test/"
    assert quic_wanted([], url)  # nothing arrived
    assert quic_wanted([hop(url, status=None)], url)  # the GET failed
    assert not quic_wanted([hop(url)], url)
    assert not quic_wanted([hop(url, "clear")], url)
    assert quic_wanted([hop(url, 'h2=":443", h3=":443"')], url)
    # h3 offered by another origin of the redirect chain is not this origin's
    assert not quic_wanted([hop(url), hop("https://www.a.test/", 'h3=":443"')], url)
    assert quic_wanted([hop("https://a.test/x"), hop("https://a.test/y", 'h3=":443"')], url)
    # a header list cut at MAX_HEADERS may have lost its Alt-Svc: keep waiting
    from probe.net.http import MAX_HEADERS

    cut = hop(url)
    cut.headers = [HttpHeader("set-cookie", f"c{i}") for i in range(MAX_HEADERS)]
    assert quic_wanted([cut], url)


def test_a_cut_alt_svc_value_keeps_waiting_but_another_long_header_does_not() -> None:
    from probe.experiments.web_connectivity import quic_wanted
    from probe.net.http import HEADER_VALUE_MAX
    from probe.schema import HttpHeader, HttpRequest

    url = "https://a.test/"
    hop = HttpRequest(t0=0, t=0, failure=None, url=url, status_code=200)
    hop.headers = [HttpHeader("location", "x" * HEADER_VALUE_MAX)]
    assert not quic_wanted([hop], url)
    hop.headers = [HttpHeader("alt-svc", ('h2=":443"; ma=1, ' * 100)[:HEADER_VALUE_MAX])]
    assert quic_wanted([hop], url)
