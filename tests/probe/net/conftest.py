"""Loopback servers for the network-layer tests: scripted DNS (UDP/TCP), raw TCP and TLS
servers that misbehave on purpose. Everything listens on 127.0.0.0/8 (or ::1) free ports."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import dns.message
import dns.rrset
import pytest
import trustme

# A UDP handler gets the query and returns what to send: (delay seconds, wire bytes) pairs.
UdpScript = Callable[[dns.message.Message, bytes], list[tuple[float, bytes]]]
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def answer(query: dns.message.Message, *records: tuple[str, str, str], rcode: int = 0, ttl: int = 300) -> bytes:
    """A reply to ``query`` with (name, type, value) records."""
    resp = dns.message.make_response(query)
    resp.set_rcode(rcode)
    for name, rtype, value in records:
        resp.answer.append(dns.rrset.from_text(name, ttl, "IN", rtype, value))
    return resp.to_wire(max_size=65535)  # the test decides sizes, not the query's EDNS payload


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, script: UdpScript) -> None:
        self.script = script
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.queries = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queries += 1
        query = dns.message.from_wire(data)
        for delay, wire in self.script(query, data):
            task = asyncio.ensure_future(self._send(delay, wire, addr))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _send(self, delay: float, wire: bytes, addr: tuple[str, int]) -> None:
        await asyncio.sleep(delay)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(wire, addr)


@contextlib.asynccontextmanager
async def udp_dns(script: UdpScript, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """A UDP DNS server running ``script``; yields its "IP:PORT"."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: _Udp(script), local_addr=(host, 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        yield f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    finally:
        for task in list(proto.tasks):
            task.cancel()
        await asyncio.gather(*proto.tasks, return_exceptions=True)
        transport.close()


@contextlib.asynccontextmanager
async def tcp_server(
    handler: StreamHandler, host: str = "127.0.0.1", ssl_ctx: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """A TCP (or TLS) server running ``handler`` per connection; yields its port. Handler
    errors are the client's doing in these tests, so they are swallowed."""
    tasks: set[asyncio.Task[None]] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        except (Exception, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            tasks.discard(task)  # type: ignore[arg-type]

    server = await asyncio.start_server(wrapped, host, 0, ssl=ssl_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def http_response(body: bytes, status: str = "200 OK", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def rst_close(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self.start


@pytest.fixture
def lab() -> SimpleNamespace:
    """Helpers for building loopback servers inside a test's own event loop."""
    return SimpleNamespace(
        udp_dns=udp_dns, tcp_server=tcp_server, answer=answer, read_request=read_request,
        http_response=http_response, rst_close=rst_close, Timer=Timer,
    )


@pytest.fixture
def ipv6_loopback() -> str:
    """"::1", or the test is skipped (with the reason) on a machine without IPv6 loopback."""
    if not has_ipv6_loopback():
        pytest.skip("no ::1 on this machine: IPv6 loopback is disabled")
    return "::1"


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_bundle(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(ca: trustme.CA, *names: str, **kw: object) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names, **kw).configure_cert(ctx)  # type: ignore[arg-type]
    return ctx


@pytest.fixture(scope="session")
def tls_ctx(ca: trustme.CA) -> Callable[..., ssl.SSLContext]:
    """server_context(*names, **issue_cert kwargs) bound to the session CA."""
    return lambda *names, **kw: server_context(ca, *names, **kw)
