"""Aggregates of verdicts per (day, country, ASN, input), OONI-style counts, and the DuckDB
database file `vantage analyze --db` writes for analysts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

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
       count(*) FILTER (WHERE status = 'no_connectivity') AS no_connectivity_count,
       mode(layer) FILTER (WHERE status = 'blocked') AS top_layer,
       mode(method) FILTER (WHERE status = 'blocked') AS top_method
FROM {verdicts}
GROUP BY ALL
ORDER BY day, probe_cc, probe_asn, input, experiment
"""


def create_aggregates_view(con: duckdb.DuckDBPyConnection, verdicts: str = "verdicts") -> None:
    """View ``aggregates`` over a verdicts table or view already in ``con``."""
    con.execute(f"CREATE OR REPLACE VIEW aggregates AS {AGGREGATES_SQL.format(verdicts=verdicts)}")


def aggregate(verdicts: pa.Table) -> pa.Table:
    """Aggregates of a verdicts table (as returned by compute_verdicts)."""
    con = duckdb.connect()
    try:
        con.register("v", verdicts)
        return con.sql(AGGREGATES_SQL.format(verdicts="v")).to_arrow_table()
    finally:
        con.close()


def write_database(path: Path, datasets: Sequence[Path | str], verdicts: pa.Table) -> None:
    """A DuckDB file with the dataset views (over the Parquet files, by absolute path), table
    ``verdicts`` and view ``aggregates``. Written under a temporary name, then renamed."""
    from analysis.db import open_datasets

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        con = duckdb.connect(str(tmp))
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # already reported by the caller
                open_datasets([Path(p).resolve() for p in datasets], con)
            con.register("_verdicts_arrow", verdicts)
            con.execute("CREATE OR REPLACE TABLE verdicts AS SELECT * FROM _verdicts_arrow")
            con.unregister("_verdicts_arrow")
            create_aggregates_view(con)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        Path(str(tmp) + ".wal").unlink(missing_ok=True)
        raise
