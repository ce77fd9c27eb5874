"""The verdict rules as SQL: per-measurement features, control pairing and the decision tree.

Every statement works on whole tables (DuckDB vectorised list lambdas and joins), never row by
row in Python. docs/analysis.md explains each rule and its OONI counterpart.
"""

from __future__ import annotations

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
    # The failure kind a method name ends with.
    """CREATE OR REPLACE TEMP MACRO vt_kind(f) AS CASE
         WHEN f = 'connection_reset' THEN 'reset'
         WHEN f = 'generic_timeout' THEN 'timeout'
         WHEN f = 'connection_refused' THEN 'refused'
         WHEN f = 'eof' THEN 'eof'
         WHEN f IN ('host_unreachable', 'network_unreachable') THEN 'unreachable'
         WHEN f LIKE 'ssl\\_%' ESCAPE '\\' THEN 'invalid_cert'
         ELSE 'failure' END""",
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
CREATE OR REPLACE TEMP TABLE _vt_hosts AS SELECT DISTINCT input FROM _vt_pair;
"""

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
  coalesce(list_bool_or(list_transform(m.vpn, lambda v: coalesce(v.handshake_ok, false))), false) AS c_vpn_ok
FROM measurements m
WHERE m.role = 'control' AND m.measurement_id IN (SELECT cid FROM _vt_pair)
"""

# One pass over the probe rows, joined with their control's features: every flag the decision
# tree reads. DNS answers already among the control's answers (or validated by a TLS handshake
# with the target's SNI) need nothing more; the rest ("pending") go to PENDING below.
PROBE_FEATURES = f"""
CREATE OR REPLACE TEMP TABLE _vt_v AS
WITH f AS (
  SELECT
    p.mid, m.run_id, p.input, p.experiment, m.probe_cc, m.probe_asn, p.t, p.cid, h.host,
    m.failure, c.* EXCLUDE (cid),
    coalesce(c.c_ips, []) AS cips,
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
    list_transform(list_filter(m.tcp, lambda x: x.failure IS NOT NULL), lambda x:
        {{'ip': x.ip, 'port': x.port, 'ep': x.ip || ':' || x.port, 'failure': x.failure}}) AS tcp_fail,
    list_distinct(list_transform(list_filter(m.tcp, lambda x: x.failure IS NULL), lambda x: x.port)) AS tcp_ok_ports,
    CASE WHEN len(m.tls) > 0 THEN list_transform(list_filter(m.tls, lambda x: x.failure IS NOT NULL), lambda x:
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
    m.http AS http_hops,
    len(m.vpn) AS vpn_n,
    -- CASE evaluates its branch only for the rows that need it (most rows have no tunnel).
    CASE WHEN len(m.vpn) > 0 THEN
      coalesce(list_bool_or(list_transform(m.vpn, lambda v: coalesce(v.handshake_ok, false))), false) END AS vpn_ok,
    CASE WHEN len(m.vpn) > 0 THEN
      list_filter(m.vpn, lambda v: NOT coalesce(v.handshake_ok, false))[1].failure END AS vpn_failure,
    CASE WHEN len(m.vpn) > 0 THEN
      coalesce(list_max(list_transform(list_filter(m.vpn, lambda v: NOT coalesce(v.handshake_ok, false)),
        lambda v: len(list_filter(v.packets, lambda k: k.direction = 'received')))), 0) END AS vpn_received
  FROM measurements m
  JOIN _vt_pair p ON p.mid = m.measurement_id
  JOIN _vt_hosts h ON h.input = m.input
  LEFT JOIN _vt_cf c ON c.cid = p.cid
  WHERE m.role = 'probe'
), k AS (
  SELECT f.* EXCLUDE (dq, http_hops, tcp_fail, tls_fail, redirect_dns),
    coalesce(list_bool_or(list_transform(dq, lambda q: len(q.ips) > 0)), false) AS p_has_ips,
    list_filter(dq, lambda q: q.qtype = 'A' AND (q.failure LIKE 'dns\\_%' ESCAPE '\\' OR q.failure = 'generic_timeout'))[1].failure AS p_dns_failure,
    list_filter(dq, lambda q: q.failure IS NOT NULL)[1].failure AS p_any_dns_failure,
    -- Queries none of whose answers the control saw: PENDING checks networks, ASNs and TLS.
    CASE WHEN len(cips) = 0 THEN [] ELSE
      list_transform(list_filter(dq, lambda q: len(q.ips) > 0 AND NOT list_has_any(q.ips, cips)),
                     lambda q: q.ips) END AS pending,
    len(tcp_fail) > 0 OR len(tls_fail) > 0 AS any_connect_failure,
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
             AND starts_with(lower(fin.url), 'https://'), false) AS https_ok,
    http_hops
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
  c_dns_n, c_dns_failure, c_http_n, c_vpn_n, c_vpn_ok, injected, tls_valid_ips, http_n,
  fin.failure AS fin_failure, vpn_n, vpn_ok, vpn_failure, vpn_received, p_has_ips, p_dns_failure,
  p_any_dns_failure, pending, odd_vals, odd_ips, any_connect_failure, redirect_dns_failure, tcp_block,
  tcp_both_fail, tls_block, tls_both_fail, p_fin_ok, c_fin_ok, https_ok,
  len(cips) > 0 AS c_dns_ok,
  NOT (coalesce(status_match, false) AND (coalesce(body_match, false) OR coalesce(headers_match, false)
       OR coalesce(title_match, false))) AS http_diff,
  CASE WHEN NOT coalesce(status_match, false) THEN 'http.status_diff'
       WHEN body_match = false THEN 'http.body_diff'
       WHEN title_match = false THEN 'http.title_diff'
       ELSE 'http.header_diff' END AS diff_method,
  -- Responses worth testing against blockpage fingerprints: not a validated HTTPS page and not
  -- already matching the control's body (same digest, or within OONI's 70 % length proportion).
  CASE WHEN http_n > 0 AND failure IS NULL AND NOT https_ok AND NOT coalesce(body_match, false)
       THEN list_transform(http_hops, lambda x: {{'body': x.body_sample,
                                                 'headers': list_transform(x.headers, lambda y: [y.name, y.value])}})
       END AS fp_input
FROM d
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

# DNS verdict inputs for the (few) probe rows with answers the control did not see.
PENDING = """
CREATE OR REPLACE TEMP TABLE _vt_dns AS
WITH rows AS (SELECT mid, cid, pending, odd_vals, odd_ips, tls_valid_ips FROM _vt_v WHERE len(odd_vals) > 0),
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
         bool_or(list_contains(r.tls_valid_ips, q.ip)) AS validated
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

# The decision tree. Each WHEN is one rule, in priority order; docs/analysis.md lists them.
# dns_inconsistent: some resolver's answers are not the control's, not in its networks/ASNs and
# not validated over TLS for the target; dns_foreign: the same without the TLS guard (a box
# that passes TLS through but answers cleartext HTTP itself is still the censor's).
DECISION = """
WITH r AS (
SELECT v.*, fp.http_fp, fp.http_fp_conf, coalesce(d.any_bogon, false) AS any_bogon,
  d.dns_fp, d.dns_fp_value, d.dns_fp_conf,
  ghost OR coalesce(d.dns_inconsistent, false) AS dns_inconsistent,
  ghost OR coalesce(d.dns_foreign, false) AS dns_foreign
FROM (SELECT *, p_has_ips AND NOT c_dns_ok AND coalesce(c_dns_failure IN ('dns_nxdomain', 'dns_no_answer'), false) AS ghost
      FROM _vt_v) v
LEFT JOIN _vt_httpfp fp USING (mid) LEFT JOIN _vt_dns d USING (mid)
), s AS (
SELECT r.*,
CASE
  WHEN failure IS NOT NULL THEN ['probe_failure', NULL, 'probe.failure', '1.0']
  WHEN dns_fp IS NOT NULL THEN ['blocked', 'dns', 'dns.blockpage_ip', NULL]
  WHEN http_fp IS NOT NULL
    THEN ['blocked', CASE WHEN dns_foreign THEN 'dns' ELSE 'http-diff' END, 'http.blockpage:' || http_fp, NULL]
  WHEN vpn_n > 0 THEN CASE
    WHEN vpn_ok THEN ['ok', NULL, NULL, '0.9']
    WHEN cid IS NULL OR coalesce(c_vpn_n, 0) = 0 THEN ['no_control', NULL, NULL, '0.0']
    WHEN c_vpn_ok THEN ['blocked', 'vpn', CASE
        WHEN vpn_failure = 'vpn_handshake_failure' THEN 'vpn.handshake_failure'
        WHEN vpn_failure = 'connection_reset' THEN 'vpn.reset'
        WHEN vpn_failure = 'connection_refused' THEN 'vpn.refused'
        WHEN vpn_failure = 'generic_timeout' AND vpn_received > 0 THEN 'vpn.no_answer_after_first'
        WHEN vpn_failure = 'generic_timeout' THEN 'vpn.timeout'
        ELSE 'vpn.failure' END, '0.8']
    ELSE ['down', NULL, NULL, '0.7'] END
  WHEN injected THEN ['blocked', 'dns', 'dns.injected', '0.9']
  -- A page that arrived over validated HTTPS needs no control.
  WHEN cid IS NULL OR c_failure IS NOT NULL
    THEN CASE WHEN https_ok THEN ['ok', NULL, NULL, '0.8'] ELSE ['no_control', NULL, NULL, '0.0'] END
  WHEN any_bogon THEN ['blocked', 'dns', 'dns.bogon', '0.9']
  WHEN p_dns_failure IS NOT NULL AND c_dns_ok THEN ['blocked', 'dns',
       CASE WHEN p_dns_failure = 'dns_nxdomain' THEN 'dns.nxdomain_ctrl_ok' ELSE 'dns.failure_ctrl_ok' END, '0.8']
  WHEN NOT p_has_ips AND c_dns_ok AND p_any_dns_failure IS NOT NULL THEN ['blocked', 'dns', 'dns.failure_ctrl_ok', '0.6']
  WHEN NOT p_has_ips AND NOT c_dns_ok AND coalesce(c_dns_n, 0) > 0 THEN ['down', NULL, NULL, '0.8']
  WHEN ghost THEN ['blocked', 'dns', 'dns.inconsistent', '0.6']
  -- Answers the control does not vouch for, and something failed or differs: DNS is the cause.
  WHEN dns_inconsistent AND (any_connect_failure OR (http_n > 0 AND NOT p_fin_ok) OR (p_fin_ok AND c_fin_ok AND http_diff))
    THEN ['blocked', 'dns', 'dns.inconsistent', '0.7']
  WHEN https_ok THEN ['ok', NULL, NULL, '0.9']
  WHEN p_fin_ok THEN CASE
    WHEN NOT c_fin_ok THEN CASE WHEN dns_inconsistent THEN ['blocked', 'dns', 'dns.inconsistent', '0.5']
                                ELSE ['ok', NULL, NULL, '0.6'] END
    WHEN http_diff THEN CASE WHEN dns_foreign THEN ['blocked', 'dns', 'dns.inconsistent', '0.6']
                             ELSE ['blocked', 'http-diff', diff_method, '0.6'] END
    ELSE ['ok', NULL, NULL, '0.9'] END
  WHEN tcp_block IS NOT NULL THEN ['blocked', 'tcp_ip', 'tcp.' || vt_kind(tcp_block), '0.8']
  WHEN tls_block IS NOT NULL THEN ['blocked', 'tls', 'tls.' || CASE vt_kind(tls_block)
                                      WHEN 'reset' THEN 'reset_sni' ELSE vt_kind(tls_block) END, '0.8']
  WHEN redirect_dns_failure IS NOT NULL AND c_fin_ok THEN ['blocked', 'dns',
       CASE WHEN redirect_dns_failure = 'dns_nxdomain' THEN 'dns.nxdomain_ctrl_ok' ELSE 'dns.failure_ctrl_ok' END, '0.7']
  WHEN http_n > 0 AND fin_failure IS NOT NULL AND c_fin_ok THEN ['blocked', 'http-failure', 'http.failure', '0.7']
  WHEN tcp_both_fail OR tls_both_fail OR (http_n > 0 AND fin_failure IS NOT NULL)
       OR (c_http_n > 0 AND NOT c_fin_ok) THEN ['down', NULL, NULL, '0.8']
  WHEN dns_inconsistent AND http_n = 0 THEN ['blocked', 'dns', 'dns.inconsistent', '0.5']
  ELSE ['ok', NULL, NULL, '0.7']
END AS d
FROM r
)
SELECT mid AS measurement_id, run_id, input, experiment, probe_cc, probe_asn, t AS measurement_start_time,
       d[1] AS status, d[2] AS layer, d[3] AS method,
       CAST(coalesce(d[4], CASE WHEN d[3] = 'dns.blockpage_ip' THEN CAST(dns_fp_conf AS VARCHAR)
                                 ELSE CAST(http_fp_conf AS VARCHAR) END) AS DOUBLE) AS confidence,
       coalesce(d[3] = 'dns.blockpage_ip' OR starts_with(d[3], 'http.blockpage:'), false) AS confirmed,
       CASE WHEN d[3] = 'dns.blockpage_ip' THEN dns_fp
            WHEN starts_with(coalesce(d[3], ''), 'http.blockpage:') THEN http_fp END AS fingerprint
FROM s
ORDER BY measurement_start_time, measurement_id
"""
