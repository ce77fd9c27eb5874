"""`vantage demo` end to end: every lab URL's verdict matches the lab's ground truth."""

from __future__ import annotations

import csv
import ipaddress
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from probe.cli import main
from probe.cli.demo import run_demo
from probe.lab import SITES, LoopbackLab
from probe.schema import row_to_record
from probe.store import iter_dataset_files

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


def test_demo_command_prints_the_match_and_cleans_up(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["demo", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(SITES)}/{len(SITES)} verdicts match the ground truth" in result.output
    assert str(out / "verdicts.parquet") in result.output
    with open(out / "ground_truth.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(SITES)
    assert list((out / "probe").glob("measurements/date=*/probe_cc=ZZ/*.parquet"))
    assert list((out / "control").glob("measurements/date=*/probe_cc=ZZ/*.parquet"))
    assert set(threading.enumerate()) <= threads_before  # the lab's thread is gone


def test_demo_refuses_a_directory_with_old_data(tmp_path: Path) -> None:
    (tmp_path / "old.parquet").write_bytes(b"x")
    result = CliRunner().invoke(main, ["demo", "--output", str(tmp_path)])
    assert result.exit_code == 1
    assert "not an empty directory" in result.output
    assert "Traceback" not in result.output
