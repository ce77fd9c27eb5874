"""Streaming readers for OONI measurement files: JSON-lines, JSON arrays, single objects, gzip.

Nothing here loads a whole file: JSON-lines are read line by line, and a JSON array or a
pretty-printed object is decoded value by value from a bounded sliding buffer.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")
_CHUNK = 1 << 16
_DECODER = json.JSONDecoder()


class SourceError(Exception):
    """A source path that cannot be read at all (missing, not a measurement file)."""


@dataclass(slots=True)
class RawDocument:
    """One decoded JSON value (or a line that failed to decode) and where it came from."""

    path: Path
    line: int  # 1-based line where the value starts
    raw: str  # the value's text, used for a content hash (deterministic ids)
    doc: Any = None
    error: str | None = None  # set when the text is not valid JSON


def is_ooni_file(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def discover(sources: list[Path]) -> list[Path]:
    """Files to import, in a stable order: given files as-is, directories searched recursively."""
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files.extend(sorted(p for p in src.rglob("*") if p.is_file() and is_ooni_file(p)))
        elif src.is_file():
            files.append(src)
        else:
            raise SourceError(f"{src}: no such file or directory")
    return files


def _open_text(path: Path) -> io.TextIOBase:
    # Odd bytes in an OONI line (they happen in old reports) must not abort the file:
    # decoding with replacement keeps the rest of the line's JSON intact.
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def iter_documents(path: Path) -> Iterator[RawDocument]:
    """Every JSON value in one file, streamed. Malformed values come back with ``error`` set."""
    try:
        fh = _open_text(path)
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from exc
    with fh:
        try:
            yield from _iter_open(path, fh)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            # A truncated or corrupt gzip stream: what came before is kept, the rest is reported.
            yield RawDocument(path, -1, "", error=f"unreadable: {exc}")


def _iter_open(path: Path, fh: io.TextIOBase) -> Iterator[RawDocument]:
    first = fh.readline()
    lineno = 1
    while first and not first.strip():
        first = fh.readline()
        lineno += 1
    if not first:
        return
    head = first.lstrip()
    name = path.name.lower()
    lines_only = name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz"))
    if head.startswith("[") and not lines_only:
        yield from _iter_stream(path, fh, first, lineno, array=True)
        return
    try:
        doc = json.loads(first)
    except json.JSONDecodeError:
        doc = None
    if doc is None and head.startswith("{") and not lines_only:
        # A pretty-printed object (or several): the first line is not a whole value.
        yield from _iter_stream(path, fh, first, lineno, array=False)
        return
    # JSON-lines: one value per line; a bad line is reported and skipped.
    yield _line_document(path, lineno, first, doc)
    for line in fh:
        lineno += 1
        if line.strip():
            yield _line_document(path, lineno, line, None)


def _line_document(path: Path, lineno: int, line: str, doc: Any) -> RawDocument:
    text = line.strip()
    if doc is None:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            return RawDocument(path, lineno, text, error=f"invalid JSON: {exc.msg} (column {exc.colno})")
    return RawDocument(path, lineno, text, doc)


def _iter_stream(path: Path, fh: io.TextIOBase, buf: str, lineno: int, *, array: bool) -> Iterator[RawDocument]:
    """Decode consecutive JSON values from a sliding buffer (an array, or concatenated objects)."""
    pos = buf.index("[") + 1 if array else 0
    eof = False

    def more() -> bool:
        # Reads at least as much as is buffered, so re-decoding a large value stays linear.
        nonlocal buf, pos, eof
        if eof:
            return False
        chunk = fh.read(max(_CHUNK, len(buf) - pos))
        if not chunk:
            eof = True
            return False
        buf, pos = buf[pos:] + chunk, 0
        return True

    while True:
        while True:  # skip whitespace and separators, counting lines for error messages
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                if buf[pos] == "\n":
                    lineno += 1
                pos += 1
            if pos < len(buf) or not more():
                break
        if pos >= len(buf):
            if array:
                yield RawDocument(path, lineno, "", error="invalid JSON: array not closed")
            return
        if array and buf[pos] == "]":
            return
        while True:
            try:
                doc, end = _DECODER.raw_decode(buf, pos)
                break
            except json.JSONDecodeError as exc:
                if not more():
                    # Cannot resynchronise inside a broken array or object: the rest of the
                    # file is reported as one malformed value.
                    yield RawDocument(path, lineno, buf[pos : pos + 200], error=f"invalid JSON: {exc.msg}")
                    return
        raw = buf[pos:end]
        yield RawDocument(path, lineno, raw, doc)
        lineno += raw.count("\n")
        pos = end
