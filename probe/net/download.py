"""A bounded download as one ``Download`` observation: GET a URL and read its body until it ends,
until ``byte_cap`` bytes, or until ``time_cap`` seconds of transfer, whichever comes first.

Throughput is measured on the wire: the body is read raw (``Accept-Encoding: identity``, no
content decoding) and discarded as it arrives, so memory stays at one chunk whatever the caps.
Redirects are followed (a list may name a resource that moved to a CDN); only the final response
is measured. Connections go only to the addresses the experiment resolved (``address_map``), as
in probe.net.http.
"""

from __future__ import annotations

import asyncio
from os import PathLike

import anyio
import httpx

from probe.net._client import PinnedBackend, Resolve, host_key, make_client, verifying_context
from probe.net.clock import Clock
from probe.net.errors import classify, unknown
from probe.net.http import REDIRECT_STATUSES
from probe.net.scrub import Scrubber
from probe.schema import Download

# Defaults of `vantage run --experiment throughput` (--download-bytes, --download-time). 4 MiB
# and 8 s: at the ~128 kbit/s a throttled site was slowed to (Twitter in Russia, 2021) 8 s give
# ~128 KB, past TCP slow start; on a fast link 4 MiB ends the download in well under a second,
# so a volunteer's data plan pays at most 4 MiB per target and vantage point.
DEFAULT_BYTE_CAP = 4 << 20
DEFAULT_TIME_CAP = 8.0
MAX_REDIRECTS = 5

REQUEST_HEADERS = {"Accept": "*/*", "Accept-Encoding": "identity"}


def _redirect(url: httpx.URL, resp: httpx.Response) -> httpx.URL | None:
    location = resp.headers.get("location")
    if resp.status_code not in REDIRECT_STATUSES or not location:
        return None
    try:
        nxt = url.join(location.strip())
    except (httpx.InvalidURL, ValueError):
        return None
    return nxt if nxt.scheme in ("http", "https") and nxt.host else None


async def _fetch(
    client: httpx.AsyncClient,
    backend: PinnedBackend,
    rec: Download,
    url: httpx.URL,
    *,
    clock: Clock,
    timeout: float,
) -> None:
    """Follow redirects to the final response, then read its body within the caps; ``rec`` is
    filled as it goes, so a failure keeps what was read."""
    loop = asyncio.get_running_loop()
    for _hop in range(MAX_REDIRECTS + 1):
        rec.url = str(url)
        port = url.port or (443 if url.scheme == "https" else 80)
        if not await backend.addresses(url.host):
            rec.failure = unknown("no_address_for_host")
            return
        async with client.stream("GET", url, timeout=httpx.Timeout(timeout)) as resp:
            rec.ip = backend.used.get((host_key(url.host), port))
            rec.status_code = resp.status_code
            nxt = _redirect(url, resp)
            if nxt is not None:
                url = nxt
                continue
            rec.ttfb = round(clock.now() - rec.t0, 6)
            start = loop.time()
            stop_at = start + rec.time_cap
            stream = resp.aiter_raw().__aiter__()
            rec.stopped_by = "complete"
            while True:
                left = stop_at - loop.time()
                if left <= 0:
                    rec.stopped_by = "time"
                    break
                try:
                    chunk = await asyncio.wait_for(stream.__anext__(), left)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    rec.stopped_by = "time"
                    break
                rec.bytes += len(chunk)
                if rec.bytes >= rec.byte_cap:
                    rec.stopped_by = "bytes"
                    break
            rec.duration = round(min(loop.time(), stop_at) - start, 6)
            return
    rec.failure = "http_too_many_redirects"


async def download(
    url: str,
    *,
    clock: Clock,
    timeout: float,
    address_map: dict[str, list[str]] | None,
    byte_cap: int = DEFAULT_BYTE_CAP,
    time_cap: float = DEFAULT_TIME_CAP,
    ca_bundle: str | PathLike[str] | None = None,
    resolve: Resolve | None = None,
    scrubber: Scrubber | None = None,
    tag: str | None = None,
) -> Download:
    """GET ``url`` and read at most ``byte_cap`` body bytes for at most ``time_cap`` seconds of
    transfer. Never raises for the network.

    ``timeout`` bounds what comes before the body (connect, TLS, each redirect hop, the
    response headers): a path that never answers fails with ``generic_timeout``. A failure
    during the body (a reset, an early close) keeps the bytes and duration read until then.
    """
    # What the first download of a process pays once comes before t0, as no part of the path's
    # time to first byte: loading the system's roots (tens of ms) and the import of anyio's
    # event-loop backend that httpcore triggers on its first request (~0.2 s on a Raspberry-Pi
    # class machine), which would make the first target look farther than the others.
    ssl_context = verifying_context(ca_bundle)
    await anyio.sleep(0)
    rec = Download(t0=clock.now(), t=0.0, failure=None, url=url, byte_cap=byte_cap, time_cap=time_cap, tag=tag)
    try:
        current = httpx.URL(url)
        if current.scheme not in ("http", "https") or not current.host:
            raise ValueError(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        rec.failure = unknown("invalid_url")
    else:
        backend = PinnedBackend(address_map, resolve)
        try:
            async with make_client(backend, ssl_context, timeout, REQUEST_HEADERS) as client:
                # The caps bound the body; the timeout bounds everything before it.
                await asyncio.wait_for(
                    _fetch(client, backend, rec, current, clock=clock, timeout=timeout),
                    timeout * (MAX_REDIRECTS + 1) + time_cap,
                )
        except Exception as exc:
            rec.failure = classify(exc)
            if rec.ttfb is not None and rec.duration is None:
                # the body broke off: what was read until then still measures the path
                rec.duration = round(clock.now() - rec.t0 - rec.ttfb, 6)
        finally:
            await backend.aclose()
    if rec.failure is not None:
        rec.stopped_by = "failure"
    rec.t = clock.now()
    if scrubber is not None:
        rec.url = scrubber.scrub(rec.url) or ""
        rec.failure = scrubber.scrub(rec.failure)
    return rec
