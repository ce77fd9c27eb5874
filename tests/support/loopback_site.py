"""Test-only HTTP servers on 127.0.0.1 (or another address the test owns): a site that answers
(CLI and probe tests), a file server for the "update" commands' downloads (fingerprints, geo
databases, test lists), and sites that answer per request (redirects, echoed addresses)."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

PAGE = b"<html><title>ok</title>hello</html>"


@dataclass(frozen=True)
class Request:
    """What a ``respond`` function sees of a GET: the path (with its query) and the client's address."""

    path: str
    client: str


@dataclass(frozen=True)
class Reply:
    """What a ``respond`` function answers: status, body, and headers beside Content-Length."""

    status: int = 200
    body: bytes = b""
    headers: Sequence[tuple[str, str]] = field(default_factory=tuple)


class LoopbackServer:
    """An HTTP server in a thread, the one test-only web server of the suite.

    ``files``: what a GET serves, by the last segment of its path (bytes: 200 with that body; an
    int: that status with no body); a name it does not hold is a 404. ``page``: served for every
    path instead. ``respond``: a function of the request that answers instead of both.
    ``headers``: sent with every answer of ``files`` and ``page``. ``prefix``: the path of
    ``url`` (e.g. "/fp", for a download base URL). ``host``/``port``: where it listens
    (127.0.0.1 and a free port by default; "::1" works). The paths asked are kept in ``hits``;
    ``files`` may be changed while it runs.
    """

    def __init__(self, files: dict[str, bytes | int] | None = None, *, page: bytes | None = None,
                 prefix: str = "/", content_type: str | None = None,
                 headers: Sequence[tuple[str, str]] = (), respond: Callable[[Request], Reply] | None = None,
                 host: str = "127.0.0.1", port: int = 0, protocol_version: str = "HTTP/1.0") -> None:
        self.files: dict[str, bytes | int] = {} if files is None else files
        self.page = page
        self.hits: list[str] = []
        fixed = [*([("Content-Type", content_type)] if content_type else []), *headers]
        outer = self

        def answer(request: Request) -> Reply:
            if respond is not None:
                return respond(request)
            body = outer.page if outer.page is not None else outer.files.get(request.path.rsplit("/", 1)[-1], 404)
            if isinstance(body, int):
                return Reply(body, b"", fixed)
            return Reply(200, body, fixed)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.hits.append(self.path)
                reply = answer(Request(self.path, self.client_address[0]))
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, *args: object) -> None:
                pass

        Handler.protocol_version = protocol_version

        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.httpd = Server((host, port), Handler)
        self.port = int(self.httpd.server_address[1])
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}{prefix}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def loopback_site(page: bytes = PAGE) -> Iterator[str]:
    """A site answering every GET with ``page`` (text/html); yields its URL (http://127.0.0.1:PORT/)."""
    with LoopbackServer(page=page, content_type="text/html") as server:
        yield server.url


def closed_port_url() -> str:
    """A loopback URL nobody listens on (the port was just free): a connection refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
