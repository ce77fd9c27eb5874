"""Downloads for the `update` commands (fingerprints, geo databases): one HTTP client, files
validated before they replace the old copy (temporary file, fsync, rename), and a manifest."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from probe.dataset import atomic_write_text, fsync_file, temporary_name
from probe.errors import VantageError

MANIFEST = "manifest.json"
MAX_DOWNLOAD = 256 * 1024 * 1024  # far above any real file (DB-IP ASN lite is ~40 MB unpacked)


class DownloadError(VantageError):
    """A download failed (offline, HTTP error, not the expected file); nothing was replaced."""


class NotFound(DownloadError):
    """The server answered 404 (e.g. this month's database is not published yet)."""


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    file: str  # name inside the data directory
    url: str
    sha256: str
    downloaded_at: str  # ISO date (UTC)
    rows: int  # fingerprints or signatures, or database records checked


def describe_http_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect (are you offline?)"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out (are you offline?)"
    return str(exc) or exc.__class__.__name__


def client(timeout: float) -> httpx.Client:
    # trust_env=False: no proxy or netrc from the environment decides where an update goes.
    return httpx.Client(timeout=timeout, follow_redirects=True, trust_env=False)


def fetch(http: httpx.Client, url: str) -> bytes:
    """The body of ``url`` (HTTP 200 only), capped in size."""
    try:
        with http.stream("GET", url) as resp:
            if resp.status_code == 404:
                raise NotFound(f"cannot download {url}: HTTP 404")
            if resp.status_code != 200:
                raise DownloadError(f"cannot download {url}: HTTP {resp.status_code}")
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > MAX_DOWNLOAD:
                    raise DownloadError(f"cannot download {url}: larger than {MAX_DOWNLOAD // 2**20} MiB")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise DownloadError(f"cannot download {url}: {describe_http_error(exc)}") from None


def staged(dest: Path, name: str, data: bytes, validate: Callable[[Path], int]) -> tuple[Path, int]:
    """Write ``data`` to a temporary file beside ``dest/name``, fsync it and validate it
    (``validate`` returns a row count or raises); the caller renames it into place."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest}: {exc.strerror or exc}") from None
    tmp = temporary_name(dest / name)
    try:
        tmp.write_bytes(data)
        fsync_file(tmp)
        rows = validate(tmp)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"cannot write {dest / name}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, rows


def commit(dest: Path, staged_files: list[tuple[Path, str]], entries: list[ManifestEntry]) -> None:
    """Rename every validated temporary file into place, then write the manifest (atomically)."""
    try:
        for tmp, name in staged_files:
            os.replace(tmp, dest / name)
        old = {e.file: e for e in read_manifest(dest)}
        old.update({e.file: e for e in entries})
        text = json.dumps({"files": [asdict(e) for e in old.values()]}, indent=2) + "\n"
        atomic_write_text(dest / MANIFEST, text)  # also fsyncs dest: the renames above survive a power cut
    except OSError as exc:
        raise DownloadError(f"cannot write into {dest}: {exc.strerror or exc}") from None
    finally:
        for tmp, _ in staged_files:
            tmp.unlink(missing_ok=True)


def discard(staged_files: list[tuple[Path, str]]) -> None:
    for tmp, _ in staged_files:
        tmp.unlink(missing_ok=True)


def read_manifest(dest: Path) -> list[ManifestEntry]:
    """The manifest's entries; a missing or unreadable manifest is an empty one."""
    try:
        data = json.loads((dest / MANIFEST).read_text(encoding="utf-8"))
        out = []
        for e in data.get("files", []):
            out.append(ManifestEntry(file=str(e["file"]), url=str(e["url"]), sha256=str(e["sha256"]),
                                     downloaded_at=str(e["downloaded_at"]), rows=int(e["rows"])))
        return out
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []


def entry(name: str, url: str, data: bytes, rows: int, now: dt.datetime | None = None) -> ManifestEntry:
    now = now or dt.datetime.now(dt.UTC)
    return ManifestEntry(file=name, url=url, sha256=hashlib.sha256(data).hexdigest(),
                         downloaded_at=now.date().isoformat(), rows=rows)
