"""probe.net.download against a loopback HTTP server that serves a body at a chosen pace: each
cap stops the read (bytes, time), a short body completes, a reset mid-body keeps what arrived,
a redirect is followed to the resource, a silent server times out."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from probe.net.clock import Clock
from probe.net.download import download

CHUNK = 16384


@contextlib.asynccontextmanager
async def paced_server(size: int, *, rate: float | None = None, reset_after: int | None = None,
                       redirect: str | None = None, silent: bool = False) -> AsyncIterator[int]:
    """HTTP/1.1 on 127.0.0.1: a body of ``size`` bytes at ``rate`` bytes/s (None: as fast as it
    goes); ``reset_after``: abort the connection after that many body bytes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            if silent:
                await asyncio.sleep(30)
                return
            if redirect is not None:
                writer.write(f"HTTP/1.1 302 Found\r\nLocation: {redirect}\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
                return
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nContent-Type: application/octet-stream\r\n\r\n".encode())
            sent = 0
            while sent < size:
                n = min(CHUNK, size - sent)
                if reset_after is not None and sent + n > reset_after:
                    writer.transport.abort()
                    return
                writer.write(b"x" * n)
                await writer.drain()
                sent += n
                if rate:
                    await asyncio.sleep(n / rate)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def fetch(size: int, *, byte_cap: int = 1 << 20, time_cap: float = 5.0, timeout: float = 5.0, **server: object):
    async def main():  # type: ignore[no-untyped-def]
        async with paced_server(size, **server) as port:  # type: ignore[arg-type]
            return await download(f"http://site.example:{port}/big.bin", clock=Clock(), timeout=timeout,
                                  address_map={"site.example": ["127.0.0.1"]}, byte_cap=byte_cap, time_cap=time_cap)

    return asyncio.run(main())


def test_a_short_body_completes() -> None:
    d = fetch(50_000)
    assert (d.failure, d.stopped_by, d.bytes, d.status_code, d.ip) == (None, "complete", 50_000, 200, "127.0.0.1")
    assert d.ttfb is not None and d.duration is not None and d.t >= d.t0 + d.ttfb


def test_the_byte_cap_stops_a_large_body() -> None:
    d = fetch(10 << 20, byte_cap=256 << 10)
    assert d.failure is None and d.stopped_by == "bytes"
    assert 256 << 10 <= d.bytes < (256 << 10) + 2 * 65536  # one chunk past the cap at most
    assert d.byte_cap == 256 << 10


def test_the_time_cap_stops_a_slow_body_and_the_rate_is_measured() -> None:
    # 100 KB/s for a 10 MB body: the time cap ends it, bytes / duration is about the pace.
    d = fetch(10 << 20, time_cap=1.0, rate=100_000)
    assert d.failure is None and d.stopped_by == "time"
    assert d.duration is not None and 0.9 <= d.duration <= 1.3
    assert 60_000 <= d.bytes / d.duration <= 160_000, (d.bytes, d.duration)


def test_a_reset_mid_body_keeps_what_arrived() -> None:
    d = fetch(1 << 20, reset_after=200_000)
    assert d.failure is not None and d.stopped_by == "failure"
    assert d.bytes > 0 and d.duration is not None


def test_a_redirect_is_followed_to_the_resource() -> None:
    async def main():  # type: ignore[no-untyped-def]
        async with paced_server(30_000) as target:
            async with paced_server(0, redirect=f"http://cdn.example:{target}/file.bin") as first:
                return await download(f"http://site.example:{first}/", clock=Clock(), timeout=5,
                                      address_map={"site.example": ["127.0.0.1"], "cdn.example": ["127.0.0.1"]})

    d = asyncio.run(main())
    assert d.failure is None and d.stopped_by == "complete" and d.bytes == 30_000
    assert d.url.startswith("http://cdn.example:") and d.url.endswith("/file.bin")


def test_a_silent_server_times_out_before_the_body() -> None:
    d = fetch(1000, timeout=0.5, silent=True)
    assert d.failure == "generic_timeout" and d.stopped_by == "failure" and d.bytes == 0 and d.ttfb is None


def test_a_bad_url_is_a_failure_string() -> None:
    d = asyncio.run(download("ftp://site.example/x", clock=Clock(), timeout=1, address_map={}))
    assert d.failure is not None and d.failure.startswith("unknown_failure:") and d.stopped_by == "failure"
