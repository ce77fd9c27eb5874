"""The runner: concurrency, per-host politeness, time budget, resume, flushing, bounded memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from loopfarm import Farm, lab_settings

from probe.dataset import already_measured, iter_dataset_files
from probe.experiments import registry
from probe.experiments.base import Experiment, Observation, Settings, Target, Vantage
from probe.experiments.context import MeasurementContext
from probe.runner import RunSummary, run_targets
from probe.schema import TcpConnect


@pytest.fixture(scope="module")
def farm50(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """50 sites, 5 of them black holes, spread through the list."""
    kinds = ["blackhole" if i % 10 == 3 else "ok" for i in range(50)]
    with Farm(kinds, workdir=tmp_path_factory.mktemp("farm50")) as f:
        yield f


def query(output: Path, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    con = duckdb.connect()
    try:
        view = f"read_parquet('{output}/measurements/**/*.parquet', hive_partitioning=true)"
        return con.sql(sql.replace("@M", view)).fetchall()
    finally:
        con.close()


def rows(output: Path) -> list[tuple[str, str, str | None, str]]:
    glob = f"{output}/measurements/**/*.parquet"
    con = duckdb.connect()
    try:
        return con.sql(
            f"SELECT input, run_id, failure, role FROM read_parquet('{glob}', hive_partitioning=true) ORDER BY input"
        ).fetchall()
    finally:
        con.close()


def run(targets: object, settings: Settings, vantage: Vantage, output: Path, **kw: object) -> RunSummary:
    return asyncio.run(
        run_targets(targets, kw.pop("experiment", "web_connectivity"), settings, vantage, output=output, progress=False, **kw)  # type: ignore[arg-type]
    )


def test_fifty_targets_with_five_black_holes_take_about_one_timeout(farm50: Farm, vantage: Vantage, output: Path) -> None:
    step = 2.0
    targets = [Target(s.url) for s in farm50.sites]
    started = time.monotonic()
    summary = run(targets, lab_settings(farm50, step=step), vantage, output)
    elapsed = time.monotonic() - started
    counts = summary.counts["web_connectivity"]
    assert (counts.measured, counts.ok, counts.failed) == (50, 45, 5)
    assert summary.complete and summary.records_written == 50 and summary.files
    got = rows(output)
    assert len(got) == 50 and {r[1] for r in got} == {summary.run_id}
    # The five black holes were waited out together: their measurements overlap in time...
    spans = query(
        output,
        "SELECT epoch(measurement_start_time), runtime_s FROM @M WHERE http[len(http)].failure = 'generic_timeout'",
    )
    assert len(spans) == 5
    assert max(start for start, _ in spans) < min(start + runtime for start, runtime in spans)
    # ...so the run took less than the black holes' timeouts one after the other would.
    assert elapsed < 5 * step, f"took {elapsed:.1f}s"


@pytest.mark.slow  # waits out a max runtime, then resumes: ~6 s
def test_max_runtime_stops_and_resume_measures_only_the_rest(farm50: Farm, vantage: Vantage, output: Path) -> None:
    # concurrency 1: the first black hole (4th site) is in flight when the budget runs out.
    targets = [Target(s.url) for s in farm50.sites]
    settings = lab_settings(farm50, step=3.0)
    first = run(targets, settings, vantage, output, concurrency=1, max_runtime=1.8)
    assert first.stopped == "max_runtime"
    # The one in flight (none if the budget fell between two measurements): not written, so
    # resume measures it.
    assert first.cancelled in (0, 1)
    done_first = first.counts["web_connectivity"].measured
    assert 1 <= done_first < 50
    assert first.not_started == 50 - done_first - first.cancelled
    assert len(rows(output)) == done_first  # flushed on the way out

    second = run(targets, settings, vantage, output, run_id=first.run_id, concurrency=20)
    assert second.run_id == first.run_id and second.complete
    assert second.skipped == done_first
    assert second.counts["web_connectivity"].measured == 50 - done_first
    got = rows(output)
    assert sorted(r[0] for r in got) == sorted(t.input for t in targets)  # each input exactly once
    assert already_measured(output, first.run_id, "web_connectivity", "probe") == {t.input for t in targets}


class _Sleepy(Experiment):
    """Counts how many measurements of each host run at once; each takes ``delay`` seconds."""

    name = "sleepy_test"

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.now: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.total_now = 0
        self.total_peak = 0

    async def run(self, target: Target, net: MeasurementContext) -> list[Observation]:
        host = self.host_key(target)
        self.now[host] = self.now.get(host, 0) + 1
        self.total_now += 1
        self.peak[host] = max(self.peak.get(host, 0), self.now[host])
        self.total_peak = max(self.total_peak, self.total_now)
        clock = net.clock
        t0 = clock.now()
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.now[host] -= 1
            self.total_now -= 1
        return [TcpConnect(t0=t0, t=clock.now(), failure=None, ip="192.0.2.1", port=80)]


@pytest.fixture
def sleepy() -> Iterator[_Sleepy]:
    exp = _Sleepy()
    registry.register(exp)
    try:
        yield exp
    finally:
        del registry.EXPERIMENTS[exp.name]


def test_global_and_per_host_limits(sleepy: _Sleepy, vantage: Vantage, output: Path) -> None:
    # 60 targets on one host (listed first) then 40 on 40 other hosts.
    targets = [Target(f"http://busy.test/{i}") for i in range(60)] + [Target(f"http://h{i}.test/") for i in range(40)]
    started = time.monotonic()
    summary = run(targets, Settings(), vantage, output, experiment=sleepy.name, concurrency=10, per_host=3)
    elapsed = time.monotonic() - started
    assert summary.counts[sleepy.name].measured == 100
    assert sleepy.peak["busy.test"] == 3
    assert sleepy.total_peak == 10
    # The busy host does not hold up the others: they run in the slots it may not use.
    assert elapsed < 60 / 3 * sleepy.delay + 1.5


def test_a_huge_generator_is_consumed_lazily(sleepy: _Sleepy, vantage: Vantage, output: Path) -> None:
    pulled = 0

    def targets() -> Iterator[Target]:
        nonlocal pulled
        for i in range(1_000_000):
            pulled += 1
            yield Target(f"http://h{i}.test/")

    summary = run(targets(), Settings(), vantage, output, experiment=sleepy.name, concurrency=5, max_runtime=0.5)
    assert summary.stopped == "max_runtime" and summary.not_started is None
    measured = summary.counts[sleepy.name].measured
    # Only what the slots could take was ever pulled from the list, not the million.
    assert measured + summary.cancelled <= pulled <= measured + summary.cancelled + 1
    assert pulled < 1000


def test_timer_flushes_a_slow_run(sleepy: _Sleepy, vantage: Vantage, output: Path) -> None:
    sleepy.delay = 0.2
    targets = [Target(f"http://h{i}.test/") for i in range(6)]

    async def scenario() -> tuple[int, RunSummary]:
        task = asyncio.create_task(
            run_targets(
                targets, sleepy.name, Settings(), vantage, output=output, progress=False,
                concurrency=1, flush_interval=0.3,
            )
        )
        await asyncio.sleep(0.9)
        files_midway = len(list(iter_dataset_files(output)))
        return files_midway, await task

    files_midway, summary = asyncio.run(scenario())
    assert files_midway >= 1  # written by the timer, long before the batch (200) filled
    assert summary.records_written == 6


def test_resume_of_a_control_run_skips_control_rows(sleepy: _Sleepy, output: Path) -> None:
    control = Vantage(role="control", probe_cc="ZZ")
    targets = [Target(f"http://h{i}.test/") for i in range(4)]
    first = run(targets[:2], Settings(), control, output, experiment=sleepy.name)
    second = run(targets, Settings(), control, output, experiment=sleepy.name, run_id=first.run_id)
    assert second.skipped == 2 and second.counts[sleepy.name].measured == 2
    assert {r[3] for r in rows(output)} == {"control"}


def test_a_bad_run_id_is_a_store_error(vantage: Vantage, output: Path) -> None:
    from probe.dataset import StoreError

    with pytest.raises(StoreError):
        run([Target("http://x.test/")], Settings(), vantage, output, run_id="../etc")


def test_a_runner_bug_stops_the_run_but_keeps_what_was_measured(vantage: Vantage, output: Path) -> None:
    class Fragile(_Sleepy):
        name = "fragile_test"

        def succeeded(self, m):  # type: ignore[no-untyped-def]
            if m.input.endswith("/2"):
                raise RuntimeError("bug in succeeded()")
            return True

    exp = Fragile(delay=0.01)
    registry.register(exp)
    try:
        with pytest.raises(RuntimeError, match="bug in succeeded"):
            run([Target(f"http://h.test/{i}") for i in range(10)], Settings(), vantage, output,
                experiment=exp.name, concurrency=1)
    finally:
        del registry.EXPERIMENTS[exp.name]
    assert sorted(r[0] for r in rows(output)) == ["http://h.test/0", "http://h.test/1"]


def test_a_bad_vantage_is_refused_before_anything_runs(vantage: Vantage, output: Path) -> None:
    with pytest.raises(ValueError, match="probe_cc"):
        run([Target("http://x.test/")], Settings(), Vantage(probe_cc="Iran"), output)
    assert not output.exists() or not list(iter_dataset_files(output))


def test_progress_bar_counts_ok_and_failed_on_a_terminal(
    sleepy: _Sleepy, vantage: Vantage, output: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich: behave as on a terminal
    monkeypatch.setattr(sleepy, "succeeded", lambda m: not m.input.endswith("/bad"))
    targets = [Target("http://a.test/"), Target("http://b.test/bad"), Target("http://c.test/")]
    asyncio.run(run_targets(targets, sleepy.name, Settings(), vantage, output=output, progress=True))
    err = capsys.readouterr().err
    assert "sleepy_test" in err and "3/3" in err and "ok 2" in err and "failed 1" in err


def test_no_progress_bar_off_a_terminal(
    sleepy: _Sleepy, vantage: Vantage, output: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    asyncio.run(run_targets([Target("http://a.test/")], sleepy.name, Settings(), vantage, output=output, progress=True))
    assert capsys.readouterr().err == ""


def test_phases_share_one_budget(sleepy: _Sleepy, vantage: Vantage, output: Path) -> None:
    from probe.runner import run_phases

    sleepy.delay = 0.2
    first = [Target(f"http://a{i}.test/") for i in range(20)]
    second = [Target(f"http://b{i}.test/") for i in range(5)]
    summary = asyncio.run(
        run_phases([(sleepy.name, first), (sleepy.name + "_2", second)], Settings(), vantage, output=output,
                   max_runtime=0.5, concurrency=1, progress=False)
    )
    # The budget ran out in the first phase: the second never started, and says so.
    assert summary.stopped == "max_runtime"
    done = summary.counts[sleepy.name].measured
    assert 1 <= done < 20 and (sleepy.name + "_2") not in summary.counts
    assert summary.not_started == 20 - done - summary.cancelled + 5
    assert len(rows(output)) == done


def test_a_run_writes_parquet_without_importing_pandas() -> None:
    """Issue 19: pyarrow imports pandas (when installed) on its first array from a list, ~55 MB
    of a probe's RSS; the runner makes that check find none, and pandas conversions still work."""
    import subprocess
    import sys

    code = (
        "import importlib.util, sys\n"
        "from probe.runner import _arrow_without_pandas\n"
        "from probe.schema import Measurement, new_run_id, new_uuid7, records_to_table, utcnow\n"
        "_arrow_without_pandas()\n"
        "table = records_to_table([Measurement(new_uuid7(), new_run_id(), 'x', '0', 'http://a/', utcnow())])\n"
        "print('imported', 'pandas' in sys.modules)\n"
        "if importlib.util.find_spec('pandas') is not None:\n"
        "    print('to_pandas', len(table.to_pandas()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "imported False" in out, out
    if "to_pandas" not in out:
        print("pandas is not installed here: only the first half (no import) was checked")
    else:
        assert "to_pandas 1" in out, out
