"""Bad data in datasets never costs good data: a corrupt data page behind an intact footer, a
FIFO named .parquet, symbolic link loops and a file outside the partition layout are each
named in one line and skipped by `vantage analyze`, `vantage events` and `vantage report`,
which analyze everything else exactly as they would without the bad file."""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from analysis.db import discover
from tests.support import scenario as sc
from vantage.cli import main

START = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
COMMANDS = ("analyze", "events", "report")


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three days of one probe network (two vantage points) and a control network."""
    nets = [sc.Network("IR", "AS1001", "Example Telecom IR", ("pi", "laptop")),
            sc.Network("NL", "AS9001", "Example Cloud NL", ("pi",), role="control")]
    events = [sc.PlantedEvent("steady_block", START, None, "IR", ("AS1001",), ("https://news-b.example/",),
                              "dns.dns_nxdomain")]
    root = tmp_path_factory.mktemp("clean") / "ds"
    sc.write_dataset(sc.generate_measurements(sc.Scenario(start=START, days=3, networks=nets, events=events, seed=3)), root)
    return root


def run(cmd: str, ds: Path, out: Path) -> tuple[int, str, str]:
    """One command over ``ds``; (exit code, stdout, stderr)."""
    args = {
        "analyze": ["analyze", str(ds), "-o", str(out / "verdicts.parquet")],
        "events": ["events", str(ds), "-o", str(out / "events.parquet"), "-q"],
        "report": ["report", str(ds), "-o", str(out / "report.md"), "--csv", str(out / "verdicts.csv")],
    }[cmd]
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.stdout, res.stderr


def outcome(cmd: str, out: Path) -> object:
    """What a command produced, to compare a run over a damaged dataset with the clean one."""
    if cmd == "analyze":
        t = pq.read_table(out / "verdicts.parquet")
        return sorted(zip(*(t.column(c).to_pylist() for c in ("measurement_id", "status", "probe_cc")), strict=True))
    if cmd == "events":
        t = pq.read_table(out / "events.parquet")
        return sorted(map(str, zip(t.column("kind").to_pylist(), t.column("start").to_pylist(), strict=True)))
    return sorted((out / "verdicts.csv").read_text(encoding="utf-8").splitlines())


@pytest.fixture(scope="module")
def expected(clean: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    got = {}
    for cmd in COMMANDS:
        out = tmp_path_factory.mktemp(f"expected-{cmd}")
        code, stdout, stderr = run(cmd, clean, out)
        assert code == 0, stdout + stderr
        assert "warning" not in stderr, stderr
        got[cmd] = outcome(cmd, out)
    assert got["analyze"], "the clean dataset has verdicts"
    return got


def _parts(root: Path) -> list[Path]:
    return sorted((root / "measurements").glob("date=*/probe_cc=*/*.parquet"))


# Each damage adds a bad file to a copy of the clean dataset and returns (its path, reason text).


def corrupt_data_page(root: Path) -> tuple[Path, str]:
    """A copy of a real part file whose http column pages are overwritten; the footer is intact."""
    src = _parts(root)[0]
    bad = src.with_name("part-corrupt-00000.parquet")
    data = bytearray(src.read_bytes())
    meta = pq.ParquetFile(src).metadata
    rng = random.Random(1)
    rg = meta.row_group(0)
    for i in range(rg.num_columns):
        col = rg.column(i)
        if col.path_in_schema.startswith("http."):
            start = col.dictionary_page_offset or col.data_page_offset
            for k in range(start + 1, start + col.total_compressed_size - 1):
                data[k] = rng.randrange(256)
    bad.write_bytes(bytes(data))
    pq.read_schema(bad)  # the footer still reads: only the data pages are bad
    return bad, "corrupt data in row group 0"


def fifo(root: Path) -> tuple[Path, str]:
    bad = _parts(root)[0].with_name("part-fifo-00000.parquet")
    os.mkfifo(bad)
    return bad, "not a regular file (a FIFO)"


def file_link_loop(root: Path) -> tuple[Path, str]:
    part = _parts(root)[0].parent
    a = part / "part-loop-00000.parquet"
    a.symlink_to(a.name)  # points at itself: stat() gives ELOOP
    return a, "symbolic link loop"


def directory_link_loop(root: Path) -> tuple[Path, str]:
    part = _parts(root)[0].parent
    loop = part / "again"
    loop.symlink_to("../..")  # measurements/date=.../probe_cc=.../again -> measurements/
    return loop, "symbolic link loop (a directory already read)"


def outside_layout(root: Path) -> tuple[Path, str]:
    """A real part file copied to measurements/ itself: its rows have no date/probe_cc partition."""
    bad = root / "measurements" / "stray.parquet"
    shutil.copy(_parts(root)[0], bad)
    return bad, "outside the partition layout"


DAMAGES: dict[str, Callable[[Path], tuple[Path, str]]] = {
    "corrupt_data_page": corrupt_data_page,
    "fifo": fifo,
    "file_link_loop": file_link_loop,
    "directory_link_loop": directory_link_loop,
    "outside_layout": outside_layout,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("cmd", COMMANDS)
def test_a_bad_file_is_named_once_and_everything_else_analyzed(
    damage: str, cmd: str, clean: Path, expected: dict[str, object], tmp_path: Path
) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(clean, ds, symlinks=True)
    bad, reason = DAMAGES[damage](ds)
    out = tmp_path / "out"
    out.mkdir()
    result: list[tuple[int, str, str]] = []
    # A FIFO must not hang a reader: run the command in a thread and give it a deadline.
    worker = threading.Thread(target=lambda: result.append(run(cmd, ds, out)), daemon=True)
    worker.start()
    worker.join(120)
    if worker.is_alive():
        if damage == "fifo":  # release the reader blocked on the FIFO so the test process ends
            with open(bad, "wb"):
                pass
        pytest.fail(f"vantage {cmd} hangs on {damage}")
    code, stdout, stderr = result[0]
    assert code == 0, stdout + stderr
    assert "Traceback" not in stdout + stderr
    warnings = [ln for ln in stderr.splitlines() if ln.startswith("warning")]
    assert len(warnings) == 1, stderr
    assert str(bad) in warnings[0] and reason in warnings[0], warnings
    # Every other file was analyzed, as if the bad one were not there.
    assert outcome(cmd, out) == expected[cmd]


def test_a_trap_a_clean_copy_and_a_linked_partition_are_read_in_full(clean: Path, tmp_path: Path) -> None:
    """Traps beside the loops: a partition directory that is a symbolic link (not a loop) and a
    plain directory of loose files are data, read with nothing skipped."""
    ds = tmp_path / "ds"
    shutil.copytree(clean, ds)
    elsewhere = tmp_path / "elsewhere"
    part = _parts(ds)[-1].parent
    shutil.move(part, elsewhere)
    part.symlink_to(elsewhere, target_is_directory=True)
    found = discover([ds])
    assert found.skipped == [] and len(found.hive) == len(_parts(clean)) and found.plain == []
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(_parts(clean)[0], loose / "a.parquet")
    found = discover([loose, ds])
    assert found.skipped == [] and [p.name for p in found.plain] == ["a.parquet"]
    # A loose file beside a dataset no longer turns partitioning off for the dataset's rows.
    from analysis.db import open_datasets

    con = open_datasets([loose, ds])
    try:
        nulls = con.sql("SELECT count(*) FILTER (WHERE probe_cc IS NULL), count(*) FROM measurements").fetchall()[0]
    finally:
        con.close()
    assert nulls[0] == pq.read_metadata(loose / "a.parquet").num_rows < nulls[1]
