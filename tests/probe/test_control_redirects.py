"""The control helper never reads its own network: not by redirect, not by DNS rebinding, not by
a textual form of an address, not through the probe's addresses. All on loopback.

The helper under test has a strict policy: only the test's "public" site, 127.0.0.2, is allowed
(``allow_nets``); the "internal" site on 127.0.0.1 (and ::1) serves a secret marker in its
title, body and headers, and counts the requests it gets. Nothing of it may reach the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.message
import dns.rdatatype
import httpcore
import httpx
import pytest

from probe import control, control_server
from probe.control_server import ControlServer, ServerConfig
from probe.experiments.base import Settings, Timeouts
from tests.support.loopback_site import LoopbackServer, Reply, Request
from vantage.lab.dns_server import DnsServer, LabZone
from vantage.lab.lab import bind_same_port

SECRET = "S3CRET-internal-7f3a"
INTERNAL_PAGE = f"<html><head><title>{SECRET}</title></head><body>{SECRET} metadata</body></html>".encode()
PUBLIC_PAGE = b"<html><head><title>public page</title></head><body>hello</body></html>"
REFUSED = "unknown_failure:address_refused"


@dataclass
class Site:
    host: str
    port: int
    hits: list[str] = field(default_factory=list)

    def url(self, path: str = "/") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"


INTERNAL_HEADERS = (("Content-Type", "text/html"), ("Server", SECRET), ("Set-Cookie", f"{SECRET}=1"))


def _public(request: Request) -> Reply:
    """``/?to=URL`` redirects there (302); any other path is a plain public page."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
    if "to" in query:
        return Reply(302, b"", [("Location", query["to"][0])])
    return Reply(200, PUBLIC_PAGE, [("Content-Type", "text/html")])


@pytest.fixture(scope="module")
def sites() -> Iterator[dict[str, Site]]:
    with contextlib.ExitStack() as stack:
        out: dict[str, Site] = {}
        for name, host in (("internal", "127.0.0.1"), ("internal6", "::1")):
            try:
                server = stack.enter_context(LoopbackServer(page=INTERNAL_PAGE, headers=INTERNAL_HEADERS, host=host))
            except OSError as exc:
                print(f"no {host} on this machine ({exc}); the IPv6 cases are skipped")
                continue
            out[name] = Site(host, server.port, server.hits)
        public = stack.enter_context(LoopbackServer(respond=_public, host="127.0.0.2"))
        out["public"] = Site("127.0.0.2", public.port, public.hits)
        yield out


_REAL_GETADDRINFO = socket.getaddrinfo


def _lab_getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
    """The system resolver as glibc answers from /etc/hosts and numeric forms, and nothing
    else: a test never sends a DNS query. ``localhost`` is 127.0.0.1 and ::1."""
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str) and (name.rstrip(".").lower() == "localhost" or name.rstrip(".").endswith(".localhost")):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port or 0)),
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port or 0, 0, 0))]
    return _REAL_GETADDRINFO(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)


@pytest.fixture
def sandbox(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No packet beyond loopback even if the guard were broken: HTTP connections to any other
    address fail here, before a socket exists, and are recorded (the tests require none)."""
    attempts: list[str] = []
    real_connect = httpcore.AnyIOBackend.connect_tcp

    async def connect_tcp(self: Any, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if not (host.startswith("127.") or host == "::1"):
            attempts.append(host)
            raise httpcore.ConnectError(f"test sandbox: no connection to {host}")
        return await real_connect(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", connect_tcp)
    monkeypatch.setattr(socket, "getaddrinfo", _lab_getaddrinfo)
    return attempts


def helper_settings(**kw: Any) -> Settings:
    kw.setdefault("use_system_resolver", True)  # the lab getaddrinfo above
    kw.setdefault("resolvers", [])
    return Settings(timeouts=Timeouts(dns=1, connect=2, tls=2, http=3), **kw)


def ask(config: ServerConfig, payload: dict[str, Any]) -> httpx.Response:
    async def main() -> httpx.Response:
        config.host, config.port = "127.0.0.1", 0
        async with ControlServer(config) as server:
            host, port = server.address
            async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
                return await client.post(f"http://{host}:{port}{control.MEASURE_PATH}", json=payload)

    return asyncio.run(main())


def measure_via_redirect(sites: dict[str, Site], to: str, allow_nets: list[str] | None = None) -> httpx.Response:
    start = sites["public"].url("/?" + urllib.parse.urlencode({"to": to}))
    config = ServerConfig(settings=helper_settings(), allow_nets=allow_nets or ["127.0.0.2/32"])
    return ask(config, {"experiment": "web_connectivity", "input": start})


def assert_nothing_internal(resp: httpx.Response, sites: dict[str, Site]) -> None:
    assert SECRET not in resp.text
    assert all(not s.hits for k, s in sites.items() if k.startswith("internal"))


# Every way of writing "the helper's own host" in a redirect; each must end in a refused hop.
REDIRECT_FORMS = {
    "ipv4": "http://127.0.0.1:{p}/",
    "ipv6": "http://[::1]:{p6}/",
    "localhost": "http://localhost:{p}/",
    "localhost_dot": "http://localhost.:{p}/",
    "sub_localhost": "http://metadata.localhost:{p}/",
    "decimal": "http://2130706433:{p}/",
    "hex": "http://0x7f000001:{p}/",
    "short": "http://127.1:{p}/",
    "mapped": "http://[::ffff:127.0.0.1]:{p}/",
    "unspecified": "http://0.0.0.0:{p}/",
    "private": "http://10.0.0.1:{p}/",
    "metadata": "http://169.254.169.254/latest/meta-data/",
}


@pytest.mark.parametrize("form", sorted(REDIRECT_FORMS))
def test_redirect_into_the_helper_network_is_refused(form: str, sites: dict[str, Site], sandbox: list[str]) -> None:
    if "{p6}" in REDIRECT_FORMS[form] and "internal6" not in sites:
        pytest.skip("no ::1 on this machine")
    p6 = sites["internal6"].port if "internal6" in sites else 0
    to = REDIRECT_FORMS[form].format(p=sites["internal"].port, p6=p6)
    resp = measure_via_redirect(sites, to)
    assert resp.status_code == 200, resp.text
    [m] = resp.json()["measurements"]
    first, *rest = m["http"]
    assert first["status_code"] == 302 and first["failure"] is None  # the public hop is measured
    assert len(rest) == 1, m["http"]
    hop = rest[0]
    # refused before connecting: no status, no headers, no body, no title
    assert hop["failure"] == REFUSED, hop
    assert (hop["status_code"], hop["headers"], hop["body_sample"], hop["title"]) == (None, [], None, None)
    assert_nothing_internal(resp, sites)
    assert sandbox == []  # and nothing was attempted beyond loopback


def test_octal_form_is_not_followed(sites: dict[str, Site], sandbox: list[str]) -> None:
    # httpx rejects 0177.0.0.1 in a URL (its redirect bookkeeping fails the hop with
    # http_invalid_response): the chain ends at the public hop, nothing is fetched.
    resp = measure_via_redirect(sites, f"http://0177.0.0.1:{sites['internal'].port}/")
    [m] = resp.json()["measurements"]
    assert len(m["http"]) == 1 and m["http"][0]["ip"] == "127.0.0.2"
    assert_nothing_internal(resp, sites)


def test_trap_allowed_redirects_are_followed(sites: dict[str, Site], sandbox: list[str]) -> None:
    # A redirect within what the policy allows is followed to the page: the refusals above
    # are the policy's, not a broken redirect chain.
    resp = measure_via_redirect(sites, sites["public"].url("/page"))
    [m] = resp.json()["measurements"]
    assert [h["status_code"] for h in m["http"]] == [302, 200]
    assert m["http"][-1]["title"] == "public page"
    # and the same redirect into 127.0.0.1 does return the internal page once the policy lets
    # 127.0.0.1 through: what the tests above assert could fail
    resp = measure_via_redirect(sites, sites["internal"].url("/"), allow_nets=["127.0.0.0/8"])
    assert SECRET in resp.json()["measurements"][0]["http"][-1]["title"]
    sites["internal"].hits.clear()


# --------------------------------------------------------------------------- DNS rebinding


class RebindingZone(LabZone):
    """``rebind.lab.test``: the first A query gets the allowed 127.0.0.2, every later one the
    helper's own 127.0.0.1, as an attacker's authoritative server with TTL 0 would."""

    def __init__(self) -> None:
        super().__init__("lab.test", {"rebind.lab.test": "127.0.0.2"})
        self.a_queries = 0

    def respond(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        if query.question and query.question[0].rdtype == dns.rdatatype.A:
            self.a_queries += 1
            self.names["rebind.lab.test"] = "127.0.0.2" if self.a_queries == 1 else "127.0.0.1"
        return super().respond(wire)


def test_dns_rebinding_cannot_pass(sites: dict[str, Site], sandbox: list[str]) -> None:
    zone = RebindingZone()
    port, socks = bind_same_port([("127.0.0.1", socket.SOCK_DGRAM), ("127.0.0.1", socket.SOCK_STREAM)])
    url = f"http://rebind.lab.test:{sites['internal'].port}/"

    async def main() -> httpx.Response:
        resolver = DnsServer(zone, socks[0], socks[1])
        await resolver.start()
        config = ServerConfig(host="127.0.0.1", port=0, allow_nets=["127.0.0.2/32"],
                              settings=helper_settings(use_system_resolver=False, resolvers=[f"127.0.0.1:{port}"]))
        try:
            async with ControlServer(config) as server:
                host, hport = server.address
                async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
                    return await client.post(f"http://{host}:{hport}{control.MEASURE_PATH}",
                                              json={"experiment": "web_connectivity", "input": url})
        finally:
            await resolver.stop()

    resp = asyncio.run(main())
    # The name passed the early check (it resolved to the allowed address first) ...
    assert resp.status_code == 200, resp.text
    assert zone.a_queries >= 2
    [m] = resp.json()["measurements"]
    # ... and the experiment's own lookup got 127.0.0.1, whose connection the guard refused.
    assert [(t["ip"], t["failure"]) for t in m["tcp"]] == [("127.0.0.1", REFUSED)]
    assert m["http"] == []
    assert_nothing_internal(resp, sites)


# --------------------------------------------------------------------------- probe addresses


def test_probe_addresses_pass_the_guard_too(sites: dict[str, Site], sandbox: list[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # The early check refuses private probe addresses with 403 (tests/probe/test_control.py). Were it
    # skipped, the connection guard still refuses them: the TLS/TCP steps of the probe's
    # addresses record the refusal and nothing else.
    async def no_early_check(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(control_server, "check_policy", no_early_check)
    internal = sites["internal"]
    config = ServerConfig(settings=helper_settings(), allow_nets=["127.0.0.2/32"])
    resp = ask(config, {"experiment": "web_connectivity", "input": f"http://127.0.0.2:{internal.port}/",
                        "addresses": ["127.0.0.1", "::ffff:127.0.0.1"]})
    assert resp.status_code == 200, resp.text
    [m] = resp.json()["measurements"]
    tagged = [(t["ip"], t["failure"]) for t in m["tcp"] if t["tag"] == control_server.PROBE_ADDRESS_TAG]
    assert tagged == [("127.0.0.1", REFUSED), ("::ffff:7f00:1", REFUSED)]  # normalised
    assert_nothing_internal(resp, sites)
