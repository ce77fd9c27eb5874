"""What every OONI test shares: identity (origin key, measurement id), the base record, and the
observations every netx-based test records (df-002 .. df-008). Tests without a family module of
their own (urlgetter, dnscheck, dnsping, tlsping, ...) are converted by :func:`convert_generic`
alone; the messaging tests tag its observations by app function (messaging.py)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from analysis.ingest.ooni.fields import (
    BodyStats,
    as_dict,
    as_float,
    as_list,
    connect_events,
    dns_queries,
    http_chain,
    parse_time,
    tcp_connect,
    tls_handshake,
)
from probe.schema import (
    DnsLateResponse,
    DnsQuery,
    HttpRequest,
    Measurement,
    TcpConnect,
    TlsHandshake,
    VpnHandshake,
)

# Ids are uuid5 in this namespace, so importing the same measurement twice gives the same id.
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/ooni/spec#vantage-import")
NO_REPORT_ID = "ooni-no-report-id"


class NotAMeasurement(ValueError):
    """A JSON value that is not an OONI measurement (reported like a malformed line)."""


@dataclass(slots=True)
class Converted:
    records: list[Measurement]
    test_name: str
    missing_test_keys: bool = False
    null_control: bool = False  # web_connectivity whose test helper gave no answer


@dataclass(slots=True)
class Observations:
    dns: list[DnsQuery] = field(default_factory=list)
    tcp: list[TcpConnect] = field(default_factory=list)
    tls: list[TlsHandshake] = field(default_factory=list)
    http: list[HttpRequest] = field(default_factory=list)
    vpn: list[VpnHandshake] = field(default_factory=list)


# --------------------------------------------------------------------------- identity


def origin_key(doc: dict[str, Any]) -> str:
    """The key that makes one OONI measurement one row (docs/ooni.md, "Identity"): OONI's
    ``measurement_uid``; else the legacy pipeline's per-measurement ``id``; else the sha256 of
    the measurement's canonical JSON (sorted keys, no whitespace), so the same measurement in a
    pretty-printed file and in a JSON-lines file is the same one.

    (report_id + input + start time is not unique: test decks repeat inputs within a second,
    and simulated or self-hosted data has empty report ids; two such measurements differ in
    their test keys, which the hash covers.)"""
    uid = doc.get("measurement_uid")
    if isinstance(uid, str) and uid.strip():
        return uid.strip()
    legacy = doc.get("id")
    if isinstance(legacy, str) and legacy.strip():
        return legacy.strip()
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canonical.encode("ascii")).hexdigest()


def measurement_id(doc: dict[str, Any], raw: str = "") -> str:
    """Deterministic and unique per measurement: a uuid5 of :func:`origin_key`. ``raw`` is
    unused (kept for callers that pass the line's text)."""
    return str(uuid.uuid5(ID_NAMESPACE, "uid:" + origin_key(doc)))


def _input_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # legacy tests with several inputs
        return ",".join(str(v) for v in value)
    return str(value)


def _asn(value: Any) -> str | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return f"AS{value}"
    return str(value)


def _probe_cc(value: Any) -> str:
    cc = str(value or "").upper()
    return cc if len(cc) == 2 and cc.isalpha() and cc.isascii() else "ZZ"


def _start_time(doc: dict[str, Any]) -> dt.datetime:
    tk = as_dict(doc.get("test_keys"))
    for value in (doc.get("measurement_start_time"), doc.get("test_start_time"), tk.get("start_time"), doc.get("start_time")):
        when = parse_time(value)
        if when is not None:
            return when
    raise NotAMeasurement("no measurement_start_time or test_start_time")


def base_record(doc: dict[str, Any], key: str) -> Measurement:
    software = doc.get("software_name")
    version = doc.get("software_version")
    annotations = as_dict(doc.get("annotations"))
    return Measurement(
        measurement_id=str(uuid.uuid5(ID_NAMESPACE, "uid:" + key)),
        run_id=str(doc.get("report_id") or NO_REPORT_ID),
        experiment=str(doc.get("test_name")),
        experiment_version=str(doc.get("test_version") or ""),
        input=_input_text(doc.get("input")),
        measurement_start_time=_start_time(doc),
        role="probe",
        probe_cc=_probe_cc(doc.get("probe_cc")),
        probe_asn=_asn(doc.get("probe_asn")),
        probe_network=doc.get("probe_network_name") or None,
        resolver_asn=_asn(doc.get("resolver_asn")),
        platform=annotations.get("platform") or doc.get("platform") or None,
        software_version="/".join(str(x) for x in (software, version) if x) or None,
        runtime_s=as_float(doc.get("test_runtime"), 0.0) if doc.get("test_runtime") is not None else None,
        origin="ooni",
        origin_uid=key,
    )


# --------------------------------------------------------------------------- generic


def generic(tk: dict[str, Any], stats: BodyStats, scrub: tuple[str, ...], tag: str | None = None) -> Observations:
    """The observations every netx-based OONI test records (df-002 .. df-008)."""
    obs = Observations()
    # Ping-style tests (dnsping, tlsping) hold one "query" / "tls_handshake" per ping.
    queries = as_list(tk.get("queries")) + as_list(tk.get("query"))
    obs.dns = [r for q in queries if isinstance(q, dict) for r in dns_queries(q)]
    obs.tcp = [c for c in (tcp_connect(e) for e in as_list(tk.get("tcp_connect")) if isinstance(e, dict)) if c]
    if not obs.tcp:
        obs.tcp = list(connect_events(tk.get("network_events")))
    handshakes = as_list(tk.get("tls_handshakes")) + as_list(tk.get("tls_handshake"))
    obs.tls = [tls_handshake(e) for e in handshakes if isinstance(e, dict)]
    obs.http = http_chain(tk.get("requests"), stats, scrub)
    # Replies that arrived after the first one (a sign of injection): webconnectivity 0.5's
    # x_dns_duplicate_responses, dnsping's delayed_response.
    attach_late_responses(obs.dns, as_list(tk.get("x_dns_duplicate_responses")) + as_list(tk.get("delayed_response")))
    if tag:
        observations: list[DnsQuery | TcpConnect | TlsHandshake | HttpRequest] = [*obs.dns, *obs.tcp, *obs.tls, *obs.http]
        for o in observations:
            o.tag = tag if not o.tag else f"{tag},{o.tag}"
    return obs


def attach_late_responses(queries: list[DnsQuery], late: list[Any]) -> None:
    for entry in late:
        if not isinstance(entry, dict):
            continue
        dup = dns_queries(entry)[0]
        for q in queries:
            if (q.engine, q.resolver, q.hostname, q.query_type) == (dup.engine, dup.resolver, dup.hostname, dup.query_type):
                q.late_responses.append(DnsLateResponse(t=dup.t, rcode=dup.rcode, answers=dup.answers))
                break


def _nested(tk: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """urlgetter-like sub-results: dnscheck bootstrap/lookups, tor targets, sni_blocking target,
    the *ping tests' pings."""
    out = []
    for key in ("bootstrap", "target"):
        if isinstance(tk.get(key), dict):
            out.append((key, tk[key]))
    for key in ("lookups", "targets", "pings"):
        value = tk.get(key)
        if isinstance(value, dict):
            out.extend((f"{key}:{name}", sub) for name, sub in value.items() if isinstance(sub, dict))
        elif isinstance(value, list):  # tor 0.3.1 lists its targets; pings are always a list
            out.extend((f"{key}:{i}", sub) for i, sub in enumerate(value) if isinstance(sub, dict))
    return out


def _merge(into: Observations, more: Observations) -> None:
    into.dns += more.dns
    into.tcp += more.tcp
    into.tls += more.tls
    into.http += more.http
    into.vpn += more.vpn


def convert_generic(tk: dict[str, Any], stats: BodyStats, scrub: tuple[str, ...]) -> Observations:
    obs = generic(tk, stats, scrub)
    for tag, sub in _nested(tk):
        _merge(obs, generic(sub, stats, scrub, tag=tag))
    return obs
