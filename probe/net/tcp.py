"""TCP connect to one address, as a ``TcpConnect`` observation (IPv4 and IPv6)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from probe.net._client import check_address
from probe.net.clock import Clock
from probe.net.errors import classify, unknown
from probe.net.scrub import Scrubber
from probe.schema import TcpConnect


def family_of(ip: str) -> socket.AddressFamily:
    """AF_INET or AF_INET6 for an address literal; ValueError for anything else."""
    return socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET


async def open_socket(ip: str, port: int, timeout: float) -> socket.socket:
    """A connected non-blocking TCP socket, or the exception the connect raised."""
    check_address(ip, port)  # the caller's address policy, if any (AddressRefused)
    sock = socket.socket(family_of(ip), socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(timeout):  # no extra task per connect, unlike wait_for
            await asyncio.get_running_loop().sock_connect(sock, (ip, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def tcp_connect(
    ip: str,
    port: int,
    *,
    clock: Clock,
    timeout: float,
    scrubber: Scrubber | None = None,
    tag: str | None = None,
) -> TcpConnect:
    """Connect to ``ip:port`` within ``timeout`` seconds, then close. Never raises for the network."""
    t0 = clock.now()
    failure: str | None = None
    try:
        sock = await open_socket(ip, port, timeout)
    except ValueError:
        failure = unknown("invalid_address")
    except Exception as exc:  # every network error is data
        failure = classify(exc)
    else:
        sock.close()
    if failure is not None and scrubber is not None:
        failure = scrubber.scrub(failure)
    return TcpConnect(t0=t0, t=clock.now(), failure=failure, ip=ip, port=port, tag=tag)
