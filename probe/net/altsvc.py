"""Alt-Svc (RFC 7838): does an HTTP response advertise HTTP/3?

Browsers try HTTP/3 with an origin only after a response advertised it (``Alt-Svc: h3=":443"``),
and OONI's web_connectivity does the same; the QUIC step of web_connectivity stops waiting for
QUIC when the TCP path's response from the target does not advertise it (see
``probe.experiments.web_connectivity``). Pure functions, tested without sockets.

    Alt-Svc       = clear / 1#alt-value
    alt-value     = alternative *( OWS ";" OWS parameter )
    alternative   = protocol-id "=" alt-authority       ; protocol-id: percent-encoded ALPN id
    parameter     = token "=" ( token / quoted-string )  ; ma, persist
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

# HTTP/3 as RFC 9114 names it ("h3") and the IETF drafts' ALPN ids ("h3-29", ...): servers
# still advertise both. Google's old "h3-Q050"-style ids are gQUIC, which aioquic does not speak.
_H3 = re.compile(r"h3(-\d+)?")


@dataclass
class AltService:
    protocol: str  # the ALPN id, percent-decoded
    authority: str  # "[host]:port" as given (host empty: the origin's host)
    params: dict[str, str] = field(default_factory=dict)


def _split(value: str, sep: str) -> list[str]:
    """``value`` split at ``sep`` outside quoted strings (a quoted-string may hold commas)."""
    parts: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] == '"':
        return re.sub(r"\\(.)", r"\1", s[1:-1])
    return s


def parse(values: Iterable[str]) -> list[AltService] | None:
    """The alternatives of one response's Alt-Svc field lines (several lines form one list).
    None when the response cleared them (``clear``): a ``clear`` invalidates every alternative
    of the origin (RFC 7838 3), so it wins over entries beside it. Malformed entries are skipped."""
    out: list[AltService] = []
    for value in values:
        for element in _split(value, ","):
            element = element.strip()
            if not element:
                continue
            if element.lower() == "clear":
                return None
            alternative, *params = _split(element, ";")
            proto, eq, authority = alternative.partition("=")
            if not eq or not proto.strip():
                continue
            parsed: dict[str, str] = {}
            for param in params:
                name, peq, pval = param.partition("=")
                if peq:
                    parsed[name.strip().lower()] = _unquote(pval)
            out.append(AltService(unquote(proto.strip()), _unquote(authority), parsed))
    return out


def advertises_h3(values: Iterable[str]) -> bool:
    """Whether the Alt-Svc field lines offer HTTP/3 (``h3`` or a draft ``h3-NN``). An entry with
    ``ma=0`` is stale the moment it arrives (RFC 7838 3.1: max-age in seconds), so no client
    would use it: it does not count."""
    services = parse(values)
    if not services:
        return False
    return any(_H3.fullmatch(s.protocol) and s.params.get("ma", "").strip() != "0" for s in services)
