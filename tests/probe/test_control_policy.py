"""The control helper's address policy: the IANA special-purpose registries (IPv4 and IPv6), the
forms that embed an IPv4 address, and every textual form of a host. No packet leaves loopback:
the refused targets are refused before resolving, and the traps are checked without the network.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from probe import control
from probe.control_server import ControlServer, ServerConfig
from probe.experiments.base import Settings, Timeouts

# One address from each special-purpose block (IANA IPv4 and IPv6 special-purpose address
# registries, the IPv6 address space registry, RFC 3879 site-local), written out here from the
# registries themselves, not from the code's table.
SPECIAL = [
    "0.1.2.3",  # 0.0.0.0/8 "this network"
    "0.0.0.0",  # unspecified
    "10.20.30.40", "172.31.255.254", "192.168.0.1",  # RFC 1918
    "100.64.0.1", "100.127.255.254",  # 100.64.0.0/10 shared (CGN)
    "127.0.0.1", "127.255.255.254",  # loopback
    "169.254.169.254",  # link-local: cloud metadata
    "192.0.0.8", "192.0.0.9", "192.0.0.170", "192.0.0.255",  # 192.0.0.0/24 IETF protocol assignments
    "192.0.2.1", "198.51.100.1", "203.0.113.1",  # documentation
    "192.88.99.1",  # deprecated 6to4 relay anycast
    "198.18.0.1", "198.19.255.254",  # benchmarking
    "224.0.0.1", "239.255.255.250",  # multicast
    "240.0.0.1", "254.1.2.3", "255.255.255.255",  # reserved, limited broadcast
    "::", "::1",  # unspecified, loopback
    "::ffff:10.1.2.3", "::ffff:127.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped of special
    "::10.1.2.3",  # deprecated IPv4-compatible (::/96, reserved)
    "64:ff9b::10.0.0.1", "64:ff9b::127.0.0.1", "64:ff9b::169.254.169.254",  # NAT64 of special
    "64:ff9b:1::1", "64:ff9b:1:ffff::8.8.8.8",  # 64:ff9b:1::/48 local-use translation
    "100::1", "100::ffff:1",  # 100::/64 discard-only
    "2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:1::1", "2001:2::1", "2001:10::1", "2001:1ff::1",  # 2001::/23 IETF protocol assignments
    "2001:db8::1", "2001:db8:ffff::1",  # documentation
    "3fff::1", "3fff:fff::1",  # 3fff::/20 documentation (2024)
    "2002:a00:1::1", "2002:7f00:1::1", "2002:c0a8:101::1",  # 6to4 of 10/8, 127/8, 192.168/16
    "5f00::1",  # SRv6 SIDs
    "fc00::1", "fd00:ec2::254",  # unique local (the second: a cloud's IPv6 metadata service)
    "fe80::1", "fe80::1%eth0", "febf::1",  # link-local, scoped
    "fec0::1", "feff::1",  # site-local (deprecated, RFC 3879)
    "ff02::1", "ff0e::1",  # multicast
    "4000::1", "e000::1", "1::1",  # outside 2000::/3: reserved by the IETF
]

# Traps: public addresses, many right beside a special block, that must NOT be refused.
PUBLIC = [
    "8.8.8.8", "1.1.1.1", "93.184.215.14", "223.255.255.254",
    "100.63.255.254", "100.128.0.1",  # either side of 100.64.0.0/10
    "192.0.1.1", "192.0.3.1",  # either side of 192.0.0.0/24 (192.0.2.0/24 aside)
    "198.17.255.254", "198.20.0.1",  # either side of 198.18.0.0/15
    "172.15.255.254", "172.32.0.1", "11.0.0.1", "126.255.255.254", "128.0.0.1",
    "2606:4700:4700::1111", "2001:4860:4860::8888", "2a00:1450:4001::1",
    "2001:200::1",  # just past 2001::/23
    "2001:dba::1",  # just past 2001:db8::/32
    "3fff:1000::1",  # just past 3fff::/20
    "::ffff:8.8.8.8", "64:ff9b::8.8.8.8",  # IPv4-mapped and NAT64 of a public address
    "[2606:4700:4700::1111]",  # bracketed
]


@pytest.mark.parametrize("address", SPECIAL)
def test_special_purpose_addresses_are_refused(address: str) -> None:
    reason = control.address_refusal(address)
    assert reason, f"{address} must be refused"
    assert "\n" not in reason


@pytest.mark.parametrize("address", PUBLIC)
def test_trap_public_addresses_are_allowed(address: str) -> None:
    assert control.address_refusal(address) is None


def test_embedded_ipv4_is_named_in_the_reason() -> None:
    assert control.address_refusal("2002:a00:1::1") == "6to4 of private 10.0.0.1"
    assert control.address_refusal("64:ff9b::a9fe:a9fe") == "NAT64 of link-local 169.254.169.254"
    assert control.address_refusal("::ffff:127.0.0.1") == "loopback"
    assert control.address_refusal("not-an-address") == "not an IP address"


# Every textual form of "this host" a URL can carry: refused as written, before resolving.
HOST_FORMS = {
    "decimal": "2130706433",
    "hex": "0x7f000001",
    "octal": "0177.0.0.1",
    "short": "127.1",
    "hex_short": "0x7f.1",
    "ipv6": "[::1]",
    "ipv6_long": "[0:0:0:0:0:0:0:1]",
    "ipv6_unspecified": "[::]",
    "mapped": "[::ffff:127.0.0.1]",
    "mapped_hex": "[::ffff:7f00:1]",
    "nat64": "[64:ff9b::7f00:1]",
    "sixtofour": "[2002:7f00:1::]",
    "scoped": "[fe80::1%25eth0]",
    "localhost": "localhost",
    "localhost_upper": "LOCALHOST",
    "localhost_dot": "localhost.",
    "localhost_dots": "localhost..",
    "sub_localhost": "metadata.localhost",
    "trailing_dot": "127.0.0.1.",
    "fullwidth": "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # １２７.０.０.１, NFKC -> 127.0.0.1
    "idna_localhost": "\u24dbocalhost",  # ⓛocalhost, nameprep -> localhost
}


def lab_settings() -> Settings:
    # No resolver at all: a form that were not refused as written would fail to resolve (or
    # connect to loopback), never send a packet elsewhere.
    return Settings(use_system_resolver=False, resolvers=[], timeouts=Timeouts(dns=1, connect=1, tls=1, http=1))


@pytest.mark.parametrize("form", sorted(HOST_FORMS))
def test_textual_forms_of_this_host_are_refused(form: str) -> None:
    host = HOST_FORMS[form]
    assert control.host_form_refusal(host.strip("[]").replace("%25", "%")), host
    url = f"http://{host}:8080/"

    async def main() -> httpx.Response:
        async with ControlServer(ServerConfig(host="127.0.0.1", port=0, settings=lab_settings())) as server:
            h, p = server.address
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                return await client.post(f"http://{h}:{p}{control.MEASURE_PATH}",
                                         json={"experiment": "web_connectivity", "input": url})

    resp = asyncio.run(main())
    error: dict[str, Any] = resp.json()["error"]
    if form == "idna_localhost":  # the input check already rejects the non-ASCII label
        assert (resp.status_code, error["code"]) == (400, "invalid_input")
    else:
        assert (resp.status_code, error["code"]) == (403, "forbidden_target"), error
        assert "only public targets" in error["message"]
    assert "measurements" not in resp.json()


@pytest.mark.parametrize("host", ["8.8.8.8", "134744072", "0x08080808", "example.org", "localhost.example",
                                  "mylocalhost", "xn--bcher-kva.example", "[2606:4700:4700::1111]"])
def test_trap_public_forms_are_not_refused_as_written(host: str) -> None:
    # 134744072 and 0x08080808 are 8.8.8.8; the names are left to resolution and the guard.
    assert control.host_form_refusal(host) is None


def test_ambiguous_numeric_hosts_are_refused() -> None:
    # A host whose last label is a number is an IPv4 address or nothing (WHATWG URL): a form
    # the resolver reads in its own way is not guessed at.
    for host in ("999999999999", "1.2.3.4.5", "0x", "1.2.3.0x1ff", "1.2.3.256"):
        assert control.host_form_refusal(host), host
