"""Import OONI measurements (JSON, JSON-lines, gzip; files or directories) into a Vantage dataset.

Streams every file and writes batches through probe.dataset's atomic Parquet writer, so memory
stays flat however much is imported. probe.dataset is the dataset format, not the probe's network code or its
experiments, so analysis/ may use it (docs/ooni.md). The mapping itself lives in
analysis/ingest/ooni/fields.py (shared data formats) and analysis/ingest/ooni/convert.py (per test).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.ingest.ooni.columns import records_table
from analysis.ingest.ooni.convert import Converted, NotAMeasurement, convert
from analysis.ingest.ooni.fields import BodyStats, map_failure
from analysis.ingest.ooni.read import SourceError, discover, iter_documents
from probe.dataset import StoreError, iter_dataset_files, partition_dir, write_table_atomic
from probe.errors import VantageError
from probe.schema import MEASUREMENT_SCHEMA, new_run_id, validate
from probe.scrub import scrub_probe_ip

__all__ = ["ImportSummary", "OoniImportError", "import_ooni", "map_failure", "convert", "one_line"]

MAX_REPORTED_ERRORS = 50  # the summary keeps the first ones; all are counted (and passed to on_error)
_MAX_REASON = 300


class OoniImportError(VantageError):
    """An import that cannot start (bad source path, unwritable output); one line."""


@dataclass
class ImportSummary:
    files: int = 0
    repeated_files: int = 0  # a path given twice, or a file inside a directory also given: read once
    measurements: int = 0  # probe rows written
    controls: int = 0  # control rows written
    by_test: Counter[str] = field(default_factory=Counter)
    base64_bodies: int = 0
    odd_encodings: int = 0
    missing_test_keys: int = 0
    null_controls: int = 0
    already_present: int = 0  # skipped: the output already held this measurement before the import
    duplicates: int = 0  # skipped: this import had already written this measurement
    malformed: int = 0
    errors: list[str] = field(default_factory=list)  # "file:line: reason"
    output_files: list[Path] = field(default_factory=list)

    def note_error(self, where: str, reason: str) -> str:
        """Count a skipped value; returns its one-line report."""
        self.malformed += 1
        line = one_line(f"{where}: {reason}")
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(line)
        return line


def one_line(text: str) -> str:
    """A report line that any terminal can print: no line breaks, no lone surrogates (from
    the data or from a file name that is not UTF-8), bounded."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    if len(text) > _MAX_REASON:
        text = text[:_MAX_REASON] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _existing_keys(output: Path) -> set[str]:
    """Dedupe keys (origin_uid) of the OONI measurements an earlier import already wrote, so
    importing again adds nothing."""
    keys: set[str] = set()
    for path in iter_dataset_files(output):
        try:
            table = pq.read_table(path, columns=["origin", "role", "origin_uid"])
        except Exception:  # an unreadable file is the analyzer's problem to report, not ours
            continue
        columns = (table.column(c).to_pylist() for c in ("origin", "role", "origin_uid"))
        for origin, role, uid in zip(*columns, strict=True):
            if origin == "ooni" and role == "probe" and uid:
                keys.add(uid)
    return keys


class _Unfit(ValueError):
    """A converted measurement that the dataset's Arrow schema cannot hold."""


# Arrow's errors when a value does not fit its column (an int beyond int64, a lone surrogate,
# a record where a leaf belongs, ...).
_ARROW_ERRORS = (pa.ArrowException, OverflowError, UnicodeError, TypeError, ValueError, AttributeError)
_UTC = dt.UTC


@dataclass(slots=True)
class _Line:
    """One converted measurement waiting in a batch: its records are turned into Arrow columns
    with the batch, and only when the batch fails, on their own, to find the line that does not fit."""

    where: str
    key: str
    converted: Converted
    stats: BodyStats
    partition: tuple[str, str]


def _partition(converted: Converted) -> tuple[str, str]:
    """The record contract checked; the (date, probe_cc) partition (a control row has its probe
    row's time and country: convert)."""
    for record in converted.records:
        validate(record)
    probe = converted.records[0]
    return probe.measurement_start_time.astimezone(_UTC).date().isoformat(), probe.probe_cc


def _table(lines: list[_Line]) -> pa.Table:
    return records_table([r for ln in lines for r in ln.converted.records], MEASUREMENT_SCHEMA)


def _fits(line: _Line) -> str | None:
    """None, or why this line's rows do not fit the dataset schema."""
    try:
        _table([line])
    except _ARROW_ERRORS as exc:
        return f"does not fit the dataset schema ({type(exc).__name__}: {exc})"
    return None


class _Batches:
    """Converted lines, written per (date, probe_cc) partition in batches like
    probe.dataset.DatasetWriter. Each partition's rows are coerced to Arrow once; when that
    fails, each line is coerced on its own, the lines that do not fit come back as bad, and
    every other line is written."""

    def __init__(self, root: Path, run_id: str, batch_size: int) -> None:
        self.root, self.run_id, self.batch_size = root, run_id, batch_size
        self.pending: list[_Line] = []
        self.buffered = 0
        self.parts = itertools.count()  # the run id is new: no earlier part to continue after
        self.files_written: list[Path] = []

    def add(self, line: _Line) -> bool:
        """Queue a line; True when the batch is full and should be flushed."""
        self.pending.append(line)
        self.buffered += len(line.converted.records)
        return self.buffered >= self.batch_size

    def flush(self) -> tuple[list[_Line], list[tuple[_Line, str]]]:
        """Write the queued lines; returns (written, [(not written, reason)]), each in line order."""
        pending = self.pending
        groups: dict[tuple[str, str], list[_Line]] = defaultdict(list)
        for line in pending:
            groups[line.partition].append(line)
        self.pending, self.buffered = [], 0
        bad: dict[int, str] = {}
        for (date, cc), lines in sorted(groups.items()):
            try:
                table = _table(lines)
            except _ARROW_ERRORS:
                for ln in lines:
                    reason = _fits(ln)
                    if reason is not None:
                        bad[id(ln)] = reason
                lines = [ln for ln in lines if id(ln) not in bad]
                if not lines:
                    continue
                table = _table(lines)
            path = partition_dir(self.root, date, cc) / f"part-{self.run_id}-{next(self.parts):05d}.parquet"
            try:
                write_table_atomic(table, path)
            except OSError as exc:
                raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
            self.files_written.append(path)
        return ([ln for ln in pending if id(ln) not in bad], [(ln, bad[id(ln)]) for ln in pending if id(ln) in bad])


def _reason(exc: Exception) -> str:
    if isinstance(exc, (NotAMeasurement, _Unfit)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def import_ooni(
    sources: Iterable[Path | str],
    output: Path | str,
    *,
    batch_size: int = 5000,
    on_progress: Callable[[ImportSummary], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> ImportSummary:
    """Import every OONI measurement found in ``sources`` into the dataset at ``output``.

    Each value is converted, validated and coerced to the Arrow schema on its own before it
    joins a batch: one that cannot be is reported (``FILE:LINE: reason``, to ``on_error``) and
    skipped, and costs nothing else. A measurement already written (by this import, or found
    in ``output`` at the start) is skipped and counted.
    """
    paths = [Path(s) for s in sources]
    try:
        found = discover(paths)
    except SourceError as exc:
        raise OoniImportError(str(exc)) from exc
    if not found:
        names = ", ".join(str(p) for p in paths)
        raise OoniImportError(f"no OONI measurement files (.json, .jsonl, .ndjson, optionally .gz) in {names}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OoniImportError(f"{output}: output exists and is not a directory")
    files, seen_files = [], set()
    for path in found:
        real = path.resolve()
        if real not in seen_files:
            seen_files.add(real)
            files.append(path)
    summary = ImportSummary(files=len(files), repeated_files=len(found) - len(files))
    existing = _existing_keys(output)
    written: set[str] = set()
    stats = BodyStats()
    writer_run = "ooni-import-" + new_run_id()

    def skip(where: str, reason: str) -> None:
        line = summary.note_error(where, reason)
        if on_error is not None:
            on_error(line)

    writer = _Batches(output, writer_run, batch_size)
    queued: dict[str, _Line] = {}  # key -> its line in the current batch
    held: list[_Line] = []  # lines whose key is queued: duplicates, unless the queued line does not fit

    def commit(line: _Line) -> None:
        written.add(line.key)
        converted = line.converted
        stats.base64_bodies += line.stats.base64_bodies
        stats.odd_encodings += line.stats.odd_encodings
        summary.measurements += 1
        summary.controls += len(converted.records) - 1
        summary.by_test[converted.test_name] += 1
        summary.missing_test_keys += converted.missing_test_keys
        summary.null_controls += converted.null_control
        if on_progress is not None and summary.measurements % 1000 == 0:
            on_progress(summary)

    def queue(line: _Line) -> None:
        if line.key in written:
            summary.duplicates += 1
        elif line.key in queued:
            held.append(line)
        else:
            queued[line.key] = line
            if writer.add(line):
                flush()

    def flush() -> None:
        while writer.pending:
            good, bad = writer.flush()
            queued.clear()
            for line in good:
                commit(line)
            for line, reason in bad:
                skip(line.where, reason)
            waiting = held[:]
            held.clear()
            for line in waiting:  # a duplicate of a line that did not fit is imported after all
                queue(line)

    try:
        try:
            for path in files:
                try:
                    for raw in iter_documents(path):
                        where = f"{path}:{raw.line}"
                        if raw.error:
                            skip(where, raw.error)
                            continue
                        line_stats = BodyStats()
                        try:
                            converted = convert(raw.doc, "", line_stats)  # the text is unused
                            scrub_probe_ip(converted.records, raw.doc.get("probe_ip"))
                            partition = _partition(converted)
                        except Exception as exc:  # noqa: BLE001 - one bad value costs its own line only
                            skip(where, _reason(exc))
                            continue
                        key = converted.records[0].origin_uid or ""  # always set by convert
                        if key in existing:
                            summary.already_present += 1
                            continue
                        queue(_Line(where, key, converted, line_stats, partition))
                except SourceError as exc:
                    skip(str(path), str(exc))
        finally:
            flush()  # what was converted is written, also when the import stops early
    except StoreError as exc:
        raise OoniImportError(str(exc)) from exc
    summary.base64_bodies = stats.base64_bodies
    summary.odd_encodings = stats.odd_encodings
    summary.output_files = list(writer.files_written)
    return summary
