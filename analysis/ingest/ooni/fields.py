"""OONI data-format fields turned into Vantage observations: failures, times, DNS, TCP, TLS, HTTP.

These are the building blocks every OONI test shares (the df-00x data formats of ooni/spec);
the per-test mapping lives in analysis/ingest/ooni/convert.py. All functions are pure and tolerate
the shapes seen across OONI Probe 2.x (ooniprobe-legacy), Measurement Kit and 3.x.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import functools
import hashlib
import html
import ipaddress
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

from probe.schema import (
    FAILURES,
    UNKNOWN_FAILURE_PREFIX,
    DnsAnswer,
    DnsQuery,
    HttpHeader,
    HttpRequest,
    TcpConnect,
    TlsHandshake,
)

BODY_SAMPLE_CHARS = 4096

# OONI failure strings (netxlite, Measurement Kit, ooniprobe-legacy and the test helper's
# legacy names) onto Vantage's closed set. Anything not listed, and not recognised by the Go
# error patterns below, stays unknown_failure:<original> (docs/ooni.md says which and why).
_FAILURE_MAP = {
    # DNS
    "dns_nxdomain_error": "dns_nxdomain",
    "dns_name_error": "dns_nxdomain",  # the test helper's legacy name for NXDOMAIN
    # Android's getaddrinfo says EAI_NODATA where other systems say NXDOMAIN; OONI's own
    # analysis treats it as NXDOMAIN (ooni/probe#2029), so do we.
    "android_dns_cache_no_data": "dns_nxdomain",
    "dns_servfail_error": "dns_servfail",
    "dns_server_failure": "dns_servfail",  # test helper legacy name for any other DNS error
    "dns_name_failure": "dns_servfail",  # ooniprobe-legacy: twisted's DNSServerError (SERVFAIL)
    "dns_refused_error": "dns_refused",
    "dns_no_answer": "dns_no_answer",
    "no_answer": "dns_no_answer",  # ooniprobe-legacy dns_consistency
    "dns_server_misbehaving": "dns_server_misbehaving",
    "dns_reply_with_wrong_query_id": "dns_server_misbehaving",
    "dns_non_recoverable_failure": "dns_servfail",  # EAI_FAIL: the resolver answered "failure"
    # transport
    "generic_timeout_error": "generic_timeout",
    "deferred_timeout_error": "generic_timeout",
    "tcp_timed_out_error": "generic_timeout",
    "task_timed_out": "generic_timeout",
    "timed_out": "generic_timeout",  # ETIMEDOUT
    "connection_refused": "connection_refused",
    "connection_refused_error": "connection_refused",
    "connection_reset": "connection_reset",
    "connection_reset_error": "connection_reset",
    "connection_lost_error": "connection_reset",
    "eof_error": "eof",
    "connection_done": "eof",
    "host_unreachable": "host_unreachable",
    "host_unreachable_error": "host_unreachable",
    "network_unreachable": "network_unreachable",
    "network_unreachable_error": "network_unreachable",
    # TLS
    "ssl_invalid_hostname": "ssl_invalid_hostname",
    "ssl_unknown_authority": "ssl_unknown_authority",
    "ssl_unknown_autority": "ssl_unknown_authority",  # the misspelling in ooni/spec df-007
    "ssl_invalid_certificate": "ssl_invalid_certificate",
    "ssl_failed_handshake": "tls_handshake_failure",
    "ssl_error": "tls_handshake_failure",
    # the run: the probe cancelled its own step (netxlite maps Go's context.Canceled here)
    "interrupted": "interrupted",
}
# Raw Go (and OS) error texts, as older probes and "unknown_failure: <Go error>" carry them,
# classified the way netxlite's classifier does: first match wins, so the more specific
# causes (a cancelled step, a certificate, DNS, an errno) come before the generic ones
# (a timeout, EOF, any TLS alert).
_GO_ERRORS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.I), failure)
    for pattern, failure in (
        (r"context canceled|operation was canceled|\binterrupted\b", "interrupted"),
        (r"too many redirects|stopped after \d+ redirects", "http_too_many_redirects"),
        (r"x509: certificate signed by unknown authority|ssl_unknown_authority", "ssl_unknown_authority"),
        (r"x509: certificate is (?:valid for|not valid for any names)|ssl_invalid_hostname", "ssl_invalid_hostname"),
        (r"x509:|ssl_invalid_certificate", "ssl_invalid_certificate"),
        (r"no such host|dns_nxdomain_error|dns_name_error", "dns_nxdomain"),
        (r"server misbehaving", "dns_server_misbehaving"),
        (r"no answer from dns server|dns_no_answer", "dns_no_answer"),
        (r"connection refused|connection_refused", "connection_refused"),
        (r"connection reset by peer|connection_reset", "connection_reset"),
        (r"no route to host|host is unreachable|host_unreachable", "host_unreachable"),
        (r"network is unreachable|network_unreachable", "network_unreachable"),
        (r"i/o timeout|deadline exceeded|handshake timeout|timeout awaiting|timed out|generic_timeout_error",
         "generic_timeout"),
        (r"(?:^|[\s:])(?:unexpected )?EOF$|eof_error", "eof"),
        (r"\btls: |ssl_failed_handshake", "tls_handshake_failure"),
    )
)
_MAX_DETAIL = 512  # an unknown failure keeps this much of the original text


def map_failure(failure: Any) -> str | None:
    """An OONI failure value as a member of probe.schema.FAILURES, ``unknown_failure:<detail>``
    or None. null, false and "" mean success; true (a failure without a reason) and any other
    non-string value are unknown failures, never a crash."""
    if failure is None or failure is False:
        return None
    if failure is True:
        return UNKNOWN_FAILURE_PREFIX + "unspecified"
    text = (failure if isinstance(failure, str) else repr(failure)).strip()
    if not text:
        return None
    mapped = _FAILURE_MAP.get(text)
    if mapped:
        return mapped
    if text in FAILURES:
        return text
    for pattern, name in _GO_ERRORS:
        if pattern.search(text):
            return name
    detail = text
    if text.startswith("unknown_failure"):
        detail = text[len("unknown_failure") :].lstrip(": ").strip() or "unknown"
    return UNKNOWN_FAILURE_PREFIX + detail[:_MAX_DETAIL]


def as_asn(value: Any) -> str | None:
    """OONI's per-answer ``asn`` (an int, or "AS13335" / "13335") as "AS13335"; 0 is OONI's
    "unknown" and becomes null, as does anything that is not an AS number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        digits = value.strip().upper().removeprefix("AS")
        value = int(digits) if digits.isascii() and digits.isdigit() and len(digits) <= 10 else None
    if isinstance(value, int) and 0 < value < 2**32:
        return f"AS{value}"
    return None


def as_text(value: Any) -> str | None:
    """An optional text field: a non-empty string, else null."""
    return value.strip() or None if isinstance(value, str) else None


# --------------------------------------------------------------------------- small shapes


def as_list(value: Any) -> list[Any]:
    """OONI fields that are usually lists are sometimes null, or a single dict (openvpn)."""
    if value is None:
        return []
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    return []


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_float(value: Any, default: float = 0.0) -> float:
    if value is None:  # absent: the common case, without raising
        return default
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number if math.isfinite(number) else default  # JSON's NaN/Infinity are not times


def as_int(value: Any) -> int | None:
    if value is None:  # the common cases without raising
        return None
    if type(value) is int:
        return value
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def times(entry: dict[str, Any]) -> tuple[float, float]:
    """(t0, t): OONI 3.x has both; older formats only `t` (the end), or nothing."""
    t = as_float(entry.get("t"))
    return as_float(entry.get("t0"), t), t


def split_endpoint(address: str) -> tuple[str, int]:
    """"1.2.3.4:443" or "[::1]:443" -> (ip, port); a bare address gets port 0."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, as_int(rest.lstrip(":")) or 0
    if address.count(":") == 1:
        host, _, port = address.partition(":")
        return host, as_int(port) or 0
    return address, 0


def tags_of(entry: dict[str, Any]) -> str | None:
    tags = entry.get("tags")
    if isinstance(tags, list) and tags:
        return ",".join(str(t) for t in tags)
    return None


def parse_time(value: Any) -> dt.datetime | None:
    """OONI's "2016-10-25 13:49:24" (UTC), ISO variants, or a Unix timestamp."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        try:
            return dt.datetime.fromtimestamp(float(value), dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None
    text = str(value).strip().replace("T", " ").rstrip("Z")
    try:  # the usual "2016-10-25 13:49:24", fast
        when = dt.datetime.fromisoformat(text)
        return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
    except ValueError:
        pass
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f"):
        try:
            return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    return None


# --------------------------------------------------------------------------- DNS

_ENGINES = {
    "system": "system",
    "getaddrinfo": "system",
    "go": "system",
    "android": "system",
    "udp": "udp",
    "tcp": "tcp",
    "dot": "tcp",  # DNS over TLS rides on TCP; the original engine is kept in the tag
    "doh": "doh",
    "doh3": "doh",
}


def _rcode_for(failure: str | None) -> str | None:
    # OONI rarely stores the rcode itself; it follows from the failure string.
    return {
        None: "NOERROR",
        "dns_no_answer": "NOERROR",
        "dns_nxdomain": "NXDOMAIN",
        "dns_servfail": "SERVFAIL",
        "dns_refused": "REFUSED",
    }.get(failure)


_INIT_FIELDS: dict[type, tuple[str, ...] | None] = {}


def _init_fields(cls: type) -> tuple[str, ...] | None:
    """The names of ``cls``'s fields when all are set by ``__init__``, else None (read once per class)."""
    if cls not in _INIT_FIELDS:
        fields = dataclasses.fields(cls)
        _INIT_FIELDS[cls] = None if any(not f.init for f in fields) else tuple(f.name for f in fields)
    return _INIT_FIELDS[cls]


def replace(obj: Any, **changes: Any) -> Any:
    """dataclasses.replace for the records here, about twice as fast (it is per line, several
    times): the record's fields read once per class, no per-call checks. A class with a field
    outside __init__ goes through dataclasses.replace itself."""
    names = _init_fields(type(obj))
    if names is None:
        return dataclasses.replace(obj, **changes)
    values = {n: getattr(obj, n) for n in names}
    values.update(changes)
    return type(obj)(**values)


def dns_answers(answers: Any) -> list[DnsAnswer]:
    out = []
    for a in as_list(answers):
        if not isinstance(a, dict):
            continue
        value = a.get("ipv4") or a.get("ipv6") or a.get("hostname") or a.get("value")
        if value is None:
            continue
        out.append(DnsAnswer(answer_type=str(a.get("answer_type") or "A"), value=str(value), ttl=as_int(a.get("ttl")),
                             asn=as_asn(a.get("asn")), as_org_name=as_text(a.get("as_org_name"))))
    return out


def dns_queries(q: dict[str, Any]) -> list[DnsQuery]:
    """One OONI query as Vantage records. getaddrinfo asks for both families at once (OONI
    writes query_type "ANY"); Vantage's own system resolver stores that as an A and an AAAA
    record, each with its family's addresses, so imported rows compare like measured ones."""
    query = dns_query(q)
    if query.engine != "system" or query.query_type not in ("ANY", ""):
        return [query]
    out = []
    for qtype, version in (("A", 4), ("AAAA", 6)):
        answers = [a for a in query.answers if _ip_version(a.value) == version]
        if version == 4:  # CNAMEs and other names stay with the first record
            answers += [a for a in query.answers if _ip_version(a.value) is None]
        failure = query.failure or (None if any(_ip_version(a.value) == version for a in answers) else "dns_no_answer")
        out.append(replace(query, query_type=qtype, answers=answers if query.failure is None else [],
                                       failure=failure, rcode=None))
    return out


def _ip_version(value: str) -> int | None:
    if type(value) is str:
        return ip_version(value)
    try:
        return ipaddress.ip_address(value).version
    except ValueError:
        return None


# Parsing an address is most of the cost of a DNS answer; a day of OONI data repeats the same
# addresses (resolvers, CDNs, test helpers) over and over, so the answers are remembered.
@functools.lru_cache(maxsize=1 << 16)
def ip_version(value: str) -> int | None:
    """4, 6, or None when ``value`` is not an IP address."""
    try:
        return ipaddress.ip_address(value).version
    except ValueError:
        return None


def dns_query(q: dict[str, Any], default_resolver: str | None = None) -> DnsQuery:
    raw_engine = str(q.get("engine") or "").lower()
    engine = _ENGINES.get(raw_engine)
    address = q.get("resolver_address") or ""
    if not address and q.get("resolver_hostname"):
        port = q.get("resolver_port")
        address = f"{q['resolver_hostname']}:{port}" if port else str(q["resolver_hostname"])
    if engine is None:
        # Legacy formats name no engine: a resolver address means a direct UDP query.
        engine = "udp" if address or default_resolver else "system"
    resolver = "system" if engine == "system" else str(address or default_resolver or "unknown")
    failure = map_failure(q.get("failure"))
    t0, t = times(q)
    tag = tags_of(q)
    if raw_engine and raw_engine not in ("system", "udp", "tcp", "doh"):
        tag = f"engine={raw_engine}" + (f",{tag}" if tag else "")
    return DnsQuery(
        t0=t0,
        t=t,
        failure=failure,
        resolver=resolver,
        engine=engine,
        query_type=str(q.get("query_type") or "A"),
        hostname=str(q.get("hostname") or ""),
        rcode=None if engine == "system" else _rcode_for(failure),
        answers=dns_answers(q.get("answers")),
        tag=tag,
    )


# --------------------------------------------------------------------------- TCP / TLS


def tcp_connect(entry: dict[str, Any]) -> TcpConnect | None:
    ip = entry.get("ip")
    if ip is None:
        return None
    status = as_dict(entry.get("status"))
    failure = map_failure(status.get("failure", entry.get("failure")))
    if failure is None and status.get("success") is False:
        failure = UNKNOWN_FAILURE_PREFIX + "failed_without_reason"
    t0, t = times(entry)
    return TcpConnect(t0=t0, t=t, failure=failure, ip=str(ip), port=as_int(entry.get("port")) or 0, tag=tags_of(entry))


def connect_events(events: Any) -> Iterator[TcpConnect]:
    """TCP connects recorded only as network events (tests without a tcp_connect list)."""
    for ev in as_list(events):
        if not isinstance(ev, dict) or ev.get("operation") != "connect":
            continue
        if not str(ev.get("proto") or "tcp").startswith("tcp") or not ev.get("address"):
            continue
        ip, port = split_endpoint(str(ev["address"]))
        t = as_float(ev.get("t"))
        yield TcpConnect(t0=as_float(ev.get("t0"), t), t=t, failure=map_failure(ev.get("failure")), ip=ip, port=port, tag="network_event")


def _cert_info(certs: Any) -> tuple[str | None, list[str], str | None]:
    """sha256, names and issuer of the leaf certificate in OONI's peer_certificates."""
    leaf = next(iter(as_list(certs)), None)
    der = decode_binary(leaf.get("data") if isinstance(leaf, dict) else leaf, default_base64=True)
    if not der:
        return None, [], None
    sha = hashlib.sha256(der).hexdigest()
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_der_x509_certificate(der)
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names += [n for n in san.value.get_values_for_type(x509.DNSName) if n not in names]
        except x509.ExtensionNotFound:
            pass
        return sha, names, cert.issuer.rfc4514_string()
    except Exception:  # a certificate the library cannot parse still has a fingerprint
        return sha, [], None


def tls_handshake(entry: dict[str, Any]) -> TlsHandshake:
    ip, port = split_endpoint(str(entry.get("address") or ""))
    if not ip and entry.get("ip"):
        ip, port = str(entry["ip"]), as_int(entry.get("port")) or 0
    failure = map_failure(entry.get("failure"))
    sha, names, issuer = _cert_info(entry.get("peer_certificates"))
    if failure in ("ssl_invalid_hostname", "ssl_unknown_authority", "ssl_invalid_certificate"):
        valid: bool | None = False
    elif failure is None and not entry.get("no_tls_verify"):
        valid = True  # OONI verifies the chain and name unless told not to
    else:
        valid = None
    t0, t = times(entry)
    return TlsHandshake(
        t0=t0,
        t=t,
        failure=failure,
        ip=ip,
        port=port,
        sni=entry.get("server_name") or None,
        tls_version=entry.get("tls_version") or None,
        cipher_suite=entry.get("cipher_suite") or None,
        alpn=entry.get("negotiated_protocol") or None,
        peer_cert_sha256=sha,
        peer_cert_names=names,
        peer_cert_issuer=issuer,
        cert_valid=valid,
        tag=tags_of(entry),
    )


# --------------------------------------------------------------------------- HTTP

_TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.I | re.S)


def decode_binary(value: Any, *, default_base64: bool = False) -> bytes | None:
    """OONI MaybeBinaryValue: a plain string, or {"format": "base64", "data": ...}."""
    if value is None:
        return None
    if type(value) is str and not default_base64:  # the common case first
        return value.encode("utf-8", "surrogatepass") if value else b""
    if isinstance(value, dict):
        data = value.get("data")
        if value.get("format") == "base64" and isinstance(data, str):
            try:
                return base64.b64decode(data)
            except (binascii.Error, ValueError):
                return data.encode("utf-8", "replace")
        return None if data is None else str(data).encode("utf-8", "replace")
    if isinstance(value, str):
        if default_base64:
            try:
                return base64.b64decode(value)
            except (binascii.Error, ValueError):
                return None
        return value.encode("utf-8", "surrogatepass") if value else b""
    return None


def title_of(text: str) -> str | None:
    m = _TITLE.search(text[:65536])
    if not m:
        return None
    title = " ".join(html.unescape(m.group(1)).split())
    return title[:512] or None


def http_headers(resp: dict[str, Any]) -> list[HttpHeader]:
    """headers_list ([[name, value], ...]), or headers as dict of str / list, or legacy pairs."""
    out: list[HttpHeader] = []
    items: Iterable[Any]
    if isinstance(resp.get("headers_list"), list):
        items = resp["headers_list"]
    else:
        headers = resp.get("headers")
        items = headers.items() if isinstance(headers, dict) else headers if isinstance(headers, list) else []
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            continue  # legacy reports contain empty pairs
        name, value = item
        values = value if isinstance(value, list) else [value]
        name = str(name)
        for v in values:
            if type(v) is str and v.isascii():  # what the round trip below gives, faster
                out.append(HttpHeader(name=name, value=v))
                continue
            text = decode_binary(v)
            out.append(HttpHeader(name=name, value=(text or b"").decode("utf-8", "replace")))
    return out


class BodyStats:
    """Counters the HTTP mapping updates (base64 bodies, bodies that needed replacement)."""

    __slots__ = ("base64_bodies", "odd_encodings")

    def __init__(self) -> None:
        self.base64_bodies = 0
        self.odd_encodings = 0


def http_request(
    entry: dict[str, Any], stats: BodyStats | None = None, scrub: tuple[str, ...] = ()
) -> HttpRequest:
    req = as_dict(entry.get("request"))
    resp = as_dict(entry.get("response"))
    raw_body = resp.get("body")
    body = decode_binary(raw_body)
    if not body and entry.get("failure"):
        body = None  # OONI writes "" for a response that never came: no body, not an empty one
    if stats is not None and isinstance(raw_body, dict) and raw_body.get("format") == "base64":
        stats.base64_bodies += 1
    text = None
    if body is not None:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = body.decode("utf-8", "replace")
            if stats is not None:
                stats.odd_encodings += 1
    body_length = as_int(resp.get("body_length"))
    if body is not None and (body_length is None or body_length < 0):
        body_length = len(body)
    if text is not None:
        for secret in scrub:
            text = text.replace(secret, "[scrubbed]")
    headers = http_headers(resp)
    if scrub:
        headers = [HttpHeader(h.name, _scrub(h.value, scrub)) for h in headers]
    ip = None
    if entry.get("address"):
        ip = split_endpoint(str(entry["address"]))[0] or None
    code = as_int(resp.get("code"))
    t0, t = times(entry)
    return HttpRequest(
        t0=t0,
        t=t,
        failure=map_failure(entry.get("failure")),
        url=str(req.get("url") or ""),
        method=str(req.get("method") or "GET"),
        ip=ip,
        status_code=code if code and code > 0 else None,
        http_version=None,
        headers=headers,
        body_length=body_length,
        body_truncated=bool(resp.get("body_is_truncated")),
        body_sha256=hashlib.sha256(body).hexdigest() if body is not None else None,
        body_sample=text[:BODY_SAMPLE_CHARS] if text is not None else None,
        title=title_of(text) if text else None,
        tag=tags_of(entry),
    )


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        text = text.replace(s, "[scrubbed]")
    return text


def _depth(entry: dict[str, Any]) -> int | None:
    for tag in entry.get("tags") or []:
        if isinstance(tag, str) and tag.startswith("depth="):
            return as_int(tag[6:])
    return None


def http_chain(
    requests: Any, stats: BodyStats | None = None, scrub: tuple[str, ...] = ()
) -> list[HttpRequest]:
    """OONI lists a redirect chain last hop first; Vantage stores hops in order."""
    entries = [e for e in as_list(requests) if isinstance(e, dict)]
    depths = [_depth(e) for e in entries]
    if entries and all(d is not None for d in depths):
        order = sorted(range(len(entries)), key=lambda i: (depths[i], -i))
        entries = [entries[i] for i in order]
    else:
        entries = entries[::-1]
    return [http_request(e, stats, scrub) for e in entries]


def is_public_ip(value: str) -> bool:
    if type(value) is str:
        return _is_public(value)
    try:
        return ipaddress.ip_address(value).is_global
    except ValueError:
        return False


@functools.lru_cache(maxsize=1 << 12)
def _is_public(value: str) -> bool:
    try:
        return ipaddress.ip_address(value).is_global
    except ValueError:
        return False
