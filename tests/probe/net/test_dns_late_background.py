"""Late DNS replies collected in the background (issue 19): the lookup returns on the first
answer, the next step goes on, and the record still holds every late or duplicate reply of the
window (the GFW's pattern: a forged answer first, the real one after it), exactly as when the
lookup itself listened through the window. Cut short, the collectors leave no task or socket.

Loopback only: scripted UDP resolvers from tests/probe/net/conftest.py.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import dns.message
import dns.rdatatype
import pytest

from probe.experiments.base import Experiment, Observation, Settings, Target, Timeouts, Vantage, measure
from probe.experiments.context import MeasurementContext
from probe.net import dns as netdns
from probe.net.clock import Clock
from probe.net.dns import resolve_udp
from probe.schema import DnsQuery

TIMEOUT = 2.0
FORGED, REAL = "10.10.34.35", "192.0.2.80"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _fds_after_close() -> int:
    """Open descriptors once the loop has run the closes it was handed (a transport's close
    releases its socket on the loop's next turn)."""
    await asyncio.sleep(0.05)
    return _open_fds()


def _inject_then_real(lab: SimpleNamespace, real_after: float = 0.15):  # type: ignore[no-untyped-def]
    """An on-path injector's forged answer at once, the resolver's real one ``real_after`` later."""

    def script(q: dns.message.Message, _: bytes) -> list[tuple[float, bytes]]:
        return [(0, lab.answer(q, ("site.test.", "A", FORGED))), (real_after, lab.answer(q, ("site.test.", "A", REAL)))]

    return script


def _shape(q: DnsQuery) -> tuple[Any, ...]:
    """What the analyzer reads of a query (everything but the times)."""
    return (q.failure, q.rcode, [(a.answer_type, a.value, a.ttl) for a in q.answers],
            [(lr.rcode, [(a.answer_type, a.value, a.ttl) for a in lr.answers]) for lr in q.late_responses])


def test_background_returns_on_first_answer_and_records_the_same_late_reply(lab: SimpleNamespace) -> None:
    async def main() -> None:
        async with lab.udp_dns(_inject_then_real(lab)) as resolver:
            inline = await resolve_udp("site.test", resolver, clock=Clock(), timeout=TIMEOUT, late_window=0.6)
            tasks: set[asyncio.Task[None]] = set()
            with lab.Timer() as timer:
                q = await resolve_udp("site.test", resolver, clock=Clock(), timeout=TIMEOUT, late_window=0.6,
                                      late_tasks=tasks)
            returned_after = timer.elapsed
            assert q.late_responses == [] and len(tasks) == 1  # the real answer has not come yet
            await asyncio.gather(*tasks)
        assert tasks == set()  # a finished collector removes itself
        # Returned on the forged answer (well before the 0.15 s real one or the 0.6 s window);
        # the inline lookup waited through the window.
        assert returned_after < 0.15
        assert _shape(q) == _shape(inline)
        assert [a.value for a in q.answers] == [FORGED]
        assert [a.value for lr in q.late_responses for a in lr.answers] == [REAL]
        assert q.late_responses[0].t > q.t  # t stays the time of the first answer

    asyncio.run(main())


def test_duplicate_identical_answers_are_all_kept(lab: SimpleNamespace) -> None:
    # Some injectors answer several times with the same forged address: each copy is evidence.
    def script(q: dns.message.Message, _: bytes) -> list[tuple[float, bytes]]:
        return [(0.05 * i, lab.answer(q, ("site.test.", "A", FORGED))) for i in range(3)]

    async def main() -> None:
        tasks: set[asyncio.Task[None]] = set()
        async with lab.udp_dns(script) as resolver:
            q = await resolve_udp("site.test", resolver, clock=Clock(), timeout=TIMEOUT, late_window=0.5,
                                  late_tasks=tasks)
            await asyncio.gather(*tasks)
        assert len(q.late_responses) == 2
        assert all([a.value for a in lr.answers] == [FORGED] for lr in q.late_responses)

    asyncio.run(main())


def test_a_reply_after_the_window_is_not_late_but_ignored(lab: SimpleNamespace) -> None:
    # The trap: a reply after the window is not recorded (the window bounds what counts).
    async def main() -> None:
        tasks: set[asyncio.Task[None]] = set()
        async with lab.udp_dns(_inject_then_real(lab, real_after=0.5)) as resolver:
            q = await resolve_udp("site.test", resolver, clock=Clock(), timeout=TIMEOUT, late_window=0.1,
                                  late_tasks=tasks)
            await asyncio.gather(*tasks)
            await asyncio.sleep(0.5)  # the real reply arrives at a closed socket
        assert q.late_responses == [] and [a.value for a in q.answers] == [FORGED]

    asyncio.run(main())


def test_no_answer_starts_no_collector(lab: SimpleNamespace) -> None:
    async def main() -> None:
        tasks: set[asyncio.Task[None]] = set()
        before = _open_fds()
        async with lab.udp_dns(lambda q, _: []) as resolver:
            q = await resolve_udp("x.test", resolver, clock=Clock(), timeout=0.3, late_tasks=tasks)
        assert q.failure == "generic_timeout" and tasks == set()
        assert await _fds_after_close() == before

    asyncio.run(main())


# --------------------------------------------------------------------------- through measure()


class _LookupThenStep(Experiment):
    """One UDP lookup, then a "next step" whose start time is noted, then ``then`` seconds more."""

    name: ClassVar[str] = "late_probe_test"

    def __init__(self, resolver: str, then: float = 0.0) -> None:
        self.resolver, self.then = resolver, then
        self.next_step_at: float | None = None

    async def run(self, target: Target, net: MeasurementContext) -> list[Observation]:
        q = await net.dns_udp("site.test", self.resolver)
        self.next_step_at = net.now()
        await asyncio.sleep(self.then)
        return [q]


def _settings(**kw: Any) -> Settings:
    return Settings(use_system_resolver=False, timeouts=Timeouts(dns=TIMEOUT), **kw)


def test_measure_goes_on_at_the_first_answer_and_writes_the_late_reply(
    lab: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netdns, "DEFAULT_LATE_WINDOW", 0.6)

    async def main() -> None:
        async with lab.udp_dns(_inject_then_real(lab)) as resolver:
            inline = await resolve_udp("site.test", resolver, clock=Clock(), timeout=TIMEOUT, late_window=0.6)
            exp = _LookupThenStep(resolver)
            m = await measure(exp, Target("http://site.test/"), _settings(), Vantage(), "run-1")
        assert m.failure is None and len(m.dns) == 1
        q = m.dns[0]
        assert _shape(q) == _shape(inline)  # the same record as the lookup that waited
        assert [a.value for lr in q.late_responses for a in lr.answers] == [REAL]
        assert exp.next_step_at is not None and exp.next_step_at < q.late_responses[0].t
        assert m.runtime_s is not None and m.runtime_s >= q.late_responses[0].t  # finished after the window
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_measurement_timeout_stops_collectors_and_closes_their_sockets(
    lab: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netdns, "DEFAULT_LATE_WINDOW", 30.0)  # a collector that would outlive the test

    async def main() -> None:
        async with lab.udp_dns(_inject_then_real(lab)) as resolver:
            before = _open_fds()
            exp = _LookupThenStep(resolver, then=30.0)
            with lab.Timer() as timer:
                m = await measure(exp, Target("http://site.test/"), _settings(measurement_timeout=0.4), Vantage(), "r")
            assert await _fds_after_close() == before
        assert m.failure == "generic_timeout" and m.dns == []
        assert timer.elapsed < 5.0  # not the 30 s window
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_a_stopped_run_cancels_collectors_while_settling(lab: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C or the run budget cancels the measurement while it waits for the window."""
    monkeypatch.setattr(netdns, "DEFAULT_LATE_WINDOW", 30.0)

    async def main() -> None:
        async with lab.udp_dns(_inject_then_real(lab)) as resolver:
            before = _open_fds()
            exp = _LookupThenStep(resolver)
            task = asyncio.create_task(measure(exp, Target("http://site.test/"), _settings(), Vantage(), "r"))
            while exp.next_step_at is None:  # the lookup answered; measure() now settles
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await _fds_after_close() == before
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_a_cancelled_lookup_before_its_answer_leaves_nothing(lab: SimpleNamespace) -> None:
    async def main() -> None:
        tasks: set[asyncio.Task[None]] = set()
        async with lab.udp_dns(lambda q, _: []) as resolver:
            before = _open_fds()
            lookup = asyncio.create_task(resolve_udp("x.test", resolver, clock=Clock(), timeout=30.0, late_tasks=tasks))
            await asyncio.sleep(0.1)
            lookup.cancel()
            with pytest.raises(asyncio.CancelledError):
                await lookup
            assert await _fds_after_close() == before and tasks == set()

    asyncio.run(main())


def test_context_abandon_is_idempotent_and_settle_without_collectors_returns() -> None:
    async def main() -> None:
        net = MeasurementContext(Settings())
        await net.settle_late()
        await net.abandon_late()
        await net.abandon_late()
        assert net.late_collectors == set()

    asyncio.run(main())


# --------------------------------------------------------------------------- through the runner


def test_runner_hands_the_slot_on_at_the_first_answer_and_writes_every_late_reply(
    lab: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One slot, three names, a 1.5 s window: the next measurement starts while the previous
    one's collector still listens (before issue 19 each held the slot through its window, so
    starts were >= 1.5 s apart), and every written record holds its injected-then-real pair."""
    import duckdb

    from probe.runner import run_targets

    window = 1.5
    monkeypatch.setattr(netdns, "DEFAULT_LATE_WINDOW", window)

    def script(q: dns.message.Message, _: bytes) -> list[tuple[float, bytes]]:
        name = q.question[0].name.to_text()
        if q.question[0].rdtype != dns.rdatatype.A:
            return [(0, lab.answer(q))]  # AAAA: NOERROR, no answer, no injection
        return [(0, lab.answer(q, (name, "A", FORGED))), (0.1, lab.answer(q, (name, "A", REAL)))]

    async def main() -> None:
        async with lab.udp_dns(script) as resolver:
            settings = Settings(resolvers=[resolver], use_system_resolver=False, timeouts=Timeouts(dns=TIMEOUT),
                                extra={"dns_tcp": False})
            targets = [Target(f"http://n{i}.test/") for i in range(3)]
            await run_targets(targets, "dns_consistency", settings, Vantage(), output=tmp_path, concurrency=1,
                              progress=False)
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())
    con = duckdb.connect()
    got = con.sql(
        f"SELECT input, epoch(measurement_start_time), "
        f"list_transform(list_filter(dns, lambda q: q.query_type = 'A'), lambda q: [a.value for a in q.answers]), "
        f"list_transform(list_filter(dns, lambda q: q.query_type = 'A'), "
        f"  lambda q: flatten(list_transform(q.late_responses, lambda lr: [a.value for a in lr.answers]))) "
        f"FROM read_parquet('{tmp_path}/measurements/**/*.parquet', hive_partitioning=true) ORDER BY 2"
    ).fetchall()
    con.close()
    assert [r[0] for r in got] == [f"http://n{i}.test/" for i in range(3)]
    assert all(r[2] == [[FORGED]] and r[3] == [[REAL]] for r in got), got
    starts = [r[1] for r in got]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert max(gaps) < window * 0.66, gaps  # the slot did not wait for the window
