"""Import OONI measurements (JSON, JSON-lines, gzip; files or directories) into a Vantage dataset.

Streams every file and writes batches through probe.dataset's atomic Parquet writer, so memory
stays flat however much is imported. probe.dataset is the dataset format, not the probe's network code or its
experiments, so analysis/ may use it (docs/ooni.md). The mapping itself lives in
analysis/ingest/ooni/fields.py (shared data formats) and analysis/ingest/ooni/convert.py (per test).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.ingest.ooni import chunks as _chunking
from analysis.ingest.ooni.chunks import (
    Chunk,
    LineOut,
    Packed,
    convert_docs,
    convert_lines,
    convert_lines_packed,
    is_lines_only,
    iter_line_chunks,
    unpack,
)
from analysis.ingest.ooni.convert import convert
from analysis.ingest.ooni.fields import BodyStats, map_failure
from analysis.ingest.ooni.read import SourceError, discover, iter_documents
from probe.dataset import StoreError, iter_dataset_files, partition_dir, write_table_atomic
from probe.errors import VantageError
from probe.schema import new_run_id

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


@dataclass(slots=True)
class _Line:
    """One converted measurement waiting in a batch: its rows are ``out.nrows`` rows of its
    chunk's table from ``out.start`` (none when it does not fit the schema: ``out.unfit``)."""

    where: str
    key: str
    out: LineOut
    table: pa.Table

    @property
    def partition(self) -> tuple[str, str]:
        return self.out.partition


def _gather(lines: list[_Line]) -> pa.Table:
    """The rows of these lines (of one partition), in their order, as one table: a chunk's
    table holds a partition's rows together in line order (chunks._by_partition), so the rows
    of consecutive lines of one chunk are one zero-copy slice. The table keeps the slices as
    its chunks: Parquet's row groups do not follow them, the file holds the same values."""
    parts: list[pa.Table] = []
    table: pa.Table | None = None
    first = end = 0
    for line in lines:
        if line.table is not table or line.out.start != end:
            if table is not None:
                parts.append(table.slice(first, end - first))
            table, first, end = line.table, line.out.start, line.out.start
        end += line.out.nrows
    if table is not None:
        parts.append(table.slice(first, end - first))
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


_WRITES_IN_FLIGHT = 8


class _Batches:
    """Converted lines, written per (date, probe_cc) partition in batches like
    probe.dataset.DatasetWriter. A line whose rows do not fit the schema (found when its chunk
    was converted) comes back as bad when its batch is written; every other line is written."""

    def __init__(self, root: Path, run_id: str, batch_size: int) -> None:
        self.root, self.run_id, self.batch_size = root, run_id, batch_size
        self.pending: list[_Line] = []
        self.buffered = 0
        self.parts = itertools.count()  # the run id is new: no earlier part to continue after
        self.files_written: list[Path] = []
        # Files are written (compressed, fsynced) on a thread, which Arrow and fsync let run
        # beside the conversion; at most _WRITES_IN_FLIGHT tables wait for it.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ooni-write")
        self._writes: deque[tuple[Path, Future[None]]] = deque()

    def _write(self, table: pa.Table, path: Path) -> None:
        while len(self._writes) >= _WRITES_IN_FLIGHT:
            self._wait_one()
        self._writes.append((path, self._io.submit(write_table_atomic, table, path)))

    def _wait_one(self) -> None:
        path, done = self._writes.popleft()
        try:
            done.result()
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self.files_written.append(path)

    def close(self) -> None:
        """Wait for every file queued (raises StoreError for the first that failed)."""
        try:
            while self._writes:
                self._wait_one()
        finally:
            self._io.shutdown(wait=True)

    def add(self, line: _Line) -> bool:
        """Queue a line; True when the batch is full and should be flushed."""
        self.pending.append(line)
        self.buffered += line.out.nrows
        return self.buffered >= self.batch_size

    def flush(self) -> tuple[list[_Line], list[tuple[_Line, str]]]:
        """Write the queued lines; returns (written, [(not written, reason)]), each in line order."""
        pending = self.pending
        groups: dict[tuple[str, str], list[_Line]] = defaultdict(list)
        for line in pending:
            groups[line.partition].append(line)
        self.pending, self.buffered = [], 0
        for (date, cc), lines in sorted(groups.items()):
            lines = [ln for ln in lines if ln.out.unfit is None]
            if not lines:
                continue
            table = _gather(lines)
            path = partition_dir(self.root, date, cc) / f"part-{self.run_id}-{next(self.parts):05d}.parquet"
            self._write(table, path)
        return ([ln for ln in pending if ln.out.unfit is None],
                [(ln, ln.out.unfit) for ln in pending if ln.out.unfit is not None])


# Inputs smaller than this are converted in-process: starting workers (each imports pyarrow)
# costs more than a second core saves on a few thousand lines.
PARALLEL_MIN_BYTES = 16 << 20


def default_workers(files: list[Path]) -> int:
    """Worker processes for these files: one per usable core for a large input, else 1."""
    try:
        size = sum(p.stat().st_size for p in files)
    except OSError:
        size = 0
    if size < PARALLEL_MIN_BYTES:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


_Job = tuple[Path, list[Any], bool]  # (file, lines or decoded values, lines?)


def _jobs(files: list[Path]) -> Iterator[_Job | tuple[Path, str]]:
    """The files' values in chunks, in input order: JSON-lines files as undecoded lines (the
    workers decode them), other files decoded here (arrays, pretty-printed objects). A file that
    cannot be opened comes back as (path, reason)."""
    for path in files:
        try:
            if is_lines_only(path):
                for lines in iter_line_chunks(path):
                    yield path, lines, True
                continue
            docs: list[tuple[int, Any, str | None]] = []
            for raw in iter_documents(path):
                docs.append((raw.line, raw.doc, raw.error))
                if len(docs) >= _chunking.CHUNK_LINES:
                    yield path, docs, False
                    docs = []
            if docs:
                yield path, docs, False
        except SourceError as exc:
            yield path, str(exc)


def _run(job: _Job) -> Chunk:
    path, items, lines = job
    return convert_lines(path, items) if lines else convert_docs(path, items)


def _chunks(files: list[Path], workers: int) -> Iterator[Chunk | tuple[Path, str]]:
    """Every chunk converted, in input order; with ``workers`` > 1 on that many processes, at
    most two chunks per worker in flight (memory stays flat however large the input)."""
    jobs = _jobs(files)
    if workers <= 1:
        for job in jobs:
            yield job if len(job) == 2 else _run(job)
        return
    # fork: the workers start at once with the converter already imported, and nothing
    # re-runs the caller's main module (spawn and forkserver do: a script without a main guard
    # would fail). They use no thread the parent started: they decode, convert and build arrays.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    # Every worker is forked now, before this import starts its writer thread (a fork while
    # another thread holds an allocator's lock could hang the child): the pool forks one
    # process per job submitted while none is idle.
    for started in [pool.submit(os.getpid) for _ in range(workers)]:
        started.result()
    window: deque[Future[Packed] | Chunk | tuple[Path, str]] = deque()
    try:
        for job in jobs:
            if len(job) == 2:
                window.append(job)
            elif job[2]:  # lines: decoded and converted by a worker
                window.append(pool.submit(convert_lines_packed, job[0], job[1]))
            else:  # decoded values: converted here (sending the dicts would cost as much)
                window.append(_run(job))
            while len(window) > 2 * workers:
                yield _result(window.popleft())
        while window:
            yield _result(window.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(item: Future[Packed] | Chunk | tuple[Path, str]) -> Chunk | tuple[Path, str]:
    if isinstance(item, Future):
        try:
            return unpack(item.result())
        except BrokenProcessPool as exc:
            raise OoniImportError(f"a worker process died ({exc}); what was converted before is written") from exc
    return item


def import_ooni(
    sources: Iterable[Path | str],
    output: Path | str,
    *,
    batch_size: int = 5000,
    workers: int | None = None,
    on_progress: Callable[[ImportSummary], None] | None = None,
    on_error: Callable[[str], None] | None = None,
) -> ImportSummary:
    """Import every OONI measurement found in ``sources`` into the dataset at ``output``.

    Each value is converted, validated and coerced to the Arrow schema on its own before it
    joins a batch: one that cannot be is reported (``FILE:LINE: reason``, to ``on_error``) and
    skipped, and costs nothing else. A measurement already written (by this import, or found
    in ``output`` at the start) is skipped and counted.

    ``workers``: processes that decode and convert JSON-lines files in chunks (None: one per
    core for inputs of 16 MiB or more, else 1 = in this process). The output does not depend on
    it: chunks are taken in input order, and dedupe and batching happen here.
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
        out = line.out
        stats.base64_bodies += out.base64_bodies
        stats.odd_encodings += out.odd_encodings
        summary.measurements += 1
        summary.controls += out.nrows - 1
        summary.by_test[out.test_name] += 1
        summary.missing_test_keys += out.missing_test_keys
        summary.null_controls += out.null_control
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

    if workers is None:
        workers = default_workers(files)
    try:
        try:
            for chunk in _chunks(files, workers):
                if isinstance(chunk, tuple):  # a file that cannot be read at all
                    skip(str(chunk[0]), chunk[1])
                    continue
                prefix, table = f"{chunk.path}:", chunk.table
                for out in chunk.lines:
                    where = f"{prefix}{out.line}"
                    if out.error is not None:
                        skip(where, out.error)
                        continue
                    if out.key in existing:
                        summary.already_present += 1
                        continue
                    queue(_Line(where, out.key, out, table))
        finally:
            try:
                flush()  # what was converted is written, also when the import stops early
            finally:
                writer.close()
    except StoreError as exc:
        raise OoniImportError(str(exc)) from exc
    summary.base64_bodies = stats.base64_bodies
    summary.odd_encodings = stats.odd_encodings
    summary.output_files = list(writer.files_written)
    return summary
