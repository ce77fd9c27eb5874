"""Running the collector: uvicorn serving the app over HTTP or HTTPS, holding the dataset's
lock for its whole life, with no access log (submitters stay anonymous)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import uvicorn

from collector.app import build_app
from collector.ingest import Collection, Limits
from probe.dataset import run_lock

log = logging.getLogger(__name__)
LOCK_NAME = "collector"


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"--listen takes HOST:PORT or [IPv6]:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def serve(listen: str, data: Path, *, cert: Path | None = None, key: Path | None = None,
          token: str | None = None, limits: Limits | None = None) -> None:
    """Serve until stopped (SIGINT/SIGTERM). Raises StoreError/RunLocked if the directory is
    not writable or another collector holds it."""
    host, port = parse_listen(listen)
    limits = limits or Limits()
    data = Path(data)
    with run_lock(data, LOCK_NAME):
        collection = Collection(data)
        log.warning("collector: %d measurements held in %s", len(collection.ids), data)
        config = uvicorn.Config(
            build_app(collection, limits=limits, token=token),
            host=host, port=port,
            ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None,
            access_log=False,  # an access log is a list of submitters' addresses
            log_config=None,  # vantage's own logging (the root logger), no uvicorn handlers
            proxy_headers=False, server_header=False,
            # uvicorn answers 503 itself (to every request) past this many open connections; the app
            # serves max_concurrent submissions and tells the others when to come back, so this cap
            # is only against running out of memory and descriptors: a connection waiting for its
            # 503 costs at most its flow-control buffer (64 KB), 1024 of them 64 MB.
            limit_concurrency=1024,
            timeout_keep_alive=5,
            h11_max_incomplete_event_size=16 * 1024,  # request line and headers
        )
        # Bound here, so that a port in use is an OSError for the command's one-line error.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        uvicorn.Server(config).run(sockets=[sock])
