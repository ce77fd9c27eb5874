"""Control helper protocol and client: Measurement JSON, the address policy, and the calls a
probe makes to a helper (`fetch_control`, `fetch_whoami`). The server is probe.control_server.

Protocol (JSON over HTTP(S), version 1):

- ``POST /v1/measure`` ``{"experiment": NAME, "input": URL, "addresses": [IP, ...],
  "category": CODE, "control_for": ID}`` or ``{"experiment": NAME, "targets": [{...}, ...]}``
  → ``{"measurements": [Measurement, ...]}``, one per target, in order.
- ``GET /v1/whoami`` → ``{"public_address": IP, "probe_cc": "IR", "probe_asn": "AS1234",
  "probe_network": "..."}``: the address the helper saw for the caller (its public address
  behind NAT, so the probe can scrub it; sent to that caller only, never logged or stored),
  and its country and network when the helper has the databases.
- ``GET /v1/info`` → the helper's version, experiments and limits.
- Errors: a 4xx/5xx status with ``{"error": {"code": CODE, "message": TEXT, ...}}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import ipaddress
import json
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pyarrow as pa

from probe.errors import VantageError
from probe.schema import (
    Measurement,
    records_to_table,
    row_to_record,
    validate,
)
from probe.scrub import scrub_record

if TYPE_CHECKING:
    from probe.experiments.base import Settings, Target
    from probe.net.scrub import Scrubber

PROTOCOL_VERSION = 1
MEASURE_PATH = "/v1/measure"
WHOAMI_PATH = "/v1/whoami"
INFO_PATH = "/v1/info"
# A response holds at most a few capped body samples per target; more is a misbehaving helper.
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
DEFAULT_TIMEOUT = 120.0
_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class ControlError(VantageError):
    """The control helper could not be reached or refused the request (one line, no probe IP)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or {}


# --------------------------------------------------------------------------- JSON


def measurement_to_json(m: Measurement) -> dict[str, Any]:
    """A Measurement as plain JSON types (the start time as an ISO 8601 UTC string)."""
    data = dataclasses.asdict(m)
    data["measurement_start_time"] = m.measurement_start_time.astimezone(dt.UTC).isoformat()
    return data


def measurement_from_json(data: Any) -> Measurement:
    """Rebuild and check a Measurement from JSON; ValueError says what is wrong.

    The record is also converted to the Arrow schema here, so a record with wrong types is
    refused now rather than breaking the writer's next batch.
    """
    if not isinstance(data, dict):
        raise ValueError("a measurement must be a JSON object")
    data = dict(data)
    start = data.get("measurement_start_time")
    if not isinstance(start, str):
        raise ValueError("measurement_start_time must be an ISO 8601 string")
    try:
        when = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"bad measurement_start_time {start!r}") from exc
    if when.tzinfo is None:
        raise ValueError("measurement_start_time must carry a time zone")
    data["measurement_start_time"] = when.astimezone(dt.UTC)
    try:
        record = row_to_record(data)
        validate(record)
        records_to_table([record])
    except (KeyError, TypeError, AttributeError, ValueError, pa.ArrowException) as exc:
        raise ValueError(f"not a valid measurement: {type(exc).__name__}: {exc}") from exc
    return record


# --------------------------------------------------------------------------- address policy
#
# A control helper runs inside someone's network and connects where strangers tell it to;
# without this policy it could be told to read that network's private hosts (on a cloud VM:
# the metadata service at 169.254.169.254). The policy is the union of:
#
# - the ``ipaddress`` properties (is_unspecified, is_loopback, is_link_local, is_multicast,
#   is_site_local, is_reserved, is_private, not is_global), which follow Python's copy of the
#   registries below;
# - every entry of the IANA special-purpose address registries that is not globally
#   reachable (iana-ipv4-special-registry, iana-ipv6-special-registry, as of 2025), listed
#   here because the properties of the Python we run on may predate them (3fff::/20 and
#   5f00::/16 are from 2024); the few globally reachable entries nested in them (PCP and
#   TURN anycast, 192.0.0.9/32 etc.) are refused too: a helper has no business with them;
# - for IPv6, everything outside 2000::/3, the only block the IANA IPv6 address space
#   registry allocates to global unicast, except NAT64 (64:ff9b::/96) of a public IPv4;
# - addresses that embed an IPv4 address (IPv4-mapped, NAT64, 6to4) are judged by it too.

_SPECIAL_NETWORKS: tuple[tuple[str, str], ...] = (
    # IANA IPv4 Special-Purpose Address Registry, entries not globally reachable
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "limited broadcast"),
    # IANA IPv6 Special-Purpose Address Registry, entries not globally reachable
    ("::1/128", "loopback"),
    ("::/128", "unspecified"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation"),
    ("100::/64", "discard-only"),
    ("100:0:0:1::/64", "dummy prefix"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001::/32", "Teredo"),
    ("2001:2::/48", "benchmarking"),
    ("2001:10::/28", "deprecated ORCHID"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("3fff::/20", "documentation"),
    ("5f00::/16", "segment routing (SRv6) SIDs"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    # IPv6 address architecture: deprecated site-local (RFC 3879), multicast
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
_SPECIAL = tuple((ipaddress.ip_network(net), label) for net, label in _SPECIAL_NETWORKS)
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), with its form."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour
    if ip.teredo is not None:
        return "Teredo", ip.teredo[1]
    return None


def _ip_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    for label, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
    ):
        if flag:
            return label
    for network, label in _SPECIAL:
        if ip.version == network.version and ip in network:
            return label
    if not ip.is_global:  # anything the registries of this Python know and we do not
        return "not globally routable"
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _GLOBAL_UNICAST:
        return "outside global unicast (2000::/3)"
    return None


def parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address literal, bracketed or not; None when it is not one."""
    try:
        return ipaddress.ip_address(address.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def address_refusal(address: str) -> str | None:
    """Why the helper must not contact ``address`` (None when it is a public address).

    Every connection the helper makes is checked with this, after name resolution (see
    ``probe.net._client.address_guard``), so a name that resolves differently later (DNS
    rebinding) or a redirect cannot reach around it.
    """
    ip = parse_address(address)
    if ip is None:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "scoped (link-local)"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            form, v4 = embedded
            inner = _ip_refusal(v4)
            if inner is not None:
                # Mapped addresses are the IPv4 address itself: say what it is plainly.
                return inner if form == "IPv4-mapped" else f"{form} of {inner} {v4}"
            if form == "IPv4-mapped" or form == "NAT64":
                return None  # the public IPv4 address, reached through IPv6
    return _ip_refusal(ip)


def _numeric_ipv4(host: str) -> str | None:
    """The IPv4 address a numeric host means to the system resolver (inet_aton's forms:
    ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``), or None for a name."""
    labels = host.split(".")
    if not labels[-1] or not re.fullmatch(r"(0x[0-9a-f]*|[0-9]+)", labels[-1]):
        return None  # a name: its last label is not a number (WHATWG URL's rule)
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return "invalid"


def normalise_host(host: str) -> str:
    """Lower case, no brackets or trailing dots, IDNA-encoded (NFKC: fullwidth digits and
    letters become ASCII, as the resolver will see them). UnicodeError when it cannot be."""
    host = host.strip().removeprefix("[").removesuffix("]").rstrip(".").lower()
    if host.isascii():
        return host
    return host.encode("idna").decode("ascii").lower()


def host_form_refusal(host: str) -> str | None:
    """Why ``host`` as written is refused without resolving it (None: resolve and check):
    special address literals in any textual form, ``localhost`` and ``*.localhost``."""
    literal = parse_address(host)
    if literal is not None:
        reason = address_refusal(str(literal))
        return f"{literal} is {reason}" if reason else None
    try:
        name = normalise_host(host)
    except UnicodeError:
        return f"{host!r} is not a valid host name"
    literal = parse_address(name)
    if literal is not None:
        reason = address_refusal(str(literal))
        return f"{host!r} means {literal}, which is {reason}" if reason else None
    numeric = _numeric_ipv4(name)
    if numeric == "invalid":
        return f"{host!r} is neither a name nor a valid address"
    if numeric is not None:
        reason = address_refusal(numeric)
        return f"{host!r} means {numeric}, which is {reason}" if reason else None
    if not name or name == "localhost" or name.endswith(".localhost"):
        return f"{host!r} is loopback"  # RFC 6761: always the loopback interface
    return None


async def host_refusal(
    host: str, *, timeout: float = 4.0, resolve: Callable[[str], Awaitable[list[str]]] | None = None,
    refusal: Callable[[str], str | None] | None = None,
) -> str | None:
    """Like address_refusal for a host name: refused if any address it resolves to is.

    ``resolve`` should ask what the experiments will ask (the helper passes its configured
    resolvers); by default the system resolver. A name that does not resolve is not refused
    here: the measurement records that failure. ``refusal`` replaces address_refusal (the
    helper's allow-list). This check only fails fast: the connection guard re-checks every
    address actually connected to.
    """
    check = refusal or address_refusal
    literal = parse_address(host)
    if literal is not None:
        reason = check(str(literal))
        return f"{literal} is {reason}" if reason else None
    reason = host_form_refusal(host)
    if reason:
        return reason
    name = normalise_host(host)
    try:
        if resolve is not None:
            addresses = await asyncio.wait_for(resolve(name), timeout)
        else:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM), timeout
            )
            addresses = [str(info[4][0]) for info in infos]
    except (TimeoutError, OSError, UnicodeError):
        return None
    for address in addresses:
        reason = check(address)
        if reason:
            return f"{host} resolves to {address}, which is {reason}"
    return None


def _ip_literal(host: str) -> str | None:
    ip = parse_address(host)
    return None if ip is None else str(ip)


def input_host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


# --------------------------------------------------------------------------- client


@dataclass
class ControlTarget:
    """One thing for the helper to measure, with what the probe saw of it."""

    input: str
    category: str | None = None
    addresses: list[str] = field(default_factory=list)  # the probe's resolved addresses
    control_for: str | None = None  # the probe measurement this control serves


def probe_addresses(m: Measurement, limit: int = 16) -> list[str]:
    """Distinct A/AAAA answers the probe got, first seen first, then those of late (possibly
    injected, possibly genuine) replies; injection checks excluded."""
    seen: list[str] = []
    queries = [q for q in m.dns if q.tag != "injection_check"]
    answer_lists = [q.answers for q in queries] + [lr.answers for q in queries for lr in q.late_responses]
    for answers in answer_lists:
        for a in answers:
            ip = _ip_literal(a.value) if a.answer_type in ("A", "AAAA") else None
            if ip is not None and ip not in seen:
                seen.append(ip)
    return seen[:limit]


def _error_from_response(url: str, status: int, reason: str, body: bytes) -> ControlError:
    code, message, details = None, reason, {}
    try:
        err = json.loads(body).get("error", {})
        code = err.get("code")
        message = str(err.get("message") or message)
        details = {k: v for k, v in err.items() if k not in ("code", "message")}
    except (ValueError, AttributeError):
        pass
    text = " ".join(f"control helper {url} answered HTTP {status} {code or ''}: {message}".split())
    return ControlError(text, status=status, code=code, details=details)


def _describe(exc: httpx.HTTPError) -> str:
    from probe.net.errors import classify  # the one place exceptions become failure strings

    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    failure = classify(exc)
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({failure})"
    return failure


async def _post_json(url: str, payload: dict[str, Any], *, timeout: float, ca_bundle: str | None) -> Any:
    limits = httpx.Timeout(timeout, connect=min(timeout, 10.0))
    # trust_env=False: the probe talks to exactly the helper it was given, through no proxy
    # it was not told about.
    async with httpx.AsyncClient(timeout=limits, verify=_verify(ca_bundle), trust_env=False) as client:
        try:
            async with client.stream("POST", url, json=payload) as resp:
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise ControlError(f"control helper {url} sent more than {MAX_RESPONSE_BYTES} bytes")
                if resp.status_code != 200:
                    raise _error_from_response(url, resp.status_code, resp.reason_phrase, bytes(body))
        except httpx.HTTPError as exc:
            raise ControlError(f"control helper {url}: {_describe(exc)}") from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ControlError(f"control helper {url} sent invalid JSON") from exc


def _verify(ca_bundle: str | None) -> ssl.SSLContext | bool:
    """System roots, plus ``ca_bundle`` when given (a lab's or a private helper's CA)."""
    if ca_bundle is None:
        return True
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ControlError(f"cannot load CA bundle {ca_bundle}: {exc}") from exc
    return context


def _endpoint(control_url: str, path: str) -> str:
    return control_url.rstrip("/") + path


async def request_control(
    control_url: str,
    experiment: str,
    targets: Sequence[ControlTarget],
    *,
    run_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    ca_bundle: str | None = None,
    scrubber: Scrubber | None = None,
) -> list[Measurement]:
    """Ask a helper to measure ``targets`` with ``experiment``; the control rows, in order.

    Every returned row is checked against the data contract and marked ``role = control``,
    linked to its probe row (``control_for``) and to the probe's run. Raises ControlError.
    """
    url = _endpoint(control_url, MEASURE_PATH)
    payload: dict[str, Any] = {
        "experiment": experiment,
        "targets": [dataclasses.asdict(t) for t in targets],
    }
    if run_id is not None:
        payload["run_id"] = run_id
    reply = await _post_json(url, payload, timeout=timeout, ca_bundle=ca_bundle)
    items = reply.get("measurements") if isinstance(reply, dict) else None
    if not isinstance(items, list) or len(items) != len(targets):
        raise ControlError(f"control helper {url} sent a reply without one measurement per target")
    out = []
    for target, item in zip(targets, items, strict=True):
        try:
            m = measurement_from_json(item)
        except ValueError as exc:
            raise ControlError(f"control helper {url} sent a bad measurement: {exc}") from exc
        if m.input != target.input or m.experiment != experiment:
            raise ControlError(f"control helper {url} measured {m.experiment} {m.input!r}, not what was asked")
        m.role = "control"
        m.control_for = target.control_for
        if run_id is not None:
            m.run_id = run_id
        if scrubber is not None:
            scrub_record(m, scrubber)
        out.append(m)
    return out


async def fetch_control(
    control_url: str,
    probe: Measurement,
    *,
    target: Target | None = None,
    settings: Settings | None = None,
    timeout: float | None = None,
    ca_bundle: str | None = None,
) -> list[Measurement]:
    """The control row(s) for one probe measurement: the helper measures the same input with
    the same experiment, and the probe's resolved addresses with the URL's SNI.

    Addresses the helper refuses (private answers from a lying resolver, say) are dropped
    and the request is sent once more: they are evidence of blocking already, and need no
    control. Raises ControlError when no control could be had.
    """
    request = ControlTarget(
        input=probe.input,
        category=target.category if target is not None else probe.input_category,
        addresses=probe_addresses(probe),
        control_for=probe.measurement_id,
    )
    if timeout is None:
        timeout = min(DEFAULT_TIMEOUT, settings.measurement_timeout + 10) if settings is not None else DEFAULT_TIMEOUT
    scrubber = settings.scrubber if settings is not None else None

    async def ask(t: ControlTarget) -> list[Measurement]:
        return await request_control(
            control_url, probe.experiment, [t], run_id=probe.run_id, timeout=timeout,
            ca_bundle=ca_bundle, scrubber=scrubber,
        )

    try:
        return await ask(request)
    except ControlError as exc:
        refused = exc.details.get("addresses") if exc.code == "forbidden_address" else None
        if not isinstance(refused, list) or not refused:
            raise
        request.addresses = [a for a in request.addresses if a not in refused]
        return await ask(request)


async def fetch_whoami(
    control_url: str, *, timeout: float = 10.0, ca_bundle: str | None = None
) -> dict[str, str | None]:
    """The caller as the helper sees it: ``public_address`` (for the probe's Scrubber, in
    memory only: never store or log it), country and network."""
    url = _endpoint(control_url, WHOAMI_PATH)
    async with httpx.AsyncClient(timeout=timeout, verify=_verify(ca_bundle), trust_env=False) as client:
        try:
            resp = await client.get(url)
        except httpx.HTTPError as exc:
            raise ControlError(f"control helper {url}: {_describe(exc)}") from exc
    if resp.status_code != 200:
        raise _error_from_response(url, resp.status_code, resp.reason_phrase, resp.content)
    try:
        data = resp.json()
    except ValueError as exc:
        raise ControlError(f"control helper {url} sent invalid JSON") from exc
    if not isinstance(data, dict):
        raise ControlError(f"control helper {url} sent an unexpected reply")
    cc = data.get("probe_cc")
    asn = data.get("probe_asn")
    network = data.get("probe_network")
    seen = data.get("public_address")
    try:
        public = str(ipaddress.ip_address(seen)) if isinstance(seen, str) else None
    except ValueError:
        public = None
    return {
        "public_address": public,
        "probe_cc": cc if isinstance(cc, str) and re.fullmatch(r"[A-Z]{2}", cc) else "ZZ",
        "probe_asn": asn if isinstance(asn, str) and re.fullmatch(r"AS\d+", asn) else None,
        "probe_network": network[:200] if isinstance(network, str) else None,
    }


def valid_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_ID_RE.fullmatch(value))
