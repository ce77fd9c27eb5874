"""The lab's scenarios: one site per censorship technique or false-positive trap, each with
its ground truth (status, layer). Adding a scenario is one entry in SCENARIOS (docs/labs.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .topology import BLOCKPAGE_ADDR, CDN_NODE_CONTROL_SIDE, CDN_NODE_PROBE_SIDE, INJECTED_ADDR

DOMAIN = "lab.test"
SITE_NET_PREFIX = "10.77.3."
FIRST_SITE_HOST = 10

# Censor techniques (what the censor namespace does to a scenario's traffic).
DNS_LIE = "dns_lie"  # the ISP resolver answers `value` ("NXDOMAIN" or an address)
DNS_INJECT = "dns_inject"  # an on-path injector forges an A answer (`value`) racing the real one
TCP_DROP = "tcp_drop"  # nftables drops packets to the site's address and port
TCP_RESET = "tcp_reset"  # nftables answers SYNs with a TCP reset
SNI_RESET = "sni_reset"  # the DPI box resets connections whose ClientHello names the site
SNI_DROP = "sni_drop"  # ... or swallows them silently
HOST_RESET = "http_host_reset"  # the DPI box resets HTTP requests for the Host
KEYWORD_RESET = "http_keyword_reset"  # the DPI box resets HTTP requests whose path holds `value`
HTTP_BLOCKPAGE = "http_blockpage"  # port 80 to the site is redirected to the censor's blockpage
TECHNIQUES = (
    DNS_LIE, DNS_INJECT, TCP_DROP, TCP_RESET, SNI_RESET, SNI_DROP, HOST_RESET, KEYWORD_RESET, HTTP_BLOCKPAGE,
)

BLOCKED_KEYWORD = "forbidden-topic"


@dataclass(frozen=True)
class Scenario:
    """A site and what happens to it. ``status``/``layer`` are the verdict the analyzer owes."""

    name: str  # also the host label: <name>.lab.test
    description: str
    status: str  # ground truth: ok | blocked | down
    layer: str | None = None  # ground truth layer when blocked
    scheme: str = "https"
    path: str = "/"
    technique: str | None = None  # one of TECHNIQUES, applied by the censor
    value: str | None = None  # the technique's parameter (lie, forged address, keyword)
    in_dns: bool = True  # the authoritative server knows the name
    served: bool = True  # nginx serves the site
    server_drops: bool = False  # the site's own firewall drops everything (down for everyone)
    slow: bool = False  # the site answers, slowly
    geo: bool = False  # geo-DNS: the probe's side and the control's side get different nodes
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return f"{self.name}.{DOMAIN}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    @property
    def port(self) -> int:
        return 443 if self.scheme == "https" else 80


SCENARIOS: tuple[Scenario, ...] = (
    # ---- working sites (false-positive baseline)
    Scenario("plain", "an ordinary HTTPS site", "ok"),
    Scenario("plainhttp", "an ordinary plain-HTTP site", "ok", scheme="http"),
    # ---- DNS
    Scenario("dnslie-blockpage", "ISP resolver answers the blockpage address", "blocked", "dns",
             scheme="http", technique=DNS_LIE, value=BLOCKPAGE_ADDR),
    Scenario("dnslie-nxdomain", "ISP resolver answers NXDOMAIN", "blocked", "dns",
             technique=DNS_LIE, value="NXDOMAIN"),
    Scenario("dnslie-bogon", "ISP resolver answers a loopback (bogon) address", "blocked", "dns",
             technique=DNS_LIE, value="127.0.0.2"),
    Scenario("dnsinject", "on-path injector forges an answer; the real one still arrives", "blocked", "dns",
             technique=DNS_INJECT, value=INJECTED_ADDR),
    # ---- TCP/IP
    Scenario("tcpdrop", "nftables drops packets to the site's address and port", "blocked", "tcp_ip",
             technique=TCP_DROP),
    Scenario("tcpreset", "nftables rejects with a TCP reset", "blocked", "tcp_ip", technique=TCP_RESET),
    # ---- TLS (SNI)
    Scenario("snireset", "DPI resets the connection after a ClientHello naming the site", "blocked", "tls",
             technique=SNI_RESET),
    Scenario("snidrop", "DPI swallows the ClientHello naming the site", "blocked", "tls", technique=SNI_DROP),
    # ---- HTTP
    Scenario("hostreset", "DPI resets HTTP requests with this Host", "blocked", "http-failure",
             scheme="http", technique=HOST_RESET),
    Scenario("keyword", "DPI resets HTTP requests whose path holds a keyword", "blocked", "http-failure",
             scheme="http", path=f"/news/{BLOCKED_KEYWORD}.html", technique=KEYWORD_RESET, value=BLOCKED_KEYWORD),
    Scenario("blockpage", "port 80 transparently redirected to the censor's blockpage", "blocked", "http-diff",
             scheme="http", technique=HTTP_BLOCKPAGE),
    # ---- false-positive traps
    Scenario("geocdn", "geo-DNS: probe and control get different nodes, both valid over TLS", "ok", geo=True),
    Scenario("slow", "a slow but working site (about 3 s to send its page)", "ok", slow=True),
    Scenario("downrefused", "the site is down for everyone (nothing listens)", "down", served=False),
    Scenario("downtimeout", "the site is down for everyone (its firewall drops)", "down", server_drops=True),
    Scenario("nonexistent", "a name that does not exist anywhere", "down", in_dns=False, served=False),
)


def site_address(index: int) -> str:
    return f"{SITE_NET_PREFIX}{FIRST_SITE_HOST + index}"


def addresses(scenarios: tuple[Scenario, ...] = SCENARIOS) -> dict[str, list[str]]:
    """Each scenario's server addresses (the geo site has one node per side)."""
    out: dict[str, list[str]] = {}
    for i, sc in enumerate(scenarios):
        out[sc.name] = [CDN_NODE_PROBE_SIDE, CDN_NODE_CONTROL_SIDE] if sc.geo else [site_address(i)]
    return out


def by_url(scenarios: tuple[Scenario, ...] = SCENARIOS) -> dict[str, Scenario]:
    return {sc.url: sc for sc in scenarios}
