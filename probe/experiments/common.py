"""What several experiments share: parsing an input, running steps side by side, the addresses
a set of DNS queries resolved (the steps themselves are the measurement context's)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import SplitResult, urlsplit

from probe.experiments.base import InputError
from probe.schema import DnsQuery

if TYPE_CHECKING:
    from probe.experiments.context import MeasurementContext

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


async def host_addresses(net: MeasurementContext, host: str, observations: list[Any]) -> tuple[str | None, list[str]]:
    """(the address if ``host`` is an IP literal, the addresses to measure): a literal is its
    own one address; a name is looked up with the run's resolvers (``net.dns_lookup``), its
    DNS records appended to ``observations``, and its answers are the addresses."""
    literal = ip_literal(host)
    if literal is not None:
        return literal, [literal]
    queries = await net.dns_lookup(host)
    observations.extend(queries)
    return None, resolved_addresses(queries)


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
