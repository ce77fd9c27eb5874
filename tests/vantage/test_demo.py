"""`vantage demo` end to end: every lab URL's verdict matches the lab's ground truth."""

from __future__ import annotations

import csv
import ipaddress
import re
import shlex
import shutil
import threading
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from probe.dataset import iter_dataset_files
from probe.schema import row_to_record
from tests.support.verdict_checks import assert_one_verdict_per_measurement, read_only_dir
from vantage.cli import main
from vantage.demo import run_demo
from vantage.lab import SITES, LoopbackLab

pytestmark = pytest.mark.slow  # two runs over the lab plus the analysis: ~10 s


def test_demo_pipeline_matches_ground_truth_for_every_lab_url(
    loopback_lab: LoopbackLab, tmp_path: Path
) -> None:
    result = run_demo(tmp_path / "demo", lab=loopback_lab)
    assert len(result.rows) == len(SITES)
    mismatches = [
        f"{r.url}: expected {r.expected_status}/{r.expected_layer}, got {r.status}/{r.layer} ({r.method})"
        for r in result.rows
        if not r.matches
    ]
    assert not mismatches, "\n".join(mismatches)
    # The verdicts file is the analyzer's own output, one row per probe measurement.
    assert_one_verdict_per_measurement(result.verdicts, [result.probe_dataset, result.control_dataset])
    verdicts = pq.read_table(result.verdicts).to_pylist()
    assert sorted(v["input"] for v in verdicts) == sorted(loopback_lab.ground_truth)
    confirmed = {v["input"] for v in verdicts if v["confirmed"]}
    # Both blockpage routes carry a fingerprint the analyzer knows from the lab's CSV.
    assert loopback_lab.url("dns-blockpage.lab.test", "http") in confirmed
    assert loopback_lab.url("http-redirect.lab.test", "http") in confirmed
    # The lab was handed back as it was found.
    assert loopback_lab.censor
    # Nothing left loopback: every resolver asked and every address met is the lab's.
    for dataset, resolver in (
        (result.probe_dataset, loopback_lab.censoring_resolver),
        (result.control_dataset, loopback_lab.honest_resolver),
    ):
        records = [
            row_to_record(r) for f in iter_dataset_files(dataset) for r in pq.read_table(f).to_pylist()
        ]
        assert len(records) == len(SITES)
        assert {q.resolver for m in records for q in m.dns} == {resolver}
        addresses = {a.value for m in records for q in m.dns for a in q.answers}
        addresses |= {c.ip for m in records for c in m.tcp} | {h.ip for m in records for h in m.http if h.ip}
        assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses), addresses


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, set[threading.Thread]]:
    """`vantage demo` run once, as a reader runs it: (output directory, what it printed, the
    threads alive before it)."""
    threads_before = set(threading.enumerate())
    out = tmp_path_factory.mktemp("demo-cli") / "out"
    result = CliRunner().invoke(main, ["demo", "--output", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output, threads_before


def test_demo_command_prints_the_match_and_cleans_up(demo_run: tuple[Path, str, set[threading.Thread]]) -> None:
    out, output, threads_before = demo_run
    assert f"{len(SITES)}/{len(SITES)} verdicts match the ground truth" in output
    assert str(out / "verdicts.parquet") in output
    with open(out / "ground_truth.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(SITES)
    assert list((out / "probe").glob("measurements/date=*/probe_cc=ZZ/*.parquet"))
    assert list((out / "control").glob("measurements/date=*/probe_cc=ZZ/*.parquet"))
    assert set(threading.enumerate()) <= threads_before  # the lab's thread is gone
    assert_one_verdict_per_measurement(out / "verdicts.parquet", [out / "probe", out / "control"])


def _verdict_rows(path: Path) -> dict[str, tuple[Any, ...]]:
    """input -> (measurement id, status, layer, method, confirmed, fingerprint) of a verdicts
    Parquet file or the CSV `vantage report --csv` writes."""
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            return {r["input"]: (r["measurement_id"], r["status"], r["layer"] or None, r["method"] or None,
                                 r["confirmed"] == "true", r["fingerprint"] or None) for r in csv.DictReader(fh)}
    return {r["input"]: (r["measurement_id"], r["status"], r["layer"], r["method"], bool(r["confirmed"]),
                         r["fingerprint"]) for r in pq.read_table(path).to_pylist()}


def _printed_table(output: str) -> dict[str, str]:
    """Lab URL (port dropped, as printed) -> the verdict column (status[:layer]) of the demo's table."""
    rows = {}
    for line in output.splitlines():
        m = re.match(r"\s*✓\s+(\S+://\S+)\s+(\S+)", line)
        if m:
            rows[m[1]] = m[2]
    return rows


def test_the_printed_commands_reproduce_the_demo_row_for_row(
    demo_run: tuple[Path, str, set[threading.Thread]], tmp_path: Path
) -> None:
    """Issue 12: the demo's verdicts, `vantage analyze` and `vantage report` run by hand with the
    options the demo prints, and `vantage report --verdicts` on the demo's file all agree."""
    out, output, _ = demo_run
    lines = output.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("to redo the analysis by hand"))
    analyze_line, report_line = lines[i + 1].strip().split(" && ")
    analyze_args, report_args = shlex.split(analyze_line), shlex.split(report_line)
    assert analyze_args[:2] == ["vantage", "analyze"] and report_args[:2] == ["vantage", "report"]
    assert "--public-net" in analyze_args and "--fingerprints" in analyze_args  # what the demo used, said
    demo = _verdict_rows(out / "verdicts.parquet")
    blockpage = next(u for u in demo if u.startswith("http://dns-blockpage.lab.test"))
    assert demo[blockpage][3:5] == ("dns.blockpage_ip", True)
    # the printed table is the verdicts file's
    table = _printed_table(output)
    assert len(table) == len(SITES)
    for url, row in demo.items():
        assert table[re.sub(r":\d+/", "/", url, count=1)] == row[1] + (f":{row[2]}" if row[2] else "")

    shutil.copy(out / "verdicts.parquet", tmp_path / "demo-verdicts.parquet")
    runner = CliRunner()
    res = runner.invoke(main, analyze_args[1:])  # exactly as printed: onto the demo's own files
    assert res.exit_code == 0, res.output
    assert _verdict_rows(out / "verdicts.parquet") == demo
    res = runner.invoke(main, [*report_args[1:], "--csv", str(tmp_path / "from-file.csv")])
    assert res.exit_code == 0, res.output
    assert _verdict_rows(tmp_path / "from-file.csv") == demo
    # re-running the report on the demo's own verdicts file keeps every row
    res = runner.invoke(main, ["report", "--verdicts", str(tmp_path / "demo-verdicts.parquet"), "-o",
                               str(tmp_path / "again.html"), "--csv", str(tmp_path / "again.csv")])
    assert res.exit_code == 0, res.output
    assert _verdict_rows(tmp_path / "again.csv") == demo
    # the report computing from the datasets with the printed options: the same stage, same rows
    options = analyze_args[analyze_args.index("--db") + 2:]
    datasets = analyze_args[2:analyze_args.index("--output")]
    res = runner.invoke(main, ["report", *datasets, "-o", str(tmp_path / "computed.html"),
                               "--csv", str(tmp_path / "computed.csv"), *options])
    assert res.exit_code == 0, res.output
    assert _verdict_rows(tmp_path / "computed.csv") == demo
    # trap: without the demo's options (--public-net for the lab's loopback addresses) the
    # verdicts differ (issue 12); the agreement above comes from passing them, not from luck
    res = runner.invoke(main, ["report", *datasets, "-o", str(tmp_path / "bare.html"), "--csv", str(tmp_path / "bare.csv")])
    assert res.exit_code == 0, res.output
    bare = _verdict_rows(tmp_path / "bare.csv")
    assert bare != demo


def test_demo_refuses_a_directory_with_old_data(tmp_path: Path) -> None:
    (tmp_path / "old.parquet").write_bytes(b"x")
    result = CliRunner().invoke(main, ["demo", "--output", str(tmp_path)])
    assert result.exit_code == 1
    assert "not an empty directory" in result.output
    assert "Traceback" not in result.output


def test_demo_into_a_read_only_place_is_one_line(tmp_path: Path) -> None:
    with read_only_dir(tmp_path / "ro") as ro:
        for out in (ro / "new", ro):  # a new directory under it, or the (empty) directory itself
            result = CliRunner().invoke(main, ["demo", "--output", str(out)])
            assert result.exit_code == 1 and "Traceback" not in result.output, result.output
            assert result.output.startswith(f"Error: {out}: cannot write the demo there")
            assert len(result.output.strip().splitlines()) == 1
        assert list(ro.iterdir()) == []
