"""Events: what the classifier found (alert runs and CUSUM changes classified as shutdown,
service blocking, site outage or probe fault, and runs of dark hours), merged across networks
and inputs, with their scope and evidence; EVENT_SCHEMA is their Parquet form.

The evidence is gathered in SQL by ``analysis.evidence`` and judged by the pure functions of
``analysis.classify``; this module holds the event record, merging, scope and the table.
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

import numpy as np
import pyarrow as pa

from analysis.classify import (
    scope_of,
    scoped_reason,
)
from analysis.detector import LEVELS, DetectorConfig

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
        e.scope = scope_of(e.kind, len(e.regions), len(e.networks), e.vantage_points, e.country_networks)
        e.reason = scoped_reason(e.kind, e.scope, e.reason, len(e.networks), e.country_networks, e.country)


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
