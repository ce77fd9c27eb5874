"""Throttling against a real shaper in the netns lab: the censor shapes one host to a tenth of the
link with `tc` (htb + u32), and the real `vantage run --experiment throughput` at the probe and
the control, then `vantage analyze`, must find the tenfold slowdown, and must not call
`throttled` the traps: a short file from the shaped host, unshaped hosts (one of them measured
20 times over), a server slow by itself, and a slow link where every host is shaped equally.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import entered, require_lab
from .lab import cli_options
from .throttle_lab import CASES, REPEATS, ThrottleLab, ThrottleRun, precision_recall, render, score

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PROGRAMS = ("ip", "tc", "ss", "sysctl", "nginx")


@pytest.fixture(scope="module")
def throttle_lab(request: pytest.FixtureRequest) -> Iterator[ThrottleLab]:
    require_lab(PROGRAMS)
    yield from entered(request, ThrottleLab())


@pytest.fixture(scope="module")
def throttle_run(throttle_lab: ThrottleLab) -> ThrottleRun:
    if cli_options("run") is None or "--download-bytes" not in (cli_options("run") or set()):
        pytest.skip("`vantage run --experiment throughput` is not available in this build")
    return throttle_lab.run(step=lambda msg: print(f"[netns throttle lab] {msg}", flush=True))


def test_the_tenfold_slowdown_is_found_and_nothing_else_is_throttled(throttle_run: ThrottleRun) -> None:
    rows = score(throttle_run.verdicts)
    print()
    print(render(rows))
    print("runtime: " + ", ".join(f"{k} {v:.1f}s" for k, v in throttle_run.seconds.items()))
    precision, recall, tp, fp, fn = precision_recall(rows)
    assert fp == 0, [(r.case.name, r.method, r.factor) for r in rows if r.status == "throttled" and r.case.status != "throttled"]
    assert precision == 1.0 and recall == 1.0 and tp == 1, (tp, fp, fn)
    (shaped,) = [r for r in rows if r.case.status == "throttled"]
    # link 40 Mbit/s, the shaped host 4 Mbit/s: a factor of about 10
    assert shaped.factor is not None and 7.0 <= shaped.factor <= 13.0, shaped
    wrong = [(r.case.name, r.status, r.method, r.case.method) for r in rows
             if r.status != r.case.status or r.method != r.case.method]
    assert not wrong, wrong


def test_an_unshaped_host_is_never_throttled_across_repeated_runs(throttle_run: ThrottleRun) -> None:
    (case,) = [c for c in CASES if c.phase == "repeat"]
    rows = [r for r in score(throttle_run.verdicts) if r.case == case]
    factors = sorted(r.factor for r in rows if r.factor is not None)
    print(f"\n{len(rows)} runs of {case.name}: statuses {sorted({r.status for r in rows})}, factors {factors}")
    assert len(rows) == REPEATS
    assert all(r.status == "ok" and r.method == "ok.throughput_like_control" for r in rows), rows
    # judged, not waved through as too short: each download lasted the time cap
    assert len(factors) == REPEATS and max(factors) < 4.0


def test_the_slow_link_is_not_throttling(throttle_run: ThrottleRun) -> None:
    rows = [r for r in score(throttle_run.verdicts) if r.case.phase == "slow-link"]
    assert rows and all(r.status == "ok" and r.method == "ok.throughput_slow_link" for r in rows), rows
    # slower than at the control by about the ratio of the links (40 / 4), yet not throttled
    assert all(r.factor is not None and r.factor < 4.0 for r in rows), rows
