"""HTTP(S) GET as ``HttpRequest`` observations, one per hop of the redirect chain.

Redirects are followed one hop at a time (so every hop is recorded), connections go only
to the addresses the experiment resolved (``address_map``), bodies are read with a hard
cap, and the whole chain shares one deadline, so a trickling or endless server ends in
bounded time and memory.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import html
import re
import zlib
from dataclasses import dataclass, field
from os import PathLike

import httpx

from probe.net._client import PinnedBackend, Resolve, host_key, make_client, verifying_context
from probe.net.clock import Clock
from probe.net.dns import system_addresses
from probe.net.errors import classify, unknown
from probe.net.scrub import Scrubber
from probe.schema import HttpHeader, HttpRequest

DEFAULT_BODY_CAP = 1 << 20  # bytes of (decoded) body kept per hop
DEFAULT_SAMPLE_CAP = 4096  # bytes of body decoded into body_sample
TITLE_SCAN = 65536  # the <title> is looked for in this many first bytes
TITLE_MAX = 256
INLINE_FINISH = 65536  # bodies larger than this are hashed, scrubbed and parsed in a thread
HEADER_VALUE_MAX = 512
MAX_HEADERS = 32
RAW_FACTOR = 8  # stop after body_cap * RAW_FACTOR compressed bytes that decode to little

# Response headers kept: those that identify servers, middleboxes and blockpages (the OONI
# blocking fingerprints match on Server, Location, Via, X-Squid-Error, Set-Cookie names...).
# Set-Cookie keeps only the cookie name: values are session identifiers.
SELECTED_HEADERS = frozenset(
    {
        "server", "location", "content-type", "content-length", "content-encoding",
        "content-language", "via", "x-cache", "x-cache-status", "x-served-by", "x-powered-by",
        "x-squid-error", "refresh", "cf-ray", "x-frame-options", "set-cookie",
        "alt-svc",  # -- quic: whether the site offers HTTP/3 (web_connectivity's QUIC step)
    }
)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

REQUEST_HEADERS = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-US,en;q=0.9",
    "Accept-Encoding": "gzip, deflate",  # only what we can decode with a bounded inflater
}

_TAG_END = frozenset(b">/ \t\r\n\f")  # what may follow "<title" in a title tag
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9._-]{1,40})""", re.IGNORECASE)


class _Inflater:
    """Content-Encoding decoding that never produces more than asked for (no gzip bombs)."""

    def __init__(self, encoding: str) -> None:
        enc = encoding.strip().lower()
        self._z: zlib._Decompress | None = None
        self._deflate = enc == "deflate"
        if enc in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self._deflate:
            self._z = zlib.decompressobj()
        self._first = True

    def feed(self, data: bytes, limit: int) -> bytes:
        if self._z is None:
            return data[:limit]
        try:
            return self._z.decompress(data, limit)
        except zlib.error:
            if self._deflate and self._first:
                # Some servers send raw deflate without the zlib header.
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                self._first = False
                return self._z.decompress(data, limit)
            raise
        finally:
            self._first = False


@dataclass(slots=True)
class _Body:
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    content_type: str = ""
    seen: bool = False  # a response (status line) arrived

    def feed(self, inflater: _Inflater, chunk: bytes, cap: int) -> bool:
        """Append what ``chunk`` decodes to, up to ``cap`` bytes in all; True (and
        ``truncated``) when there was more than that."""
        room = cap - len(self.data)
        out = inflater.feed(chunk, room + 1)
        self.data += out[:room]
        if len(out) > room:
            self.truncated = True
        return self.truncated


def _charset(content_type: str, head: bytes) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset":
            name = value.strip().strip("\"'")
            break
    else:
        m = _META_CHARSET.search(head[:2048])
        name = m.group(1).decode("ascii") if m else "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


def _title(body: bytes, charset: str) -> str | None:
    """The first <title>, from the first TITLE_SCAN bytes, in time linear in that prefix.

    A regex such as ``<title[^>]*>(.*?)</title>`` retries from every "<title" of a hostile
    page (``<title>`` repeated without a close) and took seconds of CPU per page on the event
    loop; here each byte is looked at a bounded number of times: one lower-casing, then
    ``find`` moving forward only. A page that opens a title tag and never closes it (or its
    tag) has no title: no later "<title" could find a close that the first one could not.
    """
    head = body[:TITLE_SCAN]
    low = head.lower()
    start = low.find(b"<title")
    while start != -1:
        after = start + len(b"<title")
        if after < len(low) and low[after] in _TAG_END:  # "<title>" or "<title lang=..>", not "<titles>"
            gt = low.find(b">", after)
            if gt == -1:
                return None
            end = low.find(b"</title", gt + 1)
            if end == -1:
                return None
            # TITLE_MAX characters need at most 4 bytes each, plus room for entities.
            raw = head[gt + 1 : min(end, gt + 1 + 16 * TITLE_MAX)]
            text = html.unescape(raw.decode(charset, errors="replace"))
            return " ".join(text.split())[:TITLE_MAX]
        start = low.find(b"<title", after)
    return None


def _headers(resp: httpx.Response) -> list[HttpHeader]:
    out: list[HttpHeader] = []
    for name, value in resp.headers.multi_items():  # names come lower-cased
        if name not in SELECTED_HEADERS:
            continue
        if name == "set-cookie":
            value = value.split("=", 1)[0].strip()[:64]
        out.append(HttpHeader(name=name, value=value[:HEADER_VALUE_MAX]))
        if len(out) >= MAX_HEADERS:
            break
    return out


async def _hop(
    client: httpx.AsyncClient,
    backend: PinnedBackend,
    rec: HttpRequest,
    body: _Body,
    url: httpx.URL,
    body_cap: int,
    timeout: float,
) -> httpx.URL | None:
    """One GET; fills ``rec``/``body`` as it goes (so a timeout keeps what was read) and
    returns the next URL when the response is a redirect worth following."""
    port = url.port or (443 if url.scheme == "https" else 80)
    addrs = await backend.addresses(url.host)
    if not addrs:
        rec.failure = unknown("no_address_for_host")
        return None
    async with client.stream("GET", url, timeout=httpx.Timeout(timeout)) as resp:
        body.seen = True
        rec.ip = backend.used.get((host_key(url.host), port))
        rec.status_code = resp.status_code
        rec.http_version = resp.http_version
        rec.headers = _headers(resp)
        body.content_type = resp.headers.get("content-type", "")
        inflater = _Inflater(resp.headers.get("content-encoding", "identity"))
        raw = 0
        async for chunk in resp.aiter_raw():
            raw += len(chunk)
            if body.feed(inflater, chunk, body_cap) or raw > body_cap * RAW_FACTOR:
                body.truncated = True  # more than the cap: stop reading, close the connection
                break
        location = resp.headers.get("location")
    if rec.status_code in REDIRECT_STATUSES and location:
        try:
            nxt = url.join(location.strip())
        except (httpx.InvalidURL, ValueError):
            return None
        return nxt if nxt.scheme in ("http", "https") and nxt.host else None
    return None


def _finish_body(rec: HttpRequest, body: _Body, sample_cap: int, scrubber: Scrubber | None) -> None:
    if not body.seen:
        return
    data = bytes(body.data)
    rec.body_length = len(data)
    rec.body_truncated = body.truncated
    # Hash the scrubbed bytes: the hash of a page that echoes the client address, with a known
    # template, could otherwise be brute-forced back to the address (2^32 tries for IPv4).
    hashed = scrubber.scrub_bytes(data) if scrubber is not None else data
    rec.body_sha256 = hashlib.sha256(hashed).hexdigest()
    charset = _charset(body.content_type, data)
    rec.body_sample = data[:sample_cap].decode(charset, errors="replace")
    rec.title = _title(data, charset)


def _scrub(rec: HttpRequest, scrubber: Scrubber | None) -> None:
    if scrubber is None:
        return
    rec.url = scrubber.scrub(rec.url) or ""
    rec.failure = scrubber.scrub(rec.failure)
    rec.body_sample = scrubber.scrub(rec.body_sample)
    rec.title = scrubber.scrub(rec.title)
    for h in rec.headers:
        h.value = scrubber.scrub(h.value) or ""


async def http_get(
    url: str,
    *,
    clock: Clock,
    timeout: float,
    address_map: dict[str, list[str]] | None,
    ca_bundle: str | PathLike[str] | None = None,
    max_redirects: int = 10,
    body_cap: int = DEFAULT_BODY_CAP,
    sample_cap: int = DEFAULT_SAMPLE_CAP,
    resolve: Resolve | None = None,
    scrubber: Scrubber | None = None,
    tag: str | None = None,
) -> list[HttpRequest]:
    """GET ``url`` and follow up to ``max_redirects`` redirects, one record per hop, the
    whole chain within ``timeout`` seconds. Never raises for the network.

    A hop's host is looked up in ``address_map``; a host missing there (a redirect to
    another site) is resolved with ``resolve`` if given, else (when ``address_map`` is None)
    with the system resolver, else the hop fails with ``unknown_failure:no_address_for_host``.
    SNI and Host are always the URL's host; certificates verify against system roots plus
    ``ca_bundle``. A redirect past ``max_redirects`` ends with ``http_too_many_redirects``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if address_map is None and resolve is None:

        async def resolve(host: str) -> list[str]:
            return await system_addresses(host, max(0.01, deadline - loop.time()))

    backend = PinnedBackend(address_map, resolve)
    hops: list[HttpRequest] = []
    try:
        current: httpx.URL | None = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        rec = HttpRequest(t0=clock.now(), t=clock.now(), failure=unknown("invalid_url"), url=url, tag=tag)
        _scrub(rec, scrubber)
        return [rec]
    try:
        async with make_client(backend, verifying_context(ca_bundle), timeout, REQUEST_HEADERS) as client:
            while current is not None:
                rec = HttpRequest(t0=clock.now(), t=0.0, failure=None, url=str(current), tag=tag)
                hops.append(rec)
                body = _Body()
                nxt: httpx.URL | None = None
                remaining = deadline - loop.time()
                try:
                    if current.scheme not in ("http", "https") or not current.host:
                        rec.failure = unknown("unsupported_url")
                    elif remaining <= 0:
                        rec.failure = "generic_timeout"
                    else:
                        # asyncio.timeout, not wait_for: no extra task per hop (3.12's wait_for is this)
                        async with asyncio.timeout(remaining):
                            nxt = await _hop(client, backend, rec, body, current, body_cap, remaining)
                except Exception as exc:
                    rec.failure = classify(exc)
                if rec.ip is None and current.host:
                    # the address this hop tried, also when it failed before any response
                    port = current.port or (443 if current.scheme == "https" else 80)
                    rec.ip = backend.used.get((host_key(current.host), port))
                rec.t = clock.now()
                if len(body.data) > INLINE_FINISH:
                    # Hashing, scrubbing and decoding up to body_cap bytes of a hostile page
                    # (measured: up to ~0.1 s of CPU for 1 MiB of address-like text) must not
                    # stall every other measurement's timers on the event loop.
                    await asyncio.to_thread(_finish_body, rec, body, sample_cap, scrubber)
                else:
                    _finish_body(rec, body, sample_cap, scrubber)
                _scrub(rec, scrubber)
                if rec.failure is None and nxt is not None and len(hops) > max_redirects:
                    rec.failure = "http_too_many_redirects"
                    nxt = None
                current = nxt if rec.failure is None else None
    finally:
        await backend.aclose()
    return hops
