"""Each row once: the flush at the end of a run, a run killed with SIGKILL and resumed, and two
processes racing on one run or one dataset all leave rows = distinct measurement ids = inputs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from loopfarm import Farm, lab_settings

import probe.dataset
from probe.dataset import DatasetWriter, RunLocked, iter_dataset_files, read_manifest, run_lock
from probe.experiments.base import Target, Vantage
from probe.runner import run_targets
from probe.schema import new_run_id, utcnow

N_SITES = 400


@pytest.fixture(scope="module")
def farm400(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """400 sites; one in 20 a black hole so that measurements are in flight whenever we kill."""
    kinds = ["blackhole" if i % 20 == 7 else "ok" for i in range(N_SITES)]
    with Farm(kinds, workdir=tmp_path_factory.mktemp("farm400")) as f:
        yield f


def counts(output: Path) -> tuple[int, int, int]:
    """(rows, distinct measurement ids, distinct inputs) of the probe rows in a dataset."""
    con = duckdb.connect()
    try:
        glob = f"{output}/measurements/**/*.parquet"
        got = con.sql(
            f"SELECT count(*), count(DISTINCT measurement_id), count(DISTINCT input) "
            f"FROM read_parquet('{glob}', hive_partitioning=true) WHERE role = 'probe'"
        ).fetchall()[0]
    finally:
        con.close()
    return got[0], got[1], got[2]


def write_list(path: Path, farm: Farm) -> list[str]:
    urls = [s.url for s in farm.sites]
    path.write_text("\n".join(urls) + "\n", encoding="utf-8")
    return urls


def vantage_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from vantage.cli import main; main()", "run", *args, "--no-progress"]


def _env() -> dict[str, str]:
    # Read when the process starts, not at import: the session fixture points the user
    # directories (data, config with the test volunteer's consent) at the session's temporary
    # directory after the tests were collected.
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


# ----------------------------------------------------------------------------- in process


def test_the_flush_timer_and_the_final_flush_never_write_one_batch_twice(
    farm400: Farm, vantage: Vantage, output: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end-of-run race of issue 13: the timer's flush is still writing (slow disk) when the
    run ends, the timer is cancelled and the final flush starts. Before, both wrote one batch."""
    real = probe.dataset.write_table_atomic
    writers: set[str] = set()

    def slow_write(*a: object, **kw: object) -> None:
        writers.add(threading.current_thread().name)
        time.sleep(0.3)  # an SD card under load
        real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(probe.dataset, "write_table_atomic", slow_write)
    targets = [Target(s.url) for s in farm400.sites if s.kind == "ok"][:120]
    summary = asyncio.run(
        run_targets(
            targets, "web_connectivity", lab_settings(farm400, step=1.0), vantage, output=output,
            progress=False, flush_interval=0.02,
        )
    )
    assert counts(output) == (120, 120, 120)
    assert summary.records_written == 120
    # Every file came from the one writer thread, never from the event loop or a second thread.
    assert len(writers) == 1 and next(iter(writers)).startswith("vantage-writer"), writers


def test_two_writers_of_one_run_id_never_take_the_same_part_number(farm400: Farm, vantage: Vantage, tmp_path: Path) -> None:
    """Part numbers are published with link(2): a writer that lost the race takes the next one."""
    from probe.schema import Measurement

    run_id = new_run_id()
    barrier = threading.Barrier(2)

    def write(tag: str) -> None:
        w = DatasetWriter(tmp_path, run_id, batch_size=10**6, max_age_s=1e9)
        barrier.wait()  # both computed the same next part number (0) before either wrote
        for i in range(5):
            w.add(_record(run_id, f"https://{tag}-{i}.example/", Measurement))
            w.flush()

    threads = [threading.Thread(target=write, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    files = list(iter_dataset_files(tmp_path))
    assert len(files) == 10  # none overwrote another
    assert counts(tmp_path) == (10, 10, 10)


def _record(run_id: str, url: str, cls: type) -> object:
    return cls(
        measurement_id=str(uuid.uuid4()), run_id=run_id, experiment="web_connectivity", experiment_version="0",
        input=url, role="probe", probe_cc="ZZ", measurement_start_time=utcnow(), runtime_s=0.0,
    )


def test_the_run_lock_is_exclusive_between_processes_and_reentrant_within_one(tmp_path: Path) -> None:
    code = (
        "import sys, time; from probe.dataset import run_lock\n"
        "with run_lock(sys.argv[1], 'r1'):\n    print('held', flush=True); time.sleep(30)\n"
    )
    with subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(RunLocked, match="run r1 is being written by another vantage process"):
            with run_lock(tmp_path, "r1"):
                pass
        with run_lock(tmp_path, "r2"), run_lock(tmp_path, "r2"):  # another run; and re-entrant
            pass
        holder.send_signal(signal.SIGKILL)  # the kernel drops a dead holder's lock
    with run_lock(tmp_path, "r1"):
        pass


# ----------------------------------------------------------------------------- processes


def _wait_for_parts(output: Path, proc: subprocess.Popen[str], n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(iter_dataset_files(output))) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    pytest.fail(f"no {n} part file(s) after {timeout}s")


@pytest.mark.slow  # killed and resumed runs: ~20 s
def test_sigkill_midway_then_resume_then_racing_resumes_leave_each_row_once(farm400: Farm, tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    urls = write_list(lst, farm400)
    out = tmp_path / "out"
    first = vantage_cmd(
        "--list", str(lst), "--resolver", farm400.resolver, "--output", str(out), "--timeout", "1",
        "--concurrency", "20", "--per-host", "3",
    )
    with subprocess.Popen(first, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) as proc:
        _wait_for_parts(out, proc, 1)  # the first batch (200 rows) is on disk: kill mid-run
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGKILL
    rows, ids, inputs = counts(out)
    assert 0 < rows < len(urls) and rows == ids == inputs
    run_id = next(iter_dataset_files(out)).name.removeprefix("part-").rsplit("-", 1)[0]
    # The manifest remembers the settings the run was started with.
    manifest = read_manifest(out, run_id)
    assert manifest is not None and (manifest["concurrency"], manifest["per_host"]) == (20, 3)

    # Two resumes of the killed run at once: exactly one measures, the other says why in one line.
    resume = vantage_cmd("--resume", run_id, "--output", str(out))
    procs = [subprocess.Popen(resume, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], results
    loser_out, loser_err = results[[p.returncode for p in procs].index(1)]
    assert "Traceback" not in loser_err
    lines = [ln for ln in loser_err.splitlines() if ln.strip()]
    assert lines == [f"Error: run {run_id} is being written by another vantage process right now; "
                     "wait for it to finish (or stop it), then resume"], loser_err
    winner_out, winner_err = results[[p.returncode for p in procs].index(0)]
    assert f"already measured (resume): {rows}" in winner_out, winner_out + winner_err
    assert counts(out) == (len(urls), len(urls), len(urls))

    # A third resume finds nothing left to measure and writes nothing.
    done = subprocess.run(resume, capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"already measured (resume): {len(urls)}" in done.stdout
    assert counts(out) == (len(urls), len(urls), len(urls))


def test_resume_remembers_concurrency_and_per_host_unless_overridden(farm400: Farm, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vantage.cli import main

    urls = [s.url for s in farm400.sites if s.kind == "ok"][:6]
    out = tmp_path / "out"
    args = ["run", "--resolver", farm400.resolver, "--output", str(out), "--no-progress", "--timeout", "1"]
    r = CliRunner().invoke(main, [*args, *(a for u in urls for a in ("--url", u)), "--concurrency", "3", "--per-host", "2",
                                  "--max-runtime", "0.001"])
    assert r.exit_code == 0, r.output
    run_id = r.output.split("run id: ", 1)[1].split()[0]
    seen: list[tuple[int, int]] = []
    real = run_targets

    async def spy(*a: object, **kw: object) -> object:
        seen.append((kw["concurrency"], kw["per_host"]))  # type: ignore[arg-type]
        return await real(*a, **kw)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("probe.runner.run_targets", spy)
        r = CliRunner().invoke(main, ["run", "--resume", run_id, "--output", str(out), "--no-progress"])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(main, ["run", "--resume", run_id, "--output", str(out), "--no-progress", "--per-host", "1"])
        assert r.exit_code == 0, r.output
    assert seen == [(3, 2), (3, 1)]
    assert counts(out) == (6, 6, 6)


@pytest.mark.slow  # two probe processes racing: ~4.5 s
def test_two_runs_racing_on_one_dataset_each_write_every_input_once(farm400: Farm, tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    urls = write_list(lst, farm400)[:150]
    lst.write_text("\n".join(urls) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    cmd = vantage_cmd("--list", str(lst), "--resolver", farm400.resolver, "--output", str(out), "--timeout", "1",
                      "--concurrency", "30")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    con = duckdb.connect()
    try:
        per_run = con.sql(
            f"SELECT run_id, count(*), count(DISTINCT measurement_id), count(DISTINCT input) "
            f"FROM read_parquet('{out}/measurements/**/*.parquet', hive_partitioning=true) GROUP BY run_id"
        ).fetchall()
    finally:
        con.close()
    assert len(per_run) == 2 and all(r[1:] == (150, 150, 150) for r in per_run), per_run
