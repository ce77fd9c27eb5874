"""Chunks of OONI lines converted to Arrow on their own (issue 19): the unit of work the
importer runs in-process or on a pool of worker processes.

A chunk is up to ``CHUNK_LINES`` consecutive values of one file. :func:`convert_lines`
decodes, converts, scrubs and validates each value, and builds one Arrow table of the rows of
the values that fit the dataset schema (a value that does not fit is found by building its own
rows alone, and flagged, as the serial importer did per batch). What comes back is small and
cheap to send between processes: the table (Arrow's own buffers) and one :class:`LineOut` per
value. The importer keeps every decision that depends on more than one chunk (dedupe, batches,
the order of the files written) in the parent, in input order, so the output does not depend
on how many workers converted the chunks.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path
from typing import Any

import pyarrow as pa

from analysis.ingest.ooni.columns import records_table
from analysis.ingest.ooni.convert import Converted, NotAMeasurement, convert
from analysis.ingest.ooni.fields import BodyStats
from analysis.ingest.ooni.read import SourceError, _open_binary, decode_json
from probe.schema import MEASUREMENT_SCHEMA, validate
from probe.scrub import scrub_probe_ip

CHUNK_LINES = 1000  # about 2.5 MB of web_connectivity JSON: small enough to keep memory flat
CHUNK_BYTES = 8 << 20  # a chunk of a few huge lines stops early

LINES_ONLY = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")

# Arrow's errors when a value does not fit its column (an int beyond int64, a lone surrogate,
# a record where a leaf belongs, ...).
ARROW_ERRORS = (pa.ArrowException, OverflowError, UnicodeError, TypeError, ValueError, AttributeError)
_UTC = dt.UTC


@dataclass(slots=True)
class LineOut:
    """One value of a chunk, converted. ``error`` set: the value was skipped (malformed, not a
    measurement, ...) and nothing else is set. ``unfit`` set: converted, but its rows do not fit
    the schema (they are not in the chunk's table; the importer reports it when its batch is
    written, as before). Otherwise its ``nrows`` rows follow the previous fitting values' rows
    in the chunk's table."""

    line: int
    error: str | None = None
    key: str = ""
    partition: tuple[str, str] = ("", "")
    nrows: int = 0
    test_name: str = ""
    missing_test_keys: bool = False
    null_control: bool = False
    base64_bodies: int = 0
    odd_encodings: int = 0
    unfit: str | None = None
    start: int = 0  # its first row in the chunk's table


@dataclass(slots=True)
class Chunk:
    path: Path
    lines: list[LineOut]
    table: pa.Table  # the rows of the values that fit, by partition, in line order within one


def _reason(exc: Exception) -> str:
    if isinstance(exc, NotAMeasurement):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _partition(converted: Converted) -> tuple[str, str]:
    """The record contract checked; the (date, probe_cc) partition (a control row has its probe
    row's time and country: convert)."""
    for record in converted.records:
        validate(record)
    probe = converted.records[0]
    return probe.measurement_start_time.astimezone(_UTC).date().isoformat(), probe.probe_cc


def _fits(records: list[Any]) -> str | None:
    """None, or why these rows do not fit the dataset schema."""
    try:
        records_table(records, MEASUREMENT_SCHEMA)
    except ARROW_ERRORS as exc:
        return f"does not fit the dataset schema ({type(exc).__name__}: {exc})"
    return None


def convert_docs(path: Path, docs: Iterable[tuple[int, Any, str | None]]) -> Chunk:
    """Convert decoded values ``(line, value, decode error)`` of one file into a chunk."""
    out: list[LineOut] = []
    converted_lines: list[tuple[LineOut, list[Any]]] = []
    for line, doc, error in docs:
        if error is not None:
            out.append(LineOut(line, error=error))
            continue
        stats = BodyStats()
        try:
            converted = convert(doc, "", stats)  # the text is unused
            scrub_probe_ip(converted.records, doc.get("probe_ip"))
            partition = _partition(converted)
        except Exception as exc:  # noqa: BLE001 - one bad value costs its own line only
            out.append(LineOut(line, error=_reason(exc)))
            continue
        records = converted.records
        lo = LineOut(
            line, key=records[0].origin_uid or "", partition=partition, nrows=len(records),
            test_name=converted.test_name, missing_test_keys=bool(converted.missing_test_keys),
            null_control=bool(converted.null_control), base64_bodies=stats.base64_bodies,
            odd_encodings=stats.odd_encodings,
        )
        out.append(lo)
        converted_lines.append((lo, records))
    try:
        table = _table_by_partition(converted_lines)
    except ARROW_ERRORS:
        for lo, recs in converted_lines:
            lo.unfit = _fits(recs)
        table = _table_by_partition([(lo, recs) for lo, recs in converted_lines if lo.unfit is None])
    return Chunk(path, out, table)


def _table_by_partition(lines: list[tuple[LineOut, list[Any]]]) -> pa.Table:
    """The lines' rows grouped by partition (line order kept within one), each line's ``start``
    set: the importer then takes a partition's rows of a chunk as one slice."""
    ordered = sorted(lines, key=lambda item: item[0].partition)  # stable
    row = 0
    for lo, _ in ordered:
        lo.start, row = row, row + lo.nrows
    return records_table([r for _, recs in ordered for r in recs], MEASUREMENT_SCHEMA)


def convert_lines(path: Path, lines: list[tuple[int, bytes | str]]) -> Chunk:
    """Decode and convert JSON lines ``(line number, text)`` of one file: the workers' job."""
    return convert_docs(path, _decoded(lines))


# What a worker sends back: the lines as plain tuples and the table as one Arrow IPC stream
# (pickling the LineOut objects and the table's many nested buffers took three times as long).
Packed = tuple[Path, list[tuple[Any, ...]], bytes]
_LINE_FIELDS = attrgetter(*(f.name for f in fields(LineOut)))


def convert_lines_packed(path: Path, lines: list[tuple[int, bytes | str]]) -> Packed:
    """:func:`convert_lines`, packed to cross a process boundary cheaply (:func:`unpack`)."""
    chunk = convert_lines(path, lines)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, chunk.table.schema) as writer:
        writer.write_table(chunk.table)
    return chunk.path, [_LINE_FIELDS(lo) for lo in chunk.lines], sink.getvalue().to_pybytes()


def unpack(packed: Packed) -> Chunk:
    path, lines, stream = packed
    with pa.ipc.open_stream(pa.py_buffer(stream)) as reader:
        table = reader.read_all()
    return Chunk(path, [LineOut(*t) for t in lines], table)


def _decoded(lines: list[tuple[int, bytes | str]]) -> Iterator[tuple[int, Any, str | None]]:
    # One line at a time: its value is converted while it is fresh in the cache, and only
    # one decoded value is alive at a time (decoding the whole chunk first costs a third more).
    for line, text in lines:
        if isinstance(text, str):  # a read error (lines are bytes), passed on as is
            yield line, None, text
        else:
            doc, error = decode_json(text)
            yield line, doc, error


def is_lines_only(path: Path) -> bool:
    return path.name.lower().endswith(LINES_ONLY)


def iter_line_chunks(path: Path, chunk_lines: int | None = None) -> Iterator[list[tuple[int, bytes | str]]]:
    """A JSON-lines file's non-blank lines in chunks, undecoded (read.iter_documents' JSON-lines
    path, minus the decoding: lines end at \\n only, blank lines are skipped, line numbers are
    1-based). A read error (a truncated gzip stream) ends the file with one item whose text is
    the reason (a str, where lines are bytes), at the line where reading stopped, after every
    line read before it."""
    try:
        fh = _open_binary(path)
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from exc
    chunk_lines = chunk_lines or CHUNK_LINES
    chunk: list[tuple[int, bytes | str]] = []
    size = 0
    with fh:
        readline = fh.readline
        lineno = 0
        try:
            while line := readline():
                lineno += 1
                if line.isspace():
                    continue
                chunk.append((lineno, line))
                size += len(line)
                if len(chunk) >= chunk_lines or size >= CHUNK_BYTES:
                    yield chunk
                    chunk, size = [], 0
        except (OSError, EOFError, zlib.error) as exc:
            chunk.append((lineno + 1, f"unreadable from here on: {exc}"))
    if chunk:
        yield chunk
