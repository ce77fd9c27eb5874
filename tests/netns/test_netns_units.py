"""Parts of the netns lab that need no root: scoring against the ground truth, the DPI box's
ClientHello/HTTP parsing and the resets it forges, the censor's nftables ruleset text, and
TopologyLab's lifecycle (over a topology that creates nothing).
"""

from __future__ import annotations

import ssl

import pytest

from .dpi_inline import Dpi, parse_http, parse_sni
from .scenarios import SCENARIOS, addresses, by_url
from .scoring import MISSING, Truth, render, score
from .topology import Topology, TopologyLab

TRUTHS = [
    Truth("a", "https://a.lab.test/", "blocked", "dns"),
    Truth("b", "https://b.lab.test/", "blocked", "tls"),
    Truth("c", "https://c.lab.test/", "ok", None),
    Truth("d", "https://d.lab.test/", "down", None),
]


def test_score_counts_precision_recall_and_layers() -> None:
    verdicts = [
        {"input": "https://a.lab.test/", "status": "blocked", "layer": "dns", "method": "dns.nxdomain_ctrl_ok"},
        {"input": "https://b.lab.test/", "status": "blocked", "layer": "tcp_ip", "method": "tcp.reset"},
        {"input": "https://c.lab.test/", "status": "blocked", "layer": "http-diff", "method": "http.body_diff"},
    ]
    result = score(TRUTHS, verdicts)
    assert (result.tp, result.fp, result.fn) == (2, 1, 0)
    assert result.precision == pytest.approx(2 / 3) and result.recall == 1.0
    assert [r.truth.name for r in result.wrong_layer] == ["b"]
    assert [r.truth.name for r in result.false_blocks] == ["c"]
    assert result.layer_agreement() == {"dns": (1, 1), "tls": (0, 1)}
    assert result.confusion[("down", MISSING)] == 1  # no verdict is not a pass
    text = render(result)
    assert "precision 0.667  recall 1.000" in text and "<-- wrong" in text


def test_score_all_right_and_nothing_called() -> None:
    right = [{"input": t.input, "status": t.status, "layer": t.layer} for t in TRUTHS]
    result = score(TRUTHS, right)
    assert (result.precision, result.recall, result.status_agreement) == (1.0, 1.0, 4)
    nothing = score(TRUTHS, [])
    assert (nothing.precision, nothing.recall) == (0.0, 0.0)


def _client_hello(sni: str) -> bytes:
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def test_parse_sni_of_a_real_client_hello() -> None:
    hello = _client_hello("snireset.lab.test")
    assert parse_sni(hello) == "snireset.lab.test"
    assert parse_sni(hello[:60]) is None  # cut before the extensions: no answer, no crash
    assert parse_sni(b"GET / HTTP/1.1\r\n\r\n") is None
    assert parse_sni(b"\x16\x03\x01\x00\x05\x01\xff") is None


def test_parse_http_host_and_target() -> None:
    assert parse_http(b"GET /news/x.html HTTP/1.1\r\nHost: A.lab.test:80\r\n\r\n") == ("a.lab.test", "/news/x.html")
    assert parse_http(b"\x16\x03\x01garbage") == (None, "")


def test_dpi_forges_resets_both_ways_and_blackholes_the_flow() -> None:
    from scapy.all import IP, TCP, raw  # type: ignore[attr-defined]

    dpi = Dpi({"sni": {"snireset.lab.test": "reset", "snidrop.lab.test": "drop"}})
    hello = _client_hello("snireset.lab.test")
    pkt = raw(IP(src="10.77.1.2", dst="10.77.3.18") / TCP(sport=40000, dport=443, flags="PA", seq=1000, ack=5000) / hello)
    out = dpi.packets_for(pkt)
    assert len(out) == 2
    to_client, to_server = IP(out[0]), IP(out[1])
    assert (to_client.src, to_client.dst, to_client[TCP].seq, to_client[TCP].ack) == (
        "10.77.3.18", "10.77.1.2", 5000, 1000 + len(hello))
    assert "R" in str(to_client[TCP].flags) and to_server[TCP].seq == 1000 and to_server.dst == "10.77.3.18"
    assert dpi.packets_for(pkt) == []  # a retransmission of the flow goes nowhere
    other = raw(IP(src="10.77.1.2", dst="10.77.3.10") / TCP(sport=40001, dport=443, flags="PA", seq=1, ack=1)
                / _client_hello("plain.lab.test"))
    assert dpi.packets_for(other) == [other]
    dropped = raw(IP(src="10.77.1.2", dst="10.77.3.19") / TCP(sport=40002, dport=443, flags="PA", seq=1, ack=1)
                  / _client_hello("snidrop.lab.test"))
    assert dpi.packets_for(dropped) == []


def test_scenarios_are_consistent() -> None:
    names = [sc.name for sc in SCENARIOS]
    assert len(set(names)) == len(names)
    assert len(by_url()) == len(SCENARIOS)
    flat = [ip for ips in addresses().values() for ip in ips]
    assert len(set(flat)) == len(flat)
    for sc in SCENARIOS:
        assert sc.status in ("ok", "blocked", "down")
        assert (sc.layer is not None) == (sc.status == "blocked"), sc.name
        assert (sc.technique is not None) == (sc.status == "blocked"), sc.name


def test_without_root_the_lab_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from . import topology

    monkeypatch.setattr(topology.os, "geteuid", lambda: 1000)
    reason = topology.netns_unusable_reason()
    assert reason is not None and "needs root" in reason
    assert topology.missing_programs(["ip", "vantage-no-such-program"]) == ["vantage-no-such-program"]


def test_censor_rulesets_are_scenario_specific() -> None:
    from .vpn_lab import VPN_SCENARIOS, vpn_censor_ruleset

    text = vpn_censor_ruleset()
    for sc in VPN_SCENARIOS:
        assert (f"ip daddr {sc.address} " in text) == (sc.mode in ("drop", "reset", "dpi")), sc.name
    assert "ct original packets > 1 drop" in text  # OpenVPN/UDP: the flow-tracking DPI


class _NoNamespaces(Topology):
    """A Topology whose bring-up creates nothing: counts what the lab's lifecycle calls."""

    def __init__(self) -> None:
        super().__init__(prefix="vt0unit")
        self.ups = self.closes = 0

    def up(self) -> None:
        self.ups += 1

    def close(self) -> None:
        self.closes += 1
        super().close()


class _Lab(TopologyLab):
    def __init__(self, fail: bool) -> None:
        super().__init__(_NoNamespaces())
        self.fail = fail
        self.built = False

    def build(self) -> None:
        if self.fail:
            raise RuntimeError("a server did not start")
        self.built = True


def test_topology_lab_tears_down_when_its_build_fails() -> None:
    lab = _Lab(fail=True)
    with pytest.raises(RuntimeError, match="did not start"):
        lab.__enter__()
    assert isinstance(lab.topo, _NoNamespaces)
    assert (lab.topo.ups, lab.topo.closes) == (1, 1) and not lab.workdir.exists()


def test_topology_lab_builds_then_tears_down_on_exit_even_when_the_body_fails() -> None:
    lab = _Lab(fail=False)
    with pytest.raises(ValueError), lab as entered:
        assert entered is lab and lab.built and lab.workdir.is_dir()
        raise ValueError("a test failed")
    assert isinstance(lab.topo, _NoNamespaces)
    assert (lab.topo.ups, lab.topo.closes) == (1, 1) and not lab.workdir.exists()
    lab.close()  # idempotent: the fixture's finalizer calls it again
    assert not lab.topo._created
