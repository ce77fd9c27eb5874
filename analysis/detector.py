"""Anomaly detection on hourly signals: IODA-style baselines and alert levels per network, and a
Bernoulli CUSUM per (country, ASN, input) that dates the start and end of a new block.

Baselines (why two kinds): measurement *volume* follows the volunteers' day (laptops sleep at
night), so its baseline is the median of the same hour of day over the previous 7 days. Success
*rates* have no daily cycle, so their baseline is the median of the previous 168 hourly values,
which has 24 times more samples and is not fooled by a shutdown that repeats at the same hour
every day (exam-season shutdowns): up to 3 dark hours a day leave a 168-hour median unmoved,
while a same-hour median would call the fourth such day normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa

# Rates the detector compares with their baselines; layer rates are success (1 - failure)
# rates so that every signal alerts when it *drops*.
RATE_SIGNALS: dict[str, tuple[str, str]] = {
    "anchor_success": ("anchor_ok", "anchor_n"),
    "target_success": ("target_ok", "target_n"),
    "dns_success": ("dns_fail", "dns_n"),
    "tcp_success": ("tcp_fail", "tcp_n"),
    "tls_success": ("tls_fail", "tls_n"),
    "http_success": ("http_fail", "http_n"),
}
SIGNALS = ("volume", *RATE_SIGNALS)
LEVELS = ("ok", "warning", "critical")


@dataclass(frozen=True)
class DetectorConfig:
    """Thresholds are fractions of the baseline (IODA: warning below 80 %, critical below 50 %)."""

    warning: float = 0.8
    critical: float = 0.5
    baseline_days: int = 7
    min_baseline_hours: int = 48  # rate baselines need this many hourly values
    min_baseline_days: int = 3  # volume baselines need this many same-hour values
    min_volume_baseline: float = 5.0  # below this a volume drop says nothing
    min_rate_baseline: float = 0.2  # a signal that rarely succeeds anyway cannot drop
    # A rate hour is judged on the upper end of its Wilson interval, so that 2 of 3 anchors
    # answering is not a 33 % drop: few samples need a clearer fall to alert.
    z: float = 1.64
    alert_signals: tuple[str, ...] = ("volume", "anchor_success", "target_success")
    # Volume is the noisiest signal (a laptop sleeping is not a shutdown): alone, it must reach
    # this level to make an hour an alert; with a rate signal alerting it adds to the evidence.
    volume_alone: str = "critical"
    # CUSUM (per country, ASN, input) over the failed or blocked rate
    cusum_shift: float = 0.5  # the rate increase the test is tuned to find
    cusum_threshold: float = 7.0  # log-likelihood ratio needed to call a change
    cusum_min_history: int = 12  # measurements in the trailing window before testing
    cusum_floor: float = 0.05  # lowest baseline failure rate assumed (noise)
    cusum_max_baseline: float = 0.5  # an input failing more than this already is not "new"
    extra: dict[str, float] = field(default_factory=dict)


def baselined_signals(con: duckdb.DuckDBPyConnection, signals: pa.Table, cfg: DetectorConfig) -> pa.Table:
    """Rates, baselines, ratios and the alert level of every (cc, asn, hour)."""
    con.register("_vantage_signal_counts", signals)
    rates = []
    for name, (num, den) in RATE_SIGNALS.items():
        value = f"{num}::DOUBLE / {den}" if num.endswith("_ok") else f"1 - {num}::DOUBLE / {den}"
        rates.append(f"CASE WHEN {den} > 0 THEN {value} END AS {name}")
    days = cfg.baseline_days
    # Hours are dense per network (signals.network_hour_signals fills gaps with zero volume), so
    # ROWS frames are exact and much faster than RANGE frames over timestamps.
    same_hour = f"PARTITION BY cc, asn, hour(hour) ORDER BY hour ROWS BETWEEN {days} PRECEDING AND 1 PRECEDING"
    windows = [f"median(volume) OVER ({same_hour}) AS volume_base", f"count(volume) OVER ({same_hour}) AS volume_base_n"]
    for name in RATE_SIGNALS:
        frame = f"PARTITION BY cc, asn ORDER BY hour ROWS BETWEEN {24 * days} PRECEDING AND 1 PRECEDING"
        windows.append(f"median({name}) OVER ({frame}) AS {name}_base")
        windows.append(f"count({name}) OVER ({frame}) AS {name}_base_n")
    try:
        table = con.sql(f"""
            WITH r AS (SELECT *, {', '.join(rates)} FROM _vantage_signal_counts)
            SELECT *, {', '.join(windows)} FROM r ORDER BY cc, asn, hour""").to_arrow_table()
    finally:
        con.unregister("_vantage_signal_counts")
    return _add_levels(table, cfg)


def _wilson_upper(k: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z * z / n
        centre = p + z * z / (2 * n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return np.minimum(1.0, (centre + half) / den)


def _col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(float)


def _add_levels(table: pa.Table, cfg: DetectorConfig) -> pa.Table:
    n_rows = table.num_rows
    levels: dict[str, np.ndarray] = {}
    ratios: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        vol, base = _col(table, "volume"), _col(table, "volume_base")
        ok = (_col(table, "volume_base_n") >= cfg.min_baseline_days) & (base >= cfg.min_volume_baseline)
        ratios["volume"] = np.where(ok, vol / base, np.nan)
        judged = {"volume": ratios["volume"]}
        for name, (num, den) in RATE_SIGNALS.items():
            n = _col(table, den)
            k = _col(table, num) if num.endswith("_ok") else n - _col(table, num)
            base = _col(table, f"{name}_base")
            ok = (_col(table, f"{name}_base_n") >= cfg.min_baseline_hours) & (base >= cfg.min_rate_baseline) & (n > 0)
            ratios[name] = np.where(ok, (k / n) / base, np.nan)
            judged[name] = np.where(ok, _wilson_upper(k, n, cfg.z) / base, np.nan)
    for name, r in judged.items():
        lv = np.zeros(n_rows, dtype=np.int8)
        lv[r < cfg.warning] = 1
        lv[r < cfg.critical] = 2
        levels[name] = lv
    rate_level = np.zeros(n_rows, dtype=np.int8)
    for name in cfg.alert_signals:
        if name != "volume":
            rate_level = np.maximum(rate_level, levels[name])
    level = rate_level.copy()
    if "volume" in cfg.alert_signals:
        vol_level = levels["volume"]
        alone = LEVELS.index(cfg.volume_alone)
        level = np.where(rate_level > 0, np.maximum(rate_level, vol_level), np.where(vol_level >= alone, vol_level, 0))
    for name in SIGNALS:
        table = table.append_column(f"{name}_ratio", pa.array(ratios[name], pa.float64(), from_pandas=True))
        table = table.append_column(f"{name}_level", pa.array(levels[name]))
    return table.append_column("level", pa.array(level.astype(np.int8)))


@dataclass
class AlertRun:
    """Consecutive alert hours of one network: hours [start, end)."""

    cc: str
    asn: str
    start_idx: int  # row index in the baselined table
    end_idx: int  # exclusive
    level: int


def alert_runs(table: pa.Table, max_gap_h: int = 0) -> list[AlertRun]:
    """Merge consecutive alert hours per network (rows sorted by cc, asn, hour; dense hours)."""
    level = table.column("level").to_numpy()
    cc = table.column("cc").to_pylist()
    asn = table.column("asn").to_pylist()
    runs: list[AlertRun] = []
    alert_idx = np.flatnonzero(level > 0)
    cur: AlertRun | None = None
    for i in alert_idx.tolist():
        if cur and cc[i] == cur.cc and asn[i] == cur.asn and i - cur.end_idx <= max_gap_h:
            cur.end_idx = i + 1
            cur.level = max(cur.level, int(level[i]))
            continue
        if cur:
            runs.append(cur)
        cur = AlertRun(cc[i], asn[i], i, i + 1, int(level[i]))
    if cur:
        runs.append(cur)
    return runs


# --------------------------------------------------------------------------- CUSUM


@dataclass
class Change:
    """A change in one (cc, asn, input) series found by the CUSUM: hours [start, end)."""

    cc: str
    asn: str
    input: str
    start_h: int  # index into the hour grid
    end_h: int | None  # None: still failing at the end of the data
    baseline_rate: float
    n: int = 0
    failed: int = 0


def cusum_changes(table: pa.Table, hour0: np.datetime64, n_hours: int, cfg: DetectorConfig) -> list[Change]:
    """Bernoulli CUSUM per (cc, asn, input) over hourly (n, failed).

    Upward test: S = max(0, S + LLR) with LLR of "failure rate p1 = p0 + shift" against the
    trailing-week rate p0; the change starts the hour after S was last zero. While in alarm the
    baseline is frozen and a mirror test finds the return to p0, dating the end the same way.
    """
    if table.num_rows == 0:
        return []
    keys = [f"{c}\x00{a}\x00{i}" for c, a, i in zip(table.column("cc").to_pylist(), table.column("asn").to_pylist(),
                                                     table.column("input").to_pylist(), strict=True)]
    uniq, inverse = np.unique(np.asarray(keys, dtype=object), return_inverse=True)
    hours = ((table.column("hour").to_numpy().astype("datetime64[h]") - hour0.astype("datetime64[h]"))
             .astype(np.int64))
    n = np.zeros((len(uniq), n_hours))
    f = np.zeros((len(uniq), n_hours))
    np.add.at(n, (inverse, hours), table.column("n").to_numpy().astype(float))
    np.add.at(f, (inverse, hours), table.column("failed").to_numpy().astype(float))
    window = 24 * cfg.baseline_days
    cn = np.concatenate([np.zeros((len(uniq), 1)), np.cumsum(n, axis=1)], axis=1)
    cf = np.concatenate([np.zeros((len(uniq), 1)), np.cumsum(f, axis=1)], axis=1)

    m = len(uniq)
    s_up = np.zeros(m)
    s_down = np.zeros(m)
    last_zero_up = np.full(m, -1)
    last_zero_down = np.full(m, -1)
    alarm = np.zeros(m, dtype=bool)
    start = np.full(m, -1)
    p0 = np.full(m, np.nan)
    changes: list[Change] = []
    for t in range(n_hours):
        lo = max(0, t - window)
        hist_n = cn[:, t] - cn[:, lo]
        trailing = np.where(hist_n > 0, (cf[:, t] - cf[:, lo]) / np.maximum(hist_n, 1), np.nan)
        live_p0 = np.clip(trailing, cfg.cusum_floor, 0.99)
        testable = (hist_n >= cfg.cusum_min_history) & (trailing <= cfg.cusum_max_baseline)
        p0 = np.where(alarm, p0, live_p0)  # frozen during a change
        p1 = np.minimum(p0 + cfg.cusum_shift, 0.99)
        with np.errstate(invalid="ignore", divide="ignore"):
            llr = f[:, t] * np.log(p1 / p0) + (n[:, t] - f[:, t]) * np.log((1 - p1) / (1 - p0))
        llr = np.nan_to_num(llr)
        # upward test (series not in alarm)
        up = ~alarm & testable
        s_up = np.where(up, np.maximum(0.0, s_up + llr), 0.0)
        last_zero_up = np.where(~alarm & (s_up == 0), t, last_zero_up)
        fire = up & (s_up > cfg.cusum_threshold)
        for i in np.flatnonzero(fire).tolist():
            start[i] = last_zero_up[i] + 1
        alarm = alarm | fire
        s_down = np.where(fire, 0.0, s_down)
        last_zero_down = np.where(fire, t, last_zero_down)
        # downward test (series in alarm, and not the hour it fired)
        down = alarm & ~fire
        s_down = np.where(down, np.maximum(0.0, s_down - llr), s_down)
        last_zero_down = np.where(down & (s_down == 0), t, last_zero_down)
        ended = down & (s_down > cfg.cusum_threshold)
        for i in np.flatnonzero(ended).tolist():
            changes.append(_change(uniq[i], int(start[i]), int(last_zero_down[i]) + 1, float(p0[i]), n[i], f[i]))
        alarm = alarm & ~ended
        s_up = np.where(ended, 0.0, s_up)
        last_zero_up = np.where(ended, t, last_zero_up)
    for i in np.flatnonzero(alarm).tolist():
        changes.append(_change(uniq[i], int(start[i]), None, float(p0[i]), n[i], f[i]))
    return changes


def _change(key: str, start: int, end: int | None, p0: float, n: np.ndarray, f: np.ndarray) -> Change:
    cc, asn, inp = key.split("\x00")
    stop = len(n) if end is None else end
    return Change(cc, asn, inp, start, end, p0 if math.isfinite(p0) else 0.0,
                  int(n[start:stop].sum()), int(f[start:stop].sum()))
