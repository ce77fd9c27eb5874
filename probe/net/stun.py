"""The probe's public address as a STUN server (RFC 5389) sees it: one binding request over UDP.

Only for the Scrubber: the answer is kept in memory, never stored or logged. Messages are
built and parsed by aioice (the aiortc project's ICE/STUN library).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from aioice import stun

from probe.errors import VantageError

log = logging.getLogger(__name__)

# RFC 5389 7.2.1: retransmit after 500 ms, doubling; three tries are enough to tell a server
# that answers from one that does not, without holding up the start of a run.
_RTO = 0.5
_TRIES = 3


class StunError(VantageError):
    """No usable answer from the STUN server (one line, no address of ours)."""


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.replies.put_nowait(data)


def parse_server(value: str) -> tuple[str, int]:
    """HOST:PORT, IP:PORT or [IPv6]:PORT (port 3478 when left out)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":") or "3478"
    elif value.count(":") == 1:
        host, port = value.split(":")
    elif value.count(":") > 1:
        host, port = value, "3478"  # a bare IPv6 address
    else:
        host, port = value, "3478"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, IP:PORT or [IPv6]:PORT, got {value!r}")
    return host, int(port)


async def public_address(server: str, *, timeout: float = 3.0) -> str:
    """The address a STUN server saw for this host (its public address behind NAT)."""
    host, port = parse_server(server)
    loop = asyncio.get_running_loop()
    try:
        transport, proto = await asyncio.wait_for(
            loop.create_datagram_endpoint(_Client, remote_addr=(host, port)), timeout
        )
    except (TimeoutError, OSError) as exc:
        raise StunError(f"STUN server {server}: cannot send ({type(exc).__name__})") from None
    try:
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        deadline = loop.time() + timeout
        rto = _RTO
        for _ in range(_TRIES):
            transport.sendto(bytes(request))
            wait_until = min(deadline, loop.time() + rto)
            while (left := wait_until - loop.time()) > 0:
                try:
                    data = await asyncio.wait_for(proto.replies.get(), left)
                except TimeoutError:
                    break
                address = _mapped_address(data, request.transaction_id)
                if address is not None:
                    return address
            rto *= 2
            if loop.time() >= deadline:
                break
        raise StunError(f"STUN server {server}: no binding response")
    finally:
        transport.close()


def _mapped_address(data: bytes, transaction_id: bytes) -> str | None:
    try:
        reply = stun.parse_message(data)
    except (ValueError, IndexError, KeyError) as exc:
        log.debug("STUN: unparsable reply (%s)", type(exc).__name__)
        return None
    if reply.transaction_id != transaction_id or reply.message_class != stun.Class.RESPONSE:
        return None
    mapped = reply.attributes.get("XOR-MAPPED-ADDRESS") or reply.attributes.get("MAPPED-ADDRESS")
    if not isinstance(mapped, tuple) or not mapped:
        return None
    try:
        return str(ipaddress.ip_address(mapped[0]))
    except ValueError:
        return None
