"""The verdict stage: open datasets -> compute_verdicts -> one verdicts file that carries its
provenance. `vantage analyze` runs it and writes the file; `vantage report` and `vantage events`
read that file, or run this same stage with the same options when given raw datasets only.

Provenance: the Parquet file's key-value metadata holds, under :data:`METADATA_KEY`, a JSON
object naming the options, the fingerprint sets and the ASN database used, the datasets, the
Vantage version and when the verdicts were made (:func:`read_verdicts` returns it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.fingerprints import FingerprintSet, load_default_fingerprints, load_fingerprints
from analysis.geo import default_asn_db
from analysis.verdicts import ADDED_VERDICT_COLUMNS, VERDICT_SCHEMA, VerdictError, verdict_batches
from probe.dataset import atomic_path
from probe.errors import VantageError

log = logging.getLogger(__name__)
_T = TypeVar("_T")

METADATA_KEY = b"vantage.verdicts"
# A verdicts Parquet dataset (a directory of parts, as --engine spark writes): the provenance
# JSON that a single file carries under METADATA_KEY, in this file beside the parts.
PROVENANCE_FILE = "_vantage_verdicts.json"
# The order of compute_verdicts' rows (analysis/rules.py), which every engine's table keeps.
VERDICT_ORDER = [("measurement_start_time", "ascending"), ("measurement_id", "ascending")]
FORMAT = "vantage-verdicts"
FORMAT_VERSION = 1


class VerdictsFileError(VantageError):
    """A file given as verdicts is not a Vantage verdicts file, or is corrupt (one line, naming it)."""


class OutputError(VantageError):
    """An output file cannot be written (one line, naming it); nothing was left half-written."""


@dataclass(frozen=True)
class AnalysisOptions:
    """The options every verdict-making command shares (`vantage analyze`, `report`, `events`,
    `demo`): the same values give the same verdicts, whichever command runs the stage.

    ``use_defaults``: also use the downloaded default fingerprint sets and ASN database when
    present (the CLI sets it; library callers and tests stay hermetic without it).
    """

    public_nets: tuple[str, ...] = ()
    fingerprint_files: tuple[Path, ...] = ()
    asn_db: Path | None = None
    control_window_h: float = 6.0
    use_defaults: bool = False
    # Where the verdicts are computed (never what they are): "duckdb" in this process, or "spark"
    # on the cluster at spark_master (analysis/spark_engine.py; same verdicts, bit for bit).
    engine: str = "duckdb"
    spark_master: str | None = None
    memory_limit: int | None = None  # bytes for DuckDB (--memory); None: from the machine's memory

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_nets", tuple(self.public_nets))
        object.__setattr__(self, "fingerprint_files", tuple(Path(p) for p in self.fingerprint_files))
        if self.asn_db is not None:
            object.__setattr__(self, "asn_db", Path(self.asn_db))
        object.__setattr__(self, "control_window_h", float(self.control_window_h))


@dataclass
class Verdicts:
    """The stage's output: one row per probe measurement (VERDICT_SCHEMA) and its provenance."""

    table: pa.Table
    metadata: dict[str, Any]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    fingerprint_problems: list[str] = field(default_factory=list)


@dataclass
class AnalyzeResult:
    """What :func:`analyze` wrote and what `vantage analyze` prints of it.

    ``verdicts``: the rows the terminal summary reads one by one. From DuckDB, the messaging
    apps' verdicts only (those with per-function verdicts), with the counts in ``tally``,
    ``n_verdicts`` and ``n_confirmed``, so that a large output is never read back whole; from
    Spark, every row's summary columns. The whole table is the file at ``output``."""

    output: Path
    db: Path | None
    verdicts: pa.Table
    metadata: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    fingerprint_problems: list[str] = field(default_factory=list)
    tally: list[tuple[str, str | None, int]] | None = None
    n_verdicts: int | None = None
    n_confirmed: int | None = None

    @property
    def num_verdicts(self) -> int:
        return self.verdicts.num_rows if self.n_verdicts is None else self.n_verdicts

    @property
    def confirmed(self) -> int:
        """Verdicts confirmed by a blockpage fingerprint."""
        if self.n_confirmed is not None:
            return self.n_confirmed
        return sum(1 for c in self.verdicts.column("confirmed").to_pylist() if c)

    def counts(self) -> list[tuple[str, str | None, int]]:
        """(status, layer, count), most frequent first."""
        tally: dict[tuple[str, str | None], int] = {}
        if self.tally is not None:
            tally = {(s, layer): n for s, layer, n in self.tally}
        else:
            for s, layer in zip(self.verdicts.column("status").to_pylist(), self.verdicts.column("layer").to_pylist(),
                                strict=True):
                tally[(s, layer)] = tally.get((s, layer), 0) + 1
        return sorted(((s, layer, n) for (s, layer), n in tally.items()), key=lambda x: (-x[2], x[0], x[1] or ""))


# --------------------------------------------------------------------------- what was used


def _file_info(path: Path, count: int | None = None) -> dict[str, Any]:
    """Name, path, date (the file's modification day: when it was downloaded or edited) and
    sha256 of a data file, so a reader can tell which copy was used."""
    info: dict[str, Any] = {"name": path.stem, "path": str(path.resolve())}
    try:
        st = path.stat()
        info["date"] = dt.datetime.fromtimestamp(st.st_mtime, dt.UTC).strftime("%Y-%m-%d")
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        info["sha256"] = h.hexdigest()
    except OSError:
        pass
    if count is not None:
        info["count"] = count
    return info


def load_fingerprint_set(options: AnalysisOptions) -> tuple[FingerprintSet, list[dict[str, Any]]]:
    """The fingerprints the stage uses and one description per set (file) they came from.

    Raises :class:`analysis.fingerprints.FingerprintError` for a file that cannot be used."""
    loader = load_default_fingerprints if options.use_defaults else load_fingerprints
    fps = loader(list(options.fingerprint_files))
    sets: list[dict[str, Any]] = []
    for src in fps.sources:
        info = _file_info(Path(src.path), src.count)
        info.update(name=src.name, origin=src.origin)
        if src.date:  # a downloaded set's own date (its manifest), not the file's
            info["date"] = src.date
        sets.append(info)
    return fps, sets


def resolve_asn_db(options: AnalysisOptions) -> Path | None:
    """The ASN database the stage uses: the one given, else (with ``use_defaults``) the
    downloaded one when present."""
    if options.asn_db is not None:
        if not options.asn_db.is_file():
            raise VerdictError(f"{options.asn_db}: no such ASN database file")
        return options.asn_db
    if options.use_defaults:
        return default_asn_db()  # None until `vantage geo update` downloaded one
    return None


def _asn_db_info(path: Path) -> dict[str, Any]:
    import maxminddb

    info = _file_info(path)
    info.pop("name", None)
    try:
        with maxminddb.open_database(str(path)) as reader:
            meta = reader.metadata()
            info["type"] = meta.database_type
            info["date"] = dt.datetime.fromtimestamp(meta.build_epoch, dt.UTC).strftime("%Y-%m-%d")
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise VerdictError(f"{path}: not a MaxMind ASN database ({str(exc).splitlines()[0]})") from None
    return info


def _vantage_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vantage")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


# --------------------------------------------------------------------------- the connection

# DuckDB takes 80 % of the machine's memory by default and spills nothing until then: 2 GB of
# peak memory per million probe rows, which a small server (the 1-4 GB machines the analysis
# also runs on) cannot give. A quarter of the memory, at most 512 MiB, keeps the whole
# process under 1 GB (Python, the fingerprint matcher and the verdict table come on top);
# the joins and sorts spill to disk beyond it, which costs little time at that size (issue 19,
# benchmarks/issue19.py).
_MIN_MEMORY = 128 << 20
_MAX_DEFAULT_MEMORY = 512 << 20


def machine_memory() -> int | None:
    """The memory this process may use: the cgroup's limit when there is one, else physical memory."""
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if text.isdigit():
            return int(text)
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_memory_limit() -> int:
    total = machine_memory()
    if total is None:
        return _MAX_DEFAULT_MEMORY
    return max(_MIN_MEMORY, min(total // 4, _MAX_DEFAULT_MEMORY))


@contextmanager
def analysis_connection(memory_limit: int | None = None, spill_under: Path | None = None) -> Iterator[Any]:
    """A DuckDB connection in bounded memory: ``memory_limit`` bytes (default
    :func:`default_memory_limit`), spilling to a temporary directory removed afterwards (under
    ``spill_under``, e.g. the output's directory, else the system's temporary directory),
    without insertion-order preservation (every result the stage reads is ordered or keyed)."""
    import tempfile

    import duckdb

    limit = max(_MIN_MEMORY, memory_limit or default_memory_limit())
    if spill_under is not None:
        spill_under.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vantage-spill-" if spill_under else "vantage-duckdb-",
                                     dir=spill_under) as spill:
        con = duckdb.connect(config={"memory_limit": f"{limit // (1 << 20)}MiB", "temp_directory": spill,
                                     "preserve_insertion_order": False})
        con.execute("SET enable_progress_bar = false")  # a library writes nothing to the terminal
        try:
            yield con
        finally:
            con.close()


# --------------------------------------------------------------------------- the stage


def check_stage_options(paths: Sequence[Path | str], options: AnalysisOptions,
                        ) -> tuple[FingerprintSet, list[tuple[Path, str]]]:
    """Before any work, on whichever engine: the options are usable (fingerprint files, ASN
    database); return the fingerprint set and the dataset files that will be skipped."""
    from analysis.db import valid_files

    if options.control_window_h < 0:
        raise VerdictError("--control-window must be zero or more hours")
    if options.engine not in ("duckdb", "spark"):
        raise VerdictError(f"--engine must be duckdb or spark (got {options.engine!r})")
    fps, _ = load_fingerprint_set(options)
    asn_db = resolve_asn_db(options)
    if asn_db is not None:
        _asn_db_info(asn_db)  # a foreign file fails here, early
    _, skipped = valid_files(paths)
    return fps, skipped


def stage_metadata(paths: Sequence[Path | str], options: AnalysisOptions, fps: FingerprintSet,
                   skipped: list[tuple[Path, str]], n_verdicts: int, n_probe: int, written_by: str) -> dict[str, Any]:
    """The provenance every verdicts file carries, whichever engine made it."""
    _, sets = load_fingerprint_set(options)
    asn_db = resolve_asn_db(options)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vantage_version": _vantage_version(),
        "written_by": written_by,
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "datasets": [str(Path(p).resolve()) for p in paths],
        "options": {
            "public_nets": list(options.public_nets),
            "fingerprint_files": [str(p.resolve()) for p in options.fingerprint_files],
            "asn_db": str(options.asn_db.resolve()) if options.asn_db else None,
            "control_window_h": options.control_window_h,
            "use_defaults": options.use_defaults,
        },
        "engine": {"name": options.engine, "master": options.spark_master} if options.engine != "duckdb"
                  else {"name": "duckdb"},
        "fingerprints": {"sets": sets, "total": len(fps), "dns": len(fps.dns), "http": len(fps.http),
                         "problems": len(fps.problems)},
        "asn_db": _asn_db_info(asn_db) if asn_db is not None else None,
        "counts": {"verdicts": n_verdicts, "probe_measurements": int(n_probe), "skipped_files": len(skipped)},
    }


def run_stage(paths: Sequence[Path | str], options: AnalysisOptions | None = None, *,
              written_by: str = "vantage analyze") -> Verdicts:
    """Open the datasets, compute one verdict per probe measurement, describe how.

    Every command that needs verdicts and has no verdicts file calls this one function; it
    returns the whole table (:func:`analyze` streams it to a file instead).
    Raises DatasetError, FingerprintError or VerdictError with a one-line message."""
    options = options or AnalysisOptions()
    if options.engine == "spark":
        from analysis.spark_engine import run_stage_spark

        return run_stage_spark(paths, options, written_by=written_by)
    fps, skipped = check_stage_options(paths, options)

    def collect(batches: Iterator[pa.RecordBatch], n_probe: int) -> tuple[pa.Table, int]:
        return pa.Table.from_batches(list(batches), schema=VERDICT_SCHEMA), n_probe

    table, n_probe = _run_duckdb_stage(paths, options, fps, collect)
    metadata = stage_metadata(paths, options, fps, skipped, table.num_rows, n_probe, written_by)
    return Verdicts(table, metadata, skipped, list(fps.problems))


def _run_duckdb_stage(paths: Sequence[Path | str], options: AnalysisOptions, fps: FingerprintSet,
                      consume: Callable[[Iterator[pa.RecordBatch], int], _T], spill_under: Path | None = None) -> _T:
    """The verdict stage on DuckDB: ``consume`` gets the verdicts, batch by batch in their
    order, and the number of distinct probe measurements, while the connection is open."""
    import duckdb

    from analysis.db import SkippedFileWarning, open_datasets

    asn_db = resolve_asn_db(options)
    limit = max(_MIN_MEMORY, options.memory_limit or default_memory_limit())
    while True:
        try:
            with analysis_connection(limit, spill_under) as con:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", SkippedFileWarning)  # reported through Verdicts.skipped
                    open_datasets(paths, con=con)
                # Checking the files read their pages through pyarrow, whose allocator keeps the
                # freed memory (120 MB at 1M rows): given back before DuckDB takes its share.
                pa.default_memory_pool().release_unused()
                n_probe = con.sql("SELECT count(DISTINCT measurement_id) FROM measurements "
                                  "WHERE role = 'probe'").fetchall()[0][0]
                return consume(verdict_batches(con, batch_size=ROW_GROUP_ROWS, public_nets=options.public_nets,
                                               fingerprints=fps, control_window_h=options.control_window_h,
                                               asn_db=asn_db), int(n_probe))
        except duckdb.OutOfMemoryException:
            # DuckDB spills joins and sorts, but some of its working memory cannot be spilled.
            # The default limit is a target, not a promise the user made: it is doubled, up to
            # the machine's memory, and the stage runs again. A limit the user gave is theirs
            # to raise.
            total = machine_memory() or 0
            if options.memory_limit is not None or limit * 2 > total:
                raise VerdictError(f"the analysis ran out of memory at {limit >> 20} MiB; "
                                   "give it more with --memory (e.g. --memory 2GB)") from None
            log.warning("DuckDB ran out of memory at %d MiB; running the stage again with %d MiB",
                        limit >> 20, (limit * 2) >> 20)
            limit *= 2


def analyze(paths: Sequence[Path | str], output: Path | str, db: Path | str | None = None, *,
            options: AnalysisOptions | None = None, written_by: str = "vantage analyze") -> AnalyzeResult:
    """Run the stage and write the verdicts (Parquet with provenance) to ``output`` and, with
    ``db``, a DuckDB database holding the views, the verdicts and the aggregates.

    The verdicts go from DuckDB to the file in row groups (:func:`write_verdict_batches`),
    never whole in memory, and DuckDB spills beside ``output``; the summary is counted over
    the file (see :class:`AnalyzeResult`)."""
    from analysis import aggregates

    output = Path(output)
    options = options or AnalysisOptions()
    if options.engine == "spark":
        if db is not None:
            raise VerdictError("--db is not available with --engine spark; open the verdicts with DuckDB: "
                               f"read_parquet('{output}/*.parquet')")
        from analysis.spark_engine import analyze_spark

        return analyze_spark(paths, output, options=options, written_by=written_by)
    check_output(output)
    if db is not None:
        check_output(Path(db))
        aggregates.check_database(Path(db))  # before any work: the analyst's tables are never replaced
    fps, skipped = check_stage_options(paths, options)

    def write(batches: Iterator[pa.RecordBatch], n_probe: int) -> dict[str, Any]:
        return write_verdict_batches(
            batches, output, lambda n: stage_metadata(paths, options, fps, skipped, n, n_probe, written_by))

    metadata = _run_duckdb_stage(paths, options, fps, write, spill_under=output.resolve().parent)
    db_path = None
    if db is not None:  # the database holds the whole table: read back whole
        db_path = Path(db)
        aggregates.write_database(db_path, paths, read_verdicts(output)[0], metadata)
    return _summary(output, db_path, metadata, skipped, fps)


def _summary(output: Path, db: Path | None, metadata: dict[str, Any], skipped: list[tuple[Path, str]],
             fps: FingerprintSet) -> AnalyzeResult:
    """What `vantage analyze` prints, computed by DuckDB over the verdicts file it wrote (a
    scan of three columns, whatever the file's size), and the messaging apps' rows."""
    import duckdb

    con = duckdb.connect(config={"memory_limit": f"{_MIN_MEMORY >> 20}MiB", "threads": 1})
    try:
        rel = con.read_parquet(str(output))
        tally = [(s, layer, int(n)) for s, layer, n in rel.aggregate("status, layer, count(*)", "status, layer").fetchall()]
        n, confirmed = rel.aggregate("count(*), count(*) FILTER (WHERE confirmed)").fetchall()[0]
        messaging = rel.filter("functions IS NOT NULL").order("measurement_start_time, measurement_id").to_arrow_table()
    finally:
        con.close()
    return AnalyzeResult(output=output, db=db, verdicts=messaging.cast(VERDICT_SCHEMA), metadata=metadata,
                         skipped=skipped, fingerprint_problems=list(fps.problems), tally=tally, n_verdicts=int(n),
                         n_confirmed=int(confirmed))


# --------------------------------------------------------------------------- the verdicts file


def write_verdicts(verdicts: Verdicts, path: Path | str) -> None:
    """The verdicts as Parquet (zstd) with their provenance in the schema metadata, atomically."""
    meta = dict(verdicts.table.schema.metadata or {})
    meta[METADATA_KEY] = json.dumps(verdicts.metadata, sort_keys=True).encode("utf-8")
    table = verdicts.table.replace_schema_metadata(meta)
    with atomic_output(Path(path)) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)


# Rows per row group of a verdicts file written in batches: 32,768 verdicts are about 6 MB
# before compression, and each is in memory two or three times over while it is converted and
# written (measured at 1M rows: 122,880-row batches put the stage's peak 50-60 MB higher).
ROW_GROUP_ROWS = 32_768


def write_verdict_batches(batches: Iterable[pa.RecordBatch], path: Path | str,
                          provenance: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    """The verdicts file :func:`write_verdicts` writes, from VERDICT_SCHEMA record batches, one
    row group each, atomically; ``provenance(number of rows)`` gives the metadata once the
    last batch is written (the file's key-value metadata lives in its footer). Returns it."""
    n = 0
    with atomic_output(Path(path)) as tmp:
        with pq.ParquetWriter(tmp, VERDICT_SCHEMA, compression="zstd") as writer:
            for batch in batches:
                writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
                n += batch.num_rows
                del batch
                pa.default_memory_pool().release_unused()  # the freed batch, back to the system
            metadata = provenance(n)
            writer.add_key_value_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode("utf-8")})
    return metadata


def read_verdicts(path: Path | str) -> tuple[pa.Table, dict[str, Any]]:
    """(verdicts table, provenance) from a file `vantage analyze` wrote.

    :class:`VerdictsFileError` (one line naming the file) for anything else: a missing file, a
    corrupt one, a Parquet file without Vantage's verdict metadata (e.g. a dataset file)."""
    path = Path(path)
    if path.is_dir():
        return _read_verdicts_dataset(path)
    if not path.is_file():
        raise VerdictsFileError(f"{path}: no such verdicts file")
    try:
        table = pq.read_table(path)
        # The file's key-value metadata: where write_verdict_batches puts the provenance (at the
        # end of the stream) and write_verdicts' schema metadata lands too.
        raw = (pq.read_metadata(path).metadata or {}).get(METADATA_KEY)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise VerdictsFileError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0][:120]})") from None
    if raw is None:
        raise VerdictsFileError(f"{path}: not a Vantage verdicts file (no provenance metadata; "
                                "write one with `vantage analyze`)")
    try:
        metadata = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VerdictsFileError(f"{path}: corrupt verdicts metadata (not JSON)") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise VerdictsFileError(f"{path}: not a Vantage verdicts file (metadata format is not {FORMAT!r})")
    missing = [n for n in VERDICT_SCHEMA.names if n not in table.schema.names and n not in ADDED_VERDICT_COLUMNS]
    if missing:
        raise VerdictsFileError(f"{path}: not a Vantage verdicts file (missing columns: {', '.join(missing[:6])})")
    return _with_added_columns(table).replace_schema_metadata(None), metadata


def _with_added_columns(table: pa.Table) -> pa.Table:
    """A verdicts table written before a column was added gets that column as NULLs."""
    for name in ADDED_VERDICT_COLUMNS:
        if name not in table.schema.names:
            table = table.append_column(VERDICT_SCHEMA.field(name), pa.nulls(len(table), VERDICT_SCHEMA.field(name).type))
    return table


def _read_verdicts_dataset(path: Path) -> tuple[pa.Table, dict[str, Any]]:
    """A verdicts Parquet dataset (`vantage analyze --engine spark`): the parts, sorted by
    measurement id as the single file is, and the provenance beside them."""
    prov = path / PROVENANCE_FILE
    if not prov.is_file():
        raise VerdictsFileError(f"{path}: not a Vantage verdicts dataset (no {PROVENANCE_FILE}; "
                                "write one with `vantage analyze`)")
    try:
        metadata = json.loads(prov.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise VerdictsFileError(f"{prov}: corrupt verdicts metadata (not JSON)") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise VerdictsFileError(f"{path}: not a Vantage verdicts dataset (metadata format is not {FORMAT!r})")
    parts = sorted(p for p in path.glob("*.parquet") if not p.name.startswith((".", "_")))
    try:
        tables = [pq.read_table(p) for p in parts]
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise VerdictsFileError(f"{path}: not a readable Parquet dataset ({str(exc).splitlines()[0][:120]})") from None
    missing = [n for n in VERDICT_SCHEMA.names if tables and n not in tables[0].schema.names
               and n not in ADDED_VERDICT_COLUMNS]
    if missing:
        raise VerdictsFileError(f"{path}: not a Vantage verdicts dataset (missing columns: {', '.join(missing[:6])})")
    tables = [_with_added_columns(t) for t in tables]
    table = (pa.concat_tables([t.select(VERDICT_SCHEMA.names).replace_schema_metadata(None).cast(VERDICT_SCHEMA)
                               for t in tables]) if tables else VERDICT_SCHEMA.empty_table())
    return table.sort_by(VERDICT_ORDER).combine_chunks(), metadata


def load_verdicts(path: Path | str) -> Verdicts:
    table, metadata = read_verdicts(path)
    return Verdicts(table, metadata)


def dataset_paths(verdicts_file: Path, metadata: dict[str, Any], given: Sequence[Path]) -> list[Path]:
    """The datasets to read beside a verdicts file: the ones given, which must be those the
    verdicts were made from, else the ones its metadata names."""
    made_from = [Path(p) for p in metadata.get("datasets") or []]
    if not given:
        if not made_from:
            raise VerdictsFileError(f"{verdicts_file}: names no datasets; give them on the command line")
        gone = [p for p in made_from if not p.exists()]
        if gone:
            raise VerdictsFileError(f"{verdicts_file}: its dataset {gone[0]} no longer exists; give the datasets "
                                    "on the command line")
        return made_from
    if made_from and {p.resolve() for p in given} != {p.resolve() for p in made_from}:
        raise VerdictsFileError(
            f"{verdicts_file} was made from {', '.join(map(str, made_from))}, not from the datasets given; "
            "give those datasets (or none), or run `vantage analyze` on these")
    return list(given)


def describe(metadata: dict[str, Any], *, public: bool = False) -> list[str]:
    """How the verdicts were made, one short line per item, for a report's method section and
    the terminal. ``public``: for published pages, files and datasets by their names alone (the
    analyst's absolute paths say where their disk keeps data, nothing about the verdicts)."""

    def where(path: Any) -> str:
        return (Path(str(path)).name or str(path)) if public else str(path)

    opts = metadata.get("options") or {}
    lines = [f"verdicts made by {metadata.get('written_by', '?')} (Vantage {metadata.get('vantage_version', '?')}) "
             f"at {metadata.get('created_at', '?')} from {', '.join(where(d) for d in metadata.get('datasets') or ['?'])}"]
    fps = metadata.get("fingerprints") or {}
    sets = ", ".join(f"{s.get('name')} ({s.get('count', '?')}" + (f", {s['date']}" if s.get("date") else "") + ")"
                     for s in fps.get("sets") or [])
    lines.append(f"blockpage fingerprints: {fps.get('total', '?')} ({fps.get('dns', '?')} DNS, {fps.get('http', '?')} "
                 f"HTTP) from {sets or 'no set'}" + (f"; {fps['problems']} bad rows skipped" if fps.get("problems") else ""))
    asn = metadata.get("asn_db")
    lines.append("ASN database: " + (f"{where(asn.get('path'))} ({asn.get('type', '?')}, built {asn.get('date', '?')})"
                                     if asn else "none (answers compared by address and /24 network only)"))
    nets = opts.get("public_nets") or []
    lines.append("networks treated as public for the bogon rule: " + (", ".join(nets) if nets else "none"))
    window = opts.get("control_window_h")
    lines.append(f"control window: {window:g} hours" if isinstance(window, (int, float)) else "control window: ?")
    engine = metadata.get("engine") or {}
    if engine.get("name") == "spark":  # same verdicts as DuckDB's; said for the record
        lines.append(f"computed on Apache Spark ({engine.get('master') or 'local[*]'}), shard by shard")
    return lines


# --------------------------------------------------------------------------- writing outputs


def check_output(path: Path) -> None:
    """Fail early, in one line, when ``path`` cannot be written: a parent is a file, the
    directory is not writable, or the path is a directory. Missing directories are created
    when the file is written."""
    if path.is_dir():
        raise OutputError(f"{path}: is a directory")
    parent = path.parent
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{path}: cannot write there: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write there: directory {parent} is not writable")


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; on success rename it to ``path``, on any error
    remove it, so a reader never sees a half file. OSError becomes one-line OutputError."""
    try:
        with atomic_path(path) as tmp:
            yield tmp
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


__all__ = ["METADATA_KEY", "PROVENANCE_FILE", "check_stage_options", "stage_metadata", "AnalysisOptions", "AnalyzeResult", "OutputError", "Verdicts", "VerdictsFileError",
           "analyze", "atomic_output", "check_output", "dataset_paths", "describe", "load_fingerprint_set",
           "load_verdicts", "read_verdicts", "resolve_asn_db", "run_stage", "write_verdict_batches", "write_verdicts"]
