"""asyncio scheduling of a run: a bounded worker pool with a global and a per-host limit, a time
budget, Ctrl-C, progress, resume, and records handed to the store in batches.

Memory stays bounded whatever the list size: targets are pulled from the iterable only as
slots free up, and at most ``_WAITING_PER_SLOT * concurrency`` targets wait for a busy host.
A measurement cut short by the budget or by Ctrl-C is not written, so ``--resume`` measures
it again; everything that finished before is flushed to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.dataset import DatasetWriter, StoreError, already_measured, run_lock
from probe.experiments import registry
from probe.experiments.base import Experiment, Settings, Target, Vantage, measure
from probe.net.scrub import scrub_all_addresses
from probe.schema import ROLES, Measurement, new_run_id

log = logging.getLogger(__name__)

# 100 slots keep 1,000 URLs with 10 % black holes (each costing a 10 s timeout) well under a
# minute on two cores, while a Raspberry Pi with 1 GB stays far from its memory limit.
DEFAULT_CONCURRENCY = 100
# Politeness: never more than this many measurements of one host at once.
DEFAULT_PER_HOST = 4
DEFAULT_BATCH_SIZE = 200
DEFAULT_FLUSH_INTERVAL_S = 30.0
_WAITING_PER_SLOT = 4

STOP_MAX_RUNTIME = "max_runtime"
STOP_INTERRUPTED = "interrupted"


@dataclass
class ExperimentCounts:
    measured: int = 0
    ok: int = 0
    failed: int = 0


@dataclass
class RunSummary:
    """What a run did; the CLI renders it."""

    run_id: str
    experiment: str
    output: Path
    counts: dict[str, ExperimentCounts] = field(default_factory=dict)  # by experiment
    skipped: int = 0  # already measured in this run (resume)
    cancelled: int = 0  # in flight when the run stopped; not written, measured on resume
    not_started: int | None = None  # None when the number of targets was not known
    controls: int = 0  # control measurements fetched from a control helper and stored
    stopped: str | None = None  # None (ran to the end) | "max_runtime" | "interrupted"
    files: list[Path] = field(default_factory=list)
    records_written: int = 0
    wall_s: float = 0.0

    @property
    def complete(self) -> bool:
        return self.stopped is None


ControlFetcher = Callable[[Measurement, Target], Any]  # async: -> list[Measurement]
# Called with each record kept; a string (the stop reason) stops the run cleanly like max_runtime.
StopCheck = Callable[[Measurement], "str | None"]


class _Run:
    """State of one run_targets() call. Everything runs on the event loop's thread."""

    def __init__(
        self,
        experiment: Experiment,
        settings: Settings,
        vantage: Vantage,
        writer: DatasetWriter,
        summary: RunSummary,
        *,
        concurrency: int,
        per_host: int,
        done: set[str],
        progress: _Progress,
        flush_interval: float,
        batch_size: int,
        control: ControlFetcher | None,
        stop_check: StopCheck | None = None,
    ) -> None:
        self.stop_check = stop_check
        self.experiment = experiment
        self.settings = settings
        self.vantage = vantage
        self.writer = writer
        self.summary = summary
        self.per_host = per_host
        self.done = done
        self.progress = progress
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.control = control
        self.slots = asyncio.Semaphore(concurrency)
        self.max_waiting = _WAITING_PER_SLOT * concurrency
        self.active: dict[str, int] = {}
        self.waiting: dict[str, deque[Target]] = {}
        self.n_waiting = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()
        self.stopping = False
        self.buffer: list[Measurement] = []
        # The one thread that writes Parquet for this run (see flush()).
        self.write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vantage-writer")
        self.flush_tasks: set[asyncio.Task[None]] = set()
        self.store_error: StoreError | None = None
        self.error: BaseException | None = None
        self.main: asyncio.Task[None] | None = None
        self.started = 0
        counts = ExperimentCounts()
        summary.counts[experiment.name] = counts
        self.counts = counts

    # ----------------------------------------------------------------- scheduling

    async def dispatch(self, targets: Iterable[Target]) -> None:
        for target in targets:
            if target.input in self.done:
                self.summary.skipped += 1
                self.progress.advance(skipped=True)
                if self.summary.skipped % 1000 == 0:
                    await asyncio.sleep(0)  # a long resumed list must not starve the flush timer
                continue
            host = self.experiment.host_key(target)
            while self.n_waiting >= self.max_waiting:
                await self._wait_change()
            if self.active.get(host, 0) >= self.per_host:
                self._defer(host, target)
                continue
            await self.slots.acquire()
            if self.active.get(host, 0) >= self.per_host:
                # A target of the same host was handed this host's slot while we waited.
                self.slots.release()
                self._defer(host, target)
                continue
            self._start(target, host)
        while self.tasks or self.n_waiting:
            await self._wait_change()

    async def _wait_change(self) -> None:
        await self.changed.wait()
        self.changed.clear()

    def _defer(self, host: str, target: Target) -> None:
        self.waiting.setdefault(host, deque()).append(target)
        self.n_waiting += 1

    def _start(self, target: Target, host: str) -> None:
        self.active[host] = self.active.get(host, 0) + 1
        self.started += 1
        held = [True]

        def release() -> None:
            """Hand this measurement's slots on, once: when its steps are over (only its late
            DNS collectors still listen, for at most the late window) or when it ends."""
            if held[0]:
                held[0] = False
                self._release(host)

        task = asyncio.create_task(self._measure(target, release))
        self.tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, release))

    def _finished(self, task: asyncio.Task[None], release: Callable[[], None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # measure() keeps every experiment error in the record, so this is a bug in the
            # runner itself: stop, flush what was measured, then raise it to the caller.
            self.error = self.error or task.exception()
            self.stop("error")
        release()
        if not self.stopping:
            self.changed.set()

    def _release(self, host: str) -> None:
        if self.stopping:
            return
        queue = self.waiting.get(host)
        if queue:
            # Hand this global slot straight to the next target of the same host.
            nxt = queue.popleft()
            self.n_waiting -= 1
            if not queue:
                del self.waiting[host]
            self.active[host] -= 1
            self._start(nxt, host)
        else:
            self.active[host] -= 1
            if not self.active[host]:
                del self.active[host]
            self.slots.release()
        self.changed.set()

    async def _measure(self, target: Target, release: Callable[[], None]) -> None:
        # With a control helper the slot is held until the control is fetched too, as it
        # always was (the helper's load stays bounded by the concurrency).
        m = await measure(self.experiment, target, self.settings, self.vantage, self.summary.run_id,
                          steps_done=release if self.control is None else None)
        ok = self.experiment.succeeded(m)
        self.counts.measured += 1
        if ok:
            self.counts.ok += 1
        else:
            self.counts.failed += 1
        self._keep(m)
        self.progress.advance(ok=ok)
        if self.control is not None and self.vantage.role == "probe":
            try:
                controls = await self.control(m, target)
            except Exception as exc:  # no control is a verdict of "no_control", not a lost probe row
                log.warning("control helper failed for %s: %s", target.input, scrub_all_addresses(str(exc)))
                return
            for c in controls:
                self._keep(c)
                self.summary.controls += 1

    # ----------------------------------------------------------------- stopping

    def stop(self, reason: str) -> None:
        """Budget spent, Ctrl-C, or a fatal error: cancel what is in flight (it is not written)."""
        if self.stopping:
            return
        log.info("stopping run %s: %s", self.summary.run_id, reason)
        self.stopping = True
        self.summary.stopped = reason
        self.summary.cancelled = len(self.tasks)
        for t in list(self.tasks):
            t.cancel()
        if self.main is not None:
            self.main.cancel()

    # ----------------------------------------------------------------- writing

    def _keep(self, m: Measurement) -> None:
        self.buffer.append(m)
        if self.stop_check is not None and not self.stopping and (reason := self.stop_check(m)):
            # A budget (e.g. bytes per day) is met: this record is kept; stop once its task ends.
            asyncio.get_running_loop().call_soon(self.stop, reason)
        if len(self.buffer) >= self.batch_size:
            self._flush_soon()

    def _flush_soon(self) -> None:
        task = asyncio.create_task(self.flush())
        self.flush_tasks.add(task)
        task.add_done_callback(self.flush_tasks.discard)

    async def flush(self) -> None:
        """Hand what is buffered to the writer thread and wait for it to be on disk.

        One thread owns the writer (a single-worker executor): batches are written one after
        the other in the order they were handed over. A caller that is cancelled while
        waiting (the flush timer at the end of a run) does not take its batch back and does
        not let a second thread write beside the first: the batch stays queued, and the final
        flush, queued behind it, waits for it.
        """
        batch, self.buffer = self.buffer, []
        if not batch:
            return
        if self.store_error is not None:
            self.buffer[:0] = batch
            return
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.write_thread, self._write, batch)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(self._after_write)
            raise
        self._after_write(fut)

    def _after_write(self, fut: asyncio.Future[None]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None and self.store_error is None:
            self.store_error = exc if isinstance(exc, StoreError) else StoreError(f"cannot write records: {exc}")
            self.stop("store error")

    def _write(self, batch: list[Measurement]) -> None:
        if self.store_error is not None:
            raise self.store_error  # an earlier batch failed: keep the order, write nothing after it
        for m in batch:
            self.writer.add(m)
        self.writer.flush()

    async def flush_timer(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            if self.buffer:
                await self.flush()

    async def final_flush(self) -> None:
        """Write what is left, after every batch already handed to the writer thread."""
        await self.flush()
        # Whatever was queued before (also by a cancelled flush) is done once this returns.
        await asyncio.get_running_loop().run_in_executor(self.write_thread, lambda: None)
        self.write_thread.shutdown(wait=True)


class _NoPandas:
    """A meta path finder that refuses pandas (see _arrow_without_pandas)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not used by a probe run")
        return None


def _arrow_without_pandas() -> None:
    """The first time pyarrow builds an array from a list it imports pandas, when installed
    (the spark extra), only to ask whether the list is a pandas object: about 55 MB of a
    probe's RSS (a third of issue 19's 150 MB budget) and half a second of CPU, in a process
    that never uses pandas. Let that one question find no pandas; pyarrow's explicit pandas
    conversions (``to_pandas``) still import it when something asks for them."""
    if "pandas" in sys.modules:
        return
    import pyarrow as pa

    finder = _NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(finder)


class _Progress:
    """A rich progress bar with ok / failed counts, or nothing when not on a terminal."""

    def __init__(self, enabled: bool, total: int | None, label: str) -> None:
        self._bar: Any = None
        self.ok = 0
        self.failed = 0
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        if not console.is_terminal:
            return
        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]ok {task.fields[ok]}[/] [red]failed {task.fields[failed]}[/]"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._task = self._bar.add_task(label, total=total, ok=0, failed=0)

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, *, ok: bool = False, skipped: bool = False) -> None:
        if not skipped:
            if ok:
                self.ok += 1
            else:
                self.failed += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, ok=self.ok, failed=self.failed)


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[str], None]) -> Any:
    """SIGINT / SIGTERM stop the run cleanly (flushing) instead of killing it mid-write."""
    loop = asyncio.get_running_loop()
    installed: list[tuple[signal.Signals, Any]] = []
    if threading.current_thread() is threading.main_thread() and sys.platform != "win32":
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, stop, STOP_INTERRUPTED)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            installed.append((sig, previous))
    try:
        yield
    finally:
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            if previous is not None:  # None: set from C; nothing we could put back
                signal.signal(sig, previous)


async def run_targets(
    targets: Iterable[Target],
    experiment_name: str,
    settings: Settings,
    vantage: Vantage,
    *,
    output: Path | str,
    run_id: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    per_host: int = DEFAULT_PER_HOST,
    max_runtime: float | None = None,
    progress: bool = True,
    control_url: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    flush_interval: float = DEFAULT_FLUSH_INTERVAL_S,
    stop_check: StopCheck | None = None,
) -> RunSummary:
    """Measure every target with one experiment and write the records under ``output``.

    ``run_id`` given: resume that run, skipping inputs it already has. Stops cleanly (flushing
    what was measured) when ``max_runtime`` seconds have passed or on SIGINT/SIGTERM; the
    summary's ``stopped`` says why. Raises StoreError when the dataset cannot be written.
    """
    if concurrency < 1 or per_host < 1:
        raise ValueError("concurrency and per_host must be at least 1")
    if vantage.role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {vantage.role!r}")
    if not re.fullmatch(r"[A-Z]{2}", vantage.probe_cc):
        raise ValueError(f"probe_cc must be two upper-case letters, got {vantage.probe_cc!r}")
    experiment = registry.get(experiment_name)
    output = Path(output)
    resuming = run_id is not None
    run_id = run_id or new_run_id()
    with run_lock(output, run_id):  # raises RunLocked when another process writes this run
        return await _run_targets(
            targets, experiment, settings, vantage, output=output, run_id=run_id, resuming=resuming,
            concurrency=concurrency, per_host=per_host, max_runtime=max_runtime, progress=progress,
            control_url=control_url, batch_size=batch_size, flush_interval=flush_interval, stop_check=stop_check,
        )


async def _run_targets(
    targets: Iterable[Target],
    experiment: Experiment,
    settings: Settings,
    vantage: Vantage,
    *,
    output: Path,
    run_id: str,
    resuming: bool,
    concurrency: int,
    per_host: int,
    max_runtime: float | None,
    progress: bool,
    control_url: str | None,
    batch_size: int,
    flush_interval: float,
    stop_check: StopCheck | None = None,
) -> RunSummary:
    started = time.monotonic()
    _arrow_without_pandas()
    writer = DatasetWriter(output, run_id, batch_size=10**9, max_age_s=float("inf"))
    done = already_measured(output, run_id, experiment.name, vantage.role) if resuming else set()
    total = len(targets) if hasattr(targets, "__len__") else None  # type: ignore[arg-type]
    summary = RunSummary(run_id=run_id, experiment=experiment.name, output=output)
    control = _control_fetcher(control_url, experiment, settings, vantage) if control_url else None

    with _Progress(progress, total, experiment.name) as bar:
        run = _Run(
            experiment,
            settings,
            vantage,
            writer,
            summary,
            concurrency=concurrency,
            per_host=per_host,
            done=done,
            progress=bar,
            flush_interval=flush_interval,
            batch_size=batch_size,
            control=control,
            stop_check=stop_check,
        )
        loop = asyncio.get_running_loop()
        budget = loop.call_later(max_runtime, run.stop, STOP_MAX_RUNTIME) if max_runtime else None
        timer = asyncio.create_task(run.flush_timer())
        run.main = asyncio.create_task(run.dispatch(targets))
        try:
            with _stop_on_signals(run.stop):
                try:
                    await run.main
                except asyncio.CancelledError:
                    if not run.stopping:
                        raise  # our caller cancelled us: still flush below, then propagate
        finally:
            if budget is not None:
                budget.cancel()
            timer.cancel()
            run.stopping = True
            for t in list(run.tasks):
                t.cancel()
            await asyncio.gather(timer, *run.tasks, return_exceptions=True)
            await asyncio.gather(*run.flush_tasks, return_exceptions=True)
            await run.final_flush()
    if run.store_error is not None:
        raise run.store_error
    if run.error is not None:
        raise run.error
    if total is not None:
        summary.not_started = max(total - summary.skipped - run.started, 0) if summary.stopped else 0
    summary.files = list(writer.files_written)
    summary.records_written = writer.records_written
    summary.wall_s = time.monotonic() - started
    return summary


async def run_phases(
    phases: Sequence[tuple[str, Sequence[Target]]],
    settings: Settings,
    vantage: Vantage,
    *,
    output: Path | str,
    run_id: str | None = None,
    max_runtime: float | None = None,
    control_url: str | None = None,
    **options: Any,
) -> RunSummary:
    """Several experiments one after the other in one run (e.g. the anchors, then the list),
    sharing one time budget; one summary with a count per experiment.

    ``control_url`` applies to the last phase only (the anchors need no control). A phase that
    stops early (budget, Ctrl-C) ends the run; the inputs of phases not started count as
    not started, and --resume runs them.
    """
    run_id = run_id or new_run_id()
    with run_lock(output, run_id):  # one lock over all phases: no other process slips in between
        return await _run_phases_locked(
            phases, settings, vantage, output=output, run_id=run_id, max_runtime=max_runtime,
            control_url=control_url, **options,
        )


async def _run_phases_locked(
    phases: Sequence[tuple[str, Sequence[Target]]],
    settings: Settings,
    vantage: Vantage,
    *,
    output: Path | str,
    run_id: str,
    max_runtime: float | None,
    control_url: str | None,
    **options: Any,
) -> RunSummary:
    deadline = time.monotonic() + max_runtime if max_runtime else None
    total = RunSummary(run_id=run_id, experiment=phases[-1][0] if phases else "", output=Path(output))
    for i, (name, targets) in enumerate(phases):
        if total.stopped:
            total.not_started = (total.not_started or 0) + len(targets)
            continue
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            total.stopped = STOP_MAX_RUNTIME
            total.not_started = (total.not_started or 0) + len(targets)
            continue
        s = await run_targets(
            targets, name, settings, vantage, output=output, run_id=run_id, max_runtime=remaining,
            control_url=control_url if i == len(phases) - 1 else None, **options,
        )
        total.counts.update(s.counts)
        total.skipped += s.skipped
        total.cancelled += s.cancelled
        total.not_started = (total.not_started or 0) + (s.not_started or 0)
        total.controls += s.controls
        total.stopped = s.stopped
        total.files += s.files
        total.records_written += s.records_written
        total.wall_s += s.wall_s
    return total


def _control_fetcher(
    control_url: str, experiment: Experiment, settings: Settings, vantage: Vantage
) -> ControlFetcher:
    """Ask the control helper to measure what the probe just measured (probe.control client)."""
    from probe import control as control_client

    async def fetch(m: Measurement, target: Target) -> list[Measurement]:
        return await control_client.fetch_control(
            control_url, m, target=target, settings=settings, ca_bundle=settings.ca_bundle
        )

    return fetch
