"""The verdict stage on an Apache Spark cluster: the same verdicts and events as DuckDB, bit for bit.

The rules are never translated to Spark SQL (a transpiler changes NULL handling of ``flatten``,
sub-second ``epoch``, list indexing and ASOF joins: verdicts would silently differ). Instead
Spark moves the rows and the project's own DuckDB code judges them, shard by shard:

1. Spark reads the hive-partitioned Parquet of the datasets (the files ``analysis.db.discover``
   accepts, so the same files are read and the same ones skipped).
2. Connectivity (analysis/connectivity.py) is a cross-input aggregate per vantage point and
   hour, which no shard can compute alone: it is computed once over all rows by DuckDB on the
   driver, over a projection of the columns it needs, and each row carries its ``offline`` flag
   into its shard.
3. Rows go to shards keyed by (bucket of (input, experiment), UTC day of the probe): a probe row
   to its own shard; a control run row (``control_for`` NULL) to every day its pairing window
   reaches (so a probe just after midnight still finds the control of 23:50); a helper's
   control row (``control_for`` set) to the shard of the probe it was made for. The number of
   buckets grows with the busiest day, so a shard stays near ``rows_per_shard`` rows however
   much data there is: executor memory is bounded by the shard, not by the dataset.
4. ``groupBy(shard).applyInArrow`` runs :func:`analysis.verdicts.compute_verdicts` on each shard
   in an in-process DuckDB, with the fingerprint and ASN files Spark shipped with the job
   (``SparkContext.addFile``), and checks the shard invariants (:class:`ShardInvariantError`).

Events (``find_events_spark``): the per-(country, network, hour) signal counts are computed per
shard and summed by Spark; the detector and classifier run on the driver over the summed signals.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from analysis.db import ident_list
from analysis.verdicts import VERDICT_SCHEMA, VerdictError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from analysis.pipeline import AnalysisOptions, AnalyzeResult, Verdicts
    from analysis.shutdown import Detection

INSTALL_HINT = ("--engine spark needs PySpark and a Java 17+ runtime: pip install 'vantage[spark]' "
                "(and e.g. apt-get install openjdk-17-jre-headless)")
# A shard this size (probe rows plus the controls copied in) takes DuckDB about 0.3 s and well
# under 200 MB; the bucket count is chosen so the busiest day's shards stay near it.
DEFAULT_ROWS_PER_SHARD = 100_000
DAY_US = 86_400 * 1_000_000
SHARD_COLS = ("_s_bucket", "_s_day")
_EXTRA_COLS = ("_s_bucket", "_s_day", "_offline", "_t_us")


class SparkEngineError(VerdictError):
    """Spark cannot run the stage (not installed, no cluster at that address); one line."""


class ShardInvariantError(AssertionError):
    """A shard broke the rules that make shard verdicts equal to whole-table verdicts."""


def require_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SparkEngineError(INSTALL_HINT) from None
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise SparkEngineError(INSTALL_HINT)


# --------------------------------------------------------------------------- the session


def _session_conf() -> dict[str, str]:
    return {
        "spark.sql.session.timeZone": "UTC",
        # date=2026-11-01 and probe_cc=IR stay strings, as DuckDB's hive_types make them
        "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": "true",
    }


@contextmanager
def spark_session(master: str, conf: dict[str, str] | None = None) -> Iterator[SparkSession]:
    """A session on ``master`` (``spark://HOST:PORT`` or ``local[N]``). An active session on the
    same master is reused and left running (tests start one per session); one made here is
    stopped at the end."""
    require_pyspark()
    from pyspark.sql import SparkSession

    # executors run the driver's interpreter (its virtualenv has Vantage, DuckDB and pyarrow)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    if active is not None and active.sparkContext.master == master:
        with _one_line():
            yield active
        return
    builder = SparkSession.builder.master(master).appName("vantage analyze")
    for k, v in {**_session_conf(), **(conf or {})}.items():
        builder = builder.config(k, v)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # py4j / JVM start-up: one line
        raise SparkEngineError(f"cannot start Spark on {master}: {str(exc).splitlines()[0][:200]}") from None
    spark.sparkContext.setLogLevel("ERROR")
    try:
        with _one_line():
            yield spark
    finally:
        spark.stop()


@contextmanager
def _one_line() -> Iterator[None]:
    """A failed Spark job (a JVM error, an exception in a shard) becomes one SparkEngineError
    line; a broken shard invariant keeps its own name in that line."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    try:
        yield
    except (PySparkException, Py4JError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        invariant = [ln for ln in lines if "ShardInvariantError" in ln]
        errors = [ln for ln in lines if re.match(r"^[\w.$]+(Error|Exception)\b[^:]*:", ln)]
        line = (invariant or errors or lines or [type(exc).__name__])[-1 if invariant or not errors else 0]
        raise SparkEngineError(f"Spark job failed: {line[:300]}") from None


# --------------------------------------------------------------------------- reading


def read_measurements(spark: SparkSession, paths: Sequence[Path | str]) -> DataFrame:
    """Every row of every valid dataset file as one DataFrame, with ``date`` and ``probe_cc``
    as DuckDB's ``measurements`` view has them (from the partition directories; for a loose file
    the start time's UTC day and NULL)."""
    from pyspark.sql import functions as F

    from analysis.db import DatasetError, discover

    found = discover(paths)
    if not found.files:
        raise DatasetError(f"no valid Vantage Parquet file in {', '.join(str(p) for p in paths)}")
    frames: list[DataFrame] = []
    roots: dict[Path, list[str]] = {}
    for f in found.hive:  # .../<root>/date=D/probe_cc=CC/file.parquet
        roots.setdefault(f.parent.parent.parent, []).append(str(f))
    for root, files in roots.items():
        frames.append(spark.read.option("basePath", str(root)).option("mergeSchema", "true").parquet(*files))
    if found.plain:
        plain = spark.read.option("mergeSchema", "true").parquet(*(str(f) for f in found.plain))
        plain = plain.withColumn("date", F.date_format("measurement_start_time", "yyyy-MM-dd")) \
                     .withColumn("probe_cc", F.lit(None).cast("string"))
        frames.append(plain)
    df = frames[0]
    for other in frames[1:]:
        df = df.unionByName(other, allowMissingColumns=True)
    from probe.schema import FOLLOW_UP_EXPERIMENTS

    # As DuckDB's `measurements` view: follow-up rows (path_trace) are no reachability measurement.
    return df.where(~F.col("experiment").isin(*FOLLOW_UP_EXPERIMENTS))


# --------------------------------------------------------------------------- shipping files


def _ship_files(spark: SparkSession, options: AnalysisOptions) -> tuple[list[str], str | None, tempfile.TemporaryDirectory[str]]:
    """Copy the fingerprint sets (in the order the driver loaded them) and the ASN database under
    unique names and add them to the job; return the names executors ask SparkFiles for."""
    from analysis.pipeline import load_fingerprint_set, resolve_asn_db

    fps, _ = load_fingerprint_set(options)
    asn_db = resolve_asn_db(options)
    tmp = tempfile.TemporaryDirectory(prefix="vantage-spark-files-")
    stamp = f"{os.getpid()}-{dt.datetime.now().strftime('%H%M%S%f')}"
    names: list[str] = []
    for i, src in enumerate(fps.sources):
        name = f"vantage-{stamp}-fp{i}-{Path(src.path).name}"
        shutil.copyfile(src.path, Path(tmp.name) / name)
        spark.sparkContext.addFile(str(Path(tmp.name) / name))
        names.append(name)
    asn_name = None
    if asn_db is not None:
        asn_name = f"vantage-{stamp}-asn-{asn_db.name}"
        shutil.copyfile(asn_db, Path(tmp.name) / asn_name)
        spark.sparkContext.addFile(str(Path(tmp.name) / asn_name))
    return names, asn_name, tmp


_FP_CACHE: dict[tuple[str, ...], Any] = {}


def _executor_fingerprints(names: tuple[str, ...]) -> Any:
    """The fingerprint set on an executor, loaded once per Python worker from the shipped files
    (a worker judges many shards; building the matcher per shard would dominate)."""
    from pyspark import SparkFiles

    from analysis.fingerprints import load_fingerprints

    if names not in _FP_CACHE:
        _FP_CACHE.clear()
        _FP_CACHE[names] = load_fingerprints([SparkFiles.get(n) for n in names], include_project=False)
    return _FP_CACHE[names]


# --------------------------------------------------------------------------- shards


def shard_rows(df: DataFrame, offline: DataFrame, window_h: float, buckets: int) -> DataFrame:
    """Every row in the shards it belongs to, with ``_s_bucket``, ``_s_day`` and ``_offline``."""
    from pyspark.sql import functions as F

    w_us = int(round(window_h * 3600 * 1_000_000))
    df = df.withColumn("_t_us", F.unix_micros("measurement_start_time"))
    bucket = F.pmod(F.xxhash64("input", "experiment"), F.lit(buckets)).cast("int")
    probes = df.filter(F.col("role") == "probe") \
        .withColumn("_s_bucket", bucket).withColumn("_s_day", F.floor(F.col("_t_us") / DAY_US))
    # a control run serves every probe within the window: into each day the window touches
    controls = df.filter((F.col("role") == "control") & F.col("control_for").isNull()) \
        .withColumn("_s_bucket", bucket) \
        .withColumn("_s_day", F.explode(F.sequence(F.floor((F.col("_t_us") - w_us) / DAY_US),
                                                   F.floor((F.col("_t_us") + w_us) / DAY_US))))
    # a helper's control row measured one probe measurement: it goes where that probe goes
    keys = probes.select(F.col("measurement_id").alias("_pmid"), "_s_bucket", "_s_day").distinct()
    helpers = df.filter((F.col("role") == "control") & F.col("control_for").isNotNull()) \
        .join(keys.hint("merge"), F.col("control_for") == F.col("_pmid")).drop("_pmid")  # never broadcast: one row per probe
    rows = probes.unionByName(controls).unionByName(helpers)
    flags = offline.select(F.col("mid").alias("_omid"), F.col("role").alias("_orole"), F.lit(True).alias("_offline"))
    rows = rows.join(flags.hint("merge"), (F.col("measurement_id") == F.col("_omid")) & (F.col("role") == F.col("_orole")), "left") \
        .drop("_omid", "_orole").withColumn("_offline", F.coalesce(F.col("_offline"), F.lit(False)))
    return rows


def check_shard(rows: pa.Table, verdicts: pa.Table, window_h: float) -> None:
    """The invariants that make a shard's verdicts equal the whole table's (raises
    :class:`ShardInvariantError`): one shard day for every probe, every control run within the
    pairing window of that day, every helper row with its probe, one verdict per distinct probe
    measurement and none for anything else."""
    import pyarrow.compute as pc

    role = rows.column("role")
    probes = rows.filter(pc.equal(role, "probe"))
    days = set(pc.unique(rows.column("_s_day")).to_pylist())
    if len(days) != 1:
        raise ShardInvariantError(f"a shard spans days {sorted(days)}")
    day = days.pop()
    if probes.num_rows:
        pdays = probes.column("_t_us").to_numpy(zero_copy_only=False) // DAY_US
        if not (pdays == day).all():
            raise ShardInvariantError(f"a probe row outside its shard's day {day}")
    ctl = rows.filter(pc.and_(pc.equal(role, "control"), pc.is_null(rows.column("control_for"))))
    if ctl.num_rows:
        w_us = window_h * 3600 * 1_000_000
        t = ctl.column("_t_us").to_numpy(zero_copy_only=False)
        lo, hi = day * DAY_US - w_us, (day + 1) * DAY_US + w_us
        if not ((t >= lo) & (t < hi)).all():
            raise ShardInvariantError(f"a control run outside the pairing window of day {day}")
    helpers = rows.filter(pc.and_(pc.equal(role, "control"), pc.is_valid(rows.column("control_for"))))
    pmids = set(probes.column("measurement_id").to_pylist())
    if helpers.num_rows and not set(helpers.column("control_for").to_pylist()) <= pmids:
        raise ShardInvariantError("a helper's control row without its probe in the shard")
    got = verdicts.column("measurement_id").to_pylist()
    if len(got) != len(set(got)) or set(got) != pmids:
        raise ShardInvariantError(f"{len(got)} verdicts for {len(pmids)} distinct probe measurements")


def _judge(fp_names: tuple[str, ...], asn_name: str | None, public_nets: tuple[str, ...], window_h: float,
           ) -> Any:
    """The function each shard runs on an executor: compute_verdicts over the shard's rows."""

    def judge(key: tuple[Any, ...], rows: pa.Table) -> pa.Table:
        import duckdb
        from pyspark import SparkFiles

        from analysis.verdicts import compute_verdicts

        measurements = rows.drop_columns([c for c in _EXTRA_COLS if c in rows.column_names])
        offline = rows.filter(rows.column("_offline")).select(["measurement_id", "role"]) \
            .rename_columns(["mid", "role"])
        con = duckdb.connect(config={"threads": 1})
        try:
            con.register("measurements", measurements)
            verdicts = compute_verdicts(
                con, public_nets=public_nets, fingerprints=_executor_fingerprints(fp_names),
                control_window_h=window_h, asn_db=SparkFiles.get(asn_name) if asn_name else None, offline=offline)
        finally:
            con.close()
        check_shard(rows, verdicts, window_h)
        return verdicts

    return judge


_SPARK_VERDICT_DDL = ("measurement_id string not null, run_id string, input string, experiment string, "
                      "probe_cc string, probe_asn string, measurement_start_time timestamp, status string, "
                      "layer string, method string, confidence double, confirmed boolean, fingerprint string, "
                      "throttle_factor double, "  # throughput (analysis/throughput.py)
                      # the messaging apps' per-function verdicts (analysis/messaging.py FUNCTION_TYPE)
                      "functions array<struct<function: string, status: string, layer: string, failure: string, "
                      "endpoints: int, failed: int, control: string, detail: string>>")


_CONN_FACTS_DDL = ("measurement_id string, role string, probe_cc string, probe_asn string, run_id string, k string, "
                   "is_anchor boolean, hour_us bigint, reached boolean, fails array<string>, dns_answered boolean")
_CONN_KEYS = ("role", "probe_cc", "probe_asn", "run_id", "hour_us")
_CONN_COUNTS_DDL = ("role string, probe_cc string, probe_asn string, run_id string, hour_us bigint, "
                    "anchors_n bigint, anchors_ok bigint, inputs_n bigint, network_failed_n bigint")


def _duckdb_batches(sql: str, params: dict[str, Any] | None = None) -> Any:
    """A mapInArrow function: ``sql`` (over the relation ``batch``, with ``params`` bound) on
    each Arrow batch in an in-process DuckDB of one thread."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import duckdb

        con = duckdb.connect(config={"threads": 1})
        try:
            for b in batches:
                # the batch is named for this one query (a relation's query() binds no parameter)
                con.register("batch", pa.Table.from_batches([b]))
                yield from con.sql(sql, params=params).to_arrow_table().to_batches()
                con.unregister("batch")
        finally:
            con.close()

    return run


def connectivity_spark(spark: SparkSession, df: DataFrame) -> tuple[DataFrame, pa.Table, DataFrame]:
    """Connectivity (analysis/connectivity.py) without all rows in one place: (the (mid, role)
    of every measurement taken offline, as a DataFrame; the connectivity table on the driver;
    the per-row facts, persisted on the executors' disks: the caller unpersists them when the
    offline rows have been used).

    Each row's facts are a function of the row alone (``facts_sql``, in DuckDB per batch); what
    each side (probe, control) saw of an input is OR-ed by Spark; each batch then counts its
    rows per (vantage point, hour) (``COUNTS_SQL``) and Spark sums the partial counts. The
    decision is made on the driver over the summed counts by ``connectivity.decide``, the SQL
    the DuckDB path runs; only the disconnected (vantage point, hour) keys go back to the
    cluster, to flag the rows that reached nothing in them."""
    import duckdb
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from analysis import connectivity as conn

    c = F.col
    facts_cols = [x.split()[0] for x in _CONN_FACTS_DDL.split(", ")]
    facts_sql = (f"SELECT * EXCLUDE (hour), epoch_us(hour) AS hour_us FROM ({conn.facts_sql('batch', key='input')})")
    facts = df.mapInArrow(_duckdb_batches(f"SELECT {ident_list(facts_cols)} FROM ({facts_sql})"), _CONN_FACTS_DDL) \
        .persist(StorageLevel.DISK_ONLY)  # read twice (counts, offline rows); never held in memory
    try:
        side = facts.groupBy("role", "k").agg(F.bool_or("reached").alias("c_reached"),
                                              F.bool_or("dns_answered").alias("c_resolved")) \
            .withColumnRenamed("role", "c_role").withColumnRenamed("k", "c_k")
        # LEFT JOIN side c ON c.k = m.k AND c.role <> m.role (NULL inputs meet, as hash(NULL) does in DuckDB)
        joined = facts.join(side, c("k").eqNullSafe(c("c_k")) & (c("role") != c("c_role")), "left") \
            .drop("c_k", "c_role")
        failed = (f"SELECT * EXCLUDE (hour_us), hour_us AS hour, "
                  f"{conn.network_failed_sql('m.c_reached', 'm.c_resolved')} AS network_failed FROM batch m")
        counts_sql = (f"SELECT role, probe_cc, probe_asn, run_id, hour AS hour_us, {ident_list(conn.COUNT_COLUMNS)} "
                      f"FROM ({conn.COUNTS_SQL.format(rows=f'({failed})')})")
        partial = joined.mapInArrow(_duckdb_batches(counts_sql, conn.FAILED_PARAMS), _CONN_COUNTS_DDL)
        summed = partial.groupBy(*_CONN_KEYS).agg(*[F.sum(x).cast("long").alias(x) for x in conn.COUNT_COLUMNS]).toArrow()
        con = duckdb.connect()
        try:
            counts = con.from_arrow(summed).project(
                "role, probe_cc, probe_asn, run_id, make_timestamp(hour_us) AT TIME ZONE 'UTC' AS hour, "
                + ident_list(conn.COUNT_COLUMNS)).to_arrow_table()
            table = conn.decide(con, counts)
            down = con.from_arrow(table).filter("NOT connected") \
                .project("role, probe_cc, probe_asn, run_id, epoch_us(hour) AS hour_us").to_arrow_table()
        finally:
            con.close()
        down_df = spark.createDataFrame(down, schema=", ".join(
            f"{k} {'bigint' if k == 'hour_us' else 'string'}" for k in _CONN_KEYS)).select(
            *[c(k).alias(f"d_{k}") for k in _CONN_KEYS])
        on = None
        for k in _CONN_KEYS:
            cond = c(k).eqNullSafe(c(f"d_{k}"))
            on = cond if on is None else on & cond
        offline = facts.filter(~c("reached")).join(down_df, on, "inner") \
            .select(c("measurement_id").alias("mid"), "role").distinct()
    except BaseException:
        facts.unpersist()
        raise
    return offline, table, facts


def verdicts_frame(spark: SparkSession, paths: Sequence[Path | str], options: AnalysisOptions, *,
                   rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> tuple[DataFrame, DataFrame, ExitStack]:
    """(verdicts DataFrame, sharded rows, what to release once the verdicts are computed: the
    files the job ships, the persisted connectivity facts)."""
    from pyspark.sql import functions as F

    df = read_measurements(spark, paths)
    keep = ExitStack()
    offline, _, facts = connectivity_spark(spark, df)
    keep.callback(facts.unpersist)
    # enough buckets that the busiest day's shards stay near rows_per_shard
    per_day = df.groupBy(F.floor(F.unix_micros("measurement_start_time") / DAY_US)).count() \
        .agg(F.max("count")).collect()[0][0] or 0
    buckets = max(1, math.ceil(per_day / max(1, rows_per_shard)))
    fp_names, asn_name, tmp = _ship_files(spark, options)
    keep.enter_context(tmp)
    rows = shard_rows(df, offline, options.control_window_h, buckets)
    judge = _judge(tuple(fp_names), asn_name, tuple(options.public_nets), options.control_window_h)
    verdicts = rows.groupBy(*SHARD_COLS).applyInArrow(judge, _SPARK_VERDICT_DDL)
    return verdicts, rows, keep


def _check_totals(mids: pa.Array | pa.ChunkedArray) -> int:
    """Every probe row is in exactly one shard by construction (probe rows are never copied),
    and each shard gives one verdict per distinct probe of its own (``check_shard``): so the
    verdicts cover every probe measurement; a measurement id in two shards (duplicate rows on
    two days) would show here as a repeated id."""
    import pyarrow.compute as pc

    n, n_distinct = len(mids), pc.count_distinct(mids).as_py()
    if n != n_distinct:
        raise ShardInvariantError(f"{n} verdicts for {n_distinct} distinct probe measurements")
    return n


def run_stage_spark(paths: Sequence[Path | str], options: AnalysisOptions, *, written_by: str = "vantage analyze",
                    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, conf: dict[str, str] | None = None) -> Verdicts:
    """``analysis.pipeline.run_stage`` on Spark: the same verdict table (in DuckDB's order) and the same provenance, collected on the driver."""
    from analysis.pipeline import VERDICT_ORDER, Verdicts, check_stage_options, stage_metadata

    fps, skipped = check_stage_options(paths, options)
    with spark_session(options.spark_master or "local[*]", conf) as spark:
        frame, rows, tmp = verdicts_frame(spark, paths, options, rows_per_shard=rows_per_shard)
        with tmp:
            table = frame.toArrow()
        table = table.cast(VERDICT_SCHEMA).sort_by(VERDICT_ORDER)
        n_probe = _check_totals(table.column("measurement_id"))
    metadata = stage_metadata(paths, options, fps, skipped, table.num_rows, n_probe, written_by)
    return Verdicts(table, metadata, skipped, list(fps.problems))


def analyze_spark(paths: Sequence[Path | str], output: Path | str, *, options: AnalysisOptions,
                  written_by: str = "vantage analyze", rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                  conf: dict[str, str] | None = None) -> AnalyzeResult:
    """Write the verdicts as a Parquet dataset (a directory of parts written by the executors,
    plus the provenance in ``_vantage_verdicts.json``), renamed into place only when complete."""
    import pyarrow.parquet as pq

    from analysis.pipeline import PROVENANCE_FILE, AnalyzeResult, OutputError, check_output, stage_metadata

    output = Path(output)
    if output.is_dir():  # an earlier verdicts dataset is replaced; any other directory never
        if not (output / PROVENANCE_FILE).is_file():
            raise OutputError(f"{output}: is a directory that is not a verdicts dataset")
    else:
        check_output(output)
    fps, skipped = _checked(paths, options)
    tmp_out = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    with spark_session(options.spark_master or "local[*]", conf) as spark:
        frame, rows, tmp = verdicts_frame(spark, paths, options, rows_per_shard=rows_per_shard)
        with tmp:
            try:
                frame.write.mode("overwrite").parquet(str(tmp_out), compression="zstd")
            except Exception:
                shutil.rmtree(tmp_out, ignore_errors=True)
                raise
        counts = pq.read_table(tmp_out, columns=["measurement_id", "status", "layer", "confirmed"])
        try:
            n_probe = _check_totals(counts.column("measurement_id"))
        except ShardInvariantError:
            shutil.rmtree(tmp_out, ignore_errors=True)
            raise
    metadata = stage_metadata(paths, options, fps, skipped, counts.num_rows, n_probe, written_by)
    (tmp_out / PROVENANCE_FILE).write_text(json.dumps(metadata, sort_keys=True), encoding="utf-8")
    for junk in tmp_out.glob("._SUCCESS.crc"):
        junk.unlink()
    try:
        if output.is_dir():
            shutil.rmtree(output)
        elif output.exists():
            output.unlink()
        os.replace(tmp_out, output)
    except OSError as exc:
        shutil.rmtree(tmp_out, ignore_errors=True)
        raise OutputError(f"cannot write {output}: {exc.strerror or exc}") from None
    return AnalyzeResult(output=output, db=None, verdicts=counts.drop_columns(["measurement_id"]), metadata=metadata,
                         skipped=skipped, fingerprint_problems=list(fps.problems))


def _checked(paths: Sequence[Path | str], options: AnalysisOptions) -> tuple[Any, list[tuple[Path, str]]]:
    from analysis.pipeline import check_stage_options

    return check_stage_options(paths, options)


# --------------------------------------------------------------------------- events


# The additive counts of signals.NETWORK_HOUR_SQL (a sum over any split of the rows); runs and
# vantage points are distinct counts, which do not add up: each batch keeps its distinct
# (run_id, vantage) pairs per (cc, asn, hour) and Spark counts the distinct values of the union.
_SIGNAL_SUMS = {
    "volume": "count(*)", "anchor_n": "count(*) FILTER (WHERE is_anchor)",
    "anchor_ok": "count(*) FILTER (WHERE is_anchor AND ok)", "target_n": "count(*) FILTER (WHERE NOT is_anchor)",
    "target_ok": "count(*) FILTER (WHERE NOT is_anchor AND ok)",
    **{f"{layer}_{what}": f"count(*) FILTER (WHERE {layer}_{'has' if what == 'n' else 'fail'})"
       for layer in ("dns", "tcp", "tls", "http") for what in ("n", "fail")},
}
_SIGNAL_PARTIAL_DDL = ("cc string, asn string, hour timestamp_ntz, run_id string, vantage string, "
                       + ", ".join(f"{k} bigint" for k in _SIGNAL_SUMS))


def signal_counts_spark(df: DataFrame) -> pa.Table:
    """Per (cc, asn, hour): the counts of ``signals.network_hour_signals`` (COUNT_COLUMNS), only
    the hours with probe measurements. Each batch of rows is reduced in DuckDB by
    ``signals.measurement_facts_sql`` (the per-measurement facts the DuckDB path counts) to
    partial counts per (cc, asn, hour, run, vantage point); Spark sums them."""
    from pyspark.sql import functions as F

    from analysis import signals as sig

    sums = ", ".join(f"{expr} AS {k}" for k, expr in _SIGNAL_SUMS.items())
    sql = (f"SELECT cc, asn, hour, run_id, vantage, {sums} FROM ({sig.measurement_facts_sql('batch')}) "
           "WHERE role = 'probe' GROUP BY ALL")
    partial = df.mapInArrow(_duckdb_batches(sql), _SIGNAL_PARTIAL_DDL)
    summed = partial.groupBy("cc", "asn", "hour").agg(
        F.count_distinct("run_id").alias("runs"), F.count_distinct("vantage").alias("vantage_points"),
        *[F.sum(k).cast("long").alias(k) for k in _SIGNAL_SUMS])
    missing = set(sig.COUNT_COLUMNS) - set(summed.columns)
    if missing:  # signals.py counts something new: count it here too
        raise SparkEngineError(f"no Spark sum for signal column(s) {', '.join(sorted(missing))}")
    return summed.select("cc", "asn", "hour", *sig.COUNT_COLUMNS).toArrow()


def hourly_from_counts(counts: pa.Table) -> pa.Table:
    """``signals.network_hour_signals``' table from per-(cc, asn, hour) counts summed elsewhere:
    the same statement (``signals.hourly_sql``) over ``counts``."""
    import duckdb

    from analysis import signals as sig

    con = duckdb.connect()
    try:
        # "agg_in" names the Arrow table inside this one query only
        rel = con.from_arrow(counts).query("agg_in", sig.hourly_sql("agg_in"))
        assert rel is not None  # a SELECT always gives a relation
        return rel.to_arrow_table()
    finally:
        con.close()


def network_hour_signals_spark(spark: SparkSession, paths: Sequence[Path | str]) -> pa.Table:
    """``analysis.signals.network_hour_signals`` with the counts made by Spark: the same table."""
    return hourly_from_counts(signal_counts_spark(read_measurements(spark, paths)))


def find_events_spark(datasets: Sequence[Path | str], cfg: Any = None, *, verdicts: pa.Table | None = None,
                      master: str = "local[*]", conf: dict[str, str] | None = None) -> Detection:
    """``analysis.shutdown.find_events`` with the hourly signals summed by Spark; the detector and
    classifier run here, on the driver, over them (and over ``verdicts``, e.g. Spark's)."""
    from analysis import signals as sig
    from analysis.shutdown import detect

    with spark_session(master, conf) as spark:
        counts = network_hour_signals_spark(spark, datasets)
    con = sig.open_measurements(datasets)
    try:
        return detect(con, cfg, verdicts=verdicts, counts=counts)
    finally:
        con.close()


__all__ = ["DEFAULT_ROWS_PER_SHARD", "INSTALL_HINT", "ShardInvariantError", "SparkEngineError", "analyze_spark",
           "check_shard", "connectivity_spark", "find_events_spark", "hourly_from_counts", "network_hour_signals_spark", "read_measurements", "require_pyspark",
           "run_stage_spark", "shard_rows", "signal_counts_spark", "spark_session", "verdicts_frame"]
