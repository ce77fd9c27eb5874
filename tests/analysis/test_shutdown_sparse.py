"""Signals sparse in hours: an hour without a row is an hour without measurements, which the
detector reads as volume zero (and no rate) from a network's first hour to the end of the data.

Each test compares the sparse input with the same data laid out densely (a row for every hour,
zero counts where nothing was measured): with every hour present the detector walks every hour,
which is the reference; without them it skips what it can, and must find the same.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from analysis import signals
from analysis.detector import DetectorConfig, alert_runs, baselined_signals, cusum_changes

H0 = np.datetime64("2026-11-01T00:00")
RESULT_COLUMNS = [c for c in ("level", "volume_level", "volume_base", "volume_base_n", "anchor_success_level",
                              "anchor_success_base", "target_success_level", "target_success_base_n")]


def _counts(nets: dict[str, np.ndarray], anchors_ok: float = 1.0) -> pa.Table:
    """Hourly counts, dense as the detector reads them: one row per network and hour from its
    first measured hour to the last measured hour of the data."""
    cols: dict[str, list[object]] = {"cc": [], "asn": [], "hour": []}
    for c in signals.COUNT_COLUMNS:
        cols[c] = []
    end = max(int(np.flatnonzero(v > 0)[-1]) + 1 for v in nets.values())
    for asn, volume in sorted(nets.items()):
        first = int(np.flatnonzero(volume > 0)[0])
        for h in range(first, end):
            v = int(volume[h]) if h < len(volume) else 0
            cols["cc"].append("IR")
            cols["asn"].append(asn)
            cols["hour"].append((H0 + np.timedelta64(h, "h")).astype("datetime64[us]").astype(dt.datetime))
            anchors = min(v, 4)
            row = dict.fromkeys(signals.COUNT_COLUMNS, 0)
            row.update(volume=v, runs=1 if v else 0, vantage_points=1 if v else 0, anchor_n=anchors,
                       anchor_ok=round(anchors * anchors_ok), target_n=v - anchors, target_ok=v - anchors)
            for c in signals.COUNT_COLUMNS:
                cols[c].append(row[c])
    types = {"cc": pa.string(), "asn": pa.string(), "hour": pa.timestamp("us")}
    return pa.table({k: pa.array(v, types.get(k, pa.int64())) for k, v in cols.items()})


def _sparse(dense: pa.Table) -> pa.Table:
    return dense.filter(pc.greater(dense.column("volume"), 0))


def _keyed(table: pa.Table) -> dict[tuple[str, object], tuple[object, ...]]:
    rows = table.select(["asn", "hour", *RESULT_COLUMNS]).to_pylist()
    return {(r["asn"], r["hour"]): tuple(r[c] for c in RESULT_COLUMNS) for r in rows}


def _check_same(dense: pa.Table, cfg: DetectorConfig | None = None) -> tuple[pa.Table, pa.Table]:
    """The sparse result holds every measured hour and every alerting hour of the dense one,
    with the same baselines and levels, and nothing else."""
    cfg = cfg or DetectorConfig()
    con = duckdb.connect()
    full = baselined_signals(con, dense, cfg)
    part = baselined_signals(con, _sparse(dense), cfg)
    con.close()
    measured = set(zip(_sparse(dense).column("asn").to_pylist(), _sparse(dense).column("hour").to_pylist(),
                       strict=True))
    want = {k: v for k, v in _keyed(full).items() if v[0] > 0 or k in measured}
    assert _keyed(part) == want
    key = [(r.cc, r.asn, r.level) for r in alert_runs(full)]
    assert [(r.cc, r.asn, r.level) for r in alert_runs(part)] == key
    spans = [(full.column("hour")[r.start_idx].as_py(), full.column("hour")[r.end_idx - 1].as_py())
             for r in alert_runs(full)]
    assert [(part.column("hour")[r.start_idx].as_py(), part.column("hour")[r.end_idx - 1].as_py())
            for r in alert_runs(part)] == spans
    return full, part


def test_a_network_falling_silent_alerts_on_its_empty_hours() -> None:
    # 30 measurements an hour for 9 days, then nothing for 12 hours, then back: the silent hours
    # have no row, and must still be critical hours (volume 0 against a baseline of 30).
    v = np.full(12 * 24, 30.0)
    v[9 * 24: 9 * 24 + 12] = 0
    full, part = _check_same(_counts({"AS1": v}))
    (run,) = alert_runs(part)
    assert run.end_idx - run.start_idx == 12 and run.level == 2
    assert part.num_rows == full.num_rows  # the silent hours came back as rows: they alert


def test_a_sparse_network_with_a_long_gap_adds_no_rows() -> None:
    # Trap: a network measuring a handful an hour now and then (an OONI volunteer) has a volume
    # baseline below min_volume_baseline: its empty hours say nothing, and a gap of weeks costs
    # nothing (no rows, no alerts).
    v = np.zeros(24 * 40)
    v[[3, 30, 31, 500, 24 * 39]] = 2
    full, part = _check_same(_counts({"AS1": v}))
    assert part.num_rows == 5 and full.num_rows == 24 * 39 + 1 - 3
    assert not alert_runs(part)


@pytest.mark.slow  # four dense walks of 60 days x 2 networks (the reference): ~3 s on an idle machine
def test_silence_long_enough_becomes_the_new_normal_and_back() -> None:
    # 10 busy days, 4 silent weeks (critical for the hold-out, then learned as zeros), a short
    # return, silence again, and a second network measuring throughout: every hour of the dense
    # walk is matched.
    v = np.zeros(24 * 60)
    v[: 24 * 10] = 30
    v[24 * 38: 24 * 40] = 25
    v[24 * 40 + 5: 24 * 40 + 7] = 3
    w = np.full(24 * 60, 12.0)  # measures to the end of the data
    w[24 * 20: 24 * 20 + 30] = 0
    _check_same(_counts({"AS1": v, "AS2": w}))
    _check_same(_counts({"AS1": v, "AS2": w}), DetectorConfig(hold_out_h=48))


def test_one_hour_of_the_day_held_out_keeps_a_network_walked() -> None:
    # Only one hour of the day was ever busy: after the silence starts, that hour stays critical
    # (held out) while the others learn zeros; the network is never "quiet" and is walked hour
    # by hour, with the same result as the dense walk.
    v = np.zeros(24 * 30)
    hod = np.arange(24 * 8) % 24
    v[: 24 * 8] = np.where(hod == 14, 40, 1)
    v[-1] = 1  # the data ends three weeks later
    full, part = _check_same(_counts({"AS1": v}))
    assert part.num_rows > 24 * 8 + 1  # the held-out hours alert, day after day


@pytest.mark.slow  # two dense walks of 40 days x 6 networks (the reference): ~3 s on an idle machine
def test_random_gaps_match_the_dense_walk() -> None:
    rng = np.random.default_rng(4)
    nets = {}
    for i in range(6):
        v = rng.poisson(rng.choice([2, 15, 40]), 24 * 40).astype(float)
        v[rng.random(len(v)) < rng.choice([0.1, 0.5, 0.95])] = 0
        a = int(rng.integers(0, 24 * 30))
        v[a: a + int(rng.integers(1, 24 * 10))] = 0
        v[int(rng.integers(0, 48))] = 5  # every network measures early
        nets[f"AS{i}"] = v
    _check_same(_counts(nets))
    _check_same(_counts(nets, anchors_ok=0.5))


def _failures(series: dict[str, np.ndarray], fails: dict[str, np.ndarray]) -> pa.Table:
    rows = []
    for name, n in series.items():
        for h in range(len(n)):
            rows.append({"cc": "IR", "asn": "AS1", "input": name,
                         "hour": (H0 + np.timedelta64(h, "h")).astype("datetime64[us]").astype(dt.datetime),
                         "n": int(n[h]), "failed": int(fails[name][h])})
    schema = pa.schema([("cc", pa.string()), ("asn", pa.string()), ("input", pa.string()),
                        ("hour", pa.timestamp("us")), ("n", pa.int64()), ("failed", pa.int64())])
    return pa.Table.from_pylist(rows, schema=schema)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cusum_over_measured_hours_matches_every_hour(seed: int) -> None:
    # The CUSUM visits only measured hours and the hours they enter and leave the trailing week;
    # with a zero row for every hour it visits them all (the reference). Gaps (a probe off for
    # days), blocks starting and ending inside gaps, short dips and thin history all included.
    rng = np.random.default_rng(seed)
    n_h = 24 * 30
    series, fails = {}, {}
    for i in range(12):
        n = rng.poisson(rng.choice([1, 3]), n_h)
        n[rng.random(n_h) < rng.choice([0.2, 0.7, 0.97])] = 0
        a = int(rng.integers(0, n_h))
        n[a: a + int(rng.integers(24, 24 * 9))] = 0  # a gap of one to nine days
        p = np.full(n_h, 0.02)
        s = int(rng.integers(0, n_h))
        p[s: s + int(rng.integers(2, 24 * 12))] = rng.choice([0.6, 1.0])
        series[f"in{i}"], fails[f"in{i}"] = n, rng.binomial(n, p)
    dense = _failures(series, fails)
    sparse = dense.filter(pc.greater(dense.column("n"), 0))
    cfg = DetectorConfig()

    def key(t: pa.Table) -> list[tuple[object, ...]]:
        return sorted((c.input, c.start_h, c.end_h, c.n, c.failed, round(c.baseline_rate, 9))
                      for c in cusum_changes(t, H0, n_h, cfg))

    want = key(dense)
    assert want, "the planted blocks must give changes to compare"
    assert key(sparse) == want
