"""The verdict rules: the rule table (id, status, layer, confidence, explanation), the
per-measurement features and control pairing in SQL, and the decision tree built from the table.

Every statement works on whole tables (DuckDB vectorised list lambdas and joins), never row by
row in Python. Every WHEN of the decision tree fires one rule of ``RULES`` (``$rule:<id>``
tokens and ``$family:<prefix>(<failure expr>)`` choices are filled in from the table by
``decision_sql``; an id not in the table is an error), so every verdict's ``method`` names a
rule that docs/analysis.md explains (the docs' table is generated from ``RULES``; a test keeps
them in step).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from analysis.throughput import THROTTLE_FACTOR


@dataclass(frozen=True, slots=True)
class Rule:
    """One decision rule, the habit of ooni/data's rule tables: the verdict it gives and why."""

    id: str  # the verdict's ``method`` (http.blockpage adds ":<fingerprint name>")
    status: str
    layer: str | None
    confidence: float | None  # None: the matched fingerprint's confidence
    explanation: str
    # For a failure family (tcp.*, tls.*): the probe failures this rule names (LIKE patterns).
    failures: tuple[str, ...] = ()


# In the order the decision tree (DECISION_TREE below) tries them.
RULES: tuple[Rule, ...] = (
    # -- before any per-target rule
    Rule("connectivity.lost", "no_connectivity", None, 0.9,
         "The vantage point had no network in that hour (analysis/connectivity.py) and this "
         "measurement did not reach its target: not evidence about the target."),
    Rule("probe_failure.measurement", "probe_failure", None, 1.0,
         "The measurement could not run at all (its `failure` is set)."),
    # -- fingerprints: need no control
    Rule("dns.blockpage_ip", "blocked", "dns", None,
         "A DNS answer (address or CNAME, any resolver) matches a DNS blockpage fingerprint."),
    Rule("http.blockpage", "blocked", "http-diff", None,
         "An HTTP body or header of any hop matches a blockpage fingerprint (layer `dns` when "
         "the answers are foreign to the control's); the method ends with `:<fingerprint>`."),
    # -- tunnels
    Rule("ok.vpn_handshake", "ok", None, 0.9, "The tunnel handshake completed."),
    Rule("no_control.vpn", "no_control", None, 0.0,
         "The tunnel handshake failed and no control measured the endpoint."),
    Rule("vpn.no_answer_after_first", "blocked", "vpn", 0.8,
         "Replies stopped after the first (typical of DPI) while the control's handshake completed."),
    Rule("vpn.handshake_failure", "blocked", "vpn", 0.8,
         "Something answered, but not with a handshake reply, while the control's handshake completed.",
         ("vpn_handshake_failure",)),
    Rule("vpn.reset", "blocked", "vpn", 0.8, "The handshake was reset while the control's completed.",
         ("connection_reset",)),
    Rule("vpn.refused", "blocked", "vpn", 0.8, "The connection was refused while the control's handshake completed.",
         ("connection_refused",)),
    Rule("vpn.timeout", "blocked", "vpn", 0.8, "Nothing came back while the control's handshake completed.",
         ("generic_timeout",)),
    Rule("vpn.failure", "blocked", "vpn", 0.8, "The handshake failed otherwise while the control's completed."),
    Rule("down.vpn_both_failed", "down", None, 0.7, "The handshake failed at the control too."),
    # -- throughput (throttling; the evidence and its thresholds: analysis/throughput.py)
    Rule("no_control.throughput", "no_control", None, 0.0,
         "A download with no usable control download of the same target (none, offline, or it failed)."),
    Rule("http.download_failure", "blocked", "http-failure", 0.6,
         "The download failed (reset, timeout, early close) while the control's completed."),
    Rule("down.throughput_both_failed", "down", None, 0.7, "The download failed at the control too."),
    Rule("probe_failure.download_interrupted", "probe_failure", None, 1.0,
         "The probe cancelled its own download (failure `interrupted`: run budget or Ctrl-C)."),
    Rule("ok.throughput_too_short", "ok", None, 0.3,
         "The download was too short to judge speed (under 2 s or 16 KiB of transfer: TCP slow start "
         "dominates); the target arrived."),
    Rule("ok.throughput_like_control", "ok", None, 0.8,
         "The download was less than 4 times slower than the control's of the same target (a slow "
         "server is slow at the control too). `throttle_factor`: the slowdown measured."),
    Rule("no_control.throughput_link", "no_control", None, 0.0,
         "At least 4 times slower than at the control, but the network measured no other host within "
         "an hour: a slow link cannot be told from throttling."),
    Rule("ok.throughput_slow_link", "ok", None, 0.6,
         "Slower than at the control, but other hosts were as slow from the same network within the "
         "hour: the link is slow, not the target."),
    Rule("ok.throughput_far", "ok", None, 0.5,
         "Slower than the network's other hosts, but its time to first byte is longer by about as "
         "much: a longer round trip (TCP's rate falls with it), not a shaper."),
    Rule("throttled.onset", "throttled", None, 0.9,
         "At least 4 times slower than at the control AND than other hosts from the same network "
         "within the hour, and than this target from this network in the past 30 days: throttled, "
         "with an onset. `throttle_factor`: the smaller of the control and link factors."),
    Rule("throttled.slowdown", "throttled", None, 0.7,
         "At least 4 times slower than at the control AND than other hosts from the same network "
         "within the hour (a long enough download): throttled. `throttle_factor`: the smaller of "
         "the two factors."),
    # -- messaging apps (analysis/messaging.py judges each function by OONI's rules; these name the app's verdict)
    Rule("messaging.dns", "blocked", "dns", 0.7,
         "A function of the app (registration, messaging, web) failed by OONI's rule (Telegram's and WhatsApp's "
         "messaging: every endpoint; any other: one endpoint), first at DNS (no address, or answers outside the "
         "app's network), and the control reached that endpoint, or no control measured the app (OONI's own rule: "
         "the apps' always-on servers need none; the per-function row's `control` is then null)."),
    Rule("messaging.tls", "blocked", "tls", 0.7,
         "As messaging.dns, the first blocked function's endpoints failing at the TLS handshake (reset by SNI, "
         "a certificate the app does not trust)."),
    Rule("messaging.http", "blocked", "http-failure", 0.7,
         "As messaging.dns, the first blocked function's endpoints connecting but the GET getting no (or, WhatsApp "
         "Web's cleartext GET, a non-redirect) response."),
    Rule("messaging.tcp", "blocked", "tcp_ip", 0.7,
         "As messaging.dns, the first blocked function's endpoints failing to connect (dropped by IP, reset, refused)."),
    Rule("probe_failure.messaging_interrupted", "probe_failure", None, 1.0,
         "The probe cancelled an endpoint's step (run budget, Ctrl-C) and no function failed otherwise."),
    Rule("down.messaging", "down", None, 0.7,
         "A function failed by OONI's rule, but its failed endpoints failed at the control too: the service (or "
         "a stale list entry) is down, not censored."),
    Rule("ok.messaging", "ok", None, 0.8,
         "Every function of the app worked by OONI's rule (one chat endpoint or data centre is enough)."),
    # -- injection
    Rule("dns.injected", "blocked", "dns", 0.9,
         "A reply came for the injection check (a query where no resolver runs), or a late reply "
         "carried different answers."),
    # -- OONI's null cases
    Rule("ok.https_no_control", "ok", None, 0.8,
         "No usable control, but the page arrived over HTTPS that validated for the target."),
    Rule("no_control.none", "no_control", None, 0.0, "No control measured this input within the window."),
    Rule("no_control.control_offline", "no_control", None, 0.0,
         "The control's own vantage point had no network then (analysis/connectivity.py)."),
    Rule("no_control.control_failed", "no_control", None, 0.0,
         "The control could not run (its `failure` is set, or it observed nothing): OONI's `null`."),
    # -- DNS
    Rule("dns.bogon", "blocked", "dns", 0.9,
         "A private/loopback/reserved answer for the measured host that the control did not get "
         "(IANA special-purpose, minus --public-net)."),
    Rule("dns.nxdomain_ctrl_ok", "blocked", "dns", 0.8,
         "The target's A query got NXDOMAIN while the control resolved it."),
    Rule("dns.failure_ctrl_ok", "blocked", "dns", 0.8,
         "The target's A query failed (DNS error or timeout) while the control resolved it."),
    Rule("dns.no_answer_ctrl_ok", "blocked", "dns", 0.6,
         "No resolver gave the probe an address and one query failed otherwise (another type, a "
         "DoH transport error) while the control resolved the name."),
    Rule("probe_failure.interrupted", "probe_failure", None, 1.0,
         "The probe cancelled its own step (failure `interrupted`: run budget or Ctrl-C) and "
         "nothing else decided (tried after the DNS rules, and again before down.both_failed): "
         "OONI's `null`, never blocking."),
    Rule("down.dns_both_failed", "down", None, 0.8, "Nothing resolved at the probe nor at the control."),
    Rule("dns.answer_ctrl_nxdomain", "blocked", "dns", 0.6,
         "The probe got addresses for a name the control found does not exist (ghost answers)."),
    Rule("dns.inconsistent", "blocked", "dns", 0.7,
         "Answers the control does not vouch for (no shared address, ASN, validated TLS) and a "
         "connection or the fetch failed, or the page differs from the control's."),
    # -- quic (HTTP/3 over QUIC, a step of web_connectivity for https targets). Judged only where
    # the page arrived over validated HTTPS (TCP/TLS/HTTP work at the probe) and a QUIC handshake
    # of the control completed: a server without QUIC fails at both sides and is no evidence.
    Rule("quic.timeout", "blocked", "quic", 0.8,
         "No QUIC answer (UDP or the QUIC Initial dropped: aioquic retransmits the Initial for the "
         "whole step) while the control's QUIC handshake completed and TCP/TLS/HTTP worked at the probe.",
         ("generic_timeout",)),
    Rule("quic.refused", "blocked", "quic", 0.8,
         "QUIC refused (ICMP port unreachable, a REJECT rule, or CONNECTION_REFUSED) while the "
         "control's completed and TCP/TLS/HTTP worked at the probe.", ("connection_refused",)),
    Rule("quic.unreachable", "blocked", "quic", 0.8,
         "No route for UDP to the site's address (IPv4) while the control's QUIC handshake completed "
         "and TCP/TLS/HTTP worked at the probe.", ("host_unreachable", "network_unreachable")),
    Rule("quic.reset", "blocked", "quic", 0.8,
         "The QUIC connection was closed under the handshake while the control's completed and "
         "TCP/TLS/HTTP worked at the probe.", ("connection_reset", "eof")),
    Rule("quic.handshake_failure", "blocked", "quic", 0.8,
         "The QUIC handshake failed (a TLS alert, or no common QUIC version) while the control's "
         "completed and TCP/TLS/HTTP worked at the probe.",
         ("tls_handshake_failure", "quic_version_negotiation_failure")),
    Rule("quic.invalid_cert", "blocked", "quic", 0.8,
         "A certificate over QUIC that does not validate for the target while the control's "
         "validated and TCP/TLS/HTTP worked at the probe.", ("ssl\\_%",)),
    Rule("quic.failure", "blocked", "quic", 0.8,
         "The QUIC handshake failed otherwise while the control's completed and TCP/TLS/HTTP worked at the probe."),
    # -- page arrived
    Rule("ok.https_validated", "ok", None, 0.9, "The page arrived over HTTPS that validated for the target."),
    Rule("dns.inconsistent_no_ctrl_page", "blocked", "dns", 0.5,
         "The page arrived over HTTP from answers the control does not vouch for, and the control got no page."),
    Rule("ok.http_no_ctrl_page", "ok", None, 0.6, "The page arrived over HTTP; the control got no page to compare."),
    Rule("dns.foreign_page_diff", "blocked", "dns", 0.6,
         "The page differs from the control's and came from an answer outside the control's "
         "addresses and networks (a TLS-relaying box serving its own cleartext page)."),
    Rule("http.status_diff", "blocked", "http-diff", 0.6, "The HTTP status code differs from the control's."),
    Rule("http.body_diff", "blocked", "http-diff", 0.6,
         "Same status; body length outside OONI's 70 % proportion, and headers and title differ."),
    Rule("http.title_diff", "blocked", "http-diff", 0.6, "Same status; the titles differ (and body and headers)."),
    Rule("http.header_diff", "blocked", "http-diff", 0.6, "Same status; the uncommon headers differ (and body and title)."),
    Rule("ok.http_matches", "ok", None, 0.9, "The page matches the control's (OONI's HTTP comparison)."),
    # -- connections
    # -- quic, the reverse: TCP or TLS blocked while QUIC to the site passed at the probe. The
    # verdict stays the TCP/TLS one (layer and status); the rule says QUIC passed.
    Rule("tcp.blocked_quic_ok", "blocked", "tcp_ip", 0.8,
         "A TCP connect failed where the control connected, while a QUIC handshake with the site "
         "completed at the probe: TCP is blocked, HTTP/3 over UDP passes."),
    Rule("tls.blocked_quic_ok", "blocked", "tls", 0.8,
         "The TLS handshake failed where the control's completed, while a QUIC handshake with the "
         "same SNI completed at the probe: TLS over TCP is blocked, HTTP/3 over UDP passes."),
    Rule("tcp.reset", "blocked", "tcp_ip", 0.8, "A TCP connect was reset where the control connected.",
         ("connection_reset",)),
    Rule("tcp.timeout", "blocked", "tcp_ip", 0.8, "A TCP connect timed out where the control connected.",
         ("generic_timeout",)),
    Rule("tcp.refused", "blocked", "tcp_ip", 0.8, "A TCP connect was refused where the control connected.",
         ("connection_refused",)),
    Rule("tcp.eof", "blocked", "tcp_ip", 0.8, "A TCP connect saw EOF where the control connected.", ("eof",)),
    Rule("tcp.unreachable", "blocked", "tcp_ip", 0.8,
         "No route to the site's address (IPv4) where the control connected.",
         ("host_unreachable", "network_unreachable")),
    Rule("tcp.failure", "blocked", "tcp_ip", 0.8, "A TCP connect failed otherwise where the control connected."),
    Rule("tls.reset_sni", "blocked", "tls", 0.8,
         "The TLS handshake with the target's SNI was reset where the control's completed.", ("connection_reset",)),
    Rule("tls.timeout", "blocked", "tls", 0.8, "The TLS handshake timed out where the control's completed.",
         ("generic_timeout",)),
    Rule("tls.refused", "blocked", "tls", 0.8, "The TLS connection was refused where the control's completed.",
         ("connection_refused",)),
    Rule("tls.eof", "blocked", "tls", 0.8, "The TLS handshake saw EOF where the control's completed.", ("eof",)),
    Rule("tls.unreachable", "blocked", "tls", 0.8, "No route during the TLS step where the control's completed.",
         ("host_unreachable", "network_unreachable")),
    Rule("tls.invalid_cert", "blocked", "tls", 0.8,
         "A certificate that does not validate for the target (interception) where the control's validated.",
         ("ssl\\_%",)),
    Rule("tls.failure", "blocked", "tls", 0.8, "The TLS handshake failed otherwise where the control's completed."),
    Rule("dns.redirect_nxdomain_ctrl_ok", "blocked", "dns", 0.7,
         "A redirect hop's name got NXDOMAIN while the control fetched the page."),
    Rule("dns.redirect_failure_ctrl_ok", "blocked", "dns", 0.7,
         "A redirect hop's name failed to resolve while the control fetched the page."),
    Rule("http.failure", "blocked", "http-failure", 0.7, "The HTTP fetch failed while the control's succeeded."),
    Rule("down.both_failed", "down", None, 0.8, "The same step failed at the control too (TCP, TLS or HTTP)."),
    Rule("dns.inconsistent_dns_only", "blocked", "dns", 0.5,
         "Answers the control does not vouch for, and nothing else was measured (dns_consistency)."),
    Rule("ok.nothing_failed", "ok", None, 0.7, "Nothing failed and nothing differed."),
)  # fmt: skip

RULES_BY_ID: dict[str, Rule] = {r.id: r for r in RULES}
assert len(RULES_BY_ID) == len(RULES), "duplicate rule id"


def _sql_str(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def rule_sql(rule_id: str) -> str:
    """The decision tree's value for one rule: [status, layer, id, confidence] as SQL."""
    try:
        r = RULES_BY_ID[rule_id]
    except KeyError:
        raise ValueError(f"the decision tree names rule {rule_id!r}, which is not in RULES") from None
    conf = None if r.confidence is None else repr(float(r.confidence))
    return f"[{_sql_str(r.status)}, {_sql_str(r.layer)}, {_sql_str(r.id)}, {_sql_str(conf)}]"


def family_sql(prefix: str, expr: str) -> str:
    """A CASE choosing the rule of a failure family (``tcp``, ``tls``) from the failure string
    ``expr``: each rule of the family with ``failures`` in table order, then ``<prefix>.failure``."""
    whens = []
    for r in RULES:
        if r.id.startswith(prefix + ".") and r.failures:
            cond = " OR ".join(f"{expr} LIKE {_sql_str(f)} ESCAPE '\\'" if "%" in f else f"{expr} = {_sql_str(f)}"
                               for f in r.failures)
            whens.append(f"WHEN {cond} THEN {rule_sql(r.id)}")
    return f"CASE {' '.join(whens)} ELSE {rule_sql(prefix + '.failure')} END"


_TOKEN = re.compile(r"\$rule:([a-z0-9_.]+)|\$family:([a-z]+)\(([^()]*)\)")


def fill_rules(sql: str) -> str:
    """Replace the ``$rule:<id>`` and ``$family:<prefix>(<expr>)`` tokens of a decision tree."""
    def sub(m: re.Match[str]) -> str:
        if m.group(1):
            return rule_sql(m.group(1))
        return family_sql(m.group(2), m.group(3))

    return _TOKEN.sub(sub, sql)


def fired_rule_ids(sql: str) -> set[str]:
    """The rule ids a decision tree can fire (its tokens, families expanded)."""
    out: set[str] = set()
    for m in _TOKEN.finditer(sql):
        if m.group(1):
            out.add(m.group(1))
        else:
            out |= {r.id for r in RULES if r.id.startswith(m.group(2) + ".") and (r.failures or r.id.endswith(".failure"))}
    return out


def rules_markdown() -> str:
    """The rule table for docs/analysis.md (between its BEGIN/END RULES markers)."""
    lines = ["| rule (`method`) | status | layer | confidence | when |", "|---|---|---|---|---|"]
    for r in RULES:
        conf = "fingerprint's" if r.confidence is None else f"{r.confidence:.1f}"
        lines.append(f"| `{r.id}` | {r.status} | {r.layer or '–'} | {conf} | {r.explanation} |")
    return "\n".join(lines) + "\n"


# Headers too common to say anything about who answered (OONI's list, webconnectivitylte
# analysishttpdiff.go): only the uncommon ones are compared.
COMMON_HEADERS = (
    "date", "content-type", "server", "cache-control", "vary", "set-cookie", "location", "expires",
    "x-powered-by", "content-encoding", "last-modified", "accept-ranges", "pragma", "x-frame-options",
    "etag", "x-content-type-options", "age", "via", "p3p", "x-xss-protection", "content-language",
    "cf-ray", "strict-transport-security", "link", "x-varnish",
)  # fmt: skip

BODY_PROPORTION = 0.7  # OONI: bodies "match" when the smaller is more than 70 % of the larger
TITLE_MIN_WORD = 5  # OONI: title words shorter than 5 characters are ignored

_COMMON = "[" + ", ".join(f"'{h}'" for h in COMMON_HEADERS) + "]"

MACROS = [
    # Queries for the measured host itself: not redirect hops, not the injection probe.
    """CREATE OR REPLACE TEMP MACRO vt_primary(tag) AS
         tag IS NULL OR (NOT contains(tag, 'redirect') AND NOT contains(tag, 'injection_check')
                         AND (NOT contains(tag, 'depth=') OR contains(tag, 'depth=0')))""",
    """CREATE OR REPLACE TEMP MACRO vt_words(title) AS
         list_distinct(list_filter(string_split(lower(coalesce(title, '')), ' '), lambda w: length(w) >= 5))""",
    """CREATE OR REPLACE TEMP MACRO vt_names(headers) AS
         list_sort(list_distinct(list_transform(headers, lambda x: lower(x.name))))""",
    """CREATE OR REPLACE TEMP MACRO vt_headers_match(a, b) AS
         CASE WHEN len(a) = 0 OR len(b) = 0 THEN NULL WHEN a = b THEN true
              ELSE list_has_any(vt_uncommon(a), vt_uncommon(b)) END""",
    """CREATE OR REPLACE TEMP MACRO vt_same_words(a, b) AS list_has_all(a, b) AND list_has_all(b, a)""",
    f"""CREATE OR REPLACE TEMP MACRO vt_uncommon(names) AS
         list_filter(names, lambda x: NOT list_contains({_COMMON}, x))""",
]

# Probe rows and the control each is judged against: the helper's own control row
# (control_for), else the nearest control run (a row without control_for) of the same input and
# experiment within the window.
PAIRING = """
CREATE OR REPLACE TEMP TABLE _vt_meta AS
  SELECT measurement_id, input, experiment, measurement_start_time AS t, role, control_for,
         hash(input, experiment) AS k  -- an integer key: sorting on it is cheaper than on URLs
  FROM measurements;
CREATE OR REPLACE TEMP TABLE _vt_direct AS
  -- The earliest helper row (measurement ids are UUIDv7: they sort by time).
  SELECT control_for AS mid, min(measurement_id) AS cid
  FROM _vt_meta WHERE role = 'control' AND control_for IS NOT NULL GROUP BY control_for;
CREATE OR REPLACE TEMP TABLE _vt_pair AS
WITH prb AS (
  SELECT measurement_id AS mid, input, experiment, t, k FROM _vt_meta WHERE role = 'probe'
), ctl AS (
  -- Control runs only: a helper's control row measured one probe measurement's own addresses.
  SELECT measurement_id AS cid, input, experiment, t, k FROM _vt_meta WHERE role = 'control' AND control_for IS NULL
), rest AS (
  SELECT prb.* FROM prb ANTI JOIN _vt_direct d ON d.mid = prb.mid
), before AS (
  SELECT r.mid, c.cid, c.input = r.input AND c.experiment = r.experiment AS same, epoch(r.t) - epoch(c.t) AS dt
  FROM rest r ASOF JOIN ctl c ON r.k = c.k AND r.t >= c.t
), after AS (
  SELECT r.mid, c.cid, c.input = r.input AND c.experiment = r.experiment AS same, epoch(c.t) - epoch(r.t) AS dt
  FROM rest r ASOF JOIN ctl c ON r.k = c.k AND r.t <= c.t
), near AS (
  SELECT mid, arg_min(cid, dt) AS cid FROM (SELECT * FROM before UNION ALL SELECT * FROM after)
  WHERE same AND dt <= $window_s GROUP BY mid
)
SELECT p.mid, p.input, p.experiment, p.t, coalesce(d.cid, n.cid) AS cid
FROM prb p LEFT JOIN _vt_direct d USING (mid) LEFT JOIN near n USING (mid);
"""
# $window_s is bound: con.execute(PAIRING, {"window_s": seconds}); DuckDB binds parameters of the
# last statement only, so the _vt_pair statement ends PAIRING and the hosts come after it.
PAIRED_HOSTS = "CREATE OR REPLACE TEMP TABLE _vt_hosts AS SELECT DISTINCT input FROM _vt_pair"

# What the rules need of each control: compact sets, computed once per control row.
CONTROL_FEATURES = """
CREATE OR REPLACE TEMP TABLE _vt_cf AS
SELECT
  m.measurement_id AS cid,
  m.failure AS c_failure,
  flatten(list_transform(m.dns, lambda q: CASE WHEN vt_primary(q.tag) THEN
      list_transform(list_filter(q.answers, lambda a: a.answer_type IN ('A', 'AAAA')), lambda a: a.value) END)) AS c_ips,
  len(m.dns) AS c_dns_n,
  list_filter(m.dns, lambda q: vt_primary(q.tag) AND q.query_type = 'A' AND q.failure IS NOT NULL)[1].failure AS c_dns_failure,
  list_transform(list_filter(m.tcp, lambda c: c.failure IS NULL), lambda c: c.ip || ':' || c.port) AS c_tcp_ok_eps,
  list_transform(list_filter(m.tcp, lambda c: c.failure IS NOT NULL), lambda c: c.ip || ':' || c.port) AS c_tcp_fail_eps,
  list_distinct(list_transform(list_filter(m.tcp, lambda c: c.failure IS NULL), lambda c: c.port)) AS c_tcp_ok_ports,
  list_transform(list_filter(m.tls, lambda x: x.failure IS NULL), lambda x: x.ip || ':' || x.port) AS c_tls_ok_eps,
  list_transform(list_filter(m.tls, lambda x: x.failure IS NOT NULL), lambda x: x.ip || ':' || x.port) AS c_tls_fail_eps,
  len(m.http) AS c_http_n,
  list_transform(m.http, lambda x: {
      'failure': x.failure, 'status': x.status_code, 'blen': x.body_length, 'sha': x.body_sha256,
      'title': x.title, 'headers': x.headers})[-1] AS c_fin,
  len(m.vpn) AS c_vpn_n,
  coalesce(list_bool_or(list_transform(m.vpn, lambda v: coalesce(v.handshake_ok, false))), false) AS c_vpn_ok,
  -- -- quic: did any QUIC handshake of the control complete
  coalesce(len(m.quic), 0) AS c_quic_n,
  coalesce(list_bool_or(list_transform(m.quic, lambda q: q.failure IS NULL)), false) AS c_quic_ok,
  -- A control that observed nothing at all cannot vouch for anything (OONI's null control).
  len(m.dns) + len(m.tcp) + len(m.tls) + len(m.http) + len(m.vpn) = 0 AS c_empty
FROM _vt_m m
WHERE m.role = 'control' AND m.measurement_id IN (SELECT cid FROM _vt_pair)
"""

# One pass over the probe rows, joined with their control's features: every flag the decision
# tree reads. DNS answers already among the control's answers (or validated by a TLS handshake
# with the target's SNI) need nothing more; the rest ("pending") go to PENDING below.
PROBE_FEATURES = f"""
CREATE OR REPLACE TEMP TABLE _vt_v AS
WITH pm AS (
  -- Each probe row's own features, computed in the scan of the measurements: only these
  -- compact columns meet the pairing and the controls' features in the join below, never the
  -- nested observations (body samples, headers, every answer). DuckDB otherwise built the
  -- join's hash table over the measurements themselves, and ran out of memory at 512 MiB
  -- (issue 19).
  SELECT
    m.measurement_id AS pmid, m.run_id, m.probe_cc, m.probe_asn, h.host, m.failure,
    list_transform(list_filter(m.dns, lambda q: vt_primary(q.tag)), lambda q: {{
        'qtype': q.query_type, 'failure': q.failure,
        'ips': list_transform(list_filter(q.answers, lambda a: a.answer_type IN ('A', 'AAAA')), lambda a: a.value)
    }}) AS dq,
    list_transform(list_filter(m.dns, lambda q: NOT vt_primary(q.tag) AND coalesce(q.tag, '') <> 'injection_check'),
        lambda q: {{'query_type': q.query_type, 'failure': q.failure}}) AS redirect_dns,
    -- Every answer value (CNAMEs and redirect hops too) for the DNS fingerprints.
    flatten(list_transform(m.dns, lambda q: CASE WHEN coalesce(q.tag, '') <> 'injection_check'
                                                THEN list_transform(q.answers, lambda a: a.value) END)) AS dvals,
    CASE WHEN list_bool_or(list_transform(m.dns, lambda q: len(q.late_responses) > 0 OR q.tag = 'injection_check'))
    THEN coalesce(list_bool_or(list_transform(m.dns, lambda q:
        (coalesce(q.tag, '') = 'injection_check' AND (q.rcode IS NOT NULL OR len(q.answers) > 0))
        OR (len(q.late_responses) > 0 AND coalesce(list_bool_or(list_transform(q.late_responses, lambda lr:
             list_sort(list_transform(lr.answers, lambda a: a.value)) <> list_sort(list_transform(q.answers, lambda a: a.value))
        )), false)))), false) ELSE false END AS injected,
    -- A step the probe cancelled itself ('interrupted': run budget, Ctrl-C, or OONI cancelling
    -- the other connects once one succeeded) is no observation of the network.
    list_transform(list_filter(m.tcp, lambda x: x.failure IS NOT NULL AND x.failure <> 'interrupted'), lambda x:
        {{'ip': x.ip, 'port': x.port, 'ep': x.ip || ':' || x.port, 'failure': x.failure}}) AS tcp_fail,
    coalesce(list_bool_or(list_transform(m.dns, lambda q: q.failure = 'interrupted')), false)
      OR coalesce(list_bool_or(list_transform(m.tcp, lambda q: q.failure = 'interrupted')), false)
      OR coalesce(list_bool_or(list_transform(m.tls, lambda q: q.failure = 'interrupted')), false)
      OR coalesce(list_bool_or(list_transform(m.http, lambda q: q.failure = 'interrupted')), false) AS interrupted,
    list_distinct(list_transform(list_filter(m.tcp, lambda x: x.failure IS NULL), lambda x: x.port)) AS tcp_ok_ports,
    CASE WHEN len(m.tls) > 0 THEN list_transform(list_filter(m.tls, lambda x: x.failure IS NOT NULL
                                                                 AND x.failure <> 'interrupted'), lambda x:
        {{'ep': x.ip || ':' || x.port, 'sni': lower(x.sni), 'failure': x.failure}}) ELSE [] END AS tls_fail,
    CASE WHEN len(m.tls) > 0 THEN len(list_filter(m.tls, lambda x: x.failure IS NULL)) ELSE 0 END AS tls_ok_n,
    CASE WHEN len(m.tls) > 0 THEN list_transform(list_filter(m.tls, lambda x: x.failure IS NULL
        AND coalesce(x.cert_valid, true) AND lower(x.sni) = h.host), lambda x: x.ip) ELSE [] END AS tls_valid_ips,
    len(m.http) AS http_n,
    -- The last hop of the redirect chain, without its body (extracting the hop itself would
    -- copy the body sample: the lambda projects the fields first).
    list_transform(m.http, lambda x: {{
        'url': x.url, 'failure': x.failure, 'status': x.status_code, 'blen': x.body_length,
        'trunc': coalesce(x.body_truncated, false), 'sha': x.body_sha256, 'title': x.title,
        'headers': x.headers}})[-1] AS fin,
    m.http[1].ip AS first_hop_ip,
    len(m.vpn) AS vpn_n,
    -- CASE evaluates its branch only for the rows that need it (most rows have no tunnel).
    CASE WHEN len(m.vpn) > 0 THEN
      coalesce(list_bool_or(list_transform(m.vpn, lambda v: coalesce(v.handshake_ok, false))), false) END AS vpn_ok,
    CASE WHEN len(m.vpn) > 0 THEN
      list_filter(m.vpn, lambda v: NOT coalesce(v.handshake_ok, false))[1].failure END AS vpn_failure,
    CASE WHEN len(m.vpn) > 0 THEN
      coalesce(list_max(list_transform(list_filter(m.vpn, lambda v: NOT coalesce(v.handshake_ok, false)),
        lambda v: len(list_filter(v.packets, lambda k: k.direction = 'received')))), 0) END AS vpn_received,
    -- -- quic: any handshake completed; else the first failure (an IPv6 address a probe without
    -- IPv6 cannot reach says nothing about the site, and 'interrupted' is the probe's own doing)
    coalesce(len(m.quic), 0) AS quic_n,
    CASE WHEN len(m.quic) > 0 THEN coalesce(list_bool_or(list_transform(m.quic, lambda q: q.failure IS NULL)), false)
         END AS quic_ok,
    CASE WHEN len(m.quic) > 0 THEN list_filter(m.quic, lambda q: q.failure IS NOT NULL AND q.failure <> 'interrupted'
        AND NOT (q.failure IN ('network_unreachable', 'host_unreachable') AND contains(q.ip, ':')))[1].failure
         END AS quic_failure
  FROM _vt_m m
  JOIN _vt_hosts h ON h.input = m.input
  WHERE m.role = 'probe'
), f AS (
  SELECT p.mid, pm.run_id, p.input, p.experiment, pm.probe_cc, pm.probe_asn, p.t, p.cid, pm.host, pm.failure,
    c.* EXCLUDE (cid), coalesce(c.c_ips, []) AS cips,
    pm.* EXCLUDE (pmid, run_id, probe_cc, probe_asn, host, failure)
  FROM pm
  JOIN _vt_pair p ON p.mid = pm.pmid
  LEFT JOIN _vt_cf c ON c.cid = p.cid
), k AS (
  SELECT f.* EXCLUDE (dq, tcp_fail, tls_fail, redirect_dns),
    coalesce(list_bool_or(list_transform(dq, lambda q: len(q.ips) > 0)), false) AS p_has_ips,
    len(list_filter(dq, lambda q: len(q.ips) > 0)) AS p_answered_queries,
    list_filter(dq, lambda q: q.qtype = 'A' AND (q.failure LIKE 'dns\\_%' ESCAPE '\\' OR q.failure = 'generic_timeout'))[1].failure AS p_dns_failure,
    list_filter(dq, lambda q: q.failure IS NOT NULL AND q.failure <> 'interrupted')[1].failure AS p_any_dns_failure,
    coalesce(list_bool_or(list_transform(dq, lambda q: q.failure = 'interrupted')), false) AS dns_interrupted,
    -- Queries none of whose answers the control saw: PENDING checks networks, ASNs and TLS.
    CASE WHEN len(cips) = 0 THEN [] ELSE
      list_transform(list_filter(dq, lambda q: len(q.ips) > 0 AND NOT list_has_any(q.ips, cips)),
                     lambda q: q.ips) END AS pending,
    -- A probe without IPv6 fails every IPv6 address as unreachable: not a failure of the site
    -- (OONI's CDN false positives came from these next to a working IPv4 page).
    len(list_filter(tcp_fail, lambda x: NOT (x.failure IN ('network_unreachable', 'host_unreachable')
                                             AND contains(x.ip, ':')))) > 0
      OR len(tls_fail) > 0 AS any_connect_failure,
    -- A hop of the redirect chain whose name did not resolve (the control followed the chain).
    list_filter(redirect_dns, lambda q: q.query_type = 'A'
        AND (q.failure LIKE 'dns\\_%' ESCAPE '\\' OR q.failure = 'generic_timeout'))[1].failure AS redirect_dns_failure,
    list_distinct(list_filter(dvals, lambda x: x IS NOT NULL AND NOT list_contains(cips, x))) AS odd_vals,
    -- Answers for the measured host the control did not see (a redirect hop's are not judged).
    list_distinct(list_filter(flatten(list_transform(dq, lambda q: q.ips)),
                              lambda x: x IS NOT NULL AND NOT list_contains(cips, x))) AS odd_ips,
    -- TCP: the same endpoint connected from the control; or, for a control run that saw other
    -- addresses, a port the probe never reached but the control did. A probe without IPv6
    -- fails every IPv6 address as unreachable: that says nothing about the site.
    list_filter(tcp_fail, lambda x:
        NOT (x.failure IN ('network_unreachable', 'host_unreachable') AND contains(x.ip, ':'))
        AND (list_contains(c_tcp_ok_eps, x.ep)
             OR (NOT list_contains(coalesce(c_tcp_fail_eps, []), x.ep)
                 AND NOT list_contains(tcp_ok_ports, x.port) AND list_contains(c_tcp_ok_ports, x.port)))
    )[1].failure AS tcp_block,
    list_has_any(list_transform(tcp_fail, lambda x: x.ep), c_tcp_fail_eps) AS tcp_both_fail,
    list_filter(tls_fail, lambda x:
        list_contains(c_tls_ok_eps, x.ep)
        OR (x.sni = host AND NOT list_contains(coalesce(c_tls_fail_eps, []), x.ep) AND tls_ok_n = 0
            AND len(c_tls_ok_eps) > 0)
    )[1].failure AS tls_block,
    list_has_any(list_transform(tls_fail, lambda x: x.ep), c_tls_fail_eps) AS tls_both_fail,
    http_n > 0 AND fin.failure IS NULL AND fin.status IS NOT NULL AS p_fin_ok,
    coalesce(c_http_n > 0 AND c_fin.failure IS NULL AND c_fin.status IS NOT NULL, false) AS c_fin_ok,
    coalesce(http_n > 0 AND fin.failure IS NULL AND fin.status IS NOT NULL
             AND starts_with(lower(fin.url), 'https://'), false) AS https_ok
  FROM f
), h AS (
  SELECT k.*,
    CASE WHEN NOT (p_fin_ok AND c_fin_ok) THEN NULL
         WHEN fin.status = c_fin.status THEN true
         WHEN c_fin.status // 100 <> 2 THEN NULL
         ELSE false END AS status_match,
    CASE WHEN NOT (p_fin_ok AND c_fin_ok) THEN NULL
         WHEN fin.sha IS NOT NULL AND fin.sha = c_fin.sha THEN true
         WHEN coalesce(c_fin.blen, 0) > 0 AND NOT fin.trunc AND coalesce(fin.blen, 0) > 0
           THEN least(fin.blen, c_fin.blen) / greatest(fin.blen, c_fin.blen) > {BODY_PROPORTION}
         END AS body_match
  FROM k
), d AS (
  -- Headers and title are compared only where OONI's algorithm reads them (status codes
  -- match, bodies do not); CASE evaluates them for those rows only.
  SELECT h.*,
    CASE WHEN coalesce(status_match, false) AND NOT coalesce(body_match, false) THEN
      vt_headers_match(vt_names(fin.headers), vt_names(c_fin.headers)) END AS headers_match,
    CASE WHEN coalesce(status_match, false) AND NOT coalesce(body_match, false) THEN
      CASE WHEN fin.trunc OR coalesce(fin.title, '') = '' OR coalesce(c_fin.title, '') = '' THEN NULL
           ELSE vt_same_words(vt_words(fin.title), vt_words(c_fin.title)) END END AS title_match
  FROM h
)
-- Only what PENDING and DECISION read is kept (materialising wide nested columns is costly).
SELECT mid, run_id, input, experiment, probe_cc, probe_asn, t, cid, failure, c_failure,
  coalesce(c_empty, false) AS c_empty, interrupted, dns_interrupted,
  c_dns_n, c_dns_failure, c_http_n, c_vpn_n, c_vpn_ok, injected,
  quic_n, quic_ok, quic_failure, coalesce(c_quic_n, 0) AS c_quic_n, coalesce(c_quic_ok, false) AS c_quic_ok, tls_valid_ips, http_n,
  fin.failure AS fin_failure, vpn_n, vpn_ok, vpn_failure, vpn_received, p_has_ips, p_dns_failure,
  p_any_dns_failure, pending, odd_vals, odd_ips, any_connect_failure, redirect_dns_failure, tcp_block,
  tcp_both_fail, tls_block, tls_both_fail, p_fin_ok, c_fin_ok, https_ok,
  len(cips) > 0 AS c_dns_ok,
  NOT (coalesce(status_match, false) AND (coalesce(body_match, false) OR coalesce(headers_match, false)
       OR coalesce(title_match, false))) AS http_diff,
  -- DNS consistency's last test (d): the final page matches the control's, so the address the
  -- chain started from behaved like the site's (a censor's box does not redirect to the real
  -- page). Vouches for that address; an import without hop addresses vouches for the one query
  -- with answers the page could have come from.
  coalesce(CASE WHEN p_fin_ok AND c_fin_ok AND coalesce(status_match, false) AND (coalesce(body_match, false)
            OR coalesce(headers_match, false) OR coalesce(title_match, false)) THEN
    CASE WHEN first_hop_ip IS NOT NULL THEN [first_hop_ip]
         WHEN p_answered_queries = 1 THEN flatten(pending) END END, []) AS http_vouched_ips,
  CASE WHEN NOT coalesce(status_match, false) THEN 'status'
       WHEN body_match = false THEN 'body'
       WHEN title_match = false THEN 'title'
       ELSE 'header' END AS diff_kind,
  -- Responses worth testing against blockpage fingerprints: not a validated HTTPS page and not
  -- already matching the control's body (same digest, or within OONI's 70 % length proportion).
  -- Only the flag: the body samples are read for these rows alone (FP_INPUT), never carried
  -- through this step (they were most of its memory).
  coalesce(http_n > 0 AND failure IS NULL AND NOT https_ok AND NOT coalesce(body_match, false), false) AS fp_candidate
FROM d
"""

# The responses of the fingerprint candidates, hop by hop: body sample and headers.
FP_INPUT = """
SELECT m.measurement_id AS mid,
  list_transform(m.http, lambda x: {'body': x.body_sample,
                                    'headers': list_transform(x.headers, lambda y: [y.name, y.value])}) AS fp_input
FROM _vt_m m
WHERE m.role = 'probe' AND m.measurement_id IN (SELECT mid FROM _vt_v WHERE fp_candidate)
"""

# Distinct DNS answer values that need classifying in Python (bogon, network, ASN, DNS
# fingerprint): those of probe rows with answers the control did not see, plus their controls'.
PENDING_VALUES = """
SELECT DISTINCT v FROM (
  SELECT unnest(odd_vals) AS v FROM _vt_v WHERE len(odd_vals) > 0
  UNION ALL
  SELECT unnest(c.c_ips) AS v FROM _vt_cf c WHERE c.cid IN (SELECT cid FROM _vt_v WHERE len(odd_vals) > 0)
) WHERE v IS NOT NULL
"""

# DNS verdict inputs for the (few) probe rows with answers the control did not see. Per query,
# in OONI's order: (a) a shared address was settled in PROBE_FEATURES (such queries are not
# pending); (b) same network: a shared ASN (the answer's own, else --asn-db) or /24 (/48);
# (c) a TLS handshake with the target's SNI validated on one of its addresses; (d) the page
# fetched from one of its addresses matches the control's (http_vouched_ips).
PENDING = """
CREATE OR REPLACE TEMP TABLE _vt_dns AS
WITH rows AS (SELECT mid, cid, pending, odd_vals, odd_ips, tls_valid_ips, http_vouched_ips
              FROM _vt_v WHERE len(odd_vals) > 0),
cinfo AS (
  SELECT c.cid, list(DISTINCT i.net) FILTER (WHERE i.net IS NOT NULL) AS c_nets,
         list(DISTINCT i.asn) FILTER (WHERE i.asn IS NOT NULL) AS c_asns,
         coalesce(bool_or(i.bogon), false) AS c_bogon
  FROM (SELECT cid, unnest(c_ips) AS ip FROM _vt_cf WHERE cid IN (SELECT cid FROM rows)) c
  LEFT JOIN _vt_ipinfo i ON i.v = c.ip GROUP BY c.cid
), q AS (
  SELECT mid, cid, qi, unnest(pending[qi]) AS ip
  FROM (SELECT mid, cid, pending, unnest(range(1, len(pending) + 1)) AS qi FROM rows)
), per_query AS (
  SELECT q.mid, q.qi,
         bool_or(coalesce(list_contains(ci.c_nets, i.net), false) OR coalesce(list_contains(ci.c_asns, i.asn), false)) AS same_network,
         bool_or(list_contains(r.tls_valid_ips, q.ip) OR list_contains(r.http_vouched_ips, q.ip)) AS validated
  FROM q JOIN rows r ON r.mid = q.mid LEFT JOIN cinfo ci ON ci.cid = q.cid LEFT JOIN _vt_ipinfo i ON i.v = q.ip
  GROUP BY q.mid, q.qi
), vals AS (
  SELECT r.mid,
         bool_or(coalesce(i.bogon, false) AND list_contains(r.odd_ips, r.v) AND NOT coalesce(ci.c_bogon, false)) AS any_bogon,
         min(i.fp) AS dns_fp, arg_min(i.v, i.fp) AS dns_fp_value, arg_min(i.conf, i.fp) AS dns_fp_conf
  FROM (SELECT mid, cid, odd_ips, unnest(odd_vals) AS v FROM rows) r
  LEFT JOIN cinfo ci ON ci.cid = r.cid LEFT JOIN _vt_ipinfo i ON i.v = r.v
  GROUP BY r.mid
)
SELECT vals.*, coalesce(pq.inconsistent, false) AS dns_inconsistent, coalesce(pq.foreign_, false) AS dns_foreign
FROM vals LEFT JOIN (
  SELECT mid, bool_or(NOT (same_network OR validated)) AS inconsistent, bool_or(NOT same_network) AS foreign_
  FROM per_query GROUP BY mid) pq USING (mid)
"""

# The decision tree. Each WHEN fires one rule of RULES, in priority order; decision_sql() fills
# the tokens in. dns_inconsistent: some resolver's answers are not the control's, not in its
# networks/ASNs and not validated over TLS for the target; dns_foreign: the same without the TLS
# guard (a box that passes TLS through but answers cleartext HTTP itself is still the censor's).
# offline / c_offline: the probe's (the control's) vantage point had no network in that hour
# and the measurement reached nothing (analysis/connectivity.py).
DECISION_TREE = f"""
WITH r AS (
SELECT v.*, fp.http_fp, fp.http_fp_conf, coalesce(d.any_bogon, false) AS any_bogon,
  tp.* EXCLUDE (mid),
  d.dns_fp, d.dns_fp_value, d.dns_fp_conf,
  ghost OR coalesce(d.dns_inconsistent, false) AS dns_inconsistent,
  ghost OR coalesce(d.dns_foreign, false) AS dns_foreign,
  o.mid IS NOT NULL AS offline, oc.mid IS NOT NULL AS c_offline,
  msg.msg_status, msg.msg_layer, msg.functions
FROM (SELECT *, p_has_ips AND NOT c_dns_ok AND coalesce(c_dns_failure IN ('dns_nxdomain', 'dns_no_answer'), false) AS ghost
      FROM _vt_v) v
LEFT JOIN _vt_httpfp fp USING (mid) LEFT JOIN _vt_dns d USING (mid)
LEFT JOIN _vt_offline o ON o.mid = v.mid LEFT JOIN _vt_offline oc ON oc.mid = v.cid
LEFT JOIN _vt_tp tp ON tp.mid = v.mid
LEFT JOIN _vt_msg msg ON msg.mid = v.mid
), s AS (
SELECT r.*,
CASE
  WHEN offline THEN $rule:connectivity.lost
  WHEN failure IS NOT NULL THEN $rule:probe_failure.measurement
  WHEN dns_fp IS NOT NULL THEN $rule:dns.blockpage_ip
  WHEN http_fp IS NOT NULL THEN $rule:http.blockpage
  WHEN vpn_n > 0 THEN CASE
    WHEN vpn_ok THEN $rule:ok.vpn_handshake
    WHEN cid IS NULL OR c_offline OR coalesce(c_vpn_n, 0) = 0 THEN $rule:no_control.vpn
    WHEN c_vpn_ok THEN CASE WHEN vpn_failure = 'generic_timeout' AND vpn_received > 0
                            THEN $rule:vpn.no_answer_after_first ELSE $family:vpn(vpn_failure) END
    ELSE $rule:down.vpn_both_failed END
  -- throughput (throttling): the download against the control, the link and the history
  WHEN tp_n > 0 THEN CASE
    WHEN cid IS NULL OR c_offline OR NOT tp_c_n THEN $rule:no_control.throughput
    WHEN tp_failed THEN CASE WHEN tp_c_ran THEN $rule:http.download_failure ELSE $rule:down.throughput_both_failed END
    WHEN tp_interrupted THEN $rule:probe_failure.download_interrupted
    WHEN NOT tp_c_ran THEN $rule:no_control.throughput
    WHEN NOT tp_enough THEN $rule:ok.throughput_too_short
    WHEN NOT tp_c_ok OR tp_c_factor < {THROTTLE_FACTOR} THEN $rule:ok.throughput_like_control
    WHEN tp_link_factor IS NULL THEN $rule:no_control.throughput_link
    WHEN tp_link_factor < {THROTTLE_FACTOR} THEN $rule:ok.throughput_slow_link
    WHEN tp_far THEN $rule:ok.throughput_far
    WHEN tp_hist_factor >= {THROTTLE_FACTOR} THEN $rule:throttled.onset
    ELSE $rule:throttled.slowdown END
  WHEN msg_status IS NOT NULL THEN CASE
    WHEN msg_status = 'blocked' THEN CASE msg_layer WHEN 'dns' THEN $rule:messaging.dns WHEN 'tls' THEN $rule:messaging.tls
                                                    WHEN 'http-failure' THEN $rule:messaging.http
                                                    ELSE $rule:messaging.tcp END
    WHEN msg_status = 'probe_failure' THEN $rule:probe_failure.messaging_interrupted
    WHEN msg_status = 'down' THEN $rule:down.messaging
    ELSE $rule:ok.messaging END
  WHEN injected THEN $rule:dns.injected
  -- OONI's null cases: no control, or one that could not run. A page that arrived over
  -- validated HTTPS needs no control.
  WHEN (cid IS NULL OR c_offline OR c_failure IS NOT NULL OR c_empty) AND https_ok THEN $rule:ok.https_no_control
  WHEN cid IS NULL THEN $rule:no_control.none
  WHEN c_offline THEN $rule:no_control.control_offline
  WHEN c_failure IS NOT NULL OR c_empty THEN $rule:no_control.control_failed
  WHEN any_bogon THEN $rule:dns.bogon
  WHEN p_dns_failure IS NOT NULL AND c_dns_ok THEN CASE WHEN p_dns_failure = 'dns_nxdomain'
       THEN $rule:dns.nxdomain_ctrl_ok ELSE $rule:dns.failure_ctrl_ok END
  WHEN NOT p_has_ips AND c_dns_ok AND p_any_dns_failure IS NOT NULL THEN $rule:dns.no_answer_ctrl_ok
  WHEN NOT p_has_ips AND dns_interrupted THEN $rule:probe_failure.interrupted
  WHEN NOT p_has_ips AND NOT c_dns_ok AND coalesce(c_dns_n, 0) > 0 THEN $rule:down.dns_both_failed
  WHEN ghost THEN $rule:dns.answer_ctrl_nxdomain
  -- Answers the control does not vouch for, and something failed or differs: DNS is the cause.
  WHEN dns_inconsistent AND (any_connect_failure
                             OR (http_n > 0 AND NOT p_fin_ok AND coalesce(fin_failure, '') <> 'interrupted')
                             OR (p_fin_ok AND c_fin_ok AND http_diff))
    THEN $rule:dns.inconsistent
  WHEN https_ok AND NOT coalesce(quic_ok, true) AND c_quic_ok AND quic_failure IS NOT NULL
    THEN $family:quic(quic_failure)
  WHEN https_ok THEN $rule:ok.https_validated
  WHEN p_fin_ok THEN CASE
    WHEN NOT c_fin_ok THEN CASE WHEN dns_inconsistent THEN $rule:dns.inconsistent_no_ctrl_page
                                ELSE $rule:ok.http_no_ctrl_page END
    WHEN http_diff THEN CASE WHEN dns_foreign THEN $rule:dns.foreign_page_diff
                             WHEN diff_kind = 'status' THEN $rule:http.status_diff
                             WHEN diff_kind = 'body' THEN $rule:http.body_diff
                             WHEN diff_kind = 'title' THEN $rule:http.title_diff
                             ELSE $rule:http.header_diff END
    ELSE $rule:ok.http_matches END
  WHEN tcp_block IS NOT NULL AND coalesce(quic_ok, false) THEN $rule:tcp.blocked_quic_ok
  WHEN tls_block IS NOT NULL AND coalesce(quic_ok, false) THEN $rule:tls.blocked_quic_ok
  WHEN tcp_block IS NOT NULL THEN $family:tcp(tcp_block)
  WHEN tls_block IS NOT NULL THEN $family:tls(tls_block)
  WHEN redirect_dns_failure IS NOT NULL AND c_fin_ok THEN CASE WHEN redirect_dns_failure = 'dns_nxdomain'
       THEN $rule:dns.redirect_nxdomain_ctrl_ok ELSE $rule:dns.redirect_failure_ctrl_ok END
  WHEN http_n > 0 AND fin_failure IS NOT NULL AND fin_failure <> 'interrupted' AND c_fin_ok THEN $rule:http.failure
  WHEN interrupted THEN $rule:probe_failure.interrupted
  WHEN tcp_both_fail OR tls_both_fail OR (http_n > 0 AND fin_failure IS NOT NULL)
       OR (c_http_n > 0 AND NOT c_fin_ok) THEN $rule:down.both_failed
  WHEN dns_inconsistent AND http_n = 0 THEN $rule:dns.inconsistent_dns_only
  ELSE $rule:ok.nothing_failed
END AS d
FROM r
)
SELECT mid AS measurement_id, run_id, input, experiment, probe_cc, probe_asn, t AS measurement_start_time,
       d[1] AS status,
       CASE WHEN d[3] = 'http.blockpage' AND dns_foreign THEN 'dns' ELSE d[2] END AS layer,
       CASE WHEN d[3] = 'http.blockpage' THEN 'http.blockpage:' || http_fp ELSE d[3] END AS method,
       CAST(coalesce(d[4], CASE WHEN d[3] = 'dns.blockpage_ip' THEN CAST(dns_fp_conf AS VARCHAR)
                                 ELSE CAST(http_fp_conf AS VARCHAR) END) AS DOUBLE) AS confidence,
       d[3] IN ('dns.blockpage_ip', 'http.blockpage') AS confirmed,
       CASE WHEN d[3] = 'dns.blockpage_ip' THEN dns_fp WHEN d[3] = 'http.blockpage' THEN http_fp END AS fingerprint,
       -- throughput: how many times slower than the references (analysis/throughput.py)
       CASE WHEN coalesce(tp_n, 0) > 0 THEN round(tp_factor, 2) END AS throttle_factor,
       functions  -- messaging apps: the per-function verdicts (analysis/messaging.py); NULL otherwise
FROM s
-- One verdict per probe measurement even when the input holds a measurement (or its control)
-- twice: the copies carry the same data, so any one of them is the verdict.
QUALIFY row_number() OVER (PARTITION BY mid ORDER BY d[3], cid) = 1
ORDER BY measurement_start_time, measurement_id
"""


# -- quic: the measurements as the rules read them. The HTTP/3 GETs (tag "http3") leave the
# ``http`` list: the quic rules judge QUIC through ``quic``, and OONI's comparison keeps reading
# the TCP redirect chain it was made for. ``fill`` adds ``quic`` (NULL) to datasets written
# before it existed (analysis.db.missing_columns_sql), so they give the verdicts they gave.
def measurements_view_sql(fill: str = "") -> str:
    extra = f", {fill}" if fill else ""
    return ("CREATE OR REPLACE TEMP VIEW _vt_m AS SELECT * REPLACE (list_filter(http, lambda x: "
            f"coalesce(split_part(x.tag, ',', 1), '') <> 'http3') AS http){extra} FROM measurements")


def decision_sql() -> str:
    """The decision tree with every rule token filled in from RULES."""
    return fill_rules(DECISION_TREE)
