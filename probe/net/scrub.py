"""Scrubbing of the probe's own addresses from any text captured from the network.

A page that echoes the client address, an error message or a header may carry the
volunteer's IP; everything the net layer stores passes through ``Scrubber.scrub`` first.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from typing import overload

REPLACEMENT = "[scrubbed]"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Candidate tokens; each is parsed with ipaddress before it is compared, so false matches of
# the regexes cost nothing but a failed parse. Lookarounds stop "10.0.0.1" matching inside
# "110.0.0.12". The dashed form catches reverse-DNS names such as "ip-203-0-113-7.example".
_V4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d]|\.\d)")
_V4_DASHED = re.compile(r"(?<!\d)(?<!\d-)(?:\d{1,3}-){3}\d{1,3}(?!\d|-\d)")
_V6 = re.compile(r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?:%[\w.-]+)?(?![0-9A-Za-z:.])")

_SIOCGIFADDR = 0x8915


def _parse(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None


def discover_local_addresses() -> set[IPAddress]:
    """Addresses of this machine's interfaces (not loopback), found without sending a packet.

    Linux: IPv6 from /proc/net/if_inet6, IPv4 per interface with the SIOCGIFADDR ioctl.
    Elsewhere: the output of ifconfig / ipconfig. Best effort; never raises.
    """
    found: set[IPAddress] = set()
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as fh:
            for line in fh:
                hexaddr = line.split(" ", 1)[0]
                if len(hexaddr) == 32:
                    found.add(ipaddress.IPv6Address(bytes.fromhex(hexaddr)))
    except OSError:
        pass
    if sys.platform.startswith("linux"):
        import fcntl  # POSIX only

        found |= _from_fib_trie()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _, name in socket.if_nameindex():
                    try:
                        req = struct.pack("256s", name.encode()[:15])
                        res = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
                        found.add(ipaddress.IPv4Address(res[20:24]))
                    except OSError:
                        continue  # interface without an IPv4 address
        except OSError:
            pass
    else:
        found |= _from_interface_listing()
    return {a for a in found if not a.is_loopback and not a.is_unspecified}


def _from_fib_trie() -> set[IPAddress]:
    """Every local IPv4 address, secondary ones included ("/32 host LOCAL" entries)."""
    found: set[IPAddress] = set()
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as fh:
            last: str | None = None
            for line in fh:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif "/32 host LOCAL" in text and last is not None:
                    addr = _parse(last)
                    if addr is not None:
                        found.add(addr)
    except OSError:
        pass
    return found


def parse_interface_listing(out: str) -> set[IPAddress]:
    """Addresses in ``ifconfig`` (inet/inet6 lines) or ``ipconfig`` ("... Address . : X") output."""
    found: set[IPAddress] = set()
    for line in out.splitlines():
        words = line.split()
        if len(words) > 1 and words[0] in ("inet", "inet6"):
            candidate = words[1]
        elif "Address" in line and ":" in line:
            candidate = line.split(":", 1)[1].strip().split("(", 1)[0]
        else:
            continue
        addr = _parse(candidate)
        if addr is not None:
            found.add(addr)
    return found


def _from_interface_listing() -> set[IPAddress]:
    """macOS/BSD ``ifconfig`` or Windows ``ipconfig`` output, parsed once. Not
    getaddrinfo(gethostname()): that may send a DNS query for our own name."""
    found: set[IPAddress] = set()
    for cmd in (["ifconfig", "-a"], ["ipconfig"]):
        exe = shutil.which(cmd[0])
        if exe is None:
            continue
        try:
            out = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=2, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        found |= parse_interface_listing(out)
        break
    return found


class Scrubber:
    """Knows the probe's own addresses and replaces them with ``[scrubbed]`` in text.

    Matching is by parsed address, so every textual form of an IPv6 address (compressed,
    expanded, upper case, IPv4-mapped) is caught, and for an IPv6 address (not link-local) the whole /64
    (privacy-extension addresses rotate inside it). Thread-safe for ``add`` during a run.
    """

    def __init__(self, addresses: Iterable[str] = (), *, discover: bool = True) -> None:
        self._lock = threading.Lock()
        self._addresses: frozenset[IPAddress] = frozenset()
        self._v6_nets: frozenset[ipaddress.IPv6Network] = frozenset()
        self._needles: tuple[str, ...] = ()
        self._needles_b: tuple[bytes, ...] = ()
        initial: set[IPAddress] = discover_local_addresses() if discover else set()
        for a in addresses:
            parsed = _parse(a)
            if parsed is None:
                raise ValueError(f"not an IP address: {a!r}")
            initial.add(parsed)
        self._set(initial)

    def _set(self, addrs: set[IPAddress]) -> None:
        expanded = set(addrs)
        for a in addrs:  # the IPv4 inside an IPv4-mapped IPv6 address is the same host
            if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
                expanded.add(a.ipv4_mapped)
        self._addresses = frozenset(expanded)
        self._v6_nets = frozenset(
            ipaddress.IPv6Network((int(a) >> 64 << 64, 64))
            for a in expanded
            # all of fe80::/64 is shared by every host on a link: scrubbing it would hide
            # nothing of ours and everything of theirs
            if isinstance(a, ipaddress.IPv6Address) and not (a.is_link_local or a.is_loopback or a.is_multicast)
            and a.ipv4_mapped is None
        )

        # Cheap substrings (lower case) that any textual form of an own address contains; text
        # without any of them skips the regexes, which cost ~0.5 s per MiB.
        needles: set[str] = set()
        for a in expanded:
            if isinstance(a, ipaddress.IPv4Address):
                needles.update((str(a), str(a).replace(".", "-")))
            elif a.ipv4_mapped is None:
                first = int(a) >> 112
                needles.update((f"{first:x}:", f"{first:04x}:") if first else (":",))
        self._needles = tuple(needles)
        self._needles_b = tuple(n.encode("ascii") for n in needles)

    def _may_contain(self, text: str) -> bool:
        low = text.lower()
        return any(n in low for n in self._needles)

    def add(self, address: str) -> None:
        """Add an address seen for the probe at run time (e.g. what a control helper saw)."""
        parsed = _parse(address)
        if parsed is None:
            return  # nothing to scrub for; a bad hint must not break a run
        with self._lock:
            self._set(set(self._addresses) | {parsed})

    @property
    def addresses(self) -> frozenset[IPAddress]:
        return self._addresses

    def is_own(self, addr: IPAddress) -> bool:
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None and addr.ipv4_mapped in self._addresses:
                return True
            if any(addr in net for net in self._v6_nets):
                return True
        return addr in self._addresses

    @overload
    def scrub(self, text: str) -> str: ...
    @overload
    def scrub(self, text: None) -> None: ...
    def scrub(self, text: str | None) -> str | None:
        """``text`` with every own address replaced by ``[scrubbed]`` (None stays None)."""
        if not text or not self._addresses or not self._may_contain(text):
            return text
        return _replace(text, self.is_own)

    def scrub_bytes(self, data: bytes) -> bytes:
        """Bytes form of :meth:`scrub`, for hashing a body; decoded as latin-1 (lossless)."""
        if not data or not self._addresses:
            return data
        low = data.lower()
        if not any(n in low for n in self._needles_b):
            return data
        text = data.decode("latin-1")
        out = _replace(text, self.is_own)
        return data if out is text else out.encode("latin-1")


def _replace(text: str, is_own: Callable[[IPAddress], bool]) -> str:
    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        addr = _parse(token.replace("-", ".") if m.re is _V4_DASHED else token)
        return REPLACEMENT if addr is not None and is_own(addr) else token

    out = text
    if ":" in out:
        out = _V6.sub(sub, out)
    if "." in out:
        out = _V4.sub(sub, out)
    if "-" in out:
        out = _V4_DASHED.sub(sub, out)
    return text if out == text else out


def scrub_all_addresses(text: str) -> str:
    """Replace every IP literal in ``text``: for error details, where the probe may not even
    know its public address (NAT), so no address is kept at all."""
    return _replace(text, lambda _a: True)
