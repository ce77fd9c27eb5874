"""Offline queueing: measurements made while the network is down keep their real start times,
and what was flushed survives a kill and a restart (write, SIGKILL, resume, re-read)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb

from analysis.db import open_datasets
from analysis.shutdown import detect
from probe.dataset import iter_dataset_files, measured_inputs
from tests.support.paths import REPO

# The outage: two hours before midnight to one hour after, so the queued records also cross a
# date partition.
OUTAGE_START = dt.datetime(2026, 11, 20, 22, 0, tzinfo=dt.UTC)

_WRITER = """
import datetime as dt, sys, time
from probe import schema as S
from probe.dataset import DatasetWriter

root, run_id, first, last, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
start = dt.datetime(2026, 11, 20, 22, 0, tzinfo=dt.timezone.utc)
# batch of 10: like the runner, records wait in memory until a batch (or the flush timer) writes them
w = DatasetWriter(root, run_id, batch_size=10, max_age_s=1e9)
for i in range(first, last):
    # measured "offline": every step timed out, start time = when it was measured (one a minute)
    rec = S.Measurement(
        measurement_id=S.new_uuid7(), run_id=run_id, experiment="anchors", experiment_version="0.1.0",
        input=f"tcp://192.0.2.{i % 250 + 1}:53", measurement_start_time=start + dt.timedelta(minutes=i),
        probe_cc="MM", probe_asn="AS2002", software_version="0.1.0", runtime_s=10.0,
        tcp=[S.TcpConnect(t0=0.0, t=10.0, failure="generic_timeout", ip=f"192.0.2.{i % 250 + 1}", port=53)],
    )
    w.add(rec)
    if i + 1 == kill_after:
        print("ready", flush=True)
        time.sleep(60)  # killed here, with a partial batch still in memory
w.close()
print("done", flush=True)
"""


def _run(root: Path, run_id: str, first: int, last: int, kill_after: int = -1) -> None:
    args = [sys.executable, "-c", textwrap.dedent(_WRITER), str(root), run_id, str(first), str(last), str(kill_after)]
    with subprocess.Popen(args, stdout=subprocess.PIPE, cwd=REPO) as proc:
        assert proc.stdout is not None
        if kill_after >= 0:
            assert proc.stdout.readline().strip() == b"ready"
            os.kill(proc.pid, signal.SIGKILL)  # a power cut: no flush, no cleanup
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
        else:
            assert proc.stdout.read().strip() == b"done"
            assert proc.wait() == 0


def test_offline_measurements_keep_real_times_and_survive_restart(tmp_path: Path) -> None:
    run_id = "20261120T220000Z-0ff11e00"
    _run(tmp_path, run_id, 0, 200, kill_after=125)  # 120 flushed in batches, 5 in memory: lost
    done = measured_inputs(tmp_path, run_id, "anchors")
    assert len(done) == 120
    # restart: the resumed run carries on from what is on disk (like `vantage run --resume`)
    _run(tmp_path, run_id, 120, 180)
    assert not list((tmp_path / "measurements").glob("**/.*.tmp"))
    files = list(iter_dataset_files(tmp_path))
    assert {f.parent.parent.name for f in files} == {"date=2026-11-20", "date=2026-11-21"}  # by measurement time

    con = open_datasets([tmp_path])
    rows = con.sql("""SELECT epoch(measurement_start_time)::BIGINT AS t FROM measurements
                      ORDER BY measurement_start_time""").fetchall()
    assert len(rows) == 180  # nothing flushed was lost, nothing written twice
    expected = [int((OUTAGE_START + dt.timedelta(minutes=i)).timestamp()) for i in range(180)]
    assert [t for (t,) in rows] == expected  # the real measurement times, not the write times
    # the analyzer puts them in the outage hours: anchors 0 % in each of the three hours
    facts = detect(con).facts  # one row per measurement of the re-read data
    assert facts is not None
    per_hour = facts.aggregate("strftime(hour, '%d %H') AS h, count(*), count(*) FILTER (WHERE ok)",
                               "h").order("h").fetchall()
    assert per_hour == [("20 22", 60, 0), ("20 23", 60, 0), ("21 00", 60, 0)]
    con.close()


def test_reader_never_sees_half_files(tmp_path: Path) -> None:
    # A temporary file left by a killed writer is invisible to the analyzer's view.
    run_id = "20261120T220000Z-0ff11e01"
    _run(tmp_path, run_id, 0, 20)
    part = next(iter_dataset_files(tmp_path))
    (part.parent / f".{part.name}.999.tmp").write_bytes(b"PAR1 half a file")
    con = duckdb.connect()
    con = open_datasets([tmp_path], con)
    assert con.sql("SELECT count(*) FROM measurements").fetchall() == [(20,)]
    con.close()
