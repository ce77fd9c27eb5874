"""Steps several experiments share: parsing an input, asking every configured resolver."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar
from urllib.parse import SplitResult, urlsplit

from probe.experiments.base import InputError, Settings
from probe.net import dns
from probe.net.clock import Clock
from probe.schema import DnsQuery

# A hostile resolver may answer with hundreds of addresses; measuring each one would turn a
# single target into a scan, so only the first few distinct addresses are contacted.
MAX_ADDRESSES = 8

T = TypeVar("T")

DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_web_url(url: str) -> SplitResult:
    """An http(s) URL with a host, or InputError saying what is wrong."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError as exc:
        raise InputError(f"malformed url {url!r}: {exc}") from None
    if parts.scheme.lower() not in DEFAULT_PORTS:
        raise InputError(f"not an http(s) url: {url!r}")
    if not parts.hostname:
        raise InputError(f"url has no host: {url!r}")
    return parts


def url_port(parts: SplitResult) -> int:
    return parts.port or DEFAULT_PORTS[parts.scheme.lower()]


def ip_literal(host: str) -> str | None:
    """The address if ``host`` is an IP literal (brackets allowed), else None."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def is_doh(resolver: str) -> bool:
    return resolver.lower().startswith("https://")


async def ask_resolvers(
    hostname: str,
    settings: Settings,
    clock: Clock,
    *,
    qtypes: Iterable[str] = ("A", "AAAA"),
    tcp: bool = False,
) -> list[DnsQuery]:
    """Every configured resolver asked concurrently; system first, then resolvers in order.

    Plain resolvers are asked over UDP (and also over TCP when ``tcp``), DoH URLs over HTTPS.
    """
    timeout = settings.timeouts.dns
    qtypes = tuple(qtypes)
    scrubber = settings.scrubber
    jobs: list[Awaitable[DnsQuery | list[DnsQuery]]] = []
    if settings.use_system_resolver:
        jobs.append(dns.resolve_system(hostname, clock=clock, timeout=timeout, scrubber=scrubber))
    for resolver in settings.resolvers:
        for qtype in qtypes:
            if is_doh(resolver):
                jobs.append(
                    dns.resolve_doh(
                        hostname, resolver, qtype, clock=clock, timeout=timeout,
                        verify=settings.ca_bundle or True, resolve=doh_name_resolver(settings, clock),
                        scrubber=scrubber,
                    )
                )
                continue
            jobs.append(dns.resolve_udp(hostname, resolver, qtype, clock=clock, timeout=timeout, scrubber=scrubber))
            if tcp:
                jobs.append(
                    dns.resolve_tcp(hostname, resolver, qtype, clock=clock, timeout=timeout, scrubber=scrubber)
                )
    queries: list[DnsQuery] = []
    for result in await gather_all(jobs):
        queries.extend(result if isinstance(result, list) else [result])
    return queries


def doh_name_resolver(settings: Settings, clock: Clock) -> Callable[[str], Awaitable[list[str]]] | None:
    """How the name of a DoH server is found: the system resolver (None: probe.net's default),
    or, when the system resolver is off, the configured plain resolvers only."""
    if settings.use_system_resolver:
        return None
    plain = [r for r in settings.resolvers if not is_doh(r)]

    async def resolve(host: str) -> list[str]:
        queries = await gather_all(
            dns.resolve_udp(host, r, qtype, clock=clock, timeout=settings.timeouts.dns)
            for r in plain
            for qtype in ("A", "AAAA")
        )
        return resolved_addresses(queries)

    return resolve


async def gather_all(aws: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently and return results in order; if one raises, cancel the rest first.

    (asyncio.gather leaves the others running when one fails; a bug in one step must not
    leave sockets open behind the measurement.)
    """
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def redirect_resolver(
    settings: Settings, clock: Clock, record: list[DnsQuery]
) -> Callable[[str], Awaitable[list[str]]]:
    """How HTTP finds a host it is redirected to: the same resolvers the experiment uses,
    with every query kept in ``record`` (so the record shows how the redirect was resolved)."""

    async def resolve(host: str) -> list[str]:
        queries = await ask_resolvers(host, settings, clock)
        record.extend(queries)
        return resolved_addresses(queries)

    return resolve


def resolved_addresses(queries: Iterable[DnsQuery], limit: int = MAX_ADDRESSES) -> list[str]:
    """Distinct A/AAAA answers in the order first seen, at most ``limit``."""
    seen: list[str] = []
    for q in queries:
        if q.tag == "injection_check":
            continue
        for a in q.answers:
            if a.answer_type not in ("A", "AAAA"):
                continue
            ip = ip_literal(a.value)
            if ip is not None and ip not in seen:
                seen.append(ip)
                if len(seen) >= limit:
                    return seen
    return seen
