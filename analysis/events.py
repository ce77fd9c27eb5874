"""Events: alert runs and CUSUM changes classified as shutdown, service blocking, site outage or
probe fault, and runs of dark hours (connectivity lost at a vantage point, no history needed),
merged across networks and inputs, with their evidence.

Classification uses what only raw measurements can tell: which vantage points failed (a
vantage point is its network name, platform and software version; runs tell vantage points
apart within an hour), whether controls elsewhere reached the same targets, and which layer
failed first (the method).
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from duckdb import ColumnExpression as C
from duckdb import ConstantExpression as K
from duckdb import FunctionExpression as F

from analysis.detector import LEVELS, RATE_SIGNALS, AlertRun, Change, DetectorConfig, _grade, _wilson_upper

KINDS = ("connectivity_lost", "shutdown", "service_blocking", "site_outage", "probe_fault", "unclassified")
# How far an event reaches (the `scope` column): see docs/shutdowns.md.
SCOPES = ("vantage_point", "network", "networks", "national", "international")
HOUR = dt.timedelta(hours=1)

EVENT_SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("severity", pa.string(), nullable=False),
    pa.field("rule", pa.string()),  # id of the rule that decided the kind (docs/shutdowns.md)
    pa.field("scope", pa.string()),  # vantage_point, network, networks, national, international
    pa.field("country", pa.string()),  # the one country of the event; null when it spans several
    pa.field("start", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("end", pa.timestamp("us", tz="UTC")),  # exclusive; null: still going at the end of the data
    pa.field("duration_h", pa.float64()),
    pa.field("regions", pa.list_(pa.string())),
    pa.field("networks", pa.list_(pa.string())),
    pa.field("country_networks", pa.int64()),  # networks of `country` measuring in the day before the event
    pa.field("inputs", pa.list_(pa.string())),
    pa.field("methods", pa.list_(pa.string())),
    pa.field("measurements", pa.int64()),
    pa.field("vantage_points", pa.int64()),
    pa.field("confidence", pa.float64()),
    pa.field("reason", pa.string()),
    pa.field("evidence", pa.string()),  # JSON: signal values against baselines, vantage points, controls
])


@dataclass
class Event:
    kind: str
    severity: str
    start: dt.datetime
    end: dt.datetime | None
    regions: list[str]
    networks: list[str]
    inputs: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)
    measurements: int = 0
    vantage_points: int = 0
    confidence: float = 0.5
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    event_id: str = ""
    rule: str = ""
    scope: str = ""
    country_networks: int | None = None

    @property
    def country(self) -> str | None:
        return self.regions[0] if len(self.regions) == 1 else None

    @property
    def duration_h(self) -> float | None:
        return None if self.end is None else (self.end - self.start) / HOUR

    def overlaps(self, start: dt.datetime, end: dt.datetime | None, gap_h: int = 0) -> bool:
        gap = gap_h * HOUR
        return (self.end is None or start <= self.end + gap) and (end is None or self.start <= end + gap)


def _utc(value: Any) -> dt.datetime:
    if isinstance(value, np.datetime64):
        value = value.astype("datetime64[us]").astype(dt.datetime)
    moment: dt.datetime = value
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _naive(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC).replace(tzinfo=None)


# --------------------------------------------------------------------------- network anomalies


class Classifier:
    """Classifies alert runs and changes against the ``shutdown_facts`` table (or, without it,
    from the signals alone)."""

    def __init__(self, con: duckdb.DuckDBPyConnection | None, hourly: pa.Table, cfg: DetectorConfig,
                 verdicts: duckdb.DuckDBPyRelation | None = None) -> None:
        self.con = con
        self.verdicts = verdicts  # compute_verdicts rows, a relation of con: its methods name blocks
        self.hourly = hourly
        self.cfg = cfg
        self.hours = hourly.column("hour").to_numpy()
        self._levels = {c: hourly.column(c).to_numpy() for c in hourly.column_names if c.endswith("_level")}
        # columns as numpy once: classifying thousands of runs must not convert them each time
        self._np = {c: hourly.column(c).to_numpy(zero_copy_only=False)
                    for c in hourly.column_names if c not in ("cc", "asn", "hour")}

    # -- helpers over the facts table
    def _q(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        assert self.con is not None
        return self.con.execute(sql, params).fetchall()

    def _window(self, where: str, start: dt.datetime, end: dt.datetime | None) -> tuple[str, list[Any]]:
        end = end or dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
        return f"{where} AND hour >= ? AND hour < ?", [_naive(start), _naive(end)]

    def control_rate(self, inputs: list[str] | None, start: dt.datetime, end: dt.datetime | None) -> tuple[float | None, int]:
        """Share of control measurements (same targets, any network) that reached the target."""
        where, params = self._window("role = 'control' AND NOT is_anchor", start, end)
        if inputs is not None:
            where += " AND list_contains(?, input)"
            params.append(inputs)
        n, ok = self._q(f"SELECT count(*), count(*) FILTER (WHERE ok) FROM shutdown_facts WHERE {where}", params)[0]
        return (ok / n if n else None), int(n)

    def vantage_breakdown(self, cc: str, asn: str, start: dt.datetime, end: dt.datetime | None,
                          inputs: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Per vantage point in the window: runs, failing runs, measurements, software version."""
        where, params = self._window("role = 'probe' AND cc = ? AND asn = ?", start, end)
        params = [cc, asn, *params]
        if inputs is not None:
            where += " AND list_contains(?, input)"
            params.append(inputs)
        rows = self._q(f"""
            WITH r AS (
                SELECT vantage, run_id, any_value(software_version) AS version, count(*) AS n,
                       count(*) FILTER (WHERE ok) AS ok, count(*) FILTER (WHERE is_anchor) AS an,
                       count(*) FILTER (WHERE is_anchor AND ok) AS aok
                FROM shutdown_facts WHERE {where} GROUP BY ALL)
            SELECT vantage, any_value(version), count(*) AS runs,
                   count(*) FILTER (WHERE CASE WHEN an > 0 THEN aok < an * 0.5 ELSE ok < n * 0.5 END) AS failing,
                   sum(n)::BIGINT, sum(ok)::BIGINT
            FROM r GROUP BY ALL ORDER BY ALL""", params)
        return {v: {"version": ver, "runs": runs, "failing_runs": failing, "measurements": n, "ok": ok}
                for v, ver, runs, failing, n, ok in rows}

    def versions_before(self, cc: str, asn: str, start: dt.datetime) -> set[str]:
        rows = self._q("""SELECT DISTINCT software_version FROM shutdown_facts WHERE role = 'probe' AND cc = ?
                          AND asn = ? AND hour < ? AND hour >= ? AND ok""",
                       [cc, asn, _naive(start), _naive(start - dt.timedelta(days=self.cfg.baseline_days))])
        return {r[0] for r in rows if r[0] is not None}

    def failing_inputs(self, cc: str, asn: str, start: dt.datetime, end: dt.datetime | None) -> list[tuple[str, float, str | None]]:
        where, params = self._window("role = 'probe' AND NOT is_anchor AND cc = ? AND asn = ?", start, end)
        return [(i, r, m) for i, r, m in self._q(f"""
            SELECT input, avg(CASE WHEN ok THEN 0 ELSE 1 END) AS fail, mode(method) FILTER (WHERE NOT ok)
            FROM shutdown_facts WHERE {where} GROUP BY ALL HAVING fail >= 0.5 ORDER BY fail DESC, input""",
            [cc, asn, *params])]

    def methods(self, cc: str, asn: str, inputs: list[str], start: dt.datetime, end: dt.datetime | None) -> Counter[str]:
        assert self.con is not None
        end = end or dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
        # values enter as constant expressions (the relation API's bound parameters)
        where = ((C("role") == K("probe")) & (C("cc") == K(cc)) & (C("asn") == K(asn))
                 & F("list_contains", K(inputs), C("input"))
                 & (C("hour") >= K(_naive(start))) & (C("hour") < K(_naive(end))))
        facts = self.con.table("shutdown_facts")
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
        if self.con is None:  # signals only: no vantage points or controls to look at
            if dark and target_drop:
                base.kind, base.reason, base.confidence = "shutdown", "anchors and targets dropped together", 0.6
                base.rule = "shutdown.signals"
                if no_anchors:
                    base.reason, base.confidence = "every target dropped (no anchors measured)", 0.4
                    base.rule = "shutdown.signals_no_anchors"
            elif target_drop:
                base.kind, base.reason, base.confidence = "service_blocking", "targets dropped, anchors did not", 0.4
                base.rule = "service_blocking.signals"
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

        if failing and healthy and len(failing) == 1 and len(failing) + len(healthy) == len(vantages):
            name = next(iter(failing))
            base.kind, base.confidence, base.rule = "probe_fault", 0.8, "probe_fault.one_vantage_point"
            base.reason = f"one vantage point alone ({name}); {len(healthy)} other(s) in the network fine"
        elif failing and failing_versions and not (failing_versions & before) and before:
            base.kind, base.confidence, base.rule = "probe_fault", 0.7, "probe_fault.new_version"
            base.reason = (f"failures tied to software version {', '.join(sorted(map(str, failing_versions)))}, "
                           f"new in this network (before: {', '.join(sorted(before))})")
        elif dark and target_drop and not healthy:
            if ctrl is None or ctrl >= cfg.warning:
                base.kind = "shutdown"
                base.rule = "shutdown.no_anchors" if no_anchors else "shutdown.anchors_and_targets"
                base.confidence = 0.9 if ctrl is not None and len(failing) > 1 else 0.7 if ctrl is not None else 0.5
                what = "targets failed (no anchors measured)" if no_anchors else "anchors and targets failed together"
                base.reason = (f"{what} on {len(failing)} vantage point(s); controls "
                               + ("reached the targets" if ctrl is not None else "absent"))
                if no_anchors:
                    base.confidence = round(base.confidence - 0.2, 2)
            else:
                base.kind, base.confidence, base.rule = "site_outage", 0.6, "site_outage.controls_failed"
                base.reason = f"anchors and targets failed, but controls failed too (ok rate {ctrl:.0%})"
        elif target_drop and not anchor_drop:
            bad = self.failing_inputs(run.cc, run.asn, start, end)
            base.inputs = [i for i, _, _ in bad]
            base.methods = sorted({m for _, _, m in bad if m})
            ctrl_in, _ = self.control_rate(base.inputs, start, end) if base.inputs else (None, 0)
            if ctrl_in is not None and ctrl_in < cfg.critical:
                base.kind, base.confidence, base.reason = "site_outage", 0.7, "targets failed at controls too"
                base.rule = "site_outage.controls_failed"
            else:
                base.kind, base.confidence, base.rule = "service_blocking", 0.6, "service_blocking.targets_not_anchors"
                base.reason = f"{len(base.inputs)} target(s) failed while anchors answered"
        elif not rate_driven:
            silent = self._silent_vantages(run.cc, run.asn, start, vantages)
            evidence["silent_vantage_points"] = silent
            if len(silent) == 1 and vantages:
                base.kind, base.confidence, base.rule = "probe_fault", 0.5, "probe_fault.silent"
                base.reason = f"vantage point stopped reporting ({silent[0]}); others fine"
            else:
                base.reason = "measurement volume dropped; anchors and targets fine where measured"
        else:
            base.reason = "signals dropped without a clear pattern"
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
        rows = self._q("""SELECT DISTINCT vantage FROM shutdown_facts WHERE role = 'probe' AND cc = ? AND asn = ?
                          AND hour >= ? AND hour < ?""", [cc, asn, _naive(start - dt.timedelta(days=1)), _naive(start)])
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
        if self.con is None:  # hourly counts only
            sel = ((self.hourly.column("cc").to_numpy(zero_copy_only=False) == cc)
                   & (self.hourly.column("asn").to_numpy(zero_copy_only=False) == asn))
            hours = np.asarray([_utc(h) for h in self.hours[sel]], dtype=object)
            inside = np.asarray([start <= h < end for h in hours], dtype=bool)
            get = {k: int(self._np[k][sel][inside].sum()) for k in ("volume", "anchor_n", "anchor_ok", "target_n",
                                                                    "target_ok")}
            ev.measurements = get["volume"]
            ev.vantage_points = int(self._np["vantage_points"][sel][inside].max(initial=0))
            evidence.update(anchors={"failed": get["anchor_n"] - get["anchor_ok"], "total": get["anchor_n"]},
                            targets={"failed": get["target_n"] - get["target_ok"], "total": get["target_n"]})
            ev.confidence = 0.5
            ev.reason = (f"connectivity lost at this vantage point: {_frac(evidence['anchors'])} anchors and "
                         f"{_frac(evidence['targets'])} target measurements failed; no controls to compare: "
                         "shutdown or local fault")
            ev.evidence = evidence
            return ev
        where, params = self._window("role = 'probe' AND cc = ? AND asn = ?", start, end)
        (n, vps, runs, an, afail, tn, tfail, inputs, inputs_ok, top), = self._q(f"""
            SELECT count(*), count(DISTINCT vantage), count(DISTINCT run_id),
                   count(*) FILTER (WHERE is_anchor), count(*) FILTER (WHERE is_anchor AND NOT ok),
                   count(*) FILTER (WHERE NOT is_anchor), count(*) FILTER (WHERE NOT is_anchor AND NOT ok),
                   count(DISTINCT input) FILTER (WHERE NOT is_anchor),
                   count(DISTINCT input) FILTER (WHERE NOT is_anchor AND ok),
                   mode(method) FILTER (WHERE NOT ok)
            FROM shutdown_facts WHERE {where}""", [cc, asn, *params])
        ev.measurements, ev.vantage_points = int(n), int(vps)
        ev.methods = [top] if top else []
        ctrl, ctrl_n = self.control_rate(None, start, end)
        where, params = self._window("is_anchor AND NOT (role = 'probe' AND cc = ? AND asn = ?)", start, end)
        (elsewhere_n, elsewhere_ok), = self._q(
            f"SELECT count(*), count(*) FILTER (WHERE ok) FROM shutdown_facts WHERE {where}", [cc, asn, *params])
        # controls elsewhere are "fine" on the same test as a shutdown's: they reached at least
        # the warning share of the targets (a few sites are always down somewhere)
        controls_fine = ctrl is not None and ctrl >= self.cfg.warning
        evidence.update(
            measurements=int(n), vantage_points=int(vps), runs=int(runs),
            anchors={"failed": int(afail), "total": int(an)},
            targets={"failed": int(tfail), "total": int(tn)},
            inputs={"failed": int(inputs) - int(inputs_ok), "total": int(inputs)},
            controls={"ok_rate": ctrl, "measurements": ctrl_n, "fine": controls_fine},
            anchors_elsewhere={"ok_rate": elsewhere_ok / elsewhere_n if elsewhere_n else None,
                               "measurements": int(elsewhere_n)},
            top_failure=top)
        where_else = "this vantage point" if vps <= 1 else f"{vps} vantage points of this network"
        failed = (f"{_frac(evidence['anchors'])} anchors and {_frac(evidence['inputs'])} inputs failed"
                  + (f" ({top})" if top else ""))
        if controls_fine:
            ev.confidence = 0.8
            tail = (f"while controls elsewhere reached {ctrl:.0%} of the targets"
                    + (f" and anchors elsewhere answered {elsewhere_ok / elsewhere_n:.0%}" if elsewhere_n else ""))
        elif ctrl is None:
            ev.confidence = 0.6
            tail = "no controls measured in these hours to compare with"
        else:
            ev.confidence = 0.4
            tail = f"but controls failed too (ok rate {ctrl:.0%}): the loss may be wider or the targets down"
        ev.reason = f"connectivity lost at {where_else}: {failed}, {tail}: shutdown or local fault"
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
        start = hour0 + ch.start_h * HOUR
        end = None if ch.end_h is None else hour0 + ch.end_h * HOUR
        rate = ch.failed / ch.n if ch.n else 0.0
        ev = Event("service_blocking", "critical" if rate >= 0.5 else "warning", start, end, [ch.cc], [ch.asn],
                   [ch.input], measurements=ch.n, confidence=0.6, rule="service_blocking.change",
                   evidence={"failed": ch.failed, "measurements": ch.n, "baseline_failed_rate": round(ch.baseline_rate, 4)})
        if self.con is None:
            ev.reason = "failed rate rose (CUSUM)"
            return ev
        methods = self.methods(ch.cc, ch.asn, [ch.input], start, end)
        ev.methods = [m for m, _ in methods.most_common(3)]
        ctrl, ctrl_n = self.control_rate([ch.input], start, end)
        vantages = self.vantage_breakdown(ch.cc, ch.asn, start, end, [ch.input])
        ev.vantage_points = len(vantages)
        ev.evidence.update(controls={"ok_rate": ctrl, "measurements": ctrl_n},
                           methods=dict(methods.most_common(5)))
        failing = [v for v, d in vantages.items() if d["ok"] * 2 < d["measurements"]]
        if ctrl is not None and ctrl < self.cfg.critical:
            ev.kind, ev.confidence, ev.reason = "site_outage", 0.8, f"controls failed too (ok rate {ctrl:.0%})"
            ev.rule = "site_outage.change_controls_failed"
        elif len(failing) == 1 and len(vantages) > 1:
            ev.kind, ev.confidence, ev.reason = "probe_fault", 0.6, f"only {failing[0]} failed"
            ev.rule = "probe_fault.change_one_vantage_point"
        else:
            top = methods.most_common(1)
            share = top[0][1] / sum(methods.values()) if top else 0.0
            ev.confidence = round(min(0.95, 0.5 + 0.4 * share + (0.05 if ctrl is not None else 0)), 2)
            ev.reason = (f"failed rate {ch.baseline_rate:.0%} -> {rate:.0%}; "
                         + (f"{share:.0%} by {top[0][0]}" if top else "no method") + "; controls "
                         + (f"ok {ctrl:.0%}" if ctrl is not None else "absent"))
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

DARK_FACTS_SQL = f"""
SELECT cc, asn, hour, count(*) AS n
FROM shutdown_facts WHERE role = 'probe' GROUP BY ALL
HAVING count(*) >= {DARK_MIN_MEASUREMENTS}
   AND count(*) FILTER (WHERE is_anchor) > 0 AND count(*) FILTER (WHERE is_anchor AND ok) = 0
   AND count(*) FILTER (WHERE NOT is_anchor AND ok) <= {DARK_MAX_TARGET_OK} * count(*) FILTER (WHERE NOT is_anchor)
   AND count(*) FILTER (WHERE NOT ok AND coalesce(method, '') NOT LIKE 'measurement.unknown_failure%')
       >= {DARK_MIN_NETWORK_FAILED} * count(*)
ORDER BY ALL
"""


def dark_hours_from_facts(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, dt.datetime, int]]:
    """(cc, asn, hour, measurements) of every dark hour in ``shutdown_facts`` (``--no-verdicts``)."""
    return [(cc, asn, _utc(h), int(n)) for cc, asn, h, n in con.execute(DARK_FACTS_SQL).fetchall()]


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
    volume: dict[tuple[str, str], dict[dt.datetime, int]] = {}
    nets = {(cc, asn) for cc, asn, _, _ in dark}
    hourly = classifier.hourly
    for cc, asn, h, v in zip(hourly.column("cc").to_pylist(), hourly.column("asn").to_pylist(),
                             hourly.column("hour").to_pylist(),
                             classifier._np["volume"].tolist(), strict=True):
        if (cc, asn) in nets and v:
            volume.setdefault((cc, asn), {})[_utc(h)] = int(v)
    runs: dict[tuple[str, str], list[list[dt.datetime]]] = {}
    for cc, asn, hour, _ in sorted(dark):
        seen = runs.setdefault((cc, asn), [])
        if seen:
            last = seen[-1][-1]
            between = [h for h in volume.get((cc, asn), {}) if last < h < hour]
            if not between:
                seen[-1].append(hour)
                continue
        seen.append([hour])
    return [classifier.classify_dark_run(cc, asn, hours[0], hours[-1] + HOUR, len(hours), source)
            for (cc, asn), spans in sorted(runs.items()) for hours in spans]


def network_spans(e: Event) -> dict[str, tuple[dt.datetime, dt.datetime | None]]:
    """When each network of a (merged) network event started and ended: a national event's
    networks need not go dark in the same hour."""
    per = e.evidence.get("per_network")
    if not per:
        return {n: (e.start, e.end) for n in e.networks}
    out: dict[str, tuple[dt.datetime, dt.datetime | None]] = {}
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    for key, ev in per.items():
        span = ev.get("span")
        start, end = (dt.datetime.fromisoformat(span[0]), dt.datetime.fromisoformat(span[1]) if span[1] else None) \
            if span else (e.start, e.end)
        for n in key.split("#")[0].split(","):
            if n in out:  # the same network twice (a fault seen in pieces): their union
                s0, e0 = out[n]
                end = None if (e0 or far) == far or (end or far) == far else max(e0 or far, end or far)
                start = min(s0, start)
            out[n] = (start, end)
    return out


def _frac(d: dict[str, int]) -> str:
    return f"{d['failed']}/{d['total']}"


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(f) else round(f, 4)


# --------------------------------------------------------------------------- merging


def _merge_by_country(events: list[Event], gap: int) -> list[Event]:
    """Same-kind network anomalies of one country that overlap (or nearly) become one event."""
    merged: list[Event] = []
    for ev in sorted(events, key=lambda e: (e.regions[0], e.kind, e.start)):
        for m in merged:
            # a faulty laptop is silent at night: the same vantage point failing again the next
            # day is the same fault
            same_fault = ev.kind == "probe_fault" and m.networks == ev.networks and bool(
                _failing_vantages(m) & _failing_vantages(ev))
            # dark runs are exact (hours measured fine lie between them): only runs that overlap
            # in time, in different networks, are one loss
            g = 24 if same_fault else 0 if ev.kind == "connectivity_lost" else gap
            if m.kind == ev.kind and m.regions == ev.regions and m.overlaps(ev.start, ev.end, g) and (
                    ev.kind != "probe_fault" or m.networks == ev.networks):
                _absorb(m, ev)
                break
        else:
            merged.append(ev)
    return merged


def merge_events(network_events: list[Event], change_events: list[Event], cfg: DetectorConfig,
                 connectivity: Sequence[Event] = ()) -> list[Event]:
    """Fold per-network and per-input findings into the events an analyst reads."""
    gap = int(cfg.extra.get("merge_gap_h", 3))
    # 0. dark hours inside a shutdown or probe fault the history found in that network are its
    #    evidence (the history-based kind says more); the others are events of their own
    network_events = list(network_events)
    for c in connectivity:
        host = next((m for m in network_events if m.kind in ("shutdown", "probe_fault")
                     and c.networks[0] in m.networks and m.regions == c.regions and m.overlaps(c.start, c.end, gap)),
                    None)
        if host is None:
            network_events.append(c)
        else:
            lost: dict[str, Any] = {"span": [c.start.isoformat(), c.end.isoformat() if c.end else None],
                                    "rule": c.rule}
            lost.update({k: c.evidence[k] for k in ("dark_hours", "anchors", "targets", "inputs", "source")
                         if k in c.evidence})
            host.evidence.setdefault("connectivity_lost", []).append(lost)
    # 1. per country: same-kind network anomalies that overlap (or nearly) become one event
    merged = _merge_by_country(network_events, gap)
    # 1b. connectivity lost in several networks of a country at once cannot be one household's
    #     fault (separate networks share no local link): a shutdown; merged with any shutdown the
    #     history found beside it. Several vantage points of ONE network may share a building or
    #     an uplink (and vantage identity is inferred), so they stay connectivity_lost.
    upgraded = False
    for m in merged:
        if m.kind == "connectivity_lost" and len(m.networks) > 1:
            m.kind, m.rule, upgraded = "shutdown", "shutdown.connectivity_several_networks", True
            m.reason = (f"connectivity lost in {len(m.networks)} networks at once (anchors and nearly every "
                        f"target failing, no history needed): {m.reason}")
    if upgraded:
        merged = _merge_by_country(merged, gap)
    # 2. input changes inside a shutdown or probe fault of their network are explained by it
    kept: list[Event] = []
    for ch in change_events:
        # a target failing at one vantage point only, while that vantage point's fault is an
        # event already: the same fault, seen earlier through one target
        fault = next((m for m in merged if ch.kind == "probe_fault" and m.kind == "probe_fault"
                      and m.networks == ch.networks and m.overlaps(ch.start, ch.end, 24)), None)
        if fault is not None:
            _absorb(fault, ch)
            fault.inputs = []  # the vantage point failed everything, not these targets
            continue
        # when it starts or ends with them (a block that began before the anomaly and outlives it stays)
        host = next((m for m in merged if m.kind in ("shutdown", "probe_fault", "connectivity_lost")
                     and ch.networks[0] in m.networks
                     and m.overlaps(ch.start, ch.end) and (m.overlaps(ch.start, ch.start, gap_h=gap) or (
                         ch.end is not None and m.end is not None and abs(ch.end - m.end) <= gap * HOUR))), None)
        if host is not None:
            host.evidence["explained_input_changes"] = host.evidence.get("explained_input_changes", 0) + 1
        else:
            kept.append(ch)
    # 3. changes of one kind group: blocking by (country, method, start), outages by input
    groups: list[list[Event]] = []
    for ch in sorted(kept, key=lambda e: e.start):
        for g in groups:
            g0 = g[0]
            if ch.kind != g0.kind:
                continue
            if ch.kind == "site_outage" and ch.inputs == g0.inputs and g0.overlaps(ch.start, ch.end):
                g.append(ch)
                break
            if ch.kind != "site_outage" and ch.regions == g0.regions and ch.methods[:1] == g0.methods[:1] and \
                    abs((ch.start - g0.start) / HOUR) <= gap and (ch.kind != "probe_fault" or ch.networks == g0.networks):
                g.append(ch)
                break
        else:
            groups.append([ch])
    grouped = [_combine(g) for g in groups]
    # 4. a network-level blocking or outage anomaly covered by input changes adds nothing
    final = [g for g in grouped]
    for m in merged:
        if m.kind in ("service_blocking", "site_outage") and any(
                g.kind == m.kind and set(g.networks) & set(m.networks) and g.overlaps(m.start, m.end) for g in grouped):
            continue
        final.append(m)
    final.sort(key=lambda e: (e.start, e.regions, e.kind))
    for e in final:
        e.event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"vantage-event:{e.kind}:{e.start.isoformat()}:"
                                                        f"{','.join(e.regions)}:{','.join(e.networks)}:{','.join(e.inputs)}"))
    return final


def _failing_vantages(e: Event) -> set[str]:
    evidences = list(e.evidence.get("per_network", {}).values()) or [e.evidence]
    return {v for ev in evidences for v, d in ev.get("vantage_points", {}).items() if d.get("failing")}


def _absorb(into: Event, ev: Event) -> None:
    if "per_network" not in into.evidence:
        into.evidence = {"per_network": {",".join(into.networks): into.evidence}}
    per, key = into.evidence["per_network"], ",".join(ev.networks)
    name, n = key, 1
    while name in per:  # the same network again (a fault seen in pieces): keep both
        name, n = f"{key}#{n}", n + 1
    per[name] = {**ev.evidence, "span": [ev.start.isoformat(), ev.end.isoformat() if ev.end else None]}
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    into.start = min(into.start, ev.start)
    end = max(into.end or far, ev.end or far)
    into.end = None if end == far else end
    into.networks = sorted(set(into.networks) | set(ev.networks))
    into.regions = sorted(set(into.regions) | set(ev.regions))
    into.inputs = sorted(set(into.inputs) | set(ev.inputs))
    into.methods = sorted(set(into.methods) | set(ev.methods))
    into.measurements += ev.measurements
    into.vantage_points += ev.vantage_points
    into.severity = max(into.severity, ev.severity, key=LEVELS.index)
    into.confidence = max(into.confidence, ev.confidence)


def _combine(group: list[Event]) -> Event:
    if len(group) == 1:
        return group[0]
    first = group[0]
    # several series dating one change: the median is robust to one noisy series starting early
    starts = sorted(e.start for e in group)
    ends = [e.end for e in group]
    end = None if any(e is None for e in ends) else sorted(ends)[len(ends) // 2]  # type: ignore[type-var]
    methods = Counter(m for e in group for m in e.methods[:1])
    return Event(
        kind=first.kind,
        severity=max((e.severity for e in group), key=LEVELS.index),
        start=starts[len(starts) // 2],
        end=end,
        regions=sorted({r for e in group for r in e.regions}),
        networks=sorted({n for e in group for n in e.networks}),
        inputs=sorted({i for e in group for i in e.inputs}),
        methods=[m for m, _ in methods.most_common()],
        measurements=sum(e.measurements for e in group),
        vantage_points=sum(e.vantage_points for e in group),
        confidence=round(statistics.mean(e.confidence for e in group), 2),
        reason=f"{len(group)} series changed together; " + first.reason,
        rule=first.rule,
        evidence={"series": [{"network": e.networks[0], "region": e.regions[0], "input": e.inputs[0],
                              "start": e.start.isoformat(), "end": e.end.isoformat() if e.end else None,
                              **e.evidence} for e in group]},
    )


def annotate_scope(events: Sequence[Event], hourly: pa.Table) -> None:
    """Fill ``country_networks`` (networks of the event's country that measured in the day
    before the event or during it) and ``scope``; a multi-network shutdown's reason says how
    many of the country's networks it hit."""
    if hourly.num_rows:
        cc = hourly.column("cc").to_numpy(zero_copy_only=False)
        asn = hourly.column("asn").to_numpy(zero_copy_only=False)
        hour = hourly.column("hour").to_numpy().astype("datetime64[us]")
        active = hourly.column("volume").to_numpy(zero_copy_only=False) > 0
    for e in events:
        if e.country is not None and hourly.num_rows:
            lo = np.datetime64(_naive(e.start - dt.timedelta(days=1)), "us")
            sel = (cc == e.country) & active & (hour >= lo)
            if e.end is not None:
                sel &= hour < np.datetime64(_naive(e.end), "us")
            e.country_networks = len(set(asn[sel].tolist()) | set(e.networks))
        if len(e.regions) > 1:
            e.scope = "international"
        elif e.kind == "probe_fault" or (e.kind == "connectivity_lost" and e.vantage_points <= 1):
            e.scope = "vantage_point"
        elif len(e.networks) <= 1:
            e.scope = "network"
        elif e.country_networks is not None and len(e.networks) >= e.country_networks:
            e.scope = "national"
        else:
            e.scope = "networks"
        if e.kind == "shutdown" and len(e.networks) > 1 and e.country_networks and not e.reason.startswith(
                ("national", "regional")):
            what = "national" if e.scope == "national" else "regional"
            e.reason = f"{what}: {len(e.networks)} of {e.country_networks} networks of {e.country}; {e.reason}"


def events_to_table(events: list[Event]) -> pa.Table:
    rows = [{
        "event_id": e.event_id, "kind": e.kind, "severity": e.severity, "rule": e.rule or None,
        "scope": e.scope or None, "country": e.country, "start": e.start, "end": e.end,
        "duration_h": e.duration_h, "regions": e.regions, "networks": e.networks,
        "country_networks": e.country_networks, "inputs": e.inputs,
        "methods": e.methods, "measurements": e.measurements, "vantage_points": e.vantage_points,
        "confidence": e.confidence, "reason": e.reason, "evidence": json.dumps(e.evidence, default=str, sort_keys=True),
    } for e in events]
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)
