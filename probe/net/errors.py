"""The one place where exceptions become failure strings of ``probe.schema.FAILURES``.

Order of the mapping (first match wins), walking an exception and its ``__cause__`` /
``__context__`` chain because httpx wraps httpcore which wraps anyio which wraps the OSError:

    timeouts (TimeoutError, socket.timeout, httpx.TimeoutException, dns.exception.Timeout)
                                                    -> generic_timeout
    ssl.SSLCertVerificationError                    -> ssl_invalid_hostname | ssl_unknown_authority
                                                       | ssl_invalid_certificate (by verify_code)
    ssl.SSLEOFError / SSLZeroReturnError            -> eof
    other ssl.SSLError (alerts, garbage)            -> tls_handshake_failure
    socket.gaierror                                 -> dns_nxdomain (EAI_NONAME) | dns_no_answer
                                                       (EAI_NODATA) | generic_timeout (EAI_AGAIN:
                                                       the resolver gave no usable reply in time)
    OSError by errno (ECONNREFUSED, ECONNRESET, EPIPE, EHOSTUNREACH, ENETUNREACH, ...)
    ConnectionError subclasses without errno        -> connection_refused | connection_reset
                                                       (a bare ConnectionResetError() is asyncio's
                                                       "FIN during TLS handshake": eof)
    EOFError, asyncio.IncompleteReadError           -> eof
    dns.resolver.NXDOMAIN / NoAnswer, DNS parse errors -> dns_nxdomain | dns_no_answer
                                                       | dns_server_misbehaving
    zlib.error, httpx.DecodingError                 -> http_invalid_response
    httpx.TooManyRedirects                          -> http_too_many_redirects
    httpx.RemoteProtocolError                       -> eof (peer closed early) | http_invalid_response
    AddressRefused (a caller's address policy)      -> unknown_failure:address_refused
    anything else                                   -> unknown_failure:<type>: <message>
                                                       (every IP literal removed, 80 chars max)
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import socket
import ssl
import zlib

import dns.exception
import dns.message
import dns.name
import dns.resolver
import httpx

from probe.net._client import AddressRefused
from probe.net.scrub import scrub_all_addresses
from probe.schema import UNKNOWN_FAILURE_PREFIX

_ERRNO = {
    errno.ECONNREFUSED: "connection_refused",
    errno.ECONNRESET: "connection_reset",
    errno.EPIPE: "connection_reset",
    errno.ECONNABORTED: "connection_reset",
    errno.EHOSTUNREACH: "host_unreachable",
    errno.EHOSTDOWN: "host_unreachable",
    errno.ENETUNREACH: "network_unreachable",
    errno.ENETDOWN: "network_unreachable",
    errno.ETIMEDOUT: "generic_timeout",
}

# OpenSSL X509_V_ERR_* codes (x509_vfy.h) that mean "no trusted root for this chain".
_UNKNOWN_AUTHORITY = {2, 18, 19, 20, 21, 27}
# X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_HOSTNAME_MISMATCH = {62, 64}

_GAI_NXDOMAIN = {socket.EAI_NONAME}
_GAI_NODATA = {getattr(socket, "EAI_NODATA", -5), getattr(socket, "EAI_ADDRFAMILY", -9)}

_DETAIL_MAX = 80
# Python 3.11+ (anyio task groups raise these); absent on 3.10, where nothing raises them.
_GROUP: type | tuple[()] = getattr(builtins, "BaseExceptionGroup", ())


def _cert_failure(exc: ssl.SSLCertVerificationError) -> str:
    code = getattr(exc, "verify_code", None)
    if code in _HOSTNAME_MISMATCH:
        return "ssl_invalid_hostname"
    if code in _UNKNOWN_AUTHORITY:
        return "ssl_unknown_authority"
    return "ssl_invalid_certificate"


def _classify_one(exc: BaseException) -> str | None:
    """The failure for this exception alone, or None when it only wraps another one."""
    if isinstance(exc, AddressRefused):  # the caller's address policy (control helper)
        return unknown("address_refused")
    # Timeouts first: TimeoutError is an OSError subclass, httpx timeouts wrap nothing useful.
    if isinstance(exc, (TimeoutError, socket.timeout, asyncio.TimeoutError, httpx.TimeoutException)):
        return "generic_timeout"
    if isinstance(exc, dns.exception.Timeout):
        return "generic_timeout"
    # ssl errors are OSErrors whose errno is an SSL code, so they come before the errno table.
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _cert_failure(exc)
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "eof"
    if isinstance(exc, ssl.SSLError):
        return "tls_handshake_failure"
    if isinstance(exc, socket.gaierror):
        if exc.errno in _GAI_NXDOMAIN:
            return "dns_nxdomain"
        if exc.errno in _GAI_NODATA:
            return "dns_no_answer"
        if exc.errno == socket.EAI_AGAIN:
            # "Temporary failure in name resolution": the system resolver got no usable reply
            # in time. glibc says this when every nameserver timed out, when none could be
            # reached (no route, ICMP unreachable), and when a local stub (systemd-resolved,
            # dnsmasq) had no upstream and answered SERVFAIL for it: most often a probe
            # without a network, which must not read as a resolver that answered SERVFAIL
            # (a censor's signal). The rcode, when one came, is recorded by the probe's own
            # UDP/TCP/DoH queries, which see it directly (dns_servfail there).
            return "generic_timeout"
        return None
    if isinstance(exc, OSError):
        if exc.errno in _ERRNO:
            return _ERRNO[exc.errno]
        if type(exc) is ConnectionResetError and exc.errno is None and not exc.args:
            # asyncio's sslproto signals a FIN during the TLS handshake with a bare
            # ConnectionResetError (no errno, no message); a real RST always has ECONNRESET.
            return "eof"
        if isinstance(exc, ConnectionRefusedError):
            return "connection_refused"
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return "connection_reset"
        return None
    if isinstance(exc, (EOFError, asyncio.IncompleteReadError)):
        return "eof"
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "dns_nxdomain"
    if isinstance(exc, dns.resolver.NoAnswer):
        return "dns_no_answer"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "dns_servfail"
    if isinstance(exc, (dns.message.ShortHeader, dns.message.TrailingJunk, dns.exception.FormError)):
        return "dns_server_misbehaving"
    if isinstance(exc, (dns.name.BadLabelType, dns.message.UnknownHeaderField, dns.exception.SyntaxError)):
        return "dns_server_misbehaving"
    if isinstance(exc, (zlib.error, httpx.DecodingError)):
        return "http_invalid_response"  # a Content-Encoding that does not decode
    if isinstance(exc, httpx.TooManyRedirects):
        return "http_too_many_redirects"
    if isinstance(exc, httpx.RemoteProtocolError):
        msg = str(exc).lower()
        if "disconnected" in msg or "peer closed" in msg or "incomplete" in msg:
            return "eof"
        return "http_invalid_response"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, then what caused it, outermost first (bounded, cycle-safe)."""
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and len(seen) < 16 and all(cur is not s for s in seen):
        subs = getattr(cur, "exceptions", None) if isinstance(cur, _GROUP) else None
        if subs:
            seen.append(cur)
            cur = subs[0]
            continue
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def unknown(detail: str) -> str:
    """``unknown_failure:<detail>`` with IP literals removed and the detail kept short."""
    detail = scrub_all_addresses(" ".join(detail.split()))[:_DETAIL_MAX] or "?"
    return UNKNOWN_FAILURE_PREFIX + detail


def classify(exc: BaseException) -> str:
    """Map any exception raised by network I/O to a failure string of the closed set."""
    chain = _chain(exc)
    for e in chain:
        failure = _classify_one(e)
        if failure is not None:
            return failure
    # Nothing specific anywhere in the chain: name the innermost cause, it is the most telling.
    inner = chain[-1]
    message = str(inner)
    return unknown(f"{type(inner).__name__}: {message}" if message else type(inner).__name__)
