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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from probe.errors import VantageError
from probe.schema import MEASUREMENT_SCHEMA, Measurement, records_to_table, validate

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


class StoreError(VantageError):
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


# --------------------------------------------------------------------------- finding and checking files
# THE discovery of dataset files for every reader (analyze, report, events, the aggregates
# database, the OONI import's dedupe). The writer's own listing of its parts is
# iter_dataset_files above (complete files of one dataset root, not opened).

# Columns a file must have (with these types) to be read as Vantage measurements: every
# in-file column of the schema (the analyzer reads them all), but those added after datasets
# were first written: a file without one still reads (the readers union schemas by name and
# fill it with NULL; the analyzer checks the column exists before it reads it).
ADDED_COLUMNS = frozenset({"downloads"})
REQUIRED_COLUMNS = tuple(n for n in MEASUREMENT_SCHEMA.names if n not in ADDED_COLUMNS)


class DatasetError(VantageError):
    """No usable measurements in the given paths (the message says why, naming them)."""


# The dataset layout (probe/dataset.py writes it): measurements/date=YYYY-MM-DD/probe_cc=XX/*.parquet.
# probe_cc and date come from the directory names, so a file elsewhere has neither.
_DATE_DIR = re.compile(r"date=[^/]+")
_CC_DIR = re.compile(r"probe_cc=[^/]+")
LAYOUT = "measurements/date=YYYY-MM-DD/probe_cc=XX/*.parquet"


@dataclass
class Discovery:
    """What a set of dataset paths holds: files to read and files left out (with why)."""

    hive: list[Path] = field(default_factory=list)  # in the partition layout: date, probe_cc from the path
    plain: list[Path] = field(default_factory=list)  # loose files of a plain directory: probe_cc NULL
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return self.hive + self.plain


def _in_layout(path: Path) -> bool:
    return bool(_CC_DIR.fullmatch(path.parent.name) and _DATE_DIR.fullmatch(path.parent.parent.name))


def _walk(top: Path, seen_dirs: set[tuple[int, int]], out: list[tuple[Path, str | None]]) -> None:
    """Every ``*.parquet`` under ``top`` as (path, None), or (path, why it is left out).

    Directory symbolic links are followed once (a partition linked in from elsewhere is
    data); a link back to a directory already walked (a loop) is reported, not followed.
    Nothing is opened here: a FIFO named x.parquet would block the first reader for ever.
    """
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError as exc:
        out.append((top, f"cannot list directory ({exc.strerror or exc})"))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue  # a write in flight (probe/dataset.py) or a hidden file
        path = Path(entry.path)
        try:
            st = os.stat(path)  # follows links: ELOOP for a link loop, ENOENT for a dangling link
        except OSError as exc:
            if entry.name.endswith(".parquet") or entry.is_symlink():
                why = "symbolic link loop" if exc.errno == errno.ELOOP else f"cannot read ({exc.strerror or exc})"
                out.append((path, why))
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                out.append((path, "symbolic link loop (a directory already read)"))
                continue
            seen_dirs.add(key)
            _walk(path, seen_dirs, out)
        elif entry.name.endswith(".parquet"):
            if stat.S_ISREG(st.st_mode):
                out.append((path, None))
            else:
                out.append((path, f"not a regular file ({_file_kind(st.st_mode)})"))


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a file"


def discover(paths: Iterable[Path | str]) -> Discovery:
    """THE way analysis finds the files of datasets: every reader (analyze, report, events,
    the aggregates database) goes through here.

    A path is a dataset root (with ``measurements/``: only files in the partition layout are
    read, a stray file is rejected rather than nulling probe_cc for all), a directory of
    Parquet files (searched recursively; files in the layout still get their partitions), or
    one Parquet file. Each file is checked (:func:`check_file`, footer and data pages) before
    use; a bad one is skipped with the reason. Raises DatasetError for a path that does not exist.
    """
    found = Discovery()
    seen_files: set[tuple[int, int]] = set()
    for given in paths:
        root = Path(given)
        try:
            st = os.stat(root)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise DatasetError(f"{root}: symbolic link loop") from None
            raise DatasetError(f"{root}: no such dataset directory") from None
        listing: list[tuple[Path, str | None]] = []
        dataset_root = False
        if stat.S_ISDIR(st.st_mode):
            base = root / "measurements"
            dataset_root = base.is_dir()
            top = base if dataset_root else root
            top_st = os.stat(top)
            _walk(top, {(st.st_dev, st.st_ino), (top_st.st_dev, top_st.st_ino)}, listing)
        elif stat.S_ISREG(st.st_mode):
            listing.append((root, None))
        else:
            listing.append((root, f"not a regular file ({_file_kind(st.st_mode)})"))
        for path, why in listing:
            if why is None:
                try:
                    fst = os.stat(path)
                except OSError as exc:  # gone meanwhile
                    why = f"cannot read ({exc.strerror or exc})"
                else:
                    key = (fst.st_dev, fst.st_ino)
                    if key in seen_files:  # the same dataset (or file) given twice counts once
                        continue
                    seen_files.add(key)
            in_layout = _in_layout(path)
            if why is None and dataset_root and not in_layout:
                why = f"outside the partition layout ({LAYOUT}); move it into its partition"
            if why is None:
                why = check_file(path)
            if why is not None:
                found.skipped.append((path, why))
            elif in_layout:
                found.hive.append(path)
            else:
                found.plain.append(path)
    return found


# Checking a file reads all of it; analyze, report and events may each open the same
# datasets in one process, so a result is kept while the file is unchanged.
_checked: dict[tuple[str, int, int, int, int], str | None] = {}


def check_file(path: Path) -> str | None:
    """Why a file cannot be read as Vantage measurements (None when it can).

    The footer (schema) first, then every row group is read once, so a corrupt data page
    behind an intact footer is found here, naming the file, instead of stopping DuckDB in
    the middle of a query. Never opens anything but a regular file (a FIFO would block).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        return "symbolic link loop" if exc.errno == errno.ELOOP else f"cannot open ({exc.strerror or exc})"
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return f"not a regular file ({_file_kind(st.st_mode)})"
        key = (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in _checked:
            return _checked[key]
        reason = _check_open_file(fh)
        if len(_checked) > 100_000:
            _checked.clear()
        _checked[key] = reason
        return reason


def _check_open_file(fh: BinaryIO) -> str | None:
    try:
        pf = pq.ParquetFile(fh)
        schema = pf.schema_arrow
    except Exception as exc:  # pyarrow raises OSError, ArrowInvalid, ValueError... for bad bytes
        return f"not a readable Parquet file ({_first_line(exc)})"
    names = set(schema.names)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        return f"not Vantage measurements (missing columns: {', '.join(missing[:6])}{more})"
    for name in names & set(MEASUREMENT_SCHEMA.names):
        want = MEASUREMENT_SCHEMA.field(name).type
        got = schema.field(name).type
        if got != want and not _compatible(got, want):
            return f"column {name!r} has type {got}, expected {want}"
    for i in range(pf.num_row_groups):
        try:
            pf.read_row_group(i)  # decodes every page of the row group; dropped at once
        except Exception as exc:  # corrupt page, bad compression, wrong lengths...
            return f"corrupt data in row group {i} ({_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:120]


def _compatible(got: pa.DataType, want: pa.DataType) -> bool:
    # Nested structs may gain fields over schema versions (union_by_name fills the gaps).
    if pa.types.is_timestamp(got) and pa.types.is_timestamp(want):
        return True
    if pa.types.is_string(want) and (pa.types.is_large_string(got) or pa.types.is_string(got)):
        return True
    if pa.types.is_list(want) and (pa.types.is_list(got) or pa.types.is_large_list(got)):
        return _compatible(got.value_type, want.value_type) or got.value_type == want.value_type
    if pa.types.is_struct(want) and pa.types.is_struct(got):
        gf = {got.field(i).name: got.field(i).type for i in range(got.num_fields)}
        for i in range(want.num_fields):
            f = want.field(i)
            if f.name in gf and gf[f.name] != f.type and not _compatible(gf[f.name], f.type):
                return False
        return True
    return bool(pa.types.is_integer(got) and pa.types.is_integer(want))


def valid_files(paths: Iterable[Path | str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(good files, [(skipped file, reason)]) over every given dataset path."""
    found = discover(paths)
    return found.files, found.skipped


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
