"""Analysis in bounded memory (issue 19): DuckDB's memory limit (from the machine, or
`--memory`), a spill directory, no insertion-order preservation, and body samples read only
for fingerprint candidates. The verdicts do not change: the bounded stage gives the verdicts of
a plain DuckDB connection (default limit, order preserved) on the netem import and a generated
benchmark dataset. (benchmarks/issue19.py compares with the code before the change.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from analysis.db import open_datasets
from analysis.ingest.ooni import import_ooni
from analysis.pipeline import AnalysisOptions, analysis_connection, default_memory_limit, run_stage
from analysis.verdicts import compute_verdicts
from benchmarks.analyze_throughput import generate
from tests.support.paths import SHARED_DATA
from vantage.cli import main
from vantage.cli.options import UsageLineError, memory_bytes

NETEM = SHARED_DATA / "ooni" / "netem" / "web_connectivity_netem_simulated.jsonl"


def _setting(con: duckdb.DuckDBPyConnection, name: str) -> str:
    return con.sql(f"SELECT value FROM duckdb_settings() WHERE name = '{name}'").fetchall()[0][0]


def test_connection_is_bounded_and_spills_to_a_directory_removed_after() -> None:
    with analysis_connection(256 << 20) as con:
        limit = _setting(con, "memory_limit")
        spill = Path(_setting(con, "temp_directory"))
        assert _setting(con, "preserve_insertion_order") == "false"
        assert spill.is_dir()
    # DuckDB prints the limit in its own units (e.g. "256.0 MiB").
    assert limit.replace(" ", "").upper().startswith("256.0MIB"), limit
    assert not spill.exists()


def test_default_limit_is_a_bounded_share_of_the_machine() -> None:
    limit = default_memory_limit()
    assert 128 << 20 <= limit <= 512 << 20, limit


@pytest.mark.parametrize(("text", "expected"), [("512MB", 512 * 10**6), ("2GB", 2 * 10**9), ("1GiB", 1 << 30),
                                                ("300 mib", 300 << 20), ("1.5GB", 1_500_000_000)])
def test_memory_sizes(text: str, expected: int) -> None:
    assert memory_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "2XB", "-1GB", "100MB", "1e9"])
def test_memory_sizes_refused(text: str) -> None:
    with pytest.raises(UsageLineError):
        memory_bytes(text)


def _verdicts_plain(paths: list[Path]) -> pa.Table:
    """The verdicts on a plain connection: DuckDB's defaults, nothing bounded."""
    con = duckdb.connect()
    try:
        open_datasets(paths, con=con)
        return compute_verdicts(con)
    finally:
        con.close()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bounded")
    import_ooni([NETEM], root / "netem")
    generate(root / "bench", rows=3000, inputs=300, days=2)
    return {"netem": root / "netem", "bench": root / "bench"}


@pytest.mark.parametrize("name", ["netem", "bench"])
def test_bounded_stage_gives_the_plain_verdicts(datasets: dict[str, Path], name: str) -> None:
    plain = _verdicts_plain([datasets[name]])
    bounded = run_stage([datasets[name]], AnalysisOptions(memory_limit=128 << 20)).table
    assert bounded.num_rows == plain.num_rows > 0
    assert bounded.sort_by("measurement_id").equals(plain.sort_by("measurement_id"))
    if name == "bench":  # the generated blockpages are matched (their bodies were read)
        assert "http.blockpage" in {m.split(":")[0] for m in bounded.column("method").to_pylist()}


def test_cli_memory_option(datasets: dict[str, Path], tmp_path: Path) -> None:
    ok = CliRunner().invoke(main, ["analyze", str(datasets["netem"]), "-o", str(tmp_path / "v.parquet"),
                                   "--memory", "256MB", "-q"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(main, ["analyze", str(datasets["netem"]), "-o", str(tmp_path / "w.parquet"),
                                    "--memory", "lots"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "--memory" in bad.output, bad.output


def test_out_of_memory_at_the_default_limit_runs_again_with_more(datasets: dict[str, Path],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB cannot spill all of its working memory: at the default limit, an out-of-memory
    error runs the stage again with twice the limit (the same verdicts); at a limit the user
    gave (--memory), it is one line asking for more."""
    from analysis import pipeline
    from analysis.verdicts import VerdictError

    plain = _verdicts_plain([datasets["netem"]])
    real = pipeline.verdict_batches
    limits: list[str] = []

    def flaky(con: duckdb.DuckDBPyConnection, **kwargs: object) -> Iterator[pa.RecordBatch]:
        limits.append(_setting(con, "memory_limit"))
        if len(limits) == 1:
            raise duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate data of size 64.0 KiB")
        return real(con, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "verdict_batches", flaky)
    monkeypatch.setattr(pipeline, "default_memory_limit", lambda: 200 << 20)
    again = run_stage([datasets["netem"]], AnalysisOptions()).table
    assert [lim.replace(" ", "").upper()[:8] for lim in limits] == ["200.0MIB", "400.0MIB"], limits
    assert again.sort_by("measurement_id").equals(plain.sort_by("measurement_id"))

    limits.clear()
    with pytest.raises(VerdictError, match="ran out of memory at 256 MiB; give it more with --memory"):
        run_stage([datasets["netem"]], AnalysisOptions(memory_limit=256 << 20))
    assert len(limits) == 1


def test_verdicts_streamed_to_the_file_in_row_groups(datasets: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`vantage analyze` never holds the verdict table whole: DuckDB's batches go to the file one
    row group each, the provenance is written after the last; the file reads back as the table
    run_stage returns, and the summary (counted over the file) says what the table says."""
    from analysis import pipeline

    monkeypatch.setattr(pipeline, "ROW_GROUP_ROWS", 500)  # several row groups from 3,000 verdicts
    real = pipeline.verdict_batches
    monkeypatch.setattr(pipeline, "verdict_batches", lambda con, **kw: real(con, **{**kw, "batch_size": 700}))
    out = tmp_path / "v.parquet"
    result = pipeline.analyze([datasets["bench"]], out)
    table, metadata = pipeline.read_verdicts(out)
    whole = run_stage([datasets["bench"]]).table
    assert table.equals(whole)
    assert pq.ParquetFile(out).metadata.num_row_groups >= whole.num_rows // 500
    assert metadata["counts"]["verdicts"] == whole.num_rows == result.num_verdicts
    statuses = whole.group_by(["status", "layer"]).aggregate([("status", "count")]).to_pylist()
    assert sorted(result.counts()) == sorted((r["status"], r["layer"], r["status_count"]) for r in statuses)
    assert result.confirmed == sum(whole.column("confirmed").to_pylist()) > 0
    assert not list(tmp_path.glob(".vantage-spill-*")), "the spill directory beside the output is removed"


@pytest.mark.slow  # 10-30 s: enough rows (100k) to spill about 27 MiB at a 128 MiB limit
def test_verdicts_when_duckdb_spills_equal_those_in_memory(tmp_path: Path) -> None:
    """With a memory limit far below what the stage's tables and joins take, DuckDB spills them to
    the temporary directory (measured: the spill files' size while the verdicts stream out), and
    the verdicts are those of an unbounded connection, row for row and in the same order."""
    from analysis.verdicts import verdict_batches

    generate(tmp_path / "big", rows=100_000, inputs=300, days=2)
    plain = _verdicts_plain([tmp_path / "big"])
    spilled = 0
    batches = []
    with analysis_connection(128 << 20) as con:
        open_datasets([tmp_path / "big"], con=con)
        for batch in verdict_batches(con, batch_size=10_000):
            # a second cursor: the first is busy streaming the verdicts
            spilled = max(spilled, con.cursor().sql("SELECT coalesce(sum(size), 0) FROM duckdb_temporary_files()")
                          .fetchall()[0][0])
            batches.append(batch)
    bounded = pa.Table.from_batches(batches)
    print(f"spilled {spilled / 2**20:.0f} MiB at a 128 MiB limit; {bounded.num_rows:,} verdicts")
    assert spilled > 0, "nothing spilled: the test does not test spilling"
    assert bounded.num_rows == plain.num_rows == 100_000
    assert bounded.equals(plain)
