"""Evidence of one anomalous measurement beside its control's: DNS answers (with ASN and
organisation), TCP and TLS outcomes, certificate names and issuer, HTTP status and title, and a
blockpage excerpt with the matched fingerprint marked."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from analysis.db import ident_list
from analysis.fingerprints import Fingerprint

# The control paired with a probe measurement: the helper row made for it (control_for), else the
# nearest control run of the same input and experiment; the verdict stage pairs the same way.
_EVIDENCE_SQL = """
WITH sel AS (SELECT unnest($ids) AS measurement_id),
p AS (SELECT m.* FROM measurements m JOIN sel USING (measurement_id) WHERE m.role = 'probe'
      QUALIFY row_number() OVER (PARTITION BY m.measurement_id) = 1),
direct AS (SELECT control_for AS pid, min(measurement_id) AS cid FROM measurements
           WHERE role = 'control' AND control_for IN (SELECT measurement_id FROM sel) GROUP BY ALL),
near AS (SELECT p.measurement_id AS pid,
                arg_min(c.measurement_id, abs(epoch(c.measurement_start_time) - epoch(p.measurement_start_time))) AS cid
         FROM p JOIN measurements c ON c.role = 'control' AND c.control_for IS NULL AND c.input = p.input
              AND c.experiment = p.experiment
              AND abs(epoch(c.measurement_start_time) - epoch(p.measurement_start_time)) <= $window_s
         GROUP BY ALL)
SELECT p.measurement_id, coalesce(d.cid, n.cid) AS control_id FROM p
LEFT JOIN direct d ON d.pid = p.measurement_id LEFT JOIN near n ON n.pid = p.measurement_id
"""

# The rows of the wanted measurements (either role), one per (measurement, role). Every column is
# there whatever the dataset's age: analysis.db.open_datasets fills the optional ones (quic).
_ROWS_SQL = """
SELECT measurement_id, role, input, experiment, probe_cc, probe_asn, probe_network, measurement_start_time,
       failure, dns, tcp, tls, http, vpn, quic
FROM measurements SEMI JOIN (SELECT unnest($ids::VARCHAR[]) AS measurement_id) USING (measurement_id)
QUALIFY row_number() OVER (PARTITION BY measurement_id, role) = 1
"""


@dataclass
class Evidence:
    probe: dict[str, Any]
    control: dict[str, Any] | None


def load_evidence(con: duckdb.DuckDBPyConnection, ids: Sequence[str], window_h: float = 6.0) -> dict[str, Evidence]:
    """Probe rows of ``ids`` and their controls, from the ``measurements`` view."""
    if not ids:
        return {}
    pairs = con.execute(_EVIDENCE_SQL, {"ids": list(ids), "window_s": float(window_h) * 3600.0}).fetchall()
    wanted = sorted({i for pair in pairs for i in pair if i is not None})
    rows = con.sql(_ROWS_SQL, params={"ids": wanted}).to_arrow_table().to_pylist()
    probes = {r["measurement_id"]: r for r in rows if r["role"] == "probe"}
    controls = {r["measurement_id"]: r for r in rows if r["role"] == "control"}
    _attach_path_traces(con, list(probes.values()))
    return {pid: Evidence(probes[pid], controls.get(cid) if cid else None) for pid, cid in pairs if pid in probes}


_TRACE_COLUMNS = ("input", "probe_cc", "probe_asn", "protocol", "interference_ttl", "interference", "hop_before", "basis")
_TRACES_SQL = f"""
    SELECT {ident_list(_TRACE_COLUMNS)}
    FROM path_traces WHERE interference_ttl IS NOT NULL AND list_contains($inputs, input)
    QUALIFY row_number() OVER (PARTITION BY input, protocol, probe_cc, probe_asn
                               ORDER BY measurement_start_time DESC) = 1"""


def _attach_path_traces(con: duckdb.DuckDBPyConnection, probes: list[dict[str, Any]]) -> None:
    """Each probe row gets ``path_trace``: the latest censor location (`vantage locate`) of its
    input from the same network, when one was found (the path_traces view of
    analysis.db.open_datasets, always there, empty without traces; docs/data-model.md)."""
    if not probes:
        return
    found_rows = con.execute(_TRACES_SQL, {"inputs": sorted({p["input"] for p in probes})}).fetchall()
    rows = [dict(zip(_TRACE_COLUMNS, r, strict=True)) for r in found_rows]
    for p in probes:
        found = [r for r in rows if r["input"] == p["input"] and r["probe_cc"] == p["probe_cc"]
                 and r["probe_asn"] == p["probe_asn"]]
        if found:
            p["path_trace"] = found


def _path_trace(m: dict[str, Any]) -> str:
    return "".join(
        f"<div>{_e(t['protocol'])}: censor at hop {_e(t['interference_ttl'])}"
        f"{(' (after ' + _e(t['hop_before']) + ')') if t.get('hop_before') else ''}, {_e(t['interference'])}"
        f" <small>({_e(t['basis'])})</small></div>"
        for t in m.get("path_trace") or []) or "<em>not located</em>"


class AsnNames:
    """ASN and organisation of an answer: what the answer carries, else the ASN database's."""

    def __init__(self, asn_db: Path | None) -> None:
        self._geo: Any = None
        if asn_db is not None and asn_db.is_file():
            from analysis.geo import GeoError, GeoLookup

            try:
                self._geo = GeoLookup(asn_db)
            except (GeoError, OSError, ValueError):
                self._geo = None

    def __call__(self, answer: dict[str, Any]) -> tuple[str | None, str | None]:
        asn, org = answer.get("asn"), answer.get("as_org_name")
        if (not asn or not org) and self._geo is not None and answer.get("answer_type") in ("A", "AAAA"):
            try:
                info = self._geo.lookup(str(answer.get("value")))
            except Exception:  # noqa: BLE001 - a corrupt database costs the names, never the report
                return asn, org
            asn, org = asn or info.asn, org or info.org
        return asn, org

    def close(self) -> None:
        if self._geo is not None:
            self._geo.close()


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _outcome(failure: str | None) -> str:
    return "<span class='ok'>ok</span>" if not failure else f"<span class='bad'>{_e(failure)}</span>"


def _marked(text: str, fp: Fingerprint | None) -> str:
    """``text`` escaped, the part the fingerprint matched marked."""
    span = find_pattern(fp, text)
    if span is None:
        return _e(text)
    a, b = span
    return _e(text[:a]) + f"<mark>{_e(text[a:b])}</mark>" + _e(text[b:])


def _dns(m: dict[str, Any], names: AsnNames, fp: Fingerprint | None = None) -> str:
    dns_fp = fp if fp is not None and fp.location == "dns" else None
    out = []
    for q in m.get("dns") or []:
        answers = []
        for a in q.get("answers") or []:
            asn, org = names(a)
            who = " · ".join(x for x in (asn, org) if x)
            answers.append(f"{_e(a.get('answer_type'))} {_marked(str(a.get('value') or ''), dns_fp)}"
                           + (f" <small>({_e(who)})</small>" if who else ""))
        via = q.get("engine") if q.get("resolver") in (None, "", q.get("engine")) else f"{q.get('engine')} {q.get('resolver')}"
        head = f"{_e(q.get('query_type'))} {_e(q.get('hostname'))} via {_e(via)} resolver"
        res = "<br>".join(answers) or _outcome(q.get("failure") or (q.get("rcode") if q.get("rcode") not in (None, "NOERROR") else None))
        if q.get("rcode") and q.get("rcode") != "NOERROR" and answers:
            res += f" <small>{_e(q.get('rcode'))}</small>"
        out.append(f"<div><b>{head}</b><br>{res}</div>")
    return "".join(out) or "<em>none</em>"


def _tcp(m: dict[str, Any]) -> str:
    return "".join(f"<div>{_e(c.get('ip'))}:{_e(c.get('port'))} {_outcome(c.get('failure'))}</div>"
                   for c in m.get("tcp") or []) or "<em>none</em>"


def _tls(m: dict[str, Any]) -> str:
    out = []
    for t in m.get("tls") or []:
        cert = ""
        if t.get("peer_cert_names") or t.get("peer_cert_issuer"):
            valid = {True: "valid for the name", False: "NOT valid for the name"}.get(t.get("cert_valid"), "validity unknown")
            cert = (f"<br>certificate subject: {_e(', '.join(t.get('peer_cert_names') or []) or '?')}"
                    f"<br>issuer: {_e(t.get('peer_cert_issuer') or '?')} ({valid})")
        out.append(f"<div>{_e(t.get('ip'))}:{_e(t.get('port'))} SNI {_e(t.get('sni'))} {_outcome(t.get('failure'))}"
                   f"{(' ' + _e(t.get('tls_version'))) if t.get('tls_version') else ''}{cert}</div>")
    return "".join(out) or "<em>none</em>"


def _http(m: dict[str, Any]) -> str:
    out = []
    for h in m.get("http") or []:
        status = f"HTTP {_e(h.get('status_code'))}" if h.get("status_code") is not None else _outcome(h.get("failure"))
        title = f"<br>title: “{_e(h.get('title'))}”" if h.get("title") else ""
        length = f"<br>body: {h.get('body_length'):,} bytes" if h.get("body_length") is not None else ""
        over = " <small>(HTTP/3 over QUIC)</small>" if h.get("http_version") == "HTTP/3" else ""
        out.append(f"<div>{_e(h.get('method') or 'GET')} {_e(h.get('url'))}{over} {status}{title}{length}</div>")
    return "".join(out) or "<em>none</em>"


def _vpn(m: dict[str, Any]) -> str:
    return "".join(f"<div>{_e(v.get('protocol'))} {_e(v.get('endpoint'))} "
                   f"{'handshake completed' if v.get('handshake_ok') else _outcome(v.get('failure') or 'no handshake')}"
                   f"{(' — ' + _e(v.get('detail'))) if v.get('detail') else ''}</div>"
                   for v in m.get("vpn") or []) or "<em>none</em>"


def _quic(m: dict[str, Any]) -> str:
    out = []
    for q in m.get("quic") or []:
        if q.get("failure") is None:
            result = "<span class='ok'>handshake completed</span>" + (f" ({_e(q.get('alpn'))})" if q.get("alpn") else "")
        else:
            result = _outcome(q.get("failure"))
        out.append(f"<div>{_e(q.get('ip'))}:{_e(q.get('port'))} (UDP) SNI {_e(q.get('sni'))} {result}</div>")
    return "".join(out) or "<em>not measured</em>"


def find_pattern(fp: Fingerprint | None, text: str) -> tuple[int, int] | None:
    """Where the fingerprint matches ``text`` (start, end), if it does."""
    if fp is None or not text:
        return None
    if fp.pattern_type == "regexp":
        try:
            m = re.search(fp.pattern, text, fp.regex_flags)
        except re.error:
            return None
        return (m.start(), m.end()) if m and m.end() > m.start() else None
    i = text.find(fp.pattern)
    return (i, i + len(fp.pattern)) if i >= 0 and fp.pattern else None


def _header_lines(h: dict[str, Any], only: str | None = None) -> list[str]:
    return [f"{x.get('name')}: {x.get('value')}" for x in h.get("headers") or []
            if only is None or str(x.get("name", "")).lower() == only]


def blockpage_excerpt(m: dict[str, Any], fp: Fingerprint | None, width: int = 240) -> str | None:
    """The part of a page around the matched fingerprint, the match marked (a header
    fingerprint: the header line); else the page's start."""
    if fp is not None and fp.location.startswith("header"):
        only = fp.location[len("header."):] if fp.location.startswith("header.") else None
        for h in m.get("http") or []:
            for line in _header_lines(h, only):
                value = line.split(": ", 1)[1] if only else line
                span = find_pattern(fp, value)
                if span is not None:
                    off = len(line) - len(value)
                    a, b = span[0] + off, span[1] + off
                    return "header " + _e(line[:a]) + f"<mark>{_e(line[a:b])}</mark>" + _e(line[b:])
    for h in m.get("http") or []:
        body = h.get("body_sample") or ""
        span = find_pattern(fp, body)
        if span is not None:
            a, b = span
            lo, hi = max(0, a - width), min(len(body), b + width)
            return (("…" if lo else "") + html.escape(body[lo:a]) + f"<mark>{html.escape(body[a:b])}</mark>"
                    + html.escape(body[b:hi]) + ("…" if hi < len(body) else ""))
    for h in m.get("http") or []:
        if h.get("body_sample"):
            body = h["body_sample"]
            return html.escape(body[: 2 * width]) + ("…" if len(body) > 2 * width else "")
    return None


def evidence_table(ev: Evidence, names: AsnNames, fp: Fingerprint | None) -> str:
    """Probe and control side by side, one row per layer measured."""
    p, c = ev.probe, ev.control
    layers: list[tuple[str, Callable[[dict[str, Any]], str]]] = [("Measurement failure", lambda m: _outcome(m.get("failure"))), ("DNS", lambda m: _dns(m, names, fp if m is p else None)),
              ("TCP connect", _tcp), ("TLS handshake", _tls), ("HTTP", _http)]
    if p.get("vpn") or (c and c.get("vpn")):
        layers.append(("Tunnel handshake", _vpn))
    if p.get("quic") or (c and c.get("quic")):  # QUIC passed or failed: shown beside TCP/TLS
        layers.append(("QUIC handshake", _quic))
    if p.get("path_trace"):
        layers.append(("Censor on the path", _path_trace))
    rows = ["<table class='evidence'><thead><tr><th>layer</th><th>this measurement (probe)</th>"
            "<th>control (uncensored network)</th></tr></thead><tbody>"]
    for label, fn in layers:
        rows.append(f"<tr><th>{label}</th><td>{fn(p)}</td><td>{fn(c) if c else '<em>no control</em>'}</td></tr>")
    probe_page, control_page = blockpage_excerpt(p, fp), blockpage_excerpt(c, None) if c else None
    if probe_page or control_page:
        def cell(text: str | None) -> str:
            return f"<pre>{text}</pre>" if text else "<em>no page</em>"

        rows.append(f"<tr><th>Page excerpt</th><td>{cell(probe_page)}</td><td>{cell(control_page)}</td></tr>")
    rows.append("</tbody></table>")
    return "".join(rows)
