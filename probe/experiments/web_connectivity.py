"""web_connectivity: can this URL be reached? DNS (system and configured resolvers), TCP to
every resolved address, TLS with the URL's SNI, then HTTP GET following redirects. For https,
beside that path and at the same time: QUIC with the URL's SNI to every resolved address and
one HTTP/3 GET on each (UDP may pass where TCP is blocked, and the reverse), waited for only
while the target's HTTPS answer, if any, advertises HTTP/3 (``quic_wanted``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any
from urllib.parse import SplitResult, urlsplit

from probe.experiments.base import Experiment, Observation, Target
from probe.experiments.common import gather_all, host_addresses, parse_web_url, url_port
from probe.experiments.context import MeasurementContext
from probe.net.altsvc import advertises_h3
from probe.net.http import HEADER_VALUE_MAX, MAX_HEADERS
from probe.net.quic import HTTP3_TAG
from probe.schema import DnsQuery, HttpRequest, Measurement

# Settings.extra key: False turns the QUIC step off (`vantage run --no-quic`).
QUIC_OPTION = "quic"


class WebConnectivity(Experiment):
    name = "web_connectivity"
    version = "0.1.0"

    async def run(self, target: Target, net: MeasurementContext) -> list[Observation]:
        parts = parse_web_url(target.input)
        host = parts.hostname or ""
        observations: list[Observation] = []

        literal, addresses = await host_addresses(net, host, observations)
        if not addresses:
            return observations

        https = parts.scheme.lower() == "https"
        sni = None if literal is not None else host
        if https and net.settings.extra.get(QUIC_OPTION, True):
            # Side by side, each with its own step limit: QUIC adds no wall time to a path that
            # is itself waiting on TCP, TLS or HTTP. Most servers do not speak HTTP/3 and drop
            # UDP 443 in silence, so, as browsers and OONI do, QUIC is waited for only while it
            # can be evidence: once the TCP path got the target's answer and that answer does
            # not advertise h3 (Alt-Svc), the QUIC attempts end at once as `interrupted`.
            stop = asyncio.Event()
            tcp_task = asyncio.ensure_future(self._tcp_path(target, net, parts, addresses, https, literal))
            quic_task = asyncio.ensure_future(
                gather_all(net.quic_get(target.input, ip, url_port(parts), sni, stop=stop) for ip in addresses)
            )
            try:
                tcp_path = await tcp_task
                if not quic_wanted(tcp_path, target.input):
                    stop.set()
                quic_path = await quic_task
            except BaseException:
                for task in (tcp_task, quic_task):  # no step keeps running behind a cancelled measurement
                    task.cancel()
                await asyncio.gather(tcp_task, quic_task, return_exceptions=True)
                raise
            observations.extend(tcp_path)
            observations.extend(hs for hs, _ in quic_path)
            observations.extend(hop for _, hops in quic_path for hop in hops)
        else:
            observations.extend(await self._tcp_path(target, net, parts, addresses, https, literal))
        return observations

    async def _tcp_path(
        self, target: Target, net: MeasurementContext, parts: SplitResult, addresses: list[str], https: bool,
        literal: str | None,
    ) -> list[Observation]:
        host = parts.hostname or ""
        observations: list[Observation] = []
        # Every address at once: a black-holed address costs one timeout, not one per address.
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
        """Ok when the page arrived: the last hop of the redirect chain (over TCP) got a response."""
        chain = [h for h in m.http if not is_http3(h.tag)]
        return m.failure is None and bool(chain) and chain[-1].failure is None and chain[-1].status_code is not None


def quic_wanted(tcp_path: list[Observation], url: str) -> bool:
    """Whether QUIC to ``url``'s addresses is still worth waiting for, given the TCP path's
    records: yes unless a hop to the URL's own origin got a response (a status) and none of
    those responses advertises HTTP/3 in Alt-Svc. No response (TCP, TLS or HTTP failed: maybe
    blocked) keeps QUIC, which may pass where TCP does not. A response whose recorded headers
    were cut (MAX_HEADERS, or a value at HEADER_VALUE_MAX) may have lost its Alt-Svc: kept too."""
    origin = _origin(url)
    answered = [h for h in tcp_path if isinstance(h, HttpRequest) and not is_http3(h.tag)
                and h.status_code is not None and _origin(h.url) == origin]
    if not answered:
        return True
    for hop in answered:
        alt_svc = [h.value for h in hop.headers if h.name == "alt-svc"]
        if len(hop.headers) >= MAX_HEADERS or any(len(v) >= HEADER_VALUE_MAX for v in alt_svc):
            return True
        if advertises_h3(alt_svc):
            return True
    return False


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        port = None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def is_http3(tag: str | None) -> bool:
    """An HTTP/3 GET's record (its tag starts with "http3"), not a hop of the TCP redirect chain."""
    return tag is not None and tag.split(",", 1)[0] == HTTP3_TAG

