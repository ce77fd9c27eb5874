"""DNS observations against scripted loopback resolvers, hostile ones included."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import dns.message
import dns.rcode
import pytest

from probe.net import dns as netdns
from probe.net.clock import Clock
from probe.net.dns import parse_resolver, resolve_doh, resolve_system, resolve_tcp, resolve_udp
from probe.schema import is_valid_failure

TIMEOUT = 1.0
SLACK = 2.0  # a step must end before timeout + SLACK (+ late window): a bound, not a benchmark


def test_parse_resolver_forms() -> None:
    assert parse_resolver("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_resolver("192.0.2.1:5353") == ("192.0.2.1", 5353)
    assert parse_resolver("[::1]:53") == ("::1", 53)
    assert parse_resolver("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("example.org", "1.2.3.4:0", "[::1", "1.2.3.4:x", "[::1]x"):
        with pytest.raises(ValueError):
            parse_resolver(bad)


def test_udp_answer_records_rcode_ttl_and_cname(lab: SimpleNamespace) -> None:
    def script(q: dns.message.Message, _: bytes) -> list[tuple[float, bytes]]:
        return [(0, lab.answer(q, ("www.example.test.", "CNAME", "example.test."), ("www.example.test.", "A", "192.0.2.10"), ttl=42))]

    async def main() -> None:
        async with lab.udp_dns(script) as resolver:
            q = await resolve_udp("www.example.test", resolver, clock=Clock(), timeout=TIMEOUT, late_window=0.1)
        assert q.failure is None and q.rcode == "NOERROR" and q.engine == "udp"
        assert q.resolver == resolver
        assert [(a.answer_type, a.value, a.ttl) for a in q.answers] == [
            ("CNAME", "example.test.", 42),
            ("A", "192.0.2.10", 42),
        ]
        assert q.late_responses == []
        assert 0 <= q.t0 <= q.t

    asyncio.run(main())


@pytest.mark.parametrize(
    ("rcode", "failure"),
    [(dns.rcode.NXDOMAIN, "dns_nxdomain"), (dns.rcode.SERVFAIL, "dns_servfail"), (dns.rcode.REFUSED, "dns_refused"),
     (dns.rcode.NOERROR, "dns_no_answer"), (dns.rcode.FORMERR, "dns_server_misbehaving")],
)
def test_udp_rcodes(lab: SimpleNamespace, rcode: int, failure: str) -> None:
    async def main() -> None:
        async with lab.udp_dns(lambda q, _: [(0, lab.answer(q, rcode=rcode))]) as resolver:
            q = await resolve_udp("blocked.test", resolver, clock=Clock(), timeout=TIMEOUT, late_window=0.05)
        assert q.failure == failure
        assert q.rcode == dns.rcode.to_text(rcode)

    asyncio.run(main())


def test_answer_that_is_the_probe_address_is_scrubbed(lab: SimpleNamespace) -> None:
    from probe.net.scrub import Scrubber

    def script(q: dns.message.Message, _: bytes) -> list[tuple[float, bytes]]:
        return [(0, lab.answer(q, ("myip.test.", "A", "198.51.100.23"), ("myip.test.", "A", "192.0.2.1"),
                               ("myip.test.", "TXT", '"client 198.51.100.23"')))]

    async def main() -> None:
        scrubber = Scrubber(["198.51.100.23"], discover=False)
        async with lab.udp_dns(script) as resolver:
            q = await resolve_udp("myip.test", resolver, clock=Clock(), timeout=TIMEOUT, late_window=0.05,
                                  scrubber=scrubber)
        assert [a.value for a in q.answers] == ["[scrubbed]", "192.0.2.1", '"client [scrubbed]"']

    asyncio.run(main())


def test_aaaa_only_cname_is_no_answer_for_aaaa(lab: SimpleNamespace) -> None:
    async def main() -> None:
        async with lab.udp_dns(lambda q, _: [(0, lab.answer(q, ("v6.test.", "CNAME", "x.test.")))]) as resolver:
            q = await resolve_udp("v6.test", resolver, "AAAA", clock=Clock(), timeout=TIMEOUT, late_window=0.05)
        assert q.failure == "dns_no_answer" and q.query_type == "AAAA"

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["garbage", "truncated", "wrong_id", "header_only"])
def test_udp_hostile_reply_is_misbehaving_within_timeout(lab: SimpleNamespace, kind: str) -> None:
    def script(q: dns.message.Message, raw: bytes) -> list[tuple[float, bytes]]:
        good = lab.answer(q, ("x.test.", "A", "192.0.2.1"))
        bad = {
            "garbage": b"\xde\xad\xbe\xef" * 50,
            "truncated": good[: len(good) - 3],
            "wrong_id": bytes([good[0] ^ 0xFF]) + good[1:],
            "header_only": good[:12],
        }[kind]
        return [(0, bad)]

    async def main() -> None:
        async with lab.udp_dns(script) as resolver:
            with lab.Timer() as timer:
                q = await resolve_udp("x.test", resolver, clock=Clock(), timeout=TIMEOUT)
        assert q.failure == "dns_server_misbehaving"
        assert q.answers == [] and q.rcode is None
        assert timer.elapsed < TIMEOUT + SLACK

    asyncio.run(main())


def test_udp_junk_first_then_valid_answer_is_used(lab: SimpleNamespace) -> None:
    """Junk must not silence the real answer: the stub keeps listening."""

    def script(q: dns.message.Message, _: bytes) -> list[tuple[float, bytes]]:
        return [(0, b"\x00junk"), (0.05, lab.answer(q, ("x.test.", "A", "192.0.2.7")))]

    async def main() -> None:
        async with lab.udp_dns(script) as resolver:
            q = await resolve_udp("x.test", resolver, clock=Clock(), timeout=TIMEOUT, late_window=0.1)
        assert q.failure is None
        assert [a.value for a in q.answers] == ["192.0.2.7"]

    asyncio.run(main())


def test_udp_injection_two_answers_records_late_response(lab: SimpleNamespace) -> None:
    """An on-path injector answers first with a forged address; the real answer follows."""

    def script(q: dns.message.Message, _: bytes) -> list[tuple[float, bytes]]:
        forged = lab.answer(q, ("site.test.", "A", "10.10.34.35"))
        real = lab.answer(q, ("site.test.", "A", "192.0.2.80"))
        return [(0, forged), (0.1, real)]

    async def main() -> None:
        async with lab.udp_dns(script) as resolver:
            q = await resolve_udp("site.test", resolver, clock=Clock(), timeout=TIMEOUT, late_window=0.5)
        assert q.failure is None
        assert [a.value for a in q.answers] == ["10.10.34.35"]
        assert len(q.late_responses) == 1
        late = q.late_responses[0]
        assert late.rcode == "NOERROR" and [a.value for a in late.answers] == ["192.0.2.80"]
        assert late.t > q.t  # t is when the first answer came, the late one after it

    asyncio.run(main())


def test_udp_no_answer_times_out(lab: SimpleNamespace) -> None:
    async def main() -> None:
        async with lab.udp_dns(lambda q, _: []) as resolver:
            with lab.Timer() as timer:
                q = await resolve_udp("x.test", resolver, clock=Clock(), timeout=TIMEOUT)
        assert q.failure == "generic_timeout"
        assert TIMEOUT * 0.9 <= timer.elapsed < TIMEOUT + SLACK

    asyncio.run(main())


def test_udp_huge_answer_is_capped(lab: SimpleNamespace) -> None:
    def script(q: dns.message.Message, _: bytes) -> list[tuple[float, bytes]]:
        records = [("x.test.", "A", f"192.0.2.{i}") for i in range(1, 200)]
        return [(0, lab.answer(q, *records))]

    async def main() -> None:
        async with lab.udp_dns(script) as resolver:
            q = await resolve_udp("x.test", resolver, clock=Clock(), timeout=TIMEOUT, late_window=0.05)
        assert q.failure is None
        assert len(q.answers) == netdns.MAX_ANSWERS

    asyncio.run(main())


def test_udp_port_unreachable_is_connection_refused() -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        q = await resolve_udp("x.test", f"127.0.0.1:{port}", clock=Clock(), timeout=TIMEOUT)
        assert q.failure in ("connection_refused", "generic_timeout")

    asyncio.run(main())


def test_udp_over_ipv6_loopback(lab: SimpleNamespace, ipv6_loopback: str) -> None:
    async def main() -> None:
        async with lab.udp_dns(lambda q, _: [(0, lab.answer(q, ("x.test.", "AAAA", "2001:db8::5")))], host="::1") as resolver:
            q = await resolve_udp("x.test", resolver, "AAAA", clock=Clock(), timeout=TIMEOUT, late_window=0.05)
        assert resolver.startswith("[::1]:")
        assert q.failure is None and [a.value for a in q.answers] == ["2001:db8::5"]

    asyncio.run(main())


# --------------------------------------------------------------------------- TCP


def _tcp_dns(lab: SimpleNamespace, behaviour: str):  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (length,) = __import__("struct").unpack("!H", await reader.readexactly(2))
        q = dns.message.from_wire(await reader.readexactly(length))
        wire = lab.answer(q, ("x.test.", "A", "192.0.2.9"))
        if behaviour == "close":
            return  # FIN after reading the query
        if behaviour == "reset":
            lab.rst_close(writer)
            return
        if behaviour == "good":
            writer.write(len(wire).to_bytes(2, "big") + wire)
        elif behaviour == "short_frame":
            writer.write(len(wire).to_bytes(2, "big") + wire[:-5])
        elif behaviour == "garbage":
            writer.write(b"\x00\x10" + b"\xff" * 16)
        elif behaviour == "silent":
            await asyncio.sleep(30)
        await writer.drain()

    return handler


@pytest.mark.parametrize(
    ("behaviour", "failure"),
    [("good", None), ("short_frame", "dns_server_misbehaving"), ("garbage", "dns_server_misbehaving"),
     ("close", "eof"), ("reset", "connection_reset"), ("silent", "generic_timeout")],
)
def test_tcp_dns(lab: SimpleNamespace, behaviour: str, failure: str | None) -> None:
    async def main() -> None:
        async with lab.tcp_server(_tcp_dns(lab, behaviour)) as port:
            with lab.Timer() as timer:
                q = await resolve_tcp("x.test", f"127.0.0.1:{port}", clock=Clock(), timeout=TIMEOUT)
        assert q.engine == "tcp" and q.failure == failure
        if failure is None:
            assert [a.value for a in q.answers] == ["192.0.2.9"]
        assert timer.elapsed < TIMEOUT + SLACK

    asyncio.run(main())


def test_tcp_dns_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = asyncio.run(resolve_tcp("x.test", f"127.0.0.1:{port}", clock=Clock(), timeout=TIMEOUT))
    assert q.failure == "connection_refused"


# --------------------------------------------------------------------------- DoH


def _doh_handler(lab: SimpleNamespace, status: str = "200 OK", mangle: bool = False):  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await lab.read_request(reader)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        q = dns.message.from_wire(await reader.readexactly(length))
        wire = lab.answer(q, ("doh.test.", "A", "192.0.2.53"))
        body = wire[:7] if mangle else wire
        writer.write(lab.http_response(body, status, {"Content-Type": "application/dns-message"}))
        await writer.drain()

    return handler


@pytest.mark.parametrize(("status", "mangle", "failure"), [("200 OK", False, None), ("500 Oops", False, "dns_server_misbehaving"), ("200 OK", True, "dns_server_misbehaving")])
def test_doh(lab: SimpleNamespace, tls_ctx, ca_bundle, status: str, mangle: bool, failure: str | None) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with lab.tcp_server(_doh_handler(lab, status, mangle), ssl_ctx=tls_ctx("doh.lab.test")) as port:
            url = f"https://doh.lab.test:{port}/dns-query"
            q = await resolve_doh("doh.test", url, clock=Clock(), timeout=TIMEOUT * 2, verify=str(ca_bundle),
                                  address_map={"doh.lab.test": ["127.0.0.1"]})
        assert q.engine == "doh" and q.resolver == url
        assert q.failure == failure
        if failure is None:
            assert q.rcode == "NOERROR" and [a.value for a in q.answers] == ["192.0.2.53"]

    asyncio.run(main())


def test_doh_untrusted_certificate(lab: SimpleNamespace, tls_ctx) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with lab.tcp_server(_doh_handler(lab), ssl_ctx=tls_ctx("doh.lab.test")) as port:
            q = await resolve_doh("doh.test", f"https://doh.lab.test:{port}/dns-query", clock=Clock(), timeout=TIMEOUT * 2,
                                  address_map={"doh.lab.test": ["127.0.0.1"]})
        assert q.failure == "ssl_unknown_authority"

    asyncio.run(main())


# --------------------------------------------------------------------------- system


def test_system_resolver_ip_literal() -> None:
    # An address literal: getaddrinfo answers without sending any packet.
    a, aaaa = asyncio.run(resolve_system("127.0.0.1", clock=Clock(), timeout=TIMEOUT))
    assert (a.engine, a.resolver, a.query_type, a.failure) == ("system", "system", "A", None)
    assert [x.value for x in a.answers] == ["127.0.0.1"]
    assert aaaa.query_type == "AAAA" and aaaa.failure == "dns_no_answer"


@pytest.mark.parametrize(
    ("err", "failure"),
    [(socket.EAI_NONAME, "dns_nxdomain"), (socket.EAI_AGAIN, "generic_timeout")],
)
def test_system_resolver_errors(monkeypatch: pytest.MonkeyPatch, err: int, failure: str) -> None:
    def fake(*args: object, **kw: object) -> list[object]:
        raise socket.gaierror(err, "fake")

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    out = asyncio.run(resolve_system("blocked.test", clock=Clock(), timeout=TIMEOUT))
    assert [q.failure for q in out] == [failure, failure]


def test_system_resolver_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    import time as _time

    def slow(*args: object, **kw: object) -> list[object]:
        _time.sleep(0.5)
        return []

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    out = asyncio.run(resolve_system("slow.test", clock=Clock(), timeout=0.1))
    assert all(q.failure == "generic_timeout" for q in out)


def test_failures_are_in_closed_set(lab: SimpleNamespace) -> None:
    async def main() -> None:
        async with lab.udp_dns(lambda q, _: [(0, b"junk")]) as resolver:
            q = await resolve_udp("x.test", resolver, clock=Clock(), timeout=0.3)
        assert is_valid_failure(q.failure)
        bad = await resolve_udp("-" * 70 + ".test", "127.0.0.1:9", clock=Clock(), timeout=0.3)
        assert bad.failure is not None and bad.failure.startswith("unknown_failure:")

    asyncio.run(main())


