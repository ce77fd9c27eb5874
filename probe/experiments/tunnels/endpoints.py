"""Tunnel endpoints as list inputs: URLs such as
``openvpn://203.0.113.5:1194/?transport=udp&tls_auth=<base64url>&key_direction=1``.
Parsing says exactly what is wrong with a row (InputError naming the input).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from probe.experiments.base import InputError


@dataclass(frozen=True)
class Endpoint:
    """One tunnel endpoint: where it is, how to reach it, and the protocol's parameters."""

    url: str
    protocol: str  # the URL scheme: openvpn, wireguard, tor, obfs4, ikev2
    ip: str
    port: int
    transport: str  # "udp" | "tcp"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


def parse_endpoint(
    url: str,
    schemes: tuple[str, ...],
    *,
    transports: tuple[str, ...],
    allowed: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
) -> Endpoint:
    """Parse and check an endpoint URL. ``transports[0]`` is the default transport; ``allowed``
    are the query parameters the protocol understands (besides ``transport``)."""

    def bad(why: str) -> InputError:
        return InputError(f"{url!r}: {why}")

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise bad(f"malformed endpoint url ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise bad(f"expected an endpoint URL {' or '.join(s + '://...' for s in schemes)}, got scheme {parts.scheme or '(none)'!r}")
    host = parts.hostname
    if not host:
        raise bad("missing address")
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        raise bad(f"the host must be an IP address, got {host!r}") from None
    if port is None or port == 0:
        raise bad("missing port (e.g. :1194)")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise bad(f"malformed query ({exc})") from None
    params: dict[str, str] = {}
    for key, values in query.items():
        if len(values) != 1:
            raise bad(f"parameter {key!r} is given {len(values)} times")
        if key != "transport" and key not in allowed:
            known = ", ".join(("transport", *allowed)) if len(transports) > 1 else ", ".join(allowed) or "none"
            raise bad(f"unknown parameter {key!r} (known: {known})")
        params[key] = values[0]
    transport = params.pop("transport", transports[0]).lower()
    if transport not in transports:
        raise bad(f"transport must be {' or '.join(transports)}, got {transport!r}")
    for key in required:
        if not params.get(key):
            raise bad(f"missing parameter {key!r}")
    return Endpoint(url=url, protocol=scheme, ip=ip, port=port, transport=transport, params=params)


def decode_key(url: str, name: str, value: str, *, size: int | None = None) -> bytes:
    """A key given in base64url (standard base64 and missing padding accepted)."""
    # parse_qs turned an unescaped '+' of standard base64 into a space: put it back.
    text = value.strip().replace(" ", "+").replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{url!r}: parameter {name!r} is not base64url") from None
    if size is not None and len(raw) != size:
        raise InputError(f"{url!r}: parameter {name!r} must be {size} bytes, got {len(raw)}")
    return raw


def encode_key(raw: bytes) -> str:
    """base64url without padding: safe in a URL query as it is."""
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
