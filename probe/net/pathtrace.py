"""Where the censor sits: the offending packet (a DNS query, a TLS ClientHello, an HTTP request)
replayed with IP TTL 1, 2, 3, ... (after Censored Planet's CenTrace and OONI's tlsmiddlebox).

A packet with TTL k dies at the k-th router, which says so with ICMP time-exceeded; an answer to
a packet that died on the way (a forged DNS answer, a reset, a blockpage) cannot come from the
target, so the first TTL that draws one is where the interference sits, and the time-exceeded
of TTL k-1 names the router before it. For TCP the handshake is a real one at full TTL and only
the payload is TTL-limited: a stateful censor (one that only acts on flows whose handshake it
saw) then behaves as it does for the real client.

Needs CAP_NET_RAW: raw sockets read the routers' ICMP and the answers with their IP TTL. IPv4
only. The pitfalls the method is known for, and what this module does about each:
- ICMP rate limiting (Linux routers send about one time-exceeded per second per source after a
  small burst): every TTL is tried again when nothing came back.
- a router (the censor's, often) that sends no time-exceeded: an answer without ICMP is only
  called interference when it came at a TTL below the target's distance, which a control replay
  with a benign name measures, or when it differs from the target's answer to that replay.
- an injector that stamps its packets with a fixed TTL: the answer's IP TTL is kept (answer_ttl).
- a censor that does not decrement TTL (a bridge): it shows at the TTL of the next router, which
  is as close as TTL can tell.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from probe.net.errors import classify
from probe.schema import HOP_ANSWER_KINDS, PathHop

DEFAULT_MAX_TTL = 30
# A round trip across a continent is well under 0.5 s; an injector answers at line rate. Waiting
# the whole window at every TTL (not stopping at the first ICMP) keeps an injection that lags
# its router's time-exceeded from being counted at the next TTL.
DEFAULT_WAIT_S = 1.5
DEFAULT_TRIES = 2  # a second try per silent TTL rides out ICMP rate limiting
# traceroute's gap limit: this many silent TTLs in a row and the rest of the path is not answering.
DEFAULT_SILENT_LIMIT = 5
GRACE_S = 0.3  # after an answer, how long the same TTL's time-exceeded may still be on its way
NEED_PRIVILEGE = (
    "locating a censor needs root or CAP_NET_RAW (raw sockets read the routers' ICMP "
    "time-exceeded messages); run it with sudo, or give the Python binary cap_net_raw"
)


def privilege_problem() -> str | None:
    """Why this process cannot trace (None when it can)."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
    except PermissionError:
        return NEED_PRIVILEGE
    except OSError as exc:
        return f"cannot open a raw ICMP socket: {exc.strerror or exc}"
    return None


@dataclass
class Replay:
    """What one TTL-limited send of the offending packet drew."""

    responder: str | None = None
    icmp: str | None = None  # "time_exceeded" | "unreachable"
    answer: str | None = None  # one of HOP_ANSWER_KINDS
    detail: str | None = None
    answer_ttl: int | None = None

    def hop(self, ttl: int) -> PathHop:
        kind = self.answer or self.icmp or "no_response"
        return PathHop(ttl=ttl, responder=publishable(self.responder, ttl), kind=kind, detail=self.detail,
                       answer_ttl=self.answer_ttl)


def publishable(addr: str | None, ttl: int) -> str | None:
    """The responder as it may be stored. The first hop of a home network is the volunteer's
    router, and some routers answer from their WAN side: that global address is the
    volunteer's own public address, so a global first hop is never written. Private
    (RFC 1918, CGNAT) first hops and every later hop are kept; the record scrubber still removes
    any address known to be the probe's."""
    if addr is None:
        return None
    if ttl <= 1:
        try:
            if ipaddress.ip_address(addr).is_global:
                return None
        except ValueError:
            return None
    return addr


# --------------------------------------------------------------------------- payloads


def client_hello(sni: str) -> bytes:
    """A real ClientHello for ``sni`` (Python's TLS stack, the bytes a browser-like client sends)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def http_request(host: str, path: str = "/") -> bytes:
    return (f"GET {path or '/'} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0\r\nAccept: */*\r\n"
            "Connection: close\r\n\r\n").encode("latin-1")


def dns_query(hostname: str, qtype: str = "A") -> tuple[int, bytes]:
    import dns.message

    msg = dns.message.make_query(hostname, qtype)
    return msg.id, msg.to_wire()


def describe_payload(data: bytes) -> tuple[str, str]:
    """(kind, detail) of the first bytes a TCP answer carried."""
    if data.startswith(b"HTTP/"):
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1", "replace").split("\r\n")
        detail = head[0]
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "location":
                detail += f" location={value.strip()[:200]}"
        return "http", detail[:300]
    if data[:1] == b"\x16":
        return "tls", "handshake record"
    if data[:1] == b"\x15":
        return "tls", "alert record"
    return "data", f"{len(data)} bytes: {data[:16].hex()}"


def describe_dns(payload: bytes, query_id: int) -> str | None:
    """"RCODE TYPE value,..." of a DNS answer to our query, or None when it is not one."""
    import dns.exception
    import dns.message
    import dns.rcode
    import dns.rdatatype

    try:
        msg = dns.message.from_wire(payload)
    except (dns.exception.DNSException, ValueError):
        return None
    if msg.id != query_id or not msg.flags & 0x8000:
        return None
    values = [f"{dns.rdatatype.to_text(rrset.rdtype)} {rd}" for rrset in msg.answer for rd in rrset]
    return " ".join([dns.rcode.to_text(msg.rcode()), ",".join(values)]).strip()[:300]


# --------------------------------------------------------------------------- raw sockets


def _ipv4_header(pkt: bytes) -> tuple[int, int, str, str, int] | None:
    """(header length, protocol, src, dst, ttl) of an IPv4 packet."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    return ihl, pkt[9], socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20]), pkt[8]


class Watcher:
    """Raw sockets that see every ICMP message and every packet of one transport protocol
    arriving at this host (copies: the kernel still delivers them to the real sockets)."""

    def __init__(self, proto: int) -> None:
        self.proto = proto
        self.icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
        except BaseException:
            self.icmp.close()
            raise
        for s in (self.icmp, self.raw):
            s.setblocking(False)

    def close(self) -> None:
        self.icmp.close()
        self.raw.close()

    def drain(self) -> None:
        for s in (self.icmp, self.raw):
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while s.recv(65535):
                    pass

    def icmp_for(self, pkt: bytes, dst: str, sport: int, dport: int) -> tuple[str, str] | None:
        """(responder, kind) when ``pkt`` is an ICMP error about our packet to dst:dport from sport."""
        outer = _ipv4_header(pkt)
        if outer is None or outer[1] != socket.IPPROTO_ICMP:
            return None
        ihl, _, src, _, _ = outer
        icmp_type = pkt[ihl] if len(pkt) > ihl else -1
        kind = {11: "time_exceeded", 3: "unreachable"}.get(icmp_type)
        inner = _ipv4_header(pkt[ihl + 8:])
        if kind is None or inner is None:
            return None
        iihl, iproto, _, idst, _ = inner
        ports = pkt[ihl + 8 + iihl: ihl + 8 + iihl + 4]
        if iproto != self.proto or idst != dst or len(ports) < 4:
            return None
        if int.from_bytes(ports[:2], "big") != sport or int.from_bytes(ports[2:], "big") != dport:
            return None
        return src, kind

    def watch(self, dst: str, dport: int, sport: int, wait: float,
              answer: Callable[[bytes, int], tuple[str, str | None] | None]) -> Replay:
        """Collect, for ``wait`` seconds, the ICMP error about our packet and the first answer
        from dst:dport to sport; ``answer(transport segment, flags)`` says what a packet is."""
        out = Replay()
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (out.answer and out.responder):
                return out
            ready, _, _ = select.select([self.icmp, self.raw], [], [], left)
            for s in ready:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    pkt = s.recv(65535)
                    if s is self.icmp:
                        found = self.icmp_for(pkt, dst, sport, dport)
                        if found and out.responder is None:
                            out.responder, out.icmp = found
                        continue
                    if out.answer is not None:
                        continue
                    head = _ipv4_header(pkt)
                    if head is None or head[2] != dst:
                        continue
                    ihl, _, _, _, ttl = head
                    seg = pkt[ihl:]
                    if len(seg) < 8 or int.from_bytes(seg[0:2], "big") != dport \
                            or int.from_bytes(seg[2:4], "big") != sport:
                        continue
                    found_answer = answer(seg, ttl)
                    if found_answer is not None:
                        out.answer, out.detail = found_answer
                        out.answer_ttl = ttl
                        deadline = min(deadline, time.monotonic() + GRACE_S)


def _tcp_answer(seg: bytes, _ttl: int) -> tuple[str, str | None] | None:
    if len(seg) < 20:
        return None
    off = (seg[12] >> 4) * 4
    flags = seg[13]
    payload = seg[off:]
    if flags & 0x04:
        return "rst", None
    if payload:
        return describe_payload(payload)
    if flags & 0x01:
        return "fin", None
    return None  # a bare ACK (of our payload: it reached the target) is not an answer yet


# --------------------------------------------------------------------------- one TTL


def replay_tcp(watcher: Watcher, ip: str, port: int, payload: bytes, ttl: int, *, wait: float,
               connect_timeout: float) -> Replay | str:
    """Handshake at full TTL, then ``payload`` with IP TTL ``ttl``; a failure string when the
    handshake itself fails."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    default_ttl = 64
    try:
        s.settimeout(connect_timeout)
        try:
            s.connect((ip, port))
        except OSError as exc:
            return classify(exc)
        sport = s.getsockname()[1]  # the port only; the probe's address is never kept
        default_ttl = s.getsockopt(socket.IPPROTO_IP, socket.IP_TTL)
        watcher.drain()
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        s.sendall(payload)
        return watcher.watch(ip, port, sport, wait, _tcp_answer)
    finally:
        # Abort (RST, not FIN): nothing else goes out at TTL ttl, and the server forgets us now.
        with contextlib.suppress(OSError):
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, default_ttl)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()


def replay_dns(watcher: Watcher, resolver: str, port: int, hostname: str, ttl: int, *, wait: float) -> Replay:
    query_id, wire = dns_query(hostname)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("0.0.0.0", 0))
        sport = s.getsockname()[1]
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        watcher.drain()
        s.sendto(wire, (resolver, port))

        def answer(seg: bytes, _ttl: int) -> tuple[str, str | None] | None:
            detail = describe_dns(seg[8:], query_id)
            return None if detail is None else ("dns_answer", detail)

        return watcher.watch(resolver, port, sport, wait, answer)
    finally:
        s.close()


# --------------------------------------------------------------------------- the trace


@dataclass
class TraceSettings:
    max_ttl: int = DEFAULT_MAX_TTL
    wait: float = DEFAULT_WAIT_S
    tries: int = DEFAULT_TRIES
    silent_limit: int = DEFAULT_SILENT_LIMIT
    connect_timeout: float = 10.0


def trace(protocol: str, ip: str, port: int, hostname: str, settings: TraceSettings, *,
          path: str = "/") -> tuple[list[PathHop], str | None]:
    """(hops, failure): one replay per TTL until an answer, an ICMP unreachable, a failed
    handshake, ``silent_limit`` silent TTLs in a row, or ``max_ttl``. Blocking; needs CAP_NET_RAW."""
    if ":" in ip:
        return [], "unknown_failure:ipv6 targets are not traced (IPv4 only)"
    payload = b""
    if protocol == "tls":
        payload = client_hello(hostname)
    elif protocol == "http":
        payload = http_request(hostname, path)
    elif protocol != "dns":
        raise ValueError(f"unknown protocol {protocol!r}")
    watcher = Watcher(socket.IPPROTO_UDP if protocol == "dns" else socket.IPPROTO_TCP)
    hops: list[PathHop] = []
    silent = 0
    try:
        for ttl in range(1, settings.max_ttl + 1):
            replay: Replay | str = Replay()
            for _ in range(max(1, settings.tries)):
                if protocol == "dns":
                    replay = replay_dns(watcher, ip, port, hostname, ttl, wait=settings.wait)
                else:
                    replay = replay_tcp(watcher, ip, port, payload, ttl, wait=settings.wait,
                                        connect_timeout=settings.connect_timeout)
                if isinstance(replay, str) or replay.icmp or replay.answer:
                    break
            if isinstance(replay, str):
                if not hops:
                    return hops, replay  # the target is down (or blocked at the handshake)
                # Later handshakes can fail too: some censors block the address for a while
                # after the offending packet (residual censorship).
                hops.append(PathHop(ttl=ttl, responder=None, kind="connect_failed", detail=replay))
                break
            hop = replay.hop(ttl)
            hops.append(hop)
            if hop.kind in HOP_ANSWER_KINDS or hop.kind == "unreachable":
                break
            silent = silent + 1 if hop.kind == "no_response" else 0
            if silent >= settings.silent_limit:
                break
    finally:
        watcher.close()
    return hops, None


# --------------------------------------------------------------------------- the decision


@dataclass
class Location:
    interference_ttl: int | None = None
    interference: str | None = None
    hop_before: str | None = None
    basis: str | None = None
    target_ttl: int | None = None


def first_answer(hops: list[PathHop]) -> PathHop | None:
    return next((h for h in hops if h.kind in HOP_ANSWER_KINDS), None)


def needs_control(hops: list[PathHop]) -> bool:
    """Whether the trace alone cannot tell what happened: its first answer drew no
    time-exceeded (so the packet may have reached the target), or it ended in silence (a censor
    that drops, or a path that stops answering ICMP: only the control replay tells them apart)."""
    first = first_answer(hops)
    if first is not None:
        return first.responder is None
    return bool(hops) and hops[-1].kind == "no_response"


def locate(hops: list[PathHop], control_hops: list[PathHop] | None = None) -> Location:
    """Where the first answer that cannot be the target's came from (pure; no sockets).

    - an answer at a TTL that also drew time-exceeded: the packet died before the target, so
      the answer was sent from that hop (basis "icmp");
    - an answer at a TTL below the one at which the target answered the control replay
      (basis "before_target");
    - an answer at the target's TTL of another kind than the target's answer to the control
      replay (a reset where the control got a ServerHello; basis "differs_at_target"): the
      censor sits at the target's last hop or does not decrement TTL.
    - no answer, the trace silent from some TTL on, where the control replay still drew
      time-exceeded (or the target's answer): a censor that drops, located at that TTL
      (basis "dropped", interference "drop").
    Anything else (the target's own kind of answer at its own TTL; a down target) locates nothing.
    """
    control = first_answer(control_hops or [])
    loc = Location(target_ttl=control.ttl if control else None)
    first = first_answer(hops)
    if first is None:
        dropped = _dropped_at(hops, control_hops or [], control)
        if dropped is not None:
            loc.interference_ttl, loc.interference, loc.basis = dropped, "drop", "dropped"
            loc.hop_before = _responder(dropped - 1, hops, control_hops or [])
        return loc
    if first.responder is not None:
        loc.basis = "icmp"
    elif control is not None and first.ttl < control.ttl:
        loc.basis = "before_target"
    elif control is not None and first.ttl == control.ttl and first.kind != control.kind:
        loc.basis = "differs_at_target"
    else:
        return loc
    loc.interference_ttl, loc.interference = first.ttl, first.kind
    loc.hop_before = _responder(first.ttl - 1, hops, control_hops or [])
    return loc


def _responder(ttl: int, *sources: list[PathHop]) -> str | None:
    for source in sources:
        found = next((h.responder for h in source if h.ttl == ttl and h.responder), None)
        if found:
            return found
    return None


def _dropped_at(hops: list[PathHop], control_hops: list[PathHop], control: PathHop | None) -> int | None:
    """The TTL from which the offending packet vanished while the benign one went on: the trace
    ended in silence right after its last time-exceeded, and the control replay drew a
    time-exceeded at that TTL (the router there answers, so ICMP limits do not explain the
    silence) or the target's answer there. None otherwise (a down target: the control fell
    silent too)."""
    if control is None or not hops or hops[-1].kind != "no_response":
        return None
    answered = [h.ttl for h in hops if h.responder is not None]
    k = (max(answered) if answered else 0) + 1
    if k > control.ttl or any(h.kind != "no_response" for h in hops if h.ttl >= k):
        return None
    at_k = next((h for h in control_hops if h.ttl == k), None)
    if at_k is None or not (at_k.responder is not None or at_k is control):
        return None
    return k
