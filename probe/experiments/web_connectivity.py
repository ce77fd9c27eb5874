"""web_connectivity: can this URL be reached? DNS (system and configured resolvers), TCP to
every resolved address, TLS with the URL's SNI, then HTTP GET following redirects.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from probe.experiments.base import Experiment, Observation, Target
from probe.experiments.common import gather_all, ip_literal, parse_web_url, resolved_addresses, url_port
from probe.experiments.context import MeasurementContext
from probe.schema import DnsQuery, Measurement


class WebConnectivity(Experiment):
    name = "web_connectivity"
    version = "0.1.0"

    async def run(self, target: Target, net: MeasurementContext) -> list[Observation]:
        parts = parse_web_url(target.input)
        host = parts.hostname or ""
        observations: list[Observation] = []

        literal = ip_literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            queries = await net.dns_lookup(host)
            observations.extend(queries)
            addresses = resolved_addresses(queries)
        if not addresses:
            return observations

        # Every address at once: a black-holed address costs one timeout, not one per address.
        https = parts.scheme.lower() == "https"
        port = url_port(parts)
        connects = await gather_all(net.tcp_connect(ip, port) for ip in addresses)
        observations.extend(connects)
        reachable = [c.ip for c in connects if c.failure is None]
        if not reachable:
            # Every connect failed: the TCP observations already say how; HTTP would only repeat it.
            return observations

        # TLS on every address that connected and the HTTP fetch run side by side, so a path
        # that drops the handshake costs one step limit, not two.
        steps: list[Awaitable[Any]] = []
        if https:
            sni = None if literal is not None else host
            steps += [net.tls_handshake(ip, port, sni) for ip in reachable]
        # HTTP is pinned to what this measurement resolved (reachable addresses first); a
        # redirect to another host is resolved through the same resolvers, on the record.
        address_map = {host: reachable + [ip for ip in addresses if ip not in reachable]}
        redirect_queries: list[DnsQuery] = []
        steps.append(
            net.http_get(target.input, address_map=address_map, resolve=net.redirect_resolver(redirect_queries))
        )
        *handshakes, hops = await gather_all(steps)
        observations.extend(handshakes)
        for q in redirect_queries:
            q.tag = q.tag or "redirect"
        observations.extend(redirect_queries)
        observations.extend(hops)
        return observations

    def succeeded(self, m: Measurement) -> bool:
        """Ok when the page arrived: the last hop of the redirect chain got a response."""
        return m.failure is None and bool(m.http) and m.http[-1].failure is None and m.http[-1].status_code is not None

