"""Changes and merging on plain values, no database: the CUSUM over hand-made hourly counts,
``classify.decide_change`` over hand-made evidence, and ``events.merge_events`` over hand-made
events. Each finding has a trap beside it (a short dip, a gap in the data, too little history,
controls failing too, a block that outlives a shutdown).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from analysis.classify import ChangeEvidence, Thresholds, change_severity, decide_change
from analysis.detector import DetectorConfig, cusum_changes
from analysis.events import Event, merge_events

T = Thresholds(warning=0.8, critical=0.5)
H0 = np.datetime64("2026-11-01T00:00")
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
CFG = DetectorConfig()


def _series(rows: list[tuple[int, int, int]], name: str = "https://a.example/") -> pa.Table:
    """(hour, n, failed) of one input in one network."""
    return pa.table({"cc": ["IR"] * len(rows), "asn": ["AS1"] * len(rows), "input": [name] * len(rows),
                     "hour": pa.array([(H0 + np.timedelta64(h, "h")).astype("datetime64[us]") for h, _, _ in rows]),
                     "n": [n for _, n, _ in rows], "failed": [f for _, _, f in rows]})


def _hourly(hours: range, n: int, failed: int) -> list[tuple[int, int, int]]:
    return [(h, n, failed) for h in hours]


def test_a_block_is_a_change_and_a_short_dip_is_not() -> None:
    # Two days fine at 2 measurements an hour, then every one failing for a day: a change dated
    # at its first hour. The trap: one hour of two failures (a congested hour) is a log-likelihood
    # ratio of about 4.8, under the threshold of 7: no change.
    block = cusum_changes(_series(_hourly(range(48), 2, 0) + _hourly(range(48, 72), 2, 2) + _hourly(range(72, 96), 2, 0)),
                          H0, 96, CFG)
    assert [(c.start_h, c.end_h, c.failed) for c in block] == [(48, 72, 48)]
    dip = _hourly(range(48), 2, 0) + [(48, 2, 2)] + _hourly(range(49, 96), 2, 0)
    assert cusum_changes(_series(dip), H0, 96, CFG) == []


def test_a_gap_in_the_data_is_no_change_and_does_not_move_a_start_into_it() -> None:
    # A probe off for five days (no rows at all) and back, fine: no change (an hour without
    # measurements is no data, not a failure).
    back = _hourly(range(48), 2, 0) + _hourly(range(48 + 120, 48 + 168), 2, 0)
    assert cusum_changes(_series(back), H0, 216, CFG) == []
    # The block starts right after a one-day gap: dated at its first measured hour, not inside
    # the gap (the statistic was zero through the gap).
    after_gap = _hourly(range(60), 2, 0) + _hourly(range(84, 110), 2, 2)
    (change,) = cusum_changes(_series(after_gap), H0, 110, CFG)
    assert change.start_h == 84 and change.end_h is None
    # ... and a gap longer than the trailing week leaves too little history: failing after it is
    # no change (nothing recent to compare with)
    stale = _hourly(range(24), 2, 0) + _hourly(range(24 + 200, 24 + 230), 2, 2)
    assert cusum_changes(_series(stale), H0, 254, CFG) == []


def test_too_little_history_is_no_change() -> None:
    # Failing from its first measurement: no baseline to change from (fewer than
    # cusum_min_history measurements in the trailing week). The same failures after 12 good
    # measurements are a change.
    assert cusum_changes(_series(_hourly(range(30), 1, 1)), H0, 30, CFG) == []
    (c,) = cusum_changes(_series(_hourly(range(12), 1, 0) + _hourly(range(12, 30), 1, 1)), H0, 30, CFG)
    assert c.start_h == 12


def test_a_change_with_one_dominant_method_is_blocking() -> None:
    e = ChangeEvidence(failed=40, measurements=48, baseline_rate=0.02, methods=(("dns.nxdomain", 38), ("tcp.timeout", 2)),
                       control_rate=0.97, vantage_points=2, failing=("vp1", "vp2"))
    d = decide_change(e, T)
    assert (d.kind, d.rule) == ("service_blocking", "service_blocking.change")
    assert d.confidence == 0.93 and "95% by dns.nxdomain" in d.reason and "controls ok 97%" in d.reason
    assert change_severity(40, 48) == "critical" and change_severity(10, 48) == "warning"


def test_trap_controls_failing_too_is_a_site_outage() -> None:
    e = ChangeEvidence(failed=40, measurements=48, baseline_rate=0.02, methods=(("tcp.timeout", 40),),
                       control_rate=0.1, vantage_points=2, failing=("vp1", "vp2"))
    assert decide_change(e, T).kind == "site_outage"


def test_trap_one_vantage_point_of_several_is_a_probe_fault() -> None:
    e = ChangeEvidence(failed=20, measurements=48, baseline_rate=0.02, methods=(("tls.reset", 20),),
                       control_rate=0.95, vantage_points=3, failing=("vp2",))
    assert decide_change(e, T).kind == "probe_fault"
    alone = ChangeEvidence(failed=20, measurements=24, baseline_rate=0.02, methods=(("tls.reset", 20),),
                           control_rate=None, vantage_points=1, failing=("vp2",))
    d = decide_change(alone, T)
    assert d.kind == "service_blocking" and d.confidence == 0.9 and "controls absent" in d.reason


def _ev(kind: str, start_h: int, end_h: int | None, asn: str = "AS1", inputs: tuple[str, ...] = (),
        methods: tuple[str, ...] = (), cc: str = "IR") -> Event:
    return Event(kind, "critical", T0 + dt.timedelta(hours=start_h),
                 None if end_h is None else T0 + dt.timedelta(hours=end_h), [cc], [asn], list(inputs), list(methods),
                 measurements=10, rule=f"{kind}.test", evidence={})


def test_an_input_change_inside_a_shutdown_is_explained_by_it_and_an_older_block_stays() -> None:
    shutdown = _ev("shutdown", 100, 130)
    inside = _ev("service_blocking", 100, 131, inputs=("https://a.example/",), methods=("tcp.timeout",))
    older = _ev("service_blocking", 20, None, inputs=("https://b.example/",), methods=("dns.nxdomain",))
    merged = merge_events([shutdown], [inside, older], CFG)
    assert [(e.kind, e.inputs) for e in merged] == [("service_blocking", ["https://b.example/"]), ("shutdown", [])]
    assert merged[1].evidence["explained_input_changes"] == 1


def test_changes_of_several_networks_with_one_method_are_one_event_and_another_method_is_not() -> None:
    a = _ev("service_blocking", 50, 80, asn="AS1", inputs=("https://a.example/",), methods=("dns.nxdomain",))
    b = _ev("service_blocking", 51, 80, asn="AS2", inputs=("https://a.example/",), methods=("dns.nxdomain",))
    c = _ev("service_blocking", 50, 80, asn="AS3", inputs=("https://a.example/",), methods=("tls.reset",))
    merged = merge_events([], [a, b, c], CFG)
    assert sorted((e.networks, e.methods[:1]) for e in merged) == [(["AS1", "AS2"], ["dns.nxdomain"]),
                                                                     (["AS3"], ["tls.reset"])]


def test_connectivity_lost_in_two_networks_is_a_shutdown_and_in_one_network_is_not() -> None:
    two = merge_events([], [], CFG, [_ev("connectivity_lost", 10, 14, asn="AS1"), _ev("connectivity_lost", 10, 14, asn="AS2")])
    assert [(e.kind, e.rule, e.networks) for e in two] == [("shutdown", "shutdown.connectivity_several_networks",
                                                            ["AS1", "AS2"])]
    one = merge_events([], [], CFG, [_ev("connectivity_lost", 10, 14, asn="AS1"), _ev("connectivity_lost", 11, 14, asn="AS1")])
    assert {e.kind for e in one} == {"connectivity_lost"}
    # and in two countries at the same hours: two events, not one
    apart = merge_events([], [], CFG, [_ev("connectivity_lost", 10, 14, asn="AS1"),
                                       _ev("connectivity_lost", 10, 14, asn="AS9", cc="TR")])
    assert sorted(e.regions[0] for e in apart) == ["IR", "TR"] and {e.kind for e in apart} == {"connectivity_lost"}
