"""The dataset on disk, owned here: the one atomic write every writer uses, partitions, file
discovery, batched writing, the run lock, what a run already measured (resume state) and run
manifests. Both sides read it: the probe writes datasets, the analyzer and the OONI import find,
check and write them through the same functions.

Layout: ``<root>/measurements/date=YYYY-MM-DD/probe_cc=XX/part-<run_id>-<n>.parquet`` (zstd).
Each file is written under a dot-prefixed temporary name in the same directory, fsynced and
renamed, so a reader (or a crash) never sees a half file and a killed run loses at most the
batch in flight. Dot-files are ignored by readers and removed by the next writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import stat
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from probe.schema import Measurement, records_to_table, validate

log = logging.getLogger(__name__)

MEASUREMENTS_DIR = "measurements"
_PART_RE = re.compile(r"^part-(?P<run_id>.+)-(?P<n>\d+)\.parquet$")
_TMP_RE = re.compile(r"^\.part-.+\.parquet\.(?P<pid>\d+)(?:\.\d+)?\.tmp$")


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
    """Every complete Parquet file of a dataset (temporary dot-files excluded), sorted.
    Only regular files: a FIFO named .parquet would block a resume that opened it."""
    base = Path(root) / MEASUREMENTS_DIR
    if not base.is_dir():
        return iter(())
    return iter(sorted(p for p in base.glob("date=*/probe_cc=*/*.parquet") if not p.name.startswith(".") and _is_regular(p)))


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a dangling link or a link loop
        return False


# --------------------------------------------------------------------------- the one atomic write
# Every file Vantage writes (dataset parts, the verdicts file, events, the DuckDB database, run
# manifests, downloaded lists and databases, OONI import batches) goes through atomic_path: a
# reader, or a crash, sees the old file or the complete new one, never half of one.


def temporary_name(path: Path) -> Path:
    """The dot-prefixed temporary beside ``path`` (readers skip dot-files; the pid lets the next
    writer tell a dead writer's leftover from a live one's, the thread id two threads apart)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def fsync_file(path: Path) -> None:
    """Flush a closed file's data to the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable (flaky power on a Raspberry Pi); a file system
    that cannot fsync a directory is left as it is."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path: Path | str, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary name beside ``path`` for any writer (pyarrow, DuckDB, open()) to write
    and close; then fsync it, publish it under ``path`` and fsync the directory. On any error
    the temporary (and a DuckDB ``.wal`` beside it) is removed and ``path`` is left as it was.

    ``overwrite=False``: raise FileExistsError instead of replacing a file of that name (the
    complete file is published with link(2), which never replaces, then the temporary goes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_no_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + ".wal").unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: Path | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_table_atomic(table: pa.Table, path: Path, *, overwrite: bool = True) -> None:
    """Write a Parquet file (zstd) so that it appears complete or not at all (:func:`atomic_path`)."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def _publish_no_replace(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # atomic, and fails with EEXIST instead of replacing
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        # A file system without hard links (FAT): the run lock keeps other writers of this
        # run out, and no other run uses this run's file names, so check-then-rename is safe.
        if path.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


# --------------------------------------------------------------------------- the run lock
# One process at a time writes a run: a second `vantage run --resume RUN_ID` while the first
# still runs would measure the same inputs again. flock(2) is released by the kernel when the
# holder dies (SIGKILL, power loss), so a stale lock never blocks a later resume.
LOCK_DIR = "runs"
_held: dict[Path, int] = {}  # lock file -> depth; re-entrant within one process
_held_guard = threading.Lock()


class RunLocked(StoreError):
    """Another process is writing this run right now."""


@contextlib.contextmanager
def run_lock(root: Path | str, run_id: str) -> Iterator[None]:
    """Hold the run's lock file (``<root>/runs/<run_id>.lock``) or raise RunLocked at once."""
    path = (Path(root) / LOCK_DIR / f"{run_id}.lock").absolute()
    with _held_guard:
        if path in _held:
            _held[path] += 1
            fd = None
        else:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StoreError(f"cannot write to {root}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunLocked(
                        f"run {run_id} is being written by another vantage process right now; "
                        "wait for it to finish (or stop it), then resume"
                    ) from None
                raise StoreError(f"cannot lock {path}: {exc.strerror or exc}") from None
            _held[path] = 1
    try:
        yield
    finally:
        with _held_guard:
            _held[path] -= 1
            if _held[path] == 0:
                del _held[path]
                if fd is not None:
                    os.close(fd)  # closing the descriptor releases the flock


class DatasetWriter:
    """Buffers records and writes them in batches, by count and by age.

    ``add()`` flushes when ``batch_size`` records are buffered or the oldest buffered record
    is older than ``max_age_s``; call ``flush()`` on a timer too so a slow run still writes.
    Use as a context manager: leaving it (also on an exception) flushes what is buffered.

    Thread-safe: ``add`` and ``flush`` hold one lock, so a batch is written by exactly one
    caller even if two threads flush at once. A part number is never reused: a file is
    published only under a name that does not exist yet (another writer of the same run id
    that got there first makes this one take the next number).
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
        self._lock = threading.RLock()
        self._next_n = self._next_part_number()
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
        with self._lock:
            self._buffer.append(record)
            if self._oldest is None:
                self._oldest = time.monotonic()
            if len(self._buffer) >= self.batch_size or self.due():
                self.flush()

    def due(self) -> bool:
        return self._oldest is not None and time.monotonic() - self._oldest >= self.max_age_s

    def flush(self) -> list[Path]:
        """Write everything buffered, one file per (date, probe_cc) partition."""
        with self._lock:
            if not self._buffer:
                return []
            groups: dict[tuple[str, str], list[Measurement]] = defaultdict(list)
            for r in self._buffer:
                groups[(r.date, r.probe_cc)].append(r)
            written: list[Path] = []
            try:
                for key, records in sorted(groups.items()):
                    written.append(self._write_part(*key, records))
                    self.records_written += len(records)
                    del groups[key]  # written: a retry of this flush must not write it again
            finally:
                self._buffer = [r for records in groups.values() for r in records]
                if not self._buffer:
                    self._oldest = None
                self.files_written.extend(written)
            return written

    def _write_part(self, date: str, cc: str, records: list[Measurement]) -> Path:
        table = records_to_table(records)
        while True:
            path = partition_dir(self.root, date, cc) / f"part-{self.run_id}-{self._next_n:05d}.parquet"
            self._next_n += 1
            try:
                write_table_atomic(table, path, overwrite=False)
            except FileExistsError:
                continue  # another writer of this run id took the number: take the next
            except OSError as exc:
                raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
            return path

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


def already_measured(output: Path, run_id: str, experiment: str, role: str) -> set[str]:
    """Inputs this run already has rows for, for this experiment and role (what resume skips)."""
    if role == "probe":
        return {inp for _, inp in measured_inputs(output, run_id, experiment)}
    done: set[str] = set()
    for path in run_files(output, run_id):
        try:
            table = pq.read_table(path, columns=["experiment", "input", "role", "control_for"])
        except Exception as exc:  # a corrupt file must not stop a resume; its inputs run again
            log.warning("skipping unreadable %s: %s", path, exc)
            continue
        for exp, inp, r, control_for in zip(*(c.to_pylist() for c in table.columns), strict=True):
            # Controls fetched for probe rows are not what a control run's resume skips.
            if exp == experiment and r == role and control_for is None:
                done.add(inp)
    return done


# --------------------------------------------------------------------------- run manifests
# What a run was asked to do (lists, experiment, resolvers, vantage), so that
# `vantage run --resume RUN_ID` can carry on without the options being given again.
MANIFEST_DIR = "runs"


def manifest_path(output: Path | str, run_id: str) -> Path:
    return Path(output) / MANIFEST_DIR / f"{run_id}.json"


def write_manifest(output: Path | str, run_id: str, options: dict[str, Any]) -> Path:
    text = json.dumps({"run_id": run_id, "options": options}, indent=2, sort_keys=True)
    return atomic_write_text(manifest_path(output, run_id), text)


def read_manifest(output: Path | str, run_id: str) -> dict[str, Any] | None:
    """The options a run was started with, or None when it has no (readable) manifest."""
    try:
        data = json.loads(manifest_path(output, run_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    options = data.get("options") if isinstance(data, dict) else None
    return options if isinstance(options, dict) else None
