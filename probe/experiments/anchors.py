"""anchors: cheap reachability of always-up targets (root DNS servers, anycast resolvers, large
CDNs), the heartbeat shutdown detection needs: when the anchors fail too, the network is down.

Inputs: ``tcp://IP:PORT`` (a TCP connect), ``dns://IP[:PORT][/?name=.&qtype=NS]`` (one UDP
query, by default "." NS, which every root server and public resolver answers), and
``http(s)://...`` URLs (DNS through the configured resolvers if the host is a name, then one
HTTP GET without following redirects). The shipped list is testlists/anchors.csv; anchors are
contacted only when a user runs this experiment.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from probe.experiments.base import Experiment, InputError, Observation, Settings, Target, current_clock
from probe.experiments.common import (
    ask_resolvers,
    ip_literal,
    parse_web_url,
    resolved_addresses,
)
from probe.net import dns, http, tcp
from probe.schema import Measurement

ANCHOR_SCHEMES = ("tcp", "dns", "http", "https")
# An anchor answers with a page we do not need: read a little of it, never a whole body.
ANCHOR_BODY_CAP = 4096


class Anchors(Experiment):
    name = "anchors"
    version = "0.1.0"

    async def run(self, target: Target, settings: Settings) -> list[Observation]:
        try:
            parts = urlsplit(target.input)
            port = parts.port
        except ValueError as exc:
            raise InputError(f"malformed anchor {target.input!r}: {exc}") from None
        scheme = parts.scheme.lower()
        clock = current_clock()
        host = parts.hostname or ""

        if scheme == "tcp":
            ip = ip_literal(host)
            if ip is None or port is None:
                raise InputError(f"a tcp anchor is tcp://IP:PORT, got {target.input!r}")
            return [
                await tcp.tcp_connect(
                    ip, port, clock=clock, timeout=settings.timeouts.connect, scrubber=settings.scrubber
                )
            ]

        if scheme == "dns":
            ip = ip_literal(host)
            if ip is None:
                raise InputError(f"a dns anchor is dns://IP[:PORT], got {target.input!r}")
            query = parse_qs(parts.query)
            name = query.get("name", ["."])[0]
            qtype = query.get("qtype", ["NS"])[0].upper()
            resolver = f"[{ip}]:{port or 53}" if ":" in ip else f"{ip}:{port or 53}"
            return [
                await dns.resolve_udp(
                    name, resolver, qtype, clock=clock, timeout=settings.timeouts.dns, scrubber=settings.scrubber
                )
            ]

        if scheme in ("http", "https"):
            web = parse_web_url(target.input)
            observations: list[Observation] = []
            literal = ip_literal(web.hostname or "")
            if literal is not None:
                addresses = [literal]
            else:
                queries = await ask_resolvers(web.hostname or "", settings, clock)
                observations.extend(queries)
                addresses = resolved_addresses(queries)
                if not addresses:
                    return observations
            observations.extend(
                await http.http_get(
                    target.input,
                    clock=clock,
                    timeout=settings.timeouts.http,
                    address_map={web.hostname or "": addresses},
                    ca_bundle=settings.ca_bundle,
                    max_redirects=0,
                    body_cap=ANCHOR_BODY_CAP,
                    scrubber=settings.scrubber,
                )
            )
            return observations

        raise InputError(f"an anchor is one of {', '.join(s + '://' for s in ANCHOR_SCHEMES)}; got {target.input!r}")

    def host_key(self, target: Target) -> str:
        # Anchors are distinct servers by design; one slot each is plenty.
        return target.input.lower()

    def succeeded(self, m: Measurement) -> bool:
        """Reachable: the connect worked, or any DNS reply or HTTP response came back."""
        if m.failure is not None:
            return False
        scheme = m.input.split("://", 1)[0].lower()
        if scheme == "tcp":
            return any(c.failure is None for c in m.tcp)
        if scheme == "dns":
            return any(q.rcode is not None for q in m.dns)
        return any(h.status_code is not None for h in m.http)
