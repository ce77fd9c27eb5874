"""The lab's web servers: real sites over HTTP and HTTPS, the censor's blockpage server, and
the on-path censor's tricks (reset, silence, SNI abort, redirect) applied while it is on.

A tiny HTTP/1.1 responder over asyncio streams (one request per connection, then close) is
all the probe needs, and it lets each connection decide, before TLS starts, what the censor
does to it.
"""

from __future__ import annotations

import asyncio
import html
import logging
import socket
import ssl
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from vantage.lab.plan import BLOCKPAGE_IP, PathAction
from vantage.lab.streams import TrackedServer

log = logging.getLogger(__name__)

IO_TIMEOUT = 15.0  # a lab server never waits longer than this for a client (silent ones excepted)
SITE_SERVER = "VantageLab/1.0"
CENSOR_SERVER = "VantageLabCensor/1.0"  # fingerprinted (header.server) in fingerprints.csv
BLOCKPAGE_MARKER = "VANTAGE-LAB-BLOCKPAGE"  # fingerprinted (body contains) in fingerprints.csv


@dataclass
class Censor:
    """The on-path censor: what it does per address, and whether it is on.

    On is the probe's view of the lab; off is the control's (an uncensored network). The flag
    is read by the lab's event loop thread and flipped by `LoopbackLab.set_censor`.
    """

    path: Mapping[str, PathAction] = field(default_factory=dict)
    sni_blocked: frozenset[str] = frozenset()
    enabled: bool = True
    http_port: int = 0  # for the redirect's Location

    def action(self, ip: str) -> PathAction:
        return self.path.get(ip) if self.enabled else None

    def sni_callback(
        self, ssl_obj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext
    ) -> int | None:
        if self.enabled and server_name is not None and server_name.lower() in self.sni_blocked:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        return None


def site_page(hostname: str) -> bytes:
    """A deterministic page per site; lengths differ between sites like real pages do."""
    label = hostname.split(".")[0]
    paragraphs = 20 + zlib.crc32(hostname.encode()) % 20
    body = "\n".join(
        f"<p>{html.escape(label)} story {i}: a perfectly ordinary article served from the lab.</p>"
        for i in range(paragraphs)
    )
    return (
        f"<!doctype html>\n<html><head><title>{html.escape(label)} - Vantage lab</title></head>\n"
        f"<body><h1>{html.escape(hostname)}</h1>\n{body}\n</body></html>\n"
    ).encode()


def blockpage(host: str) -> bytes:
    return (
        "<!doctype html>\n<html><head><title>Access denied</title></head>\n"
        f"<body><h1>Access to {html.escape(host)} is blocked</h1>\n"
        f"<p>{BLOCKPAGE_MARKER}: this site is blocked by order of the lab's censor.</p>\n"
        "</body></html>\n"
    ).encode()


def response(
    status: int, reason: str, body: bytes, *, server: str, extra: Mapping[str, str] | None = None
) -> bytes:
    headers = {
        "Server": server,
        "Content-Type": "text/html; charset=utf-8",
        "Content-Length": str(len(body)),
        "Connection": "close",
        **(extra or {}),
    }
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + body


def _host_of(head: bytes) -> str:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "host":
            host = value.strip().lower()
            return host.rsplit(":", 1)[0] if not host.startswith("[") else host
    return ""


async def _start_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: ssl.SSLContext) -> None:
    """Upgrade a server-side stream to TLS in place."""
    await writer.start_tls(ctx, ssl_handshake_timeout=IO_TIMEOUT)


def _set_linger_zero(writer: asyncio.StreamWriter, on: bool) -> None:
    """With SO_LINGER on and a zero timeout, closing the socket sends an RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1 if on else 0, 0))


def _reset(writer: asyncio.StreamWriter) -> None:
    _set_linger_zero(writer, True)
    writer.transport.abort()


class WebListener:
    """One listening socket (address, port, plain or TLS) of a lab web server."""

    def __init__(
        self,
        ip: str,
        sock: socket.socket,
        *,
        censor: Censor,
        names: tuple[str, ...],
        tls: ssl.SSLContext | None,
    ):
        self.ip = ip
        self.port: int = sock.getsockname()[1]
        self.censor = censor
        self.names = frozenset(names)
        self.tls = tls
        self._server = TrackedServer(self._handle, sock)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reset = False
        try:
            action = self.censor.action(self.ip)
            if action == "reset":
                # Let the ClientHello (or the request) arrive first, as an on-path censor does.
                await asyncio.wait_for(reader.read(4096), IO_TIMEOUT)
                _reset(writer)
                reset = True
                return
            if action == "silent":
                while await reader.read(4096):
                    pass
                return
            if self.tls is not None:
                # For SNI filtering the censor resets the connection when it sees a blocked
                # name: arm SO_LINGER 0 so that the close after the SNI callback's refusal is
                # an RST, and disarm it once the handshake got through.
                if action == "sni_abort":
                    _set_linger_zero(writer, True)
                await _start_tls(reader, writer, self.tls)
                if action == "sni_abort":
                    _set_linger_zero(writer, False)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
            writer.write(self._answer(head, action))
            await writer.drain()
        except (TimeoutError, OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # clients hang up, time out and send garbage; the lab just moves on
        finally:
            if not reset:
                writer.close()
                try:
                    await writer.wait_closed()
                except (OSError, asyncio.CancelledError):
                    pass

    def _answer(self, head: bytes, action: PathAction) -> bytes:
        host = _host_of(head)
        if action == "redirect":
            location = f"http://{BLOCKPAGE_IP}:{self.censor.http_port}/blocked?host={host}"
            return response(302, "Found", b"", server=CENSOR_SERVER, extra={"Location": location})
        if self.ip == BLOCKPAGE_IP:
            return response(403, "Forbidden", blockpage(host), server=CENSOR_SERVER)
        if host not in self.names:
            return response(404, "Not Found", b"<html><title>not here</title></html>\n", server=SITE_SERVER)
        return response(200, "OK", site_page(host), server=SITE_SERVER)
