"""TLS handshake with an SNI as a ``TlsHandshake`` observation, certificate details included.

The handshake verifies (system roots plus ``ca_bundle``); when verification fails, a second
handshake without verification fetches the certificate, so a record always names what the
server presented, and ``failure`` says why it does not validate (ssl_*).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from os import PathLike

from cryptography import x509
from cryptography.x509.oid import NameOID

from probe.net._client import unverified_context, verifying_context
from probe.net.clock import Clock
from probe.net.errors import classify, unknown
from probe.net.scrub import Scrubber
from probe.net.tcp import open_socket
from probe.schema import QuicHandshake, TlsHandshake

MAX_NAMES = 100  # SAN lists of CDN certificates run into the hundreds


def cert_names(der: bytes) -> tuple[list[str], str | None]:
    """(subject CN + DNS/IP SANs, issuer RFC 4514 string) of a DER certificate."""
    cert = x509.load_der_x509_certificate(der)
    names: list[str] = []
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        names.append(str(attr.value))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names.extend(san.get_values_for_type(x509.DNSName))
        names.extend(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        pass
    unique = list(dict.fromkeys(names))[:MAX_NAMES]
    return unique, cert.issuer.rfc4514_string()


async def _handshake(
    ip: str, port: int, sni: str | None, ctx: ssl.SSLContext, timeout: float
) -> ssl.SSLObject:
    """Connect and handshake; returns the SSLObject after closing the connection."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    sock = await open_socket(ip, port, timeout)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                sock=sock, ssl=ctx, server_hostname=sni or "", ssl_handshake_timeout=max(0.01, deadline - loop.time())
            ),
            max(0.01, deadline - loop.time()),
        )
    except BaseException:
        sock.close()
        raise
    obj = writer.get_extra_info("ssl_object")
    # abort, not close: a graceful TLS shutdown waits for a peer that may never answer.
    writer.transport.abort()
    return obj  # type: ignore[no-any-return]


def fill_certificate(rec: TlsHandshake | QuicHandshake, der: bytes, scrubber: Scrubber | None) -> None:
    """The peer certificate's hash, names and issuer on a TLS or QUIC handshake record (the
    names and issuer scrubbed: a certificate may be issued for the client's address)."""
    rec.peer_cert_sha256 = hashlib.sha256(der).hexdigest()
    try:
        names, issuer = cert_names(der)
    except Exception:  # a malformed certificate is data too
        names, issuer = [], None
    if scrubber is not None:
        names = [scrubber.scrub(n) or "" for n in names]
        issuer = scrubber.scrub(issuer)
    rec.peer_cert_names, rec.peer_cert_issuer = names, issuer


def _fill(rec: TlsHandshake, obj: ssl.SSLObject, scrubber: Scrubber | None) -> None:
    rec.tls_version = obj.version()
    cipher = obj.cipher()
    rec.cipher_suite = cipher[0] if cipher else None
    rec.alpn = obj.selected_alpn_protocol()
    der = obj.getpeercert(binary_form=True)
    if der:
        fill_certificate(rec, der, scrubber)


async def tls_handshake(
    ip: str,
    port: int,
    sni: str | None,
    *,
    clock: Clock,
    timeout: float,
    ca_bundle: str | PathLike[str] | None = None,
    scrubber: Scrubber | None = None,
    tag: str | None = None,
) -> TlsHandshake:
    """TCP connect + TLS handshake to ``ip:port`` with ``sni`` (None: no SNI), all within
    ``timeout``. ``cert_valid`` is True when chain and name validate for the SNI, False when
    they do not (``failure`` is then ssl_*), None when no certificate was seen."""
    rec = TlsHandshake(t0=clock.now(), t=0.0, failure=None, ip=ip, port=port, sni=sni, tag=tag)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    verifying = sni is not None
    ctx = verifying_context(ca_bundle, purpose="tls") if verifying else unverified_context(purpose="tls")
    try:
        obj = await _handshake(ip, port, sni, ctx, timeout)
        _fill(rec, obj, scrubber)
        rec.cert_valid = True if verifying else None
    except ssl.SSLCertVerificationError as exc:
        rec.failure = classify(exc)
        rec.cert_valid = False
        # The handshake itself worked up to the certificate; fetch it without verification.
        remaining = deadline - loop.time()
        if remaining > 0:
            try:
                obj = await _handshake(ip, port, sni, unverified_context(purpose="tls"), remaining)
                _fill(rec, obj, scrubber)
            except Exception:
                pass  # keep the verification failure; the second look is best effort
    except ValueError:
        rec.failure = unknown("invalid_address")
    except Exception as exc:
        rec.failure = classify(exc)
    rec.t = clock.now()
    if rec.failure is not None and scrubber is not None:
        rec.failure = scrubber.scrub(rec.failure)
    return rec
