"""The control helper server (`vantage control serve`): measures what probes ask with the same
experiment code, from an uncensored network, within fixed bounds. Protocol: probe.control.

HTTP/1.1 is parsed by h11, one request per connection. The caller's address is used only for
/v1/whoami: sent back to that caller (its public address, for its scrubber) with its country
and network; it is never logged.

Every connection a measurement makes is checked against the address policy (the connection
guard, ``Settings.address_guard``, which each measurement's context switches on), after name
resolution and on every redirect hop; a refused connection is recorded as
``unknown_failure:address_refused`` and nothing behind it is read. Slow clients are bounded
by read deadlines and by evicting the oldest connection still sending its request when too
many are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11
import maxminddb

from probe import __version__
from probe.control import (
    INFO_PATH,
    MEASURE_PATH,
    PROTOCOL_VERSION,
    WHOAMI_PATH,
    ControlTarget,
    address_refusal,
    host_refusal,
    input_host,
    measurement_to_json,
    parse_address,
    valid_id,
)
from probe.errors import VantageError
from probe.experiments import registry
from probe.experiments.base import Experiment, Observation, Settings, Target, Vantage, measure
from probe.experiments.common import gather_all, resolved_addresses
from probe.experiments.context import MeasurementContext
from probe.schema import Measurement, TcpConnect, new_run_id
from probe.testlists import input_problem

log = logging.getLogger(__name__)

PROBE_ADDRESS_TAG = "probe_address"


class HttpError(VantageError):
    """An error answer: status, a stable code, a one-line message and optional details."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class ControlSetupError(VantageError):
    """The server cannot start (bad database file, address in use): one line."""


@dataclass
class Limits:
    max_body: int = 64 * 1024  # bytes of request body
    max_targets: int = 10  # targets per request
    max_addresses: int = 16  # probe addresses per target
    max_concurrent: int = 4  # measure requests in progress; more get 503
    # Connections still sending their request; past this the OLDEST of them is closed to make
    # room. Refusing the newest instead would let 64 slow clients (slowloris) lock real probes
    # out; a real probe sends its whole request within a few round trips of connecting, so
    # it is almost never the oldest one waiting.
    max_pending: int = 64
    max_connections: int = 256  # open connections of any kind; more are answered 503 and closed
    request_timeout: float = 90.0  # seconds for all measurements of one request
    # Deadlines from the moment a connection is accepted (after TLS). A probe on a slow, lossy
    # link still sends its request line and headers in a few round trips; three lost segments
    # cost 1 + 2 + 4 s of retransmission timeouts, so 10 s for the headers and 15 s for the
    # whole request (body at most max_body) leave room for that and nothing for trickling.
    header_timeout: float = 10.0  # seconds to receive the request line and headers
    read_timeout: float = 15.0  # seconds to receive the whole request
    max_json_depth: int = 16  # nesting of the request JSON; the protocol needs 4


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    allow_private: bool = False  # labs only: lets the helper contact private addresses
    # Networks the policy lets through although special-purpose (labs and tests: a loopback
    # "public" target, say), e.g. ["127.0.0.2/32"]; everything else special stays refused.
    allow_nets: list[str] = field(default_factory=list)
    geoip_db: Path | None = None
    asn_db: Path | None = None
    settings: Settings = field(default_factory=Settings)
    vantage: Vantage = field(default_factory=lambda: Vantage(role="control"))
    limits: Limits = field(default_factory=Limits)
    ssl_context: ssl.SSLContext | None = None


# --------------------------------------------------------------------------- country / ASN


class GeoLookup:
    """Country and ASN of an address from MaxMind-format databases (GeoLite2 Country/ASN and
    compatible files; one file may hold both)."""

    def __init__(self, geoip_db: Path | None, asn_db: Path | None) -> None:
        self._readers: list[maxminddb.Reader] = []
        try:
            for path in (geoip_db, asn_db):
                if path is not None:
                    self._readers.append(maxminddb.open_database(str(path)))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            self.close()
            raise ControlSetupError(f"cannot open MaxMind database {path}: {exc}") from exc

    @property
    def configured(self) -> bool:
        return bool(self._readers)

    def lookup(self, address: str) -> dict[str, str | None]:
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        cc: str | None = None
        asn: str | None = None
        network: str | None = None
        for reader in self._readers:
            try:
                rec = reader.get(ip)
            except ValueError:  # an IPv6 caller and an IPv4-only database
                rec = None
            if not isinstance(rec, dict):
                continue
            country = rec.get("country") or rec.get("registered_country") or {}
            code = country.get("iso_code") if isinstance(country, dict) else None
            code = code or rec.get("country_code")
            if cc is None and isinstance(code, str) and len(code) == 2:
                cc = code.upper()
            number = rec.get("autonomous_system_number")
            if asn is None and isinstance(number, int):
                asn = f"AS{number}"
                org = rec.get("autonomous_system_organization")
                network = org if isinstance(org, str) else None
        return {"probe_cc": cc or "ZZ", "probe_asn": asn, "probe_network": network}

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers.clear()


# --------------------------------------------------------------------------- the experiment wrapper


class _ProbeAddressesWrapper(Experiment):
    """Runs an experiment, then TCP (and for https, TLS with the URL's SNI) to the addresses
    the probe resolved that the helper did not reach itself, tagged ``probe_address``.

    The analyzer uses these to tell a lying resolver from a CDN or geo-DNS answer: a probe
    answer that validates over TLS from the control is a real server of the site.
    """

    def __init__(self, inner: Experiment, addresses: Sequence[str]) -> None:
        self.inner = inner
        self.addresses = list(addresses)

    async def run(self, target: Target, net: MeasurementContext) -> list[Observation]:
        observations = await self.inner.run(target, net)
        parts = urlsplit(target.input)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            return observations
        port = parts.port or (443 if scheme == "https" else 80)
        reached = {o.ip for o in observations if isinstance(o, TcpConnect) and o.port == port}
        extra = [a for a in self.addresses if a not in reached]
        sni = parts.hostname if scheme == "https" else None

        async def endpoint(ip: str) -> list[Observation]:
            connect = await net.tcp_connect(ip, port, tag=PROBE_ADDRESS_TAG)
            steps: list[Observation] = [connect]
            if sni is not None and connect.failure is None:
                steps.append(await net.tls_handshake(ip, port, sni, tag=PROBE_ADDRESS_TAG))
            return steps

        for steps in await gather_all(endpoint(ip) for ip in extra):
            observations.extend(steps)
        return observations

    def succeeded(self, m: Measurement) -> bool:
        return self.inner.succeeded(m)


def with_probe_addresses(inner: Experiment, addresses: Sequence[str]) -> Experiment:
    # The record carries the inner experiment's name and version: a subclass per call keeps
    # them class attributes, as Experiment declares them.
    cls = type(f"Control{type(inner).__name__}", (_ProbeAddressesWrapper,), {"name": inner.name, "version": inner.version})
    wrapper: Experiment = cls(inner, addresses)
    return wrapper


# --------------------------------------------------------------------------- requests


@dataclass
class MeasureRequest:
    experiment: str
    targets: list[ControlTarget]
    run_id: str | None = None


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_JSON_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether the JSON text nests arrays/objects deeper than ``limit``, in linear time and
    without recursion (json.loads recurses: deep nesting would raise RecursionError)."""
    brackets = _JSON_NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", body))
    depth = 0
    for b in brackets:
        depth += 1 if b in b"[{" else -1
        if depth > limit:
            return True
    return False


def parse_measure_request(body: bytes, limits: Limits) -> MeasureRequest:
    """Check a /v1/measure body; HttpError(400) says what is wrong."""
    if json_depth_exceeds(body, limits.max_json_depth):
        raise HttpError(400, "too_deep", f"the JSON nests deeper than {limits.max_json_depth} levels")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise HttpError(400, "bad_json", f"the body is not JSON: {_one_line(exc)}") from None
    if not isinstance(data, dict):
        raise HttpError(400, "bad_request", "the body must be a JSON object")
    experiment = data.get("experiment")
    if not isinstance(experiment, str) or experiment not in registry.EXPERIMENTS:
        known = ", ".join(sorted(registry.EXPERIMENTS))
        raise HttpError(400, "unknown_experiment", f"unknown experiment {experiment!r}; known: {known}")
    if "targets" in data:
        raw = data["targets"]
        if not isinstance(raw, list) or not raw:
            raise HttpError(400, "bad_request", "targets must be a non-empty list")
    elif "input" in data:
        raw = [{k: data[k] for k in ("input", "category", "addresses", "control_for") if k in data}]
    else:
        raise HttpError(400, "bad_request", "give an input (or a list of targets)")
    if len(raw) > limits.max_targets:
        raise HttpError(400, "too_many_targets", f"at most {limits.max_targets} targets per request, got {len(raw)}")
    targets = [_parse_target(item, limits) for item in raw]
    run_id = data.get("run_id")
    if run_id is not None and not valid_id(run_id):
        raise HttpError(400, "bad_request", "run_id may hold only letters, digits, '.', '_' and '-'")
    return MeasureRequest(experiment=experiment, targets=targets, run_id=run_id)


def _parse_target(item: Any, limits: Limits) -> ControlTarget:
    if not isinstance(item, dict):
        raise HttpError(400, "bad_request", "each target must be a JSON object")
    url = item.get("input")
    if not isinstance(url, str):
        raise HttpError(400, "invalid_input", "missing input")
    problem = input_problem(url)
    if problem:
        raise HttpError(400, "invalid_input", problem)
    addresses = item.get("addresses") or []
    if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
        raise HttpError(400, "bad_request", "addresses must be a list of IP address strings")
    if len(addresses) > limits.max_addresses:
        raise HttpError(
            400, "too_many_addresses", f"at most {limits.max_addresses} addresses per target, got {len(addresses)}"
        )
    normalised = []
    for a in addresses:
        ip = parse_address(a)
        if ip is None:
            raise HttpError(400, "bad_request", f"not an IP address: {a[:60]!r}")
        normalised.append(str(ip))
    category = item.get("category")
    if category is not None and not (isinstance(category, str) and len(category) <= 16):
        raise HttpError(400, "bad_request", "category must be a short string")
    control_for = item.get("control_for")
    if control_for is not None and not valid_id(control_for):
        raise HttpError(400, "bad_request", "control_for must be a measurement id")
    return ControlTarget(input=url, category=category, addresses=list(dict.fromkeys(normalised)), control_for=control_for)


async def check_policy(
    request: MeasureRequest, settings: Settings | None = None, refusal: Callable[[str], str | None] | None = None
) -> None:
    """Refuse targets and addresses that are not public (HttpError 403), before measuring.

    Names are resolved as the experiments will resolve them (``settings``' resolvers).
    ``refusal`` is the helper's policy (default: address_refusal). This fails early and
    clearly; the connection guard still checks every address actually connected to.
    """
    check = refusal or address_refusal
    refused: list[str] = []
    for t in request.targets:
        for a in t.addresses:
            if check(a):
                refused.append(a)
    if refused:
        reasons = ", ".join(f"{a} ({check(a)})" for a in refused[:5])
        raise HttpError(
            403, "forbidden_address",
            f"this helper contacts only public addresses; refused: {reasons}", addresses=refused,
        )
    for t in request.targets:
        host = input_host(t.input) or ""
        reason = await host_refusal(
            host, resolve=_resolver_like(settings) if settings is not None else None, refusal=check
        )
        if reason:
            raise HttpError(403, "forbidden_target", f"this helper measures only public targets: {reason}", input=t.input)


def _resolver_like(settings: Settings) -> Callable[[str], Awaitable[list[str]]]:
    async def resolve(host: str) -> list[str]:
        net = MeasurementContext(settings)
        try:
            queries = await net.dns_lookup(host)
        finally:
            await net.abandon_late()  # only the answers matter here, not late replies
        return resolved_addresses(queries, limit=64)

    return resolve


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


# --------------------------------------------------------------------------- the server

_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Content Too Large", 500: "Internal Server Error",
            503: "Service Unavailable", 504: "Gateway Timeout"}


class ControlServer:
    """``await start()`` binds and returns (host, port); ``await close()`` stops everything."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.geo = GeoLookup(config.geoip_db, config.asn_db)
        self._busy = asyncio.Semaphore(self.limits.max_concurrent)
        self._in_progress = 0  # measure requests being measured now (shown by /v1/info)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        # Connections still receiving their request, oldest first, and how many were evicted.
        self._pending: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.evicted = 0
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in config.allow_nets]
        # The helper's own DoH resolvers (given as address literals) are the operator's choice,
        # not a caller's: the guard lets exactly their address and port through. (Plain
        # resolvers are asked without the guard: DNS over UDP/TCP is not a connection the
        # guard sees.)
        self._doh_endpoints = _doh_endpoints(config.settings.resolvers)

    async def start(self) -> tuple[str, int]:
        try:
            self._server = await asyncio.start_server(
                self._accept, self.config.host, self.config.port, ssl=self.config.ssl_context,
                limit=self.limits.max_body,
                ssl_handshake_timeout=self.limits.header_timeout if self.config.ssl_context else None,
            )
        except OSError as exc:
            self.geo.close()
            raise ControlSetupError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}"
            ) from exc
        return self.address

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server is bound to (after start())."""
        assert self._server is not None, "call start() first"
        sockname = self._server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    async def serve_forever(self) -> None:
        assert self._server is not None, "call start() first"
        await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        self.geo.close()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ----------------------------------------------------------------- connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio runs each connection in its own task; keep them so close() can end them.
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
            self._pending[task] = writer
            task.add_done_callback(self._unpend)
            while len(self._pending) > self.limits.max_pending:
                # The oldest connection still sending its request makes room (see Limits).
                oldest, victim = next(iter(self._pending.items()))
                del self._pending[oldest]
                self.evicted += 1
                victim.transport.abort()
        try:
            await self._connection(reader, writer)
        except asyncio.CancelledError:
            pass  # close() ends connections still open; the connection is closed already

    def _unpend(self, task: asyncio.Task[None]) -> None:
        self._pending.pop(task, None)

    # ----------------------------------------------------------------- the address policy

    def refusal(self, address: str) -> str | None:
        """Why this helper must not contact ``address`` (None: it may): the address policy,
        minus the configured allow-list (``allow_nets``) and ``allow_private``."""
        if self.config.allow_private:
            return None
        ip = parse_address(address)
        if ip is not None and any(ip.version == n.version and ip in n for n in self._allowed):
            return None
        return address_refusal(address)

    def _guard(self, address: str, port: int) -> str | None:
        """The connection guard: the policy on every address a measurement connects to."""
        ip = parse_address(address)
        if ip is not None and (str(ip), port) in self._doh_endpoints:
            return None
        return self.refusal(address)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.monotonic()
        status, method, path = 0, "-", "-"
        try:
            status, payload, method, path, headers = await self._answer(reader, writer)
            if status:
                await self._respond(writer, status, payload, headers)
                if status == 413:
                    await self._discard_rest(reader)
        except (TimeoutError, ConnectionError, ssl.SSLError):  # the caller went away
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError):
                pass
        # No caller address in the log, by design.
        log.info("%s %s -> %d in %.2fs", method, path[:200], status, time.monotonic() - started)

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, dict[str, Any], str, str, list[tuple[str, str]]]:
        """(status, JSON payload, method, path, extra headers); status 0: no answer is due."""
        method, path = "-", "-"
        try:
            if len(self._handlers) > self.limits.max_connections:
                raise HttpError(503, "busy", "too many connections; try again later")
            try:
                request, body = await self._read_request(reader, writer)
            finally:
                task = asyncio.current_task()
                if task is not None:
                    self._pending.pop(task, None)
            method, path = request.method.decode("ascii", "replace"), request.target.decode("ascii", "replace")
            return 200, await self._route(method, path.split("?", 1)[0], writer, body), method, path, []
        except HttpError as exc:
            payload = {"error": {"code": exc.code, "message": exc.message, **exc.details}}
            headers = [("Retry-After", "5")] if exc.status == 503 else []
            return exc.status, payload, method, path, headers
        except (ConnectionError, ssl.SSLError):  # the caller went away or spoke broken TLS
            return 0, {}, method, path, []
        except Exception as exc:
            # A bug, never bad input (that is a 4xx above): one line in the log, the traceback
            # only at debug level, nothing of it in the answer.
            log.error("control helper: internal error on %s %s: %s: %s", method, path[:200],
                      type(exc).__name__, _one_line(exc))
            log.debug("control helper: internal error", exc_info=True)
            return 500, {"error": {"code": "internal_error", "message": "internal error"}}, method, path, []

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[h11.Request, bytes]:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        request: h11.Request | None = None
        body = bytearray()
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpError(400, "bad_http", f"malformed HTTP request: {_one_line(exc)}") from None
            if event is h11.NEED_DATA:
                # Headers within header_timeout, the whole request within read_timeout, however
                # slowly the bytes trickle in.
                limit = self.limits.header_timeout if request is None else self.limits.read_timeout
                left = started + limit - loop.time()
                try:
                    if left <= 0:
                        raise TimeoutError
                    data = await asyncio.wait_for(reader.read(64 * 1024), left)
                except TimeoutError:
                    what = "headers" if request is None else "request"
                    raise HttpError(408, "request_timeout", f"the {what} did not arrive within {limit:g} s") from None
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
                for name, value in event.headers:
                    if name == b"content-length" and int(value) > self.limits.max_body:
                        raise HttpError(413, "too_large", f"the request body may be at most {self.limits.max_body} bytes")
                if conn.they_are_waiting_for_100_continue:  # curl does this for larger bodies
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.limits.max_body:
                    raise HttpError(413, "too_large", f"the request body may be at most {self.limits.max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            else:  # ConnectionClosed before a full request
                raise ConnectionResetError("client went away")

    async def _discard_rest(self, reader: asyncio.StreamReader) -> None:
        # Read (a bounded amount of) what the client is still sending, so that it sees our
        # 413 rather than a reset in the middle of its upload.
        deadline = time.monotonic() + 2.0
        received = 0
        while received < 4 * 1024 * 1024 and (left := deadline - time.monotonic()) > 0:
            chunk = await asyncio.wait_for(reader.read(64 * 1024), left)
            if not chunk:
                return
            received += len(chunk)

    async def _respond(
        self, writer: asyncio.StreamWriter, status: int, payload: dict[str, Any], extra: list[tuple[str, str]]
    ) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "Content-Type: application/json",
                f"Content-Length: {len(body)}", "Connection: close", f"Server: vantage-control/{__version__}"]
        head += [f"{k}: {v}" for k, v in extra]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await asyncio.wait_for(writer.drain(), 30)

    async def _route(self, method: str, path: str, writer: asyncio.StreamWriter, body: bytes) -> dict[str, Any]:
        routes = {MEASURE_PATH: "POST", WHOAMI_PATH: "GET", INFO_PATH: "GET"}
        if path not in routes:
            raise HttpError(404, "not_found", f"no such endpoint {path[:100]!r}; see {INFO_PATH}")
        if method != routes[path]:
            raise HttpError(405, "method_not_allowed", f"use {routes[path]} for {path}")
        if path == WHOAMI_PATH:
            return self._whoami(writer)
        if path == INFO_PATH:
            return self._info()
        return await self._measure(body)

    def _info(self) -> dict[str, Any]:
        return {
            "service": "vantage-control",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "experiments": sorted(registry.EXPERIMENTS),
            "whoami": self.geo.configured,
            "in_progress": self._in_progress,
            "connections": len(self._handlers),
            "pending": len(self._pending),
            "evicted": self.evicted,
            "limits": dataclasses.asdict(self.limits),
        }

    def _whoami(self, writer: asyncio.StreamWriter) -> dict[str, Any]:
        # The caller's address goes back to that caller only, so a probe behind NAT learns its
        # public address and scrubs it; never logged here (the access log has no peer).
        peer = writer.get_extra_info("peername")
        if not peer:
            raise HttpError(500, "internal_error", "cannot tell the caller's address")
        seen = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        if isinstance(seen, ipaddress.IPv6Address) and seen.ipv4_mapped is not None:
            seen = seen.ipv4_mapped  # a dual-stack listener's view of an IPv4 caller
        address = str(seen)
        answer: dict[str, Any] = {"public_address": address}
        if self.geo.configured:
            answer.update(self.geo.lookup(address))
        return answer

    async def _measure(self, body: bytes) -> dict[str, Any]:
        request = parse_measure_request(body, self.limits)
        if not self.config.allow_private:
            await check_policy(request, self.config.settings, self.refusal)
        if self._busy.locked():
            raise HttpError(503, "busy", f"{self.limits.max_concurrent} requests are being measured; try again later")
        async with self._busy:
            self._in_progress += 1
            try:
                records = await asyncio.wait_for(self._run(request), self.limits.request_timeout)
            except TimeoutError:
                raise HttpError(
                    504, "timeout", f"the measurements took longer than {self.limits.request_timeout:g} s"
                ) from None
            finally:
                self._in_progress -= 1
        return {"measurements": [measurement_to_json(m) for m in records]}

    async def _run(self, request: MeasureRequest) -> list[Measurement]:
        experiment = registry.get(request.experiment)
        run_id = request.run_id or new_run_id()
        # Every connection of these measurements (and of the tasks they start) passes the
        # guard: each measurement's context switches it on.
        settings = dataclasses.replace(
            self.config.settings, address_guard=None if self.config.allow_private else self._guard
        )

        async def one(t: ControlTarget) -> Measurement:
            exp = with_probe_addresses(experiment, t.addresses) if t.addresses else experiment
            return await measure(
                exp, Target(t.input, t.category), settings, self.config.vantage, run_id,
                control_for=t.control_for,
            )

        return await gather_all(one(t) for t in request.targets)



def _doh_endpoints(resolvers: Sequence[str]) -> frozenset[tuple[str, int]]:
    """(address, port) of the configured DoH resolvers whose URL host is an address literal."""
    out = set()
    for r in resolvers:
        if not r.lower().startswith("https://"):
            continue
        try:
            parts = urlsplit(r)
            port = parts.port or 443
        except ValueError:
            continue
        ip = parse_address(parts.hostname or "")
        if ip is not None:
            out.add((str(ip), port))
    return frozenset(out)
