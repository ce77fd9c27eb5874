"""QUIC handshake (ALPN h3, the URL's SNI) to one address and an HTTP/3 GET over it, as a
``QuicHandshake`` observation and an ``HttpRequest`` with http_version "HTTP/3" (aioquic).

The UDP socket is connected to the one address, so ICMP errors come back as errno (host or
network unreachable, port unreachable = connection_refused) instead of a silent timeout. The
certificate verifies like the TLS step's (certifi or the system file, plus ``ca_bundle``); a
certificate that does not validate is fetched again without verification, so the record names
what the server presented. One GET, no redirects followed: the control makes the same request,
so the two responses compare as they are.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field
from os import PathLike
from typing import Any
from urllib.parse import urlsplit

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent
from aioquic.quic.packet import QuicErrorCode
from cryptography.hazmat.primitives.serialization import Encoding

from probe.net._client import USER_AGENT, check_address
from probe.net.clock import Clock
from probe.net.errors import classify, unknown
from probe.net.http import (
    DEFAULT_BODY_CAP,
    DEFAULT_SAMPLE_CAP,
    HEADER_VALUE_MAX,
    MAX_HEADERS,
    REQUEST_HEADERS,
    SELECTED_HEADERS,
    _Body,
    _finish_body,
    _Inflater,
    _scrub,
)
from probe.net.scrub import Scrubber
from probe.net.tcp import family_of
from probe.net.tls import fill_certificate
from probe.schema import HttpHeader, HttpRequest, QuicHandshake

# aioquic logs every failed handshake at ERROR on its "quic" logger; here a failure is data on
# the record, not a problem of the probe, so it stays off the user's terminal unless asked for.
if logging.getLogger("quic").level == logging.NOTSET:
    logging.getLogger("quic").setLevel(logging.CRITICAL)

HTTP3_TAG = "http3"  # the tag of the HTTP/3 GET's record in the ``http`` list
_VERSIONS = {0x00000001: "1", 0x6B3343CF: "2"}
_TLS_ALERT_BASE = QuicErrorCode.CRYPTO_ERROR  # 0x100 + TLS alert (RFC 9001 4.8)
_ALERT_BAD_CERTIFICATE, _ALERT_CERTIFICATE_EXPIRED = 42, 45


class QuicClosed(Exception):
    """The QUIC connection ended with a CONNECTION_CLOSE (ours or the peer's) or a VN failure."""

    def __init__(self, event: ConnectionTerminated) -> None:
        super().__init__(event.reason_phrase)
        self.event = event


def close_failure(event: ConnectionTerminated) -> str:
    """The failure string of a QUIC CONNECTION_CLOSE (pure: tested without sockets).

    A bad_certificate / certificate_expired alert is the client's own verdict on the server's
    certificate (servers never ask a browser-like client for one), so it maps like the TLS
    step's verification errors; any other TLS alert is a failed handshake; the transport error
    CONNECTION_REFUSED is the server refusing; a Version Negotiation without a common version has
    its own string; any other close is the connection torn down under us (connection_reset).
    """
    code, reason = event.error_code, (event.reason_phrase or "").lower()
    if "common protocol version" in reason:
        return "quic_version_negotiation_failure"
    if code == _TLS_ALERT_BASE + _ALERT_BAD_CERTIFICATE:
        if "doesn't match" in reason or "hostname" in reason:
            return "ssl_invalid_hostname"
        if "issuer" in reason or "self-signed" in reason or "self signed" in reason:
            return "ssl_unknown_authority"
        return "ssl_invalid_certificate"
    if code == _TLS_ALERT_BASE + _ALERT_CERTIFICATE_EXPIRED:
        return "ssl_invalid_certificate"
    if _TLS_ALERT_BASE <= code < _TLS_ALERT_BASE + 0x100:
        return "tls_handshake_failure"
    if code == QuicErrorCode.CONNECTION_REFUSED:
        return "connection_refused"
    return "connection_reset"


class Stopped(Exception):
    """The caller stopped waiting for this attempt (``stop`` set): recorded as ``interrupted``."""


async def _bounded(aw: Awaitable[Any], timeout: float, stop: asyncio.Event | None) -> Any:
    """``aw`` within ``timeout``; raises ``Stopped`` (and cancels ``aw``) as soon as ``stop`` is set."""
    if stop is None:
        return await asyncio.wait_for(aw, timeout)
    if stop.is_set():
        if asyncio.iscoroutine(aw):
            aw.close()
        raise Stopped
    task = asyncio.ensure_future(asyncio.wait_for(aw, timeout))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
    if task.cancelled():
        raise Stopped
    return task.result()


def _failure(exc: BaseException) -> str:
    if isinstance(exc, Stopped):
        return "interrupted"
    if isinstance(exc, QuicClosed):
        return close_failure(exc.event)
    return classify(exc)


@dataclass
class _Response:
    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: _Body = field(default_factory=_Body)
    inflater: _Inflater | None = None
    ended: bool = False


class _Client(QuicConnectionProtocol):
    """aioquic's protocol with one waiter for "something happened": handshake, close, ICMP
    error, response data. The H3 layer is attached once the handshake completed."""

    def __init__(self, quic: QuicConnection, body_cap: int) -> None:
        super().__init__(quic)
        self.h3: H3Connection | None = None
        self.handshake: HandshakeCompleted | None = None
        self.error: BaseException | None = None
        self.response = _Response()
        self.stream_id: int | None = None
        self.body_cap = body_cap
        self.changed = asyncio.Event()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, HandshakeCompleted):
            self.handshake = event
        elif isinstance(event, ConnectionTerminated):
            self.error = self.error or QuicClosed(event)
        if self.h3 is not None:
            for h3_event in self.h3.handle_event(event):
                self._h3_event(h3_event)
        self.changed.set()

    def _h3_event(self, event: H3Event) -> None:
        if getattr(event, "stream_id", None) != self.stream_id:
            return
        resp = self.response
        if isinstance(event, HeadersReceived):
            for name, value in event.headers:
                n, v = name.decode("latin-1").lower(), value.decode("latin-1")
                if n == ":status":
                    resp.status = int(v) if v.isdigit() else None
                else:
                    resp.headers.append((n, v))
            resp.body.seen = resp.status is not None
            resp.body.content_type = next((v for n, v in resp.headers if n == "content-type"), "")
            resp.inflater = _Inflater(next((v for n, v in resp.headers if n == "content-encoding"), "identity"))
        elif isinstance(event, DataReceived) and resp.inflater is not None and not resp.body.truncated:
            resp.body.feed(resp.inflater, event.data, self.body_cap)
        if getattr(event, "stream_ended", False):
            resp.ended = True

    def error_received(self, exc: Exception) -> None:
        # ICMP on the connected socket: port/host/network unreachable.
        self.error = self.error or exc
        self.changed.set()

    async def until(self, done: Any) -> None:
        """Wait until ``done()`` or an error (raised)."""
        while True:
            if self.error is not None:
                raise self.error
            if done():
                return
            self.changed.clear()
            await self.changed.wait()


def _configuration(sni: str | None, ca_bundle: str | PathLike[str] | None, verify: bool) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=sni)
    if not verify:
        config.verify_mode = ssl.CERT_NONE
        return config
    # System roots (the OpenSSL default file, else certifi: aioquic's own default) plus the bundle.
    system = ssl.get_default_verify_paths().cafile
    if system and os.path.isfile(system):
        config.cafile = system
    else:
        import certifi

        config.cafile = certifi.where()
    if ca_bundle is not None:
        with open(ca_bundle, "rb") as fh:
            config.cadata = fh.read()
    return config


def _fill(rec: QuicHandshake, client: _Client, scrubber: Scrubber | None) -> None:
    quic = client._quic
    rec.alpn = client.handshake.alpn_protocol if client.handshake is not None else None
    version = getattr(quic, "_version", None)
    if isinstance(version, int):
        rec.quic_version = _VERSIONS.get(version, f"0x{version:08x}")
    rec.tls_version = "TLSv1.3"  # QUIC carries TLS 1.3 only (RFC 9001)
    schedule = getattr(quic.tls, "key_schedule", None)
    suite = getattr(schedule, "cipher_suite", None)
    rec.cipher_suite = f"TLS_{suite.name}" if suite is not None else None
    cert = getattr(quic.tls, "_peer_certificate", None)  # aioquic keeps it only here
    if cert is not None:
        fill_certificate(rec, cert.public_bytes(Encoding.DER), scrubber)


class _Connection:
    """One QUIC connection over a UDP socket connected to ``ip``:``port``."""

    def __init__(self, ip: str, port: int, config: QuicConfiguration, body_cap: int) -> None:
        self.ip, self.port, self.config, self.body_cap = ip, port, config, body_cap
        self.client: _Client | None = None
        self.transport: asyncio.DatagramTransport | None = None

    async def __aenter__(self) -> _Client:
        check_address(self.ip, self.port)  # the caller's address policy (AddressRefused)
        sock = socket.socket(family_of(self.ip), socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect((self.ip, self.port))
            peer = sock.getpeername()  # the exact form recvfrom gives (IPv6: 4-tuple)
            loop = asyncio.get_running_loop()
            transport, client = await loop.create_datagram_endpoint(
                lambda: _Client(QuicConnection(configuration=self.config), self.body_cap), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        self.transport, self.client = transport, client
        client.connect(peer, transmit=True)
        return client

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            try:
                self.client.close()  # CONNECTION_CLOSE, sent now; no wait for the peer
            except Exception:  # already closed: nothing to send
                pass
        if self.client is not None:
            # aioquic re-arms a timer (retransmissions, the closing period) that would go on
            # sending on the closed socket for up to 3 PTOs: nothing is left to send to.
            timer = getattr(self.client, "_timer", None)
            if timer is not None:
                timer.cancel()
        if self.transport is not None:
            self.transport.abort()


async def _handshake_only(ip: str, port: int, config: QuicConfiguration, timeout: float) -> _Client:
    async with _Connection(ip, port, config, 0) as client:
        await asyncio.wait_for(client.until(lambda: client.handshake is not None), timeout)
        return client


def _request_headers(url: str) -> list[tuple[bytes, bytes]]:
    parts = urlsplit(url)
    authority = parts.netloc.rsplit("@", 1)[-1]
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", authority.encode("idna")),
               (b":path", path.encode()), (b"user-agent", USER_AGENT.encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in REQUEST_HEADERS.items()]
    return headers


def _selected(headers: list[tuple[str, str]]) -> list[HttpHeader]:
    out: list[HttpHeader] = []
    for name, value in headers:
        if name not in SELECTED_HEADERS:
            continue
        if name == "set-cookie":
            value = value.split("=", 1)[0].strip()[:64]
        out.append(HttpHeader(name=name, value=value[:HEADER_VALUE_MAX]))
        if len(out) >= MAX_HEADERS:
            break
    return out


async def quic_get(
    url: str,
    ip: str,
    port: int,
    sni: str | None,
    *,
    clock: Clock,
    timeout: float,
    ca_bundle: str | PathLike[str] | None = None,
    body_cap: int = DEFAULT_BODY_CAP,
    sample_cap: int = DEFAULT_SAMPLE_CAP,
    scrubber: Scrubber | None = None,
    tag: str | None = None,
    stop: asyncio.Event | None = None,
) -> tuple[QuicHandshake, list[HttpRequest]]:
    """QUIC handshake with ``sni`` (None: no SNI, no verification) and ALPN h3 to
    ``ip``:``port``, then one HTTP/3 GET of ``url`` on it, all within ``timeout``. Returns the
    handshake record and the GET's record (none when the handshake failed). Never raises for
    the network. When ``stop`` is set before the attempt ends, the step still open (the
    handshake, else the GET) ends at once with failure ``interrupted``: the caller no longer
    wants the answer, so the record says the probe cut it short, not what the network did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    rec = QuicHandshake(t0=clock.now(), t=0.0, failure=None, ip=ip, port=port, sni=sni, tag=tag)
    hops: list[HttpRequest] = []
    verifying = sni is not None
    try:
        config = _configuration(sni, ca_bundle, verifying)
    except OSError as exc:  # an unreadable bundle is a configuration error, as for TLS
        raise ValueError(f"ca bundle: {exc}") from exc
    try:
        async with _Connection(ip, port, config, body_cap) as client:
            try:
                await _bounded(client.until(lambda: client.handshake is not None), timeout, stop)
            except BaseException:
                rec.t = clock.now()
                raise
            rec.t = clock.now()
            _fill(rec, client, scrubber)
            rec.cert_valid = True if verifying else None
            hops.append(await _get(client, url, ip, clock, deadline - loop.time(), sample_cap, scrubber, tag, stop))
    except ValueError:
        rec.failure = unknown("invalid_address")
    except Exception as exc:
        rec.failure = _failure(exc)
        if rec.failure.startswith("ssl_"):
            rec.cert_valid = False
            remaining = deadline - loop.time()
            if remaining > 0 and not (stop is not None and stop.is_set()):  # the certificate, fetched without verification (best effort)
                try:
                    client = await _handshake_only(ip, port, _configuration(sni, None, False), remaining)
                    _fill(rec, client, scrubber)
                except Exception:
                    pass
    if not rec.t:
        rec.t = clock.now()
    if rec.failure is not None and scrubber is not None:
        rec.failure = scrubber.scrub(rec.failure)
    return rec, hops


async def _get(
    client: _Client, url: str, ip: str, clock: Clock, timeout: float, sample_cap: int,
    scrubber: Scrubber | None, tag: str | None, stop: asyncio.Event | None = None,
) -> HttpRequest:
    hop = HttpRequest(t0=clock.now(), t=0.0, failure=None, url=url, ip=ip, http_version="HTTP/3",
                      tag=HTTP3_TAG if tag is None else f"{HTTP3_TAG},{tag}")
    resp = client.response
    try:
        if timeout <= 0:
            raise TimeoutError
        client.h3 = H3Connection(client._quic)
        stream_id = client._quic.get_next_available_stream_id()
        client.stream_id = stream_id
        client.h3.send_headers(stream_id, _request_headers(url), end_stream=True)
        client.transmit()
        await _bounded(client.until(lambda: resp.ended or resp.body.truncated), timeout, stop)
    except Exception as exc:
        if not (resp.status is not None and isinstance(exc, QuicClosed) and resp.ended):
            hop.failure = _failure(exc)
            if hop.failure == "connection_reset" and resp.status is not None:
                hop.failure = "eof"  # the connection closed in the middle of the body
    hop.status_code = resp.status
    hop.headers = _selected(resp.headers)
    hop.t = clock.now()
    _finish_body(hop, resp.body, sample_cap, scrubber)
    _scrub(hop, scrubber)
    return hop
