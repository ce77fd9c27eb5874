"""Blockpage fingerprints (OONI blocking-fingerprints CSV, Censored Planet signature JSON lines)
and fast matching; the default set is the project's own file plus what `vantage fingerprints
update` downloaded.

A fingerprint names a DNS answer (sinkhole IP or CNAME), an HTTP body pattern or an HTTP header
pattern that only a censor's blockpage produces. A false-positive signature (Censored Planet's)
names a page that looks like a blockpage but is not one (a default server page, a hosting
error): a response that matches one matches no blockpage. Literal patterns go into one
Aho-Corasick automaton, so each body is scanned once; the few real regexps are precompiled.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from analysis import downloads
from analysis.downloads import DownloadError
from analysis.fingerprint_matching import HttpMatcher, header_block, regex_literal
from probe.errors import VantageError

__all__ = [
    "Fingerprint", "FingerprintError", "FingerprintSet", "FingerprintSource", "HttpMatcher", "header_block",
    "load_any", "load_cp_signatures", "load_default_fingerprints", "load_file", "load_fingerprints",
    "regex_literal", "update_fingerprints", "fingerprints_dir", "UpdateResult", "DOWNLOADS", "PROJECT_FINGERPRINTS",
]

log = logging.getLogger(__name__)

# The project's own file holds only the labs' blockpages (see its notes column and
# docs/fingerprints-and-geo.md); real-world sets come from `vantage fingerprints update`.
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
REQUIRED_COLUMNS = frozenset({"name", "location_found", "pattern_type", "pattern"})
# The longest real pattern (OONI's and Censored Planet's) is under 900 characters; a much longer
# one is a broken row, and a huge regexp would cost every body it is tried on.
MAX_PATTERN = 8192
MAX_NAME = 256
# Censored Planet's matcher compiles every signature with re.DOTALL (pipeline/metadata/blockpage.py).
CP_FLAGS = re.DOTALL
# A Censored Planet signature that starts like a header line ("Location: http://...") is
# matched against the response's header lines, the others against the body.
_CP_HEADER_SIGNATURE = re.compile(r"[A-Za-z][A-Za-z0-9-]*: ")

UPSTREAM_OONI = "https://raw.githubusercontent.com/ooni/blocking-fingerprints/main"
UPSTREAM_CP = "https://raw.githubusercontent.com/censoredplanet/censoredplanet-analysis/master/pipeline/metadata/data"
URL_BASE_ENV = "VANTAGE_FINGERPRINTS_URL_BASE"
# (file name, upstream base, format): the files `update` downloads, in loading order.
DOWNLOADS = (
    ("fingerprints_dns.csv", UPSTREAM_OONI, "ooni"),
    ("fingerprints_http.csv", UPSTREAM_OONI, "ooni"),
    ("blockpage_signatures.json", UPSTREAM_CP, "cp-blockpage"),
    ("false_positive_signatures.json", UPSTREAM_CP, "cp-false-positive"),
)


class FingerprintError(VantageError):
    """A fingerprint file cannot be used at all (missing, not CSV, wrong columns, foreign)."""


@dataclass(frozen=True, slots=True)
class Fingerprint:
    name: str
    location: str  # "dns", "body" or "header.<lower-case name>"; Censored Planet header lines: "headers"
    pattern_type: str  # one of PATTERN_TYPES
    pattern: str
    confidence_no_fp: int = 5  # OONI's 0..10 scale: how sure a match is not a false positive
    scope: str | None = None
    expected_countries: tuple[str, ...] = ()
    regex_flags: int = 0
    false_positive: bool = False  # a known non-blockpage (Censored Planet's false-positive list)

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
        return re.search(self.pattern, value, self.regex_flags) is not None


@dataclass(frozen=True, slots=True)
class FingerprintSource:
    """One file that went into a set: what the analyzer names in its output and metadata."""

    name: str  # e.g. "fingerprints_http.csv"
    path: str
    date: str | None  # download date (manifest) or file date; None for the built-in file
    count: int
    origin: str  # "built-in", "downloaded" or "extra"

    def describe(self) -> str:
        when = f", {self.date}" if self.date else ""
        return f"{self.name} ({self.origin}{when}, {self.count})"


@dataclass
class FingerprintSet:
    """Loaded fingerprints plus the problems met while loading them (bad rows are skipped)."""

    fingerprints: list[Fingerprint] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    false_positives: list[Fingerprint] = field(default_factory=list)
    sources: list[FingerprintSource] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._matcher: HttpMatcher | None = None
        self._dns_lookup: dict[str, Fingerprint] | None = None

    @property
    def dns(self) -> list[Fingerprint]:
        return [f for f in self.fingerprints if f.location == "dns"]

    @property
    def http(self) -> list[Fingerprint]:
        return [f for f in self.fingerprints if f.location != "dns"]

    def dns_lookup(self) -> dict[str, Fingerprint]:
        """Answer value (IP or CNAME, lower case) -> fingerprint, for ``full`` DNS patterns."""
        if self._dns_lookup is None:
            out: dict[str, Fingerprint] = {}
            for f in self.dns:
                if f.pattern_type == "full":
                    out.setdefault(f.pattern.strip().lower().rstrip("."), f)
            self._dns_lookup = out
        return self._dns_lookup

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
            self._matcher = HttpMatcher(self.http, self.false_positives)
        return self._matcher

    def describe(self) -> str:
        """One line naming every source, for the analyzer's output."""
        return "; ".join(s.describe() for s in self.sources) or "none"

    def sources_metadata(self) -> str:
        """The sources as JSON, for the verdicts file's metadata."""
        return json.dumps([{"name": s.name, "date": s.date, "count": s.count, "origin": s.origin}
                           for s in self.sources])

    def _changed(self) -> None:
        self._matcher = None
        self._dns_lookup = None

    def __len__(self) -> int:
        return len(self.fingerprints)


# --------------------------------------------------------------------------- reading files


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_pattern(name: str, ptype: str, pattern: str, flags: int = 0) -> None:
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"{name}: pattern longer than {MAX_PATTERN} characters")
    if ptype == "regexp":
        try:
            re.compile(pattern, flags)
        except (re.error, RecursionError, OverflowError, ValueError) as exc:
            raise ValueError(f"{name}: bad regexp {pattern[:80]!r}: {exc}") from None


def _row_to_fingerprint(row: dict[str | None, object]) -> Fingerprint:
    """One CSV row as a fingerprint; ValueError says what is wrong with it."""
    def col(key: str) -> str:
        v = row.get(key)
        return v if isinstance(v, str) else ""

    if any(isinstance(v, str) and _has_surrogates(v) for v in row.values()):
        raise ValueError("not UTF-8 text")
    name = col("name").strip()
    location = col("location_found").strip().lower()
    ptype = col("pattern_type").strip().lower()
    pattern = col("pattern")
    if not name:
        raise ValueError("empty name")
    if len(name) > MAX_NAME:
        raise ValueError(f"name longer than {MAX_NAME} characters")
    if location != "dns" and location != "body" and not (location.startswith("header.") and len(location) > 7):
        raise ValueError(f"{name}: unknown location_found {location[:40]!r}")
    if ptype not in PATTERN_TYPES:
        raise ValueError(f"{name}: unknown pattern_type {ptype[:40]!r}")
    if not pattern:
        raise ValueError(f"{name}: empty pattern")
    _check_pattern(name, ptype, pattern)
    try:
        conf = int(col("confidence_no_fp").strip() or 5)
    except ValueError:
        raise ValueError(f"{name}: confidence_no_fp is not an integer") from None
    countries = tuple(c.strip().upper() for c in col("expected_countries").split(",") if c.strip())
    return Fingerprint(name=name, location=location, pattern_type=ptype, pattern=pattern,
                       confidence_no_fp=conf, scope=col("scope") or None, expected_countries=countries)


def _problem(out: FingerprintSet, where: str, reason: str) -> None:
    out.problems.append(f"{where}: {reason}")
    log.warning("skipping fingerprint %s: %s", where, reason)


def load_file(path: Path | str, into: FingerprintSet | None = None) -> FingerprintSet:
    """Load one OONI-format CSV file. A bad row is recorded in ``problems`` as ``FILE:LINE:
    reason`` (and logged) and skipped; a file that is not such a CSV is a FingerprintError."""
    path = Path(path)
    out = into if into is not None else FingerprintSet()
    before = len(out.fingerprints)
    try:
        # utf-8-sig: a BOM (spreadsheets write one) is not part of the first column's name;
        # surrogateescape: a row with bytes that are not UTF-8 is reported alone, below.
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
            reader = csv.DictReader(fh)
            try:
                fieldnames = reader.fieldnames
            except csv.Error as exc:
                raise FingerprintError(f"{path}: not a blocking-fingerprints CSV ({exc})") from None
            header = {h.strip() for h in (fieldnames or []) if isinstance(h, str)}
            missing = REQUIRED_COLUMNS - header
            if missing:
                raise FingerprintError(
                    f"{path}: not a blocking-fingerprints CSV (missing columns: {', '.join(sorted(missing))})"
                )
            if header != set(fieldnames or []):  # " pattern" etc.: match the stripped names
                reader.fieldnames = [h.strip() for h in fieldnames or []]
            last = reader.line_num
            while True:
                start = last + 1
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:  # e.g. a field over the csv module's size limit
                    _problem(out, f"{path}:{start}", str(exc))
                    last = max(reader.line_num, start)  # the reader does not count the bad line
                    continue
                last = reader.line_num
                try:
                    out.fingerprints.append(_row_to_fingerprint(row))
                except ValueError as exc:
                    _problem(out, f"{path}:{start}", str(exc))
    except OSError as exc:
        raise FingerprintError(f"{path}: cannot read fingerprints: {exc.strerror or exc}") from None
    out._changed()
    out.sources.append(_source(path, len(out.fingerprints) - before, "extra"))
    return out


def load_cp_signatures(path: Path | str, into: FingerprintSet | None = None, *,
                       false_positive: bool | None = None) -> FingerprintSet:
    """Load Censored Planet signatures: JSON lines of {"fingerprint": name, "pattern": regexp}
    (blockpage_signatures.json, or false_positive_signatures.json when ``false_positive``; by
    default decided by the file name). Bad lines are reported as ``FILE:LINE: reason``."""
    path = Path(path)
    out = into if into is not None else FingerprintSet()
    if false_positive is None:
        false_positive = "false_positive" in path.name
    got: list[Fingerprint] = []
    bad = 0
    try:
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            for lineno, line in enumerate(_json_lines(fh), start=1):
                if not line.strip():
                    continue
                try:
                    got.append(_cp_signature(line, false_positive))
                except ValueError as exc:
                    bad += 1
                    _problem(out, f"{path}:{lineno}", str(exc))
    except OSError as exc:
        raise FingerprintError(f"{path}: cannot read signatures: {exc.strerror or exc}") from None
    if not got:
        # Nothing usable at all: not a signature file (a test list, an HTML error page, ...).
        del out.problems[len(out.problems) - bad:]
        raise FingerprintError(
            f"{path}: not a Censored Planet signatures file (no line is a JSON object with "
            "'fingerprint' and 'pattern')"
        )
    (out.false_positives if false_positive else out.fingerprints).extend(got)
    out._changed()
    out.sources.append(_source(path, len(got), "extra"))
    return out


def _json_lines(fh: Iterable[str]) -> Iterable[str]:
    # Only "\n" ends a line: a bare CR inside a JSON string must not split it (newline="" above
    # keeps CRs; str.splitlines would split on them and on other Unicode line breaks).
    rest = ""
    for chunk in fh:
        rest += chunk
        *lines, rest = rest.split("\n")
        yield from lines
    if rest:
        yield rest


def _cp_signature(line: str, false_positive: bool) -> Fingerprint:
    if _has_surrogates(line):
        raise ValueError("not UTF-8 text")
    if len(line) > 4 * MAX_PATTERN:
        raise ValueError("line too long")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({str(exc)[:80]})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    name, pattern = obj.get("fingerprint"), obj.get("pattern")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("no 'fingerprint' name")
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"{name[:MAX_NAME]}: no 'pattern'")
    name = name.strip()
    if len(name) > MAX_NAME or _has_surrogates(name) or _has_surrogates(pattern):
        raise ValueError("bad 'fingerprint' name")
    _check_pattern(name, "regexp", pattern, CP_FLAGS)
    location = "headers" if _CP_HEADER_SIGNATURE.match(pattern) else "body"
    # Censored Planet states no confidence: the format's default (5, as for an OONI row without one).
    return Fingerprint(name=f"cp.{name}", location=location, pattern_type="regexp", pattern=pattern,
                       confidence_no_fp=5, regex_flags=CP_FLAGS, false_positive=false_positive)


def _source(path: Path, count: int, origin: str) -> FingerprintSource:
    try:
        date: str | None = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).date().isoformat()
    except OSError:
        date = None
    return FingerprintSource(name=path.name, path=str(path), date=date, count=count, origin=origin)


def load_any(path: Path | str, into: FingerprintSet | None = None) -> FingerprintSet:
    """A CSV (OONI format) or a .json (Censored Planet signatures) file."""
    path = Path(path)
    if path.suffix.lower() in (".json", ".jsonl"):
        return load_cp_signatures(path, into)
    return load_file(path, into)


def load_fingerprints(extra: Iterable[Path | str] = (), *, include_project: bool = True) -> FingerprintSet:
    """The project's own fingerprints plus any extra files (OONI's, an analyst's)."""
    out = FingerprintSet()
    if include_project:
        _load_project(out)
    for p in extra:
        load_any(p, out)
    return out


def _load_project(out: FingerprintSet) -> None:
    load_file(PROJECT_FINGERPRINTS, out)
    s = out.sources.pop()
    out.sources.append(FingerprintSource(name="vantage built-in (labs only)", path=s.path, date=None,
                                         count=s.count, origin="built-in"))


# --------------------------------------------------------------------------- the default set


def fingerprints_dir() -> Path:
    """Where `vantage fingerprints update` keeps the downloaded sets (user data directory)."""
    return Path(platformdirs.user_data_dir("vantage", appauthor=False)) / "fingerprints"


def load_default_fingerprints(extra_files: Iterable[Path | str] = (), *,
                              data_dir: Path | None = None) -> FingerprintSet:
    """The set the analyzer uses: the project's own file, then ``extra_files`` (the user's
    choice, so their names win when a generic downloaded signature matches too), then every
    set `vantage fingerprints update` downloaded (when present). ``.sources`` names each with
    its date and count. A file that does not parse is a FingerprintError naming it."""
    out = FingerprintSet()
    _load_project(out)
    ddir = data_dir if data_dir is not None else fingerprints_dir()
    downloaded = [(ddir / name, kind) for name, _, kind in DOWNLOADS if (ddir / name).is_file()]
    seen = {_key(PROJECT_FINGERPRINTS)} | {_key(p) for p, _ in downloaded}
    for p in extra_files:
        if _key(p) in seen:
            continue  # the same file twice (e.g. the demo passing the built-in set) counts once
        seen.add(_key(p))
        load_any(p, out)
    manifest = {e.file: e for e in downloads.read_manifest(ddir)}
    for path, kind in downloaded:
        if kind == "ooni":
            load_file(path, out)
        else:
            load_cp_signatures(path, out, false_positive=kind == "cp-false-positive")
        s = out.sources.pop()
        e = manifest.get(path.name)
        out.sources.append(FingerprintSource(name=path.name, path=str(path), date=e.downloaded_at if e else s.date,
                                             count=s.count, origin="downloaded"))
    return out


def _key(path: Path | str) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: loading it names the file
        return Path(path)


# --------------------------------------------------------------------------- updating


def _validate_download(kind: str) -> Callable[[Path], int]:
    def validate(tmp: Path) -> int:
        fs = FingerprintSet()
        try:
            if kind == "ooni":
                load_file(tmp, fs)
                n = len(fs.fingerprints)
            else:
                load_cp_signatures(tmp, fs, false_positive=kind == "cp-false-positive")
                n = len(fs.fingerprints) + len(fs.false_positives)
        except FingerprintError as exc:
            raise DownloadError(str(exc).replace(str(tmp), "the downloaded file")) from None
        if n == 0:
            raise DownloadError("the downloaded file holds no fingerprints")
        return n

    return validate


@dataclass(frozen=True, slots=True)
class UpdateResult:
    dest: Path
    files: list[tuple[str, int]]  # (file name, fingerprints or signatures in it)


def update_fingerprints(*, url_base: str | None = None, dest: Path | None = None,
                        timeout: float = 60.0) -> UpdateResult:
    """Download OONI's blocking fingerprints and Censored Planet's signatures into ``dest``.

    Every file is parsed before anything is replaced; if one download fails or does not parse,
    nothing is replaced (the old copies stay) and DownloadError says which and why.
    ``url_base`` (or env VANTAGE_FINGERPRINTS_URL_BASE) serves all four files from one place.
    """
    dest = Path(dest) if dest is not None else fingerprints_dir()
    base = url_base or os.environ.get(URL_BASE_ENV) or None
    staged: list[tuple[Path, str]] = []
    entries = []
    try:
        with downloads.client(timeout) as http:
            for name, upstream, kind in DOWNLOADS:
                url = f"{(base or upstream).rstrip('/')}/{name}"
                data = downloads.fetch(http, url)
                try:
                    tmp, rows = downloads.staged(dest, name, data, _validate_download(kind))
                except DownloadError as exc:
                    raise DownloadError(f"{url}: {exc}") from None
                staged.append((tmp, name))
                entries.append(downloads.entry(name, url, data, rows))
        downloads.commit(dest, staged, entries)
    except DownloadError as exc:
        raise DownloadError(f"{exc}; nothing replaced (an earlier copy is kept)") from None
    finally:
        downloads.discard(staged)
    return UpdateResult(dest=dest, files=[(e.file, e.rows) for e in entries])
