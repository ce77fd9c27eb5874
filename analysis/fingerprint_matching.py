"""Fast matching of HTTP responses against blockpage fingerprints: literal patterns through one
Aho-Corasick automaton, real regexps precompiled, false-positive signatures checked first."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import ahocorasick

if TYPE_CHECKING:
    from analysis.fingerprints import Fingerprint


_REGEX_META = frozenset(".^$*+?{}[]|()")


def regex_literal(pattern: str) -> str | None:
    """The text a regexp matches when it is a plain literal (escapes of punctuation allowed,
    e.g. ``fortinet\\.net``), else None. Conservative: anything unusual is not a literal."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            nxt = pattern[i + 1] if i + 1 < len(pattern) else ""
            if not nxt or nxt.isalnum() or nxt.isspace() or nxt == "_":
                return None
            out.append(nxt)
            i += 2
            continue
        if c in _REGEX_META:
            return None
        out.append(c)
        i += 1
    return "".join(out) or None


class _Scanner:
    """The matching fingerprint that comes first in loading order (the project's own, then the
    downloaded sets, then extra files), so a lab's or a national page keeps its own name when a
    generic signature ("Access Denied") matches too. Literals go through one Aho-Corasick
    automaton (with full/prefix/contains semantics); real regexps are precompiled."""

    def __init__(self, fingerprints: Iterable[Fingerprint]) -> None:
        self._auto = ahocorasick.Automaton()
        self._regexps: list[tuple[int, re.Pattern[str], Fingerprint]] = []
        n_words = 0
        for rank, f in enumerate(fingerprints):
            kind, word = f.pattern_type, f.pattern
            if kind == "regexp":
                lit = regex_literal(f.pattern)
                if lit is None:
                    self._regexps.append((rank, re.compile(f.pattern, f.regex_flags), f))
                    continue
                kind, word = "contains", lit
            existing = self._auto.get(word, ())
            self._auto.add_word(word, (*existing, (rank, kind, len(word), f)))
            n_words += 1
        self._has_words = n_words > 0
        if self._has_words:
            self._auto.make_automaton()

    def __bool__(self) -> bool:
        return self._has_words or bool(self._regexps)

    def first(self, text: str) -> Fingerprint | None:
        best: tuple[int, Fingerprint] | None = None
        if self._has_words:
            last = len(text) - 1
            for end, hits in self._auto.iter(text):
                for rank, kind, n, f in hits:
                    if best is not None and rank >= best[0]:
                        continue
                    start = end - n + 1
                    if kind == "contains" or (kind == "prefix" and start == 0) or (
                        kind == "full" and start == 0 and end == last
                    ):
                        best = (rank, f)
        for rank, rx, f in self._regexps:
            if best is not None and rank >= best[0]:
                break  # in rank order: nothing further can come first
            if rx.search(text):
                best = (rank, f)
                break
        return best[1] if best else None


def header_block(headers: Iterable[tuple[str, str]]) -> str:
    """Headers as the lines of a raw response ("Location: http://..."), which Censored Planet's
    header signatures are written against; names in their usual capitalisation."""
    return "\r\n".join(f"{'-'.join(p.capitalize() for p in (n or '').split('-'))}: {v or ''}"
                       for n, v in headers)


class HttpMatcher:
    """Matches HTTP bodies and headers against every HTTP fingerprint at once.

    A response that matches a false-positive signature (in its body or header lines) matches
    no blockpage: Censored Planet checks those first for the same reason (a default nginx page
    or a hosting provider's error page carries words a blockpage signature may also match).
    """

    def __init__(self, fingerprints: Sequence[Fingerprint], false_positives: Sequence[Fingerprint] = ()) -> None:
        self._body = _Scanner(f for f in fingerprints if f.location == "body")
        self._lines = _Scanner(f for f in fingerprints if f.location == "headers")
        self._fp_body = _Scanner(f for f in false_positives if f.location == "body")
        self._fp_lines = _Scanner(f for f in false_positives if f.location == "headers")
        self._headers: dict[str, list[Fingerprint]] = {}
        for f in fingerprints:
            if f.location.startswith("header."):
                self._headers.setdefault(f.location[len("header."):], []).append(f)

    def false_positive(self, headers: Iterable[tuple[str, str]] = (), body: str | None = None) -> Fingerprint | None:
        """The false-positive signature the response matches, if any."""
        if body and self._fp_body:
            hit = self._fp_body.first(body)
            if hit is not None:
                return hit
        if self._fp_lines:
            return self._fp_lines.first(header_block(headers))
        return None

    def match_body(self, body: str) -> Fingerprint | None:
        if self._fp_body and self._fp_body.first(body) is not None:
            return None
        return self._body.first(body)

    def match_headers(self, headers: Iterable[tuple[str, str]]) -> Fingerprint | None:
        headers = list(headers)
        if self._fp_lines and self._fp_lines.first(header_block(headers)) is not None:
            return None
        for name, value in headers:
            for f in self._headers.get((name or "").lower(), ()):
                if f.matches(value or ""):
                    return f
        if self._lines:
            return self._lines.first(header_block(headers))
        return None

    def match_response(self, headers: Iterable[tuple[str, str]], body: str | None) -> Fingerprint | None:
        """Header fingerprints first, then the body; nothing when either part matches a
        false-positive signature."""
        headers = list(headers)
        if self.false_positive(headers, body) is not None:
            return None
        return self.match_headers(headers) or (self._body.first(body) if body else None)
