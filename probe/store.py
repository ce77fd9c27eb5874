"""Parquet writing: batched, atomic, hive-partitioned files, and what a run already measured.

Layout: ``<root>/measurements/date=YYYY-MM-DD/probe_cc=XX/part-<run_id>-<n>.parquet`` (zstd).
Each file is written under a dot-prefixed temporary name in the same directory, fsynced and
renamed, so a reader (or a crash) never sees a half file and a killed run loses at most the
batch in flight. Dot-files are ignored by readers and removed by the next writer.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from probe.schema import Measurement, records_to_table, validate

log = logging.getLogger(__name__)

MEASUREMENTS_DIR = "measurements"
_PART_RE = re.compile(r"^part-(?P<run_id>.+)-(?P<n>\d+)\.parquet$")
_TMP_RE = re.compile(r"^\.part-.+\.parquet\.(?P<pid>\d+)\.tmp$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, from before: this writer has nothing in flight yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreError(Exception):
    """A dataset cannot be written or read (the message names the path)."""


def partition_dir(root: Path, date: str, probe_cc: str) -> Path:
    return Path(root) / MEASUREMENTS_DIR / f"date={date}" / f"probe_cc={probe_cc}"


def iter_dataset_files(root: Path) -> Iterator[Path]:
    """Every complete Parquet file of a dataset (temporary dot-files excluded), sorted."""
    base = Path(root) / MEASUREMENTS_DIR
    if not base.is_dir():
        return iter(())
    return iter(sorted(p for p in base.glob("date=*/probe_cc=*/*.parquet") if not p.name.startswith(".")))


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file so that it appears complete or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (flaky power on a Raspberry Pi)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


class DatasetWriter:
    """Buffers records and writes them in batches, by count and by age.

    ``add()`` flushes when ``batch_size`` records are buffered or the oldest buffered record
    is older than ``max_age_s``; call ``flush()`` on a timer too so a slow run still writes.
    Use as a context manager: leaving it (also on an exception) flushes what is buffered.
    """

    def __init__(
        self,
        root: Path | str,
        run_id: str,
        *,
        batch_size: int = 200,
        max_age_s: float = 30.0,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", run_id):
            raise StoreError(f"run id {run_id!r} may only contain letters, digits, '.', '_' and '-'")
        self.root = Path(root)
        self.run_id = run_id
        self.batch_size = batch_size
        self.max_age_s = max_age_s
        self._buffer: list[Measurement] = []
        self._oldest: float | None = None
        self._counter = itertools.count(self._next_part_number())
        self.files_written: list[Path] = []
        self.records_written = 0
        self._clean_stale_temporaries()

    # A resumed run continues numbering after its existing parts, never overwriting one.
    def _next_part_number(self) -> int:
        highest = -1
        for p in iter_dataset_files(self.root):
            m = _PART_RE.match(p.name)
            if m and m["run_id"] == self.run_id:
                highest = max(highest, int(m["n"]))
        return highest + 1

    def _clean_stale_temporaries(self) -> None:
        """Remove temporaries left by a writer that died; another live run (anchors on a timer
        beside a main run) may be writing into the same dataset right now."""
        base = self.root / MEASUREMENTS_DIR
        if base.is_dir():
            for p in base.glob("date=*/probe_cc=*/.part-*.tmp"):
                m = _TMP_RE.match(p.name)
                if m is None or not _pid_alive(int(m["pid"])):
                    p.unlink(missing_ok=True)

    def add(self, record: Measurement) -> None:
        validate(record)
        self._buffer.append(record)
        if self._oldest is None:
            self._oldest = time.monotonic()
        if len(self._buffer) >= self.batch_size or self.due():
            self.flush()

    def due(self) -> bool:
        return self._oldest is not None and time.monotonic() - self._oldest >= self.max_age_s

    def flush(self) -> list[Path]:
        """Write everything buffered, one file per (date, probe_cc) partition."""
        if not self._buffer:
            return []
        groups: dict[tuple[str, str], list[Measurement]] = defaultdict(list)
        for r in self._buffer:
            groups[(r.date, r.probe_cc)].append(r)
        written = []
        for (date, cc), records in sorted(groups.items()):
            path = partition_dir(self.root, date, cc) / f"part-{self.run_id}-{next(self._counter):05d}.parquet"
            try:
                write_table_atomic(records_to_table(records), path)
            except OSError as exc:
                raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
            written.append(path)
            self.records_written += len(records)
        self._buffer.clear()
        self._oldest = None
        self.files_written.extend(written)
        return written

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_records(root: Path | str, run_id: str, records: Iterable[Measurement]) -> list[Path]:
    """Write records in one go (tests, imports)."""
    with DatasetWriter(root, run_id, batch_size=10_000, max_age_s=1e9) as w:
        for r in records:
            w.add(r)
    return w.files_written


def run_files(root: Path | str, run_id: str) -> list[Path]:
    return [p for p in iter_dataset_files(Path(root)) if (m := _PART_RE.match(p.name)) and m["run_id"] == run_id]


def measured_inputs(root: Path | str, run_id: str, experiment: str | None = None) -> set[tuple[str, str]]:
    """(experiment, input) pairs that a run already has probe rows for: what --resume skips."""
    done: set[tuple[str, str]] = set()
    for path in run_files(root, run_id):
        try:
            table = pq.read_table(path, columns=["experiment", "input", "role"])
        except Exception as exc:  # a corrupt file must not stop a resume; it is re-measured
            log.warning("skipping unreadable %s: %s", path, exc)
            continue
        for exp, inp, role in zip(*(table.column(c).to_pylist() for c in ("experiment", "input", "role")), strict=False):
            if role == "probe" and (experiment is None or exp == experiment):
                done.add((exp, inp))
    return done
