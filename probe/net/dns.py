"""DNS lookups as ``DnsQuery`` observations: system resolver, UDP, TCP and DoH.

Any reply is parsed in one guarded place (``_parse_reply``), so a hostile answer becomes
``dns_server_misbehaving`` data, never an exception. UDP keeps listening for a short window
after the first valid reply (in a background task when the caller tracks them, so the next
step need not wait): a second answer to the same query is a sign of injection.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import struct
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import httpx

from probe.net._client import PinnedBackend, Resolve, make_client, unverified_context, verifying_context
from probe.net.clock import Clock
from probe.net.errors import classify, unknown
from probe.net.scrub import REPLACEMENT, Scrubber
from probe.schema import DnsAnswer, DnsLateResponse, DnsQuery

DEFAULT_LATE_WINDOW = 0.4
MAX_ANSWERS = 64  # per reply; a hostile reply can carry hundreds of records
MAX_LATE_RESPONSES = 16
MAX_DATAGRAMS = 256  # per query; past this a flood is ignored rather than parsed
MAX_VALUE_LEN = 255
DOH_BODY_CAP = 65535

_ADDRESS_TYPES = {"A": dns.rdatatype.A, "AAAA": dns.rdatatype.AAAA}

# getaddrinfo blocks; it runs here rather than in the default executor, so slow lookups
# never starve other users of the default pool. Threads of a timed-out lookup finish on
# their own (bounded by resolv.conf's timeouts).
_SYSTEM_EXECUTOR = ThreadPoolExecutor(max_workers=32, thread_name_prefix="vantage-gai")


@functools.lru_cache(maxsize=256)  # once per query, and a run has a handful of resolvers
def parse_resolver(resolver: str, default_port: int = 53) -> tuple[str, int]:
    """``"IP"``, ``"IP:PORT"``, ``"[IPv6]:PORT"`` or a bare IPv6 -> (ip, port). ValueError if bad."""
    text = resolver.strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad resolver {resolver!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad resolver {resolver!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = int(port_text)
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"resolver must be IP or IP:PORT, got {resolver!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad port in resolver {resolver!r}")
    return ip, port


def format_resolver(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# --------------------------------------------------------------------------- reply parsing


@dataclass(slots=True)
class _Reply:
    rcode: str
    answers: list[DnsAnswer] = field(default_factory=list)
    failure: str | None = None


def _answers(msg: dns.message.Message, scrubber: Scrubber | None) -> list[DnsAnswer]:
    out: list[DnsAnswer] = []
    for rrset in msg.answer:
        type_name = dns.rdatatype.to_text(rrset.rdtype)
        for rdata in rrset:
            if len(out) >= MAX_ANSWERS:
                return out
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                value = _own_address_scrubbed(rdata.address, scrubber)
            else:
                value = rdata.to_text()[:MAX_VALUE_LEN]
                if scrubber is not None:
                    value = scrubber.scrub(value) or ""
            out.append(DnsAnswer(answer_type=type_name, value=value, ttl=int(rrset.ttl)))
    return out


def _own_address_scrubbed(address: str, scrubber: Scrubber | None) -> str:
    """An answer that is the probe's own address (a "what is my IP" name) is not stored."""
    if scrubber is not None and scrubber.addresses:
        try:
            if scrubber.is_own(ipaddress.ip_address(address)):
                return REPLACEMENT
        except ValueError:
            pass
    return address


def _outcome(rcode: int, answers: list[DnsAnswer], qtype: str) -> str | None:
    if rcode == dns.rcode.NXDOMAIN:
        return "dns_nxdomain"
    if rcode == dns.rcode.SERVFAIL:
        return "dns_servfail"
    if rcode == dns.rcode.REFUSED:
        return "dns_refused"
    if rcode != dns.rcode.NOERROR:
        return "dns_server_misbehaving"
    if not any(a.answer_type == qtype for a in answers):
        return "dns_no_answer"
    return None


def _parse_reply(
    wire: bytes, query: dns.message.Message, qtype: str, scrubber: Scrubber | None
) -> _Reply | None:
    """The reply if ``wire`` is a well-formed answer to ``query``, else None (garbage,
    truncated, or for another query). Catches everything: this is the hostile input."""
    try:
        msg = dns.message.from_wire(wire, ignore_trailing=False, raise_on_truncation=False)
        if not query.is_response(msg):
            return None
        answers = _answers(msg, scrubber)
        rcode = msg.rcode()
        return _Reply(rcode=dns.rcode.to_text(rcode), answers=answers, failure=_outcome(rcode, answers, qtype))
    except Exception:
        return None


def _make_query(hostname: str, qtype: str) -> dns.message.QueryMessage:
    return dns.message.make_query(hostname, qtype, use_edns=0, payload=1232)


def _finish(q: DnsQuery, clock: Clock, scrubber: Scrubber | None) -> DnsQuery:
    q.t = clock.now()
    if q.failure is not None and scrubber is not None:
        q.failure = scrubber.scrub(q.failure)
    return q


# --------------------------------------------------------------------------- system


async def system_addresses(hostname: str, timeout: float) -> list[str]:
    """getaddrinfo off the event loop: the addresses, in the system's order, deduplicated.
    Raises what getaddrinfo raises, or TimeoutError."""
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.run_in_executor(
            _SYSTEM_EXECUTOR, socket.getaddrinfo, hostname, None, socket.AF_UNSPEC, socket.SOCK_STREAM
        ),
        timeout,
    )
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0]).split("%", 1)[0]
        if addr not in out:
            out.append(addr)
    return out


async def resolve_system(
    hostname: str, *, clock: Clock, timeout: float, scrubber: Scrubber | None = None, tag: str | None = None
) -> list[DnsQuery]:
    """The system resolver (getaddrinfo, AF_UNSPEC): two records, ``A`` and ``AAAA``, each with
    the addresses of its family. getaddrinfo gives no rcode or TTL, so those stay null."""
    t0 = clock.now()
    failure: str | None = None
    addrs: list[str] = []
    try:
        addrs = await system_addresses(hostname, timeout)
    except (UnicodeError, ValueError):
        failure = unknown("invalid_hostname")
    except Exception as exc:
        failure = classify(exc)
    t = clock.now()
    out = []
    for qtype, version in (("A", 4), ("AAAA", 6)):
        answers = [
            DnsAnswer(answer_type=qtype, value=_own_address_scrubbed(a, scrubber), ttl=None)
            for a in addrs
            if ipaddress.ip_address(a).version == version
        ]
        f = failure if failure is not None else (None if answers else "dns_no_answer")
        out.append(
            DnsQuery(
                t0=t0, t=t, failure=f, resolver="system", engine="system", query_type=qtype,
                hostname=hostname, answers=answers[:MAX_ANSWERS], tag=tag,
            )
        )
    return out


# --------------------------------------------------------------------------- UDP


class _UdpCollector(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes | None, Exception | None]] = asyncio.Queue()
        self.count = 0

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.count += 1
        if self.count <= MAX_DATAGRAMS:
            self.queue.put_nowait((data, None))

    def error_received(self, exc: Exception) -> None:  # ICMP errors, e.g. port unreachable
        self.queue.put_nowait((None, exc))


def _start_query(
    hostname: str, resolver: str, engine: str, qtype: str, clock: Clock, tag: str | None
) -> tuple[DnsQuery, dns.message.Message | None, bytes]:
    """The record and the wire query for one lookup; a name that cannot be encoded fails the
    record at once (query None) instead of reaching the network."""
    q = DnsQuery(
        t0=clock.now(), t=0.0, failure=None, resolver=resolver, engine=engine,
        query_type=qtype, hostname=hostname, tag=tag,
    )
    try:
        query = _make_query(hostname, qtype)
        return q, query, query.to_wire()
    except Exception:
        q.failure = unknown("invalid_hostname")
        return q, None, b""


async def resolve_udp(
    hostname: str,
    resolver: str,
    qtype: str = "A",
    *,
    clock: Clock,
    timeout: float,
    late_window: float = DEFAULT_LATE_WINDOW,
    scrubber: Scrubber | None = None,
    tag: str | None = None,
    late_tasks: set[asyncio.Task[None]] | None = None,
) -> DnsQuery:
    """One query over UDP to ``resolver``. The first valid reply is the answer; further valid
    replies to the same query within ``late_window`` seconds of it are ``late_responses``.

    Without ``late_tasks`` the call listens through the window before it returns. With it,
    the call returns on the first valid reply and a background task (added to ``late_tasks``,
    removed when done) keeps the socket open for the rest of the window, appending late
    replies to the returned record; it closes the socket when the window ends or it is
    cancelled. Whoever passes the set awaits its tasks before the record is stored
    (``MeasurementContext.settle_late``), so the next step (TCP, TLS, HTTP) need not wait.

    Garbage, truncated or mismatched datagrams are skipped and the wait goes on, as a real
    stub does (an injector cannot silence the real answer by sending junk first); if no valid
    reply arrives before ``timeout``, the failure is ``dns_server_misbehaving`` when junk
    came, else ``generic_timeout``. ``resolver`` must parse (ValueError otherwise).
    """
    ip, port = parse_resolver(resolver)
    q, query, wire = _start_query(hostname, format_resolver(ip, port), "udp", qtype, clock, tag)
    if query is None:
        return _finish(q, clock, scrubber)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    transport: asyncio.DatagramTransport | None = None
    handed_off = False  # the background collector owns the socket now
    try:
        transport, proto = await loop.create_datagram_endpoint(
            _UdpCollector, remote_addr=(ip, port), family=socket.AF_INET6 if ":" in ip else socket.AF_INET
        )
        transport.sendto(wire)
        junk = False
        answered = False
        while (remaining := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):  # no extra task per datagram, unlike wait_for
                    data, err = await proto.queue.get()
            except TimeoutError:
                break
            if err is not None:
                q.failure = classify(err)
                break
            assert data is not None
            reply = _parse_reply(data, query, qtype, scrubber)
            if reply is None:
                junk = True
                continue
            answered = True
            q.t = clock.now()
            q.rcode, q.answers, q.failure = reply.rcode, reply.answers, reply.failure
            break
        if not answered:
            if q.failure is None:
                q.failure = "dns_server_misbehaving" if junk else "generic_timeout"
        else:
            listen = _listen_late(q, proto, query, qtype, clock, scrubber, loop.time() + late_window)
            if late_tasks is None:
                await listen
            else:
                task = loop.create_task(_collect_late(listen, transport))
                late_tasks.add(task)
                task.add_done_callback(late_tasks.discard)
                handed_off = True
    except Exception as exc:
        q.failure = classify(exc)
    finally:
        if transport is not None and not handed_off:
            transport.close()
    t_answer = q.t
    _finish(q, clock, scrubber)
    if q.rcode is not None:
        q.t = t_answer  # t is when the answer came, not the end of the late window
    return q


async def _listen_late(
    q: DnsQuery,
    proto: _UdpCollector,
    query: dns.message.Message,
    qtype: str,
    clock: Clock,
    scrubber: Scrubber | None,
    until: float,
) -> None:
    """Further valid replies to ``query`` until the loop time ``until`` -> ``q.late_responses``
    (at most MAX_LATE_RESPONSES). Junk and ICMP errors after the answer are ignored."""
    loop = asyncio.get_running_loop()
    while (remaining := until - loop.time()) > 0:
        try:
            async with asyncio.timeout(remaining):
                data, _err = await proto.queue.get()
        except TimeoutError:
            return
        if data is None:
            continue
        reply = _parse_reply(data, query, qtype, scrubber)
        if reply is not None and len(q.late_responses) < MAX_LATE_RESPONSES:
            q.late_responses.append(DnsLateResponse(t=clock.now(), rcode=reply.rcode, answers=reply.answers))


async def _collect_late(listen: Coroutine[Any, Any, None], transport: asyncio.DatagramTransport) -> None:
    """The background form of ``_listen_late``: it owns the socket and closes it however it ends."""
    try:
        await listen
    finally:
        transport.close()


# --------------------------------------------------------------------------- TCP


async def resolve_tcp(
    hostname: str,
    resolver: str,
    qtype: str = "A",
    *,
    clock: Clock,
    timeout: float,
    scrubber: Scrubber | None = None,
    tag: str | None = None,
) -> DnsQuery:
    """One query over TCP (RFC 7766 length-prefixed). A frame that is cut short or does not
    answer the query is ``dns_server_misbehaving``; a close before any byte is ``eof``."""
    ip, port = parse_resolver(resolver)
    q, query, wire = _start_query(hostname, format_resolver(ip, port), "tcp", qtype, clock, tag)
    if query is None:
        return _finish(q, clock, scrubber)
    try:
        q.failure = await asyncio.wait_for(_tcp_exchange(q, ip, port, query, wire, qtype, scrubber), timeout)
    except Exception as exc:
        q.failure = classify(exc)
    return _finish(q, clock, scrubber)


async def _tcp_exchange(
    q: DnsQuery, ip: str, port: int, query: dns.message.Message, wire: bytes, qtype: str, scrubber: Scrubber | None
) -> str | None:
    reader, writer = await asyncio.open_connection(ip, port)
    try:
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        try:
            head = await reader.readexactly(2)
        except asyncio.IncompleteReadError as exc:
            return "eof" if not exc.partial else "dns_server_misbehaving"
        (length,) = struct.unpack("!H", head)
        try:
            data = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            return "dns_server_misbehaving"
        reply = _parse_reply(data, query, qtype, scrubber)
        if reply is None:
            return "dns_server_misbehaving"
        q.rcode, q.answers = reply.rcode, reply.answers
        return reply.failure
    finally:
        writer.transport.abort()  # no graceful close: a hostile peer must not hold us


# --------------------------------------------------------------------------- DoH


async def resolve_doh(
    hostname: str,
    url: str,
    qtype: str = "A",
    *,
    clock: Clock,
    timeout: float,
    verify: bool | str | PathLike[str] | None = True,
    address_map: dict[str, list[str]] | None = None,
    resolve: Resolve | None = None,
    scrubber: Scrubber | None = None,
    tag: str | None = None,
) -> DnsQuery:
    """One RFC 8484 POST to ``url``. ``verify``: True (system roots), a CA bundle path (extra
    roots) or False. The DoH server's own name is taken from ``address_map``, else from
    ``resolve``, else from the system resolver. A non-200 status, a wrong content type or a
    body that is not an answer to the query is ``dns_server_misbehaving``."""
    q = DnsQuery(
        t0=clock.now(), t=0.0, failure=None, resolver=url, engine="doh", query_type=qtype,
        hostname=hostname, tag=tag,
    )
    try:
        query = _make_query(hostname, qtype)
        query.id = 0  # RFC 8484 4.1: id 0 keeps the request cacheable
        wire = query.to_wire()
    except Exception:
        q.failure = unknown("invalid_hostname")
        return _finish(q, clock, scrubber)
    if verify is False:
        ctx = unverified_context()
    elif verify is True or verify is None:
        ctx = verifying_context(None)
    else:
        ctx = verifying_context(verify)  # a CA bundle path: extra roots

    async def system(host: str) -> list[str]:
        return await system_addresses(host, timeout)

    backend = PinnedBackend(address_map, resolve if resolve is not None else system)
    try:
        async with make_client(backend, ctx, timeout) as client:
            q.failure = await asyncio.wait_for(_doh_exchange(q, client, url, query, wire, qtype, scrubber), timeout)
    except Exception as exc:
        q.failure = classify(exc)
    finally:
        await backend.aclose()
    return _finish(q, clock, scrubber)


async def _doh_exchange(
    q: DnsQuery,
    client: httpx.AsyncClient,
    url: str,
    query: dns.message.Message,
    wire: bytes,
    qtype: str,
    scrubber: Scrubber | None,
) -> str | None:
    headers = {"Content-Type": "application/dns-message", "Accept": "application/dns-message"}
    async with client.stream("POST", url, content=wire, headers=headers) as resp:
        if resp.status_code != 200:
            return "dns_server_misbehaving"
        body = bytearray()
        async for chunk in resp.aiter_bytes():
            body += chunk
            if len(body) > DOH_BODY_CAP:
                return "dns_server_misbehaving"
    reply = _parse_reply(bytes(body), query, qtype, scrubber)
    if reply is None:
        return "dns_server_misbehaving"
    q.rcode, q.answers = reply.rcode, reply.answers
    return reply.failure
