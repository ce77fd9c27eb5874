"""Streaming readers for OONI measurement files: JSON-lines, JSON arrays, single objects, gzip.

Nothing here loads a whole file: JSON-lines are read line by line, and a JSON array or a
pretty-printed object is decoded value by value from a bounded sliding buffer.
"""

from __future__ import annotations

import codecs
import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgspec

from probe.errors import VantageError

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")
_CHUNK = 1 << 16
_DECODER = json.JSONDecoder(strict=False)
_FAST = msgspec.json.Decoder()


class SourceError(VantageError):
    """A source path that cannot be read at all (missing, not a measurement file)."""


@dataclass(slots=True)
class RawDocument:
    """One decoded JSON value (or a line that failed to decode) and where it came from."""

    path: Path
    line: int  # 1-based line where the value starts
    text: str | bytes  # the value's text (a JSON line's bytes, decoded only when asked for: raw)
    doc: Any = None
    error: str | None = None  # set when the text is not valid JSON

    @property
    def raw(self) -> str:
        """The value's text (bytes decoded with replacement, surrounding white space removed)."""
        return _text(self.text).strip() if isinstance(self.text, bytes) else self.text


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
        elif src.exists():  # a FIFO or a device would block or never end
            raise SourceError(f"{src}: not a regular file or directory")
        else:
            raise SourceError(f"{src}: no such file or directory")
    return files


def _open_binary(path: Path) -> BinaryIO:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def decode_json(text: str | bytes) -> tuple[Any, str | None]:
    """(value, None), or (None, reason) for text that is not one JSON value. Control characters
    inside strings (a bare CR in a title) are accepted: they are data, not structure.

    msgspec parses first, from the bytes as read (several times faster than the standard
    library, and integers of any size stay exact integers as the standard library gives them);
    what it refuses (control characters in strings, lone surrogates, bytes that are not UTF-8,
    NaN, numbers beyond a double, a byte-order mark, nesting deeper than it recurses) goes to
    the standard library's lenient decoder over the text decoded with replacement, which gives
    the same values as before or the error message."""
    try:
        return _FAST.decode(text), None
    except (msgspec.DecodeError, RecursionError):
        pass
    if isinstance(text, bytes):
        text = _text(text).strip()
    try:
        return _DECODER.decode(text), None
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    except ValueError as exc:  # e.g. an integer literal longer than Python converts
        return None, f"invalid JSON: {exc}"


class _Reader:
    """One open file: its line counter survives a read error, so the error names its line."""

    def __init__(self, path: Path, fh: BinaryIO) -> None:
        self.path = path
        self.fh = fh
        self.lineno = 0

    def readline(self) -> bytes:
        # Lines end at \n only: a bare CR inside a JSON string is part of its line.
        line = self.fh.readline()
        if line:
            self.lineno += 1
        return line

    def next_nonblank(self) -> bytes:
        line = self.readline()
        while line and not line.strip():
            line = self.readline()
        return line


def iter_documents(path: Path) -> Iterator[RawDocument]:
    """Every JSON value in one file, streamed. Malformed values come back with ``error`` set."""
    try:
        fh = _open_binary(path)
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from exc
    reader = _Reader(path, fh)
    with fh:
        try:
            yield from _iter_open(reader)
        except (OSError, EOFError, zlib.error) as exc:
            # A truncated or corrupt gzip stream (or a failing disk): what came before is kept,
            # the rest is reported from the line where reading stopped.
            yield RawDocument(path, reader.lineno + 1, "", error=f"unreadable from here on: {exc}")


def _text(line: bytes) -> str:
    # Odd bytes in an OONI line (they happen in old reports) must not abort the line:
    # decoding with replacement keeps the rest of its JSON intact.
    return line.decode("utf-8", "replace")


def _iter_open(reader: _Reader) -> Iterator[RawDocument]:
    path = reader.path
    first = reader.next_nonblank()
    if not first:
        return
    lineno = reader.lineno
    head = first.lstrip()
    name = path.name.lower()
    lines_only = name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz"))
    if head.startswith(b"[") and not lines_only:
        yield from _iter_stream(reader, _text(first), lineno, array=True)
        return
    doc, error = decode_json(first)
    second = b""
    if error is not None and head.startswith(b"{") and not lines_only:
        # A pretty-printed object's next line is a member ('  "key": ...'), its end, or the
        # next object's lone "{"; a JSON-lines file's next line is another whole object.
        second = reader.next_nonblank()
        if not second.startswith(b"{") or second.strip() == b"{":
            yield from _iter_stream(reader, _text(first + second), lineno, array=False)
            return
    # JSON-lines: one value per line; a bad line is reported and skipped.
    yield RawDocument(path, lineno, first, doc, error)
    line = second or reader.readline()
    while line:
        if line.strip() == b"{" and not lines_only:
            # Pretty-printed objects after all (a mixed file): decode them as a stream.
            yield from _iter_stream(reader, _text(line), reader.lineno, array=False)
            return
        if not line.isspace():
            doc, error = decode_json(line)
            yield RawDocument(path, reader.lineno, line, doc, error)
        line = reader.readline()


def _iter_stream(reader: _Reader, buf: str, lineno: int, *, array: bool) -> Iterator[RawDocument]:
    """Decode consecutive JSON values from a sliding buffer (an array, or concatenated objects)."""
    path = reader.path
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pos = buf.index("[") + 1 if array else 0
    eof = False

    def more() -> bool:
        # Reads at least as much as is buffered, so re-decoding a large value stays linear.
        nonlocal buf, pos, eof
        if eof:
            return False
        chunk = reader.fh.read(max(_CHUNK, len(buf) - pos))
        if not chunk:
            eof = True
            return False
        buf, pos = buf[pos:] + decoder.decode(chunk), 0
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
        error = None
        while True:
            try:
                doc, end = _DECODER.raw_decode(buf, pos)
                break
            except json.JSONDecodeError as exc:
                # Near the end of the buffer (or inside an unterminated string) more text may
                # complete the value; anywhere else it is a real syntax error.
                if (exc.pos >= len(buf) - 8 or exc.msg.startswith("Unterminated")) and more():
                    continue
                error = f"invalid JSON: {exc.msg}"
            except RecursionError:
                error = "invalid JSON: nested too deeply"
            break
        if error is None:
            raw = buf[pos:end]
            yield RawDocument(path, lineno, raw, doc)
            lineno += raw.count("\n")
            pos = end
            continue
        yield RawDocument(path, lineno, buf[pos : pos + 200], error=error)
        if array:
            return  # an array cannot be resynchronised: the rest of the file is skipped
        # Concatenated objects: resume at the next object that starts a line.
        start = pos + 1
        while (nxt := buf.find("\n{", start)) < 0:
            keep = max(len(buf) - 1, pos)  # a "\n" at the very end may precede the next "{"
            lineno += buf.count("\n", pos, keep)
            pos = keep
            if not more():
                return
            start = pos
        lineno += buf.count("\n", pos, nxt + 1)
        pos = nxt + 1
