"""probe.net.quic against loopback servers: a real aioquic HTTP/3 server (handshake, ALPN, the
GET and its body), certificate failures, ICMP port unreachable, silence, a Version Negotiation
without a common version, the address guard, scrubbing; and the CONNECTION_CLOSE mapping as a
pure function."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
import trustme
from aioquic.buffer import Buffer
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicErrorCode, encode_quic_version_negotiation, pull_quic_header

from probe.net._client import address_guard
from probe.net.clock import Clock
from probe.net.quic import HTTP3_TAG, close_failure, quic_get
from probe.net.scrub import Scrubber
from probe.schema import is_valid_failure
from tests.support.h3_server import serve_h3

HOST = "site.test"
PAGE = "<html><head><title>Lab site</title></head><body>seen from 198.51.100.23</body></html>"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    d = tmp_path_factory.mktemp("quic-certs")
    ca = trustme.CA()
    cert = ca.issue_cert(HOST)
    crt, key, bundle = d / "site.crt", d / "site.key", d / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    crt.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(bundle))
    return str(crt), str(key), str(bundle)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def h3_site(certs: tuple[str, str, str]) -> AsyncIterator[int]:
    port = free_udp_port()
    server = await serve_h3("127.0.0.1", port, certs[0], certs[1], {HOST: PAGE})
    try:
        yield port
    finally:
        server.close()


class _Silent(asyncio.DatagramProtocol):
    """Receives and never answers (UDP dropped on the path, as far as the client can tell)."""

    def __init__(self, vn: bool = False) -> None:
        self.vn = vn
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.vn and self.transport is not None:
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
            self.transport.sendto(encode_quic_version_negotiation(
                source_cid=header.destination_cid, destination_cid=header.source_cid,
                supported_versions=[0x0A1A2A3A]), addr)  # a reserved version only: nothing in common


@contextlib.asynccontextmanager
async def udp_server(vn: bool = False) -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Silent(vn), local_addr=("127.0.0.1", 0))
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_handshake_and_http3_get(certs: tuple[str, str, str]) -> None:
    async def go():  # type: ignore[no-untyped-def]
        async with h3_site(certs) as port:
            return await quic_get(f"https://{HOST}:{port}/page", "127.0.0.1", port, HOST, clock=Clock(), timeout=5,
                                  ca_bundle=certs[2], tag="x")

    rec, hops = run(go())
    assert rec.failure is None and rec.alpn == "h3" and rec.quic_version == "1" and rec.cert_valid is True
    assert rec.tls_version == "TLSv1.3" and rec.cipher_suite and rec.cipher_suite.startswith("TLS_")
    assert rec.peer_cert_names == [HOST] and rec.peer_cert_sha256 and rec.tag == "x"
    assert 0 <= rec.t0 < rec.t
    [hop] = hops
    assert (hop.failure, hop.status_code, hop.http_version, hop.ip) == (None, 200, "HTTP/3", "127.0.0.1")
    assert hop.tag == f"{HTTP3_TAG},x" and hop.title == "Lab site" and hop.body_length == len(PAGE)
    assert {h.name for h in hop.headers} >= {"server", "content-type"}


@pytest.mark.parametrize(("sni", "bundle", "failure"), [
    ("other.test", True, "ssl_invalid_hostname"),
    (HOST, False, "ssl_unknown_authority"),
])
def test_a_certificate_that_does_not_validate(certs: tuple[str, str, str], sni: str, bundle: bool,
                                              failure: str) -> None:
    async def go():  # type: ignore[no-untyped-def]
        async with h3_site(certs) as port:
            return await quic_get(f"https://{HOST}/", "127.0.0.1", port, sni, clock=Clock(), timeout=5,
                                  ca_bundle=certs[2] if bundle else None)

    rec, hops = run(go())
    assert rec.failure == failure and rec.cert_valid is False and hops == []
    assert rec.peer_cert_names == [HOST]  # fetched again without verification, as for TLS


def test_no_sni_means_no_verification(certs: tuple[str, str, str]) -> None:
    async def go():  # type: ignore[no-untyped-def]
        async with h3_site(certs) as port:
            return await quic_get(f"https://127.0.0.1:{port}/", "127.0.0.1", port, None, clock=Clock(), timeout=5)

    rec, hops = run(go())
    assert rec.failure is None and rec.cert_valid is None and len(hops) == 1


def test_nothing_listening_is_icmp_port_unreachable() -> None:
    port = free_udp_port()
    rec, hops = run(quic_get("https://a.test/", "127.0.0.1", port, "a.test", clock=Clock(), timeout=5))
    assert rec.failure == "connection_refused" and hops == [] and rec.t < 2


def test_silence_is_a_timeout_within_the_limit() -> None:
    async def go():  # type: ignore[no-untyped-def]
        async with udp_server() as port:
            return await quic_get("https://a.test/", "127.0.0.1", port, "a.test", clock=Clock(), timeout=1.0)

    rec, hops = run(go())
    assert rec.failure == "generic_timeout" and hops == [] and 0.9 <= rec.t - rec.t0 < 2.0


def test_stop_ends_a_silent_attempt_at_once_as_interrupted() -> None:
    # -- quic: web_connectivity sets ``stop`` when the HTTPS answer does not advertise h3.
    async def go():  # type: ignore[no-untyped-def]
        async with udp_server() as port:
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(0.2, stop.set)
            return await quic_get("https://a.test/", "127.0.0.1", port, "a.test", clock=Clock(), timeout=5.0,
                                  stop=stop)

    rec, hops = run(go())
    assert rec.failure == "interrupted" and hops == [] and rec.t - rec.t0 < 1.0
    assert is_valid_failure(rec.failure)


def test_stop_set_before_the_attempt_sends_nothing() -> None:
    async def go():  # type: ignore[no-untyped-def]
        stop = asyncio.Event()
        stop.set()  # set before the attempt: the record says the probe cut it short
        return await quic_get("https://a.test/", "127.0.0.1", 9, "a.test", clock=Clock(), timeout=5.0, stop=stop)

    rec, hops = run(go())
    assert rec.failure == "interrupted" and hops == []


def test_version_negotiation_without_a_common_version() -> None:
    async def go():  # type: ignore[no-untyped-def]
        async with udp_server(vn=True) as port:
            return await quic_get("https://a.test/", "127.0.0.1", port, "a.test", clock=Clock(), timeout=3)

    rec, _ = run(go())
    assert rec.failure == "quic_version_negotiation_failure" and rec.t < 2


@contextlib.contextmanager
def guard(reason: str) -> Iterator[None]:
    token = address_guard.set(lambda ip, port: reason)
    try:
        yield
    finally:
        address_guard.reset(token)


def test_the_address_guard_is_checked_before_any_packet() -> None:
    async def go():  # type: ignore[no-untyped-def]
        async with udp_server() as port:
            with guard("not a target"):
                return await quic_get("https://a.test/", "127.0.0.1", port, "a.test", clock=Clock(), timeout=2)

    rec, hops = run(go())
    assert rec.failure == "unknown_failure:address_refused" and hops == [] and rec.t < 0.5


def test_the_http3_body_is_scrubbed_and_hashed_scrubbed(certs: tuple[str, str, str]) -> None:
    scrubber = Scrubber(["198.51.100.23"], discover=False)

    async def go():  # type: ignore[no-untyped-def]
        async with h3_site(certs) as port:
            return await quic_get(f"https://{HOST}:{port}/", "127.0.0.1", port, HOST, clock=Clock(), timeout=5,
                                  ca_bundle=certs[2], scrubber=scrubber)

    _, [hop] = run(go())
    assert hop.body_sample is not None and "198.51.100.23" not in hop.body_sample
    assert "[scrubbed]" in hop.body_sample


@pytest.mark.parametrize(("code", "reason", "failure"), [
    (QuicErrorCode.CRYPTO_ERROR + 42, "hostname 'a' doesn't match 'b'", "ssl_invalid_hostname"),
    (QuicErrorCode.CRYPTO_ERROR + 42, "unable to get local issuer certificate", "ssl_unknown_authority"),
    (QuicErrorCode.CRYPTO_ERROR + 42, "self-signed certificate", "ssl_unknown_authority"),
    (QuicErrorCode.CRYPTO_ERROR + 45, "Certificate is no longer valid", "ssl_invalid_certificate"),
    (QuicErrorCode.CRYPTO_ERROR + 40, "handshake_failure", "tls_handshake_failure"),
    (QuicErrorCode.CRYPTO_ERROR + 120, "no_application_protocol", "tls_handshake_failure"),
    (QuicErrorCode.CONNECTION_REFUSED, "", "connection_refused"),
    (QuicErrorCode.INTERNAL_ERROR, "Could not find a common protocol version", "quic_version_negotiation_failure"),
    (QuicErrorCode.PROTOCOL_VIOLATION, "bad frame", "connection_reset"),
])
def test_connection_close_maps_onto_the_closed_set(code: int, reason: str, failure: str) -> None:
    got = close_failure(ConnectionTerminated(error_code=code, frame_type=None, reason_phrase=reason))
    assert got == failure and is_valid_failure(got)


def test_no_socket_is_left_open(certs: tuple[str, str, str]) -> None:
    import os

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def go() -> None:
        async with h3_site(certs) as port, udp_server() as silent:
            before = fds()
            for _ in range(3):
                await quic_get(f"https://{HOST}:{port}/", "127.0.0.1", port, HOST, clock=Clock(), timeout=3,
                               ca_bundle=certs[2])
                await quic_get("https://a.test/", "127.0.0.1", silent, "a.test", clock=Clock(), timeout=0.3)
            await asyncio.sleep(0.05)
            assert fds() <= before

    run(go())
