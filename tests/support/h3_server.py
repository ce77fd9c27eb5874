"""A small aioquic HTTP/3 server for tests and the netns lab: every GET gets ``pages[host]``
(the :authority without port), an unknown host 404. Runs in the caller's event loop
(``serve_h3``) or as a process: ``python -m tests.support.h3_server CONFIG.json`` with
{"listen": [[IP, PORT], ...], "cert": PEM, "key": PEM, "pages": {HOST: HTML}}.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent


class _H3Site(QuicConnectionProtocol):
    pages: dict[str, str] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._h3: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self._h3 = H3Connection(self._quic)
        if self._h3 is None:
            return
        for h3_event in self._h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                headers = dict(h3_event.headers)
                host = headers.get(b":authority", b"").decode().rsplit(":", 1)[0].strip("[]").lower()
                page = self.pages.get(host)
                status, body = (b"200", page.encode()) if page is not None else (b"404", b"not here\n")
                self._h3.send_headers(h3_event.stream_id, [
                    (b":status", status), (b"server", b"lab-h3"), (b"content-type", b"text/html; charset=utf-8"),
                    (b"content-length", str(len(body)).encode())])
                self._h3.send_data(h3_event.stream_id, body, end_stream=True)
        self.transmit()


async def serve_h3(host: str, port: int, cert: str, key: str, pages: dict[str, str]) -> QuicServer:
    """Listen on ``host``:``port`` (UDP); close the returned server to stop."""
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(cert, key)
    site = type("H3Site", (_H3Site,), {"pages": {h.lower(): p for h, p in pages.items()}})
    return await serve(host, port, configuration=config, create_protocol=site)


async def _main(config_file: str) -> None:
    with open(config_file) as fh:
        config = json.load(fh)
    for host, port in config["listen"]:
        await serve_h3(host, int(port), config["cert"], config["key"], config["pages"])
    print("listening", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1]))
