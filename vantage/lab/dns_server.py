"""The lab's two resolvers (honest and censoring) over asyncio UDP and TCP, with dnspython.

The answering logic (`LabZone.respond`) is a pure function of the query bytes, kept apart from
the socket code so it can be tested without sockets.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from vantage.lab.streams import TrackedServer

log = logging.getLogger(__name__)

TTL = 60


class LabZone:
    """Authoritative data for the lab domain plus the lies one resolver tells.

    ``lies`` maps a hostname to "nxdomain", "drop" (no reply at all) or an IPv4 address given
    instead of the real one. Names outside the lab domain are REFUSED: the lab resolvers never
    recurse, so a lab test can never send a query beyond loopback.
    """

    def __init__(self, domain: str, names: Mapping[str, str], lies: Mapping[str, str] | None = None):
        self.domain = dns.name.from_text(domain)
        self.names = {k.lower().rstrip("."): v for k, v in names.items()}
        self.lies = {k.lower().rstrip("."): v for k, v in (lies or {}).items()}

    def respond(self, wire: bytes) -> bytes | None:
        """The reply to one query in wire format, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError):
            return None  # garbage gets no answer, as from a resolver that drops it
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            reply = dns.message.make_response(query)
            reply.set_rcode(dns.rcode.FORMERR)
            return reply.to_wire()
        question = query.question[0]
        qname = question.name.to_text(omit_final_dot=True).lower()
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.RA
        if not question.name.is_subdomain(self.domain):
            reply.set_rcode(dns.rcode.REFUSED)
            return reply.to_wire()
        lie = self.lies.get(qname)
        if lie == "drop":
            return None
        if lie == "nxdomain" or (lie is None and qname not in self.names):
            reply.set_rcode(dns.rcode.NXDOMAIN)
            return reply.to_wire()
        address = lie if lie is not None else self.names[qname]
        if question.rdtype == dns.rdatatype.A and question.rdclass == dns.rdataclass.IN:
            reply.answer.append(
                dns.rrset.from_text(question.name, TTL, dns.rdataclass.IN, dns.rdatatype.A, address)
            )
        # Any other type (AAAA included): NOERROR with no answer, the lab is IPv4 only.
        return reply.to_wire()


class _UdpResolver(asyncio.DatagramProtocol):
    def __init__(self, zone: LabZone):
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.zone.respond(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable from a client
        log.debug("lab resolver UDP error: %s", exc)


class DnsServer:
    """One resolver: a UDP endpoint and a TCP server on the same address and port."""

    def __init__(self, zone: LabZone, udp_sock: socket.socket, tcp_sock: socket.socket):
        self.zone = zone
        self._udp_sock = udp_sock
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp = TrackedServer(self._serve_tcp, tcp_sock)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpResolver(self.zone), sock=self._udp_sock
        )
        await self._tcp.start()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(2)
                (length,) = struct.unpack("!H", header)
                reply = self.zone.respond(await reader.readexactly(length))
                if reply is None:
                    continue  # a dropped query: keep the connection open and say nothing
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        await self._tcp.stop()
