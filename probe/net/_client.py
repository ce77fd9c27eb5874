"""Shared plumbing: cached SSL contexts and an httpx client whose connections go only to
addresses the caller chose (HTTP and DoH never resolve names on their own)."""

from __future__ import annotations

import contextvars
import functools
import ipaddress
import os
import ssl
from collections.abc import Awaitable, Callable, Iterable
from os import PathLike

import httpcore
import httpx

Resolve = Callable[[str], Awaitable[list[str]]]

USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)


def _bundle_key(ca_bundle: str | PathLike[str] | None) -> str | None:
    return None if ca_bundle is None else str(ca_bundle)


@functools.lru_cache(maxsize=32)
def _verifying_context(ca_bundle: str | None, purpose: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ctx.cert_store_stats().get("x509_ca", 0) == 0 and not ctx.get_ca_certs():
        # No system store (minimal images): fall back to certifi once, then it is cached.
        try:
            import certifi

            ctx.load_verify_locations(cafile=certifi.where())
        except (ImportError, OSError):
            pass
    if ca_bundle is not None:
        # Extra roots, added to the system's: one PEM file, or several joined by os.pathsep
        # (an app's pinned CA beside a lab's, probe/experiments/messaging/base.py).
        for cafile in ca_bundle.split(os.pathsep):
            ctx.load_verify_locations(cafile=cafile)
    if purpose == "tls":
        ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def verifying_context(ca_bundle: str | PathLike[str] | None = None, *, purpose: str = "http") -> ssl.SSLContext:
    """System roots plus ``ca_bundle``; built once per (bundle, purpose) because loading roots
    costs milliseconds. ``purpose`` keeps httpx's context (httpcore sets ALPN on it) apart
    from the TLS step's. A bad bundle path raises (configuration error, not network data)."""
    return _verifying_context(_bundle_key(ca_bundle), purpose)


@functools.lru_cache(maxsize=4)
def _unverified_context(purpose: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if purpose == "tls":
        ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def unverified_context(*, purpose: str = "http") -> ssl.SSLContext:
    """A context that accepts any certificate: to read a certificate that does not validate."""
    return _unverified_context(purpose)


def host_key(host: str) -> str:
    """Normalise a hostname for address_map lookups: lower case, no trailing dot, IDNA."""
    host = host.strip("[]").rstrip(".").lower()
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


@functools.lru_cache(maxsize=1024)  # per request and per hop: the same hosts again and again
def ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


# A check of every (address, port) about to be connected to, set for a measurement by its
# context (probe.experiments.context, from Settings.address_guard: the control helper's
# address policy). Returns why it is refused, or None. It runs on the
# address actually connected to, after name resolution, so DNS rebinding cannot pass it.
address_guard: contextvars.ContextVar[Callable[[str, int], str | None] | None] = contextvars.ContextVar(
    "address_guard", default=None
)


class AddressRefused(OSError):
    """The address guard refused a connection (failure ``unknown_failure:address_refused``)."""


def check_address(ip: str, port: int) -> None:
    """Raise AddressRefused when the current address guard refuses ``ip``:``port``."""
    guard = address_guard.get()
    if guard is not None and (reason := guard(ip, port)) is not None:
        raise AddressRefused(f"address_refused ({reason})")


class NoAddressError(httpcore.ConnectError):
    """The host has no pinned address and no resolver was given for it."""


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend that connects to pinned addresses instead of resolving.

    TLS SNI and the Host header still use the URL's host (httpcore takes them from the
    request), only the TCP destination is replaced. Records which address each origin used.
    """

    def __init__(self, address_map: dict[str, list[str]] | None = None, resolve: Resolve | None = None) -> None:
        self._inner = httpcore.AnyIOBackend()
        self.address_map: dict[str, list[str]] = {
            host_key(h): list(a) for h, a in (address_map or {}).items()
        }
        self.resolve = resolve
        self.used: dict[tuple[str, int], str] = {}
        # Every TCP stream we opened. httpcore forgets the raw stream when a deadline cancels
        # it during start_tls, so the socket would leak; aclose() closes whatever is left.
        self._streams: list[httpcore.AsyncNetworkStream] = []

    async def addresses(self, host: str) -> list[str]:
        literal = ip_literal(host)
        if literal is not None:
            return [literal]
        key = host_key(host)
        if key not in self.address_map and self.resolve is not None:
            self.address_map[key] = list(await self.resolve(key))
        return self.address_map.get(key, [])

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addrs = await self.addresses(host)
        if not addrs:
            raise NoAddressError("no_address_for_host")
        last: Exception | None = None
        for ip in addrs:
            self.used[(host_key(host), port)] = ip
            try:
                check_address(ip, port)
            except AddressRefused as exc:
                last = exc  # a refused address is skipped like an unreachable one
                continue
            try:
                stream = await self._inner.connect_tcp(
                    ip, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
                self._streams.append(stream)
                return stream
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc  # try the next pinned address, as a browser would
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not measured")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)

    async def aclose(self) -> None:
        """Close every stream this backend opened (closing one twice is harmless)."""
        streams, self._streams = self._streams, []
        for stream in streams:
            try:
                await stream.aclose()
            except Exception:  # already closed or reset: nothing left to release
                pass


def make_client(
    backend: PinnedBackend, ssl_context: ssl.SSLContext, timeout: float, headers: dict[str, str] | None = None
) -> httpx.AsyncClient:
    """An httpx client (HTTP/1.1, no proxies from the environment, no retries, no automatic
    redirects) whose every connection goes through ``backend``."""
    transport = httpx.AsyncHTTPTransport(verify=ssl_context, trust_env=False, retries=0)
    # httpx has no public hook for the network backend; swap in a pool that uses ours.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context, network_backend=backend, http1=True, http2=False, retries=0
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
    )
