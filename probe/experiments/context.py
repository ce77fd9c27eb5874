"""The measurement context: the one object through which an experiment reaches the network
(after ooni/probe-cli's ``Trace`` and httpx's ``Client``).

It holds what every step of one measurement shares: the clock (every ``t0``/``t`` of a record
comes from it), the run's settings (resolvers, CA bundle, timeouts, scrubber) and the address
guard the control helper switches on. Experiments write ``await net.tcp_connect(ip, port)``
and never pass a clock, a timeout or a scrubber themselves; a test hands them a fake context
(tests/support/fake_net.py) and checks their decisions in milliseconds, without sockets.

A UDP lookup returns on its first answer; the late (possibly injected, possibly genuine)
replies within the late window are collected by background tasks the context tracks, which
``measure()`` awaits (``settle_late``) before it finishes the record, or stops
(``abandon_late``) when the measurement is cut short.

The record is scrubbed once, where ``measure()`` finishes it; the context passes the scrubber
to probe.net only where the layer needs it before the record exists (a body is hashed over its
scrubbed bytes, answers equal to the probe's own address are dropped at parse time).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from probe.net import dns, download, http, quic, tcp, tls
from probe.net._client import address_guard as _address_guard_var
from probe.net.clock import Clock
from probe.schema import DnsQuery, Download, HttpRequest, QuicHandshake, TcpConnect, TlsHandshake

if TYPE_CHECKING:
    from probe.experiments.base import Settings, Timeouts
    from probe.experiments.tunnels.transport import Outcome, PacketLog, UdpSession, Validator
    from probe.net.scrub import Scrubber

Resolve = Callable[[str], Awaitable[list[str]]]
AddressGuard = Callable[[str, int], str | None]


class MeasurementContext:
    """Clock, settings and the network steps of one measurement (``net`` in experiments)."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock if clock is not None else Clock()
        # Background listeners for late UDP DNS replies (see probe.net.dns.resolve_udp).
        self.late_collectors: set[asyncio.Task[None]] = set()

    # ----------------------------------------------------------------- what it holds

    @property
    def timeouts(self) -> Timeouts:
        return self.settings.timeouts

    @property
    def scrubber(self) -> Scrubber | None:
        return self.settings.scrubber

    @property
    def ca_bundle(self) -> str | None:
        return self.settings.ca_bundle

    @property
    def address_guard(self) -> AddressGuard | None:
        return self.settings.address_guard

    def now(self) -> float:
        return self.clock.now()

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        """Every connection made inside (tasks started inside included) passes the address
        guard, when one is set; probe.net checks it on the address actually connected to."""
        if self.address_guard is None:
            yield
            return
        token = _address_guard_var.set(self.address_guard)
        try:
            yield
        finally:
            _address_guard_var.reset(token)

    # ----------------------------------------------------------------- steps

    async def tcp_connect(self, ip: str, port: int, *, tag: str | None = None) -> TcpConnect:
        return await tcp.tcp_connect(
            ip, port, clock=self.clock, timeout=self.timeouts.connect, scrubber=self.scrubber, tag=tag
        )

    async def tls_handshake(self, ip: str, port: int, sni: str | None, *, tag: str | None = None) -> TlsHandshake:
        return await tls.tls_handshake(
            ip, port, sni, clock=self.clock, timeout=self.timeouts.tls, ca_bundle=self.ca_bundle,
            scrubber=self.scrubber, tag=tag,
        )

    async def http_get(
        self,
        url: str,
        *,
        address_map: dict[str, list[str]] | None,
        resolve: Resolve | None = None,
        max_redirects: int = 10,
        body_cap: int = http.DEFAULT_BODY_CAP,
        tag: str | None = None,
    ) -> list[HttpRequest]:
        return await http.http_get(
            url, clock=self.clock, timeout=self.timeouts.http, address_map=address_map, ca_bundle=self.ca_bundle,
            max_redirects=max_redirects, body_cap=body_cap, resolve=resolve, scrubber=self.scrubber, tag=tag,
        )

    async def quic_get(
        self, url: str, ip: str, port: int, sni: str | None, *, body_cap: int = http.DEFAULT_BODY_CAP,
        tag: str | None = None, stop: asyncio.Event | None = None,
    ) -> tuple[QuicHandshake, list[HttpRequest]]:
        """QUIC handshake (ALPN h3) to ``ip``:``port`` and one HTTP/3 GET of ``url`` over it;
        ``stop`` set: the attempt ends at once, its open step failed ``interrupted``."""
        return await quic.quic_get(
            url, ip, port, sni, clock=self.clock, timeout=self.timeouts.quic, ca_bundle=self.ca_bundle,
            body_cap=body_cap, scrubber=self.scrubber, tag=tag, stop=stop,
        )

    async def download(
        self,
        url: str,
        *,
        address_map: dict[str, list[str]] | None,
        resolve: Resolve | None = None,
        byte_cap: int = download.DEFAULT_BYTE_CAP,
        time_cap: float = download.DEFAULT_TIME_CAP,
        tag: str | None = None,
    ) -> Download:
        """A bounded download (probe.net.download): ``timeout`` bounds what comes before the body."""
        return await download.download(
            url, clock=self.clock, timeout=self.timeouts.http, address_map=address_map, byte_cap=byte_cap,
            time_cap=time_cap, ca_bundle=self.ca_bundle, resolve=resolve, scrubber=self.scrubber, tag=tag,
        )

    async def dns_system(self, hostname: str, *, tag: str | None = None) -> list[DnsQuery]:
        return await dns.resolve_system(
            hostname, clock=self.clock, timeout=self.timeouts.dns, scrubber=self.scrubber, tag=tag
        )

    async def dns_udp(
        self, hostname: str, resolver: str, qtype: str = "A", *, timeout: float | None = None, tag: str | None = None
    ) -> DnsQuery:
        return await dns.resolve_udp(
            hostname, resolver, qtype, clock=self.clock, timeout=self.timeouts.dns if timeout is None else timeout,
            late_window=dns.DEFAULT_LATE_WINDOW, scrubber=self.scrubber, tag=tag, late_tasks=self.late_collectors,
        )

    async def settle_late(self) -> None:
        """Wait until every late-reply collector has ended (each ends at most the late window
        after its answer), so the records hold all their ``late_responses``. If this wait is
        cancelled, the collectors are cancelled with it (gather's rule)."""
        while self.late_collectors:
            await asyncio.gather(*self.late_collectors, return_exceptions=True)

    async def abandon_late(self) -> None:
        """Stop every late-reply collector now and wait until its socket is closed (a
        measurement cut short by its timeout, an error or a stopped run). Idempotent."""
        tasks = list(self.late_collectors)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def dns_tcp(self, hostname: str, resolver: str, qtype: str = "A", *, tag: str | None = None) -> DnsQuery:
        return await dns.resolve_tcp(
            hostname, resolver, qtype, clock=self.clock, timeout=self.timeouts.dns, scrubber=self.scrubber, tag=tag
        )

    async def dns_doh(self, hostname: str, url: str, qtype: str = "A", *, tag: str | None = None) -> DnsQuery:
        return await dns.resolve_doh(
            hostname, url, qtype, clock=self.clock, timeout=self.timeouts.dns, verify=self.ca_bundle or True,
            resolve=self.doh_name_resolver(), scrubber=self.scrubber, tag=tag,
        )

    async def dns_lookup(
        self, hostname: str, *, qtypes: Iterable[str] = ("A", "AAAA"), tcp: bool = False
    ) -> list[DnsQuery]:
        """Every configured resolver asked concurrently; system first, then resolvers in order.

        Plain resolvers are asked over UDP (and also over TCP when ``tcp``), DoH URLs over HTTPS.
        """
        from probe.experiments.common import gather_all, is_doh

        qtypes = tuple(qtypes)
        jobs: list[Awaitable[DnsQuery | list[DnsQuery]]] = []
        if self.settings.use_system_resolver:
            jobs.append(self.dns_system(hostname))
        for resolver in self.settings.resolvers:
            for qtype in qtypes:
                if is_doh(resolver):
                    jobs.append(self.dns_doh(hostname, resolver, qtype))
                    continue
                jobs.append(self.dns_udp(hostname, resolver, qtype))
                if tcp:
                    jobs.append(self.dns_tcp(hostname, resolver, qtype))
        queries: list[DnsQuery] = []
        for result in await gather_all(jobs):
            queries.extend(result if isinstance(result, list) else [result])
        return queries

    def doh_name_resolver(self) -> Resolve | None:
        """How the name of a DoH server is found: the system resolver (None: probe.net's
        default), or, when the system resolver is off, the configured plain resolvers only."""
        from probe.experiments.common import gather_all, is_doh, resolved_addresses

        if self.settings.use_system_resolver:
            return None
        plain = [r for r in self.settings.resolvers if not is_doh(r)]
        clock, timeout = self.clock, self.timeouts.dns

        async def resolve(host: str) -> list[str]:
            # No scrubber: these answers are only connected to, never stored (nor are late
            # replies, so there is no late window to wait through).
            queries = await gather_all(
                dns.resolve_udp(host, r, qtype, clock=clock, timeout=timeout, late_window=0.0)
                for r in plain for qtype in ("A", "AAAA")
            )
            return resolved_addresses(queries)

        return resolve

    def redirect_resolver(self, record: list[DnsQuery]) -> Resolve:
        """How HTTP finds a host it is redirected to: the same resolvers the experiment uses,
        with every query kept in ``record`` (so the record shows how the redirect was resolved)."""
        from probe.experiments.common import resolved_addresses

        async def resolve(host: str) -> list[str]:
            queries = await self.dns_lookup(host)
            record.extend(queries)
            return resolved_addresses(queries)

        return resolve

    # ----------------------------------------------------------------- tunnels' transport

    def packet_log(self) -> PacketLog:
        from probe.experiments.tunnels.transport import PacketLog

        return PacketLog(self.clock)

    async def tcp_open(
        self, ip: str, port: int, *, tag: str | None = None, log: PacketLog | None = None
    ) -> tuple[TcpConnect, asyncio.StreamReader | None, asyncio.StreamWriter | None]:
        from probe.experiments.tunnels.transport import tcp_open

        return await tcp_open(ip, port, clock=self.clock, timeout=self.timeouts.connect, tag=tag, log=log)

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
        from probe.experiments.tunnels.transport import udp_exchange

        return await udp_exchange(ip, port, payload, log=log, validate=validate, timeout=timeout,
                                  retransmit=retransmit, summary=summary)

    @contextlib.asynccontextmanager
    async def udp_session(self, ip: str, port: int) -> AsyncIterator[UdpSession]:
        from probe.experiments.tunnels.transport import UdpSession

        async with UdpSession(ip, port) as session:
            yield session
