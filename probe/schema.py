"""The data contract: measurement records, the closed set of failure strings, the Arrow schema.

Both halves read this module (the probe writes it, the analyzer queries it); it imports
nothing else of the project. A record never has a field for the probe's own IP address.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

SCHEMA_VERSION = 1

ROLES = ("probe", "control")
DNS_ENGINES = ("system", "udp", "tcp", "doh")

# The closed set of failure strings. Anything else is "unknown_failure:<detail>".
FAILURES = frozenset(
    {
        # DNS
        "dns_nxdomain",
        "dns_servfail",
        "dns_refused",
        "dns_no_answer",  # NOERROR with no address of the asked type
        "dns_server_misbehaving",  # garbage, truncated or mismatched reply
        # transport
        "generic_timeout",
        "connection_refused",
        "connection_reset",
        "eof",
        "host_unreachable",
        "network_unreachable",
        # TLS
        "tls_handshake_failure",
        "ssl_invalid_hostname",
        "ssl_unknown_authority",
        "ssl_invalid_certificate",  # expired, not yet valid, malformed
        # HTTP
        "http_invalid_response",
        "http_too_many_redirects",
        # tunnels (vpn / circumvention)
        "vpn_handshake_failure",  # an answer came back, but not a valid handshake reply
        # -- quic: the server answered with a Version Negotiation packet listing no version the
        # probe speaks (RFC 9000 6.2); nothing else says this (no alert, no reset, no timeout).
        "quic_version_negotiation_failure",
        # the run itself
        "interrupted",  # run budget exhausted or Ctrl-C while this step was running
    }
)
UNKNOWN_FAILURE_PREFIX = "unknown_failure:"


def is_valid_failure(failure: str | None) -> bool:
    """True for None (success), a member of FAILURES, or ``unknown_failure:<detail>``."""
    if failure is None:
        return True
    return failure in FAILURES or (
        failure.startswith(UNKNOWN_FAILURE_PREFIX) and len(failure) > len(UNKNOWN_FAILURE_PREFIX)
    )


# --------------------------------------------------------------------------- records
# Every observation carries t0 and t (seconds since the measurement started), a failure
# string (None on success) and an optional tag naming why the step was taken (for example
# "injection_check" for a DNS query sent where no resolver runs).


@dataclass(slots=True)
class DnsAnswer:
    answer_type: str  # "A", "AAAA", "CNAME", ...
    value: str
    ttl: int | None = None
    # The network an address answer belongs to, when the measuring side knew it (OONI's
    # per-answer ``asn``/``as_org_name``, or an IP-to-ASN database): "AS13335", "Cloudflare, Inc."
    asn: str | None = None
    as_org_name: str | None = None


@dataclass(slots=True)
class DnsLateResponse:
    """A further reply to the same query that arrived after the first (a sign of injection)."""

    t: float
    rcode: str | None = None
    answers: list[DnsAnswer] = field(default_factory=list)


@dataclass(slots=True)
class DnsQuery:
    t0: float
    t: float
    failure: str | None
    resolver: str  # "system", "IP:PORT", or a DoH URL
    engine: str  # one of DNS_ENGINES
    query_type: str
    hostname: str
    rcode: str | None = None  # "NOERROR", "NXDOMAIN", ...
    answers: list[DnsAnswer] = field(default_factory=list)
    late_responses: list[DnsLateResponse] = field(default_factory=list)
    tag: str | None = None


@dataclass(slots=True)
class TcpConnect:
    t0: float
    t: float
    failure: str | None
    ip: str
    port: int
    tag: str | None = None


@dataclass(slots=True)
class TlsHandshake:
    t0: float
    t: float
    failure: str | None
    ip: str
    port: int
    sni: str | None
    tls_version: str | None = None
    cipher_suite: str | None = None
    alpn: str | None = None
    peer_cert_sha256: str | None = None  # hex of the leaf certificate's DER
    peer_cert_names: list[str] = field(default_factory=list)  # subject CN and SANs
    peer_cert_issuer: str | None = None
    cert_valid: bool | None = None  # chain and name validate for the SNI
    tag: str | None = None


@dataclass(slots=True)
class HttpHeader:
    name: str
    value: str


@dataclass(slots=True)
class HttpRequest:
    """One request/response hop; a redirect chain is several hops in order."""

    t0: float
    t: float
    failure: str | None
    url: str
    method: str = "GET"
    ip: str | None = None  # server address the hop connected to, if known
    status_code: int | None = None
    http_version: str | None = None
    headers: list[HttpHeader] = field(default_factory=list)  # selected response headers
    body_length: int | None = None  # bytes read (capped reads say so in body_truncated)
    body_truncated: bool = False
    body_sha256: str | None = None
    body_sample: str | None = None  # capped, decoded with replacement, probe IP scrubbed
    title: str | None = None
    tag: str | None = None


@dataclass(slots=True)
class VpnPacket:
    t: float
    direction: str  # "sent" | "received"
    size: int
    summary: str | None = None  # e.g. "P_CONTROL_HARD_RESET_SERVER_V2 session=..."


@dataclass(slots=True)
class VpnHandshake:
    """A tunnel or circumvention handshake (openvpn, wireguard, tor, obfs4, ikev2, ...)."""

    t0: float
    t: float
    failure: str | None
    protocol: str
    endpoint: str
    ip: str
    port: int
    transport: str  # "udp" | "tcp"
    handshake_ok: bool = False
    packets: list[VpnPacket] = field(default_factory=list)
    detail: str | None = None
    tag: str | None = None


# -- quic (HTTP/3 over QUIC, issue 20)
@dataclass(slots=True)
class QuicHandshake:
    """A QUIC handshake (TLS 1.3 inside QUIC, ALPN h3) to one address with the URL's SNI. The
    HTTP/3 GET that follows is an ``HttpRequest`` with http_version "HTTP/3" and tag "http3"."""

    t0: float
    t: float
    failure: str | None
    ip: str
    port: int
    sni: str | None
    alpn: str | None = None  # what the server selected ("h3")
    quic_version: str | None = None  # "1" (RFC 9000), "2" (RFC 9369), else hex
    tls_version: str | None = None
    cipher_suite: str | None = None
    peer_cert_sha256: str | None = None
    peer_cert_names: list[str] = field(default_factory=list)
    peer_cert_issuer: str | None = None
    cert_valid: bool | None = None
    tag: str | None = None


# -- path trace (where the censor sits: the offending packet replayed with increasing IP TTL)
# What came back for one TTL: ICMP from a router, an answer to the replayed packet, or nothing.
HOP_KINDS = ("time_exceeded", "unreachable", "no_response", "connect_failed",
             "rst", "fin", "tls", "http", "data", "dns_answer")
# Kinds that answer the replayed packet itself (from the target, or injected on the path).
HOP_ANSWER_KINDS = ("rst", "fin", "tls", "http", "data", "dns_answer")
# Rows of these experiments are follow-ups about a target already found blocked, not
# reachability measurements: verdicts, signals and report counts leave them out.
FOLLOW_UP_EXPERIMENTS = ("path_trace",)


@dataclass(slots=True)
class PathHop:
    ttl: int
    responder: str | None  # who sent ICMP time-exceeded/unreachable for this TTL; None: none, or withheld
    kind: str  # one of HOP_KINDS (an answer wins over the ICMP of the same TTL; responder keeps the ICMP)
    detail: str | None = None  # e.g. "HTTP/1.1 302 Found location=...", "NOERROR A 10.0.0.1", "rcode=0"
    answer_ttl: int | None = None  # the IP TTL the answer arrived with (fixed-TTL injectors show here)


@dataclass(slots=True)
class PathTrace:
    """One TTL-limited replay of an offending packet (DNS query, TLS ClientHello, HTTP request)."""

    t0: float
    t: float
    failure: str | None  # the trace could not run (target down: connection_refused, ...)
    protocol: str  # "dns" | "tls" | "http"
    ip: str  # the target (or the resolver, for dns)
    port: int
    hostname: str | None  # the query name, SNI or Host replayed
    hops: list[PathHop] = field(default_factory=list)
    control_hostname: str | None = None  # the benign name of the control replay, when one ran
    control_hops: list[PathHop] = field(default_factory=list)
    target_ttl: int | None = None  # the TTL at which the target answered the control replay
    interference_ttl: int | None = None  # the first TTL whose answer came from the path, not the target
    interference: str | None = None  # the kind of that answer (rst, http, dns_answer, ...; "drop")
    hop_before: str | None = None  # responder of interference_ttl - 1 (the last router before the censor)
    basis: str | None = None  # why: "icmp" | "before_target" | "differs_at_target" | "dropped" | None
    tag: str | None = None


# -- throughput (throttling detection)
STOPPED_BY = ("complete", "bytes", "time", "failure")


@dataclass(slots=True)
class Download:
    """A bounded download (capped bytes and capped time) of a target or of a resource it names.

    ``ttfb``: seconds from ``t0`` to the final response's headers (connect, TLS and redirect
    hops included); ``duration``: seconds of body transfer after that, so ``bytes / duration``
    is the throughput. ``stopped_by``: why reading stopped (one of STOPPED_BY).
    """

    t0: float
    t: float
    failure: str | None
    url: str
    ip: str | None = None
    status_code: int | None = None
    bytes: int = 0  # body bytes read off the wire (no content decoding)
    byte_cap: int = 0
    time_cap: float = 0.0
    ttfb: float | None = None
    duration: float | None = None
    stopped_by: str = "failure"
    tag: str | None = None


@dataclass(slots=True)
class Measurement:
    """One target measured once by one experiment, from one vantage point."""

    measurement_id: str
    run_id: str
    experiment: str
    experiment_version: str
    input: str
    measurement_start_time: dt.datetime  # timezone-aware UTC
    role: str = "probe"  # one of ROLES
    input_category: str | None = None
    probe_cc: str = "ZZ"
    probe_asn: str | None = None  # "AS1234"
    probe_network: str | None = None
    resolver_asn: str | None = None
    platform: str | None = None
    software_version: str | None = None
    runtime_s: float | None = None
    failure: str | None = None  # set only when the measurement could not run at all
    control_for: str | None = None  # on control rows: the probe measurement_id they serve
    origin: str = "vantage"  # "vantage" | "ooni" (imported)
    origin_uid: str | None = None  # e.g. OONI's measurement_uid
    dns: list[DnsQuery] = field(default_factory=list)
    tcp: list[TcpConnect] = field(default_factory=list)
    tls: list[TlsHandshake] = field(default_factory=list)
    http: list[HttpRequest] = field(default_factory=list)
    vpn: list[VpnHandshake] = field(default_factory=list)
    # -- quic
    quic: list[QuicHandshake] = field(default_factory=list)
    # -- path trace
    traces: list[PathTrace] = field(default_factory=list)
    # -- throughput
    downloads: list[Download] = field(default_factory=list)

    @property
    def date(self) -> str:
        return self.measurement_start_time.astimezone(dt.UTC).strftime("%Y-%m-%d")

    def to_row(self) -> dict[str, Any]:
        return _plain(self)  # type: ignore[no-any-return]


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _plain(value: Any) -> Any:
    """Records to dicts and lists, sharing the leaf values (dataclasses.asdict deep-copies
    every one of them, which made it most of the cost of writing a batch)."""
    cls = type(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    names = _FIELD_NAMES.get(cls)
    if names is None:
        if not dataclasses.is_dataclass(value):
            return value
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return {n: _plain(getattr(value, n)) for n in names}


# --------------------------------------------------------------------------- ids


def new_uuid7(now: float | None = None) -> str:
    """A UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then randomness. Sorts by time."""
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(secrets.token_bytes(10), "big")
    value = (ms << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


def new_run_id(now: dt.datetime | None = None) -> str:
    """A run id that sorts by start time and is safe in file names: 20261122T101500Z-1a2b3c4d."""
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + os.urandom(4).hex()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------- Arrow schema

_F = pa.field
_OBS = [_F("t0", pa.float64()), _F("t", pa.float64()), _F("failure", pa.string())]

DNS_ANSWER_TYPE = pa.struct(
    [_F("answer_type", pa.string()), _F("value", pa.string()), _F("ttl", pa.int64()),
     _F("asn", pa.string()), _F("as_org_name", pa.string())]
)
DNS_QUERY_TYPE = pa.struct(
    _OBS
    + [
        _F("resolver", pa.string()),
        _F("engine", pa.string()),
        _F("query_type", pa.string()),
        _F("hostname", pa.string()),
        _F("rcode", pa.string()),
        _F("answers", pa.list_(DNS_ANSWER_TYPE)),
        _F(
            "late_responses",
            pa.list_(
                pa.struct(
                    [
                        _F("t", pa.float64()),
                        _F("rcode", pa.string()),
                        _F("answers", pa.list_(DNS_ANSWER_TYPE)),
                    ]
                )
            ),
        ),
        _F("tag", pa.string()),
    ]
)
TCP_CONNECT_TYPE = pa.struct(
    _OBS + [_F("ip", pa.string()), _F("port", pa.int32()), _F("tag", pa.string())]
)
TLS_HANDSHAKE_TYPE = pa.struct(
    _OBS
    + [
        _F("ip", pa.string()),
        _F("port", pa.int32()),
        _F("sni", pa.string()),
        _F("tls_version", pa.string()),
        _F("cipher_suite", pa.string()),
        _F("alpn", pa.string()),
        _F("peer_cert_sha256", pa.string()),
        _F("peer_cert_names", pa.list_(pa.string())),
        _F("peer_cert_issuer", pa.string()),
        _F("cert_valid", pa.bool_()),
        _F("tag", pa.string()),
    ]
)
HTTP_REQUEST_TYPE = pa.struct(
    _OBS
    + [
        _F("url", pa.string()),
        _F("method", pa.string()),
        _F("ip", pa.string()),
        _F("status_code", pa.int32()),
        _F("http_version", pa.string()),
        _F("headers", pa.list_(pa.struct([_F("name", pa.string()), _F("value", pa.string())]))),
        _F("body_length", pa.int64()),
        _F("body_truncated", pa.bool_()),
        _F("body_sha256", pa.string()),
        _F("body_sample", pa.string()),
        _F("title", pa.string()),
        _F("tag", pa.string()),
    ]
)
VPN_HANDSHAKE_TYPE = pa.struct(
    _OBS
    + [
        _F("protocol", pa.string()),
        _F("endpoint", pa.string()),
        _F("ip", pa.string()),
        _F("port", pa.int32()),
        _F("transport", pa.string()),
        _F("handshake_ok", pa.bool_()),
        _F(
            "packets",
            pa.list_(
                pa.struct(
                    [
                        _F("t", pa.float64()),
                        _F("direction", pa.string()),
                        _F("size", pa.int64()),
                        _F("summary", pa.string()),
                    ]
                )
            ),
        ),
        _F("detail", pa.string()),
        _F("tag", pa.string()),
    ]
)

# -- quic
QUIC_HANDSHAKE_TYPE = pa.struct(
    _OBS
    + [
        _F("ip", pa.string()),
        _F("port", pa.int32()),
        _F("sni", pa.string()),
        _F("alpn", pa.string()),
        _F("quic_version", pa.string()),
        _F("tls_version", pa.string()),
        _F("cipher_suite", pa.string()),
        _F("peer_cert_sha256", pa.string()),
        _F("peer_cert_names", pa.list_(pa.string())),
        _F("peer_cert_issuer", pa.string()),
        _F("cert_valid", pa.bool_()),
        _F("tag", pa.string()),
    ]
)

# -- path trace
PATH_HOP_TYPE = pa.struct(
    [_F("ttl", pa.int32()), _F("responder", pa.string()), _F("kind", pa.string()), _F("detail", pa.string()),
     _F("answer_ttl", pa.int32())]
)
PATH_TRACE_TYPE = pa.struct(
    _OBS
    + [
        _F("protocol", pa.string()),
        _F("ip", pa.string()),
        _F("port", pa.int32()),
        _F("hostname", pa.string()),
        _F("hops", pa.list_(PATH_HOP_TYPE)),
        _F("control_hostname", pa.string()),
        _F("control_hops", pa.list_(PATH_HOP_TYPE)),
        _F("target_ttl", pa.int32()),
        _F("interference_ttl", pa.int32()),
        _F("interference", pa.string()),
        _F("hop_before", pa.string()),
        _F("basis", pa.string()),
        _F("tag", pa.string()),
    ]
)

# -- throughput
DOWNLOAD_TYPE = pa.struct(
    _OBS
    + [
        _F("url", pa.string()),
        _F("ip", pa.string()),
        _F("status_code", pa.int32()),
        _F("bytes", pa.int64()),
        _F("byte_cap", pa.int64()),
        _F("time_cap", pa.float64()),
        _F("ttfb", pa.float64()),
        _F("duration", pa.float64()),
        _F("stopped_by", pa.string()),
        _F("tag", pa.string()),
    ]
)

# Columns stored inside each Parquet file. `date` and `probe_cc` are hive partition keys:
# they live in the directory names (date=YYYY-MM-DD/probe_cc=XX/), not in the files.
PARTITION_KEYS = ("date", "probe_cc")

MEASUREMENT_SCHEMA = pa.schema(
    [
        _F("measurement_id", pa.string(), nullable=False),
        _F("run_id", pa.string(), nullable=False),
        _F("experiment", pa.string(), nullable=False),
        _F("experiment_version", pa.string(), nullable=False),
        _F("input", pa.string(), nullable=False),
        _F("input_category", pa.string()),
        _F("role", pa.string(), nullable=False),
        _F("probe_asn", pa.string()),
        _F("probe_network", pa.string()),
        _F("resolver_asn", pa.string()),
        _F("platform", pa.string()),
        _F("software_version", pa.string()),
        _F("measurement_start_time", pa.timestamp("us", tz="UTC"), nullable=False),
        _F("runtime_s", pa.float64()),
        _F("failure", pa.string()),
        _F("control_for", pa.string()),
        _F("origin", pa.string(), nullable=False),
        _F("origin_uid", pa.string()),
        _F("dns", pa.list_(DNS_QUERY_TYPE)),
        _F("tcp", pa.list_(TCP_CONNECT_TYPE)),
        _F("tls", pa.list_(TLS_HANDSHAKE_TYPE)),
        _F("http", pa.list_(HTTP_REQUEST_TYPE)),
        _F("vpn", pa.list_(VPN_HANDSHAKE_TYPE)),
        # -- quic
        _F("quic", pa.list_(QUIC_HANDSHAKE_TYPE)),
        _F("traces", pa.list_(PATH_TRACE_TYPE)),  # -- path trace
        _F("downloads", pa.list_(DOWNLOAD_TYPE)),  # -- throughput
    ],
    metadata={b"vantage.schema_version": str(SCHEMA_VERSION).encode()},
)

# The observation lists of a record (dns, tcp, tls, http, vpn and those added since), in schema
# order: every place that walks a record's steps takes them from here.
OBSERVATION_COLUMNS = tuple(f.name for f in MEASUREMENT_SCHEMA
                            if pa.types.is_list(f.type) and pa.types.is_struct(f.type.value_type))

# Columns added after schema version 1 was first written: files written before them lack
# them, and readers fill them with NULL (probe.dataset accepts such files; analysis.db adds
# the column to the view when no file has it).
OPTIONAL_COLUMNS = frozenset({"quic", "traces", "downloads"})

# The full logical schema, partition keys included, as a reader sees it.

FULL_SCHEMA = MEASUREMENT_SCHEMA.append(_F("date", pa.string())).append(_F("probe_cc", pa.string()))


def validate(record: Measurement) -> None:
    """Raise ValueError if a record breaks the contract (role, failure strings, timezone)."""
    if record.role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {record.role!r}")
    if record.measurement_start_time.tzinfo is None:
        raise ValueError("measurement_start_time must be timezone-aware (UTC)")
    if not (len(record.probe_cc) == 2 and record.probe_cc.isalpha() and record.probe_cc.isupper()):
        raise ValueError(f"probe_cc must be two upper-case letters, got {record.probe_cc!r}")
    failures = [record.failure]
    for name in OBSERVATION_COLUMNS:
        failures.extend(o.failure for o in getattr(record, name))
    for dq in record.dns:
        if dq.engine not in DNS_ENGINES:
            raise ValueError(f"dns engine must be one of {DNS_ENGINES}, got {dq.engine!r}")
    for f in failures:
        if not is_valid_failure(f):
            raise ValueError(f"failure string {f!r} is not in the closed set")


def records_to_table(records: Iterable[Measurement]) -> pa.Table:
    """Arrow table of the in-file columns (partition keys dropped)."""
    rows = []
    for r in records:
        row = r.to_row()
        row.pop("probe_cc")
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=MEASUREMENT_SCHEMA)


_R = TypeVar("_R")


def _build(cls: type[_R], data: Mapping[str, Any]) -> _R:
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})  # type: ignore[arg-type]


def row_to_record(row: Mapping[str, Any]) -> Measurement:
    """Rebuild a Measurement from a row as read back from Parquet or DuckDB."""
    data = dict(row)

    def answers(items: list[Mapping[str, Any]] | None) -> list[DnsAnswer]:
        return [_build(DnsAnswer, a) for a in items or []]

    dns = []
    for q in data.get("dns") or []:
        q = dict(q)
        q["answers"] = answers(q.get("answers"))
        q["late_responses"] = [
            DnsLateResponse(t=lr["t"], rcode=lr.get("rcode"), answers=answers(lr.get("answers")))
            for lr in q.get("late_responses") or []
        ]
        dns.append(_build(DnsQuery, q))
    http = []
    for h in data.get("http") or []:
        h = dict(h)
        h["headers"] = [_build(HttpHeader, x) for x in h.get("headers") or []]
        http.append(_build(HttpRequest, h))
    vpn = []
    for v in data.get("vpn") or []:
        v = dict(v)
        v["packets"] = [_build(VpnPacket, p) for p in v.get("packets") or []]
        vpn.append(_build(VpnHandshake, v))
    tls = []
    for t in data.get("tls") or []:
        t = dict(t)
        t["peer_cert_names"] = list(t.get("peer_cert_names") or [])
        tls.append(_build(TlsHandshake, t))
    data["dns"], data["http"], data["vpn"], data["tls"] = dns, http, vpn, tls
    # -- quic
    quic = []
    for qh in data.get("quic") or []:
        qh = dict(qh)
        qh["peer_cert_names"] = list(qh.get("peer_cert_names") or [])
        quic.append(_build(QuicHandshake, qh))
    data["quic"] = quic
    # -- path trace
    traces = []
    for tr in data.get("traces") or []:
        tr = dict(tr)
        for key in ("hops", "control_hops"):
            tr[key] = [_build(PathHop, h) for h in tr.get(key) or []]
        traces.append(_build(PathTrace, tr))
    data["traces"] = traces
    data["tcp"] = [_build(TcpConnect, c) for c in data.get("tcp") or []]
    data["downloads"] = [_build(Download, d) for d in data.get("downloads") or []]
    start = data["measurement_start_time"]
    if isinstance(start, dt.datetime) and start.tzinfo is None:
        data["measurement_start_time"] = start.replace(tzinfo=dt.UTC)
    return _build(Measurement, data)
