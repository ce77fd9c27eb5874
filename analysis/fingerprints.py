"""Blockpage fingerprints in the OONI blocking-fingerprints CSV format, and fast matching.

A fingerprint names a DNS answer (sinkhole IP or CNAME), an HTTP body pattern or an HTTP header
pattern that only a censor's blockpage produces. Body ``contains`` patterns (the bulk of OONI's
list) are matched with one Aho-Corasick automaton per run, so each body is scanned once.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ahocorasick

log = logging.getLogger(__name__)

PROJECT_FINGERPRINTS = Path(__file__).resolve().parent / "data" / "fingerprints.csv"
PATTERN_TYPES = ("full", "prefix", "contains", "regexp")
COLUMNS = (
    "name",
    "scope",
    "other_names",
    "location_found",
    "pattern_type",
    "pattern",
    "confidence_no_fp",
    "expected_countries",
    "source",
    "exp_url",
    "notes",
)


class FingerprintError(Exception):
    """A fingerprint file cannot be used at all (missing, not CSV, wrong columns)."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    name: str
    location: str  # "dns", "body" or "header.<lower-case name>"
    pattern_type: str  # one of PATTERN_TYPES
    pattern: str
    confidence_no_fp: int = 5  # OONI's 0..10 scale: how sure a match is not a false positive
    scope: str | None = None
    expected_countries: tuple[str, ...] = ()

    @property
    def confidence(self) -> float:
        return max(0.0, min(1.0, self.confidence_no_fp / 10))

    def matches(self, value: str) -> bool:
        """Plain (slow) matching of one value; the reference for the fast matcher."""
        if self.pattern_type == "full":
            return value == self.pattern
        if self.pattern_type == "prefix":
            return value.startswith(self.pattern)
        if self.pattern_type == "contains":
            return self.pattern in value
        return re.search(self.pattern, value) is not None


@dataclass
class FingerprintSet:
    """Loaded fingerprints plus the problems met while loading them (bad rows are skipped)."""

    fingerprints: list[Fingerprint] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._matcher: HttpMatcher | None = None

    @property
    def dns(self) -> list[Fingerprint]:
        return [f for f in self.fingerprints if f.location == "dns"]

    @property
    def http(self) -> list[Fingerprint]:
        return [f for f in self.fingerprints if f.location != "dns"]

    def dns_lookup(self) -> dict[str, Fingerprint]:
        """Answer value (IP or CNAME, lower case) -> fingerprint, for ``full`` DNS patterns."""
        out: dict[str, Fingerprint] = {}
        for f in self.dns:
            if f.pattern_type == "full":
                out.setdefault(f.pattern.strip().lower().rstrip("."), f)
        return out

    def match_dns(self, value: str) -> Fingerprint | None:
        v = value.strip().lower().rstrip(".")
        hit = self.dns_lookup().get(v)
        if hit is not None:
            return hit
        for f in self.dns:
            if f.pattern_type != "full" and f.matches(v):
                return f
        return None

    @property
    def http_matcher(self) -> HttpMatcher:
        if self._matcher is None:
            self._matcher = HttpMatcher(self.http)
        return self._matcher

    def __len__(self) -> int:
        return len(self.fingerprints)


def _row_to_fingerprint(row: dict[str, str], where: str) -> Fingerprint:
    name = (row.get("name") or "").strip()
    location = (row.get("location_found") or "").strip().lower()
    ptype = (row.get("pattern_type") or "").strip().lower()
    pattern = row.get("pattern") or ""
    if not name:
        raise ValueError(f"{where}: empty name")
    if location != "dns" and location != "body" and not (location.startswith("header.") and len(location) > 7):
        raise ValueError(f"{where} ({name}): unknown location_found {location!r}")
    if ptype not in PATTERN_TYPES:
        raise ValueError(f"{where} ({name}): unknown pattern_type {ptype!r}")
    if not pattern:
        raise ValueError(f"{where} ({name}): empty pattern")
    if ptype == "regexp":
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{where} ({name}): bad regexp {pattern!r}: {exc}") from None
    try:
        conf = int((row.get("confidence_no_fp") or "5").strip() or 5)
    except ValueError:
        raise ValueError(f"{where} ({name}): confidence_no_fp is not an integer") from None
    countries = tuple(c.strip().upper() for c in (row.get("expected_countries") or "").split(",") if c.strip())
    return Fingerprint(
        name=name,
        location=location,
        pattern_type=ptype,
        pattern=pattern,
        confidence_no_fp=conf,
        scope=(row.get("scope") or None),
        expected_countries=countries,
    )


def load_file(path: Path | str, into: FingerprintSet | None = None) -> FingerprintSet:
    """Load one CSV file; bad rows are recorded in ``problems`` (and logged), not fatal."""
    path = Path(path)
    out = into if into is not None else FingerprintSet()
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = {"name", "location_found", "pattern_type", "pattern"} - set(header)
            if missing:
                raise FingerprintError(
                    f"{path}: not a blocking-fingerprints CSV (missing columns: {', '.join(sorted(missing))})"
                )
            for lineno, row in enumerate(reader, start=2):
                try:
                    out.fingerprints.append(_row_to_fingerprint(row, f"{path.name}:{lineno}"))
                except ValueError as exc:
                    out.problems.append(str(exc))
                    log.warning("skipping fingerprint %s", exc)
    except OSError as exc:
        raise FingerprintError(f"{path}: cannot read fingerprints: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FingerprintError(f"{path}: not a readable CSV file: {exc}") from None
    out._matcher = None
    return out


def load_fingerprints(extra: Iterable[Path | str] = (), *, include_project: bool = True) -> FingerprintSet:
    """The project's own fingerprints plus any extra files (OONI's, an analyst's)."""
    out = FingerprintSet()
    if include_project:
        load_file(PROJECT_FINGERPRINTS, out)
    for p in extra:
        load_file(p, out)
    return out


class HttpMatcher:
    """Matches HTTP bodies and headers against every HTTP fingerprint at once.

    Body ``contains``/``full``/``prefix`` patterns go into one Aho-Corasick automaton; body
    regexps are few and run with ``re``; header patterns are grouped by header name.
    """

    def __init__(self, fingerprints: Sequence[Fingerprint]) -> None:
        self._auto = ahocorasick.Automaton()
        self._body_regexps: list[tuple[re.Pattern[str], Fingerprint]] = []
        self._headers: dict[str, list[Fingerprint]] = {}
        n_words = 0
        for f in fingerprints:
            if f.location == "body":
                if f.pattern_type == "regexp":
                    self._body_regexps.append((re.compile(f.pattern), f))
                else:
                    existing = self._auto.get(f.pattern, None)
                    self._auto.add_word(f.pattern, (existing or ()) + (f,))
                    n_words += 1
            else:
                self._headers.setdefault(f.location[len("header.") :], []).append(f)
        self._has_words = n_words > 0
        if self._has_words:
            self._auto.make_automaton()

    def match_body(self, body: str) -> Fingerprint | None:
        if self._has_words:
            for end, fps in self._auto.iter(body):
                for f in fps:
                    start = end - len(f.pattern) + 1
                    if f.pattern_type == "contains":
                        return f
                    if f.pattern_type == "prefix" and start == 0:
                        return f
                    if f.pattern_type == "full" and start == 0 and end == len(body) - 1:
                        return f
        for rx, f in self._body_regexps:
            if rx.search(body):
                return f
        return None

    def match_headers(self, headers: Iterable[tuple[str, str]]) -> Fingerprint | None:
        if not self._headers:
            return None
        for name, value in headers:
            for f in self._headers.get((name or "").lower(), ()):
                if f.matches(value or ""):
                    return f
        return None
