"""The target host of the path-location lab: a TLS server on :443 (any SNI, a trustme
certificate) and an HTTP server on :80 (200 for any Host), on one address.

    python path_target.py LISTEN_IP
Standalone: no project imports.
"""

from __future__ import annotations

import contextlib
import socketserver
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import trustme

LISTEN = sys.argv[1]


class Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b"<html><head><title>lab target</title></head><body>hello</body></html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        print(fmt % args, flush=True)


def main() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("*.lab.test", "*.blocked.test", "example.com")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)

    class Tls(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with contextlib.suppress(OSError), ctx.wrap_socket(self.request, server_side=True) as conn:
                conn.recv(1)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    tls = socketserver.ThreadingTCPServer((LISTEN, 443), Tls)
    threading.Thread(target=tls.serve_forever, daemon=True).start()
    http = ThreadingHTTPServer((LISTEN, 80), Page)
    print("target ready", flush=True)
    http.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
