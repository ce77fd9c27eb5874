"""The event classifier's decisions on hand-made evidence: no database, no datasets.

Each blocking-like kind (shutdown, service_blocking, connectivity_lost with fine controls) has a
trap beside it: evidence that looks alike and must be called something else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.classify import (
    DarkEvidence,
    RunSignals,
    TargetEvidence,
    Thresholds,
    VantageEvidence,
    decide_dark,
    decide_dark_signals_only,
    decide_run,
    decide_signals_only,
    evidence_needed,
    scope_of,
    scoped_reason,
)

T = Thresholds(warning=0.7, critical=0.4)
DARK = RunSignals(dark=True, target_drop=True, anchor_drop=True, no_anchors=False, rate_driven=True)
TARGETS_ONLY = RunSignals(dark=False, target_drop=True, anchor_drop=False, no_anchors=False, rate_driven=True)
VOLUME_ONLY = RunSignals(dark=False, target_drop=False, anchor_drop=False, no_anchors=False, rate_driven=False)


def vantages(failing: tuple[str, ...] = ("vp1", "vp2"), healthy: int = 0, total: int | None = None,
             versions: frozenset[str | None] = frozenset({"1.0"}), before: frozenset[str] = frozenset({"1.0"}),
             ctrl: float | None = 0.95) -> VantageEvidence:
    return VantageEvidence(failing=failing, healthy=healthy, total=len(failing) + healthy if total is None else total,
                           failing_versions=versions, versions_before=before, control_rate=ctrl)


def test_the_classifier_module_needs_no_database() -> None:
    import analysis.classify as c

    source = Path(c.__file__).read_text(encoding="utf-8")
    assert "duckdb" not in source and "pyarrow" not in source


def test_shutdown_when_every_vantage_point_fails_and_controls_reach_the_targets() -> None:
    d = decide_run(DARK, vantages(), T)
    assert (d.kind, d.rule, d.confidence) == ("shutdown", "shutdown.anchors_and_targets", 0.9)
    assert "2 vantage point(s)" in d.reason


def test_trap_targets_down_everywhere_is_a_site_outage_not_a_shutdown() -> None:
    # controls elsewhere failed on the same targets: the targets were down, not the network cut
    d = decide_run(DARK, vantages(ctrl=0.2), T)
    assert (d.kind, d.rule) == ("site_outage", "site_outage.controls_failed")


def test_shutdown_without_controls_or_anchors_is_less_sure() -> None:
    no_anchors = RunSignals(dark=True, target_drop=True, anchor_drop=False, no_anchors=True, rate_driven=True)
    assert decide_run(DARK, vantages(ctrl=None), T).confidence == 0.5
    d = decide_run(no_anchors, vantages(failing=("vp1",)), T)
    assert (d.rule, d.confidence) == ("shutdown.no_anchors", 0.5)  # 0.7 with controls, less 0.2


def test_one_failing_vantage_point_beside_healthy_ones_is_a_probe_fault() -> None:
    d = decide_run(DARK, vantages(failing=("vp1",), healthy=2), T)
    assert (d.kind, d.rule) == ("probe_fault", "probe_fault.one_vantage_point") and "vp1" in d.reason


def test_trap_one_failing_among_half_failing_ones_is_not_a_probe_fault() -> None:
    # a third vantage point neither failing nor healthy (partial shutdown): not one probe's fault
    d = decide_run(DARK, vantages(failing=("vp1",), healthy=1, total=3), T)
    assert d.kind != "probe_fault"


def test_failures_that_came_with_a_new_software_version_are_a_probe_fault() -> None:
    d = decide_run(DARK, vantages(versions=frozenset({"2.0", None})), T)
    assert (d.kind, d.rule) == ("probe_fault", "probe_fault.new_version") and "2.0" in d.reason
    # trap: the failing version ran here before: the version explains nothing
    assert decide_run(DARK, vantages(versions=frozenset({"1.0", "2.0"})), T).kind == "shutdown"


def test_service_blocking_needs_the_failing_targets_and_their_controls() -> None:
    v = vantages(healthy=1)
    assert evidence_needed(TARGETS_ONLY, v) == "targets"
    with pytest.raises(ValueError):
        decide_run(TARGETS_ONLY, v, T)
    d = decide_run(TARGETS_ONLY, v, T, targets=TargetEvidence(("a.example", "b.example"), 0.9))
    assert (d.kind, d.rule) == ("service_blocking", "service_blocking.targets_not_anchors")
    assert d.reason.startswith("2 target(s)")


def test_trap_targets_failing_at_controls_too_are_a_site_outage() -> None:
    d = decide_run(TARGETS_ONLY, vantages(healthy=1), T, targets=TargetEvidence(("a.example",), 0.1))
    assert (d.kind, d.rule) == ("site_outage", "site_outage.controls_failed")


def test_a_silent_vantage_point_is_a_probe_fault_and_a_volume_dip_is_not() -> None:
    v = vantages(failing=(), healthy=2)
    assert evidence_needed(VOLUME_ONLY, v) == "silent"
    assert decide_run(VOLUME_ONLY, v, T, silent=("vp3",)).rule == "probe_fault.silent"
    d = decide_run(VOLUME_ONLY, v, T, silent=())
    assert d.kind == "unclassified" and "volume dropped" in d.reason


def test_signals_only() -> None:
    assert decide_signals_only(DARK).rule == "shutdown.signals"
    no_anchors = RunSignals(dark=True, target_drop=True, anchor_drop=False, no_anchors=True, rate_driven=True)
    assert decide_signals_only(no_anchors).rule == "shutdown.signals_no_anchors"
    assert decide_signals_only(TARGETS_ONLY).kind == "service_blocking"
    assert decide_signals_only(VOLUME_ONLY).kind == "unclassified"


def dark(ctrl: float | None, elsewhere: int = 10, elsewhere_ok: int = 10) -> DarkEvidence:
    return DarkEvidence(vantage_points=1, anchors_failed=4, anchors_total=4, inputs_failed=9, inputs_total=10,
                        top_failure="tcp.generic_timeout_error", control_rate=ctrl,
                        anchors_elsewhere=elsewhere, anchors_elsewhere_ok=elsewhere_ok)


def test_connectivity_lost_is_surest_when_controls_elsewhere_were_fine() -> None:
    d = decide_dark(dark(0.95), T)
    assert (d.kind, d.rule, d.confidence) == ("connectivity_lost", "connectivity.lost", 0.8)
    assert "4/4 anchors and 9/10 inputs failed (tcp.generic_timeout_error)" in d.reason
    assert "anchors elsewhere answered 100%" in d.reason
    assert decide_dark(dark(None), T).confidence == 0.6


def test_trap_controls_failing_too_lower_the_connectivity_loss() -> None:
    # everything failed everywhere: the loss may be wider, or the targets themselves down
    d = decide_dark(dark(0.3), T)
    assert d.confidence == 0.4 and "controls failed too" in d.reason


def test_connectivity_lost_from_counts_alone() -> None:
    d = decide_dark_signals_only(3, 3, 10, 10)
    assert d.confidence == 0.5 and "3/3 anchors" in d.reason and "10/10 target" in d.reason


def test_scope() -> None:
    assert scope_of("shutdown", 2, 3, 3, 3) == "international"
    assert scope_of("probe_fault", 1, 1, 1, 5) == "vantage_point"
    assert scope_of("connectivity_lost", 1, 1, 1, 5) == "vantage_point"
    assert scope_of("connectivity_lost", 1, 1, 2, 5) == "network"
    assert scope_of("shutdown", 1, 3, 3, 3) == "national"
    # trap: three of five networks dark is regional, not national
    assert scope_of("shutdown", 1, 3, 3, 5) == "networks"
    assert scoped_reason("shutdown", "national", "x", 3, 3, "IR") == "national: 3 of 3 networks of IR; x"
    assert scoped_reason("shutdown", "networks", "x", 3, 5, "IR") == "regional: 3 of 5 networks of IR; x"
    assert scoped_reason("service_blocking", "networks", "x", 3, 5, "IR") == "x"
