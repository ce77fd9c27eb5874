"""web_connectivity: the test helper's answer as a ``role = control`` row, and the redirect hop
OONI 0.5 leaves out of ``requests``."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urljoin, urlsplit

from analysis.ingest.ooni.common import Observations
from analysis.ingest.ooni.fields import (
    as_asn,
    as_dict,
    as_int,
    as_list,
    as_text,
    http_headers,
    ip_version,
    map_failure,
    split_endpoint,
)
from probe.schema import (
    UNKNOWN_FAILURE_PREFIX,
    DnsAnswer,
    DnsQuery,
    HttpRequest,
    TcpConnect,
    TlsHandshake,
)


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
        host = _host(url)
        for qtype, version in (("A", 4), ("AAAA", 6)):
            answers = [DnsAnswer(qtype, a, None, *networks.get(a, (None, None))) for a in addrs if _version(a) == version]
            f = failure or (None if answers else "dns_no_answer")
            obs.dns.append(
                DnsQuery(t0=0.0, t=0.0, failure=f, resolver="system", engine="system", query_type=qtype,
                         hostname=host, answers=answers if failure is None else [], tag="ooni_test_helper")
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
    if type(address) is str:
        return ip_version(address)
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
