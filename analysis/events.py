"""Events: alert runs and CUSUM changes classified as shutdown, service blocking, site outage or
probe fault, merged across networks and inputs, with their evidence.

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
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from analysis.detector import LEVELS, AlertRun, Change, DetectorConfig

KINDS = ("shutdown", "service_blocking", "site_outage", "probe_fault", "unclassified")
HOUR = dt.timedelta(hours=1)

EVENT_SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("severity", pa.string(), nullable=False),
    pa.field("start", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("end", pa.timestamp("us", tz="UTC")),  # exclusive; null: still going at the end of the data
    pa.field("duration_h", pa.float64()),
    pa.field("regions", pa.list_(pa.string())),
    pa.field("networks", pa.list_(pa.string())),
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

    @property
    def duration_h(self) -> float | None:
        return None if self.end is None else (self.end - self.start) / HOUR

    def overlaps(self, start: dt.datetime, end: dt.datetime | None, gap_h: int = 0) -> bool:
        gap = gap_h * HOUR
        return (self.end is None or start <= self.end + gap) and (end is None or self.start <= end + gap)


def _utc(value: Any) -> dt.datetime:
    if isinstance(value, np.datetime64):
        value = value.astype("datetime64[us]").astype(dt.datetime)
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def _naive(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None)


# --------------------------------------------------------------------------- network anomalies


class Classifier:
    """Classifies alert runs and changes against the ``shutdown_facts`` table (or, without it,
    from the signals alone)."""

    def __init__(self, con: duckdb.DuckDBPyConnection | None, hourly: pa.Table, cfg: DetectorConfig,
                 verdicts: str | None = None) -> None:
        self.con = con
        self.verdicts = verdicts  # a registered compute_verdicts table: its methods name blocks
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
        end = end or dt.datetime(9999, 1, 1, tzinfo=dt.timezone.utc)
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
        if self.verdicts:
            where, params = self._window("f.role = 'probe' AND f.cc = ? AND f.asn = ? AND list_contains(?, f.input) "
                                         "AND (v.status = 'blocked' OR NOT f.ok)", start, end)
            sql = (f"SELECT coalesce(CASE WHEN v.status = 'blocked' THEN v.method END, f.method) AS m, count(*) "
                   f"FROM shutdown_facts f "
                   f"LEFT JOIN {self.verdicts} v USING (measurement_id) WHERE {where} GROUP BY ALL")
        else:
            where, params = self._window("role = 'probe' AND NOT ok AND cc = ? AND asn = ? AND list_contains(?, input)",
                                         start, end)
            sql = f"SELECT method, count(*) FROM shutdown_facts WHERE {where} GROUP BY ALL"
        return Counter({m: n for m, n in self._q(sql, [cc, asn, inputs, *params]) if m is not None})

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
        dark = anchor_drop or (no_anchors and bool((lv["target_success"] >= 2).any()))
        rate_driven = any(bool((self._levels[f"{s}_level"][sl] > 0).any()) for s in cfg.alert_signals if s != "volume")
        volume_hours = int((lv["volume"] >= LEVELS.index(cfg.volume_alone)).sum())
        if not self._rate_evidence(sl) and volume_hours < cfg.extra.get("volume_alone_min_hours", 3):
            # one mildly low hour of a rate, or a missed run or two: noise, not an event
            return None
        evidence: dict[str, Any] = {"span": [start.isoformat(), end.isoformat()], "signals": self._signal_evidence(sl)}
        severity = LEVELS[run.level]
        base = Event("unclassified", severity, start, end, [run.cc], [run.asn], evidence=evidence)
        vol = self._np["volume"][sl]
        base.measurements = int(vol.sum())
        if self.con is None:  # signals only: no vantage points or controls to look at
            if dark and target_drop:
                base.kind, base.reason, base.confidence = "shutdown", "anchors and targets dropped together", 0.6
                if no_anchors:
                    base.reason, base.confidence = "every target dropped (no anchors measured)", 0.4
            elif target_drop:
                base.kind, base.reason, base.confidence = "service_blocking", "targets dropped, anchors did not", 0.4
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
            base.kind, base.confidence = "probe_fault", 0.8
            base.reason = f"one vantage point alone ({name}); {len(healthy)} other(s) in the network fine"
        elif failing and failing_versions and not (failing_versions & before) and before:
            base.kind, base.confidence = "probe_fault", 0.7
            base.reason = (f"failures tied to software version {', '.join(sorted(map(str, failing_versions)))}, "
                           f"new in this network (before: {', '.join(sorted(before))})")
        elif dark and target_drop and not healthy:
            if ctrl is None or ctrl >= cfg.warning:
                base.kind = "shutdown"
                base.confidence = 0.9 if ctrl is not None and len(failing) > 1 else 0.7 if ctrl is not None else 0.5
                what = "targets failed (no anchors measured)" if no_anchors else "anchors and targets failed together"
                base.reason = (f"{what} on {len(failing)} vantage point(s); controls "
                               + ("reached the targets" if ctrl is not None else "absent"))
                if no_anchors:
                    base.confidence = round(base.confidence - 0.2, 2)
            else:
                base.kind, base.confidence = "site_outage", 0.6
                base.reason = f"anchors and targets failed, but controls failed too (ok rate {ctrl:.0%})"
        elif target_drop and not anchor_drop:
            bad = self.failing_inputs(run.cc, run.asn, start, end)
            base.inputs = [i for i, _, _ in bad]
            base.methods = sorted({m for _, _, m in bad if m})
            ctrl_in, _ = self.control_rate(base.inputs, start, end) if base.inputs else (None, 0)
            if ctrl_in is not None and ctrl_in < cfg.critical:
                base.kind, base.confidence, base.reason = "site_outage", 0.7, "targets failed at controls too"
            else:
                base.kind, base.confidence = "service_blocking", 0.6
                base.reason = f"{len(base.inputs)} target(s) failed while anchors answered"
        elif not rate_driven:
            silent = self._silent_vantages(run.cc, run.asn, start, vantages)
            evidence["silent_vantage_points"] = silent
            if len(silent) == 1 and vantages:
                base.kind, base.confidence = "probe_fault", 0.5
                base.reason = f"vantage point stopped reporting ({silent[0]}); others fine"
            else:
                base.reason = "measurement volume dropped; anchors and targets fine where measured"
        else:
            base.reason = "signals dropped without a clear pattern"
        return base

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

    # -- changes
    def classify_change(self, ch: Change, hour0: dt.datetime) -> Event:
        start = hour0 + ch.start_h * HOUR
        end = None if ch.end_h is None else hour0 + ch.end_h * HOUR
        rate = ch.failed / ch.n if ch.n else 0.0
        ev = Event("service_blocking", "critical" if rate >= 0.5 else "warning", start, end, [ch.cc], [ch.asn],
                   [ch.input], measurements=ch.n, confidence=0.6,
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
        elif len(failing) == 1 and len(vantages) > 1:
            ev.kind, ev.confidence, ev.reason = "probe_fault", 0.6, f"only {failing[0]} failed"
        else:
            top = methods.most_common(1)
            share = top[0][1] / sum(methods.values()) if top else 0.0
            ev.confidence = round(min(0.95, 0.5 + 0.4 * share + (0.05 if ctrl is not None else 0)), 2)
            ev.reason = (f"failed rate {ch.baseline_rate:.0%} -> {rate:.0%}; "
                         + (f"{share:.0%} by {top[0][0]}" if top else "no method") + "; controls "
                         + (f"ok {ctrl:.0%}" if ctrl is not None else "absent"))
        return ev


def network_spans(e: Event) -> dict[str, tuple[dt.datetime, dt.datetime | None]]:
    """When each network of a (merged) network event started and ended: a national event's
    networks need not go dark in the same hour."""
    per = e.evidence.get("per_network")
    if not per:
        return {n: (e.start, e.end) for n in e.networks}
    out: dict[str, tuple[dt.datetime, dt.datetime | None]] = {}
    far = dt.datetime.max.replace(tzinfo=dt.timezone.utc)
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


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(f) else round(f, 4)


# --------------------------------------------------------------------------- merging


def merge_events(network_events: list[Event], change_events: list[Event], cfg: DetectorConfig) -> list[Event]:
    """Fold per-network and per-input findings into the events an analyst reads."""
    gap = int(cfg.extra.get("merge_gap_h", 3))
    # 1. per country: same-kind network anomalies that overlap (or nearly) become one event
    merged: list[Event] = []
    for ev in sorted(network_events, key=lambda e: (e.regions[0], e.kind, e.start)):
        for m in merged:
            # a faulty laptop is silent at night: the same vantage point failing again the next
            # day is the same fault
            same_fault = ev.kind == "probe_fault" and m.networks == ev.networks and bool(
                _failing_vantages(m) & _failing_vantages(ev))
            if m.kind == ev.kind and m.regions == ev.regions and m.overlaps(ev.start, ev.end, 24 if same_fault else gap) and (
                    ev.kind != "probe_fault" or m.networks == ev.networks):
                _absorb(m, ev)
                break
        else:
            merged.append(ev)
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
        host = next((m for m in merged if m.kind in ("shutdown", "probe_fault") and ch.networks[0] in m.networks
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
    far = dt.datetime.max.replace(tzinfo=dt.timezone.utc)
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
        evidence={"series": [{"network": e.networks[0], "region": e.regions[0], "input": e.inputs[0],
                              "start": e.start.isoformat(), "end": e.end.isoformat() if e.end else None,
                              **e.evidence} for e in group]},
    )


def events_to_table(events: list[Event]) -> pa.Table:
    rows = [{
        "event_id": e.event_id, "kind": e.kind, "severity": e.severity, "start": e.start, "end": e.end,
        "duration_h": e.duration_h, "regions": e.regions, "networks": e.networks, "inputs": e.inputs,
        "methods": e.methods, "measurements": e.measurements, "vantage_points": e.vantage_points,
        "confidence": e.confidence, "reason": e.reason, "evidence": json.dumps(e.evidence, default=str, sort_keys=True),
    } for e in events]
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)
