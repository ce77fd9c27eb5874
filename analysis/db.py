"""DuckDB views over one or more Vantage datasets (hive-partitioned Parquet). The files come
from the one discovery of probe.dataset (``discover``: every file checked, footer and data
pages); a corrupt, foreign, misplaced or non-regular file, or a link loop, is skipped here with a
warning naming it."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import duckdb

from probe.dataset import (
    LAYOUT,
    REQUIRED_COLUMNS,
    DatasetError,
    Discovery,
    check_file,
    discover,
    valid_files,
)
from probe.schema import FOLLOW_UP_EXPERIMENTS

log = logging.getLogger(__name__)

class SkippedFileWarning(UserWarning):
    """A Parquet file was left out of the analysis (corrupt, or not Vantage measurements)."""



def quote_literal(value: str) -> str:
    """``value`` as an SQL string literal, for the places DuckDB takes no bound parameter
    (view definitions, COMMENT ON: "This type of statement can't be prepared"). Everywhere
    else a value is bound (``con.execute(sql, params)``, ``con.sql(sql, params=...)``)."""
    return "'" + value.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (table, view or column names cannot be bound)."""
    return '"' + name.replace('"', '""') + '"'


def ident_list(names: Sequence[str]) -> str:
    """``names`` as a comma-separated list of quoted identifiers (a SELECT list of columns)."""
    return ", ".join(quote_ident(n) for n in names)


def _follow_ups() -> str:
    # written into view definitions (measurements, path_traces), which take no parameter
    return "(" + ", ".join(quote_literal(e) for e in FOLLOW_UP_EXPERIMENTS) + ")"


def _file_list(files: Sequence[Path]) -> str:
    # written into the view's definition, which takes no parameter (the view outlives this
    # call: `vantage analyze --db` stores it in the analyst's DuckDB file)
    return "[" + ", ".join(quote_literal(str(f)) for f in files) + "]"


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
    view = " UNION ALL BY NAME ".join(parts)
    con.execute(f"CREATE OR REPLACE VIEW all_measurements AS {view}")
    fill = missing_columns_sql(con, "all_measurements")
    if fill:
        con.execute(f"CREATE OR REPLACE VIEW all_measurements AS SELECT *, {fill} FROM ({view})")
    # Follow-up rows (path_trace: where the censor sits) are no reachability measurement: every
    # verdict, signal and count reads `measurements`; `path_traces` shows them.
    con.execute(f"CREATE OR REPLACE VIEW measurements AS SELECT * FROM all_measurements "
                f"WHERE experiment NOT IN {_follow_ups()}")
    create_views(con)
    # every optional column is there now (filled above), `traces` too
    con.execute(f"CREATE OR REPLACE VIEW path_traces AS {PATH_TRACES_VIEW}")
    return con


def missing_columns_sql(con: duckdb.DuckDBPyConnection, relation: str) -> str:
    """``CAST(NULL AS <type>) AS <name>`` for each optional column (probe.schema.OPTIONAL_COLUMNS)
    that ``relation`` (a table or view name) lacks, "" when none: datasets written before the
    column existed still read, with the column empty, so queries naming it work and give what
    they gave before."""
    import pyarrow as pa

    from probe.schema import MEASUREMENT_SCHEMA, OPTIONAL_COLUMNS

    have = set(con.table(relation).columns)
    missing = [n for n in MEASUREMENT_SCHEMA.names if n in OPTIONAL_COLUMNS and n not in have]
    if not missing:
        return ""
    # DuckDB's name of each column's type (a type, not a value: it cannot be a parameter)
    empty = con.from_arrow(pa.schema([MEASUREMENT_SCHEMA.field(n) for n in missing]).empty_table())
    types = dict(zip(empty.columns, (str(t) for t in empty.types), strict=True))
    return ", ".join(f"CAST(NULL AS {types[n]}) AS {quote_ident(n)}" for n in missing)


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
    # -- quic
    "quic_handshakes": _flat("quic", "handshake"),
}


# One row per trace of a path_trace measurement (empty when no file has the `traces` column).
PATH_TRACES_VIEW = f"""
    SELECT {_KEYS}, probe_network, experiment, t.protocol, t.ip, t.port, t.hostname, t.failure,
           t.interference_ttl, t.interference, t.hop_before, t.basis, t.target_ttl, t.hops
    FROM (SELECT {_KEYS}, probe_network, experiment, unnest(traces) AS t FROM all_measurements
          WHERE experiment IN {_follow_ups()})"""


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    for name, sql in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {quote_ident(name)} AS {sql}")


__all__ = [
    "LAYOUT",
    "REQUIRED_COLUMNS",
    "VIEWS",
    "DatasetError",
    "Discovery",
    "SkippedFileWarning",
    "check_file",
    "create_views",
    "discover",
    "open_datasets",
    "valid_files",
]
