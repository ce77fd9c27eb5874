"""Hourly shutdown signals in DuckDB SQL over the ``measurements`` view.

Per measurement: did it reach its target (``ok``), which layer failed first (``method``), and
which vantage point took it. Per (country, ASN, hour): volume, anchor and target success,
per-layer failure counts. Per (country, ASN, input, hour): failures, for the change detector.
"""

from __future__ import annotations

import uuid

import duckdb
import pyarrow as pa

from analysis.db import DatasetError, open_datasets, quote_ident  # noqa: F401  (DatasetError: re-exported for analysis/report.py)


def _layer(col: str) -> tuple[str, str, str]:
    """SQL for (observations counted, any success, first failure) of one layer. Observations
    taken to check the path rather than the target (a DNS query sent where no resolver runs
    must time out, tag injection_check) say nothing about reachability."""
    obs = f"list_filter(coalesce({col}, []), lambda o: o.tag IS NULL OR o.tag NOT IN ('injection_check'))"
    ok = f"len(list_filter({obs}, lambda o: o.failure IS NULL)) > 0"
    first = f"list_filter({obs}, lambda o: o.failure IS NOT NULL)[1].failure"
    return obs, ok, first


def measurement_facts_sql(source: str = "measurements") -> str:
    """One row per measurement: vantage identity, hour, ok, per-layer failure and method."""
    parts = {c: _layer(c) for c in ("dns", "tcp", "tls", "http", "vpn")}
    has = {c: f"len({parts[c][0]}) > 0" for c in parts}
    fail = {c: f"({has[c]} AND NOT ({parts[c][1]}))" for c in parts}
    # the deepest layer present decides whether the target was reached; HTTP by its last hop
    # so that a redirect into a blocked host counts as not reached
    http_obs = parts["http"][0]
    reached = f"""CASE
        WHEN failure IS NOT NULL THEN false
        WHEN {has['vpn']} THEN len(list_filter({parts['vpn'][0]}, lambda o: o.handshake_ok)) > 0
        WHEN {has['http']} THEN ({http_obs})[-1].failure IS NULL
        WHEN {has['tls']} THEN {parts['tls'][1]}
        WHEN {has['tcp']} THEN {parts['tcp'][1]}
        WHEN {has['dns']} THEN {parts['dns'][1]}
        ELSE false END"""
    method = f"""CASE
        WHEN failure IS NOT NULL THEN 'measurement.' || failure
        WHEN {fail['dns']} THEN 'dns.' || {parts['dns'][2]}
        WHEN {fail['tcp']} THEN 'tcp.' || {parts['tcp'][2]}
        WHEN {fail['tls']} THEN 'tls.' || {parts['tls'][2]}
        WHEN {has['http']} AND ({http_obs})[-1].failure IS NOT NULL THEN 'http.' || ({http_obs})[-1].failure
        WHEN {fail['vpn']} THEN 'vpn.' || coalesce({parts['vpn'][2]}, 'handshake_failure')
        END"""
    return f"""
    SELECT measurement_id, probe_cc AS cc, coalesce(probe_asn, 'AS0') AS asn, role, experiment, input,
           run_id, software_version,
           concat_ws('|', coalesce(probe_network, ''), coalesce(platform, ''), coalesce(software_version, ''))
               AS vantage,
           measurement_start_time,
           date_trunc('hour', measurement_start_time AT TIME ZONE 'UTC') AS hour,
           experiment = 'anchors' AS is_anchor,
           {reached} AS ok,
           {method} AS method,
           {has['dns']} AS dns_has, {fail['dns']} AS dns_fail,
           {has['tcp']} AS tcp_has, {fail['tcp']} AS tcp_fail,
           {has['tls']} AS tls_has, {fail['tls']} AS tls_fail,
           {has['http']} AS http_has, ({has['http']} AND ({http_obs})[-1].failure IS NOT NULL) AS http_fail
    FROM {source}
    """


def measurement_facts(con: duckdb.DuckDBPyConnection,
                      source: duckdb.DuckDBPyRelation | None = None) -> duckdb.DuckDBPyRelation:
    """One row per measurement (``measurement_facts_sql``), materialized once, as a relation of
    ``con`` that the detector and classifier (and the report) are handed: no module names it.

    ``source``: the measurements (a relation of ``con``); None: the ``measurements`` view that
    ``analysis.db.open_datasets`` made.
    """
    if source is not None:
        query = source.query("measurements", measurement_facts_sql())
        assert query is not None  # a SELECT always gives a relation
        return con.from_arrow(query.to_arrow_table())
    # a private temporary table (a generated name nothing else knows): later queries reuse the
    # facts instead of recomputing the list filters, and DuckDB may spill it
    name = quote_ident(f"_facts_{uuid.uuid4().hex}")
    con.execute(f"CREATE TEMP TABLE {name} AS {measurement_facts_sql()}")
    return con.table(name)


COUNT_COLUMNS = ("volume", "runs", "vantage_points", "anchor_n", "anchor_ok", "target_n", "target_ok",
                 "dns_n", "dns_fail", "tcp_n", "tcp_fail", "tls_n", "tls_fail", "http_n", "http_fail")


def hourly_sql(source: str) -> str:
    """The hourly signals' table from additive per-(cc, asn, hour) counts in ``source`` (a CTE or
    a registered table): sparse, one row per measured hour. The Spark engine applies it to counts
    summed over shards (analysis/spark_engine.py), so both engines give the same table."""
    cols = ", ".join(f"coalesce(a.{c}, 0)::BIGINT AS {c}" for c in COUNT_COLUMNS)
    return f"SELECT a.cc, a.asn, a.hour, {cols} FROM {source} a ORDER BY a.cc, a.asn, a.hour"


# Counts per (cc, asn, hour) of the hours that have measurements: sparse in time. An hour of a
# network without a row had no measurement at all; the detector reads it as a volume of zero
# from the network's first hour to the end of the data (analysis/detector.py), so nothing here
# depends on the time span. (analysis/spark_engine.py applies ``hourly_sql`` to Spark's sums of
# the same counts.) The column names are this module's constants: identifiers cannot be bound
# parameters.
NETWORK_HOUR_SQL = """
WITH agg AS (
    SELECT cc, asn, hour,
           count(*) AS volume,
           count(DISTINCT run_id) AS runs,
           count(DISTINCT vantage) AS vantage_points,
           count(*) FILTER (WHERE is_anchor) AS anchor_n,
           count(*) FILTER (WHERE is_anchor AND ok) AS anchor_ok,
           count(*) FILTER (WHERE NOT is_anchor) AS target_n,
           count(*) FILTER (WHERE NOT is_anchor AND ok) AS target_ok,
           count(*) FILTER (WHERE dns_has) AS dns_n, count(*) FILTER (WHERE dns_fail) AS dns_fail,
           count(*) FILTER (WHERE tcp_has) AS tcp_n, count(*) FILTER (WHERE tcp_fail) AS tcp_fail,
           count(*) FILTER (WHERE tls_has) AS tls_n, count(*) FILTER (WHERE tls_fail) AS tls_fail,
           count(*) FILTER (WHERE http_has) AS http_n, count(*) FILTER (WHERE http_fail) AS http_fail
    FROM shutdown_facts WHERE role = 'probe'
    GROUP BY ALL
)
"""
NETWORK_HOUR_SQL += hourly_sql("agg")


def network_hour_signals(facts: duckdb.DuckDBPyRelation | duckdb.DuckDBPyConnection) -> pa.Table:
    """Counts per (cc, asn, hour) with measurements (sparse in hours) over the facts of
    ``measurement_facts`` (or, given a connection, of its ``measurements``); rates are derived
    by the detector."""
    if isinstance(facts, duckdb.DuckDBPyConnection):
        facts = measurement_facts(facts)
    # "shutdown_facts" names the relation inside this one query only
    counts = facts.query("shutdown_facts", NETWORK_HOUR_SQL)
    assert counts is not None
    return counts.to_arrow_table()


def input_hour_failures(facts: duckdb.DuckDBPyRelation, *,
                        verdicts: duckdb.DuckDBPyRelation | None = None) -> pa.Table:
    """(cc, asn, input, hour, n, failed) for probe target measurements.

    "Failed" is the raw "not reached", which the event classifier then sorts into blocking,
    outage or fault using controls and vantage points; with the verdict stage's rows (a relation
    of ``con`` over ``compute_verdicts`` output) a verdict of blocked counts too, so blockpages
    served with HTTP 200 are seen.
    """
    facts = facts.filter("role = 'probe' AND NOT is_anchor")
    if verdicts is not None:
        facts = facts.join(verdicts.select("measurement_id, status AS v_status"), "measurement_id", how="left")
        # blocked by the verdict (blockpages look reachable) or not reached at all
        failed = "count(*) FILTER (WHERE v_status = 'blocked' OR NOT ok) AS failed"
    else:
        failed = "count(*) FILTER (WHERE NOT ok) AS failed"
    groups = "cc, asn, input, hour"
    return facts.aggregate(f"{groups}, count(*) AS n, {failed}", groups).order(groups).to_arrow_table()


# The one way to open datasets is analysis.db.open_datasets (over probe.dataset's discovery);
# this name stays only for callers not yet moved to it (analysis/report.py).
open_measurements = open_datasets
