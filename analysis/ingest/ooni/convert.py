"""One OONI measurement (a decoded JSON object) as Vantage Measurements, test by test.

web_connectivity gets a probe row and, when the test helper answered, a ``role = control``
row; tunnel tests (tor, vanilla_tor, torsf, openvpn, riseupvpn, psiphon, stunreachability)
get ``vpn`` observations; every other test keeps its generic DNS/TCP/TLS/HTTP observations.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import ipaddress
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

from analysis.ooni_fields import (
    BodyStats,
    as_asn,
    as_dict,
    as_float,
    as_int,
    as_list,
    as_text,
    connect_events,
    dns_queries,
    http_chain,
    http_headers,
    is_public_ip,
    map_failure,
    parse_time,
    split_endpoint,
    tcp_connect,
    times,
    tls_handshake,
)
from probe.schema import (
    UNKNOWN_FAILURE_PREFIX,
    DnsAnswer,
    DnsLateResponse,
    DnsQuery,
    HttpRequest,
    Measurement,
    TcpConnect,
    TlsHandshake,
    VpnHandshake,
    VpnPacket,
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


# --------------------------------------------------------------------------- tunnels


def _vpn(
    protocol: str, endpoint: str, failure: Any, *, transport: str = "tcp", ok: bool | None = None,
    t0: float = 0.0, t: float = 0.0, detail: str | None = None, packets: list[VpnPacket] | None = None,
) -> VpnHandshake:
    ip, port = split_endpoint(endpoint) if endpoint else ("", 0)
    mapped = map_failure(failure)
    return VpnHandshake(
        t0=t0, t=t, failure=mapped, protocol=protocol, endpoint=endpoint, ip=ip, port=port,
        transport=transport, handshake_ok=(mapped is None) if ok is None else ok,
        packets=packets or [], detail=detail,
    )


_TOR_PROTOCOLS = {"or_port": "tor", "or_port_dirauth": "tor", "dir_port": "tor_dirport", "obfs4": "obfs4"}


def convert_tor(tk: dict[str, Any], stats: BodyStats, scrub: tuple[str, ...]) -> Observations:
    obs = convert_generic(tk, stats, scrub)
    targets = tk.get("targets")
    items = targets.items() if isinstance(targets, dict) else enumerate(as_list(targets))
    for name, target in items:
        if not isinstance(target, dict):
            continue
        proto = _TOR_PROTOCOLS.get(str(target.get("target_protocol")), str(target.get("target_protocol") or "tor"))
        address = str(target.get("target_address") or name)
        obs.vpn.append(_vpn(proto, address, target.get("failure"), detail=target.get("target_name") or str(name)))
    return obs


def convert_tor_bootstrap(doc: dict[str, Any], tk: dict[str, Any]) -> Observations:
    """vanilla_tor / torsf: one bootstrap of a whole tor client, no single endpoint."""
    protocol = {"torsf": "snowflake"}.get(str(doc.get("test_name")), "tor")
    failure = tk.get("failure") or (tk.get("error") if tk.get("success") is False else None)
    if failure is None and tk.get("success") is False:
        failure = "unknown_failure:bootstrap_failed"
    detail = " ".join(
        f"{k}={tk[k]}" for k in ("bootstrap_time", "tor_progress", "tor_progress_summary", "transport_name", "rendezvous_method")
        if tk.get(k) is not None
    )
    t = as_float(tk.get("bootstrap_time"))
    return Observations(vpn=[_vpn(protocol, "", failure, t=t, ok=failure is None, detail=detail or None)])


def _openvpn_packets(events: Any) -> dict[Any, list[VpnPacket]]:
    by_tx: dict[Any, list[VpnPacket]] = {}
    for ev in as_list(events):
        if not isinstance(ev, dict) or not isinstance(ev.get("packet"), dict):
            continue
        pkt = ev["packet"]
        by_tx.setdefault(ev.get("transaction_id"), []).append(
            VpnPacket(
                t=as_float(ev.get("t")),
                direction="sent" if ev.get("operation") == "packet_out" else "received",
                size=as_int(pkt.get("payload_size")) or 0,
                summary=str(pkt.get("opcode") or "") or None,
            )
        )
    return by_tx


def convert_openvpn(doc: dict[str, Any], tk: dict[str, Any], stats: BodyStats, scrub: tuple[str, ...]) -> Observations:
    obs = convert_generic(tk, stats, scrub)
    handshakes = [h for h in as_list(tk.get("openvpn_handshake")) if isinstance(h, dict)]
    packets = _openvpn_packets(tk.get("network_events"))
    for h in handshakes:
        endpoint = f"{h.get('ip')}:{h.get('port')}" if h.get("ip") else str(h.get("endpoint") or "")
        t0, t = times(h)
        obs.vpn.append(
            _vpn("openvpn", endpoint, h.get("failure"), transport=str(h.get("transport") or "udp"), t0=t0, t=t,
                 packets=packets.get(h.get("transaction_id")), detail=h.get("provider"))
        )
    if not handshakes:
        # Older openvpn (2022) and openvpn_client_test (2016): one outcome for the whole run.
        endpoint = str(tk.get("remote") or "")
        failure = tk.get("failure")
        if failure is None and tk.get("success") is False:
            failure = "unknown_failure:handshake_failed"
        obs.vpn.append(
            _vpn(str(tk.get("vpn_protocol") or "openvpn"), endpoint, failure, transport=str(tk.get("transport") or "udp"),
                 t=as_float(tk.get("bootstrap_time")), detail=tk.get("provider") or tk.get("obfuscation"))
        )
    return obs


def convert_riseupvpn(tk: dict[str, Any], stats: BodyStats, scrub: tuple[str, ...]) -> Observations:
    obs = convert_generic(tk, stats, scrub)
    tcp_failures = {(c.ip, c.port): c.failure for c in obs.tcp}
    for gw in as_list(tk.get("failing_gateways")):
        if not isinstance(gw, dict):
            continue
        endpoint = f"{gw.get('IP') or gw.get('ip')}:{gw.get('Port') or gw.get('port')}"
        ip, port = split_endpoint(endpoint)
        failure = tcp_failures.get((ip, port)) or UNKNOWN_FAILURE_PREFIX + "gateway_unreachable"
        obs.vpn.append(_vpn(str(gw.get("Transport") or gw.get("transport_type") or "openvpn"), endpoint, failure))
    return obs


def convert_psiphon(tk: dict[str, Any], stats: BodyStats, scrub: tuple[str, ...]) -> Observations:
    obs = convert_generic(tk, stats, scrub)
    obs.vpn.append(_vpn("psiphon", "", tk.get("failure"), t=as_float(tk.get("bootstrap_time")),
                        detail=f"bootstrap_time={tk.get('bootstrap_time')}"))
    return obs


def convert_stun(tk: dict[str, Any], stats: BodyStats, scrub: tuple[str, ...]) -> Observations:
    obs = convert_generic(tk, stats, scrub)
    address = next((str(ev["address"]) for ev in as_list(tk.get("network_events"))
                    if isinstance(ev, dict) and ev.get("operation") == "connect" and ev.get("address")), "")
    obs.vpn.append(_vpn("stun", address or str(tk.get("endpoint") or ""), tk.get("failure"), transport="udp",
                        detail=str(tk.get("endpoint") or "") or None))
    return obs


# --------------------------------------------------------------------------- web_connectivity


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def _control_networks(control: dict[str, Any], probe_dns: list[DnsQuery]) -> dict[str, tuple[str | None, str | None]]:
    """address -> (asn, as_org_name) for the helper's addresses. The helper's answer carries
    addresses only; webconnectivity 0.5's helper adds ``ip_info`` ({addr: {asn, flags}}). The
    organisation is a property of the AS, so it is taken from the probe's own answers in the
    same AS when they name it."""
    orgs = {a.asn: a.as_org_name for q in probe_dns for a in q.answers if a.asn and a.as_org_name}
    out: dict[str, tuple[str | None, str | None]] = {}
    for addr, info in as_dict(control.get("ip_info")).items():
        asn = as_asn(as_dict(info).get("asn"))
        if asn:
            out[str(addr)] = (asn, orgs.get(asn))
    return out


def control_observations(control: dict[str, Any], url: str, probe_dns: list[DnsQuery] | None = None) -> Observations:
    """The test helper's answer (ts-017 `control`): dns, tcp_connect, tls_handshake, http_request."""
    obs = Observations()
    dns = control.get("dns")
    networks = _control_networks(control, probe_dns or [])
    if isinstance(dns, dict):
        addrs = [str(a) for a in as_list(dns.get("addrs"))]
        failure = map_failure(dns.get("failure"))
        if failure is None and not addrs:
            failure = "dns_no_answer"  # the helper reports "no addresses" as an empty success
        # The helper resolves with getaddrinfo too: one A and one AAAA record, like the probe's.
        for qtype, version in (("A", 4), ("AAAA", 6)):
            answers = [DnsAnswer(qtype, a, None, *networks.get(a, (None, None))) for a in addrs if _version(a) == version]
            f = failure or (None if answers else "dns_no_answer")
            obs.dns.append(
                DnsQuery(t0=0.0, t=0.0, failure=f, resolver="system", engine="system", query_type=qtype,
                         hostname=_host(url), answers=answers if failure is None else [], tag="ooni_test_helper")
            )
    for endpoint, st in as_dict(control.get("tcp_connect")).items():
        if not isinstance(st, dict):
            continue
        ip, port = split_endpoint(str(endpoint))
        failure = map_failure(st.get("failure"))
        if failure is None and st.get("status") is False:
            failure = UNKNOWN_FAILURE_PREFIX + "failed_without_reason"
        obs.tcp.append(TcpConnect(t0=0.0, t=0.0, failure=failure, ip=ip, port=port, tag="ooni_test_helper"))
    for endpoint, st in as_dict(control.get("tls_handshake")).items():
        if not isinstance(st, dict):
            continue
        ip, port = split_endpoint(str(endpoint))
        failure = map_failure(st.get("failure"))
        if failure is None and st.get("status") is False:
            failure = "tls_handshake_failure"
        obs.tls.append(
            TlsHandshake(t0=0.0, t=0.0, failure=failure, ip=ip, port=port, sni=st.get("server_name") or _host(url),
                         cert_valid=failure is None, tag="ooni_test_helper")
        )
    http = control.get("http_request")
    if isinstance(http, dict):
        code = as_int(http.get("status_code"))
        length = as_int(http.get("body_length"))
        obs.http.append(
            HttpRequest(t0=0.0, t=0.0, failure=map_failure(http.get("failure")), url=url,
                        status_code=code if code and code > 0 else None, headers=http_headers(http),
                        body_length=length if length is not None and length >= 0 else None,
                        title=as_text(http.get("title")), tag="ooni_test_helper")
        )
    return obs


_REDIRECTS = (301, 302, 303, 307, 308)


def _depth_entries(tk: dict[str, Any], key: str, depth: int) -> list[dict[str, Any]]:
    tag = f"depth={depth}"
    return [e for e in as_list(tk.get(key)) if isinstance(e, dict) and tag in (e.get("tags") or [])]


def unrecorded_hop(tk: dict[str, Any], hops: list[HttpRequest]) -> HttpRequest | None:
    """The redirect hop OONI 0.5 leaves out of `requests`.

    webconnectivitylte records no request when the redirect target's DNS lookup, TCP connects
    or TLS handshakes (tagged depth=N+1) all fail, so the chain seems to end in a 3xx. Vantage's
    HTTP client records that hop with its failure; rebuilding it keeps imported rows comparable.
    """
    if not hops or hops[-1].failure is not None or hops[-1].status_code not in _REDIRECTS:
        return None
    last = hops[-1]
    depths = [int(t[6:]) for t in (last.tag or "").split(",") if t.startswith("depth=") and t[6:].isdigit()]
    location = next((h.value for h in last.headers if h.name.lower() == "location"), None)
    if not depths or not location:
        return None
    depth = depths[0] + 1
    failure = None
    queries = _depth_entries(tk, "queries", depth)
    if queries and not any(q.get("answers") for q in queries):
        failure = next((q.get("failure") for q in queries if q.get("failure")), None)
    if failure is None:
        for key in ("tcp_connect", "tls_handshakes"):
            steps = [e for e in _depth_entries(tk, key, depth) if "fetch_body=false" not in (e.get("tags") or [])]
            fails = [(e.get("status") or {}).get("failure") if key == "tcp_connect" else e.get("failure") for e in steps]
            if steps and all(fails):
                failure = fails[0]
                break
    if failure is None:
        return None
    try:
        url = urljoin(last.url, location)
    except ValueError:
        url = location
    return HttpRequest(t0=last.t, t=last.t, failure=map_failure(failure), url=url,
                       tag=f"depth={depth},ooni_unrecorded_hop")


def _version(address: str) -> int | None:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return None


def has_control(tk: dict[str, Any]) -> bool:
    """Whether the test helper answered. Not when ``control_failure`` says the call to it failed
    (whatever ``control`` holds then is not an answer), nor when ``control`` is null, empty or
    only the defaults a probe writes before the helper answers (no address, no failure, no
    endpoint, no HTTP status): judging the probe against that would turn "the helper did not
    answer" into "the site has no address" (OONI says null there; so must Vantage)."""
    control = tk.get("control")
    if map_failure(tk.get("control_failure")) is not None or not isinstance(control, dict):
        return False
    dns = as_dict(control.get("dns"))
    http = as_dict(control.get("http_request"))
    status = as_int(http.get("status_code"))
    return bool(
        as_list(dns.get("addrs")) or map_failure(dns.get("failure"))
        or as_dict(control.get("tcp_connect")) or as_dict(control.get("tls_handshake"))
        or (status is not None and status > 0) or map_failure(http.get("failure"))
    )


# --------------------------------------------------------------------------- entry point

_TUNNELS: dict[str, Callable[[dict[str, Any], BodyStats, tuple[str, ...]], Observations]] = {
    "tor": convert_tor,
    "riseupvpn": convert_riseupvpn,
    "psiphon": convert_psiphon,
    "stunreachability": convert_stun,
    "stun_reachability": convert_stun,
}


def _apply(record: Measurement, obs: Observations) -> Measurement:
    record.dns, record.tcp, record.tls, record.http, record.vpn = obs.dns, obs.tcp, obs.tls, obs.http, obs.vpn
    return record


def convert(doc: Any, raw: str, stats: BodyStats) -> Converted:
    """One OONI measurement as one probe row (plus a control row for web_connectivity)."""
    if not isinstance(doc, dict) or not doc.get("test_name"):
        raise NotAMeasurement("not an OONI measurement (no test_name)")
    test_name = str(doc["test_name"])
    probe = base_record(doc, origin_key(doc))
    probe_ip = doc.get("probe_ip")
    # OONI scrubs the probe's address itself; if an unscrubbed one slipped in, it never
    # reaches a Vantage file (the probe_ip field itself is never stored).
    scrub = (str(probe_ip),) if isinstance(probe_ip, str) and is_public_ip(probe_ip) else ()
    tk = doc.get("test_keys")
    if not isinstance(tk, dict):
        probe.failure = UNKNOWN_FAILURE_PREFIX + "missing_test_keys"
        return Converted([probe], test_name, missing_test_keys=True)
    if test_name == "web_connectivity":
        _apply(probe, generic(tk, stats, scrub))
        missing = unrecorded_hop(tk, probe.http)
        if missing is not None:
            probe.http.append(missing)
        if has_control(tk):
            # Same input, run and time as the probe row; nothing of the probe's network.
            control = dataclasses.replace(
                probe, measurement_id=str(uuid.uuid5(ID_NAMESPACE, probe.measurement_id + ":control")),
                role="control", control_for=probe.measurement_id, runtime_s=None, platform=None,
                software_version="ooni-test-helper", probe_asn=None, probe_network=None, resolver_asn=None,
            )
            _apply(control, control_observations(tk["control"], probe.input, probe.dns))
            return Converted([probe, control], test_name)
        return Converted([probe], test_name, null_control=True)
    if test_name in ("vanilla_tor", "torsf"):
        obs = convert_generic(tk, stats, scrub)
        _merge(obs, convert_tor_bootstrap(doc, tk))
        return Converted([_apply(probe, obs)], test_name)
    if test_name in ("openvpn", "openvpn_client_test"):
        return Converted([_apply(probe, convert_openvpn(doc, tk, stats, scrub))], test_name)
    handler = _TUNNELS.get(test_name, convert_generic)
    return Converted([_apply(probe, handler(tk, stats, scrub))], test_name)
