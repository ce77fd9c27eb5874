"""The probe's own addresses: found on this machine's interfaces, scrubbed from text, records
and log lines. The text rules are in probe.scrub (pure); this module adds discovery.

A page that echoes the client address, an error message or a header may carry the
volunteer's IP; everything the net layer stores passes through ``Scrubber.scrub`` first.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable

from probe.scrub import REPLACEMENT, IPAddress, scrub_all_addresses, scrub_record
from probe.scrub import Scrubber as _PureScrubber

__all__ = [
    "REPLACEMENT", "LogScrubFilter", "Scrubber", "default_scrubber", "discover_local_addresses",
    "install_log_filter", "parse_interface_listing", "scrub_all_addresses", "scrub_record",
]

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


class Scrubber(_PureScrubber):
    """The probe's Scrubber: :class:`probe.scrub.Scrubber` that also knows this machine's
    interface addresses (``discover``), found without sending a packet."""

    def __init__(
        self, addresses: Iterable[str] = (), *, discover: bool = True, paranoid: bool = False,
        public_nets: Iterable[str] = (),
    ) -> None:
        super().__init__(addresses, paranoid=paranoid, public_nets=public_nets)
        if discover:
            found = discover_local_addresses()
            if found:
                with self._lock:
                    self._set(set(self.addresses) | found)


_default: Scrubber | None = None
_default_lock = threading.Lock()


def default_scrubber() -> Scrubber:
    """The process's Scrubber: what a run measures with and what the log filter uses, so an
    address learned at the start of a run leaves log lines too."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Scrubber()
        return _default


class LogScrubFilter(logging.Filter):
    """On a handler: every record leaves with its message, arguments and traceback scrubbed
    (httpx logs request URLs at INFO and raw headers at DEBUG; an error may name an address)."""

    def __init__(self, scrubber: Callable[[], _PureScrubber] = default_scrubber) -> None:
        super().__init__()
        self._scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        s = self._scrubber()
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the template, drop the arguments
            message = str(record.msg)
        record.msg = s.scrub_log(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = s.scrub_log(record.exc_text)
        if record.stack_info:
            record.stack_info = s.scrub_log(record.stack_info)
        return True


def install_log_filter(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Add the scrubbing filter to the root logger's handlers (once each)."""
    for h in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, LogScrubFilter) for f in h.filters):
            h.addFilter(LogScrubFilter())
