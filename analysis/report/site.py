"""The report as a static site: an index (totals, events first, summary by country and network),
a page per country and per network, a page per anomalous measurement with its evidence beside the
control's, a methodology page, and CSV/JSON exports. Every link is relative and every image a
local file: the site opens from disk and no request leaves the machine."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from analysis.events import EVENT_SCHEMA, Event
from analysis.fingerprints import Fingerprint
from analysis.pipeline import AnalysisOptions, Verdicts, load_fingerprint_set
from analysis.report import names as nm
from analysis.report.evidence import AsnNames, Evidence, evidence_table, load_evidence

MARKER = ".vantage-site"  # a directory holding it was written here and may be replaced
_E = html.escape

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1320px;color:#222;padding:0 1em;line-height:1.4}
nav{font-size:.9em;margin-bottom:1em}nav a{margin-right:1em}h1{margin:.2em 0}.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;width:100%;margin:.6em 0 1.4em;font-size:.9em}th,td{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left;vertical-align:top}
thead th{background:#f4f4f4}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}.why{min-width:22em;white-space:normal}
.kind-shutdown,.kind-connectivity_lost{color:#b03a2e;font-weight:600}.kind-service_blocking{color:#b9770e;font-weight:600}
.kind-site_outage{color:#566573}.kind-probe_fault{color:#7d3c98}figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.85em}.wide{overflow-x:auto}.ok{color:#1e8449}.bad{color:#b03a2e;font-weight:600}
table.evidence td{width:42%;word-break:break-word}table.evidence th{width:10%}pre{white-space:pre-wrap;word-break:break-word;font-size:.85em;background:#fafafa;padding:.5em;margin:0}
mark{background:#f9e79f;font-weight:600}.total td{font-weight:600;border-top:2px solid #999}.box{background:#f7f9fb;border:1px solid #dde;padding:.6em 1em;margin:1em 0}
"""


@dataclass
class SiteData:
    """What the site needs beyond the summary page's data, read while the datasets are open."""

    evidence: dict[str, Evidence]
    anomalies: list[dict[str, Any]]  # blocked verdict rows that get a page (newest first)
    anomalies_total: int
    network_names: dict[str, str]
    per_country: dict[str, Counter[str]] = field(default_factory=dict)  # cc -> status -> count
    per_network: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)
    fingerprints: dict[str, Fingerprint] = field(default_factory=dict)
    asn_db: Path | None = None


def page_name(measurement_id: str) -> str:
    """The permalink's file name: the measurement id, made safe for any file system."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", measurement_id)[:150] + ".html"


def _slug(*parts: str) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9]", "_", p or "unknown") for p in parts) + ".html"


def collect(con: duckdb.DuckDBPyConnection, verdicts: Verdicts, *, max_pages: int = 2000) -> SiteData:
    """Anomalous measurements (blocked verdicts, up to ``max_pages`` newest), their evidence and
    controls, names and per-country/network status counts."""
    rows = verdicts.table.select(["measurement_id", "input", "experiment", "probe_cc", "probe_asn",
                                  "measurement_start_time", "status", "layer", "method", "confidence",
                                  "confirmed", "fingerprint"]).to_pylist()
    per_country: dict[str, Counter[str]] = {}
    per_network: dict[tuple[str, str], Counter[str]] = {}
    for r in rows:
        per_country.setdefault(r["probe_cc"] or "ZZ", Counter())[r["status"]] += 1
        per_network.setdefault((r["probe_cc"] or "ZZ", r["probe_asn"] or "?"), Counter())[r["status"]] += 1
    blocked = sorted((r for r in rows if r["status"] == "blocked"), key=lambda r: r["measurement_start_time"], reverse=True)
    opts = verdicts.metadata.get("options") or {}
    window = opts.get("control_window_h")
    chosen = blocked[:max_pages]
    evidence = load_evidence(con, [r["measurement_id"] for r in chosen],
                             float(window) if isinstance(window, (int, float)) else 6.0)
    fps: dict[str, Fingerprint] = {}
    try:
        fset, _ = load_fingerprint_set(AnalysisOptions(fingerprint_files=tuple(opts.get("fingerprint_files") or ()),
                                                       use_defaults=bool(opts.get("use_defaults"))))
        fps = {f.name: f for f in fset.fingerprints}
    except Exception:  # noqa: BLE001 - without the set, pages show the page's start instead of the match
        fps = {}
    asn_info = verdicts.metadata.get("asn_db") or {}
    return SiteData(evidence=evidence, anomalies=chosen, anomalies_total=len(blocked),
                    network_names=nm.network_names(con), per_country=per_country, per_network=per_network,
                    fingerprints=fps, asn_db=Path(asn_info["path"]) if asn_info.get("path") else None)


# --------------------------------------------------------------------------- page parts


def _page(title: str, body: list[str], depth: int = 0) -> str:
    up = "../" * depth
    nav = (f"<nav><a href='{up}index.html'>Summary</a><a href='{up}methodology.html'>Methodology</a>"
           f"<a href='{up}findings.csv'>Findings (CSV)</a><a href='{up}findings.json'>(JSON)</a>"
           f"<a href='{up}events.csv'>Events (CSV)</a><a href='{up}events.json'>(JSON)</a></nav>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width,initial-scale=1'><title>{_E(title)}</title><style>{CSS}</style></head>"
            f"<body>{nav}" + "\n".join(body) + "</body></html>")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = (), raw: bool = True,
           cls: str = "") -> str:
    """Cells are HTML already (``raw``) or text to escape."""
    th = "".join(f"<th{' class=n' if i in numeric else ''}>{_E(h)}</th>" for i, h in enumerate(head))
    body = []
    for row in rows:
        tds = "".join(f"<td{' class=n' if i in numeric else ''}>{c if raw else _E(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<div class='wide'><table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _when(t: dt.datetime | None) -> str:
    return f"{t:%Y-%m-%d %H:%M} UTC" if t else "ongoing"


def event_rows(events: Sequence[Event], names: dict[str, str], depth: int = 0) -> list[list[str]]:
    up = "../" * depth
    out = []
    for e in events:
        where = ", ".join(f"<a href='{up}country/{_slug(c)}'>{_E(nm.country_label(c))}</a>" for c in e.regions)
        nets = ", ".join(_E(nm.network_label(n, names)) for n in e.networks[:6]) + (
            f" (+{len(e.networks) - 6})" if len(e.networks) > 6 else "")
        targets = ", ".join(_E(i.split("://", 1)[-1].rstrip("/")) for i in e.inputs[:6]) + (
            f" (+{len(e.inputs) - 6})" if len(e.inputs) > 6 else "")
        dur = f"{e.duration_h:.0f} h" if e.duration_h is not None else "ongoing"
        out.append([f"<span class='kind-{_E(e.kind)}'>{_E(e.kind.replace('_', ' '))}</span>", _E(e.severity),
                    _E(_when(e.start)), _E(_when(e.end)), _E(dur), where, nets, targets, str(e.measurements),
                    f"{e.confidence:.2f}", f"<div class='why'>{_E(e.reason)}</div>"])
    return out


EVENT_HEAD = ["kind", "severity", "start", "end", "duration", "where", "networks", "targets", "measurements",
              "confidence", "why"]


def totals_table(counts: Counter[str] | dict[str, int], extra: Sequence[tuple[str, int]] = ()) -> str:
    """Every probe measurement in exactly one row, the total last: they add up."""
    rows = [[_E(nm.STATUS_WORDS.get(s, s)), f"<span data-status='{_E(s)}'>{n:,}</span>"]
            for s, n in sorted(counts.items(), key=lambda kv: -kv[1])]
    out = _table(["verdict", "measurements"], rows, numeric=(1,))
    out = out.replace("</tbody>", f"<tr class='total'><td>total (every probe measurement)</td><td class=n>"
                                  f"<span data-status='total'>{sum(counts.values()):,}</span></td></tr></tbody>")
    if extra:
        out += "<p>Of the blocked measurements:</p>" + _table(
            ["", "measurements"], [[_E(k), f"<span data-blocked='{i}'>{v:,}</span>"] for i, (k, v) in enumerate(extra)],
            numeric=(1,))
    return out


def finding_rows(rows: Sequence[dict[str, Any]], names: dict[str, str], depth: int) -> list[list[str]]:
    up = "../" * depth
    out = []
    for r in rows:
        rule = nm.rule_of(r["methods"].split(" (", 1)[0] if r["methods"] else None)
        why = nm.plain(rule.explanation) if rule else ""
        fps = ", ".join(r["fingerprints"])
        out.append([_E(r["input"]), f"{_E(r['methods'] or '')}<div class='why'><small>{_E(why)}</small></div>",
                    _E(r["since"]), f"{r['blocked']:,} / {r['n']:,}", f"{r['blocked_vps']} of {r['vps']}",
                    f"{r['confirmed']:,}" + (f" ({_E(fps)})" if fps else ""), "yes" if r["still_blocked"] else "no",
                    f"<a href='{up}network/{_slug(r['probe_cc'], r['probe_asn'])}'>"
                    f"{_E(nm.network_label(r['probe_asn'], names))}</a>"])
    return out


FINDING_HEAD = ["target", "how (rule that fired most)", "since", "blocked / measured", "vantage points",
                "confirmed by a fingerprint", "still blocked", "network"]


def anomaly_rows(rows: Sequence[dict[str, Any]], depth: int) -> list[list[str]]:
    up = "../" * depth
    return [[f"<a href='{up}m/{page_name(r['measurement_id'])}'>{_E(_when(r['measurement_start_time']))}</a>",
             _E(r["input"]), _E(r["experiment"]), _E(nm.rule_text(r["method"])),
             f"{r['confidence']:.2f}" if r["confidence"] is not None else "-", "yes" if r["confirmed"] else "no"]
            for r in rows]


ANOMALY_HEAD = ["when (evidence)", "target", "test", "why it was judged blocked", "confidence", "fingerprint confirmed"]


# --------------------------------------------------------------------------- exports


def findings_records(blocked: Sequence[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for r in blocked:
        out.append({"country": r["probe_cc"], "country_name": nm.country_name(r["probe_cc"]), "network": r["probe_asn"],
                    "network_name": names.get(r["probe_asn"], ""), "target": r["input"], "methods": r["methods"],
                    "since": r["since"], "blocked": r["blocked"], "measured": r["n"], "confirmed": r["confirmed"],
                    "vantage_points_blocked": r["blocked_vps"], "vantage_points": r["vps"],
                    "fingerprints": list(r["fingerprints"]), "still_blocked": r["still_blocked"],
                    "first_blocked": r["first_blocked"].isoformat() if r["first_blocked"] else None,
                    "last_blocked": r["last_blocked"].isoformat() if r["last_blocked"] else None})
    return out


def events_records(events: Sequence[Event]) -> list[dict[str, Any]]:
    """One record per event, the columns of the events table (EVENT_SCHEMA)."""
    out = []
    for e in events:
        rec: dict[str, Any] = {}
        for name in EVENT_SCHEMA.names:
            v = getattr(e, "country" if name == "country" else name, None)
            if isinstance(v, dt.datetime):
                v = v.isoformat()
            elif name == "evidence":
                v = json.dumps(v, sort_keys=True, default=str)
            rec[name] = v
        out.append(rec)
    return out


def to_csv(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in records:
        w.writerow({k: ("; ".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})
    return buf.getvalue()


FINDING_COLUMNS = ["country", "country_name", "network", "network_name", "target", "methods", "since", "blocked",
                   "measured", "confirmed", "vantage_points_blocked", "vantage_points", "fingerprints",
                   "still_blocked", "first_blocked", "last_blocked"]


# --------------------------------------------------------------------------- pages


def render_site(data: Any, site: SiteData, out: Path, *, method_text: str, lost_text: str) -> list[Path]:
    """Write every page, chart and export of the site into ``out`` (an empty directory); return the pages."""
    from analysis.report import connectivity_findings, ordered_events  # the summary's own helpers

    names = site.network_names
    (out / "charts").mkdir()
    (out / "country").mkdir()
    (out / "network").mkdir()
    (out / "m").mkdir()
    pages: list[Path] = []

    def write(rel: str, text: str) -> None:
        p = out / rel
        p.write_text(text, encoding="utf-8")
        if rel.endswith(".html"):
            pages.append(p)

    chart_files = []
    for i, (name, png) in enumerate(data.charts.items()):
        (out / "charts" / f"chart{i}.png").write_bytes(png)
        chart_files.append((f"charts/chart{i}.png", name))
    event_files = []
    for i, (ev, png) in enumerate(data.event_charts):
        (out / "charts" / f"event{i}.png").write_bytes(png)
        event_files.append((f"charts/event{i}.png", ev))

    def figure(src: str, caption: str) -> str:
        return f"<figure><img src='{_E(src)}' alt='{_E(caption)}'><figcaption>{_E(caption)}</figcaption></figure>"

    events = ordered_events(data.detection.events)
    ov = data.overview
    counts = Counter(ov["status_counts"])
    blocked_total = counts.get("blocked", 0)
    extra = [("reported below, per country and network", ov["blocked_reported"]),
             ("inside a shutdown, lost connectivity or probe fault of their network (set aside)", ov["blocked_set_aside"]),
             ("below the reporting threshold (too few to tell from noise)",
              blocked_total - ov["blocked_reported"] - ov["blocked_set_aside"])]

    # ---- index
    body = [f"<h1>{_E(data.title)}</h1>",
            f"<p class='meta'>Generated {_E(data.generated)} from {_E(', '.join(data.sources) or 'datasets')}. "
            f"Period {_E(ov['first_hour'] or '?')} – {_E(ov['last_hour'] or '?')} UTC; {ov['countries']} countries, "
            f"{ov['networks']} networks, {ov['vantage_points']} vantage points; {ov['control_measurements']:,} "
            "control measurements from uncensored networks.</p>"]
    lost = connectivity_findings(data.detection.events)
    if lost:
        body += [f"<h2>Connectivity lost ({len(lost)})</h2><p>{_E(lost_text)}</p>",
                 _table(EVENT_HEAD, event_rows(ordered_events(lost), names), numeric=(8, 9))]
    body += [f"<h2>Events ({len(events)})</h2>",
             "<p>Shutdowns, new blocking, site outages and probe faults found in the measurements over time.</p>",
             _table(EVENT_HEAD, event_rows(events, names), numeric=(8, 9)) if events else "<p>No event was found.</p>"]
    by_country = []
    for cc in sorted(site.per_country, key=lambda c: nm.country_name(c)):
        c = site.per_country[cc]
        findings = [r for r in data.blocked if r["probe_cc"] == cc]
        by_country.append([f"<a href='country/{_slug(cc)}'>{_E(nm.country_label(cc))}</a>",
                           str(sum(1 for k in site.per_network if k[0] == cc)), f"{sum(c.values()):,}",
                           f"{c.get('blocked', 0):,}", str(len(findings)),
                           str(sum(1 for e in events if cc in e.regions))])
    body += ["<h2>By country</h2>", _table(["country", "networks", "measurements", "blocked", "targets reported blocked",
                                            "events"], by_country, numeric=(1, 2, 3, 4, 5))]
    by_net = []
    for (cc, asn), c in sorted(site.per_network.items(), key=lambda kv: (nm.country_name(kv[0][0]), kv[0][1])):
        by_net.append([f"<a href='network/{_slug(cc, asn)}'>{_E(nm.network_label(asn, names))}</a>",
                       _E(nm.country_name(cc)), f"{sum(c.values()):,}", f"{c.get('blocked', 0):,}",
                       str(sum(1 for r in data.blocked if r["probe_cc"] == cc and r["probe_asn"] == asn))])
    body += ["<h2>By network</h2>", _table(["network", "country", "measurements", "blocked", "targets reported blocked"],
                                           by_net, numeric=(2, 3, 4))]
    body += ["<h2>What was judged, and what could not be</h2>",
             "<p>Every probe measurement has exactly one verdict; those not judged are counted, not dropped.</p>",
             totals_table(counts, extra)]
    body += ["<h2>Charts</h2>"] + [figure(src, name) for src, name in chart_files]
    if event_files:
        body.append("<h3>Event timelines</h3>")
        body += [figure(src, f"{ev.kind.replace('_', ' ')}: {', '.join(nm.country_name(r) for r in ev.regions)}, "
                              f"{', '.join(nm.network_label(n, names) for n in ev.networks[:6])}, from {_when(ev.start)}")
                 for src, ev in event_files]
    shown = len(site.anomalies)
    body.append(f"<h2>Anomalous measurements ({site.anomalies_total:,})</h2><p>Each links to its evidence beside the "
                "control's" + (f"; the newest {shown:,} have a page, all are in the verdicts CSV" if shown < site.anomalies_total
                               else "") + ".</p>")
    body.append(_table(ANOMALY_HEAD, anomaly_rows(site.anomalies[:200], 0)))
    if shown > 200:
        body.append("<p>More on each country's and network's page.</p>")
    write("index.html", _page(data.title, body))

    # ---- per country
    for cc in site.per_country:
        c = site.per_country[cc]
        nets = sorted(k for k in site.per_network if k[0] == cc)
        evs = [e for e in events if cc in e.regions]
        body = [f"<h1>{_E(nm.country_label(cc))}</h1>", "<h2>Events</h2>",
                _table(EVENT_HEAD, event_rows(evs, names, 1), numeric=(8, 9)) if evs else "<p>No event.</p>",
                "<h2>Networks</h2>",
                _table(["network", "measurements", "blocked"],
                       [[f"<a href='../network/{_slug(*k)}'>{_E(nm.network_label(k[1], names))}</a>",
                         f"{sum(site.per_network[k].values()):,}", f"{site.per_network[k].get('blocked', 0):,}"] for k in nets],
                       numeric=(1, 2)),
                "<h2>What is blocked</h2>"]
        rows = [r for r in data.blocked if r["probe_cc"] == cc]
        body.append(_table(FINDING_HEAD, finding_rows(rows, names, 1), numeric=(3,)) if rows
                    else "<p>No target was blocked in enough measurements to report.</p>")
        body += ["<h2>What was judged</h2>", totals_table(c)]
        anomalies = [r for r in site.anomalies if r["probe_cc"] == cc]
        body += [f"<h2>Anomalous measurements ({c.get('blocked', 0):,})</h2>", _table(ANOMALY_HEAD, anomaly_rows(anomalies[:500], 1))]
        write(f"country/{_slug(cc)}", _page(f"{nm.country_name(cc)} — {data.title}", body, 1))

    # ---- per network
    for (cc, asn), c in site.per_network.items():
        label = nm.network_label(asn, names)
        evs = [e for e in events if cc in e.regions and asn in e.networks]
        rows = [r for r in data.blocked if r["probe_cc"] == cc and r["probe_asn"] == asn]
        anomalies = [r for r in site.anomalies if r["probe_cc"] == cc and (r["probe_asn"] or "?") == asn]
        body = [f"<h1>{_E(label)}</h1>", f"<p class='meta'>in <a href='../country/{_slug(cc)}'>{_E(nm.country_label(cc))}</a></p>",
                "<h2>Events</h2>", _table(EVENT_HEAD, event_rows(evs, names, 1), numeric=(8, 9)) if evs else "<p>No event.</p>",
                "<h2>What is blocked</h2>",
                _table(FINDING_HEAD, finding_rows(rows, names, 1), numeric=(3,)) if rows
                else "<p>No target was blocked in enough measurements to report.</p>",
                "<h2>What was judged</h2>", totals_table(c),
                f"<h2>Anomalous measurements ({c.get('blocked', 0):,})</h2>", _table(ANOMALY_HEAD, anomaly_rows(anomalies[:500], 1))]
        write(f"network/{_slug(cc, asn)}", _page(f"{label} — {data.title}", body, 1))

    # ---- per anomalous measurement
    asn_names = AsnNames(site.asn_db)
    try:
        for r in site.anomalies:
            ev = site.evidence.get(r["measurement_id"])
            fp = site.fingerprints.get(r["fingerprint"] or "")
            rule = nm.rule_of(r["method"])
            facts = [("Target", _E(r["input"])), ("Test", _E(r["experiment"])), ("When", _E(_when(r["measurement_start_time"]))),
                     ("Where", f"<a href='../country/{_slug(r['probe_cc'])}'>{_E(nm.country_label(r['probe_cc']))}</a>, "
                               f"<a href='../network/{_slug(r['probe_cc'], r['probe_asn'] or '?')}'>"
                               f"{_E(nm.network_label(r['probe_asn'], names))}</a>"),
                     ("Verdict", "blocked" + (f" at the {_E(r['layer'])} layer" if r["layer"] else "")),
                     ("Why", _E(nm.rule_text(r["method"]))),
                     ("Rule", _E(rule.id) if rule else "-"),
                     ("Confidence", f"{r['confidence']:.2f}" if r["confidence"] is not None else "-"),
                     ("Confirmed by a blockpage fingerprint", f"yes: {_E(r['fingerprint'])}" if r["confirmed"] else "no"),
                     ("Measurement id (permalink)", f"<a href='{page_name(r['measurement_id'])}'>{_E(r['measurement_id'])}</a>")]
            body = [f"<h1>{_E(r['input'])}</h1>",
                    "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</table>",
                    "<h2>Evidence beside the control's</h2>",
                    evidence_table(ev, asn_names, fp) if ev else "<p>The measurement's records were not found.</p>"]
            if ev and ev.control is None:
                body.append("<p>No control measured this target within the control window.</p>")
            write(f"m/{page_name(r['measurement_id'])}", _page(f"{r['input']} — {data.title}", body, 1))
    finally:
        asn_names.close()

    # ---- methodology
    body = ["<h1>Methodology</h1>", f"<p>{_E(method_text)}</p>",
            "<h2>How these verdicts were made</h2><ul>" + "".join(f"<li>{_E(line)}</li>" for line in data.provenance) + "</ul>",
            "<h2>Reporting threshold</h2><p>A target is reported blocked in a network when a blockpage fingerprint "
            "confirmed at least one measurement, when more than half of its measurements were blocked, when at least "
            "10 % were (with at least 3), or when the change detector dated a new block. Measurements taken during a "
            "shutdown, lost connectivity or a probe fault of their network are set aside.</p>",
            "<h2>The rules, in the order they are tried</h2>",
            _table(["rule", "verdict", "layer", "confidence", "what it means"],
                   [[_E(rr.id), _E(rr.status), _E(rr.layer or "-"),
                     "the fingerprint's" if rr.confidence is None else f"{rr.confidence:.1f}", _E(nm.plain(rr.explanation))]
                    for rr in nm.rule_table()])]
    write("methodology.html", _page(f"Methodology — {data.title}", body))

    # ---- exports
    findings = findings_records(data.blocked, names)
    write("findings.csv", to_csv(findings, FINDING_COLUMNS))
    write("findings.json", json.dumps(findings, indent=1, default=str))
    evrecs = events_records(events)
    write("events.csv", to_csv(evrecs, EVENT_SCHEMA.names))
    write("events.json", json.dumps(evrecs, indent=1, default=str))
    (out / MARKER).write_text("written by vantage report --site\n", encoding="utf-8")
    return pages
