"""web_connectivity: can this URL be reached? DNS (system and configured resolvers), TCP to
every resolved address, TLS with the URL's SNI, then HTTP GET following redirects.
"""

from __future__ import annotations

from probe.experiments.base import Experiment, Observation, Settings, Target, current_clock
from probe.experiments.common import (
    ask_resolvers,
    gather_all,
    ip_literal,
    parse_web_url,
    redirect_resolver,
    resolved_addresses,
    url_port,
)
from probe.net import http, tcp, tls
from probe.net.clock import Clock
from probe.schema import DnsQuery, Measurement, TcpConnect, TlsHandshake


class WebConnectivity(Experiment):
    name = "web_connectivity"
    version = "0.1.0"

    async def run(self, target: Target, settings: Settings) -> list[Observation]:
        parts = parse_web_url(target.input)
        clock = current_clock()
        host = parts.hostname or ""
        observations: list[Observation] = []

        literal = ip_literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            queries = await ask_resolvers(host, settings, clock)
            observations.extend(queries)
            addresses = resolved_addresses(queries)
        if not addresses:
            return observations

        # Every address at once: a black-holed address costs one timeout, not one per address.
        https = parts.scheme.lower() == "https"
        sni = None if literal is not None else host
        port = url_port(parts)
        endpoints = await gather_all(
            _endpoint(ip, port, sni if https else None, https, settings, clock) for ip in addresses
        )
        reachable: list[str] = []
        for ip, steps in zip(addresses, endpoints, strict=True):
            observations.extend(steps)
            if steps[0].failure is None:
                reachable.append(ip)
        if not reachable:
            # Every connect failed: the TCP observations already say how; HTTP would only repeat it.
            return observations

        # HTTP is pinned to what this measurement resolved (reachable addresses first), so it
        # never asks a resolver of its own.
        address_map = {host: reachable + [ip for ip in addresses if ip not in reachable]}
        redirect_queries: list[DnsQuery] = []
        hops = await http.http_get(
            target.input,
            clock=clock,
            timeout=settings.timeouts.http,
            address_map=address_map,
            ca_bundle=settings.ca_bundle,
            resolve=redirect_resolver(settings, clock, redirect_queries),
            scrubber=settings.scrubber,
        )
        for q in redirect_queries:
            q.tag = q.tag or "redirect"
        observations.extend(redirect_queries)
        observations.extend(hops)
        return observations

    def succeeded(self, m: Measurement) -> bool:
        """Ok when the page arrived: the last hop of the redirect chain got a response."""
        return m.failure is None and bool(m.http) and m.http[-1].failure is None and m.http[-1].status_code is not None


async def _endpoint(
    ip: str, port: int, sni: str | None, https: bool, settings: Settings, clock: Clock
) -> list[TcpConnect | TlsHandshake]:
    """TCP connect, then (for https, if it connected) a TLS handshake with the URL's SNI."""
    connect = await tcp.tcp_connect(
        ip, port, clock=clock, timeout=settings.timeouts.connect, scrubber=settings.scrubber
    )
    steps: list[TcpConnect | TlsHandshake] = [connect]
    if https and connect.failure is None:
        steps.append(
            await tls.tls_handshake(
                ip, port, sni, clock=clock, timeout=settings.timeouts.tls, ca_bundle=settings.ca_bundle,
                scrubber=settings.scrubber,
            )
        )
    return steps
