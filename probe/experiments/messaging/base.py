"""What the four messaging-app experiments share: measure every endpoint of the app, by
function, and tag each observation ``<function>@<host:port>`` (DNS: ``<function>@<host>``).

Per endpoint, as OONI's urlgetter does for these tests: DNS through the configured resolvers
(unless the host is an address), a TCP connect to each address (at most MAX_ADDRESSES), then,
by the endpoint's kind, a TLS handshake with the host as SNI and one GET without redirects.
Whether the app counts as blocked is the analyzer's decision (analysis/messaging.py), never
the probe's: the record holds only what happened.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Awaitable
from importlib import resources
from typing import Any, ClassVar

from probe.experiments.base import Experiment, InputError, Observation, Target
from probe.experiments.common import gather_all, resolved_addresses
from probe.experiments.context import MeasurementContext
from probe.experiments.messaging.endpoints import AppEndpoint, load_endpoints
from probe.schema import DnsQuery, Measurement

# An app's hosts resolve to a handful of anycast addresses; one that connects is what the app
# needs, so a few are enough (and a hostile resolver's hundreds are never all contacted).
MAX_ADDRESSES = 4
# The endpoints answer API errors (404, 501) or small pages: the status is what matters.
BODY_CAP = 4096
SETTINGS_KEY = "messaging_endpoints"  # Settings.extra: a lab's (or a user's) endpoints file


class MessagingExperiment(Experiment):
    """One app: its input is the app's name; its endpoints come from the list."""

    version = "0.1.0"
    # A CA the app pins besides the public roots (Signal's own), shipped in probe/data.
    extra_ca: ClassVar[str | None] = None

    def input_problem(self, input_: str) -> str | None:
        if input_ == self.name:
            return None
        return f"the {self.name} experiment measures the app's listed endpoints; its input is {self.name!r}, got {input_!r}"

    def default_targets(self) -> list[Target]:
        return [Target(self.name)]

    def host_key(self, target: Target) -> str:
        return self.name

    async def run(self, target: Target, net: MeasurementContext) -> list[Observation]:
        problem = self.input_problem(target.input)
        if problem:
            raise InputError(problem)
        endpoints = load_endpoints(net.settings.extra.get(SETTINGS_KEY), self.name)
        if self.extra_ca is not None:
            net = _with_extra_ca(net, self.extra_ca)
        lookups: dict[tuple[str, str], Awaitable[list[DnsQuery]]] = {}
        for e in endpoints:
            if not e.is_ip and (e.function, e.host) not in lookups:
                lookups[(e.function, e.host)] = _lookup(net, e)
        keys = list(lookups)
        answers = dict(zip(keys, await gather_all(lookups[k] for k in keys), strict=True))
        observations: list[Observation] = [q for k in keys for q in answers[k]]
        per_endpoint = await gather_all(
            _measure_endpoint(net, e, [e.host] if e.is_ip else resolved_addresses(answers[(e.function, e.host)],
                                                                                  MAX_ADDRESSES))
            for e in endpoints
        )
        for obs in per_endpoint:
            observations.extend(obs)
        return observations

    def succeeded(self, m: Measurement) -> bool:
        """Ok for the run's summary when every step worked: every address query answered and
        every connect, handshake and GET succeeded (an IPv6 address a vantage point without IPv6
        cannot reach aside). Whether the app is blocked is the analyzer's call, by the app's rule."""
        if m.failure is not None or not (m.tcp or m.http):
            return False
        if any(q.failure is not None for q in m.dns if q.query_type == "A"):
            return False
        steps: list[Any] = [*m.tcp, *m.tls, *m.http]
        return all(o.failure is None or (o.failure in ("network_unreachable", "host_unreachable")
                                         and ":" in str(getattr(o, "ip", "") or "")) for o in steps)


async def _lookup(net: MeasurementContext, e: AppEndpoint) -> list[DnsQuery]:
    queries = await net.dns_lookup(e.host)
    for q in queries:
        q.tag = f"{e.function}@{e.host}"
    return queries


async def _measure_endpoint(net: MeasurementContext, e: AppEndpoint, addresses: list[str]) -> list[Observation]:
    if not addresses:
        return []  # the DNS queries already say why
    tag = e.tag
    connects = await gather_all(net.tcp_connect(ip, e.port, tag=tag) for ip in addresses)
    out: list[Observation] = list(connects)
    reachable = [c.ip for c in connects if c.failure is None]
    if not reachable or e.kind == "tcp":
        return out
    steps: list[Awaitable[Any]] = []
    if e.kind in ("tls", "https"):
        steps.append(net.tls_handshake(reachable[0], e.port, None if e.is_ip else e.host, tag=tag))
    if e.kind in ("http", "https"):
        address_map = {e.host: reachable + [ip for ip in addresses if ip not in reachable]}
        steps.append(net.http_get(e.url, address_map=address_map, max_redirects=0, body_cap=BODY_CAP, tag=tag))
    for result in await gather_all(steps):
        out.extend(result if isinstance(result, list) else [result])
    return out


def _with_extra_ca(net: MeasurementContext, name: str) -> MeasurementContext:
    """The same context (clock, steps) trusting ``name`` too, beside the run's --ca-bundle
    (probe.net loads every file of an os.pathsep-joined bundle; nothing is written)."""
    pem = str(resources.files("probe") / "data" / name)
    bundle = pem if not net.ca_bundle else os.pathsep.join((str(net.ca_bundle), pem))
    sub = copy.copy(net)
    sub.settings = dataclasses.replace(net.settings, ca_bundle=bundle)
    return sub
