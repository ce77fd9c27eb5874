"""path_trace: where on the path the censor sits. A follow-up for a target found blocked: the
offending packet (the DNS query to the resolver, the TLS ClientHello with the URL's SNI, or the
HTTP request with its Host) is replayed with increasing IP TTL (probe.net.pathtrace).

Needs root or CAP_NET_RAW. Options come from ``Settings.extra`` (the `vantage locate` command
sets them): ``path_layer`` ("dns" | "tls" | "http"; default from the URL's scheme),
``path_ip`` (the address to trace to; default the URL's literal or the configured resolvers'
first answer), ``path_resolver`` (dns: default the first configured plain resolver),
``path_control_name`` (the benign name of the control replay; "" for none), ``path_max_ttl``,
``path_wait``, ``path_tries``. It contacts only the target (the resolver, for dns).
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

from probe.experiments.base import Experiment, InputError, Observation, Target
from probe.experiments.common import is_doh, parse_web_url, resolved_addresses, url_port
from probe.experiments.context import MeasurementContext
from probe.net import pathtrace
from probe.schema import PathHop, PathTrace

LAYERS = ("dns", "tls", "http")
# The benign name of the control replay: a name no censor blocks, which the target answers
# as it answers any name (a TLS server's ServerHello, an HTTP server's page, a resolver's answer).
DEFAULT_CONTROL_NAME = "example.com"


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _resolver(spec: str) -> tuple[str, int]:
    from probe.scrub import parse_address

    addr = parse_address(spec)
    if addr is None:
        raise InputError(f"not a resolver address: {spec!r}")
    port = 53
    if spec.startswith("[") and "]:" in spec:
        port = int(spec.rsplit(":", 1)[1])
    elif spec.count(":") == 1:
        port = int(spec.split(":", 1)[1])
    return str(addr), port


class PathTraceExperiment(Experiment):
    name = "path_trace"
    version = "0.1.0"

    async def run(self, target: Target, net: MeasurementContext) -> list[Observation]:
        extra: dict[str, Any] = net.settings.extra
        parts = parse_web_url(target.input)
        host = (parts.hostname or "").lower()
        layer = extra.get("path_layer") or ("tls" if parts.scheme.lower() == "https" else "http")
        if layer not in LAYERS:
            raise InputError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")
        ts = pathtrace.TraceSettings(
            max_ttl=int(extra.get("path_max_ttl", pathtrace.DEFAULT_MAX_TTL)),
            wait=float(extra.get("path_wait", pathtrace.DEFAULT_WAIT_S)),
            tries=int(extra.get("path_tries", pathtrace.DEFAULT_TRIES)),
            connect_timeout=net.timeouts.connect,
        )
        control_name = extra.get("path_control_name", DEFAULT_CONTROL_NAME) or None
        observations: list[Observation] = []
        if layer == "dns":
            spec = extra.get("path_resolver") or next(
                (r for r in net.settings.resolvers if not is_doh(r)), None)
            if spec is None:
                raise InputError("a dns trace needs a plain resolver (--resolver IP)")
            ip, port = _resolver(spec)
        else:
            port = url_port(parts)
            given: str | None = extra.get("path_ip") or _literal(host)
            if given is not None:
                ip = given
            else:
                queries = await net.dns_lookup(host, qtypes=("A",))
                observations.extend(queries)
                addresses = [a for a in resolved_addresses(queries) if ":" not in a]
                if not addresses:
                    return [*observations, PathTrace(t0=net.now(), t=net.now(), failure="dns_no_answer",
                                                     protocol=layer, ip="", port=port, hostname=host)]
                ip = addresses[0]
        # The request line as the browser sent it (a keyword censor may match the query string).
        target_path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        record = await asyncio.to_thread(self._trace, layer, ip, port, host, target_path, ts, control_name, net)
        return [*observations, record]

    @staticmethod
    def _trace(layer: str, ip: str, port: int, host: str, path: str, ts: pathtrace.TraceSettings,
               control_name: str | None, net: MeasurementContext) -> PathTrace:
        t0 = net.now()
        problem = pathtrace.privilege_problem()
        if problem is not None:
            return PathTrace(t0=t0, t=net.now(), failure=f"unknown_failure:{problem}", protocol=layer, ip=ip,
                             port=port, hostname=host)
        hops, failure = pathtrace.trace(layer, ip, port, host, ts, path=path)
        control_hops: list[PathHop] = []
        if failure is None and control_name and pathtrace.needs_control(hops):
            # The first answer drew no time-exceeded: the target's own distance decides.
            control_hops, _ = pathtrace.trace(layer, ip, port, control_name, ts, path="/")
        loc = pathtrace.locate(hops, control_hops)
        return PathTrace(
            t0=t0, t=net.now(), failure=failure, protocol=layer, ip=ip, port=port, hostname=host, hops=hops,
            control_hostname=control_name if control_hops else None, control_hops=control_hops,
            target_ttl=loc.target_ttl, interference_ttl=loc.interference_ttl, interference=loc.interference,
            hop_before=loc.hop_before, basis=loc.basis,
        )

