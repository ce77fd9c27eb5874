"""Target lists: Citizen Lab CSV and plain one-URL-per-line files, loading, filtering, updating.

A malformed row is reported with its real line number and skipped; it never stops a load.
"""

from __future__ import annotations

import csv
import ipaddress
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import httpx
import platformdirs

from probe.dataset import atomic_write_bytes
from probe.errors import VantageError

CITIZENLAB_COLUMNS = ("url", "category_code", "category_description", "date_added", "source", "notes")
WEB_SCHEMES = ("http", "https")
# Tunnel endpoints are URLs too (DESIGN.md), so one list format serves every experiment.
TUNNEL_SCHEMES = ("openvpn", "wireguard", "tor", "obfs4", "ikev2")
# The anchors experiment's heartbeat targets: dns://IP[:PORT] (a resolver) and tcp://IP:PORT.
ANCHOR_SCHEMES = ("dns", "tcp")
SCHEMES = WEB_SCHEMES + TUNNEL_SCHEMES + ANCHOR_SCHEMES

UPSTREAM_BASE_URL = "https://raw.githubusercontent.com/citizenlab/test-lists/master/lists/"
BASE_URL_ENV = "VANTAGE_TESTLISTS_URL"
SHIPPED_LISTS = ("vantage", "anchors")

# A Citizen Lab header is ~60 characters; anything this long is not one.
HEADER_MAX = 4096
# Longer request targets are refused by common servers (nginx's large_client_header_buffers
# and Apache's LimitRequestLine are both 8 KiB), so such an input could never be measured.
URL_MAX = 8192
SHOWN_MAX = 200  # characters of a bad input quoted in a problem line

# RFC 1123 labels; IDNs are accepted in their Unicode form (letters of any script).
_LABEL_RE = re.compile(r"^(?!-)[\w-]{1,63}(?<!-)$", re.UNICODE)


class TestListError(VantageError):
    """A list cannot be read at all (missing file, not a list, download failed): one line."""

    __test__ = False  # not a pytest test class, despite the name


@dataclass(frozen=True, slots=True)
class ListEntry:
    url: str
    category_code: str | None = None
    category_description: str | None = None
    date_added: str | None = None
    source: str | None = None
    notes: str | None = None
    line: int = 0  # where the entry starts in its file (1-based)


@dataclass(frozen=True, slots=True)
class ListProblem:
    """A row that was skipped, and why."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


# --------------------------------------------------------------------------- validation


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    return bool(host) and len(host) <= 253 and all(_LABEL_RE.match(label) for label in labels)


def input_problem(url: str) -> str | None:
    """Why ``url`` is not a usable input (None when it is): http(s) or a tunnel endpoint URL."""
    if not url:
        return "missing url"
    shown = _shown(url)
    if len(url) > URL_MAX:
        return f"url longer than {URL_MAX} characters (servers refuse such requests): {shown}"
    if any(c.isspace() for c in url) or "\ufffd" in url:
        return f"url contains whitespace or undecodable bytes: {shown}"
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        return f"malformed url {shown}: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        return f"unsupported scheme {_shown(parts.scheme) + ':' if parts.scheme else '(none)'} in {shown}; expected one of {', '.join(SCHEMES)}"
    host = parts.hostname or ""
    if not host or not _valid_host(host):
        return f"malformed url {shown}: bad or missing host"
    if scheme in TUNNEL_SCHEMES + ("tcp",) and port is None:
        return f"endpoint {shown} needs an explicit port"
    return None


def _shown(text: str) -> str:
    """A bad input as quoted in a problem line: repr, cut to SHOWN_MAX characters."""
    return repr(text) if len(text) <= SHOWN_MAX else repr(text[:SHOWN_MAX]) + f"... ({len(text)} characters)"


# --------------------------------------------------------------------------- loading


def _open_text(path: Path) -> Iterator[str]:
    # utf-8-sig drops a BOM; bad bytes become U+FFFD and the row is then rejected, not the file.
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
            yield from fh
    except IsADirectoryError as exc:
        raise TestListError(f"{path}: is a directory, not a list") from exc
    except OSError as exc:
        raise TestListError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _looks_like_csv_header(first_line: str) -> bool:
    if len(first_line) > HEADER_MAX:
        return False  # a header names a few columns; this is a (very long) first entry
    try:
        cells = next(csv.reader([first_line]), [])
    except csv.Error:  # e.g. an unbalanced quote: not a header we could read
        return False
    return len(cells) >= 2 and "url" in (c.strip().lower() for c in cells)


def _first_line(path: Path) -> str:
    """The first line, read with a bound: a file with no newline at all (a binary or a huge
    one-line file) is not read whole just to decide its format."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
            return fh.readline(HEADER_MAX + 1)
    except IsADirectoryError as exc:
        raise TestListError(f"{path}: is a directory, not a list") from exc
    except OSError as exc:
        raise TestListError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_csv(path: Path, problems: list[ListProblem]) -> Iterator[ListEntry]:
    reader = csv.reader(_open_text(path))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        raise TestListError(f"{path}:1: unreadable header: {exc}") from exc
    if "url" not in header:
        raise TestListError(f"{path}:1: not a Citizen Lab list: the header has no 'url' column")
    index = {name: i for i, name in enumerate(header)}
    prev_end = reader.line_num
    while True:
        # reader.line_num counts physical lines, so a row with quoted newlines starts right
        # after where the previous row ended.
        start = prev_end + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.append(ListProblem(str(path), start, f"unreadable row: {exc}"))
            prev_end = reader.line_num
            continue
        prev_end = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            hint = " (an unterminated quote?)" if any("\n" in c for c in row) else ""
            problems.append(
                ListProblem(str(path), start, f"expected {len(header)} columns, found {len(row)}{hint}")
            )
            continue

        def cell(name: str, row: list[str] = row) -> str | None:
            i = index.get(name)
            value = row[i].strip() if i is not None else ""
            return value or None

        url = cell("url") or ""
        problem = input_problem(url)
        if problem:
            problems.append(ListProblem(str(path), start, problem))
            continue
        yield ListEntry(
            url=url,
            category_code=(cell("category_code") or "").upper() or None,
            category_description=cell("category_description"),
            date_added=cell("date_added"),
            source=cell("source"),
            notes=cell("notes"),
            line=start,
        )


def _bounded_lines(path: Path) -> Iterator[tuple[int, str, int]]:
    """(line number, text, full length) per line, holding at most URL_MAX + 2 characters of a
    line in memory: a one-line file of a gigabyte is read in pieces, its text cut."""
    n = 0
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
            while True:
                piece = fh.readline(URL_MAX + 2)
                if not piece:
                    return
                n += 1
                length = len(piece)
                while not piece.endswith(("\n", "\r")) and length > URL_MAX:
                    more = fh.readline(1 << 16)  # skip the rest of an overlong line
                    if not more:
                        break
                    length += len(more)
                    piece = piece[: URL_MAX + 1] + more[-1:]
                yield n, piece, length
    except IsADirectoryError as exc:
        raise TestListError(f"{path}: is a directory, not a list") from exc
    except OSError as exc:
        raise TestListError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_plain(path: Path, problems: list[ListProblem]) -> Iterator[ListEntry]:
    for n, raw, length in _bounded_lines(path):
        if length > URL_MAX + 2:
            problems.append(ListProblem(str(path), n, f"line longer than {URL_MAX} characters ({length}): {_shown(raw.strip())}"))
            continue
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        problem = input_problem(line)
        if problem:
            problems.append(ListProblem(str(path), n, problem))
            continue
        yield ListEntry(url=line, line=n)


def _normalise_categories(categories: Iterable[str] | None) -> set[str] | None:
    if categories is None:
        return None
    wanted = {c.strip().upper() for c in categories if c.strip()}
    return wanted or None


def load_list(
    path: Path | str, *, categories: Iterable[str] | None = None
) -> tuple[list[ListEntry], list[ListProblem]]:
    """Entries of one list (Citizen Lab CSV or plain text) and the rows that were skipped.

    The format is told by the first line: a CSV header with a ``url`` column, or else one
    URL per line (``#`` comments and blank lines ignored). Duplicates keep the first entry and
    are reported. ``categories`` keeps only entries with one of those category codes.
    Raises TestListError only when the file cannot be read as a list at all.
    """
    path = Path(path)
    problems: list[ListProblem] = []
    if _looks_like_csv_header(_first_line(path)):
        rows = _read_csv(path, problems)
    elif path.suffix.lower() == ".csv" and path.stat().st_size > 0:
        raise TestListError(
            f"{path}:1: not a Citizen Lab list: the first line must be the header {','.join(CITIZENLAB_COLUMNS)}"
        )
    else:
        rows = _read_plain(path, problems)
    entries = _dedupe(rows, problems, str(path), {})
    wanted = _normalise_categories(categories)
    if wanted is not None:
        entries = [e for e in entries if e.category_code in wanted]
    return entries, problems


def _dedupe(
    rows: Iterable[ListEntry], problems: list[ListProblem], path: str, seen: dict[str, tuple[str, int]]
) -> list[ListEntry]:
    out = []
    for entry in rows:
        first = seen.get(entry.url)
        if first is not None:
            where = f"line {first[1]}" if first[0] == path else f"{first[0]}:{first[1]}"
            problems.append(ListProblem(path, entry.line, f"duplicate of {where}: {entry.url}"))
            continue
        seen[entry.url] = (path, entry.line)
        out.append(entry)
    return out


def load_lists(
    paths: Sequence[Path | str], *, categories: Iterable[str] | None = None
) -> tuple[list[ListEntry], list[ListProblem]]:
    """Several lists merged in order, deduplicated across files by URL."""
    entries: list[ListEntry] = []
    problems: list[ListProblem] = []
    seen: dict[str, tuple[str, int]] = {}
    for p in paths:
        got, probs = load_list(p)
        problems.extend(probs)
        entries.extend(_dedupe(got, problems, str(p), seen))
    wanted = _normalise_categories(categories)
    if wanted is not None:
        entries = [e for e in entries if e.category_code in wanted]
    return entries, problems


def count_by_category(entries: Iterable[ListEntry]) -> list[tuple[str, str, int]]:
    """(category code, description, count), most common first; uncategorised as '-'."""
    counts: Counter[str] = Counter()
    descriptions: dict[str, str] = {}
    for e in entries:
        code = e.category_code or "-"
        counts[code] += 1
        if e.category_description and code not in descriptions:
            descriptions[code] = e.category_description
    return [(code, descriptions.get(code, ""), n) for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


# --------------------------------------------------------------------------- where lists live


def shipped_list_path(name: str = "vantage") -> Path:
    """A list shipped inside the package (works from a wheel as from a checkout)."""
    ref = resources.files("probe") / "data" / f"{name}.csv"
    if not ref.is_file():
        raise TestListError(f"no shipped list named {name!r}; shipped: {', '.join(SHIPPED_LISTS)}")
    # Installed wheels and checkouts are plain directories, so this is a real path.
    return Path(str(ref))


def lists_dir() -> Path:
    """Where `vantage lists update` keeps downloaded lists (platformdirs user data dir)."""
    return Path(platformdirs.user_data_dir("vantage", appauthor=False)) / "testlists"


def resolve_list(spec: str | Path) -> Path:
    """A list given as a path, the name of a downloaded list (``global``, ``ir``) or a shipped one."""
    path = Path(spec)
    name = str(spec).lower().removesuffix(".csv")
    # A bare list name is a name even when a directory of that name sits in the working
    # directory (the `vantage/` package in a checkout): a directory is never a list.
    if path.exists() and not (path.is_dir() and name in SHIPPED_LISTS):
        return path
    if re.fullmatch(r"[a-z0-9_-]+", name):
        downloaded = lists_dir() / f"{name}.csv"
        if downloaded.is_file():
            return downloaded
        if name in SHIPPED_LISTS:
            return shipped_list_path(name)
    raise TestListError(
        f"no such list: {spec} (not a file; not a shipped list; not downloaded: try `vantage lists update`)"
    )


# --------------------------------------------------------------------------- updating


def _describe_http_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect (are you offline?)"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out (are you offline?)"
    return str(exc) or exc.__class__.__name__


def update_lists(
    countries: Sequence[str] = (),
    *,
    dest: Path | None = None,
    base_url: str | None = None,
    timeout: float = 30.0,
) -> list[Path]:
    """Download the Citizen Lab global list and the given country lists into ``dest``.

    Each file is checked to be a Citizen Lab CSV and then renamed into place, so a failed or
    partial download (or a captive portal's page) never replaces a good list.
    """
    dest = Path(dest) if dest else lists_dir()
    base = (base_url or os.environ.get(BASE_URL_ENV) or UPSTREAM_BASE_URL).rstrip("/") + "/"
    names = ["global"]
    for cc in countries:
        if not re.fullmatch(r"[A-Za-z]{2}", cc):
            raise TestListError(f"country code must be two letters, got {cc!r}")
        if cc.lower() not in names:
            names.append(cc.lower())
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TestListError(f"cannot create {dest}: {exc.strerror or exc}") from exc
    written = []
    with httpx.Client(timeout=timeout, follow_redirects=True, trust_env=False) as client:
        for name in names:
            url = f"{base}{name}.csv"
            try:
                resp = client.get(url)
            except httpx.HTTPError as exc:
                raise TestListError(f"cannot download {url}: {_describe_http_error(exc)}") from exc
            if resp.status_code == 404 and name != "global":
                raise TestListError(f"no Citizen Lab list for country {name.upper()} ({url}: HTTP 404)")
            if resp.status_code != 200:
                raise TestListError(f"cannot download {url}: HTTP {resp.status_code}")
            text = resp.content.decode("utf-8-sig", errors="replace")
            if not _looks_like_csv_header(text.split("\n", 1)[0]):
                raise TestListError(f"{url} is not a Citizen Lab CSV list (no url header); nothing replaced")
            written.append(_write_atomic(dest / f"{name}.csv", resp.content))
    return written


def _write_atomic(path: Path, data: bytes) -> Path:
    try:
        return atomic_write_bytes(path, data)
    except OSError as exc:
        raise TestListError(f"cannot write {path}: {exc.strerror or exc}") from exc
