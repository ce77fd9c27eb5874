"""Removing the vantage point's own addresses from text and records, in every encoding.

Pure (no I/O): the probe, the control helper and the OONI importer share it. The probe's
interface addresses are found by ``probe.net.scrub``; its public address (behind NAT) is
learned at the start of a run and only ever held here, in memory.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import ipaddress
import re
import threading
from collections.abc import Callable, Collection, Iterable
from typing import Any, overload
from urllib.parse import urlsplit

REPLACEMENT = "[scrubbed]"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Each regex finds candidate tokens of one encoding; every candidate is parsed and compared by
# value, so a false candidate costs a parse, never a replacement. Lookarounds keep a token from
# matching inside a longer number ("10.0.0.1" is not inside "110.0.0.12").
#
# IPv4 with one separator throughout: dotted, dashed ("ip-10-1-2-3.isp"), underscored,
# URL-encoded ("10%2E1%2E2%2E3"), octets zero-padded or not ("010.001.002.003").
_V4 = re.compile(
    r"(?=[0-9])(?<![0-9])(?<![0-9][._-])(?<![0-9]%2[eE])"
    r"(0{0,3}\d{1,3})(\.|-|_|%2[eE])(0{0,3}\d{1,3})\2(0{0,3}\d{1,3})\2(0{0,3}\d{1,3})"
    r"(?![0-9])(?!(?:[._-]|%2[eE])[0-9])"
)
# IPv6 textual forms (compressed, expanded, upper case, with a zone, IPv4 embedded).
_V6 = re.compile(
    r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,8}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?"
    r"(?:%[\w-]+)?(?![0-9A-Za-z:]|\.[0-9])"
)
# IPv6 URL-encoded ("2001%3Adb8%3A%3A1") and dashed as in "2001-db8--1.ipv6-literal.net".
_V6_URL = re.compile(r"(?i)(?<![0-9a-z])(?:[0-9a-f]{0,4}%3a){2,7}[0-9a-f]{0,4}(?![0-9a-z])")
_V6_DASHED = re.compile(r"(?i)(?<![0-9a-z])(?:[0-9a-f]{0,4}-){2,7}[0-9a-f]{0,4}(?![0-9a-z])")
# Reverse-DNS names of an IPv6 address or of its /64 (16 to 32 nibbles).
_IP6_ARPA = re.compile(r"(?i)(?<![0-9a-z.])((?:[0-9a-f]\.){16,32})ip6\.arpa")
# Numbers: hex ("0a010203", "0x0a010203", "0xa010203"), 32 hex digits of an IPv6 address,
# decimal ("167838211", as in http://167838211/). Compared with own addresses only: in a page
# they are far more often lengths, ids and hashes than addresses.
_HEX = re.compile(r"(?=[0-9a-fA-F])(?<![0-9a-fA-F])(?:0[xX]([0-9a-fA-F]{1,8})|([0-9a-fA-F]{8})|([0-9a-fA-F]{32}))(?![0-9a-fA-F])")
_DEC = re.compile(r"(?<![0-9])[0-9]{7,10}(?![0-9])")

# Whether to replace a token, given its readings (an IPv4 token is read in both orders).
_Decide = Callable[[tuple[IPAddress, ...]], bool]


def _parse(text: str) -> IPAddress | None:
    # The same few addresses (resolvers, targets, answers) are parsed again and again.
    return _parse_cached(text) if len(text) <= 64 else _parse_address(text)


def _parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None


_parse_cached = functools.lru_cache(maxsize=1024)(_parse_address)


def parse_address(text: str) -> IPAddress | None:
    """An address from "IP", "[IPv6]", "IP:PORT" or "[IPv6]:PORT" (None when it is not one)."""
    text = text.strip()
    addr = _parse(text)
    if addr is not None:
        return addr
    if text.startswith("["):
        return _parse(text[1:].split("]", 1)[0])
    if text.count(":") == 1:
        return _parse(text.split(":", 1)[0])
    return None


def _v4_candidates(m: re.Match[str]) -> tuple[IPAddress, ...]:
    octets = [int(m.group(i)) for i in (1, 3, 4, 5)]
    if max(octets) > 255:
        return ()
    forward = ipaddress.IPv4Address(bytes(octets))
    backward = ipaddress.IPv4Address(bytes(octets[::-1]))
    # The reversed order is how in-addr.arpa names (and some ISPs' host names) write it; the
    # first reading is the one the text means (the reversed one in an in-addr.arpa name).
    if m.string[m.end():m.end() + 13].lower() == ".in-addr.arpa":
        return (backward, forward)
    return (forward, backward)


def _sub_v4(text: str, decide: _Decide) -> str:
    def sub(m: re.Match[str]) -> str:
        readings = _v4_candidates(m)
        return REPLACEMENT if readings and decide(readings) else m.group(0)

    return _V4.sub(sub, text)


def _sub_v6(text: str, decide: _Decide) -> str:
    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        addr = _parse(token.lower().replace("%3a", ":").replace("-", ":") if m.re is not _V6 else token)
        if addr is not None and decide((addr,)):
            return REPLACEMENT
        if m.re is _V6 and token.count(":") > 2:
            # "2001:db8::1:8080": an address with its port and no brackets (ambiguous, but seen;
            # the whole may even parse as another address)
            head, tail = token.rsplit(":", 1)
            first = _parse(head)
            if first is not None and decide((first,)):
                return REPLACEMENT + ":" + tail
        return token

    def arpa(m: re.Match[str]) -> str:
        nibbles = m.group(1).replace(".", "")[::-1].ljust(32, "0")
        addr = ipaddress.IPv6Address(int(nibbles, 16))
        return REPLACEMENT if decide((addr,)) else m.group(0)

    out = text
    if ":" in out:
        out = _V6.sub(sub, out)
    low = out.lower()
    if "%3a" in low:
        out = _V6_URL.sub(sub, out)
    if "-" in out:
        out = _V6_DASHED.sub(sub, out)
    if "ip6.arpa" in low:
        out = _IP6_ARPA.sub(arpa, out)
    return out


def _sub_numbers(text: str, is_own: Callable[[IPAddress], bool]) -> str:
    def hex_sub(m: re.Match[str]) -> str:
        short, v4, v6 = m.groups()
        addr: IPAddress = (
            ipaddress.IPv6Address(int(v6, 16)) if v6 else ipaddress.IPv4Address(int(short or v4, 16))
        )
        return REPLACEMENT if is_own(addr) else m.group(0)

    def dec_sub(m: re.Match[str]) -> str:
        value = int(m.group(0))
        return REPLACEMENT if value < 2**32 and is_own(ipaddress.IPv4Address(value)) else m.group(0)

    return _DEC.sub(dec_sub, _HEX.sub(hex_sub, text))


def _base64_needles(addr: IPAddress) -> set[str]:
    """The base64 characters that encode ``str(addr)`` wherever it sits in an encoded string:
    one run per alignment (0, 1 or 2 bytes before it), only the characters fully inside it."""
    raw = str(addr).encode("ascii")
    found: set[str] = set()
    for shift in range(3):
        enc = base64.b64encode(b"\0" * shift + raw + b"\0\0").decode("ascii")
        lo = -(-8 * shift // 6)
        hi = (8 * shift + 8 * len(raw)) // 6
        chunk = enc[lo:hi]
        if len(chunk) >= 8:  # shorter runs would match unrelated base64 data
            found.update((chunk, chunk.replace("+", "-").replace("/", "_")))
    return found


def _reversed(addr: IPAddress) -> IPAddress:
    return ipaddress.IPv4Address(addr.packed[::-1]) if isinstance(addr, ipaddress.IPv4Address) else addr


def _needles(addrs: Iterable[IPAddress]) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """Cheap substrings (lower case) that every non-base64 encoding of an address contains:
    per address, groups of which each must have a member in the text. Text without them
    skips the regular expressions (~0.2 s per MiB), as most pages do."""
    seps = (".", "-", "_", "%2e")
    out: list[tuple[tuple[str, ...], ...]] = []
    for a in addrs:
        if isinstance(a, ipaddress.IPv4Address):
            b, c = a.packed[1], a.packed[2]
            # The 2nd and 3rd octets are followed by a separator in both orders, padded or not.
            out.append((tuple(f"{b}{s}" for s in seps), tuple(f"{c}{s}" for s in seps)))
            out.append(((f"{int(a):x}", str(int(a))),))  # hex (padded or not), decimal
        else:
            first = int(a) >> 112
            # the first group: written with or without leading zeros, in colon, %3A or dashed
            # forms, and in the 32 hex digits; a reverse name ends in ip6.arpa
            out.append(((f"{first:x}", "ip6.arpa"),))
    return tuple(out)


# Runs of base64 long enough to hold a dotted IPv4 address (7 characters encode to 12).
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{12,}")


def literals_in(text: str, *, base64_too: bool = False) -> set[IPAddress]:
    """Every IP address written in ``text`` in a textual form (both orders of a 4-part form);
    with ``base64_too`` also those inside base64 runs (a cookie may carry only that form)."""
    plain, encoded = _literals(text)
    return set(plain | encoded) if base64_too else set(plain)


# Short strings repeat from record to record (experiment names, statuses, resolvers, header
# values): their literals are looked up once. Longer ones (bodies) are read every time, so the
# cache stays small (at most _LITERALS_CACHED x _LITERALS_CACHE_MAX characters).
_LITERALS_CACHE_MAX = 256
_LITERALS_CACHED = 1024


def _literals(text: str) -> tuple[frozenset[IPAddress], frozenset[IPAddress]]:
    """(the literals of ``text``, those only inside its base64 runs): pure, so cached."""
    if len(text) <= _LITERALS_CACHE_MAX:
        return _literals_cached(text)
    return _read_literals(text)


def _read_literals(text: str) -> tuple[frozenset[IPAddress], frozenset[IPAddress]]:
    found: set[IPAddress] = set()

    def collect(readings: tuple[IPAddress, ...]) -> bool:
        found.update(readings)
        return False

    _sub_v4(text, collect)
    _sub_v6(text, collect)
    plain = frozenset(found)
    found = set()
    for m in _BASE64_RUN.finditer(text):
        run = m.group(0).replace("-", "+").replace("_", "/")
        for start in range(4):  # the encoded data may start at any byte before the address
            chunk = run[start:]
            chunk = chunk[: len(chunk) - len(chunk) % 4]
            try:
                decoded = base64.b64decode(chunk, validate=True).decode("latin-1")
            except ValueError:
                continue
            _sub_v4(decoded, collect)
            _sub_v6(decoded, collect)
    return plain, frozenset(found)


_literals_cached = functools.lru_cache(maxsize=_LITERALS_CACHED)(_read_literals)


def scrub_all_addresses(text: str) -> str:
    """Replace every IP literal in ``text``: for error details, where the probe may not even
    know its public address (NAT), so no address is kept at all."""
    return _sub_v4(_sub_v6(text, lambda _r: True), lambda _r: True)


class Scrubber:
    """Knows the vantage point's own addresses and replaces them with ``[scrubbed]``.

    Matching is by parsed address, so every encoding listed in the module's regexes is caught,
    and for an IPv6 address (not link-local) the whole /64 (privacy-extension addresses rotate
    inside it). ``paranoid`` is set when the public address could not be learned: then log
    lines lose every IP literal that may be public (:meth:`may_be_public`), and
    :func:`scrub_record` every such literal that is not one of the measurement's own targets.
    Thread-safe for ``add`` during a run.
    """

    def __init__(
        self, addresses: Iterable[str] = (), *, paranoid: bool = False, public_nets: Iterable[str] = ()
    ) -> None:
        self._lock = threading.Lock()
        self.paranoid = paranoid
        # Networks treated as public in paranoid mode besides the globally routable ones (labs).
        self.public_nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in public_nets
        )
        self._addresses: frozenset[IPAddress] = frozenset()
        self._v6_nets: frozenset[ipaddress.IPv6Network] = frozenset()
        self._base64: tuple[str, ...] = ()
        self._needles: tuple[tuple[tuple[str, ...], ...], ...] = ()
        self._log_suspects: set[IPAddress] = set()
        self._log_scrubber: Scrubber | None = None
        initial: set[IPAddress] = set()
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
        self._v6_nets = frozenset(
            ipaddress.IPv6Network((int(a) >> 64 << 64, 64))
            for a in expanded
            # all of fe80::/64 is shared by every host on a link: scrubbing it would hide
            # nothing of ours and everything of theirs
            if isinstance(a, ipaddress.IPv6Address) and not (a.is_link_local or a.is_loopback or a.is_multicast)
            and a.ipv4_mapped is None
        )
        self._base64 = tuple(sorted({n for a in expanded for n in _base64_needles(a)}, key=len, reverse=True))
        self._needles = _needles(expanded)
        self._addresses = frozenset(expanded)
        self._quiet_texts: dict[str, bool] = {}  # short text -> _quiet(text), for these addresses
        self._log_scrubber = None  # rebuilt with the new addresses on the next paranoid log line

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

    def may_be_public(self, addr: IPAddress) -> bool:
        """Whether ``addr`` could be a vantage point's public address as a remote site sees it:
        globally routable (private, CGNAT, loopback and other special-purpose space never is,
        so a censor's blockpage at 10.10.34.34 survives paranoid mode), or in ``public_nets``."""
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return addr.is_global or any(addr in net for net in self.public_nets)

    def is_own(self, addr: IPAddress) -> bool:
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None and addr.ipv4_mapped in self._addresses:
                return True
            if any(addr in net for net in self._v6_nets):
                return True
        return addr in self._addresses

    def _own_reading(self, readings: tuple[IPAddress, ...]) -> bool:
        return any(self.is_own(a) for a in readings)

    @overload
    def scrub(self, text: str) -> str: ...
    @overload
    def scrub(self, text: None) -> None: ...
    def scrub(self, text: str | None) -> str | None:
        """``text`` with every own address, in any encoding, replaced by ``[scrubbed]``."""
        if not text or not self._addresses or self._quiet(text):
            return text
        return self._replace(text, self._own_reading)

    def scrub_literals(self, text: str, keep: Collection[IPAddress] = ()) -> str:
        """``text`` without its own addresses (any encoding) nor any IP literal not in ``keep``."""
        if not text:
            return text
        is_own, may_be_public = self.is_own, self.may_be_public

        def decide(readings: tuple[IPAddress, ...]) -> bool:
            if any(is_own(a) for a in readings):
                return True
            return may_be_public(readings[0]) and not any(a in keep for a in readings)

        out = self._replace(text, decide, literals=True) if self._addresses else _sub_v4(_sub_v6(text, decide), decide)
        return text if out == text else out

    def scrub_log(self, text: str) -> str:
        """A log line: own addresses out, and in paranoid mode every IP literal and every
        other encoding (hex, decimal, base64) of any address a log line has held so far."""
        if not self.paranoid or not text:
            return self.scrub(text)
        seen = {a for a in literals_in(text, base64_too=True) if not self.is_own(a)}
        with self._lock:
            if not seen <= self._log_suspects or self._log_scrubber is None:
                self._log_suspects |= seen
                self._log_scrubber = self.with_suspects(self._log_suspects)
            derived = self._log_scrubber
        return derived.scrub_literals(text)

    def with_suspects(self, suspects: Iterable[IPAddress]) -> Scrubber:
        """A scrubber that treats ``suspects`` (literals seen where the public address might
        be) as own addresses too, so their hex, decimal and base64 forms go with them; this
        one when none of them may be public (it would scrub exactly what this one does)."""
        public = {a for a in suspects if self.may_be_public(a)}
        if public <= self._addresses:
            return self
        derived = Scrubber(paranoid=self.paranoid)
        derived.public_nets = self.public_nets
        derived._set(set(self._addresses) | public)
        derived._v6_nets = self._v6_nets  # a suspect is one address, not its /64 (a target may share it)
        return derived

    def scrub_bytes(self, data: bytes) -> bytes:
        """Bytes form of :meth:`scrub`, for hashing a body (a hash of a page that echoes the
        address would let anyone who knows the page find the address); latin-1 is lossless.
        In paranoid mode every IP literal goes, as the address is not known."""
        if not data or not (self._addresses or self.paranoid):
            return data
        text = data.decode("latin-1")
        out = self.scrub_literals(text) if self.paranoid else self._replace(text, self._own_reading)
        return data if out is text or out == text else out.encode("latin-1")

    def _quiet(self, text: str) -> bool:
        """Whether ``text`` holds no trace of an own address: no base64 needle and none of the
        needles of ``_may_contain``. Then :meth:`scrub` leaves it as it is, and so does
        :meth:`scrub_literals` when ``text`` also holds no IP literal (``_literals(text)[0]``
        empty), for only an own address written as base64 or as a number could go.
        Remembered for short texts (they repeat from record to record)."""
        if len(text) > _LITERALS_CACHE_MAX:
            return not any(n in text for n in self._base64) and not self._may_contain(text)
        quiet = self._quiet_texts.get(text)
        if quiet is None:
            quiet = not any(n in text for n in self._base64) and not self._may_contain(text)
            if len(self._quiet_texts) >= _LITERALS_CACHED:
                self._quiet_texts.clear()
            self._quiet_texts[text] = quiet
        return quiet

    def _may_contain(self, text: str) -> bool:
        low = text.lower()
        return any(all(any(n in low for n in group) for group in groups) for groups in self._needles)

    def _replace(self, text: str, decide: _Decide, *, literals: bool = False) -> str:
        out = text
        for needle in self._base64:  # case-sensitive, before the regexes change the text
            if needle in out:
                out = out.replace(needle, REPLACEMENT)
        if not literals and not self._may_contain(out):
            return text if out == text else out
        out = _sub_v6(out, decide)
        out = _sub_v4(out, decide)
        out = _sub_numbers(out, self.is_own)
        return text if out == text else out


# --------------------------------------------------------------------------- records

# Identifiers and hashes the probe made itself: never captured text, and rewriting them would
# break the links between rows (a uuid's hex groups can look like a hex address).
_NOT_CAPTURED = frozenset({
    "measurement_id", "run_id", "control_for", "origin_uid", "body_sha256", "peer_cert_sha256",
})


def target_addresses(m: Any) -> set[IPAddress]:
    """The addresses a measurement was about: literals of its input, what its input's host
    resolved to, its resolvers, and what it connected to by TCP, TLS or a tunnel. Not the
    addresses of redirect hops: a redirect is captured content, and may point at the probe."""
    keep = literals_in(m.input)
    try:
        host = (urlsplit(m.input).hostname or "").lower()
    except ValueError:
        host = ""
    for q in m.dns:
        resolver = parse_address(q.resolver) if q.resolver else None
        if resolver is None and q.resolver:
            try:
                doh_host = urlsplit(q.resolver).hostname
            except ValueError:
                doh_host = None
            resolver = _parse(doh_host) if doh_host else None
        if resolver is not None:
            keep.add(resolver)
        if q.hostname.lower().rstrip(".") == host and q.tag != "redirect":
            for a in q.answers:
                parsed = _parse(a.value) if a.answer_type in ("A", "AAAA") else None
                if parsed is not None:
                    keep.add(parsed)
    for obs in (*m.tcp, *m.tls, *m.vpn, *getattr(m, "quic", ())):
        parsed = _parse(obs.ip)
        if parsed is not None:
            keep.add(parsed)
    return keep


def scrub_record(m: Any, scrubber: Scrubber) -> None:
    """Scrub every string of a record in place: every field, list and nested record.

    Own addresses go everywhere; in paranoid mode every IP literal that is not one of the
    measurement's targets goes as well, so an address field equal to the probe's address
    (a redirect to it, an AAAA answer) becomes ``[scrubbed]``.
    """
    if scrubber.paranoid:
        keep = target_addresses(m)
        places = _strings(m)
        # Literals of this record that are not its targets may be the public address: their
        # other encodings (hex, decimal, base64) in the same record go too.
        seen: set[IPAddress] = set()
        plain: dict[str, bool] = {}  # text -> holds an IP literal
        for _, _, text in places:
            if text not in plain:
                literals, encoded = _literals(text)
                seen |= literals
                seen |= encoded
                plain[text] = bool(literals)
        derived = scrubber.with_suspects(a for a in seen if a not in keep and _reversed(a) not in keep)

        def fn(text: str) -> str:
            if not plain[text] and derived._quiet(text):
                return text  # what scrub_literals would return, without its four regex passes
            return derived.scrub_literals(text, keep)
    elif scrubber.addresses:
        places = _strings(m)
        fn = scrubber.scrub
    else:
        return
    for owner, key, text in places:
        new = fn(text)
        if new != text:
            if isinstance(owner, list):
                owner[key] = new  # type: ignore[index]
            else:
                setattr(owner, key, new)  # type: ignore[arg-type]


# Per record class: the names of its fields that may hold captured text (str, list or record).
_FIELDS: dict[type, tuple[str, ...]] = {}


def _captured_fields(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls) if f.name not in _NOT_CAPTURED)
        _FIELDS[cls] = names
    return names


def _strings(obj: Any) -> list[tuple[Any, str | int, str]]:
    """Every string of ``obj`` (a record), with where it sits: (record, field name, text) or
    (list, index, text); nested records and lists of them included, identifiers not."""
    out: list[tuple[Any, str | int, str]] = []
    _collect(obj, out)
    return out


def _collect(obj: Any, out: list[tuple[Any, str | int, str]]) -> None:
    for name in _captured_fields(type(obj)):
        value = getattr(obj, name)
        if isinstance(value, str):
            out.append((obj, name, value))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str):
                    out.append((value, i, item))
                elif type(item) in _FIELDS or (dataclasses.is_dataclass(item) and not isinstance(item, type)):
                    _collect(item, out)
        elif type(value) in _FIELDS or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            _collect(value, out)


def scrub_probe_ip(records: Iterable[Any], probe_ip: Any) -> None:
    """Imported records (OONI): the address their probe reported, in any encoding, out of
    every field. Loopback and unspecified values are what OONI writes when it scrubbed."""
    addr = _parse(probe_ip) if isinstance(probe_ip, str) else None
    if addr is None or addr.is_loopback or addr.is_unspecified:
        return
    scrubber = Scrubber([str(addr)])
    for record in records:
        scrub_record(record, scrubber)
