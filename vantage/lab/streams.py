"""A stream server that remembers its open connections, so the lab can cut them all on stop
(Python 3.11's `Server.close()` leaves accepted connections open; 3.12 added close_clients)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class _TrackedProtocol(asyncio.StreamReaderProtocol):
    def __init__(self, reader: asyncio.StreamReader, handler: Handler, server: TrackedServer):
        super().__init__(reader, handler)
        self._owner = server
        self._tracked: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a stream server's connections are
        self._tracked = transport
        self._owner.connections.add(transport)
        super().connection_made(transport)
        if self._owner.stopping:
            # Accepted just before the server closed: cut it too, or its handler would wait.
            transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._tracked is not None:
            self._owner.connections.discard(self._tracked)
        super().connection_lost(exc)


class TrackedServer:
    """`asyncio.start_server` on a ready socket, plus `stop()` that also aborts every connection."""

    def __init__(self, handler: Handler, sock: socket.socket):
        self._handler = handler
        self._sock = sock
        self._server: asyncio.AbstractServer | None = None
        self.connections: set[asyncio.Transport] = set()
        self.stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.Protocol:
            return _TrackedProtocol(asyncio.StreamReader(), self._handler, self)

        self._server = await loop.create_server(factory, sock=self._sock, backlog=64)

    async def stop(self) -> None:
        if self._server is None:
            return
        self.stopping = True
        self._server.close()
        for transport in list(self.connections):
            transport.abort()  # handlers waiting on these connections now see EOF or an error
        self.connections.clear()
        await self._server.wait_closed()
        self._server = None


async def drain_tasks(timeout: float = 5.0) -> None:
    """Let every other task of this loop finish (cancel the stragglers): called last on stop."""
    current = asyncio.current_task()
    for _ in range(3):
        await asyncio.sleep(0)  # let handlers of just-aborted connections start and see it
    pending = [t for t in asyncio.all_tasks() if t is not current]
    if pending:
        _, still = await asyncio.wait(pending, timeout=timeout)
        for task in still:
            log.warning("lab task still running at stop, cancelled: %r", task)
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)
