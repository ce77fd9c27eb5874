"""DuckDB views over one or more Vantage datasets (hive-partitioned Parquet). One discovery
function finds and checks every file (footer and data pages), and skips a corrupt, foreign,
misplaced or non-regular file, or a link loop, with a warning naming it."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from probe.schema import MEASUREMENT_SCHEMA

log = logging.getLogger(__name__)

# Columns a file must have (with these types) to be read as Vantage measurements: every
# in-file column of the schema (the analyzer reads them all).
REQUIRED_COLUMNS = tuple(MEASUREMENT_SCHEMA.names)


class DatasetError(Exception):
    """No usable measurements in the given paths (the message says why, naming them)."""


class SkippedFileWarning(UserWarning):
    """A Parquet file was left out of the analysis (corrupt, or not Vantage measurements)."""


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


def find_parquet_files(path: Path) -> list[Path]:
    """The readable Parquet files of one dataset path (see :func:`discover`)."""
    return discover([path]).files


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
    return pa.types.is_integer(got) and pa.types.is_integer(want)


def valid_files(paths: Iterable[Path | str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(good files, [(skipped file, reason)]) over every given dataset path."""
    found = discover(paths)
    return found.files, found.skipped


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _file_list(files: Sequence[Path]) -> str:
    return "[" + ", ".join(_sql_str(str(f)) for f in files) + "]"


def open_datasets(
    paths: Sequence[Path | str], con: duckdb.DuckDBPyConnection | None = None
) -> duckdb.DuckDBPyConnection:
    """A connection with view ``measurements`` (every row of every valid file) and the
    convenience views of :data:`VIEWS`. Corrupt or foreign files are skipped with a
    :class:`SkippedFileWarning` naming them; :class:`DatasetError` when nothing usable remains."""
    if not paths:
        raise DatasetError("no dataset directory given")
    found = discover(paths)
    good, skipped = found.files, found.skipped
    for f, reason in skipped:
        msg = f"skipping {f}: {reason}"
        warnings.warn(msg, SkippedFileWarning, stacklevel=2)
    if not good:
        where = ", ".join(str(p) for p in paths)
        if skipped:
            raise DatasetError(f"no valid Vantage Parquet file in {where} ({len(skipped)} skipped: {skipped[0][0]}: {skipped[0][1]})")
        raise DatasetError(f"no Parquet files in {where}")
    con = con if con is not None else duckdb.connect()
    # hive_partitioning gives date and probe_cc from the directory names; a loose file of a
    # plain directory gets probe_cc NULL and date from the start time. Each kind is read on
    # its own, so one loose file never turns partitioning off for all the others.
    parts = []
    if found.hive:
        parts.append(f"SELECT * FROM read_parquet({_file_list(found.hive)}, hive_partitioning=true, union_by_name=true, "
                     "hive_types={'date': VARCHAR, 'probe_cc': VARCHAR})")
    if found.plain:
        parts.append("SELECT *, strftime(measurement_start_time AT TIME ZONE 'UTC', '%Y-%m-%d') AS date, "
                     f"CAST(NULL AS VARCHAR) AS probe_cc FROM read_parquet({_file_list(found.plain)}, "
                     "hive_partitioning=false, union_by_name=true)")
    con.execute(f"CREATE OR REPLACE VIEW measurements AS {' UNION ALL BY NAME '.join(parts)}")
    create_views(con)
    return con


# Convenience views: one row per observation, flattened for analysts.
_KEYS = "measurement_id, role, input, probe_cc, probe_asn, measurement_start_time"


def _flat(column: str, alias: str, with_index: bool = False) -> str:
    idx = f", generate_subscripts({column}, 1) AS {alias}_index" if with_index else ""
    outer_idx = f", {alias}_index" if with_index else ""
    return (f"SELECT {_KEYS}{outer_idx}, unnest({alias}) FROM "
            f"(SELECT {_KEYS}, unnest({column}) AS {alias}{idx} FROM measurements)")


VIEWS = {
    "probe_measurements": "SELECT * FROM measurements WHERE role = 'probe'",
    "control_measurements": "SELECT * FROM measurements WHERE role = 'control'",
    "dns_queries": _flat("dns", "query"),
    "dns_answers": f"""
        SELECT {_KEYS}, query.resolver, query.engine, query.query_type, query.hostname, query.rcode,
               query.failure, query.tag, answer.answer_type, answer.value AS answer, answer.ttl
        FROM (SELECT {_KEYS}, query, unnest(query.answers) AS answer
              FROM (SELECT {_KEYS}, unnest(dns) AS query FROM measurements))""",
    "tcp_connects": _flat("tcp", "connect"),
    "tls_handshakes": _flat("tls", "handshake"),
    "http_requests": _flat("http", "hop", with_index=True),
    "vpn_handshakes": _flat("vpn", "handshake"),
}


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    for name, sql in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
