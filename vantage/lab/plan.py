"""The loopback lab's address plan and scenarios: which name lives where, what the censor does
to it, and the verdict a correct analyzer gives (the ground truth). Pure data, no I/O.

Addresses: the lab's "public internet" is 127.64.0.0/10 (the demo passes it to the analyzer as
``--public-net``), so a lie inside it looks like an ordinary public address, while the bogon
lie 127.0.0.66 lies outside it and stays a bogon. Both are loopback: nothing leaves the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LAB_DOMAIN = "lab.test"  # RFC 6761: never delegated, so a lab name can never resolve outside
PUBLIC_NET = "127.64.0.0/10"  # treated as public address space by the analyzer in the demo
LAB_CC = "ZZ"  # ISO 3166 user-assigned: the probe's country in the lab

HONEST_RESOLVER_IP = "127.64.53.1"
CENSORING_RESOLVER_IP = "127.64.53.2"
BLOCKPAGE_IP = "127.64.0.2"  # the censor's blockpage server (fingerprinted in fingerprints.csv)
BLOCKPAGE_NAME = f"blockpage.{LAB_DOMAIN}"
BOGON_IP = "127.0.0.66"  # loopback outside PUBLIC_NET: a bogon to the analyzer; kept closed
CDN_ALT_IP = "127.64.2.2"  # the "other region" answer of the geo-DNS trap, also a real server
DOWN_IP = "127.64.9.1"  # the site that is down: the lab holds its ports closed

# What the censoring resolver does with a name: answer honestly, NXDOMAIN, never answer, or
# answer this address instead.
DnsAction = Literal["honest", "nxdomain", "drop"] | str

# What the on-path censor does to connections to an address while it is switched on (the
# probe's view; the control's view has it off). None: nothing.
#   refuse     the address's ports are closed (TCP connect refused)
#   reset      accept, read the first bytes (ClientHello or request), answer with a TCP RST
#   sni_abort  the TLS handshake is cut with an RST when the ClientHello names a blocked SNI
#   silent     accept, read, never answer
#   redirect   HTTP 302 to the blockpage server, by address
PathAction = Literal["refuse", "reset", "sni_abort", "silent", "redirect"] | None

Status = Literal["ok", "blocked", "down"]
Layer = Literal["dns", "tcp_ip", "tls", "http-failure", "http-diff"] | None


@dataclass(frozen=True, slots=True)
class Site:
    """One lab URL: where it lives, what the censor does to it, and the correct verdict."""

    hostname: str
    scheme: Literal["http", "https"]
    address: str  # the honest answer: where the real site is served
    status: Status  # ground truth
    layer: Layer  # ground truth (None for ok and down)
    description: str
    dns: DnsAction = "honest"  # what the censoring resolver answers
    path: PathAction = None  # what the on-path censor does at `address`

    def url(self, http_port: int, https_port: int) -> str:
        port = http_port if self.scheme == "http" else https_port
        return f"{self.scheme}://{self.hostname}:{port}/"


def _n(label: str) -> str:
    return f"{label}.{LAB_DOMAIN}"


SITES: tuple[Site, ...] = (
    Site(_n("www"), "http", "127.64.1.1", "ok", None, "ordinary page over HTTP"),
    Site(_n("www"), "https", "127.64.1.1", "ok", None, "ordinary page over HTTPS"),
    Site(_n("news"), "https", "127.64.1.2", "ok", None, "ordinary page over HTTPS"),
    Site(_n("wiki"), "http", "127.64.1.3", "ok", None, "ordinary page over HTTP"),
    Site(
        _n("sni-open"),
        "https",
        "127.64.1.4",
        "ok",
        None,
        "shares its address with sni-blocked; its own SNI passes the censor",
    ),
    Site(
        _n("cdn"),
        "https",
        "127.64.2.1",
        "ok",
        None,
        f"geo-DNS trap: the censoring resolver answers {CDN_ALT_IP}, another valid server "
        "for the name (the TLS certificate validates there, so this is not censorship)",
        dns=CDN_ALT_IP,
    ),
    Site(
        _n("dns-blockpage"),
        "http",
        "127.64.4.1",
        "blocked",
        "dns",
        f"censoring resolver answers the blockpage server {BLOCKPAGE_IP}",
        dns=BLOCKPAGE_IP,
    ),
    Site(
        _n("dns-nxdomain"),
        "http",
        "127.64.4.2",
        "blocked",
        "dns",
        "censoring resolver answers NXDOMAIN",
        dns="nxdomain",
    ),
    Site(
        _n("dns-bogon"),
        "https",
        "127.64.4.3",
        "blocked",
        "dns",
        f"censoring resolver answers the bogon {BOGON_IP} (held closed)",
        dns=BOGON_IP,
    ),
    Site(
        _n("dns-noanswer"),
        "http",
        "127.64.4.4",
        "blocked",
        "dns",
        "censoring resolver never answers (UDP or TCP)",
        dns="drop",
    ),
    Site(
        _n("tcp-refused"),
        "http",
        "127.64.3.1",
        "blocked",
        "tcp_ip",
        "the censor closes the site's ports for the probe (connection refused)",
        path="refuse",
    ),
    Site(
        _n("tls-reset"),
        "https",
        "127.64.3.2",
        "blocked",
        "tls",
        "the censor answers the ClientHello with a TCP RST",
        path="reset",
    ),
    Site(
        _n("sni-blocked"),
        "https",
        "127.64.1.4",
        "blocked",
        "tls",
        "the censor resets the TLS handshake when it sees this SNI (and only this one)",
        path="sni_abort",
    ),
    Site(
        _n("http-silent"),
        "http",
        "127.64.3.3",
        "blocked",
        "http-failure",
        "the censor accepts the connection, swallows the request and never answers",
        path="silent",
    ),
    Site(
        _n("http-redirect"),
        "http",
        "127.64.3.4",
        "blocked",
        "http-diff",
        f"the censor answers 302 to the blockpage at http://{BLOCKPAGE_IP}:<port>/",
        path="redirect",
    ),
    Site(
        _n("down"),
        "https",
        DOWN_IP,
        "down",
        None,
        "down for probe and control alike: nothing listens at its address",
    ),
)


def site_names() -> dict[str, str]:
    """Every lab hostname and its honest address (what the honest resolver knows)."""
    names = {s.hostname: s.address for s in SITES}
    names[BLOCKPAGE_NAME] = BLOCKPAGE_IP
    return names


def censored_dns() -> dict[str, str]:
    """Hostname -> DnsAction for every name the censoring resolver lies about."""
    return {s.hostname: s.dns for s in SITES if s.dns != "honest"}


def served_addresses() -> dict[str, tuple[str, ...]]:
    """Every address the lab runs web servers on, with the names its certificate covers."""
    out: dict[str, list[str]] = {}
    for s in SITES:
        if s.address != DOWN_IP:
            out.setdefault(s.address, [])
            if s.hostname not in out[s.address]:
                out[s.address].append(s.hostname)
    out[CDN_ALT_IP] = [s.hostname for s in SITES if s.dns == CDN_ALT_IP]
    out[BLOCKPAGE_IP] = [BLOCKPAGE_NAME]
    return {ip: tuple(names) for ip, names in out.items()}


def path_actions() -> dict[str, PathAction]:
    """Address -> what the on-path censor does there (sni_abort acts per name, see sni_blocked)."""
    return {s.address: s.path for s in SITES if s.path is not None}


def sni_blocked() -> frozenset[str]:
    return frozenset(s.hostname for s in SITES if s.path == "sni_abort")


def closed_addresses() -> tuple[str, ...]:
    """Addresses handed out where nothing listens: the lab binds their ports without listening."""
    return (DOWN_IP, BOGON_IP)
