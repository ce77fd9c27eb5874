"""errors.classify (the one exception -> failure map) and the Scrubber, without sockets."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import ssl

import dns.exception
import dns.message
import httpcore
import httpx
import pytest

from probe.net.errors import classify
from probe.net.scrub import Scrubber, discover_local_addresses, parse_interface_listing, scrub_all_addresses
from probe.schema import is_valid_failure


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


def _verify_error(code: int) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_code = code
    return exc


CASES: list[tuple[BaseException, str]] = [
    (OSError(errno.ECONNREFUSED, "refused"), "connection_refused"),
    (OSError(errno.ECONNRESET, "reset"), "connection_reset"),
    (OSError(errno.EPIPE, "pipe"), "connection_reset"),
    (OSError(errno.EHOSTUNREACH, "no route"), "host_unreachable"),
    (OSError(errno.ENETUNREACH, "no net"), "network_unreachable"),
    (OSError(errno.ETIMEDOUT, "timed out"), "generic_timeout"),
    (ConnectionRefusedError(), "connection_refused"),
    (ConnectionResetError("Connection lost"), "connection_reset"),
    (ConnectionResetError(), "eof"),  # asyncio: FIN during the TLS handshake
    (TimeoutError(), "generic_timeout"),
    (TimeoutError(), "generic_timeout"),
    (asyncio.IncompleteReadError(b"", 2), "eof"),
    (_verify_error(62), "ssl_invalid_hostname"),
    (_verify_error(20), "ssl_unknown_authority"),
    (_verify_error(18), "ssl_unknown_authority"),
    (_verify_error(10), "ssl_invalid_certificate"),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "eof"),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), "tls_handshake_failure"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "dns_nxdomain"),
    # EAI_AGAIN: the system resolver got no usable reply in time (unreachable, timed out, or a
    # stub without upstream); not dns_servfail, which claims a resolver answered SERVFAIL.
    (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), "generic_timeout"),
    (socket.gaierror(socket.EAI_NODATA, "No address associated with hostname"), "dns_no_answer"),
    # An unreachable resolver, as the kernel reports it for the UDP query.
    (OSError(errno.ENETUNREACH, "Network is unreachable"), "network_unreachable"),
    (OSError(errno.EHOSTUNREACH, "No route to host"), "host_unreachable"),
    (_chained(dns.exception.Timeout(), OSError(errno.ENETUNREACH, "x")), "generic_timeout"),
    (dns.exception.Timeout(), "generic_timeout"),
    (dns.message.ShortHeader(), "dns_server_misbehaving"),
    (httpx.ReadTimeout("t"), "generic_timeout"),
    (httpx.ConnectTimeout("t"), "generic_timeout"),
    (httpx.TooManyRedirects("r"), "http_too_many_redirects"),
    (httpx.RemoteProtocolError("Server disconnected without sending a response."), "eof"),
    (httpx.RemoteProtocolError("illegal status line: bytearray(b'junk')"), "http_invalid_response"),
    # httpx -> httpcore -> OSError, as the libraries chain them
    (_chained(httpx.ReadError(""), _chained(httpcore.ReadError(""), OSError(errno.ECONNRESET, "x"))), "connection_reset"),
    (_chained(httpx.ConnectError(""), _chained(httpcore.ConnectError(""), _verify_error(62))), "ssl_invalid_hostname"),
]


def test_a_udp_query_to_a_resolver_that_is_not_there_is_not_a_reply() -> None:
    """A UDP query to a loopback address where nothing listens gets ICMP port unreachable:
    recorded as connection_refused (the resolver could not be reached), never as an rcode."""
    import socket as _socket

    from probe.net.clock import Clock
    from probe.net.dns import resolve_udp

    with _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed below: nothing listens there during the query
    q = asyncio.run(resolve_udp("example.test", f"127.0.0.1:{port}", clock=Clock(), timeout=2.0))
    assert q.failure == "connection_refused" and q.rcode is None
    assert q.t < 1.0  # the ICMP error ends the wait at once, it is not waited out


@pytest.mark.parametrize(("exc", "failure"), CASES, ids=[f"{type(e).__name__}-{f}" for e, f in CASES])
def test_classify(exc: BaseException, failure: str) -> None:
    assert classify(exc) == failure
    assert is_valid_failure(failure)


def test_exception_group_uses_first_member() -> None:
    group_type = getattr(__import__("builtins"), "ExceptionGroup", None)
    if group_type is None:
        pytest.skip("ExceptionGroup needs Python 3.11")
    assert classify(group_type("g", [ConnectionRefusedError(), TimeoutError()])) == "connection_refused"


def test_unknown_failure_keeps_no_address_and_is_short() -> None:
    exc = RuntimeError("bind to 198.51.100.23 and 2001:db8::77 failed: " + "x" * 300)
    failure = classify(exc)
    assert failure.startswith("unknown_failure:RuntimeError: bind to [scrubbed] and [scrubbed] failed")
    assert "198.51.100.23" not in failure and "2001:db8::77" not in failure
    assert len(failure) <= len("unknown_failure:") + 80
    assert is_valid_failure(failure)
    assert classify(OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")).startswith("unknown_failure:")


def test_classify_is_cycle_safe() -> None:
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert classify(a).startswith("unknown_failure:")


def test_scrubber_forms() -> None:
    s = Scrubber(["198.51.100.23", "2001:db8:aa:bb::77"], discover=False)
    text = (
        "you are 198.51.100.23; not 198.51.100.230 nor 1198.51.100.23; ptr ip-198-51-100-23.isp.example; "
        "v6 2001:DB8:AA:BB:0:0:0:77 or [2001:db8:aa:bb::77]:443, mapped ::ffff:198.51.100.23, "
        "privacy address 2001:db8:aa:bb:1234::9 in the same /64, other net 2001:db8:aa:bc::77, time 12:30:45"
    )
    out = s.scrub(text)
    assert out is not None
    assert "198.51.100.23" not in out.replace("198.51.100.230", "").replace("1198.51.100.23", "")
    assert "198.51.100.230" in out and "1198.51.100.23" in out  # neighbours stay
    assert "ip-[scrubbed].isp.example" in out
    assert "2001:DB8:AA:BB:0:0:0:77" not in out and "[[scrubbed]]:443" in out
    assert "::ffff:198.51.100.23" not in out and "2001:db8:aa:bb:1234::9" not in out
    assert "2001:db8:aa:bc::77" in out and "12:30:45" in out
    assert s.scrub(None) is None and s.scrub("") == ""


def test_scrubber_add_and_bytes() -> None:
    s = Scrubber(discover=False)
    assert s.scrub("seen as 192.0.2.44") == "seen as 192.0.2.44"
    s.add("192.0.2.44")
    s.add("not an address")  # ignored, a bad hint must not break a run
    assert s.scrub("seen as 192.0.2.44") == "seen as [scrubbed]"
    assert s.scrub_bytes(b"\xff192.0.2.44\x00") == b"\xff[scrubbed]\x00"
    with pytest.raises(ValueError):
        Scrubber(["nope"], discover=False)


def test_discovery_finds_no_loopback() -> None:
    found = discover_local_addresses()
    assert all(not a.is_loopback for a in found)
    assert all(isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)) for a in found)
    s = Scrubber()
    for a in found:  # every discovered interface address is scrubbed
        assert s.scrub(f"x {a} y") == "x [scrubbed] y"


def test_scrub_all_addresses() -> None:
    assert scrub_all_addresses("to 10.0.0.1:53 via fe80::1%eth0") == "to [scrubbed]:53 via [scrubbed]"


def test_interface_listing_parser() -> None:
    macos = "en0: flags=8863<UP>\n\tinet6 fe80::1c2b:3a%en0 prefixlen 64\n\tinet 192.168.1.5 netmask 0xffffff00\n"
    windows = (
        "   IPv4 Address. . . . . . . . . . . : 10.1.2.3(Preferred)\n"
        "   IPv6 Address. . . . . . . . . . . : 2001:db8::5\n"
        "   Physical Address. . . . . . . . . : 00-11-22-33-44-55\n"
    )
    assert {str(a) for a in parse_interface_listing(macos + windows)} == {
        "fe80::1c2b:3a", "192.168.1.5", "10.1.2.3", "2001:db8::5",
    }


def test_log_filter_is_installed_once_and_shares_the_run_scrubber() -> None:
    import logging

    from probe.net.scrub import LogScrubFilter, default_scrubber, install_log_filter

    handler = logging.StreamHandler()
    install_log_filter([handler])
    install_log_filter([handler])
    assert [type(f) for f in handler.filters] == [LogScrubFilter]
    assert default_scrubber() is default_scrubber()  # `vantage run` adds its public address here
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s then %d", ("a", 2), None)
    assert handler.filters[0].filter(record) and record.getMessage() == "a then 2"  # a line without addresses stays


def test_net_scrubber_is_the_pure_one_plus_discovery() -> None:
    import probe.scrub

    s = Scrubber(["192.0.2.44"], discover=False, paranoid=True, public_nets=["192.0.2.0/24"])
    assert isinstance(s, probe.scrub.Scrubber) and s.paranoid
    assert s.scrub_literals("a 192.0.2.45 b 10.0.0.1") == "a [scrubbed] b 10.0.0.1"
