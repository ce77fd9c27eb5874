"""Every textual encoding of an IPv4 address a page, a header or a host name may carry, and a
finder for them that works independently of probe.scrub (so a test can check the scrubber).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from urllib.parse import quote


def forms(addr: str) -> dict[str, str]:
    """Name -> the address written that way."""
    a = ipaddress.IPv4Address(addr)
    octets = str(a).split(".")
    return {
        "dotted": str(a),
        "dashed": "-".join(octets),
        "underscored": "_".join(octets),
        "hex": f"{int(a):08x}",
        "0xhex": f"0x{int(a):08X}",
        "decimal": str(int(a)),
        "zero-padded": ".".join(f"{int(o):03d}" for o in octets),
        "url-encoded": quote(str(a), safe="").replace(".", "%2E"),
        "base64": base64.b64encode(str(a).encode()).decode(),
        "in-addr.arpa": ".".join(reversed(octets)) + ".in-addr.arpa",
        "hostname": f"ip-{'-'.join(octets)}.example",
    }


def _patterns(addr: str) -> dict[str, re.Pattern[str]]:
    a = ipaddress.IPv4Address(addr)
    octets = str(a).split(".")
    pats: dict[str, str] = {}
    for name, sep in (("dotted", r"\."), ("dashed", "-"), ("underscored", "_"), ("url-encoded", "%2e")):
        padded = sep.join(f"0*{o}" for o in octets)
        backwards = sep.join(f"0*{o}" for o in reversed(octets))
        pats[name] = rf"(?<![0-9]){padded}(?![0-9])"
        pats[name + " reversed"] = rf"(?<![0-9]){backwards}(?![0-9])"
    pats["hex"] = rf"(?<![0-9a-f])(?:0x)?0*{int(a):x}(?![0-9a-f])"
    pats["decimal"] = rf"(?<![0-9]){int(a)}(?![0-9])"
    return {k: re.compile(v, re.IGNORECASE) for k, v in pats.items()}


_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")


def _base64_hits(text: str, needle: bytes) -> int:
    hits = 0
    for m in _B64_RUN.finditer(text):
        run = m.group(0).rstrip("=").replace("-", "+").replace("_", "/")
        for start in range(4):  # the address may start at any byte of the encoded data
            chunk = run[start:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            try:
                if needle in base64.b64decode(chunk):
                    hits += 1
                    break
            except (binascii.Error, ValueError):
                continue
    return hits


def find(text: str, addrs: list[str]) -> list[tuple[str, str, str]]:
    """(address, form, context) for every occurrence of any of ``addrs`` in ``text``."""
    found: list[tuple[str, str, str]] = []
    for addr in addrs:
        for name, pat in _patterns(addr).items():
            for m in pat.finditer(text):
                found.append((addr, name, text[max(0, m.start() - 40): m.end() + 40]))
        if _base64_hits(text, addr.encode()):
            found.append((addr, "base64", ""))
    return found
