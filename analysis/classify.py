"""The event classifier's decisions, as pure functions over small evidence records.

``analysis.evidence.Classifier`` gathers the evidence (hourly signals, and SQL over the
measurement facts relation); the functions here decide what it was: shutdown, service_blocking,
site_outage, probe_fault, connectivity_lost (alert runs, dark runs and CUSUM changes), and an
event's scope (national or not). They touch no database, so every rule is tested on hand-made
evidence (tests/analysis/test_classify.py, tests/analysis/test_classify_changes.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Decision:
    """What an alert run or a dark run was: kind, the rule that decided it (docs/shutdowns.md),
    confidence and the sentence shown to a reader."""

    kind: str
    rule: str
    confidence: float
    reason: str


@dataclass(frozen=True)
class RunSignals:
    """What the hourly signals of one network said over an alert run."""

    dark: bool  # anchors fell (or, without anchors, every target fell): the network went dark
    target_drop: bool  # target success fell
    anchor_drop: bool  # anchor success fell
    no_anchors: bool  # the dataset measured no anchors in these hours (OONI imports, old probes)
    rate_driven: bool  # a success rate alerted (not the measurement volume alone)


@dataclass(frozen=True)
class VantageEvidence:
    """The network's vantage points in the run's hours, and the controls measured elsewhere."""

    failing: tuple[str, ...]  # vantage points whose runs mostly failed
    healthy: int  # vantage points clearly fine
    total: int  # vantage points that measured
    failing_versions: frozenset[str | None]  # software versions of the failing ones (None: unrecorded)
    versions_before: frozenset[str]  # versions that worked in this network before the run
    control_rate: float | None  # share of control measurements that reached the targets; None: none


@dataclass(frozen=True)
class TargetEvidence:
    """The targets that failed in the run, and how controls fared on those same targets."""

    inputs: tuple[str, ...]
    control_rate: float | None


@dataclass(frozen=True)
class Thresholds:
    """Ratios of a rate to its baseline (DetectorConfig.warning / critical)."""

    warning: float
    critical: float


UNCLASSIFIED = Decision("unclassified", "unclassified.signals", 0.5, "")


def decide_signals_only(s: RunSignals) -> Decision:
    """An alert run judged from aggregated counts alone (no vantage points, no controls)."""
    if s.dark and s.target_drop:
        if s.no_anchors:
            return Decision("shutdown", "shutdown.signals_no_anchors", 0.4, "every target dropped (no anchors measured)")
        return Decision("shutdown", "shutdown.signals", 0.6, "anchors and targets dropped together")
    if s.target_drop:
        return Decision("service_blocking", "service_blocking.signals", 0.4, "targets dropped, anchors did not")
    return UNCLASSIFIED


def _probe_fault(v: VantageEvidence) -> Decision | None:
    if v.failing and v.healthy and len(v.failing) == 1 and len(v.failing) + v.healthy == v.total:
        # one vantage point failing while every other one of the network is fine: that probe
        return Decision("probe_fault", "probe_fault.one_vantage_point", 0.8,
                        f"one vantage point alone ({v.failing[0]}); {v.healthy} other(s) in the network fine")
    if v.failing and v.failing_versions and not (v.failing_versions & v.versions_before) and v.versions_before:
        # the failures came with a software version this network had not run before
        return Decision("probe_fault", "probe_fault.new_version", 0.7,
                        f"failures tied to software version {', '.join(sorted(map(str, v.failing_versions)))}, "
                        f"new in this network (before: {', '.join(sorted(v.versions_before))})")
    return None


def evidence_needed(s: RunSignals, v: VantageEvidence) -> Literal["targets", "silent"] | None:
    """Which further evidence :func:`decide_run` needs for this run: the failing targets and
    their controls ("targets"), the vantage points that stopped reporting ("silent"), or none."""
    if _probe_fault(v) is not None or (s.dark and s.target_drop and not v.healthy):
        return None
    if s.target_drop and not s.anchor_drop:
        return "targets"
    if not s.rate_driven:
        return "silent"
    return None


def decide_run(s: RunSignals, v: VantageEvidence, t: Thresholds, *, targets: TargetEvidence | None = None,
               silent: tuple[str, ...] | None = None) -> Decision:
    """An alert run of one network, with its vantage points and controls (and, when
    :func:`evidence_needed` asked for them, the failing targets or the silent vantage points)."""
    fault = _probe_fault(v)
    if fault is not None:
        return fault
    ctrl = v.control_rate
    if s.dark and s.target_drop and not v.healthy:
        # controls elsewhere reaching the targets (or none to ask) say the targets were up: the
        # network was cut; controls failing too say the targets themselves were down
        if ctrl is None or ctrl >= t.warning:
            confidence = 0.9 if ctrl is not None and len(v.failing) > 1 else 0.7 if ctrl is not None else 0.5
            what = "targets failed (no anchors measured)" if s.no_anchors else "anchors and targets failed together"
            reason = (f"{what} on {len(v.failing)} vantage point(s); controls "
                      + ("reached the targets" if ctrl is not None else "absent"))
            if s.no_anchors:
                confidence = round(confidence - 0.2, 2)
            rule = "shutdown.no_anchors" if s.no_anchors else "shutdown.anchors_and_targets"
            return Decision("shutdown", rule, confidence, reason)
        return Decision("site_outage", "site_outage.controls_failed", 0.6,
                        f"anchors and targets failed, but controls failed too (ok rate {ctrl:.0%})")
    if s.target_drop and not s.anchor_drop:
        if targets is None:
            raise ValueError("decide_run needs the failing targets (evidence_needed said 'targets')")
        if targets.control_rate is not None and targets.control_rate < t.critical:
            return Decision("site_outage", "site_outage.controls_failed", 0.7, "targets failed at controls too")
        return Decision("service_blocking", "service_blocking.targets_not_anchors", 0.6,
                        f"{len(targets.inputs)} target(s) failed while anchors answered")
    if not s.rate_driven:
        if silent is None:
            raise ValueError("decide_run needs the silent vantage points (evidence_needed said 'silent')")
        if len(silent) == 1 and v.total:
            return Decision("probe_fault", "probe_fault.silent", 0.5,
                            f"vantage point stopped reporting ({silent[0]}); others fine")
        return Decision("unclassified", "unclassified.signals", 0.5,
                        "measurement volume dropped; anchors and targets fine where measured")
    return Decision("unclassified", "unclassified.signals", 0.5, "signals dropped without a clear pattern")


@dataclass(frozen=True)
class DarkEvidence:
    """A run of dark hours of one network: what failed there, and what answered elsewhere."""

    vantage_points: int
    anchors_failed: int
    anchors_total: int
    inputs_failed: int
    inputs_total: int
    top_failure: str | None
    control_rate: float | None  # controls (any network) on the same hours; None: none measured
    anchors_elsewhere: int  # anchor measurements of other networks (or controls) in those hours
    anchors_elsewhere_ok: int


def _frac(failed: int, total: int) -> str:
    return f"{failed}/{total}"


def controls_fine(control_rate: float | None, t: Thresholds) -> bool:
    """Controls elsewhere are "fine" on the same test as a shutdown's: they reached at least the
    warning share of the targets (a few sites are always down somewhere)."""
    return control_rate is not None and control_rate >= t.warning


def decide_dark(e: DarkEvidence, t: Thresholds) -> Decision:
    """Connectivity lost: every run of dark hours is one; the confidence says how sure it is
    the network (not the targets) was gone: controls elsewhere fine, absent, or failing too."""
    where = "this vantage point" if e.vantage_points <= 1 else f"{e.vantage_points} vantage points of this network"
    failed = (f"{_frac(e.anchors_failed, e.anchors_total)} anchors and "
              f"{_frac(e.inputs_failed, e.inputs_total)} inputs failed" + (f" ({e.top_failure})" if e.top_failure else ""))
    ctrl = e.control_rate
    if controls_fine(ctrl, t):
        confidence = 0.8
        tail = (f"while controls elsewhere reached {ctrl:.0%} of the targets"
                + (f" and anchors elsewhere answered {e.anchors_elsewhere_ok / e.anchors_elsewhere:.0%}"
                   if e.anchors_elsewhere else ""))
    elif ctrl is None:
        confidence = 0.6
        tail = "no controls measured in these hours to compare with"
    else:
        confidence = 0.4
        tail = f"but controls failed too (ok rate {ctrl:.0%}): the loss may be wider or the targets down"
    return Decision("connectivity_lost", "connectivity.lost", confidence,
                    f"connectivity lost at {where}: {failed}, {tail}: shutdown or local fault")


def decide_dark_signals_only(anchors_failed: int, anchors_total: int, targets_failed: int,
                             targets_total: int) -> Decision:
    """Connectivity lost seen in hourly counts alone: no controls to compare with."""
    return Decision("connectivity_lost", "connectivity.lost", 0.5,
                    f"connectivity lost at this vantage point: {_frac(anchors_failed, anchors_total)} anchors and "
                    f"{_frac(targets_failed, targets_total)} target measurements failed; no controls to compare: "
                    "shutdown or local fault")


@dataclass(frozen=True)
class ChangeEvidence:
    """A change the CUSUM found in one (country, network, input) series, and what the
    measurements of its hours say: which layer failed, how controls and vantage points fared."""

    failed: int  # failed (or verdict-blocked) measurements in the change's hours
    measurements: int
    baseline_rate: float  # the failed rate before the change
    methods: tuple[tuple[str, int], ...] = ()  # failure methods and counts, most common first
    control_rate: float | None = None  # controls (any network) on the same input; None: none
    vantage_points: int = 0  # vantage points that measured the input in the change's hours
    failing: tuple[str, ...] = ()  # those that mostly failed


def change_severity(failed: int, measurements: int) -> str:
    """Critical when at least half the change's measurements failed, else warning."""
    rate = failed / measurements if measurements else 0.0
    return "critical" if rate >= 0.5 else "warning"


def decide_change_signals_only() -> Decision:
    """A CUSUM change seen in hourly counts alone: a rise of the failed rate, nothing more."""
    return Decision("service_blocking", "service_blocking.change", 0.6, "failed rate rose (CUSUM)")


def decide_change(e: ChangeEvidence, t: Thresholds) -> Decision:
    """A CUSUM change with its evidence: a site outage when controls elsewhere failed on the
    same input; a probe fault when one vantage point alone failed while others measured it;
    otherwise service blocking, surer the more one method dominates (a censor blocks one way)."""
    rate = e.failed / e.measurements if e.measurements else 0.0
    ctrl = e.control_rate
    if ctrl is not None and ctrl < t.critical:
        return Decision("site_outage", "site_outage.change_controls_failed", 0.8, f"controls failed too (ok rate {ctrl:.0%})")
    if len(e.failing) == 1 and e.vantage_points > 1:
        return Decision("probe_fault", "probe_fault.change_one_vantage_point", 0.6, f"only {e.failing[0]} failed")
    top = e.methods[:1]
    share = top[0][1] / sum(n for _, n in e.methods) if top else 0.0
    confidence = round(min(0.95, 0.5 + 0.4 * share + (0.05 if ctrl is not None else 0)), 2)
    reason = (f"failed rate {e.baseline_rate:.0%} -> {rate:.0%}; " + (f"{share:.0%} by {top[0][0]}" if top else "no method")
              + "; controls " + (f"ok {ctrl:.0%}" if ctrl is not None else "absent"))
    return Decision("service_blocking", "service_blocking.change", confidence, reason)


def scope_of(kind: str, regions: int, networks: int, vantage_points: int, country_networks: int | None) -> str:
    """An event's scope: international (several countries), vantage_point (a probe's fault, or
    one probe cut off), network, national (every network of the country that measured), or
    networks (several, not all)."""
    if regions > 1:
        return "international"
    if kind == "probe_fault" or (kind == "connectivity_lost" and vantage_points <= 1):
        return "vantage_point"
    if networks <= 1:
        return "network"
    if country_networks is not None and networks >= country_networks:
        return "national"
    return "networks"


def scoped_reason(kind: str, scope: str, reason: str, networks: int, country_networks: int | None,
                  country: str | None) -> str:
    """A multi-network shutdown's reason says how many of the country's networks it hit."""
    if kind == "shutdown" and networks > 1 and country_networks and not reason.startswith(("national", "regional")):
        what = "national" if scope == "national" else "regional"
        return f"{what}: {networks} of {country_networks} networks of {country}; {reason}"
    return reason
