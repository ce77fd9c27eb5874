"""Rules as data: every rule of analysis.rules.RULES fires on a case of its own, the decision tree
names only rules of the table (and all of them), and docs/analysis.md lists the same table."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from test_connectivity import controls, site
from test_messaging_verdicts import RULE_CASES as MESSAGING_CASES
from test_throttling import THROUGHPUT_CASES
from test_verdict_quic import quic_pair
from test_verdicts import BLOCKPAGE, SITE_IP, control_of, verdicts, vpn, web

from analysis import rules
from analysis.rules import RULES, RULES_BY_ID
from probe.schema import DnsQuery, Measurement, TlsHandshake
from tests.support.paths import DOCS as DOCS_DIR

DOCS = DOCS_DIR / "analysis.md"
LIE = "130.192.182.17"  # a public address that is not the site's

Case = Callable[[], tuple[list[Measurement], Measurement]]


def paired(p: Measurement, **control: object) -> tuple[list[Measurement], Measurement]:
    return [p, control_of(p, **control)], p  # type: ignore[arg-type]


def alone(p: Measurement) -> tuple[list[Measurement], Measurement]:
    return [p], p


def vpn_pair(failure: str | None, *, received: int = 0, control_ok: bool = True) -> tuple[list[Measurement], Measurement]:
    p = vpn(ok=failure is None, failure=failure, received=received)
    c = vpn("control", ok=control_ok, failure=None if control_ok else "generic_timeout", control_for=p.measurement_id)
    return [p, c], p


def dns_only(ips: list[str]) -> tuple[list[Measurement], Measurement]:
    # A dns_consistency-style measurement: lookups only.
    p = web(ips=ips)
    p.experiment, p.tcp, p.http = "dns_consistency", [], []
    c = control_of(p)
    c.experiment, c.tcp, c.http = "dns_consistency", [], []
    return [p, c], p


def redirect_failure(failure: str) -> tuple[list[Measurement], Measurement]:
    p = web(http_failure="unknown_failure:dns_lookup")
    p.dns.append(DnsQuery(t0=0.5, t=0.6, failure=failure, resolver="system", engine="system", query_type="A",
                          hostname="next.example", rcode="NXDOMAIN" if failure == "dns_nxdomain" else "SERVFAIL",
                          tag="redirect"))
    return paired(p)


def tls_passthrough_box() -> tuple[list[Measurement], Measurement]:
    p = web(ips=[LIE], status=403, body="forbidden", title="Forbidden")
    p.tls.append(TlsHandshake(t0=0.2, t=0.3, failure=None, ip=LIE, port=443, sni="site.example", cert_valid=True))
    return paired(p)


def dark() -> tuple[list[Measurement], Measurement]:
    probe = [site(i, tcp_failure="network_unreachable") for i in range(12)]
    return probe + controls(12), probe[0]


def dark_control() -> tuple[list[Measurement], Measurement]:
    probe = [site(i, tcp_failure="connection_reset") for i in range(12)]
    return probe + controls(12, tcp_failure="network_unreachable"), probe[0]


def failed_control() -> tuple[list[Measurement], Measurement]:
    p = web(tcp_failure="connection_reset")
    return [p, web("control", control_for=p.measurement_id, failure="unknown_failure:helper_error")], p


CASES: dict[str, Case] = {
    "connectivity.lost": dark,
    "probe_failure.measurement": lambda: alone(web(failure="unknown_failure:bad_input")),
    "dns.blockpage_ip": lambda: paired(web(ips=["198.18.0.66"])),
    "http.blockpage": lambda: paired(web(body=BLOCKPAGE, title="Blocked")),
    "ok.vpn_handshake": lambda: vpn_pair(None),
    "no_control.vpn": lambda: alone(vpn(ok=False, failure="generic_timeout")),
    "vpn.handshake_failure": lambda: vpn_pair("vpn_handshake_failure", received=1),
    "vpn.reset": lambda: vpn_pair("connection_reset"),
    "vpn.refused": lambda: vpn_pair("connection_refused"),
    "vpn.no_answer_after_first": lambda: vpn_pair("generic_timeout", received=2),
    "vpn.timeout": lambda: vpn_pair("generic_timeout"),
    "vpn.failure": lambda: vpn_pair("eof"),
    "down.vpn_both_failed": lambda: vpn_pair("generic_timeout", control_ok=False),
    **MESSAGING_CASES,  # tests/analysis/test_messaging_verdicts.py
    "dns.injected": lambda: paired(web(ips=["1.2.3.4"], late=[SITE_IP])),
    "ok.https_no_control": lambda: alone(web(url="https://site.example/")),
    "no_control.none": lambda: alone(web(tcp_failure="connection_reset")),
    "no_control.control_failed": failed_control,
    "no_control.control_offline": dark_control,
    "dns.bogon": lambda: paired(web(ips=["10.10.34.35"])),
    "probe_failure.interrupted": lambda: paired(web(http_failure="interrupted")),
    "dns.nxdomain_ctrl_ok": lambda: paired(web(dns_failure="dns_nxdomain")),
    "dns.failure_ctrl_ok": lambda: paired(web(dns_failure="dns_servfail")),
    "dns.no_answer_ctrl_ok": lambda: paired(web(dns_failure="connection_reset")),  # a DoH transport error
    "down.dns_both_failed": lambda: paired(web(dns_failure="dns_nxdomain"), dns_failure="dns_nxdomain"),
    "dns.answer_ctrl_nxdomain": lambda: paired(web(ips=["83.224.65.41"]), dns_failure="dns_nxdomain"),
    "dns.inconsistent": lambda: paired(web(ips=[LIE], tcp_failure="connection_refused")),
    "quic.timeout": lambda: quic_pair("generic_timeout"),
    "quic.refused": lambda: quic_pair("connection_refused"),
    "quic.unreachable": lambda: quic_pair("network_unreachable"),
    "quic.reset": lambda: quic_pair("eof"),
    "quic.handshake_failure": lambda: quic_pair("quic_version_negotiation_failure"),
    "quic.invalid_cert": lambda: quic_pair("ssl_unknown_authority"),
    "quic.failure": lambda: quic_pair("unknown_failure:weird"),
    "ok.https_validated": lambda: paired(web(url="https://site.example/")),
    "dns.inconsistent_no_ctrl_page": lambda: paired(web(ips=[LIE]), http_failure="eof"),
    "ok.http_no_ctrl_page": lambda: paired(web(), http_failure="eof"),
    "dns.foreign_page_diff": tls_passthrough_box,
    "http.status_diff": lambda: paired(web(status=403, body="forbidden", title="Forbidden")),
    "http.body_diff": lambda: paired(web(body="<html><title>Notice</title>short</html>", title="Notice",
                                         headers=[("X-Filter", "1")]), headers=[("X-Origin", "a")]),
    "http.title_diff": lambda: paired(web(body="", title="Notice from the operator", headers=[("X-Filter", "1")]),
                                      headers=[("X-Origin", "a")]),
    "http.header_diff": lambda: paired(web(body="", title=None, headers=[("X-Filter", "1")]), headers=[("X-Origin", "a")]),
    "ok.http_matches": lambda: paired(web()),
    "tcp.blocked_quic_ok": lambda: quic_pair(None, tcp_failure="connection_reset"),
    "tls.blocked_quic_ok": lambda: quic_pair(None, tls_failure="generic_timeout"),
    "tcp.reset": lambda: paired(web(tcp_failure="connection_reset")),
    "tcp.timeout": lambda: paired(web(tcp_failure="generic_timeout")),
    "tcp.refused": lambda: paired(web(tcp_failure="connection_refused")),
    "tcp.eof": lambda: paired(web(tcp_failure="eof")),
    "tcp.unreachable": lambda: paired(web(tcp_failure="host_unreachable")),
    "tcp.failure": lambda: paired(web(tcp_failure="unknown_failure:weird")),
    "tls.reset_sni": lambda: paired(web(url="https://site.example/", tls_failure="connection_reset")),
    "tls.timeout": lambda: paired(web(url="https://site.example/", tls_failure="generic_timeout")),
    "tls.refused": lambda: paired(web(url="https://site.example/", tls_failure="connection_refused")),
    "tls.eof": lambda: paired(web(url="https://site.example/", tls_failure="eof")),
    "tls.unreachable": lambda: paired(web(url="https://site.example/", tls_failure="host_unreachable")),
    "tls.invalid_cert": lambda: paired(web(url="https://site.example/", tls_failure="ssl_unknown_authority")),
    "tls.failure": lambda: paired(web(url="https://site.example/", tls_failure="tls_handshake_failure")),
    "dns.redirect_nxdomain_ctrl_ok": lambda: redirect_failure("dns_nxdomain"),
    "dns.redirect_failure_ctrl_ok": lambda: redirect_failure("dns_servfail"),
    "http.failure": lambda: paired(web(http_failure="connection_reset")),
    "down.both_failed": lambda: paired(web(tcp_failure="generic_timeout"), tcp_failure="generic_timeout"),
    "dns.inconsistent_dns_only": lambda: dns_only([LIE]),
    "ok.nothing_failed": lambda: dns_only([SITE_IP]),
    **THROUGHPUT_CASES,  # throughput (throttling): tests/analysis/test_throttling.py
}


def test_every_rule_has_a_case() -> None:
    assert set(CASES) == set(RULES_BY_ID)


@pytest.mark.parametrize("rule_id", [r.id for r in RULES])
def test_rule_fires(tmp_path: Path, rule_id: str) -> None:
    records, target = CASES[rule_id]()
    v = verdicts(tmp_path, records)[target.measurement_id]
    rule = RULES_BY_ID[rule_id]
    assert v["method"].split(":", 1)[0] == rule_id, v
    assert v["status"] == rule.status
    if rule.confidence is not None:
        assert v["confidence"] == pytest.approx(rule.confidence)
    if rule.status == "blocked":
        assert v["layer"] == rule.layer
    else:
        assert v["layer"] is None


def test_the_decision_tree_names_every_rule_of_the_table_and_no_other() -> None:
    assert rules.fired_rule_ids(rules.DECISION_TREE) == set(RULES_BY_ID)
    # No method string outside the table: the tree's only quoted ids are the filled-in ones.
    tree = re.sub(r"\$rule:[a-z0-9_.]+|\$family:[a-z]+\([^()]*\)", "", rules.DECISION_TREE)
    quoted = set(re.findall(r"'([a-z_]+\.[a-z0-9_.]+)'", tree))
    assert quoted <= set(RULES_BY_ID), quoted - set(RULES_BY_ID)
    sql = rules.decision_sql()
    assert "$rule" not in sql and "$family" not in sql


def test_the_table_is_in_the_order_the_tree_tries_the_rules() -> None:
    # First appearance of each rule in the tree (a family's rules in table order, then .failure).
    seen: list[str] = []
    for m in re.finditer(r"\$rule:([a-z0-9_.]+)|\$family:([a-z]+)\(", rules.DECISION_TREE):
        ids = [m.group(1)] if m.group(1) else sorted(
            rules.fired_rule_ids(m.group(0) + ")"), key=lambda i: [r.id for r in RULES].index(i))
        seen += [i for i in ids if i not in seen]
    assert seen == [r.id for r in RULES]


def test_an_unknown_rule_id_is_an_error() -> None:
    with pytest.raises(ValueError, match="dns.made_up"):
        rules.fill_rules("CASE WHEN true THEN $rule:dns.made_up END")


def test_rules_are_well_formed() -> None:
    from analysis.verdicts import LAYERS, STATUSES

    for r in RULES:
        assert r.status in STATUSES and r.explanation.strip(), r
        assert (r.layer in LAYERS) if r.status == "blocked" else r.layer is None, r
        assert r.confidence is None or 0.0 <= r.confidence <= 1.0, r
        # Non-blocking rules say their status first, so a method alone tells what it means.
        if r.status != "blocked":
            assert r.id.split(".")[0] in (r.status, "connectivity"), r


def test_docs_list_the_same_rules() -> None:
    text = DOCS.read_text(encoding="utf-8")
    m = re.search(r"<!-- BEGIN RULES[^>]*-->\n(.*?)<!-- END RULES -->", text, re.S)
    assert m, "docs/analysis.md lacks the BEGIN/END RULES markers"
    assert m.group(1) == rules.rules_markdown(), "docs/analysis.md's rule table is stale: regenerate with rules_markdown()"

