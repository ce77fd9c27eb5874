"""Aggregates of verdicts per (day, country, ASN, input), OONI-style counts, and the DuckDB
database file `vantage analyze --db` writes for analysts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from analysis.db import quote_ident, quote_literal
from probe.dataset import atomic_path
from probe.errors import VantageError

# anomaly_count counts every blocked verdict (confirmed ones included, as OONI counts them);
# confirmed_count those a blockpage fingerprint confirmed; failure_count the probe's own faults.
AGGREGATES_SQL = """
SELECT CAST(measurement_start_time AT TIME ZONE 'UTC' AS DATE) AS day,
       probe_cc, probe_asn, input, experiment,
       count(*) AS measurement_count,
       count(*) FILTER (WHERE status = 'ok') AS ok_count,
       count(*) FILTER (WHERE status = 'blocked') AS anomaly_count,
       count(*) FILTER (WHERE status = 'blocked' AND confirmed) AS confirmed_count,
       count(*) FILTER (WHERE status = 'probe_failure') AS failure_count,
       count(*) FILTER (WHERE status = 'down') AS down_count,
       count(*) FILTER (WHERE status = 'no_control') AS no_control_count,
       -- measurements taken while the vantage point had no network (issue 12's status)
       count(*) FILTER (WHERE status = 'no_connectivity') AS no_connectivity_count,
       -- targets slowed down (issue 20's throttling), and by how much at the median
       count(*) FILTER (WHERE status = 'throttled') AS throttled_count,
       median(throttle_factor) FILTER (WHERE status = 'throttled') AS median_throttle_factor,
       mode(layer) FILTER (WHERE status = 'blocked') AS top_layer,
       mode(method) FILTER (WHERE status = 'blocked') AS top_method
FROM verdicts
GROUP BY ALL
ORDER BY day, probe_cc, probe_asn, input, experiment
"""


def create_aggregates_view(con: duckdb.DuckDBPyConnection) -> None:
    """View ``aggregates`` over the table ``verdicts`` of the database file ``con`` writes."""
    con.execute(f"CREATE OR REPLACE VIEW aggregates AS {AGGREGATES_SQL}")


def aggregate(verdicts: pa.Table) -> pa.Table:
    """Aggregates of a verdicts table (as returned by compute_verdicts)."""
    con = duckdb.connect()
    try:
        # the SQL reads the Arrow table under the name "verdicts", for this one query only
        rel = con.from_arrow(verdicts).query("verdicts", AGGREGATES_SQL)
        assert rel is not None  # a SELECT always gives a relation
        return rel.to_arrow_table()
    finally:
        con.close()


class DatabaseError(VantageError):
    """The database file cannot take Vantage's tables (one line naming it and why)."""


# The comment DuckDB keeps on every table and view `vantage analyze` writes: the mark that lets a
# later run replace them while never touching an analyst's own tables in the same file.
MARK = "vantage analyze"


def vantage_objects() -> tuple[str, ...]:
    """Names of the tables and views `vantage analyze --db` writes."""
    from analysis.db import VIEWS

    return ("measurements", *VIEWS, "verdicts", "aggregates")


def _fill(con: duckdb.DuckDBPyConnection, datasets: Sequence[Path | str], verdicts: pa.Table,
          provenance: dict[str, Any] | None) -> None:
    import warnings

    from analysis.db import open_datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # already reported by the caller
        open_datasets([Path(p).resolve() for p in datasets], con)
    # the verdict stage's Arrow table becomes the file's table (replacing Vantage's own, as
    # _refuse_foreign checked)
    con.execute("DROP TABLE IF EXISTS verdicts")
    con.from_arrow(verdicts).create("verdicts")
    create_aggregates_view(con)
    for name in vantage_objects():
        kind = "TABLE" if name == "verdicts" else "VIEW"
        text = MARK if name != "verdicts" or provenance is None else f"{MARK}; provenance: {json.dumps(provenance)}"
        # COMMENT takes no bound parameter: the name is quoted as an identifier, the text as an
        # SQL string literal
        con.execute(f"COMMENT ON {kind} {quote_ident(name)} IS {quote_literal(text)}")


def write_database(path: Path, datasets: Sequence[Path | str], verdicts: pa.Table,
                   provenance: dict[str, Any] | None = None) -> None:
    """A DuckDB file with the dataset views (over the Parquet files, by absolute path), table
    ``verdicts`` (its comment holds the provenance JSON) and view ``aggregates``.

    A new file is written under a temporary name, then renamed. An existing DuckDB file keeps
    every table and view of its own (the analyst's): only Vantage's, marked by their comment,
    are replaced, in one transaction; a table or view of the analyst's that bears one of
    Vantage's names stops it with :class:`DatabaseError` instead of being replaced."""
    path = Path(path)
    if path.exists():
        _update_database(path, datasets, verdicts, provenance)
        return
    with atomic_path(path) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            _fill(con, datasets, verdicts, provenance)
            con.execute("CHECKPOINT")
        finally:
            con.close()


def check_database(path: Path) -> None:
    """Fail early (:class:`DatabaseError`, one line) when ``path`` exists and cannot take
    Vantage's tables: not a DuckDB file, locked by another program, or holding a table or view
    of the analyst's under one of Vantage's names."""
    path = Path(path)
    if not path.exists():
        return
    con = _connect(path, read_only=True)
    try:
        _refuse_foreign(con, path)
    finally:
        con.close()


def _connect(path: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        raise DatabaseError(f"{path}: cannot open as a DuckDB database ({str(exc).splitlines()[0][:160]})") from None


def _refuse_foreign(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    found = {name: (kind, comment) for name, kind, comment in con.sql(
        "SELECT table_name, 'table', comment FROM duckdb_tables() WHERE schema_name = 'main' "
        "UNION ALL SELECT view_name, 'view', comment FROM duckdb_views() "
        "WHERE NOT internal AND schema_name = 'main'").fetchall()}
    foreign = [(n, found[n][0]) for n in vantage_objects() if n in found and not (found[n][1] or "").startswith(MARK)]
    if foreign:
        name, kind = foreign[0]
        raise DatabaseError(f"{path}: holds a {kind} {name!r} that Vantage did not write; Vantage would replace "
                            "it. Rename it, or give another --db file")


def _update_database(path: Path, datasets: Sequence[Path | str], verdicts: pa.Table,
                     provenance: dict[str, Any] | None) -> None:
    con = _connect(path)
    try:
        _refuse_foreign(con, path)
        con.execute("BEGIN TRANSACTION")
        try:
            _fill(con, datasets, verdicts, provenance)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("CHECKPOINT")
    finally:
        con.close()
