"""The messaging-app tests (signal ts-029, telegram ts-020, whatsapp ts-018, facebook_messenger
ts-019): their generic observations, tagged ``<function>@<host:port>`` (DNS ``<function>@<host>``)
as Vantage's own messaging experiments tag them, so analysis/messaging.py judges both alike
(after ooni/data's transforms/nettests, which give each of these tests its own transform).

OONI records one flat list per step; which endpoint a step belongs to is rebuilt here: an HTTP
request by its URL (old telegram records have none: the Host header), a TLS handshake by its SNI,
a TCP connect by the host whose DNS answer (or TLS handshake) had that address. An address shared
by hosts of different functions (WhatsApp's registration and web servers) leaves its connects
untagged: the function's HTTP and TLS steps decide it. The input (null in OONI) becomes the app's
name, as the probe writes it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from analysis.ingest.ooni.common import Observations, convert_generic
from analysis.ingest.ooni.fields import BodyStats, as_dict, as_list

TEST_NAMES = ("signal", "telegram", "whatsapp", "facebook_messenger")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _telegram(host: str) -> str | None:
    return "web" if host == "web.telegram.org" else ("messaging" if _is_ip(host) else None)


def _whatsapp(host: str) -> str | None:
    if host == "v.whatsapp.net":
        return "registration"
    if host == "web.whatsapp.com":
        return "web"
    return "messaging" if host.endswith(".whatsapp.net") else None


def _signal(host: str) -> str | None:
    # uptime.signal.org is OONI's lookup of a name that resolves to 127.0.0.1; its result is
    # ignored by the test ("Ignore the result of the uptime DNS lookup"), so it is no endpoint.
    return None if host == "uptime.signal.org" else "messaging"


def _facebook(host: str) -> str | None:
    return "messaging"


FUNCTION_OF: dict[str, Callable[[str], str | None]] = {
    "telegram": _telegram, "whatsapp": _whatsapp, "signal": _signal, "facebook_messenger": _facebook,
}  # fmt: skip


def _label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _request_url(entry: dict[str, Any]) -> str:
    """The request's URL; old telegram records have only a Host header (cleartext HTTP)."""
    req = as_dict(entry.get("request"))
    url = str(req.get("url") or "")
    if url:
        return url
    headers = as_dict(req.get("headers"))
    host = headers.get("Host") or headers.get("host")
    return f"http://{host}/" if isinstance(host, str) and host else ""


def convert_messaging(doc: dict[str, Any], tk: dict[str, Any], stats: BodyStats,
                      scrub: tuple[str, ...]) -> Observations:
    app = str(doc.get("test_name"))
    function_of = FUNCTION_OF[app]
    obs = convert_generic(tk, stats, scrub)

    # Which host an address belongs to: DNS answers in the order the test asked, then TLS SNIs.
    owners: dict[str, list[str]] = {}
    for q in obs.dns:
        for a in q.answers:
            if a.answer_type in ("A", "AAAA"):
                hosts = owners.setdefault(a.value, [])
                if q.hostname not in hosts:
                    hosts.append(q.hostname)
    for x in obs.tls:
        if x.ip and x.sni:
            hosts = owners.setdefault(x.ip, [])
            if x.sni not in hosts:
                hosts.append(x.sni)

    def host_for(ip: str) -> str | None:
        hosts = [h for h in owners.get(ip, []) if function_of(h) is not None]
        if not hosts:
            return ip if function_of(ip) is not None else None
        if len({function_of(h) for h in hosts}) > 1:
            return None  # shared by two functions: the HTTP/TLS steps decide (see above)
        return hosts[0]

    for q in obs.dns:
        function = function_of(q.hostname)
        q.tag = f"{function}@{q.hostname}" if function else None
    for c in obs.tcp:
        host = host_for(c.ip)
        function = function_of(host) if host else None
        c.tag = f"{function}@{_label(host, c.port)}" if function and host else None
    for x in obs.tls:
        host = x.sni or host_for(x.ip)
        function = function_of(host) if host else None
        x.tag = f"{function}@{_label(host, x.port or 443)}" if function and host else None
    # http_chain stored the requests in reverse (OONI lists them last first); so are the URLs.
    urls = [_request_url(e) for e in as_list(tk.get("requests")) if isinstance(e, dict)][::-1]
    for h, url in zip(obs.http, urls, strict=False):
        if not h.url:
            h.url = url
        try:
            parts = urlsplit(h.url)
            host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            host, port = None, 0
        function = function_of(host) if host else None
        h.tag = f"{function}@{_label(host, port)}" if function and host else None
    return obs
