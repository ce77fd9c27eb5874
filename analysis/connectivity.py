"""Did the vantage point have a network at all? Assessed per vantage point and hour before any
per-target verdict, from the anchors and from the share of inputs that failed at the network
level, so that a dead uplink is never reported as massive censorship.

``connectivity_table(con)`` returns one row per (role, probe_cc, probe_asn, run_id, hour):
anchors_n, anchors_ok, inputs_n, network_failed_n, connected, reason. ``compute_verdicts``
joins it (through ``create_offline_table``): a measurement taken in an hour without
connectivity that reached nothing gets the rule ``connectivity.lost`` (status
``no_connectivity``), never ``blocked``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa

from analysis.db import quote_ident

# Failures that say the packets went nowhere, whatever the target: no route, or the step was
# never answered. A censor's usual tools answer instead (a lie, NXDOMAIN, a reset, a blockpage),
# and those are not counted.
NO_ROUTE = ("network_unreachable", "host_unreachable")
TIMEOUT = "generic_timeout"
# DNS failures that are not an answer about the name: every dns_* failure but NXDOMAIN and "no
# address" (those are answers), so SERVFAIL, REFUSED, garbage and whatever name an unreachable
# resolver (EAI_AGAIN) is given, plus timeouts and no route. Counted only for an input the other
# side resolved, so that a name that is simply broken everywhere is not a network failure.
DNS_ANSWERS = ("dns_nxdomain", "dns_no_answer")
DNS_NOT_AN_ANSWER = ("generic_timeout", "network_unreachable", "host_unreachable")

# The thresholds, from how networks and censors behave:
# - A censor blocks a minority of a test list (the heaviest national censors block at most about
#   two thirds of a curated list), and mostly by answering: DNS lies and NXDOMAIN, resets,
#   blockpages, none of which counts as a network-level failure here. A censor that drops
#   packets (timeouts) for most of a list is still seen by the anchors (root servers, large
#   CDNs), which no censor has reason to block all at once.
# - A dead uplink (a shutdown, a pulled cable) fails nearly every input, anchors included; the
#   few that "succeed" come from a local cache.
# So: anchors that mostly answer mean the network is up. Anchors all down and at least half the
# inputs failing at the network level mean it is down. Without anchors it takes LOST_SHARE of
# at least MIN_INPUTS inputs: 80 % sits well above what censorship of a list produces and well
# below the ~100 % of a dead link.
LOST_SHARE = 0.8
# With every anchor down the anchors are evidence already; half the inputs failing confirms it.
ANCHORS_DOWN_SHARE = 0.5
# Fewer inputs than this, without anchors, is too little evidence: a volunteer testing the few
# sites they suspect may well find all of them blocked by timeouts. Such runs are judged target
# by target as usual.
MIN_INPUTS = 10
# One anchor down may be one blocked anchor; two different anchors down is the network.
MIN_ANCHORS = 2

_TAG_OK = "(o.tag IS NULL OR o.tag <> 'injection_check')"

# The values the SQL below binds (never pasted into its text): the failure names of
# network_failed_sql and the thresholds of decision_sql. The shares are exact decimals, as the
# literals 0.5 and 0.8 were, so a count exactly at the threshold compares the same.
FAILED_PARAMS: dict[str, Any] = {"no_route": list(NO_ROUTE), "timeout": TIMEOUT, "dns_answers": list(DNS_ANSWERS),
                                 "dns_not_an_answer": list(DNS_NOT_AN_ANSWER)}
DECISION_PARAMS: dict[str, Any] = {"min_anchors": MIN_ANCHORS, "anchors_down_share": Decimal(str(ANCHORS_DOWN_SHARE)),
                                   "min_inputs": MIN_INPUTS, "lost_share": Decimal(str(LOST_SHARE))}


# One row per measurement: did it reach anything beyond the probe, did it fail at the network
# level. "Reached" is any connection, handshake, HTTP response or tunnel reply (a DNS answer may
# come from a local cache and is not enough). ``key``: what identifies an input across rows
# (a hash in DuckDB; the input itself where another engine joins the two sides).
def facts_sql(source: str = "measurements", key: str = "hash(input)") -> str:
    """Per measurement: vantage point, hour, ``reached``, its network-level ``fails`` and
    ``dns_answered``; a function of the row alone (any shard of rows can compute it)."""
    return f"""
WITH r AS (
  SELECT measurement_id, role, probe_cc, probe_asn, run_id, {key} AS k, experiment = 'anchors' AS is_anchor,
    date_trunc('hour', measurement_start_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
    failure IS NULL AND (
      len(list_filter(tcp, lambda o: o.failure IS NULL)) > 0
      OR len(list_filter(tls, lambda o: o.failure IS NULL)) > 0
      OR len(list_filter(http, lambda o: o.failure IS NULL AND o.status_code IS NOT NULL)) > 0
      OR len(list_filter(vpn, lambda o: coalesce(o.handshake_ok, false)
                                        OR len(list_filter(o.packets, lambda k: k.direction = 'received')) > 0)) > 0
      -- a DNS-only measurement (dns anchors, dns_consistency) reached its resolver if it answered
      OR (len(tcp) = 0 AND len(http) = 0 AND len(vpn) = 0
          AND len(list_filter(dns, lambda o: {_TAG_OK} AND o.failure IS NULL)) > 0)
    ) AS reached,
    failure, dns, tcp, tls, http, vpn
  FROM {source}
)
SELECT measurement_id, role, probe_cc, probe_asn, run_id, k, is_anchor, hour, reached,
    -- Most measurements reached their target: their failures are not needed (CASE skips them).
    CASE WHEN reached THEN [] ELSE list_filter(
      flatten([[failure], list_transform(list_filter(dns, lambda o: {_TAG_OK}), lambda o: o.failure),
               list_transform(tcp, lambda o: o.failure), list_transform(tls, lambda o: o.failure),
               list_transform(http, lambda o: o.failure), list_transform(vpn, lambda o: o.failure)]),
      lambda f: f IS NOT NULL AND f <> 'interrupted') END AS fails,
    len(list_filter(dns, lambda o: {_TAG_OK} AND len(o.answers) > 0)) > 0 AS dns_answered
FROM r"""


# What each side (probe, control) saw of each input: OR-able over any split of the rows.
SIDE_SQL = "SELECT role, k, bool_or(reached) AS reached, bool_or(dns_answered) AS resolved FROM {facts} GROUP BY ALL"


def network_failed_sql(other_reached: str = "c.reached", other_resolved: str = "c.resolved") -> str:
    """Did measurement ``m`` (a row of ``facts_sql``) fail at the network level, given what the
    other side saw of the same input (NULL: the other side never measured it). ``other_*``:
    column expressions of the caller's query; the values are bound (FAILED_PARAMS)."""
    return f"""NOT m.reached AND len(m.fails) > 0 AND (
    -- no route: the local stack says so, whatever the target
    list_has_any(m.fails, $no_route)
    -- every step that failed timed out (a silent network), while the other side got through. A
    -- DNS answer about the name (no AAAA record beside the A that resolved, say) is no failed
    -- step: a dead uplink with a working local resolver times out on every connect all the same.
    OR (coalesce({other_reached}, true) AND list_contains(m.fails, $timeout)
        AND len(list_filter(m.fails, lambda f: f <> $timeout AND NOT list_contains($dns_answers, f))) = 0)
    -- nothing resolved, without an answer about the name, while the other side resolved it
    OR (NOT m.dns_answered AND coalesce({other_resolved}, false)
        AND len(list_filter(m.fails, lambda f: list_contains($dns_answers, f)
                                    OR NOT (f LIKE 'dns\\_%' ESCAPE '\\' OR list_contains($dns_not_an_answer, f)))) = 0)
  )"""


FACTS_SQL = f"CREATE OR REPLACE TEMP TABLE _vt_conn_m AS {facts_sql()}"
# binds FAILED_PARAMS
ROWS_SQL = f"""
CREATE OR REPLACE TEMP TABLE _vt_conn_rows AS
WITH m AS (SELECT * FROM _vt_conn_m), side AS (
  -- A target that times out from the other side too is down, not evidence about this side's
  -- network; an input the other side never measured gives no such hint.
  {SIDE_SQL.format(facts="m")}
)
SELECT m.measurement_id, m.role, m.probe_cc, m.probe_asn, m.run_id, m.hour, m.is_anchor, m.reached,
  {network_failed_sql()} AS network_failed
FROM m LEFT JOIN side c ON c.k = m.k AND c.role <> m.role
"""

# Per vantage point (role, probe_cc, probe_asn, run_id) and hour: counts that add up over any
# split of the rows (shards on a cluster sum them; analysis/spark_engine.py).
COUNT_COLUMNS = ("anchors_n", "anchors_ok", "inputs_n", "network_failed_n")
COUNTS_SQL = """
SELECT role, probe_cc, probe_asn, run_id, hour,
    count(*) FILTER (WHERE is_anchor) AS anchors_n,
    count(*) FILTER (WHERE is_anchor AND reached) AS anchors_ok,
    count(*) FILTER (WHERE NOT is_anchor) AS inputs_n,
    count(*) FILTER (WHERE NOT is_anchor AND network_failed) AS network_failed_n
FROM {rows} GROUP BY ALL"""


def decision_sql(counts: str) -> str:
    """The decision per vantage point and hour over a relation of summed counts (COUNTS_SQL's
    columns): the one place it is made, whoever counted. The thresholds are bound
    (DECISION_PARAMS)."""
    return f"""
WITH g AS (SELECT * FROM {counts}), d AS (
  SELECT g.*, CASE WHEN inputs_n > 0 THEN network_failed_n / inputs_n END AS share,
    CASE
      WHEN anchors_n >= $min_anchors AND anchors_ok = 0
           AND (inputs_n = 0 OR network_failed_n >= $anchors_down_share * inputs_n)
        THEN {{'ok': false, 'why': 'anchors down and inputs failing at the network level'}}
      WHEN anchors_n > 0 AND 2 * anchors_ok >= anchors_n THEN {{'ok': true, 'why': 'anchors answered'}}
      WHEN inputs_n >= $min_inputs AND network_failed_n >= $lost_share * inputs_n
        THEN {{'ok': false, 'why': 'nearly every input failed at the network level'}}
      WHEN inputs_n < $min_inputs AND anchors_n < $min_anchors THEN {{'ok': true, 'why': 'too little evidence to call the network down'}}
      ELSE {{'ok': true, 'why': 'inputs reached their targets'}}
    END AS c
  FROM g
)
SELECT role, probe_cc, probe_asn, run_id, hour, anchors_n, anchors_ok, inputs_n, network_failed_n,
       c.ok AS connected, c.why AS reason
FROM d ORDER BY role, probe_cc, probe_asn, run_id, hour"""


TABLE_SQL = f"""
CREATE OR REPLACE TEMP TABLE _vt_conn AS {decision_sql("(" + COUNTS_SQL.format(rows="_vt_conn_rows") + ")")}
"""

# Measurements (either role) taken in an hour without connectivity that reached nothing.
OFFLINE_SQL = """
CREATE OR REPLACE TEMP TABLE _vt_offline AS
SELECT DISTINCT r.measurement_id AS mid, r.role
FROM _vt_conn_rows r JOIN _vt_conn c
  ON c.role = r.role AND c.probe_cc IS NOT DISTINCT FROM r.probe_cc AND c.probe_asn IS NOT DISTINCT FROM r.probe_asn
 AND c.run_id IS NOT DISTINCT FROM r.run_id AND c.hour = r.hour
WHERE NOT c.connected AND NOT r.reached
"""

CONNECTIVITY_SCHEMA = pa.schema(
    [("role", pa.string()), ("probe_cc", pa.string()), ("probe_asn", pa.string()), ("run_id", pa.string()),
     ("hour", pa.timestamp("us", tz="UTC")), ("anchors_n", pa.int64()), ("anchors_ok", pa.int64()),
     ("inputs_n", pa.int64()), ("network_failed_n", pa.int64()), ("connected", pa.bool_()), ("reason", pa.string())]
)  # fmt: skip


def create_connectivity_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Temp tables ``_vt_conn_rows`` (per measurement), ``_vt_conn`` (per vantage point and
    hour) and ``_vt_offline`` (measurements taken without connectivity) over ``measurements``."""
    con.execute(FACTS_SQL)
    con.execute(ROWS_SQL, FAILED_PARAMS)
    con.execute("DROP TABLE _vt_conn_m")
    con.execute(TABLE_SQL, DECISION_PARAMS)
    con.execute(OFFLINE_SQL)


def drop_connectivity_tables(con: duckdb.DuckDBPyConnection) -> None:
    for name in ("_vt_conn_rows", "_vt_conn", "_vt_offline"):
        con.execute(f"DROP TABLE IF EXISTS {quote_ident(name)}")


def connectivity_table(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """Connectivity per vantage point (role, probe_cc, probe_asn, run_id) and UTC hour over the
    ``measurements`` view of ``con`` (see CONNECTIVITY_SCHEMA; ``connected`` and its ``reason``)."""
    create_connectivity_tables(con)
    try:
        return con.sql("SELECT * FROM _vt_conn").to_arrow_table().cast(CONNECTIVITY_SCHEMA)
    finally:
        drop_connectivity_tables(con)


OFFLINE_SCHEMA = pa.schema([("mid", pa.string()), ("role", pa.string())])


def offline_table(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """(mid, role) of every measurement of the ``measurements`` view taken in an hour without
    connectivity that reached nothing: what ``compute_verdicts(offline=...)`` takes from a
    caller that judges the data shard by shard (the aggregate needs all rows)."""
    create_connectivity_tables(con)
    try:
        return con.sql("SELECT mid, role FROM _vt_offline ORDER BY mid, role").to_arrow_table().cast(OFFLINE_SCHEMA)
    finally:
        drop_connectivity_tables(con)


def decide(con: duckdb.DuckDBPyConnection, counts: pa.Table) -> pa.Table:
    """The connectivity table (CONNECTIVITY_SCHEMA) from counts per vantage point and hour
    summed elsewhere (COUNTS_SQL's columns, ``hour`` a UTC timestamp): the same decision
    ``connectivity_table`` makes over the rows of one DuckDB."""
    # the Arrow table is named for this one query only (decision_sql binds its thresholds, which
    # a relation's query() cannot)
    name = "_vt_conn_counts_in"
    con.register(name, counts)
    try:
        return con.sql(decision_sql(name), params=DECISION_PARAMS).to_arrow_table().cast(CONNECTIVITY_SCHEMA)
    finally:
        con.unregister(name)
