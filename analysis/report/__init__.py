"""Publishable anomaly reports: per country and network what is blocked, how, since when, on how
many measurements and vantage points; events (shutdowns, new blocks, outages, probe faults);
charts as PNG (embedded as data: URIs in HTML, files next to Markdown); CSV of the verdicts.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import html
import os
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv

from analysis import charts
from analysis.db import DatasetError
from analysis.detector import DetectorConfig
from analysis.events import Event
from analysis.messaging import SUMMARY_HEAD, flat_verdicts, function_summary, summary_cells
from analysis.pipeline import (
    AnalysisOptions,
    OutputError,
    Verdicts,
    atomic_output,
    check_output,
    describe,
    run_stage,
)
from analysis.report import names as nm
from analysis.shutdown import Detection, detect
from analysis.signals import open_measurements
from probe.errors import VantageError

# Events whose hours say nothing about blocking in their network: its rows are set aside from
# "what is blocked" (a dead uplink fails every target; so does a shutdown or a broken probe).
QUIET_KINDS = ("shutdown", "probe_fault", "connectivity_lost")


def connectivity_findings(events: Sequence[Event]) -> list[Event]:
    """The events the report opens with: connectivity lost at a vantage point, and shutdowns
    found from lost connectivity (several networks dark at once), on the first run already."""
    return [e for e in events if e.kind == "connectivity_lost" or (e.kind == "shutdown" and (
        e.rule == "shutdown.connectivity_several_networks" or "connectivity_lost" in e.evidence))]


_LOST_TEXT = ("Connectivity was lost at a vantage point (its anchors and nearly every target failed at the network "
              "level while controls and anchors elsewhere were up): a shutdown or a local fault. Measurements "
              "taken without connectivity say nothing about blocking: they have the status no_connectivity, "
              "and the hours of these events are left out of what is blocked below.")


class ReportError(VantageError):
    """The report cannot be written (the message says why, in one line)."""


@dataclass
class ReportData:
    title: str
    generated: str
    sources: list[str]
    verdict_source: str
    provenance: list[str]  # how the verdicts were made: options, fingerprint sets, ASN database
    overview: dict[str, Any]
    blocked: list[dict[str, Any]]  # per (country, network, input)
    detection: Detection
    charts: dict[str, bytes] = field(default_factory=dict)
    event_charts: list[tuple[Event, bytes]] = field(default_factory=list)
    network_names: dict[str, str] = field(default_factory=dict)  # ASN -> organisation (names.network_names)
    messaging: list[dict[str, Any]] = field(default_factory=list)  # analysis.messaging.function_summary


@dataclass
class ReportResult:
    output: Path | None
    csv: Path | None
    events: int
    blocked_rows: int
    measurements: int
    site: Path | None = None
    pages: list[Path] = field(default_factory=list)  # the site's HTML pages


# --------------------------------------------------------------------------- data


class VerdictsMismatchWarning(UserWarning):
    """Probe measurements of the datasets have no verdict (the datasets grew since `analyze`)."""


def _count(rel: duckdb.DuckDBPyRelation) -> int:
    return int(rel.aggregate("count(*)").fetchall()[0][0])


def check_verdicts_match(con: duckdb.DuckDBPyConnection, verdicts: pa.Table, source: str) -> None:
    """The verdicts belong to these datasets: a verdict naming a measurement that is not there
    stops the report (they were made from other data); probe measurements without a verdict
    (added since) are a warning naming the count."""
    probes = con.table("measurements").filter("role = 'probe'").select("measurement_id")
    given = con.from_arrow(verdicts.select(["measurement_id"]))
    foreign = _count(given.join(probes, "measurement_id", how="anti").distinct())
    missing = _count(probes.join(given, "measurement_id", how="anti").distinct())
    if foreign:
        raise ReportError(f"{source}: {foreign:,} of {verdicts.num_rows:,} verdicts name measurements that are not in "
                          "the datasets (made from other data?); run `vantage analyze` on these datasets")
    if missing:
        warnings.warn(f"{missing:,} probe measurements of the datasets have no verdict in {source} (added since it "
                      "was written?); they are left out; re-run `vantage analyze` to include them",
                      VerdictsMismatchWarning, stacklevel=2)


# Tunnels and messaging apps (the probe's and OONI's names): reachability, not web blocking.
_TUNNEL_MESSAGING = ("openvpn", "wireguard", "ikev2", "tor", "vanilla_tor", "torsf", "tor_snowflake", "riseupvpn",
                     "psiphon", "meek_fronted_requests_test", "signal", "whatsapp", "telegram", "facebook_messenger",
                     "stunreachability")

# Blocked verdicts inside a shutdown, probe fault or lost connectivity of their network.
_SET_ASIDE_SQL = """
SELECT count(*) FROM report_verdicts v LEFT JOIN report_facts f USING (measurement_id)
WHERE v.status = 'blocked' AND EXISTS (SELECT 1 FROM report_quiet q WHERE q.cc = f.cc AND q.asn = f.asn
                                       AND f.hour >= q.start_h AND f.hour < q.end_h)
"""

_BLOCKED_SQL = """
WITH v AS (SELECT v.*, f.vantage FROM report_verdicts v LEFT JOIN report_facts f USING (measurement_id)
           -- measurements inside a shutdown, probe fault or connectivity loss of their network say nothing
           -- about blocking
           WHERE NOT EXISTS (SELECT 1 FROM report_quiet q WHERE q.cc = f.cc AND q.asn = f.asn
                             AND f.hour >= q.start_h AND f.hour < q.end_h)),
tot AS (SELECT probe_cc, probe_asn, input, count(*) AS n, count(DISTINCT vantage) AS vps,
               min(measurement_start_time) AS first_measured,
               arg_max(status, measurement_start_time) AS last_status
        FROM v GROUP BY ALL),
meth AS (SELECT probe_cc, probe_asn, input, coalesce(method, '?') AS method, count(*) AS k
         FROM v WHERE status = 'blocked' GROUP BY ALL),
blk AS (SELECT probe_cc, probe_asn, input, count(*) AS blocked, count(*) FILTER (WHERE confirmed) AS confirmed,
               min(measurement_start_time) AS first_blocked, max(measurement_start_time) AS last_blocked,
               count(DISTINCT vantage) AS blocked_vps,
               list(DISTINCT fingerprint) FILTER (WHERE fingerprint IS NOT NULL) AS fingerprints
        FROM v WHERE status = 'blocked' GROUP BY ALL),
ms AS (SELECT probe_cc, probe_asn, input, string_agg(method || ' (' || k || ')', ', ' ORDER BY k DESC, method) AS methods
       FROM meth GROUP BY ALL)
SELECT b.probe_cc, coalesce(b.probe_asn, '?') AS probe_asn, b.input, ms.methods, b.blocked, t.n, b.confirmed,
       b.blocked_vps, t.vps, coalesce(b.fingerprints, []) AS fingerprints,
       epoch_us(b.first_blocked) AS first_blocked_us, epoch_us(b.last_blocked) AS last_blocked_us,
       epoch_us(t.first_measured) AS first_measured_us, t.last_status
FROM blk b JOIN tot t USING (probe_cc, probe_asn, input) JOIN ms USING (probe_cc, probe_asn, input)
-- candidates; build_report_data keeps those blocked often enough not to be noise
WHERE b.confirmed > 0 OR b.blocked >= $min_blocked OR b.blocked * 2 > t.n
ORDER BY b.probe_cc, probe_asn, b.blocked DESC, b.input
"""


def _ts(us: int | None) -> dt.datetime | None:
    return None if us is None else dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


def _over_time(rows: duckdb.DuckDBPyRelation, keys: str) -> tuple[pa.Table, str]:
    """Counts per hour while the rows (a relation with ``t`` and ``keys``) span three days or
    less (one daily point says nothing), per day beyond; (table of t, keys..., n; the bucket)."""
    span_h = rows.aggregate("(epoch(max(t)) - epoch(min(t))) / 3600").fetchall()[0][0] or 0
    bucket = "hour" if span_h <= 72 else "day"
    # the bucket is one of two words of this function: a fixed text per branch, not a value pasted
    trunc = "date_trunc('hour', t AT TIME ZONE 'UTC')" if bucket == "hour" else "date_trunc('day', t AT TIME ZONE 'UTC')"
    table = rows.aggregate(f"{trunc} AS t, {keys}, count(*) AS n", f"{trunc}, {keys}").order("ALL").to_arrow_table()
    return table, bucket


def build_report_data(con: duckdb.DuckDBPyConnection, verdicts: Verdicts, *, sources: Sequence[str] = (),
                      title: str | None = None, verdict_source: str = "computed from the datasets",
                      detector_config: DetectorConfig | None = None, min_blocked: int = 3,
                      min_blocked_share: float = 0.1, max_event_charts: int = 12,
                      counts: pa.Table | None = None) -> ReportData:
    """The report's content over the ``measurements`` view of ``con`` and the stage's verdicts.

    Verdicts first: the change detector then also sees blockpages served with HTTP 200.
    ``counts``: the hourly signals summed elsewhere (``shutdown.detect``'s), e.g. by Spark."""
    con.register("report_verdicts", verdicts.table)
    detection = detect(con, detector_config, verdicts=con.table("report_verdicts"), counts=counts)
    assert detection.facts is not None  # detect over measurements always has them
    detection.facts.create_view("report_facts")  # the detector's facts, under the report's own name
    quiet = [{"cc": r, "asn": n, "start_h": e.start.replace(tzinfo=None),
              "end_h": (e.end or dt.datetime(9999, 1, 1, tzinfo=dt.UTC)).replace(tzinfo=None)}
             for e in detection.events if e.kind in QUIET_KINDS for r in e.regions for n in e.networks]
    con.register("report_quiet", pa.Table.from_pylist(quiet, schema=pa.schema(
        [("cc", pa.string()), ("asn", pa.string()), ("start_h", pa.timestamp("us")), ("end_h", pa.timestamp("us"))])))
    rows = con.sql(_BLOCKED_SQL, params={"min_blocked": int(min_blocked)}).to_arrow_table().to_pylist()
    blocking_events = [e for e in detection.events if e.kind == "service_blocking"]

    def change_for(r: dict[str, Any]) -> Event | None:
        return next((e for e in blocking_events if r["input"] in e.inputs and r["probe_asn"] in e.networks
                     and r["probe_cc"] in e.regions), None)

    # a block that came and went is reported even when short next to the whole period
    rows = [r for r in rows if r["confirmed"] or r["blocked"] * 2 > r["n"] or r["blocked"] >= min_blocked_share * r["n"]
            or change_for(r) is not None]
    for r in rows:
        r["first_blocked"], r["last_blocked"] = _ts(r.pop("first_blocked_us")), _ts(r.pop("last_blocked_us"))
        first_measured = _ts(r.pop("first_measured_us"))
        change = change_for(r)
        if change is not None:
            r["since"] = f"{change.start:%Y-%m-%d %H:%M} UTC (change detected)" + (
                f", until {change.end:%Y-%m-%d %H:%M} UTC" if change.end else "")
        elif first_measured and r["first_blocked"] and r["first_blocked"] - first_measured < dt.timedelta(hours=24):
            r["since"] = f"at least {first_measured:%Y-%m-%d %H:%M} UTC (blocked from the first measurements)"
        else:
            r["since"] = f"{r['first_blocked']:%Y-%m-%d %H:%M} UTC (first blocked measurement)"
        r["still_blocked"] = r["last_status"] == "blocked"
    overview = con.sql("""
        SELECT count(*) FILTER (WHERE role = 'probe') AS probe_measurements,
               count(*) FILTER (WHERE role = 'control') AS control_measurements,
               count(DISTINCT cc) FILTER (WHERE role = 'probe') AS countries,
               count(DISTINCT cc || asn) FILTER (WHERE role = 'probe') AS networks,
               count(DISTINCT cc || asn || vantage) FILTER (WHERE role = 'probe') AS vantage_points,
               strftime(min(hour), '%Y-%m-%d %H:%M') AS first_hour, strftime(max(hour), '%Y-%m-%d %H:%M') AS last_hour
        FROM report_facts""").to_arrow_table().to_pylist()[0]
    overview["verdicts"] = verdicts.table.num_rows
    statuses = verdicts.table.column("status").to_pylist()
    overview["blocked_verdicts"] = sum(1 for s in statuses if s == "blocked")
    overview["no_connectivity_verdicts"] = sum(1 for s in statuses if s == "no_connectivity")
    series = _over_time(con.sql("""SELECT measurement_start_time AS t, probe_cc, status FROM report_verdicts
                                    WHERE status IN ('blocked', 'down')"""), "probe_cc, status")
    reach = _over_time(con.sql("""SELECT measurement_start_time AS t, experiment,
                                         CASE WHEN status = 'ok' THEN 'reachable' WHEN status IN ('blocked', 'down')
                                              THEN 'not reachable' ELSE 'not judged' END AS outcome
                                  FROM report_verdicts WHERE list_contains($tunnels, experiment)
                                    OR method LIKE 'vpn.%' OR method LIKE '%.vpn%'""",
                               params={"tunnels": list(_TUNNEL_MESSAGING)}), "experiment, outcome")
    methods = con.sql("""SELECT coalesce(method, '?') AS method, probe_cc, count(*) AS n FROM report_verdicts
                         WHERE status = 'blocked' GROUP BY ALL""").to_arrow_table()
    overview["blocked_set_aside"] = con.sql(_SET_ASIDE_SQL).fetchall()[0][0]
    overview["blocked_reported"] = sum(r["blocked"] for r in rows)
    overview["status_counts"] = dict(sorted(Counter(statuses).items(), key=lambda kv: -kv[1]))
    chart_set = {"Anomalies over time": charts.anomalies_over_time(*series, events=detection.events),
                 "Blocking methods": charts.blocking_methods(methods)}
    if reach[0].num_rows:
        chart_set["Tunnels and messaging apps"] = charts.reachability(*reach)
    data = ReportData(
        title=title or "Vantage anomaly report",
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        sources=[str(s) for s in sources], verdict_source=verdict_source, provenance=describe(verdicts.metadata, public=True),
        overview=overview, blocked=rows,
        detection=detection,
        charts=chart_set,
        event_charts=charts.charts_for_events(detection.hourly, detection.events, detection.input_failures,
                                              limit=max_event_charts),
        network_names=nm.network_names(con),
        messaging=function_summary(verdicts.table),
    )
    return data


# --------------------------------------------------------------------------- rendering


def _fmt_event_time(e: Event) -> tuple[str, str, str]:
    end = f"{e.end:%Y-%m-%d %H:%M}" if e.end else "ongoing"
    dur = f"{e.duration_h:.0f} h" if e.duration_h is not None else "-"
    return f"{e.start:%Y-%m-%d %H:%M}", end, dur


def _short(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1320px;color:#222;padding:0 1em}
h1{margin-bottom:0}.meta{color:#666;font-size:.9em}table{border-collapse:collapse;width:100%;margin:.6em 0 1.4em;font-size:.9em}
th,td{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}th{background:#f4f4f4}
.kind-shutdown{color:#b03a2e;font-weight:600}.kind-service_blocking{color:#b9770e;font-weight:600}
.kind-connectivity_lost{color:#b03a2e;font-weight:600}.kind-site_outage{color:#566573}.kind-probe_fault{color:#7d3c98}figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.85em}.wide{overflow-x:auto}.stats td{border:none;padding:.1em 1em .1em 0}code{font-size:.9em}
"""


def _event_rows(events: Sequence[Event], names: dict[str, str]) -> list[list[str]]:
    rows = []
    for e in events:
        start, end, dur = _fmt_event_time(e)
        what = ", ".join(_short(i) for i in e.inputs[:6]) + (f" (+{len(e.inputs) - 6})" if len(e.inputs) > 6 else "")
        rows.append([e.kind, e.severity, start, end, dur, ", ".join(nm.country_label(r) for r in e.regions),
                     ", ".join(nm.network_label(n, names) for n in e.networks), what,
                     ", ".join(e.methods[:3]), str(e.measurements), str(e.vantage_points), f"{e.confidence:.2f}",
                     e.reason])
    return rows


_EVENT_HEAD = ["kind", "severity", "start (UTC)", "end (UTC)", "duration", "regions", "networks", "targets",
               "methods", "measurements", "vantage points", "confidence", "why"]
_BLOCK_HEAD = ["target", "how (methods)", "since", "blocked / measured", "vantage points", "confirmed",
               "still blocked"]


def ordered_events(events: Sequence[Event]) -> list[Event]:
    """Events in the order a reader needs them: lost connectivity and shutdowns first (they
    explain everything else in their hours), then by start."""
    return sorted(events, key=lambda e: (charts.EVENT_ORDER.get(e.kind, 9), e.start))


# "dns.nxdomain (12), http.blockpage:acme (3)": the aggregate _BLOCKED_SQL writes
_METHOD_COUNT = re.compile(r"(.+?) \((\d+)\)(?:, |$)")


def _methods_in_words(methods: str | None) -> str:
    """Each rule id with its count and, beside it, what the rule means (the site's words)."""
    if not methods:
        return ""
    parts = [f"{m[1]} ({m[2]}): {nm.rule_text(m[1])}" for m in _METHOD_COUNT.finditer(methods)]
    return " ".join(parts) or methods


def _block_row(r: dict[str, Any]) -> list[str]:
    conf = str(r["confirmed"]) + (f" ({', '.join(r['fingerprints'])})" if r["fingerprints"] else "")
    return [r["input"], _methods_in_words(r["methods"]), r["since"], f"{r['blocked']} / {r['n']}", f"{r['blocked_vps']} of {r['vps']}",
            conf, "yes" if r["still_blocked"] else "no"]


def render_html(data: ReportData) -> str:
    e = html.escape
    ov = data.overview
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(data.title)}</title>"
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(data.title)}</h1>",
           f"<p class='meta'>Generated {e(data.generated)} from {e(', '.join(data.sources) or 'datasets')}; "
           f"verdicts: {e(data.verdict_source)}.</p>", "<table class='stats'>"]
    for label, key in (("Period (UTC)", None), ("Probe measurements", "probe_measurements"),
                       ("Control measurements", "control_measurements"), ("Countries", "countries"),
                       ("Networks", "networks"), ("Vantage points", "vantage_points"),
                       ("Blocked verdicts", "blocked_verdicts"), ("No connectivity", "no_connectivity_verdicts")):
        value = f"{ov['first_hour']} – {ov['last_hour']}" if key is None else f"{ov[key]:,}"
        out.append(f"<tr><td>{e(label)}</td><td>{e(value)}</td></tr>")
    out.append("</table>")
    lost = connectivity_findings(data.detection.events)
    if lost:
        out.append(f"<h2>Connectivity lost ({len(lost)})</h2>")
        out.append(f"<p>{e(_LOST_TEXT)}</p>")
        out.append(_html_table(_EVENT_HEAD, _event_rows(lost, data.network_names), kind_col=0))
    out.append("<h2>Charts</h2>")
    for name, png in data.charts.items():
        out.append(_figure(png, name))
    events = ordered_events(data.detection.events)
    out.append(f"<h2>Events ({len(events)})</h2>")
    out.append("<p>Shutdowns (anchors and targets fail together across a network while controls elsewhere "
               "succeed), new blocking (a change in a target's failure rate, dated by CUSUM), site outages "
               "(controls fail too) and probe faults (one vantage point or software version alone).</p>")
    out.append(_html_table(_EVENT_HEAD, _event_rows(events, data.network_names), kind_col=0))
    if data.event_charts:
        out.append("<h3>Event timelines</h3>")
        for ev, png in data.event_charts:
            start, end, _ = _fmt_event_time(ev)
            out.append(_figure(png, f"{ev.kind}: {', '.join(ev.regions)} {', '.join(ev.networks)}, {start} – {end} UTC"))
    out.append("<h2>What is blocked, per country and network</h2>")
    if not data.blocked:
        out.append("<p>No target was blocked in enough measurements to report.</p>")
    for cc in sorted({r["probe_cc"] for r in data.blocked}):
        out.append(f"<h3>{e(nm.country_label(cc))}</h3>")
        for asn in sorted({r["probe_asn"] for r in data.blocked if r["probe_cc"] == cc}):
            rows = [_block_row(r) for r in data.blocked if r["probe_cc"] == cc and r["probe_asn"] == asn]
            out.append(f"<h4>{e(nm.network_label(asn, data.network_names))}</h4>")
            out.append(_html_table(_BLOCK_HEAD, rows))
    if data.messaging:
        out.append("<h2>Messaging apps, per function</h2>")
        out.append(f"<p>{e(_MESSAGING_TEXT)}</p>")
        out.append(_html_table(SUMMARY_HEAD, [summary_cells(g) for g in data.messaging]))
    out.append(f"<h2>Method</h2><p>{e(_METHOD)}</p><p>How these verdicts were made:</p><ul>")
    out += [f"<li>{e(line)}</li>" for line in data.provenance]
    out.append("</ul></body></html>")
    return "\n".join(out)


_MESSAGING_TEXT = ("Signal, Telegram, WhatsApp and Facebook Messenger, per function (registration, messaging, web), "
                   "by OONI's rules: Telegram's and WhatsApp's messaging count as blocked only when every data centre "
                   "or chat endpoint fails, any other function when one of its endpoints fails; a failure the "
                   "control saw too is `down`, not blocking.")

_METHOD = ("Verdicts compare each probe measurement with a control measurement of the same target from an "
           "uncensored network, taken at about the same time; a known blockpage (fingerprint) confirms blocking "
           "without a control. Shutdown signals are per country, network and hour: measurement volume (baseline: "
           "median of the same hour over the previous 7 days), anchor and target success (baseline: median of the "
           "previous 168 hours); warning below 80 % of the baseline, critical below 50 %.")


def _figure(png: bytes, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    cap = html.escape(caption)
    return f"<figure><img src='{uri}' alt='{cap}'><figcaption>{cap}</figcaption></figure>"


def _html_table(head: list[str], rows: list[list[str]], kind_col: int | None = None) -> str:
    e = html.escape
    out = ["<div class='wide'><table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            cls = f" class='kind-{e(c)}'" if i == kind_col else ""
            cells.append(f"<td{cls}>{e(c)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(data: ReportData, output: Path, assets: Path | None = None) -> str:
    """Markdown with the charts written as PNG files into ``assets`` (default ``<name>_files/``
    next to it), linked as ``<name>_files/...``."""
    link_dir = output.stem + "_files"
    assets = assets if assets is not None else output.with_name(link_dir)
    assets.mkdir(parents=True, exist_ok=True)

    def image(png: bytes, name: str, caption: str) -> str:
        (assets / name).write_bytes(png)
        return f"![{caption}]({link_dir}/{name})"

    ov = data.overview
    out = [f"# {data.title}", "", f"Generated {data.generated} from {', '.join(data.sources) or 'datasets'}; "
           f"verdicts: {data.verdict_source}.", "",
           f"Period {ov['first_hour']} – {ov['last_hour']} UTC; {ov['probe_measurements']:,} probe and "
           f"{ov['control_measurements']:,} control measurements; {ov['countries']} countries, {ov['networks']} "
           f"networks, {ov['vantage_points']} vantage points; {ov['blocked_verdicts']:,} blocked verdicts; "
           f"{ov['no_connectivity_verdicts']:,} taken without connectivity.", ""]
    lost = connectivity_findings(data.detection.events)
    if lost:
        out += [f"## Connectivity lost ({len(lost)})", "", _LOST_TEXT, "", _md_table(_EVENT_HEAD, _event_rows(lost, data.network_names)), ""]
    out += ["## Charts", ""]
    for i, (name, png) in enumerate(data.charts.items()):
        out += [image(png, f"chart{i}.png", name), ""]
    out += [f"## Events ({len(data.detection.events)})", "", _md_table(_EVENT_HEAD, _event_rows(ordered_events(data.detection.events), data.network_names)), ""]
    for i, (ev, png) in enumerate(data.event_charts):
        out += [image(png, f"event{i}.png", f"{ev.kind} {', '.join(ev.networks)} {ev.start:%Y-%m-%d %H:%M}"), ""]
    out += ["## What is blocked, per country and network", ""]
    if not data.blocked:
        out.append("No target was blocked in enough measurements to report.")
    for cc in sorted({r["probe_cc"] for r in data.blocked}):
        out += [f"### {nm.country_label(cc)}", ""]
        for asn in sorted({r["probe_asn"] for r in data.blocked if r["probe_cc"] == cc}):
            rows = [_block_row(r) for r in data.blocked if r["probe_cc"] == cc and r["probe_asn"] == asn]
            out += [f"#### {nm.network_label(asn, data.network_names)}", "", _md_table(_BLOCK_HEAD, rows), ""]
    if data.messaging:
        out += ["## Messaging apps, per function", "", _MESSAGING_TEXT, "",
                _md_table(SUMMARY_HEAD, [summary_cells(g) for g in data.messaging]), ""]
    out += ["## Method", "", _METHOD, "", "How these verdicts were made:", ""]
    out += [f"- {line}" for line in data.provenance]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- entry point


def write_report(paths: Sequence[Path | str], output: Path | str | None = None, *, verdicts: Verdicts | None = None,
                 options: AnalysisOptions | None = None, verdict_source: str | None = None,
                 csv: Path | str | None = None, title: str | None = None,
                 detector_config: DetectorConfig | None = None,
                 con: duckdb.DuckDBPyConnection | None = None, site: Path | str | None = None,
                 max_pages: int = 2000) -> ReportResult:
    """Write an HTML (``.html``/``.htm``) or Markdown (``.md``) report over datasets; ``csv``
    also exports the verdict table.

    ``verdicts``: the stage's output (:func:`analysis.pipeline.read_verdicts` of the file
    `vantage analyze` wrote, or its result); without it the report runs that same stage,
    :func:`analysis.pipeline.run_stage`, with ``options``. Every file is written under a
    temporary name and renamed only when all are complete.

    ``site``: also write the static site into that directory (see :mod:`analysis.report.site`):
    a page per country, network and anomalous measurement (up to ``max_pages``), a methodology
    page and CSV/JSON exports; written beside it and swapped in when complete."""
    from analysis.report import site as site_mod

    if output is None and site is None:
        raise ReportError("give an output file, a site directory, or both")
    out = Path(output) if output is not None else None
    suffix = out.suffix.lower() if out is not None else ".html"
    if out is not None and suffix not in (".html", ".htm", ".md"):
        raise ReportError(f"{out}: the report format follows the suffix: .html or .md")
    site_dir = Path(site) if site is not None else None
    if site_dir is not None:
        check_site_dir(site_dir)
    csv_path = Path(csv) if csv is not None else None
    if out is not None:
        check_output(out)
    if csv_path is not None:
        check_output(csv_path)
    computed = verdicts is None
    if verdicts is None:
        verdicts = run_stage(paths, options, written_by="vantage report")
    source = verdict_source or ("computed from the datasets by the verdict stage" if computed else "given verdicts")
    counts = None
    if options is not None and options.engine == "spark":  # the hourly signals summed on the cluster
        from analysis.spark_engine import network_hour_signals_spark, spark_session

        with spark_session(options.spark_master or "local[*]") as spark:
            counts = network_hour_signals_spark(spark, paths)
    own = con is None
    try:
        con = open_measurements(paths, con)
        if not computed:
            check_verdicts_match(con, verdicts.table, source)
        data = build_report_data(con, verdicts, sources=[Path(p).name or str(p) for p in paths], title=title,
                                 verdict_source=source, detector_config=detector_config, counts=counts)
        site_data = site_mod.collect(con, verdicts, max_pages=max_pages) if site_dir is not None else None
    except (duckdb.Error, DatasetError, OSError) as exc:
        raise ReportError(f"cannot read the datasets: {str(exc).splitlines()[0]}") from exc
    finally:
        if own and con is not None:
            con.close()
    pages: list[Path] = []
    if site_dir is not None and site_data is not None:
        with _staged_dir(site_dir) as tmp_site:
            pages = [site_dir / p.relative_to(tmp_site) for p in
                     site_mod.render_site(data, site_data, tmp_site, method_text=_METHOD, lost_text=_LOST_TEXT)]
    if out is not None:
        with _staged(out, csv_path, markdown=suffix == ".md") as (tmp_out, tmp_csv, tmp_assets):
            text = render_html(data) if suffix in (".html", ".htm") else render_markdown(data, out, tmp_assets)
            tmp_out.write_text(text, encoding="utf-8")
            if tmp_csv is not None:
                pacsv.write_csv(flat_verdicts(verdicts.table), tmp_csv)
    elif csv_path is not None:
        with atomic_output(csv_path) as tmp:
            pacsv.write_csv(flat_verdicts(verdicts.table), tmp)
    return ReportResult(out, csv_path, len(data.detection.events), len(data.blocked), verdicts.table.num_rows,
                        site_dir, pages)


def check_site_dir(path: Path) -> None:
    """A site goes into a new or empty directory, or replaces one `--site` wrote before; never
    over someone's other files."""
    if path.exists() and not path.is_dir():
        raise ReportError(f"{path}: is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not (path / site_marker()).exists():
        raise ReportError(f"{path}: directory is not empty and was not written by `vantage report --site`")
    check_output(path / "index.html")


def site_marker() -> str:
    from analysis.report.site import MARKER

    return MARKER


@contextlib.contextmanager
def _staged_dir(final: Path) -> Iterator[Path]:
    """A temporary directory beside ``final``, swapped in when complete; removed on failure."""
    tag = f"{os.getpid()}.tmp"
    tmp = final.with_name(f".{final.name}.{tag}")
    old = final.with_name(f".{final.name}.{tag}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        yield tmp
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _staged(out: Path, csv: Path | None, *, markdown: bool) -> Iterator[tuple[Path, Path | None, Path | None]]:
    """Temporary names for the report, the CSV and the Markdown charts directory; all renamed
    into place after the block succeeds, all removed when it fails: never half a report."""
    tag = f"{os.getpid()}.tmp"
    tmp_out = out.with_name(f".{out.name}.{tag}")
    tmp_csv = csv.with_name(f".{csv.name}.{tag}") if csv is not None else None
    assets = out.with_name(out.stem + "_files")
    tmp_assets = assets.with_name(f".{assets.name}.{tag}") if markdown else None
    staged = [p for p in (tmp_out, tmp_csv, tmp_assets) if p is not None]

    def clean() -> None:
        for p in staged:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink(missing_ok=True)

    try:
        for p in (out, csv):
            if p is not None:
                p.parent.mkdir(parents=True, exist_ok=True)
        yield tmp_out, tmp_csv, tmp_assets
        if tmp_assets is not None:
            old = assets.with_name(f".{assets.name}.{tag}.old")
            if assets.exists():
                os.replace(assets, old)
                staged.append(old)
            os.replace(tmp_assets, assets)
        if tmp_csv is not None and csv is not None:
            os.replace(tmp_csv, csv)
        os.replace(tmp_out, out)
        clean()  # the replaced charts directory
    except OSError as exc:
        clean()
        # name the file asked for, never its temporary name
        final = {str(tmp_out): out, str(tmp_csv): csv, str(tmp_assets): out.with_name(out.stem + "_files")}
        failed = str(exc.filename) if getattr(exc, "filename", None) else ""
        where = next((f for t, f in final.items() if f is not None and failed.startswith(t)), failed or out)
        raise OutputError(f"cannot write {where}: {exc.strerror or exc}") from None
    except BaseException:
        clean()
        raise
