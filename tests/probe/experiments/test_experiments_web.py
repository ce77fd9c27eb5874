"""web_connectivity, dns_consistency and anchors against the loopback farm, through measure().
Decision paths without sockets are in test_experiments_fake.py."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest
from loopfarm import Farm, lab_settings

from probe.experiments import registry
from probe.experiments.base import Experiment, Settings, Target, Vantage, measure
from probe.experiments.context import MeasurementContext
from probe.net.scrub import Scrubber
from probe.schema import Measurement, validate


def run_one(name: str, url: str, settings: Settings, vantage: Vantage) -> Measurement:
    m = asyncio.run(measure(registry.get(name), Target(url, "NEWS"), settings, vantage, "test-run"))
    validate(m)
    return m


def site(farm: Farm, kind: str) -> str:
    return next(s.url for s in farm.sites if s.kind == kind)


def test_ok_site_has_dns_tcp_and_http(farm: Farm, vantage: Vantage) -> None:
    url = site(farm, "ok")
    m = run_one("web_connectivity", url, lab_settings(farm), vantage)
    assert m.failure is None
    assert m.experiment == "web_connectivity" and m.input == url and m.input_category == "NEWS"
    a = [q for q in m.dns if q.query_type == "A"]
    assert a and a[0].engine == "udp" and a[0].resolver == farm.resolver
    ip = next(s.ip for s in farm.sites if s.url == url)
    assert [ans.value for ans in a[0].answers] == [ip]
    # AAAA: the farm is IPv4 only; the query is recorded with its honest "no answer".
    assert [q.failure for q in m.dns if q.query_type == "AAAA"] == ["dns_no_answer"]
    assert [(c.ip, c.failure) for c in m.tcp] == [(ip, None)]
    assert not m.tls  # plain http
    assert len(m.http) == 1 and m.http[0].status_code == 200 and m.http[0].failure is None
    assert m.http[0].title and m.http[0].title.startswith("Site ")
    assert m.runtime_s is not None and 0 < m.runtime_s < 5
    assert registry.get("web_connectivity").succeeded(m)


def test_https_site_has_a_validating_tls_handshake(farm: Farm, vantage: Vantage) -> None:
    m = run_one("web_connectivity", site(farm, "https"), lab_settings(farm), vantage)
    assert len(m.tls) == 1
    tls = m.tls[0]
    assert tls.failure is None and tls.cert_valid is True
    assert tls.sni is not None and tls.sni.endswith(".farm.test")
    assert m.http[-1].status_code == 200


def test_https_without_the_lab_ca_is_unknown_authority(farm: Farm, vantage: Vantage) -> None:
    settings = lab_settings(farm)
    settings.ca_bundle = None
    m = run_one("web_connectivity", site(farm, "https"), settings, vantage)
    assert m.tls[0].failure == "ssl_unknown_authority" and m.tls[0].cert_valid is False
    assert not registry.get("web_connectivity").succeeded(m)


def test_black_hole_is_generic_timeout_within_the_step_budget(farm: Farm, vantage: Vantage) -> None:
    m = run_one("web_connectivity", site(farm, "blackhole"), lab_settings(farm, step=1.0), vantage)
    assert m.tcp[0].failure is None  # it accepts...
    hop = m.http[-1]
    assert hop.failure == "generic_timeout"  # ...and never answers
    # it waited for its step limit (the deadline starts when the HTTP step starts, at or
    # after t=0) and not much longer
    assert hop.t >= 0.95 and hop.t - hop.t0 < 1.5
    assert m.failure is None  # the measurement itself ran: a timeout is data


def test_tls_black_hole_and_http_wait_side_by_side(farm: Farm, vantage: Vantage) -> None:
    # The black hole's port answers nothing, so the TLS ClientHello is never answered either.
    bh = next(s for s in farm.sites if s.kind == "blackhole")
    url = bh.url.replace("http://", "https://")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        m = run_one("web_connectivity", url, lab_settings(farm, step=1.0), vantage)
        gc.collect()
    assert [t.failure for t in m.tls] == ["generic_timeout"]
    assert m.http[-1].failure == "generic_timeout"
    # Both waits ran at the same time: one step limit in all, not two in a row.
    assert m.http[0].t0 < m.tls[0].t and m.tls[0].t0 < m.http[0].t
    # http_get's deadline cancels httpcore while it starts TLS; the socket must still be closed.
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


def test_refused_site_skips_http(farm: Farm, vantage: Vantage) -> None:
    m = run_one("web_connectivity", site(farm, "refused"), lab_settings(farm), vantage)
    assert [c.failure for c in m.tcp] == ["connection_refused"]
    assert m.http == []


def test_redirect_chain_is_recorded_and_resolved_by_our_resolver(farm: Farm, vantage: Vantage) -> None:
    m = run_one("web_connectivity", site(farm, "redirect"), lab_settings(farm), vantage)
    assert [h.status_code for h in m.http] == [302, 200]
    assert m.http[1].url == site(farm, "ok")
    # The redirect target's name was asked of the farm's resolver, and that is on record.
    redirect_queries = [q for q in m.dns if q.tag == "redirect"]
    assert redirect_queries and all(q.resolver == farm.resolver for q in redirect_queries)


def test_nxdomain_has_only_dns(farm: Farm, vantage: Vantage) -> None:
    m = run_one("web_connectivity", "http://no-such-site.farm.test/", lab_settings(farm), vantage)
    assert {q.failure for q in m.dns} == {"dns_nxdomain"}
    assert m.tcp == [] and m.http == []
    assert not registry.get("web_connectivity").succeeded(m)


def test_ip_literal_url_needs_no_dns(farm: Farm, vantage: Vantage) -> None:
    ok = next(s for s in farm.sites if s.kind == "ok")
    url = ok.url.replace(ok.name, ok.ip)
    m = run_one("web_connectivity", url, lab_settings(farm), vantage)
    assert m.dns == [] and m.tcp[0].ip == ok.ip and m.http[0].status_code == 200


def test_probe_address_echoed_by_a_page_is_scrubbed(farm: Farm, vantage: Vantage) -> None:
    echo = next(s for s in farm.sites if s.kind == "echo")
    settings = lab_settings(farm)
    # The farm sees the probe as 127.0.0.1; treat that as the probe's own address.
    settings.scrubber = Scrubber(["127.0.0.1"], discover=False)
    m = run_one("web_connectivity", echo.url, settings, vantage)
    sample = m.http[0].body_sample or ""
    assert "Your address is [scrubbed]" in sample
    assert "127.0.0.1" not in sample


def test_bad_input_is_kept_as_a_record_with_a_failure(farm: Farm, vantage: Vantage) -> None:
    m = run_one("web_connectivity", "ftp://example.farm.test/", lab_settings(farm), vantage)
    assert m.failure is not None and m.failure.startswith("unknown_failure:invalid_input")
    assert m.dns == [] and m.http == []


def test_a_crashing_experiment_still_yields_a_record(vantage: Vantage, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Experiment):
        name = "broken"

        async def run(self, target: Target, net: MeasurementContext) -> list:  # type: ignore[type-arg]
            raise RuntimeError("bug talking to 192.0.2.7")

    m = asyncio.run(measure(Broken(), Target("http://x.test/"), Settings(), vantage, "r1"))
    assert m.failure is not None and m.failure.startswith("unknown_failure:RuntimeError")
    assert "192.0.2.7" not in m.failure  # failure details never carry an address
    assert "failed on http://x.test/" in caplog.text and "192.0.2.7" not in caplog.text  # nor do logs
    validate(m)


def test_an_invalid_failure_string_is_folded_into_unknown_failure(vantage: Vantage) -> None:
    from probe.schema import TcpConnect

    class Sloppy(Experiment):
        name = "sloppy"

        async def run(self, target: Target, net: MeasurementContext) -> list:  # type: ignore[type-arg]
            return [TcpConnect(t0=0.0, t=0.1, failure="weird thing", ip="192.0.2.1", port=80)]

    m = asyncio.run(measure(Sloppy(), Target("http://x.test/"), Settings(), vantage, "r1"))
    assert m.tcp[0].failure == "unknown_failure:weird thing"
    validate(m)


# --------------------------------------------------------------------------- dns_consistency


def test_dns_consistency_asks_udp_and_tcp(farm: Farm, vantage: Vantage) -> None:
    ok = next(s for s in farm.sites if s.kind == "ok")
    m = run_one("dns_consistency", ok.url, lab_settings(farm), vantage)
    engines = sorted({(q.engine, q.query_type) for q in m.dns})
    assert engines == [("tcp", "A"), ("tcp", "AAAA"), ("udp", "A"), ("udp", "AAAA")]
    for q in m.dns:
        if q.query_type == "A":
            assert [a.value for a in q.answers] == [ok.ip]
    # No injection target configured: the check is skipped, and visibly so (no tagged query).
    assert not any(q.tag == "injection_check" for q in m.dns)
    assert registry.get("dns_consistency").succeeded(m)


def test_dns_consistency_accepts_a_bare_hostname(farm: Farm, vantage: Vantage) -> None:
    ok = next(s for s in farm.sites if s.kind == "ok")
    m = run_one("dns_consistency", ok.name, lab_settings(farm, dns_tcp=False), vantage)
    assert {q.engine for q in m.dns} == {"udp"}
    assert all(q.hostname == ok.name for q in m.dns)


def test_injection_check_silence_is_no_injection(farm: Farm, vantage: Vantage) -> None:
    # An address of the farm's block where nothing listens on UDP: silence (or an ICMP
    # port-unreachable), as from any host that runs no resolver.
    ok = next(s for s in farm.sites if s.kind == "ok")
    target = f"{ok.ip}:9"
    m = run_one("dns_consistency", ok.name, lab_settings(farm, injection_target=target, injection_timeout=0.5), vantage)
    checks = [q for q in m.dns if q.tag == "injection_check"]
    assert len(checks) == 1 and checks[0].rcode is None and not checks[0].answers
    assert registry.get("dns_consistency").succeeded(m)


def test_injection_check_answer_is_injection(farm: Farm, vantage: Vantage) -> None:
    # Point the check at the farm's resolver: "an address where no resolver should run" that
    # answers anyway is exactly what an on-path injector looks like.
    ok = next(s for s in farm.sites if s.kind == "ok")
    m = run_one("dns_consistency", ok.name, lab_settings(farm, injection_target=farm.resolver), vantage)
    check = next(q for q in m.dns if q.tag == "injection_check")
    assert check.rcode == "NOERROR" and [a.value for a in check.answers] == [ok.ip]
    assert not registry.get("dns_consistency").succeeded(m)


# --------------------------------------------------------------------------- anchors


@pytest.mark.parametrize("kind", ["tcp", "dns"])
def test_anchor_up(farm: Farm, vantage: Vantage, kind: str) -> None:
    ok = next(s for s in farm.sites if s.kind == "ok")
    port = int(ok.url.rsplit(":", 1)[1].strip("/"))
    ip, dns_port = farm.resolver.split(":")
    # The farm only knows its own names, so the dns anchor asks for one of them.
    url = f"tcp://{ok.ip}:{port}" if kind == "tcp" else f"dns://{ip}:{dns_port}/?name={ok.name}&qtype=A"
    m = run_one("anchors", url, lab_settings(farm), vantage)
    assert registry.get("anchors").succeeded(m), m


def test_anchor_down(farm: Farm, vantage: Vantage) -> None:
    refused = next(s for s in farm.sites if s.kind == "refused")
    port = int(site(farm, "ok").rsplit(":", 1)[1].strip("/"))
    m = run_one("anchors", f"tcp://{refused.ip}:{port}", lab_settings(farm), vantage)
    assert m.tcp[0].failure == "connection_refused"
    assert not registry.get("anchors").succeeded(m)


def test_anchor_http(farm: Farm, vantage: Vantage) -> None:
    m = run_one("anchors", site(farm, "ok"), lab_settings(farm), vantage)
    assert m.http[0].status_code == 200 and registry.get("anchors").succeeded(m)


def test_anchor_bad_input(farm: Farm, vantage: Vantage) -> None:
    m = run_one("anchors", "tcp://not-an-ip:80", lab_settings(farm), vantage)
    assert m.failure is not None and "invalid_input" in m.failure


def test_dns_anchor_default_query_is_root_ns_and_any_reply_means_up(farm: Farm, vantage: Vantage) -> None:
    m = run_one("anchors", f"dns://{farm.resolver}", lab_settings(farm), vantage)
    q = m.dns[0]
    assert (q.hostname, q.query_type, q.engine) == (".", "NS", "udp")
    # The farm is no root server (it says NXDOMAIN for "."), but it answered: reachable.
    assert q.rcode == "NXDOMAIN" and registry.get("anchors").succeeded(m)


def test_dns_consistency_over_doh_finds_the_doh_server_through_our_resolver(farm: Farm, vantage: Vantage) -> None:
    ok = next(s for s in farm.sites if s.kind == "ok")
    doh = next(s for s in farm.sites if s.kind == "https")
    doh_url = doh.url + "dns-query"
    settings = lab_settings(farm, dns_tcp=False)
    settings.resolvers.append(doh_url)
    m = run_one("dns_consistency", ok.name, settings, vantage)
    by_engine = {(q.engine, q.query_type): q for q in m.dns}
    assert set(by_engine) == {("udp", "A"), ("udp", "AAAA"), ("doh", "A"), ("doh", "AAAA")}
    q = by_engine[("doh", "A")]
    # The system resolver is off and knows nothing of *.farm.test anyway: the DoH server's
    # own name was found through the configured resolver, or this query would have failed.
    assert q.resolver == doh_url and q.failure is None and [a.value for a in q.answers] == [ok.ip]
    assert registry.get("dns_consistency").succeeded(m)


@pytest.mark.parametrize(
    ("text", "host"),
    [("example.org", "example.org"), ("Example.ORG.", "example.org"), ("example.org:8080", "example.org"),
     ("example.org/path", "example.org"), ("https://www.example.org/a?b", "www.example.org")],
)
def test_dns_consistency_takes_the_name_from_any_input_form(text: str, host: str) -> None:
    from probe.experiments.dns_consistency import hostname_of

    assert hostname_of(text) == host
