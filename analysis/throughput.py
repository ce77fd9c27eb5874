"""Throttling: is a target slowed down on the probe's network? The evidence each bounded download
(``downloads``, the throughput experiment) is judged on, computed in SQL over whole tables into
``_vt_tp`` (one row per probe measurement with a download); the decision is the throughput
branch of analysis/rules.py's tree.

A volunteer's slow link slows every host, and a slow server is slow for everyone, so the target's
throughput at the probe is compared with three references, never with a fixed speed:

(a) the control's download of the same target (rules out a slow server: slow there too);
(b) the same probe network's (country, ASN) downloads of OTHER hosts within LINK_WINDOW_S: the
    fastest of them is what the link itself carried then (rules out a slow link: everything
    slow). The fastest, not the median: a slow server or another throttled host cannot lower
    it, and the link did carry that much;
(c) the same network's history for the same target (earlier than LINK_WINDOW_S, within
    HISTORY_DAYS): when the target was THROTTLE_FACTOR times faster from here before, the
    slowdown has an onset (higher confidence). History never vetoes: a target throttled for
    months is as slow in its history as today.

The factor reported is the smaller of (a) and (b): the slowdown the evidence supports.
"""

from __future__ import annotations

import duckdb

from analysis.db import quote_ident

# How throttling looks where it was reported: Roskomnadzor's "slowdown" of Twitter in Russia
# (March 2021) brought its content to about 128-150 kbit/s on links that carried tens of Mbit/s
# to every other site (Xue et al., "Throttling Twitter", IMC 2021): a factor of 100 and more, the
# point being to make the site unusable. Ordinary differences between hosts reached from one
# network in the same hour are much smaller: servers farther away are slower (TCP's rate falls
# with the round-trip time), loaded servers and busy peering links cost a factor of 2 to 3. A
# factor of 4 against BOTH the control and the link's own capacity is well above that spread and
# far below what a censor aims for.
THROTTLE_FACTOR = 4.0
# A download judged for throttling must have lasted this long after its first byte: TCP slow
# start doubles the window every round trip from ~10 segments (RFC 6928), so within the first
# few round trips (a second at most on a 250 ms path) it measures slow start, not the path.
# At the ~128 kbit/s of a throttled site, 2 s carry ~32 KB, enough segments to count.
MIN_TRANSFER_S = 2.0
# ... and carried more than the initial congestion window a few times over (10 x 1460 bytes).
MIN_BYTES = 16 << 10
# A reference download (the control's, another host's, the history's) counts when it carried
# this much: below it the body may arrive with the headers and its "rate" means nothing. A
# short reference can only understate its rate (slow start), which lowers the factor: safe.
REF_MIN_BYTES = 64 << 10
# Other hosts measured from the same network within this many seconds (before or after) are the
# link's capacity at the time (probes run a list in minutes, and load changes over hours).
LINK_WINDOW_S = 3600.0
HISTORY_DAYS = 30
# Distance, not a shaper: ttfb spans ~3-4 round trips (connect, TLS, request), so a target whose
# ttfb is r times the reference's has r times its round trip, and TCP's window-limited rate can
# be r times lower. When the ttfb ratio covers half the slowdown or more (and the difference is
# more than LATENCY_SLACK_S, so that sub-millisecond lab and LAN timings do not count), the
# slowdown is put down to distance.
LATENCY_SHARE = 0.5
LATENCY_SLACK_S = 0.05

_HOST = "lower(regexp_extract(d.url, '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/]*@)?(\\[[^\\]]*\\]|[^:/?#]*)', 1))"

# The values the SQL below binds (never pasted into its text).
_DOWNLOADS_PARAMS = {"ref_min_bytes": REF_MIN_BYTES}
FEATURES_PARAMS = {"link_window_s": LINK_WINDOW_S, "history_days": HISTORY_DAYS, "min_transfer_s": MIN_TRANSFER_S,
                   "min_bytes": MIN_BYTES, "latency_slack_s": LATENCY_SLACK_S, "latency_share": LATENCY_SHARE}

# One row per download of every measurement: its network, time, host and rate.
_DOWNLOADS = f"""
CREATE OR REPLACE TEMP TABLE _vt_dl AS
SELECT m.measurement_id AS mid, m.role, m.input, m.probe_cc, m.probe_asn, m.measurement_start_time AS t,
       d.failure, d.bytes, d.duration, d.ttfb, d.status_code, {_HOST} AS host,
       CASE WHEN d.duration > 0 AND d.bytes > 0 THEN d.bytes / d.duration END AS rate,
       d.failure IS NULL AND coalesce(d.status_code, 200) BETWEEN 200 AND 299
         AND d.bytes >= $ref_min_bytes AND d.duration > 0 AS ref_ok
FROM (SELECT measurement_id, role, input, probe_cc, probe_asn, measurement_start_time, downloads[-1] AS d
      FROM _vt_m WHERE len(downloads) > 0) m
"""

FEATURES = """
CREATE OR REPLACE TEMP TABLE _vt_tp AS
WITH p AS (
  SELECT x.*, pr.cid FROM _vt_dl x JOIN _vt_pair pr ON pr.mid = x.mid WHERE x.role = 'probe'
), link AS (
  -- The fastest other host of the same network within the window: the link's own capacity.
  SELECT p.mid, max(o.rate) AS link_rate, arg_max(o.ttfb, o.rate) AS link_ttfb, count(DISTINCT o.host) AS link_hosts
  FROM p JOIN _vt_dl o
    ON o.role = 'probe' AND o.probe_cc IS NOT DISTINCT FROM p.probe_cc
   AND o.probe_asn IS NOT DISTINCT FROM p.probe_asn AND o.host <> p.host AND o.ref_ok
   AND abs(epoch(o.t) - epoch(p.t)) <= $link_window_s
  GROUP BY p.mid
), hist AS (
  -- The same target from the same network in earlier hours.
  SELECT p.mid, max(o.rate) AS hist_rate
  FROM p JOIN _vt_dl o
    ON o.role = 'probe' AND o.probe_cc IS NOT DISTINCT FROM p.probe_cc
   AND o.probe_asn IS NOT DISTINCT FROM p.probe_asn AND o.input = p.input AND o.ref_ok
   AND epoch(p.t) - epoch(o.t) > $link_window_s AND epoch(p.t) - epoch(o.t) <= $history_days * 86400
  GROUP BY p.mid
), f AS (
  SELECT p.mid,
    1 AS tp_n,
    p.failure IS NOT NULL AND p.failure <> 'interrupted' AS tp_failed,
    p.failure = 'interrupted' AS tp_interrupted,
    p.failure IS NULL AND coalesce(p.status_code, 200) BETWEEN 200 AND 299
      AND p.duration >= $min_transfer_s AND p.bytes >= $min_bytes AS tp_enough,
    p.rate AS tp_rate, p.ttfb AS tp_ttfb,
    c.mid IS NOT NULL AS tp_c_n,
    coalesce(c.ref_ok, false) AS tp_c_ok,
    -- the control fetched the whole of a file too small to be a reference: nothing failed there
    coalesce(c.failure IS NULL, false) AS tp_c_ran,
    c.rate / p.rate AS tp_c_factor,
    l.link_rate / p.rate AS tp_link_factor,
    l.link_ttfb AS tp_link_ttfb, l.link_hosts AS tp_link_hosts,
    h.hist_rate / p.rate AS tp_hist_factor
  FROM p LEFT JOIN _vt_dl c ON c.mid = p.cid AND c.role = 'control'
  LEFT JOIN link l ON l.mid = p.mid LEFT JOIN hist h ON h.mid = p.mid
)
SELECT f.*,
  least(tp_c_factor, coalesce(tp_link_factor, tp_c_factor)) AS tp_factor,
  coalesce(tp_ttfb - tp_link_ttfb >= $latency_slack_s
           AND tp_ttfb >= $latency_share * tp_link_factor * tp_link_ttfb, false) AS tp_far
FROM f
"""

def create_throughput_table(con: duckdb.DuckDBPyConnection) -> None:
    """``_vt_tp``: the throughput evidence of every probe measurement with a download (needs
    ``_vt_pair`` from rules.PAIRING, and ``_vt_m``, rules.measurements_view_sql: the measurements
    with every optional column, ``downloads`` NULL in datasets written before it)."""
    con.execute(_DOWNLOADS, _DOWNLOADS_PARAMS)
    con.execute(FEATURES, FEATURES_PARAMS)


def drop_throughput_tables(con: duckdb.DuckDBPyConnection) -> None:
    for name in ("_vt_dl", "_vt_tp"):
        con.execute(f"DROP TABLE IF EXISTS {quote_ident(name)}")
