"""DuckDB views over one or more Vantage datasets (hive-partitioned Parquet), with cheap
validation that skips a corrupt or foreign Parquet file with a warning naming it."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

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


def find_parquet_files(path: Path) -> list[Path]:
    """A dataset root (``measurements/date=*/probe_cc=*/``), a directory of Parquet files
    (searched recursively) or a single Parquet file. Dot-files (writes in flight) are skipped."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"{path}: no such dataset directory")
    base = path / "measurements" if (path / "measurements").is_dir() else path
    return sorted(p for p in base.rglob("*.parquet") if not any(part.startswith(".") for part in p.relative_to(base).parts))


def check_file(path: Path) -> str | None:
    """Why a file cannot be read as Vantage measurements (None when it can): reads only the
    footer, so a corrupt file costs microseconds and never a traceback."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException, ValueError) as exc:
        return f"not a readable Parquet file ({str(exc).splitlines()[0][:120]})"
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
    return None


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
    good: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for p in paths:
        for f in find_parquet_files(Path(p)):
            if f.resolve() in seen:  # the same dataset given twice counts once
                continue
            seen.add(f.resolve())
            reason = check_file(f)
            if reason is None:
                good.append(f)
            else:
                skipped.append((f, reason))
    return good, skipped


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def open_datasets(
    paths: Sequence[Path | str], con: duckdb.DuckDBPyConnection | None = None
) -> duckdb.DuckDBPyConnection:
    """A connection with view ``measurements`` (every row of every valid file) and the
    convenience views of :data:`VIEWS`. Corrupt or foreign files are skipped with a
    :class:`SkippedFileWarning` naming them; :class:`DatasetError` when nothing usable remains."""
    if not paths:
        raise DatasetError("no dataset directory given")
    good, skipped = valid_files(paths)
    for f, reason in skipped:
        msg = f"skipping {f}: {reason}"
        warnings.warn(msg, SkippedFileWarning, stacklevel=2)
    if not good:
        where = ", ".join(str(p) for p in paths)
        if skipped:
            raise DatasetError(f"no valid Vantage Parquet file in {where} ({len(skipped)} skipped: {skipped[0][0]}: {skipped[0][1]})")
        raise DatasetError(f"no Parquet files in {where}")
    con = con if con is not None else duckdb.connect()
    files = "[" + ", ".join(_sql_str(str(f)) for f in good) + "]"
    # hive_partitioning gives date and probe_cc from the directory names; a plain directory
    # of files without partitions gets probe_cc NULL and date from the start time.
    hive = all("probe_cc=" in str(f) for f in good)
    if hive:
        source = f"read_parquet({files}, hive_partitioning=true, union_by_name=true, hive_types={{'date': VARCHAR, 'probe_cc': VARCHAR}})"
        select = "*"
    else:
        source = f"read_parquet({files}, hive_partitioning=false, union_by_name=true)"
        select = "*, strftime(measurement_start_time AT TIME ZONE 'UTC', '%Y-%m-%d') AS date, CAST(NULL AS VARCHAR) AS probe_cc"
    con.execute(f"CREATE OR REPLACE VIEW measurements AS SELECT {select} FROM {source}")
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
