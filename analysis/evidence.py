"""The classifier's evidence, gathered in SQL over the measurement facts (the relation
``analysis.signals.measurement_facts`` returns) or from the hourly signals alone, and handed to
the pure decisions of ``analysis.classify``.

Classification uses what only raw measurements can tell: which vantage points failed (a
vantage point is its network name, platform and software version; runs tell vantage points
apart within an hour), whether controls elsewhere reached the same targets, and which layer
failed first (the method).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from duckdb import ColumnExpression as C
from duckdb import ConstantExpression as K
from duckdb import Expression
from duckdb import FunctionExpression as F

from analysis.classify import (
    ChangeEvidence,
    DarkEvidence,
    Decision,
    RunSignals,
    TargetEvidence,
    Thresholds,
    VantageEvidence,
    change_severity,
    controls_fine,
    decide_change,
    decide_change_signals_only,
    decide_dark,
    decide_dark_signals_only,
    decide_run,
    decide_signals_only,
    evidence_needed,
)
from analysis.detector import LEVELS, RATE_SIGNALS, AlertRun, Change, DetectorConfig, _grade, _wilson_upper
from analysis.events import HOUR, Event, _naive, _num, _utc

_FAR = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)


def _window(start: dt.datetime, end: dt.datetime | None) -> Expression:
    """start <= hour < end (None: no end), the values as bound constants."""
    return (C("hour") >= K(_naive(start))) & (C("hour") < K(_naive(end or _FAR)))


def _network(cc: str, asn: str) -> Expression:
    """Probe measurements of one network."""
    return (C("role") == K("probe")) & (C("cc") == K(cc)) & (C("asn") == K(asn))


def _apply(event: Event, decision: Decision) -> None:
    event.kind, event.rule = decision.kind, decision.rule
    event.confidence, event.reason = decision.confidence, decision.reason


# --------------------------------------------------------------------------- network anomalies


class Classifier:
    """Classifies alert runs and changes against the measurement facts (the relation
    ``signals.measurement_facts`` made) or, without them, from the signals alone.

    Every query filters the facts with expressions whose values are constants of the relation
    API (bound, never pasted into SQL text), then aggregates with SQL text that holds no value.
    """

    def __init__(self, facts: duckdb.DuckDBPyRelation | None, hourly: pa.Table, cfg: DetectorConfig,
                 verdicts: duckdb.DuckDBPyRelation | None = None) -> None:
        self.facts = facts
        self.verdicts = verdicts  # compute_verdicts rows, a relation of the facts' connection: its methods name blocks
        self.hourly = hourly
        self.cfg = cfg
        self._thresholds = Thresholds(warning=cfg.warning, critical=cfg.critical)
        self.hours = hourly.column("hour").to_numpy()
        self._levels = {c: hourly.column(c).to_numpy() for c in hourly.column_names if c.endswith("_level")}
        # columns as numpy once: classifying thousands of runs must not convert them each time
        self._np = {c: hourly.column(c).to_numpy(zero_copy_only=False)
                    for c in hourly.column_names if c not in ("cc", "asn", "hour")}
        self._hours_h = self.hours.astype("datetime64[us]")
        self._ranges: dict[tuple[str, str], tuple[int, int]] | None = None

    def network_rows(self, cc: str, asn: str) -> slice:
        """The rows of one network in ``hourly`` (sorted by cc, asn, hour): looked up, not
        scanned, so that classifying a run costs the same with 10 or 1,000 networks."""
        if self._ranges is None:
            cc_col = self.hourly.column("cc").to_pylist()
            asn_col = self.hourly.column("asn").to_pylist()
            ranges: dict[tuple[str, str], tuple[int, int]] = {}
            n = len(cc_col)
            if n:
                change = np.flatnonzero([a != b or c != d for a, b, c, d in
                                         zip(cc_col[1:], cc_col[:-1], asn_col[1:], asn_col[:-1], strict=True)]) + 1
                bounds = [0, *change.tolist(), n]
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                    ranges[(cc_col[lo], asn_col[lo])] = (lo, hi)
            self._ranges = ranges
        lo, hi = self._ranges.get((cc, asn), (0, 0))
        return slice(lo, hi)

    def hour_span(self, rows: slice, start: dt.datetime, end: dt.datetime | None) -> slice:
        """The rows of ``rows`` (one network's) with start <= hour < end."""
        hours = self._hours_h[rows]
        a = int(np.searchsorted(hours, np.datetime64(_naive(start), "us")))
        b = len(hours) if end is None else int(np.searchsorted(hours, np.datetime64(_naive(end), "us")))
        return slice(rows.start + a, rows.start + b)

    # -- helpers over the facts
    def _q(self, where: Expression, sql: str) -> list[tuple[Any, ...]]:
        """``sql`` (no values in it; ``w`` names the filtered facts) over the facts matching ``where``."""
        assert self.facts is not None
        rel = self.facts.filter(where).query("w", sql)
        assert rel is not None  # a SELECT always gives a relation
        return rel.fetchall()

    def control_rate(self, inputs: list[str] | None, start: dt.datetime, end: dt.datetime | None) -> tuple[float | None, int]:
        """Share of control measurements (same targets, any network) that reached the target."""
        where = (C("role") == K("control")) & ~C("is_anchor") & _window(start, end)
        if inputs is not None:
            where = where & F("list_contains", K(inputs), C("input"))
        n, ok = self._q(where, "SELECT count(*), count(*) FILTER (WHERE ok) FROM w")[0]
        return (ok / n if n else None), int(n)

    def vantage_breakdown(self, cc: str, asn: str, start: dt.datetime, end: dt.datetime | None,
                          inputs: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per vantage point in the window: runs, failing runs, measurements, software version."""
        where = _network(cc, asn) & _window(start, end)
        if inputs is not None:
            where = where & F("list_contains", K(inputs), C("input"))
        rows = self._q(where, """
            WITH r AS (
                SELECT vantage, run_id, any_value(software_version) AS version, count(*) AS n,
                       count(*) FILTER (WHERE ok) AS ok, count(*) FILTER (WHERE is_anchor) AS an,
                       count(*) FILTER (WHERE is_anchor AND ok) AS aok
                FROM w GROUP BY ALL)
            SELECT vantage, any_value(version), count(*) AS runs,
                   count(*) FILTER (WHERE CASE WHEN an > 0 THEN aok < an * 0.5 ELSE ok < n * 0.5 END) AS failing,
                   sum(n)::BIGINT, sum(ok)::BIGINT
            FROM r GROUP BY ALL ORDER BY ALL""")
        return {v: {"version": ver, "runs": runs, "failing_runs": failing, "measurements": n, "ok": ok}
                for v, ver, runs, failing, n, ok in rows}

    def versions_before(self, cc: str, asn: str, start: dt.datetime) -> set[str]:
        where = (_network(cc, asn) & C("ok")
                 & _window(start - dt.timedelta(days=self.cfg.baseline_days), start))
        rows = self._q(where, "SELECT DISTINCT software_version FROM w")
        return {r[0] for r in rows if r[0] is not None}

    def failing_inputs(self, cc: str, asn: str, start: dt.datetime, end: dt.datetime | None) -> list[tuple[str, float, str | None]]:
        where = _network(cc, asn) & ~C("is_anchor") & _window(start, end)
        return [(i, r, m) for i, r, m in self._q(where, """
            SELECT input, avg(CASE WHEN ok THEN 0 ELSE 1 END) AS fail, mode(method) FILTER (WHERE NOT ok)
            FROM w GROUP BY ALL HAVING fail >= 0.5 ORDER BY fail DESC, input""")]

    def methods(self, cc: str, asn: str, inputs: list[str], start: dt.datetime, end: dt.datetime | None) -> Counter[str]:
        assert self.facts is not None
        # values enter as constant expressions (the relation API's bound parameters)
        where = _network(cc, asn) & F("list_contains", K(inputs), C("input")) & _window(start, end)
        facts = self.facts
        if self.verdicts is not None:
            facts = facts.join(self.verdicts.select("measurement_id, status AS v_status, method AS v_method"),
                               "measurement_id", how="left")
            method = "coalesce(CASE WHEN v_status = 'blocked' THEN v_method END, method)"
            rows = facts.filter(where & ((C("v_status") == K("blocked")) | ~C("ok")))
        else:
            method = "method"
            rows = facts.filter(where & ~C("ok"))
        counted = rows.aggregate(f"{method} AS m, count(*) AS n", method).fetchall()
        return Counter({m: n for m, n in counted if m is not None})

    # -- classification
    def classify_run(self, run: AlertRun) -> Event | None:
        cfg = self.cfg
        sl = slice(run.start_idx, run.end_idx)
        start = _utc(self.hours[run.start_idx])
        end = _utc(self.hours[run.end_idx - 1]) + HOUR
        lv = {name: self._levels[f"{name}_level"][sl] for name in ("volume", "anchor_success", "target_success")}
        anchor_drop = bool((lv["anchor_success"] > 0).any())
        target_drop = bool((lv["target_success"] > 0).any())
        # Datasets without anchors (OONI imports, old probes): a critical fall of every target
        # must stand in for the anchors, with less confidence.
        no_anchors = bool(np.isnan(self._np["anchor_success_ratio"][sl]).all())
        # Without anchors a shutdown often leaves few measurements per hour (OONI probes in a dark
        # network measure and upload little: volume falls to a fifth), and 0 of 2 failing in an hour
        # is not significant alone (Wilson upper bound 57 %). Every target failing hour after hour
        # is: the run's measurements are pooled and judged like one hour.
        pooled = self._pooled_level("target_success", sl) if no_anchors else 0
        target_drop = target_drop or pooled >= 2
        dark = anchor_drop or (no_anchors and (bool((lv["target_success"] >= 2).any()) or pooled >= 2))
        rate_driven = any(bool((self._levels[f"{s}_level"][sl] > 0).any()) for s in cfg.alert_signals if s != "volume")
        rate_driven = rate_driven or pooled >= 2
        volume_hours = int((lv["volume"] >= LEVELS.index(cfg.volume_alone)).sum())
        if not (self._rate_evidence(sl) or pooled >= 2) and volume_hours < cfg.extra.get("volume_alone_min_hours", 3):
            # one mildly low hour of a rate, or a missed run or two: noise, not an event
            return None
        evidence: dict[str, Any] = {"span": [start.isoformat(), end.isoformat()], "signals": self._signal_evidence(sl)}
        severity = LEVELS[run.level]
        base = Event("unclassified", severity, start, end, [run.cc], [run.asn], evidence=evidence)
        if pooled:
            evidence["pooled_target_success"] = self._pooled_evidence("target_success", sl)
        vol = self._np["volume"][sl]
        base.measurements = int(vol.sum())
        base.rule = "unclassified.signals"
        signals = RunSignals(dark=dark, target_drop=target_drop, anchor_drop=anchor_drop, no_anchors=no_anchors,
                             rate_driven=rate_driven)
        if self.facts is None:  # signals only: no vantage points or controls to look at
            _apply(base, decide_signals_only(signals))
            base.vantage_points = int(self._np["vantage_points"][sl].max())
            return base

        vantages = self.vantage_breakdown(run.cc, run.asn, start, end)
        base.vantage_points = len(vantages)
        failing = {v: d for v, d in vantages.items() if d["failing_runs"] * 2 > d["runs"]}
        # healthy means clearly fine, not merely "not failing": in a partial shutdown every
        # vantage point is degraded, and one that is half-failing must not pass for a control
        healthy = {v: d for v, d in vantages.items() if v not in failing and d["failing_runs"] * 4 <= d["runs"]
                   and d["ok"] >= 0.6 * d["measurements"]}
        evidence["vantage_points"] = {v: {**d, "failing": v in failing, "healthy": v in healthy}
                                      for v, d in vantages.items()}
        failing_versions = {d["version"] for d in failing.values()}
        before = self.versions_before(run.cc, run.asn, start)
        ctrl, ctrl_n = self.control_rate(None, start, end)
        evidence["controls"] = {"ok_rate": ctrl, "measurements": ctrl_n}
        seen = VantageEvidence(failing=tuple(failing), healthy=len(healthy), total=len(vantages),
                               failing_versions=frozenset(failing_versions), versions_before=frozenset(before),
                               control_rate=ctrl)
        targets: TargetEvidence | None = None
        silent: list[str] | None = None
        needed = evidence_needed(signals, seen)
        if needed == "targets":
            bad = self.failing_inputs(run.cc, run.asn, start, end)
            base.inputs = [i for i, _, _ in bad]
            base.methods = sorted({m for _, _, m in bad if m})
            ctrl_in, _ = self.control_rate(base.inputs, start, end) if base.inputs else (None, 0)
            targets = TargetEvidence(tuple(base.inputs), ctrl_in)
        elif needed == "silent":
            silent = self._silent_vantages(run.cc, run.asn, start, vantages)
            evidence["silent_vantage_points"] = silent
        _apply(base, decide_run(signals, seen, self._thresholds, targets=targets,
                                silent=None if silent is None else tuple(silent)))
        return base

    def _pooled(self, name: str, sl: slice) -> tuple[int, int, float | None]:
        """(successes, measurements, baseline) of a rate signal over the hours of a run."""
        num, den = RATE_SIGNALS[name]
        n = int(self._np[den][sl].sum())
        k = int(self._np[num][sl].sum()) if num.endswith("_ok") else n - int(self._np[num][sl].sum())
        valid = ~np.isnan(self._np[f"{name}_ratio"][sl])  # hours whose baseline could judge them
        base = float(np.median(self._np[f"{name}_base"][sl][valid])) if valid.any() else None
        return k, n, base

    def _pooled_level(self, name: str, sl: slice) -> int:
        k, n, base = self._pooled(name, sl)
        if not n or base is None or base < self.cfg.min_rate_baseline:
            return 0
        upper = _wilson_upper(np.asarray([k], float), np.asarray([n], float), self.cfg.z)
        return int(_grade(upper / base, self.cfg)[0])

    def _pooled_evidence(self, name: str, sl: slice) -> dict[str, Any]:
        k, n, base = self._pooled(name, sl)
        return {"ok": k, "measurements": n, "baseline": _num(base), "level": LEVELS[self._pooled_level(name, sl)]}

    def _rate_evidence(self, sl: slice) -> bool:
        """A rate signal critical in some hour, or alerting in two hours or more."""
        rate = np.zeros(sl.stop - sl.start, dtype=np.int8)
        for s in self.cfg.alert_signals:
            if s != "volume":
                rate = np.maximum(rate, self._levels[f"{s}_level"][sl])
        return bool(rate.max(initial=0) >= 2 or (rate > 0).sum() >= 2)

    def _silent_vantages(self, cc: str, asn: str, start: dt.datetime, now: dict[str, Any]) -> list[str]:
        rows = self._q(_network(cc, asn) & _window(start - dt.timedelta(days=1), start), "SELECT DISTINCT vantage FROM w")
        return sorted(r[0] for r in rows if r[0] not in now)

    def _signal_evidence(self, sl: slice) -> dict[str, Any]:
        out = {}
        for name in ("volume", "anchor_success", "target_success", "dns_success", "tcp_success", "tls_success",
                     "http_success"):
            ratio = self._np[f"{name}_ratio"][sl]
            if np.isnan(ratio).all():
                continue
            i = int(np.nanargmin(ratio))
            value = self._np[name][sl][i]
            baseline = self._np[f"{name}_base"][sl][i]
            out[name] = {"worst_hour": _utc(self.hours[sl][i]).isoformat(), "value": _num(value),
                         "baseline": _num(baseline), "ratio": _num(ratio[i]),
                         "alert_hours": int((self._levels[f"{name}_level"][sl] > 0).sum())}
        return out

    # -- connectivity lost
    def classify_dark_run(self, cc: str, asn: str, start: dt.datetime, end: dt.datetime, dark_hours: int,
                          source: str) -> Event:
        """A run of dark hours of one network, judged with no history: what failed here, and
        whether controls and anchors elsewhere were up in the same hours."""
        ev = Event("connectivity_lost", "critical", start, end, [cc], [asn], rule="connectivity.lost")
        evidence: dict[str, Any] = {"span": [start.isoformat(), end.isoformat()], "dark_hours": dark_hours,
                                    "source": source}
        if self.facts is None:  # hourly counts only
            inside = self.hour_span(self.network_rows(cc, asn), start, end)
            get = {k: int(self._np[k][inside].sum()) for k in ("volume", "anchor_n", "anchor_ok", "target_n",
                                                               "target_ok")}
            ev.measurements = get["volume"]
            ev.vantage_points = int(self._np["vantage_points"][inside].max(initial=0))
            evidence.update(anchors={"failed": get["anchor_n"] - get["anchor_ok"], "total": get["anchor_n"]},
                            targets={"failed": get["target_n"] - get["target_ok"], "total": get["target_n"]})
            _apply(ev, decide_dark_signals_only(get["anchor_n"] - get["anchor_ok"], get["anchor_n"],
                                                get["target_n"] - get["target_ok"], get["target_n"]))
            ev.evidence = evidence
            return ev
        (n, vps, runs, an, afail, tn, tfail, inputs, inputs_ok, top), = self._q(_network(cc, asn) & _window(start, end), """
            SELECT count(*), count(DISTINCT vantage), count(DISTINCT run_id),
                   count(*) FILTER (WHERE is_anchor), count(*) FILTER (WHERE is_anchor AND NOT ok),
                   count(*) FILTER (WHERE NOT is_anchor), count(*) FILTER (WHERE NOT is_anchor AND NOT ok),
                   count(DISTINCT input) FILTER (WHERE NOT is_anchor),
                   count(DISTINCT input) FILTER (WHERE NOT is_anchor AND ok),
                   mode(method) FILTER (WHERE NOT ok)
            FROM w""")
        ev.measurements, ev.vantage_points = int(n), int(vps)
        ev.methods = [top] if top else []
        ctrl, ctrl_n = self.control_rate(None, start, end)
        (elsewhere_n, elsewhere_ok), = self._q(C("is_anchor") & ~_network(cc, asn) & _window(start, end),
                                              "SELECT count(*), count(*) FILTER (WHERE ok) FROM w")
        fine = controls_fine(ctrl, self._thresholds)
        evidence.update(
            measurements=int(n), vantage_points=int(vps), runs=int(runs),
            anchors={"failed": int(afail), "total": int(an)},
            targets={"failed": int(tfail), "total": int(tn)},
            inputs={"failed": int(inputs) - int(inputs_ok), "total": int(inputs)},
            controls={"ok_rate": ctrl, "measurements": ctrl_n, "fine": fine},
            anchors_elsewhere={"ok_rate": elsewhere_ok / elsewhere_n if elsewhere_n else None,
                               "measurements": int(elsewhere_n)},
            top_failure=top)
        _apply(ev, decide_dark(DarkEvidence(
            vantage_points=int(vps), anchors_failed=int(afail), anchors_total=int(an),
            inputs_failed=int(inputs) - int(inputs_ok), inputs_total=int(inputs), top_failure=top,
            control_rate=ctrl, anchors_elsewhere=int(elsewhere_n), anchors_elsewhere_ok=int(elsewhere_ok)),
            self._thresholds))
        if source == "verdicts" and self.verdicts is not None:
            lost = self.verdicts.filter(
                (C("status") == K("no_connectivity")) & (C("probe_cc") == K(cc))
                & (duckdb.CoalesceOperator(C("probe_asn"), K("AS0")) == K(asn))
                & (C("measurement_start_time") >= K(start)) & (C("measurement_start_time") < K(end)))
            evidence["no_connectivity_verdicts"] = len(lost)
        ev.evidence = evidence
        return ev

    # -- changes
    def classify_change(self, ch: Change, hour0: dt.datetime) -> Event:
        """A CUSUM change: its evidence gathered in SQL, judged by ``classify.decide_change``."""
        start = hour0 + ch.start_h * HOUR
        end = None if ch.end_h is None else hour0 + ch.end_h * HOUR
        ev = Event("service_blocking", change_severity(ch.failed, ch.n), start, end, [ch.cc], [ch.asn],
                   [ch.input], measurements=ch.n,
                   evidence={"failed": ch.failed, "measurements": ch.n, "baseline_failed_rate": round(ch.baseline_rate, 4)})
        if self.facts is None:
            _apply(ev, decide_change_signals_only())
            return ev
        methods = self.methods(ch.cc, ch.asn, [ch.input], start, end)
        ev.methods = [m for m, _ in methods.most_common(3)]
        ctrl, ctrl_n = self.control_rate([ch.input], start, end)
        vantages = self.vantage_breakdown(ch.cc, ch.asn, start, end, [ch.input])
        ev.vantage_points = len(vantages)
        ev.evidence.update(controls={"ok_rate": ctrl, "measurements": ctrl_n},
                           methods=dict(methods.most_common(5)))
        failing = tuple(v for v, d in vantages.items() if d["ok"] * 2 < d["measurements"])
        _apply(ev, decide_change(ChangeEvidence(
            failed=ch.failed, measurements=ch.n, baseline_rate=ch.baseline_rate,
            methods=tuple(methods.most_common()), control_rate=ctrl, vantage_points=len(vantages),
            failing=failing), self._thresholds))
        return ev


# --------------------------------------------------------------------------- connectivity lost

# A dark hour of a network: its anchors were measured and none answered, nearly no target was
# reached (a probe cut off from the Internet reaches nothing; a censor leaves most of a test list
# and every anchor reachable, so 95 % of targets failing together with every anchor is not
# censorship), and enough measurements failed that it is not one unlucky timeout (a single
# failed measurement in an otherwise fine hour is noise). Software faults
# (`measurement.unknown_failure:...`) are no network failure and do not count.
DARK_MIN_MEASUREMENTS = 3
DARK_MAX_TARGET_OK = 0.05
DARK_MIN_NETWORK_FAILED = 0.9  # share of the hour's measurements that failed at the network level

# Per (cc, asn, hour) of the probe's measurements, the counts the dark-hour test compares with
# the thresholds above (SQL text without a value; the thresholds are constant expressions of
# the filter, the shares exact decimals as the literals they replace).
DARK_COUNTS = ("count(*) AS n, count(*) FILTER (WHERE is_anchor) AS anchor_n, "
               "count(*) FILTER (WHERE is_anchor AND ok) AS anchor_ok, "
               "count(*) FILTER (WHERE NOT is_anchor AND ok) AS target_ok, count(*) FILTER (WHERE NOT is_anchor) AS target_n, "
               "count(*) FILTER (WHERE NOT ok AND coalesce(method, '') NOT LIKE 'measurement.unknown_failure%') AS failed")


def _dark(facts: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """(cc, asn, hour, n) of the dark hours of the facts, ordered."""
    counts = facts.filter(C("role") == K("probe")).aggregate(f"cc, asn, hour, {DARK_COUNTS}", "cc, asn, hour")
    dark = ((C("n") >= K(DARK_MIN_MEASUREMENTS)) & (C("anchor_n") > K(0)) & (C("anchor_ok") == K(0))
            & (C("target_ok") <= K(Decimal(str(DARK_MAX_TARGET_OK))) * C("target_n"))
            & (C("failed") >= K(Decimal(str(DARK_MIN_NETWORK_FAILED))) * C("n")))
    return counts.filter(dark).select("cc, asn, hour, n").order("cc, asn, hour, n")


def dark_hours_from_facts(facts: duckdb.DuckDBPyRelation) -> list[tuple[str, str, dt.datetime, int]]:
    """(cc, asn, hour, measurements) of every dark hour of the measurement facts (``--no-verdicts``)."""
    return [(cc, asn, _utc(h), int(n)) for cc, asn, h, n in _dark(facts).fetchall()]


def dark_hours_from_verdicts(verdicts: duckdb.DuckDBPyRelation) -> list[tuple[str, str, dt.datetime, int]]:
    """(cc, asn, hour, measurements) of the hours the verdict stage called ``no_connectivity``
    (rule ``connectivity.lost``): the verdicts are the one judgement every command shows."""
    if not {"status", "probe_cc", "probe_asn", "measurement_start_time"} <= set(verdicts.columns):
        return []
    # "v" names the verdicts relation for this one query
    hours = verdicts.query("v", """
        SELECT probe_cc, coalesce(probe_asn, 'AS0'), date_trunc('hour', measurement_start_time AT TIME ZONE 'UTC'),
               count(*)
        FROM v WHERE status = 'no_connectivity' GROUP BY ALL ORDER BY ALL""")
    assert hours is not None  # a SELECT always gives a relation
    rows = hours.fetchall()
    return [(cc, asn, _utc(h), int(n)) for cc, asn, h, n in rows]


def dark_hours_from_signals(hourly: pa.Table) -> list[tuple[str, str, dt.datetime, int]]:
    """Dark hours from hourly counts alone (no facts: ``detect_from_signals``)."""
    c = {k: hourly.column(k).to_numpy(zero_copy_only=False) for k in
         ("volume", "anchor_n", "anchor_ok", "target_n", "target_ok")}
    dark = ((c["volume"] >= DARK_MIN_MEASUREMENTS) & (c["anchor_n"] > 0) & (c["anchor_ok"] == 0)
            & (c["target_ok"] <= DARK_MAX_TARGET_OK * c["target_n"]))
    idx = np.flatnonzero(dark)
    if not len(idx):
        return []
    cc, asn, hours = (hourly.column(k).take(pa.array(idx)).to_pylist() for k in ("cc", "asn", "hour"))
    return [(a, b, _utc(h), int(c["volume"][i])) for a, b, h, i in zip(cc, asn, hours, idx.tolist(), strict=True)]


def connectivity_events(classifier: Classifier, dark: list[tuple[str, str, dt.datetime, int]], source: str) -> list[Event]:
    """One ``connectivity_lost`` event per run of dark hours of a network. Dark hours separated
    only by hours in which the network measured nothing are one run (a dark probe that measures
    every few hours is still dark in between); an hour with measurements that were not dark ends
    the run."""
    if not dark:
        return []
    runs: dict[tuple[str, str], list[list[dt.datetime]]] = {}
    for cc, asn, hour, _ in sorted(dark):
        seen = runs.setdefault((cc, asn), [])
        if seen:
            last = seen[-1][-1]
            # hours of this network with measurements strictly between the two dark hours
            rows = classifier.hour_span(classifier.network_rows(cc, asn), last + HOUR, hour)
            if not classifier._np["volume"][rows].any():
                seen[-1].append(hour)
                continue
        seen.append([hour])
    return [classifier.classify_dark_run(cc, asn, hours[0], hours[-1] + HOUR, len(hours), source)
            for (cc, asn), spans in sorted(runs.items()) for hours in spans]

