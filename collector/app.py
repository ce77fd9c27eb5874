"""The collector's HTTP API (starlette): POST /v1/measurements, GET /health. The body is read
here under the limits (size, idle and slow-client deadlines, concurrency); everything about its
content happens in collector.ingest, in a worker thread.

Submitters are anonymous to the collector: the ASGI scope's client address is dropped before
any handler runs, and nothing here logs a request line.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from collector.ingest import Collection, Limits, Refusal, process

log = logging.getLogger(__name__)


class Anonymous:
    """ASGI middleware: the submitter's address never reaches the app (nor its logs)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = dict(scope)
            scope["client"] = None
        await self.app(scope, receive, send)


def _refuse(status: int, reason: str, limits: Limits | None = None) -> JSONResponse:
    headers = {"Retry-After": str(limits.retry_after_s)} if limits is not None and status == 503 else None
    return JSONResponse({"status": "refused", "error": reason}, status_code=status, headers=headers)


async def read_body(request: Request, limits: Limits) -> bytes:
    """The body, or Refusal 413 (too big) / 408 (too slow). A client that sends nothing for
    read_timeout_s, or after that first stretch less than min_rate bytes a second on average,
    holds a submission slot that honest probes need."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refusal(400, "Content-Length is not a number")
        if int(declared) > limits.max_body:
            raise Refusal(413, f"the body is {declared} bytes; the limit is {limits.max_body}")
    loop = asyncio.get_running_loop()
    start = loop.time()
    chunks: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=limits.read_timeout_s)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise Refusal(408, f"no data for {limits.read_timeout_s:g} s") from None
        size += len(chunk)
        if size > limits.max_body:
            raise Refusal(413, f"the body is more than {limits.max_body} bytes")
        chunks.append(chunk)
        elapsed = loop.time() - start
        if elapsed > limits.read_timeout_s and size / elapsed < limits.min_rate:
            raise Refusal(408, f"the body arrives slower than {limits.min_rate} bytes/s")
    return b"".join(chunks)


def build_app(collection: Collection, *, limits: Limits | None = None, token: str | None = None) -> ASGIApp:
    limits = limits or Limits()
    counters = collection.counters

    async def submit(request: Request) -> Response:
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                counters.refused += 1
                return _refuse(401, "this collector needs a token (Authorization: Bearer ...)")
        if counters.in_flight >= limits.max_concurrent:
            counters.busy += 1
            return _refuse(503, f"busy: {limits.max_concurrent} submissions in progress; retry later", limits)
        counters.in_flight += 1
        counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
        try:
            body = await read_body(request, limits)
            receipt = await asyncio.to_thread(
                process, collection, body, encoding=request.headers.get("content-encoding"),
                probe_cc=request.query_params.get("probe_cc"), limits=limits,
            )
        except Refusal as refusal:
            counters.refused += 1
            log.info("refused a submission (%d): %s", refusal.status, refusal.reason)
            return _refuse(refusal.status, refusal.reason, limits)
        except ClientDisconnect:
            counters.refused += 1
            log.info("a submitter went away before its body was complete; nothing stored")
            return Response(status_code=400)
        finally:
            counters.in_flight -= 1
        log.debug("batch: %d accepted, %d duplicates, %d rejected",
                  receipt["accepted"], receipt["duplicates"], receipt["rejected"])
        return JSONResponse(receipt)

    async def health(request: Request) -> Response:
        body: dict[str, Any] = {"status": "ok", "counters": counters.as_dict(), "limits": limits.as_dict(),
                                "token_required": token is not None}
        return JSONResponse(body)

    app = Starlette(routes=[
        Route("/v1/measurements", submit, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ])
    return Anonymous(app)
