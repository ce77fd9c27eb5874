"""A fake measurement context: the network as a script, no sockets (after httpx's MockTransport).

Experiments take every step through their ``MeasurementContext``; this subclass answers the
steps from tables and records what was asked, so an experiment's decisions (which steps it
takes, in which order, what it does with a failure) are tested in milliseconds. The network
layer itself is tested against loopback servers and the netns labs.

    net = FakeNet(dns={"a.test": ["192.0.2.1"]}, tcp={"192.0.2.1": "connection_refused"})
    observations = asyncio.run(WebConnectivity().run(Target("http://a.test/"), net))
    assert net.steps == [("dns_system", "a.test"), ("tcp", "192.0.2.1", 80)]
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from probe.experiments.base import Settings
from probe.experiments.context import MeasurementContext, Resolve
from probe.experiments.tunnels.transport import Outcome, PacketLog, Validator
from probe.schema import DnsAnswer, DnsQuery, HttpHeader, HttpRequest, QuicHandshake, TcpConnect, TlsHandshake


@dataclass
class Page:
    """What the fake web server answers for one URL (a failure instead of a status, if set)."""

    status: int | None = 200
    failure: str | None = None
    location: str | None = None
    alt_svc: str | None = None  # the response's Alt-Svc header (e.g. 'h3=":443"'), if any


class FakeNet(MeasurementContext):
    """Scripted answers: ``dns`` host -> addresses (a string: the failure of every query for
    it); ``tcp``/``tls`` address -> failure (missing: success); ``http`` URL -> Page (missing:
    200); ``injected`` host -> addresses that answer a query sent to the injection target;
    ``udp`` a function (ip, port, first payload) -> Outcome for tunnel exchanges; ``quic``
    address -> failure of the QUIC handshake (missing: success, then the HTTP/3 GET answers
    like ``http``), arriving after ``quic_wait`` seconds of real time (a silent server holds
    the attempt for the QUIC step limit) unless the experiment sets ``stop`` first."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        dns: dict[str, list[str] | str] | None = None,
        tcp: dict[str, str] | None = None,
        tls: dict[str, str] | None = None,
        http: dict[str, Page] | None = None,
        injected: dict[str, list[str]] | None = None,
        udp: Callable[[str, int, bytes], Outcome] | None = None,
        quic: dict[str, str] | None = None,
        quic_wait: float = 0.0,
    ) -> None:
        super().__init__(settings or Settings())
        self.dns, self.tcp, self.tls = dns or {}, tcp or {}, tls or {}
        self.http, self.injected, self.udp = http or {}, injected or {}, udp
        self.quic, self.quic_wait = quic or {}, quic_wait
        self.steps: list[tuple[Any, ...]] = []

    # ----------------------------------------------------------------- DNS

    def _query(self, hostname: str, resolver: str, engine: str, qtype: str, tag: str | None,
               script: list[str] | str | None) -> DnsQuery:
        t0 = self.now()
        q = DnsQuery(t0=t0, t=t0, failure=None, resolver=resolver, engine=engine, query_type=qtype,
                     hostname=hostname, tag=tag)
        if script is None:
            q.failure = "dns_nxdomain"
            q.rcode = "NXDOMAIN"
        elif isinstance(script, str):
            q.failure = script
        else:
            version = 6 if qtype == "AAAA" else 4
            q.answers = [DnsAnswer(qtype, a) for a in script if (":" in a) == (version == 6)]
            q.rcode = "NOERROR"
            q.failure = None if q.answers else "dns_no_answer"
        return q

    async def dns_system(self, hostname: str, *, tag: str | None = None) -> list[DnsQuery]:
        self.steps.append(("dns_system", hostname))
        script = self.dns.get(hostname)
        return [self._query(hostname, "system", "system", qtype, tag, script) for qtype in ("A", "AAAA")]

    async def dns_udp(self, hostname: str, resolver: str, qtype: str = "A", *, timeout: float | None = None,
                      tag: str | None = None) -> DnsQuery:
        self.steps.append(("dns_udp", hostname, resolver, qtype, tag))
        if tag == "injection_check":
            # Nothing runs at the injection target: silence, unless an injector answers.
            addresses = self.injected.get(hostname)
            if addresses is None:
                t0 = self.now()
                return DnsQuery(t0=t0, t=t0, failure="generic_timeout", resolver=resolver, engine="udp",
                                query_type=qtype, hostname=hostname, tag=tag)
            return self._query(hostname, resolver, "udp", qtype, tag, addresses)
        return self._query(hostname, resolver, "udp", qtype, tag, self.dns.get(hostname))

    async def dns_tcp(self, hostname: str, resolver: str, qtype: str = "A", *, tag: str | None = None) -> DnsQuery:
        self.steps.append(("dns_tcp", hostname, resolver, qtype))
        return self._query(hostname, resolver, "tcp", qtype, tag, self.dns.get(hostname))

    async def dns_doh(self, hostname: str, url: str, qtype: str = "A", *, tag: str | None = None) -> DnsQuery:
        self.steps.append(("dns_doh", hostname, url, qtype))
        return self._query(hostname, url, "doh", qtype, tag, self.dns.get(hostname))

    # ----------------------------------------------------------------- TCP, TLS, HTTP

    async def tcp_connect(self, ip: str, port: int, *, tag: str | None = None) -> TcpConnect:
        self.steps.append(("tcp", ip, port))
        t0 = self.now()
        return TcpConnect(t0=t0, t=t0, failure=self.tcp.get(ip), ip=ip, port=port, tag=tag)

    async def tls_handshake(self, ip: str, port: int, sni: str | None, *, tag: str | None = None) -> TlsHandshake:
        self.steps.append(("tls", ip, port, sni))
        t0 = self.now()
        failure = self.tls.get(ip)
        rec = TlsHandshake(t0=t0, t=t0, failure=failure, ip=ip, port=port, sni=sni, tag=tag)
        if failure is None:
            rec.tls_version, rec.cert_valid = "TLSv1.3", sni is not None or None
        return rec

    async def http_get(
        self,
        url: str,
        *,
        address_map: dict[str, list[str]] | None,
        resolve: Resolve | None = None,
        max_redirects: int = 10,
        body_cap: int = 0,
        tag: str | None = None,
    ) -> list[HttpRequest]:
        from urllib.parse import urljoin, urlsplit

        self.steps.append(("http", url, {h: list(a) for h, a in (address_map or {}).items()}))
        hops: list[HttpRequest] = []
        current: str | None = url
        while current is not None:
            host = urlsplit(current).hostname or ""
            addresses = (address_map or {}).get(host)
            if addresses is None and resolve is not None:
                addresses = await resolve(host)
            page = self.http.get(current, Page())
            t0 = self.now()
            rec = HttpRequest(t0=t0, t=t0, failure=page.failure, url=current, tag=tag,
                              ip=addresses[0] if addresses else None)
            hops.append(rec)
            if not addresses:
                rec.failure = "unknown_failure:no_address_for_host"
                break
            if page.failure is not None:
                break
            rec.status_code = page.status
            if page.alt_svc is not None:
                rec.headers = [HttpHeader("alt-svc", page.alt_svc)]
            current = urljoin(current, page.location) if page.location else None
            if current is not None and len(hops) > max_redirects:
                rec.failure = "http_too_many_redirects"
                break
        return hops

    async def quic_get(
        self, url: str, ip: str, port: int, sni: str | None, *, body_cap: int = 0, tag: str | None = None,
        stop: asyncio.Event | None = None,
    ) -> tuple[QuicHandshake, list[HttpRequest]]:
        from probe.net.quic import HTTP3_TAG

        self.steps.append(("quic", ip, port, sni))
        t0 = self.now()
        failure = self.quic.get(ip)
        if self.quic_wait > 0:
            stopped = stop or asyncio.Event()
            try:
                await asyncio.wait_for(stopped.wait(), self.quic_wait)
                failure = "interrupted"
            except TimeoutError:
                pass
        rec = QuicHandshake(t0=t0, t=self.now(), failure=failure, ip=ip, port=port, sni=sni, tag=tag)
        if failure is not None:
            return rec, []
        rec.alpn, rec.quic_version, rec.cert_valid = "h3", "1", sni is not None or None
        page = self.http.get(url, Page())
        hop = HttpRequest(t0=t0, t=t0, failure=page.failure, url=url, ip=ip, http_version="HTTP/3", tag=HTTP3_TAG,
                          status_code=None if page.failure else page.status)
        return rec, [hop]

    # ----------------------------------------------------------------- tunnels

    async def udp_exchange(
        self,
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
        first = payload(0)
        self.steps.append(("udp", ip, port, summary))
        log.sent(first, summary)
        if self.udp is None:
            return Outcome(failure="generic_timeout")
        return self.udp(ip, port, first)
