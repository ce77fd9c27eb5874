"""Checks the tests apply to every verdict table they make, and a read-only directory for the
write-failure tests (import as ``from tests.support.verdict_checks import ...``)."""

from __future__ import annotations

import contextlib
import csv
import os
import subprocess
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pytest

from analysis.db import open_datasets
from analysis.pipeline import read_verdicts


def verdict_ids(verdicts: pa.Table | Path | str) -> list[str]:
    """The measurement ids of a verdicts table, a verdicts Parquet file or a verdicts CSV."""
    if isinstance(verdicts, pa.Table):
        return [str(i) for i in verdicts.column("measurement_id").to_pylist()]
    path = Path(verdicts)
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            return [row["measurement_id"] for row in csv.DictReader(fh)]
    table, _ = read_verdicts(path)
    return [str(i) for i in table.column("measurement_id").to_pylist()]


def assert_one_verdict_per_measurement(verdicts: pa.Table | Path | str, datasets: Sequence[Path | str]) -> None:
    """count(verdicts) = count(distinct probe measurement ids in the datasets), and the ids are
    those: no measurement judged twice (duplicates in the input), none left out."""
    ids = verdict_ids(verdicts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a test that plants a corrupt file checks its warning itself
        con = open_datasets([Path(d) for d in datasets])
    try:
        probe_ids = {str(r[0]) for r in con.sql(
            "SELECT DISTINCT measurement_id FROM measurements WHERE role = 'probe'").fetchall()}
    finally:
        con.close()
    assert len(ids) == len(probe_ids), f"{len(ids)} verdicts for {len(probe_ids)} distinct probe measurements"
    assert set(ids) == probe_ids, "the verdicts do not name the datasets' probe measurements"


@contextlib.contextmanager
def read_only_dir(path: Path) -> Iterator[Path]:
    """A directory nobody can write into, root included (chattr +i), else by mode 0555."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        res = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot make a directory read-only for root here (chattr +i: {res.stderr.strip()})")
        try:
            yield path
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
