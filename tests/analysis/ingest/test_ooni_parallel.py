"""The OONI import on worker processes writes what the in-process import writes (issue 19):
the same files (partition, part number, rows, in that order), the same summary and the same
reports of skipped lines, on the public OONI samples and on generated lines with malformed,
hostile, duplicate and unfit ones among them. Chunks and batches are made small so that a
batch spans several chunks and a chunk several batches."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from analysis.ingest.ooni import ImportSummary, import_ooni
from analysis.ingest.ooni import chunks as chunking
from analysis.ingest.ooni.importer import PARALLEL_MIN_BYTES, default_workers
from benchmarks.ooni_import import synthetic
from probe.schema import MEASUREMENT_SCHEMA
from tests.support.paths import SHARED_DATA

OONI = SHARED_DATA / "ooni"
SAMPLES = [OONI / "fixtures", OONI / "spec-examples", OONI / "netem"]


def _files(summary: ImportSummary, out: Path) -> list[tuple[str, Any]]:
    """Each file written, in order: its partition and part number (the run id differs between
    runs) and its table."""
    files = []
    for path in summary.output_files:
        part = path.name.rsplit("-", 1)[1]
        files.append((f"{path.parent.relative_to(out)}/{part}", pq.read_table(path, schema=MEASUREMENT_SCHEMA)))
    return files


def _numbers(summary: ImportSummary) -> dict[str, Any]:
    d = dict(vars(summary))
    d.pop("output_files")
    return d


def _compare(sources: list[Path], tmp_path: Path, *, batch_size: int) -> ImportSummary:
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"ds-{workers}"
        errors: list[str] = []
        summary = import_ooni(sources, out, batch_size=batch_size, workers=workers, on_error=errors.append)
        runs[workers] = (summary, _files(summary, out), errors)
    (one, files_one, errors_one), (two, files_two, errors_two) = runs[1], runs[2]
    assert _numbers(one) == _numbers(two)
    assert errors_one == errors_two
    assert [name for name, _ in files_one] == [name for name, _ in files_two]
    for (name, a), (_, b) in zip(files_one, files_two, strict=True):
        assert a.equals(b), name
    print(f"\n{len(files_one)} files, {one.measurements} measurements, {one.controls} controls, "
          f"{one.malformed} malformed, {one.duplicates} duplicates: serial = parallel")
    return one


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunking, "CHUNK_LINES", 7)


def test_samples_serial_equals_parallel(tmp_path: Path, small_chunks: None) -> None:
    summary = _compare(SAMPLES, tmp_path, batch_size=30)
    assert summary.measurements >= 60 and summary.controls >= 40, "expected the shared OONI samples"


def _hostile_lines() -> list[str]:
    good = [json.dumps(synthetic(i)) for i in range(120)]
    bad = ["{not json", "[1, 2]", "null", '"web_connectivity"', json.dumps({"no": "test_name"}),
           json.dumps({**synthetic(500), "test_keys": []}),  # wrong type: missing test keys
           json.dumps({**synthetic(501), "probe_cc": 7, "measurement_start_time": ["x"]}),  # wrong types
           "[" * 50_000 + "]" * 50_000]
    unfit = json.loads(good[3])
    unfit["test_keys"]["tcp_connect"][0]["port"] = 2**40  # converts, but not into an int32 column
    unfit["measurement_uid"] += "-unfit"
    lines: list[str] = []
    for i, line in enumerate(good):
        lines.append(line)
        if i % 9 == 4:
            lines.append(bad[(i // 9) % len(bad)])
        if i % 13 == 5:
            lines.append(good[i // 2])  # a duplicate of an earlier line
        if i == 40:
            lines += [json.dumps(unfit), "", "   "]
            unfit["test_keys"]["tcp_connect"][0]["port"] = 443  # the same measurement, fitting: imported
            lines.append(json.dumps(unfit))
    return lines


def test_generated_lines_with_bad_ones_serial_equals_parallel(tmp_path: Path, small_chunks: None) -> None:
    lines = _hostile_lines()
    plain = tmp_path / "mixed.jsonl"
    plain.write_text("\n".join(lines) + "\n", encoding="utf-8")
    packed = tmp_path / "mixed-2.jsonl.gz"
    data = gzip.compress(("\n".join(json.dumps(synthetic(1000 + i)) for i in range(40)) + "\n").encode())
    packed.write_bytes(data[: len(data) * 2 // 3])  # cut: unreadable from some line on
    summary = _compare([plain, packed], tmp_path, batch_size=60)
    assert summary.malformed >= 10 and summary.duplicates >= 5
    assert any("does not fit" in e for e in summary.errors), summary.errors
    assert any("unreadable from here on" in e for e in summary.errors), summary.errors
    assert 121 + 1 <= summary.measurements <= 121 + 40  # the good lines, the fitting unfit twin, part of the cut file


def test_a_second_import_skips_everything_either_way(tmp_path: Path, small_chunks: None) -> None:
    src = OONI / "netem"
    first = import_ooni([src], tmp_path / "ds", workers=2)
    again = {w: import_ooni([src], tmp_path / "ds", workers=w) for w in (1, 2)}
    assert first.measurements == again[1].already_present == again[2].already_present > 0
    assert again[1].measurements == again[2].measurements == 0


def test_workers_by_input_size(tmp_path: Path) -> None:
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps(synthetic(0)) + "\n")
    assert default_workers([small]) == 1  # starting workers costs more than it saves
    big = tmp_path / "big.jsonl"
    with big.open("wb") as fh:
        fh.truncate(PARALLEL_MIN_BYTES)  # sparse: only the size is read
    assert default_workers([small, big]) >= 1
    assert default_workers([big]) == max(1, len(__import__("os").sched_getaffinity(0)))


def test_cli_workers_option(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vantage.cli import main

    counts = {}
    for workers in ("1", "2"):
        result = CliRunner().invoke(main, ["ooni", "import", str(OONI / "netem"), "-o", str(tmp_path / workers),
                                           "--workers", workers, "--json"])
        assert result.exit_code == 0, result.output
        d = json.loads(result.output)
        counts[workers] = (d["measurements"], d["controls"], d["malformed"], len(d["parquet_files"]))
    assert counts["1"] == counts["2"] and counts["1"][0] > 0, counts
    bad = CliRunner().invoke(main, ["ooni", "import", str(OONI / "netem"), "-o", str(tmp_path / "x"), "--workers", "-1"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
