"""Test-only HTTP servers on 127.0.0.1: a site that answers (CLI and probe tests) and a file
server for the "update" commands' downloads (fingerprints, geo databases)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager

PAGE = b"<html><title>ok</title>hello</html>"


class LoopbackServer:
    """An HTTP server on 127.0.0.1 (a thread), the one test-only web server of the suite.

    ``files``: what a GET serves, by the last segment of its path (bytes: 200 with that body; an
    int: that status with no body); a name it does not hold is a 404. ``page``: served for every
    path instead. ``prefix``: the path of ``url`` (e.g. "/fp", for a download base URL). The paths
    asked are kept in ``hits``; ``files`` may be changed while it runs.
    """

    def __init__(self, files: dict[str, bytes | int] | None = None, *, page: bytes | None = None,
                 prefix: str = "/", content_type: str | None = None) -> None:
        self.files: dict[str, bytes | int] = {} if files is None else files
        self.page = page
        self.hits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                outer.hits.append(self.path)
                body = outer.page if outer.page is not None else outer.files.get(self.path.rsplit("/", 1)[-1], 404)
                data = b"" if isinstance(body, int) else body
                self.send_response(body if isinstance(body, int) else 200)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{prefix}"
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
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
