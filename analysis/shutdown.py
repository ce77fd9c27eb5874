"""Shutdown and blocking-event detection: the public entry points over datasets or signals.

``detect(con)`` runs signals -> baselines -> alert runs, CUSUM changes and dark hours ->
classified, merged events; ``find_events(datasets, verdicts=table)`` does it over dataset
directories with the verdicts ``vantage analyze`` computed; ``write_events(paths, output)`` is
what ``vantage events`` calls.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from analysis import signals as sig
from analysis.db import open_datasets
from analysis.detector import Change, DetectorConfig, alert_runs, baselined_signals, cusum_changes
from analysis.events import EVENT_SCHEMA, KINDS, Event, annotate_scope, events_to_table, merge_events
from analysis.evidence import (
    Classifier,
    connectivity_events,
    dark_hours_from_facts,
    dark_hours_from_signals,
    dark_hours_from_verdicts,
)
from probe.dataset import write_table_atomic

__all__ = ["EVENT_SCHEMA", "KINDS", "DetectorConfig", "Detection", "Event", "detect",
           "detect_from_signals", "find_events", "write_events", "events_to_table", "render_events"]



@dataclass
class Detection:
    events: list[Event]
    hourly: pa.Table  # per (cc, asn, hour): counts, rates, baselines, ratios, levels
    changes: list[Change] = field(default_factory=list)
    hour0: dt.datetime | None = None
    input_failures: pa.Table | None = None  # per (cc, asn, input, hour): n, failed (CUSUM input)
    # one row per measurement (signals.measurement_facts), a relation of the connection ``detect``
    # was given: the report joins it to the verdicts; None from signals alone
    facts: duckdb.DuckDBPyRelation | None = None

    def table(self) -> pa.Table:
        return events_to_table(self.events)

    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]


def _hour0(hourly: pa.Table) -> tuple[dt.datetime, int]:
    hours = hourly.column("hour").to_numpy().astype("datetime64[h]")
    lo, hi = hours.min(), hours.max()
    start = lo.astype("datetime64[us]").astype(dt.datetime).replace(tzinfo=dt.UTC)
    return start, int((hi - lo).astype(int)) + 1


def detect(con: duckdb.DuckDBPyConnection, cfg: DetectorConfig | None = None, *,
           verdicts: pa.Table | duckdb.DuckDBPyRelation | None = None,
           counts: pa.Table | None = None) -> Detection:
    """Events from the ``measurements`` view of ``con``.

    ``verdicts``: the verdict table (VERDICT_SCHEMA rows, as ``vantage analyze`` writes them),
    as an Arrow table or a relation of ``con``. With it the change detector counts
    verdict-blocked measurements instead of raw failures, and connectivity loss is read from the
    ``no_connectivity`` verdicts; without it (``--no-verdicts``) from the dark hours of the raw
    signals (anchors all failing, nearly every target failing).

    ``counts``: the hourly signals (``signals.network_hour_signals``' table) made elsewhere, e.g.
    summed by Spark over shards (analysis/spark_engine.py); None: computed here.
    """
    cfg = cfg or DetectorConfig()
    # the verdict stage's rows, as a relation of this connection
    rel: duckdb.DuckDBPyRelation | None = None
    if isinstance(verdicts, pa.Table):
        rel = con.from_arrow(verdicts)
    elif isinstance(verdicts, duckdb.DuckDBPyRelation):
        rel = verdicts
    facts = sig.measurement_facts(con)
    if counts is None:
        counts = sig.network_hour_signals(facts)
    if counts.num_rows == 0:
        return Detection([], counts, facts=facts)
    hourly = baselined_signals(con, counts, cfg)
    classifier = Classifier(facts, hourly, cfg, rel)
    network_events = [e for r in alert_runs(hourly) if (e := classifier.classify_run(r)) is not None]
    if rel is not None:
        dark = connectivity_events(classifier, dark_hours_from_verdicts(rel), "verdicts")
    else:
        dark = connectivity_events(classifier, dark_hours_from_facts(facts), "signals")
    hour0, n_hours = _hour0(hourly)
    failures = sig.input_hour_failures(facts, verdicts=rel)
    changes = cusum_changes(failures, np.datetime64(hour0.replace(tzinfo=None)), n_hours, cfg)
    change_events = [classifier.classify_change(c, hour0) for c in changes]
    events = merge_events(network_events, change_events, cfg, dark)
    annotate_scope(events, hourly)
    return Detection(events, hourly, changes, hour0, failures, facts)


def detect_from_signals(con: duckdb.DuckDBPyConnection, counts: pa.Table, cfg: DetectorConfig | None = None) -> Detection:
    """Events from aggregated hourly counts alone (benchmarks, other data sources): no vantage
    points or controls, so classification is by the signals only."""
    cfg = cfg or DetectorConfig()
    hourly = baselined_signals(con, counts, cfg)
    classifier = Classifier(None, hourly, cfg)
    events = [e for r in alert_runs(hourly) if (e := classifier.classify_run(r)) is not None]
    dark = connectivity_events(classifier, dark_hours_from_signals(hourly), "signals")
    merged = merge_events(events, [], cfg, dark)
    annotate_scope(merged, hourly)
    return Detection(merged, hourly)


def find_events(datasets: Sequence[Path | str], cfg: DetectorConfig | None = None, *,
                  verdicts: pa.Table | None = None, spark_master: str | None = None) -> Detection:
    """Events over dataset directories.

    ``verdicts``: the verdict stage's table for these datasets (``analysis.pipeline``,
    VERDICT_SCHEMA), read and never recomputed, so that blocks by blockpages served with HTTP
    200 count and measurements without connectivity form a connectivity event. None: events
    from raw reachability only (``--no-verdicts``). ``spark_master``: the hourly signals are
    counted per shard and summed on that Spark cluster (analysis/spark_engine.py); the detector
    and classifier run here over them.
    """
    if spark_master is not None:
        from analysis.spark_engine import find_events_spark

        return find_events_spark(datasets, cfg, verdicts=verdicts, master=spark_master)
    con = open_datasets(datasets)
    try:
        return detect(con, cfg, verdicts=verdicts)
    finally:
        con.close()


def write_events(paths: Sequence[Path | str], output: Path | str, cfg: DetectorConfig | None = None, *,
                 verdicts: pa.Table | None = None, spark_master: str | None = None) -> Detection:
    """Detect events over datasets and write them as Parquet (EVENT_SCHEMA), atomically;
    ``verdicts`` as for ``find_events``."""
    detection = find_events(paths, cfg, verdicts=verdicts, spark_master=spark_master)
    out = Path(output)
    write_table_atomic(detection.table(), out)
    return detection


def render_events(events: Sequence[Event], title: str = "Events", *, compact: bool = False) -> object:
    """A rich Table of events (one row each) for the terminal; ``compact`` for narrow ones."""
    from rich.table import Table

    table = Table(title=title, show_lines=compact, expand=compact)
    cols = (("kind", "when (UTC)", "where", "what", "why") if compact else
            ("kind", "severity", "start (UTC)", "end (UTC)", "hours", "regions", "networks", "inputs / methods",
             "meas.", "vp", "conf.", "why"))
    for col in cols:
        # the kind and times stay whole on a narrow terminal; the rest folds
        whole = col in ("kind", "start (UTC)", "end (UTC)", "when (UTC)")
        table.add_column(col, overflow="fold", no_wrap=whole, ratio=None if whole else 3 if col == "why" else 1)
    for e in events:
        what = ", ".join(i.split("://", 1)[-1].rstrip("/") for i in e.inputs[:4]) + (" …" if len(e.inputs) > 4 else "")
        if e.methods:
            what += (" " if what else "") + "[" + ", ".join(e.methods[:2]) + "]"
        end = f"{e.end:%Y-%m-%d %H:%M}" if e.end else "ongoing"
        if compact:
            table.add_row(e.kind, f"{e.start:%Y-%m-%d %H:%M}\n{end}", f"{', '.join(e.regions)}: {', '.join(e.networks)}",
                          what, f"{e.severity}, {e.measurements} measurements: {e.reason}")
            continue
        table.add_row(e.kind, e.severity, f"{e.start:%Y-%m-%d %H:%M}", end,
                      f"{e.duration_h:.0f}" if e.duration_h is not None else "-", ",".join(e.regions),
                      ",".join(e.networks), what, str(e.measurements), str(e.vantage_points), f"{e.confidence:.2f}",
                      e.reason)
    return table
