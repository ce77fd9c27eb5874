"""probe.scrub over every encoding of an address (property tests), and the traps: addresses
that are not ours, version numbers, ids and hashes stay as they are."""

from __future__ import annotations

import base64
import ipaddress
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from netns.address_forms import find, forms

from probe.scrub import REPLACEMENT, Scrubber, literals_in, scrub_all_addresses

# Text around an address: what pages, headers and host names put next to one.
_BEFORE = st.sampled_from(["", " ", "<b>", "=", "ip=", "/", "(", "; ", '"', "\n", "host-", "[", "\t"])
_AFTER = st.sampled_from(["", " ", "</b>", ")", ";", '"', "\n", ".example", "/", ":8080", "&x=1"])
# 0.0.0.0/8 is "this network", never a host's address on a path (RFC 1122): its short decimal
# and hex forms would be every small number. Loopback is never scrubbed (not identifying).
_V4 = st.ip_addresses(v=4).filter(lambda a: not a.is_loopback and int(a) >= 1 << 24)
_V6 = st.ip_addresses(v=6).filter(
    lambda a: not (a.is_loopback or a.is_unspecified or a.is_link_local or a.is_multicast) and a.ipv4_mapped is None
)


@settings(max_examples=300, deadline=None, derandomize=True)  # the same cases in CI every time
@given(addr=_V4, form=st.sampled_from(sorted(forms("192.0.2.1"))), before=_BEFORE, after=_AFTER)
def test_every_ipv4_encoding_is_scrubbed(addr: ipaddress.IPv4Address, form: str, before: str, after: str) -> None:
    encoded = forms(str(addr))[form]
    text = f"{before}{encoded}{after}"
    out = Scrubber([str(addr)]).scrub(text)
    assert REPLACEMENT in out
    assert find(out, [str(addr)]) == [], (text, out)


def v6_forms(a: ipaddress.IPv6Address) -> list[str]:
    nibbles = f"{int(a):032x}"
    return [
        str(a), a.exploded, a.exploded.upper(), f"[{a}]:443", quote(str(a), safe=""),
        str(a).replace(":", "-") + ".ipv6-literal.net", nibbles,
        ".".join(reversed(nibbles)) + ".ip6.arpa", f"http://[{a.exploded}]/",
    ]


@settings(max_examples=200, deadline=None, derandomize=True)  # the same cases in CI every time
@given(addr=_V6, index=st.integers(0, 8), before=_BEFORE, after=_AFTER)
def test_every_ipv6_encoding_is_scrubbed(addr: ipaddress.IPv6Address, index: int, before: str, after: str) -> None:
    text = f"{before}{v6_forms(addr)[index]}{after}"
    out = Scrubber([str(addr)]).scrub(text)
    assert REPLACEMENT in out, text
    for form in v6_forms(addr):
        assert form.lower() not in out.lower(), (text, out)


@settings(max_examples=300, deadline=None, derandomize=True)  # the same cases in CI every time
@given(own=_V4, other=_V4, form=st.sampled_from(sorted(forms("192.0.2.1"))), before=_BEFORE, after=_AFTER)
def test_other_addresses_are_kept_in_every_encoding(
    own: ipaddress.IPv4Address, other: ipaddress.IPv4Address, form: str, before: str, after: str
) -> None:
    # Known collisions, not leaks: the reversed order (an in-addr.arpa name of ours), and a
    # dotted form inside another one (base64 has no word boundaries to tell them apart).
    assume(other != own and ipaddress.IPv4Address(other.packed[::-1]) != own)
    assume(str(own) not in str(other))
    text = f"{before}{forms(str(other))[form]}{after}"
    assert Scrubber([str(own)]).scrub(text) == text


@settings(max_examples=100, deadline=None, derandomize=True)  # the same cases in CI every time
@given(own=_V6, other=_V6, index=st.integers(0, 8))
def test_other_ipv6_networks_are_kept(own: ipaddress.IPv6Address, other: ipaddress.IPv6Address, index: int) -> None:
    assume(int(own) >> 64 != int(other) >> 64)  # our whole /64 is ours (privacy addresses)
    text = f"x {v6_forms(other)[index]} y"
    assert Scrubber([str(own)]).scrub(text) == text


def test_neighbours_versions_ids_and_hashes_stay() -> None:
    s = Scrubber(["10.1.2.3"])
    kept = [
        "10.1.2.30", "110.1.2.3", "10.1.2.3.4", "version 1.2.3.4", "0a0102030", "167838212",
        "uuid 0190a5b2-1c3d-7e4f-8a9b-0c1d2e3f4a5b", "sha256 " + "ab" * 32, "12:30:45", "2026-12-01",
    ]
    for text in kept:
        assert s.scrub(text) == text, text
    # ...and these are ours
    assert s.scrub("ip-10-1-2-3.isp.example") == "ip-[scrubbed].isp.example"
    assert s.scrub("3.2.1.10.in-addr.arpa") == "[scrubbed].in-addr.arpa"
    assert s.scrub("Cookie: c=" + base64.b64encode(b"id=7;ip=10.1.2.3").decode()).count(REPLACEMENT) == 1


def test_paranoid_literals_go_targets_stay() -> None:
    s = Scrubber(paranoid=True, public_nets=["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"])
    keep = {ipaddress.ip_address("203.0.113.5")}
    text = "server 203.0.113.5 (5.113.0.203.in-addr.arpa) says you are 198.51.100.77 / 2001:db8::9 / 198-51-100-77"
    out = s.scrub_literals(text, keep)
    assert out == "server 203.0.113.5 (5.113.0.203.in-addr.arpa) says you are [scrubbed] / [scrubbed] / [scrubbed]"
    # a log line in paranoid mode loses every literal, and later the other encodings of them
    assert s.scrub_log("GET /?ip=198.51.100.77") == "GET /?ip=[scrubbed]"
    assert s.scrub_log("hex c633644d dec 3325256781") == "hex [scrubbed] dec [scrubbed]"
    assert s.scrub_log("hex 0a0b0c0d stays: never seen as an address") == "hex 0a0b0c0d stays: never seen as an address"


def test_literals_in_reads_both_orders() -> None:
    assert {str(a) for a in literals_in("a 10.1.2.3 b")} == {"10.1.2.3", "3.2.1.10"}
    assert scrub_all_addresses("to 10.0.0.1:53 via fe80::1%eth0 or 10%2E0%2E0%2E1") == (
        "to [scrubbed]:53 via [scrubbed] or [scrubbed]"
    )


@pytest.mark.parametrize("bad", ["nope", "10.1.2", ""])
def test_bad_addresses(bad: str) -> None:
    with pytest.raises(ValueError):
        Scrubber([bad])
    s = Scrubber()
    s.add(bad)  # a bad hint at run time is ignored, never fatal
    assert s.addresses == frozenset()


def test_paranoid_keeps_what_cannot_be_a_public_address() -> None:
    # A censor's blockpage at a private address (Iran's 10.10.34.34) is evidence, and no site
    # on the internet sees a vantage point at a private, CGNAT or documentation address.
    s = Scrubber(paranoid=True)
    text = "<iframe src=http://10.10.34.34/> cgnat 100.64.1.2, doc 198.51.100.7, you 8.8.4.4 (4.4.8.8.in-addr.arpa)"
    assert s.scrub_literals(text) == (
        "<iframe src=http://10.10.34.34/> cgnat 100.64.1.2, doc 198.51.100.7, you [scrubbed] ([scrubbed].in-addr.arpa)"
    )
    # 34.34.10.10 read backwards is 10.10.34.34: a reverse name of a private address stays too
    assert s.scrub_literals("34.34.10.10.in-addr.arpa") == "34.34.10.10.in-addr.arpa"
    # a lab declares its "internet" public
    assert Scrubber(paranoid=True, public_nets=["10.77.0.0/16"]).scrub_literals("ip 10.77.2.1") == "ip [scrubbed]"
