"""UDP and TCP exchanges for tunnel handshakes, logged packet by packet (time, direction, size,
what it was) and never raising for the network: failures come back as failure strings.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from probe.net.clock import Clock
from probe.net.errors import classify
from probe.net.tcp import family_of, open_socket
from probe.schema import TcpConnect, VpnHandshake, VpnPacket

from .endpoints import Endpoint

# A validator looks at one reply: ("ok" | "bad" | "ignore", what the reply was).
Verdict = tuple[str, str]
Validator = Callable[[bytes], Verdict]
MAX_DATAGRAM = 65535


@dataclass
class PacketLog:
    clock: Clock
    packets: list[VpnPacket] = field(default_factory=list)

    def sent(self, data: bytes, summary: str | None = None) -> None:
        self.packets.append(VpnPacket(t=self.clock.now(), direction="sent", size=len(data), summary=summary))

    def received(self, data: bytes, summary: str | None = None) -> None:
        self.packets.append(VpnPacket(t=self.clock.now(), direction="received", size=len(data), summary=summary))


def handshake_record(
    ep: Endpoint, clock: Clock, t0: float, log: PacketLog, *, ok: bool, failure: str | None,
    detail: str | None = None, protocol: str | None = None, tag: str | None = None,
) -> VpnHandshake:
    return VpnHandshake(
        t0=t0, t=clock.now(), failure=None if ok else (failure or "vpn_handshake_failure"),
        protocol=protocol or ep.protocol, endpoint=ep.address, ip=ep.ip, port=ep.port,
        transport=ep.transport, handshake_ok=ok, packets=log.packets, detail=detail, tag=tag,
    )


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        # On a connected socket an ICMP port/host unreachable arrives here.
        self.queue.put_nowait(exc)


@dataclass
class Outcome:
    """How an exchange ended: the accepted reply, or a failure string (and what was seen)."""

    reply: bytes | None = None
    failure: str | None = None
    detail: str | None = None


class UdpSession:
    """A connected UDP socket for a conversation of several exchanges (same source port)."""

    def __init__(self, ip: str, port: int):
        self.ip, self.port = ip, port
        self.transport: asyncio.DatagramTransport | None = None
        self.proto: _Datagrams | None = None

    async def __aenter__(self) -> UdpSession:
        loop = asyncio.get_running_loop()
        self.transport, self.proto = await loop.create_datagram_endpoint(
            _Datagrams, remote_addr=(self.ip, self.port), family=family_of(self.ip)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.transport is not None:
            self.transport.close()

    async def exchange(
        self,
        payload: Callable[[int], bytes],
        *,
        log: PacketLog,
        validate: Validator,
        timeout: float,
        retransmit: float = 1.5,
        summary: str | None = None,
    ) -> Outcome:
        """Send ``payload(0)``, then ``payload(n)`` about every ``retransmit`` seconds (with
        jitter), until a reply the validator accepts ("ok"), one it rejects ("bad":
        vpn_handshake_failure), an ICMP error, or ``timeout`` (generic_timeout). Replies it
        calls "ignore" (a retransmission of an earlier answer) are logged and waited past."""
        assert self.transport is not None and self.proto is not None
        loop = asyncio.get_running_loop()
        data = payload(0)  # before the clock starts: building it may be slow (first use of scapy)
        deadline = loop.time() + timeout
        attempt = 0
        next_send = loop.time()
        while True:
            now = loop.time()
            if now >= deadline:
                return Outcome(failure="generic_timeout")
            if now >= next_send:
                data = data if attempt == 0 else payload(attempt)
                self.transport.sendto(data)
                log.sent(data, summary)
                attempt += 1
                # Jitter, as real clients do: concurrent clients must not retry in lockstep.
                next_send = now + retransmit * random.uniform(0.75, 1.25)
            try:
                item = await asyncio.wait_for(self.proto.queue.get(), min(next_send, deadline) - loop.time())
            except TimeoutError:
                continue
            if isinstance(item, Exception):
                return Outcome(failure=classify(item))
            verdict, what = _safe_validate(validate, item)
            log.received(item, what)
            if verdict == "ok":
                return Outcome(reply=item, detail=what)
            if verdict == "bad":
                return Outcome(failure="vpn_handshake_failure", detail=what)


async def udp_exchange(
    ip: str,
    port: int,
    payload: Callable[[int], bytes],
    *,
    log: PacketLog,
    validate: Validator,
    timeout: float,
    retransmit: float = 1.5,
    summary: str | None = None,
) -> Outcome:
    """One request/answer exchange over a fresh UDP socket (see ``UdpSession.exchange``)."""
    try:
        async with UdpSession(ip, port) as session:
            return await session.exchange(payload, log=log, validate=validate, timeout=timeout,
                                          retransmit=retransmit, summary=summary)
    except OSError as exc:
        return Outcome(failure=classify(exc))
    except ValueError:
        return Outcome(failure="unknown_failure:invalid_address")


def _safe_validate(validate: Validator, data: bytes) -> Verdict:
    # A hostile or broken server must never crash the measurement.
    try:
        return validate(data)
    except Exception as exc:
        return "bad", f"unparseable reply ({type(exc).__name__})"


_preloaded: dict[str, bool] = {}


async def preload(module: str) -> None:
    """Import a slow module (scapy's protocol layers: seconds on a Raspberry Pi) in a thread,
    once, so the event loop keeps timing the measurements that run meanwhile."""
    if not _preloaded.get(module):
        import importlib

        await asyncio.to_thread(importlib.import_module, module)
        _preloaded[module] = True


async def tcp_open(
    ip: str, port: int, *, clock: Clock, timeout: float, tag: str | None = None, log: PacketLog | None = None
) -> tuple[TcpConnect, asyncio.StreamReader | None, asyncio.StreamWriter | None]:
    """TCP connect as a TcpConnect observation, and the stream when it worked.

    With ``log``, the TCP handshake is logged too (SYN sent, SYN-ACK received), so the record
    shows that the server answered the first packet even when the tunnel handshake then stalls.
    """
    t0 = clock.now()
    if log is not None:
        log.sent(b"", "TCP SYN")
    try:
        sock = await open_socket(ip, port, timeout)
    except ValueError:
        return TcpConnect(t0, clock.now(), "unknown_failure:invalid_address", ip, port, tag), None, None
    except Exception as exc:
        return TcpConnect(t0, clock.now(), classify(exc), ip, port, tag), None, None
    if log is not None:
        log.received(b"", "TCP SYN-ACK (connected)")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader, writer = await asyncio.open_connection(sock=sock)
    return TcpConnect(t0, clock.now(), None, ip, port, tag), reader, writer


async def close_writer(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def guarded(step: Awaitable[Outcome], timeout: float) -> Outcome:
    """Run a TCP conversation step within ``timeout``; network errors become failures."""
    try:
        return await asyncio.wait_for(step, timeout)
    except TimeoutError:
        return Outcome(failure="generic_timeout")
    except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
        return Outcome(failure=classify(exc))
