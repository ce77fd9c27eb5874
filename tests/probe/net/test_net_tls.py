"""TLS and TCP observations against loopback servers with trustme certificates."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import socket
import ssl
from types import SimpleNamespace

import pytest

from probe.net.clock import Clock
from probe.net.tcp import tcp_connect
from probe.net.tls import tls_handshake

TIMEOUT = 1.0
SLACK = 2.0


async def _idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)  # the TLS server's handshake happens before this handler runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_connect_ok_and_refused(lab: SimpleNamespace) -> None:
    async def main() -> None:
        async with lab.tcp_server(_idle, host="127.0.0.2") as port:
            ok = await tcp_connect("127.0.0.2", port, clock=Clock(), timeout=TIMEOUT)
        assert ok.failure is None and (ok.ip, ok.port) == ("127.0.0.2", port)
        refused = await tcp_connect("127.0.0.1", _free_port(), clock=Clock(), timeout=TIMEOUT)
        assert refused.failure == "connection_refused"
        bad = await tcp_connect("not-an-ip", 80, clock=Clock(), timeout=TIMEOUT)
        assert bad.failure == "unknown_failure:invalid_address"

    asyncio.run(main())


def test_tcp_connect_ipv6(lab: SimpleNamespace, ipv6_loopback: str) -> None:
    async def main() -> None:
        async with lab.tcp_server(_idle, host="::1") as port:
            ok = await tcp_connect("::1", port, clock=Clock(), timeout=TIMEOUT)
        assert ok.failure is None

    asyncio.run(main())


def test_tls_valid_certificate_details(lab: SimpleNamespace, tls_ctx, ca_bundle) -> None:  # type: ignore[no-untyped-def]
    server_ctx = tls_ctx("site.test", "www.site.test", "127.0.0.1", common_name="site.test")
    server_ctx.set_alpn_protocols(["http/1.1"])

    async def main() -> None:
        async with lab.tcp_server(_idle, ssl_ctx=server_ctx) as port:
            rec = await tls_handshake("127.0.0.1", port, "site.test", clock=Clock(), timeout=TIMEOUT, ca_bundle=ca_bundle)
            # the same certificate the server presents
            der = await _server_cert(port)
        assert rec.failure is None and rec.cert_valid is True
        assert rec.tls_version in ("TLSv1.2", "TLSv1.3") and rec.cipher_suite
        assert rec.alpn == "http/1.1"
        assert rec.peer_cert_names == ["site.test", "www.site.test", "127.0.0.1"]
        assert rec.peer_cert_issuer and "trustme" in rec.peer_cert_issuer
        assert rec.peer_cert_sha256 == hashlib.sha256(der).hexdigest()

    asyncio.run(main())


async def _server_cert(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="x")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.transport.abort()
    return bytes(der)


@pytest.mark.parametrize(
    ("case", "failure"),
    [("untrusted", "ssl_unknown_authority"), ("wrong_name", "ssl_invalid_hostname"), ("expired", "ssl_invalid_certificate")],
)
def test_tls_invalid_certificate_still_recorded(lab: SimpleNamespace, tls_ctx, ca_bundle, case: str, failure: str) -> None:  # type: ignore[no-untyped-def]
    if case == "expired":
        now = dt.datetime.now(dt.UTC)
        server_ctx = tls_ctx("site.test", not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    else:
        server_ctx = tls_ctx("blockpage.test" if case == "wrong_name" else "site.test")
    bundle = None if case == "untrusted" else ca_bundle

    async def main() -> None:
        async with lab.tcp_server(_idle, ssl_ctx=server_ctx) as port:
            rec = await tls_handshake("127.0.0.1", port, "site.test", clock=Clock(), timeout=TIMEOUT, ca_bundle=bundle)
        assert rec.failure == failure
        assert rec.cert_valid is False
        assert rec.peer_cert_sha256 is not None and len(rec.peer_cert_sha256) == 64
        assert rec.peer_cert_names == ["blockpage.test" if case == "wrong_name" else "site.test"]
        assert rec.tls_version is not None

    asyncio.run(main())


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1024)
    writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"\x00\xff" * 100)
    await writer.drain()
    await asyncio.sleep(5)


async def _close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1024)  # read the ClientHello, then FIN


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


def _reset_after_hello(lab: SimpleNamespace):  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # an SNI-filtering middlebox resets on the ClientHello
        lab.rst_close(writer)

    return handler


@pytest.mark.parametrize(
    ("behaviour", "failures"),
    [("garbage", {"tls_handshake_failure"}), ("close", {"eof"}), ("reset", {"connection_reset"}),
     ("silent", {"generic_timeout"})],
)
def test_tls_hostile_servers(lab: SimpleNamespace, behaviour: str, failures: set[str]) -> None:
    handler = {"garbage": _garbage, "close": _close, "silent": _silent, "reset": _reset_after_hello(lab)}[behaviour]

    async def main() -> None:
        async with lab.tcp_server(handler) as port:
            with lab.Timer() as timer:
                rec = await tls_handshake("127.0.0.1", port, "site.test", clock=Clock(), timeout=TIMEOUT)
        assert rec.failure in failures
        assert rec.peer_cert_sha256 is None and rec.cert_valid is None
        assert timer.elapsed < TIMEOUT + SLACK

    asyncio.run(main())


def test_tls_refused() -> None:
    rec = asyncio.run(tls_handshake("127.0.0.1", _free_port(), "site.test", clock=Clock(), timeout=TIMEOUT))
    assert rec.failure == "connection_refused"


def test_tls_without_sni_does_not_validate(lab: SimpleNamespace, tls_ctx) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with lab.tcp_server(_idle, ssl_ctx=tls_ctx("site.test")) as port:
            rec = await tls_handshake("127.0.0.1", port, None, clock=Clock(), timeout=TIMEOUT)
        assert rec.failure is None and rec.cert_valid is None and rec.peer_cert_names == ["site.test"]

    asyncio.run(main())
