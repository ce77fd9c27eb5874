"""probe.net.pathtrace: the decision (where the first answer that cannot be the target's came
from) without sockets, the packet parsing on crafted packets, and one real trace on loopback
(root only: it opens raw sockets)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dns.message
import dns.rrset
import pytest
from scapy.all import ICMP, IP, TCP, UDP  # type: ignore[attr-defined]

from probe.net import pathtrace as pt
from probe.schema import PathHop


def te(ttl: int, addr: str) -> PathHop:
    return PathHop(ttl=ttl, responder=addr, kind="time_exceeded")


def test_an_answer_that_drew_time_exceeded_is_the_censors() -> None:
    hops = [te(1, "10.0.1.1"), te(2, "10.0.2.1"), PathHop(ttl=3, responder="10.0.3.1", kind="rst")]
    loc = pt.locate(hops)
    assert (loc.interference_ttl, loc.interference, loc.hop_before, loc.basis) == (3, "rst", "10.0.2.1", "icmp")
    assert not pt.needs_control(hops)


def test_the_targets_own_answer_locates_nothing() -> None:
    # The trap: no interference anywhere; the target answers at its distance as it answers
    # the control replay, with no time-exceeded at that TTL (the target is the destination).
    hops = [te(1, "10.0.1.1"), te(2, "10.0.2.1"), PathHop(ttl=3, responder=None, kind="tls")]
    control = [te(1, "10.0.1.1"), te(2, "10.0.2.1"), PathHop(ttl=3, responder=None, kind="tls")]
    assert pt.needs_control(hops)
    loc = pt.locate(hops, control)
    assert loc.interference_ttl is None and loc.target_ttl == 3
    assert pt.locate(hops).interference_ttl is None  # without a control replay: undecided, not blamed


def test_an_answer_before_the_target_without_icmp_is_located_by_the_control() -> None:
    # The censor's router sends no time-exceeded (filtered, or rate-limited to nothing).
    hops = [te(1, "10.0.1.1"), PathHop(ttl=2, responder=None, kind="rst")]
    control = [te(1, "10.0.1.1"), PathHop(ttl=2, responder=None, kind="no_response"), te(3, "10.0.3.1"),
               PathHop(ttl=4, responder=None, kind="tls")]
    loc = pt.locate(hops, control)
    assert (loc.interference_ttl, loc.hop_before, loc.basis, loc.target_ttl) == (2, "10.0.1.1", "before_target", 4)


def test_a_different_answer_at_the_targets_distance() -> None:
    hops = [te(1, "10.0.1.1"), PathHop(ttl=2, responder=None, kind="rst")]
    control = [te(1, "10.0.1.1"), PathHop(ttl=2, responder=None, kind="tls")]
    loc = pt.locate(hops, control)
    assert (loc.interference_ttl, loc.basis) == (2, "differs_at_target")
    same = pt.locate(hops, [te(1, "10.0.1.1"), PathHop(ttl=2, responder=None, kind="rst")])
    assert same.interference_ttl is None  # the target itself resets both: not a censor on the path


def test_hop_before_falls_back_to_the_control_replay() -> None:
    hops = [PathHop(ttl=1, responder=None, kind="no_response"), PathHop(ttl=2, responder="10.0.2.1", kind="http")]
    control = [te(1, "192.168.1.1"), te(2, "10.0.2.1"), PathHop(ttl=3, responder=None, kind="http")]
    assert pt.locate(hops, control).hop_before == "192.168.1.1"
    assert pt.locate(hops).hop_before is None


def test_unreachable_or_silence_locates_nothing() -> None:
    hops = [te(1, "10.0.1.1"), PathHop(ttl=2, responder="10.0.2.9", kind="unreachable")]
    assert pt.locate(hops).interference_ttl is None
    assert pt.locate([]).interference_ttl is None


def test_a_global_first_hop_is_withheld() -> None:
    # A home router answering from its WAN side shows the volunteer's public address.

    assert pt.publishable("8.8.8.8", 1) is None
    assert pt.publishable("192.168.1.1", 1) == "192.168.1.1"
    assert pt.publishable("100.64.0.1", 1) == "100.64.0.1"  # carrier-grade NAT
    assert pt.publishable("8.8.8.8", 2) == "8.8.8.8"
    assert pt.Replay(responder="8.8.8.8", icmp="time_exceeded").hop(1).responder is None


def test_payload_kinds() -> None:
    kind, detail = pt.describe_payload(b"HTTP/1.1 302 Found\r\nLocation: http://block.test/\r\n\r\n")
    assert kind == "http" and detail == "HTTP/1.1 302 Found location=http://block.test/"
    assert pt.describe_payload(b"\x16\x03\x03\x00\x10")[0] == "tls"
    assert pt.describe_payload(b"\x00\x01junk")[0] == "data"
    hello = pt.client_hello("blocked.test")
    assert hello[0] == 0x16 and b"blocked.test" in hello
    assert b"Host: blocked.test\r\n" in pt.http_request("blocked.test", "/x")


def test_dns_answers_are_matched_by_id() -> None:
    qid, wire = pt.dns_query("blocked.test")
    reply = dns.message.make_response(dns.message.from_wire(wire))
    reply.answer.append(dns.rrset.from_text("blocked.test.", 60, "IN", "A", "10.9.9.9"))
    assert pt.describe_dns(reply.to_wire(), qid) == "NOERROR A 10.9.9.9"
    assert pt.describe_dns(reply.to_wire(), (qid + 1) % 65536) is None
    assert pt.describe_dns(wire, qid) is None  # the query itself is not an answer
    assert pt.describe_dns(b"\x00garbage", qid) is None


def _watcher(proto: int) -> pt.Watcher:
    w = object.__new__(pt.Watcher)
    w.proto = proto
    return w


def test_icmp_errors_are_matched_to_our_packet() -> None:
    w = _watcher(socket.IPPROTO_TCP)
    quoted = IP(src="10.0.0.2", dst="10.0.9.9", ttl=1) / TCP(sport=40000, dport=443)
    pkt = bytes(IP(src="10.0.1.1", dst="10.0.0.2") / ICMP(type=11, code=0) / bytes(quoted)[:28])
    assert w.icmp_for(pkt, "10.0.9.9", 40000, 443) == ("10.0.1.1", "time_exceeded")
    assert w.icmp_for(pkt, "10.0.9.9", 40001, 443) is None  # another flow of ours
    assert w.icmp_for(pkt, "10.0.9.8", 40000, 443) is None
    unreach = bytes(IP(src="10.0.9.9", dst="10.0.0.2") / ICMP(type=3, code=3)
                    / bytes(IP(src="10.0.0.2", dst="10.0.9.9") / UDP(sport=5353, dport=53))[:28])
    assert _watcher(socket.IPPROTO_UDP).icmp_for(unreach, "10.0.9.9", 5353, 53) == ("10.0.9.9", "unreachable")
    assert w.icmp_for(unreach, "10.0.9.9", 5353, 53) is None  # not TCP


def test_tcp_segments() -> None:
    rst = bytes(TCP(sport=443, dport=40000, flags="RA"))
    assert pt._tcp_answer(rst, 64) == ("rst", None)
    assert pt._tcp_answer(bytes(TCP(flags="A")), 64) is None  # the target acknowledging our payload
    assert pt._tcp_answer(bytes(TCP(flags="FA")), 64) == ("fin", None)
    assert pt._tcp_answer(bytes(TCP(flags="PA") / b"HTTP/1.1 200 OK\r\n\r\n"), 64) == ("http", "HTTP/1.1 200 OK")


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loopback_http() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_real_trace_on_loopback_reaches_the_target_at_ttl_1(loopback_http: int) -> None:
    problem = pt.privilege_problem()
    if problem:
        pytest.skip(problem)
    # Loopback has no router: TTL 1 reaches the server, whose answer is the target's own.
    hops, failure = pt.trace("http", "127.0.0.1", loopback_http, "lab.test",
                             pt.TraceSettings(max_ttl=3, wait=0.5, tries=1))
    assert failure is None
    assert [(h.ttl, h.kind, h.responder) for h in hops] == [(1, "http", None)]
    assert hops[0].detail == "HTTP/1.0 200 OK"
    assert pt.locate(hops, hops).interference_ttl is None


def test_a_down_target_is_a_failure_not_a_hop() -> None:
    problem = pt.privilege_problem()
    if problem:
        pytest.skip(problem)
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        hops, failure = pt.trace("tls", "127.0.0.1", port, "lab.test", pt.TraceSettings(max_ttl=2, wait=0.2))
    assert (hops, failure) == ([], "connection_refused")


def test_no_privilege_is_one_clear_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(pt.socket, "socket", refuse)
    assert pt.privilege_problem() == pt.NEED_PRIVILEGE
    assert "CAP_NET_RAW" in pt.NEED_PRIVILEGE


def silent(ttl: int) -> PathHop:
    return PathHop(ttl=ttl, responder=None, kind="no_response")


def test_a_dropping_censor_is_where_the_offending_packet_vanishes() -> None:
    hops = [te(1, "10.0.1.1"), te(2, "10.0.2.1"), silent(3), silent(4), silent(5)]
    control = [te(1, "10.0.1.1"), te(2, "10.0.2.1"), te(3, "10.0.3.1"), PathHop(ttl=4, responder=None, kind="tls")]
    assert pt.needs_control(hops)
    loc = pt.locate(hops, control)
    assert (loc.interference_ttl, loc.interference, loc.hop_before, loc.basis) == (3, "drop", "10.0.2.1", "dropped")


def test_silence_the_control_shares_is_no_censor() -> None:
    hops = [te(1, "10.0.1.1"), te(2, "10.0.2.1"), silent(3), silent(4)]
    # The target is down: the benign replay falls silent at the same place.
    assert pt.locate(hops, [te(1, "10.0.1.1"), te(2, "10.0.2.1"), silent(3), silent(4)]).interference_ttl is None
    # A router that never sends time-exceeded (hop 3), then the benign replay goes on: the
    # offending one's silence at 3 is that router's, and it also vanished later: not located at 3.
    control = [te(1, "10.0.1.1"), te(2, "10.0.2.1"), silent(3), te(4, "10.0.4.1"), PathHop(5, None, "tls")]
    assert pt.locate(hops, control).interference_ttl is None
    assert pt.locate(hops).interference_ttl is None  # no control replay: undecided
