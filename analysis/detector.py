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
import pyarrow.compute as pc

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
    # Critical hours are kept out of the baselines for up to this long: a long shutdown stays
    # an outage to its end; a permanent change becomes the new normal after two weeks.
    hold_out_h: int = 14 * 24
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
    """Rates, baselines, ratios and the alert level of every (cc, asn, hour).

    Rates come from SQL; baselines and levels are computed hour by hour (vectorized over
    networks) because a baseline must not learn from the outage it is measuring: critical hours
    are held out of every baseline for up to ``hold_out_h`` hours, so a week-long shutdown stays
    critical to its end instead of becoming the new normal after three and a half days.
    """
    rates = []
    # column names come from RATE_SIGNALS, this module's constants (identifiers cannot be bound)
    for name, (num, den) in RATE_SIGNALS.items():
        value = f"{num}::DOUBLE / {den}" if num.endswith("_ok") else f"1 - {num}::DOUBLE / {den}"
        rates.append(f"CASE WHEN {den} > 0 THEN {value} END AS {name}")
    table = con.from_arrow(signals).select(f"*, {', '.join(rates)}").order("cc, asn, hour").to_arrow_table()
    return _levels(table, cfg)


def _wilson_upper(k: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        den = 1 + z * z / n
        centre = p + z * z / (2 * n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        bound: np.ndarray = np.minimum(1.0, (centre + half) / den)
        return bound


def _col(table: pa.Table, name: str) -> np.ndarray:
    values: np.ndarray = table.column(name).to_numpy(zero_copy_only=False).astype(float)
    return values


def _median_rows(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median of the non-NaN values of each row, and how many there were (NaN sorts last)."""
    srt = np.sort(buf, axis=1)
    n = (~np.isnan(buf)).sum(axis=1)
    lo = np.maximum(n - 1, 0) // 2
    hi = np.maximum(n, 1) // 2
    rows = np.arange(buf.shape[0])
    med = (srt[rows, lo] + srt[rows, np.minimum(hi, buf.shape[1] - 1)]) / 2
    med = np.where(n % 2 == 1, srt[rows, lo], med)
    return np.where(n > 0, med, np.nan), n


def _levels(table: pa.Table, cfg: DetectorConfig) -> pa.Table:
    n_rows = table.num_rows
    if n_rows == 0:
        for name in SIGNALS:
            for suffix, typ in (("_base", pa.float64()), ("_base_n", pa.int64()), ("_ratio", pa.float64()),
                                ("_level", pa.int8())):
                table = table.append_column(f"{name}{suffix}", pa.array([], typ))
        return table.append_column("level", pa.array([], pa.int8()))
    # rows are sorted by (cc, asn, hour) and dense in hours: lay them out as a network x hour grid
    keys = np.asarray([f"{c}\x00{a}" for c, a in zip(table.column("cc").to_pylist(), table.column("asn").to_pylist(),
                                                      strict=True)], dtype=object)
    _, net = np.unique(keys, return_inverse=True)
    hour = table.column("hour").to_numpy().astype("datetime64[h]")
    h0 = hour.min()
    t_idx = (hour - h0).astype(np.int64)
    n_net, n_h = int(net.max()) + 1, int(t_idx.max()) + 1
    grid = np.full((n_net, n_h), -1, dtype=np.int64)
    grid[net, t_idx] = np.arange(n_rows)
    hod0 = int((h0 - h0.astype("datetime64[D]")).astype(np.int64))

    def on_grid(values: np.ndarray) -> np.ndarray:
        g = np.full((n_net, n_h), np.nan)
        g[net, t_idx] = values
        return g

    vol = on_grid(_col(table, "volume"))
    rate_k, rate_n = {}, {}
    for name, (num, den) in RATE_SIGNALS.items():
        n = _col(table, den)
        k = _col(table, num) if num.endswith("_ok") else n - _col(table, num)
        rate_k[name], rate_n[name] = on_grid(k), on_grid(n)
    days, window = cfg.baseline_days, 24 * cfg.baseline_days
    out = {f"{s}_{x}": np.full((n_net, n_h), np.nan) for s in SIGNALS for x in ("base", "base_n", "ratio", "level")}
    level_out = np.zeros((n_net, n_h), dtype=np.int8)
    vbuf = np.full((n_net, 24, days), np.nan)
    vptr = np.zeros((n_net, 24), dtype=np.int64)
    rbuf = {s: np.full((n_net, window), np.nan) for s in RATE_SIGNALS}
    rptr = {s: np.zeros(n_net, dtype=np.int64) for s in RATE_SIGNALS}
    streak = np.zeros(n_net, dtype=np.int64)
    nets = np.arange(n_net)
    alone = LEVELS.index(cfg.volume_alone)
    for t in range(n_h):
        hod = (hod0 + t) % 24
        levels: dict[str, np.ndarray] = {}
        base, base_n = _median_rows(vbuf[:, hod, :])
        v = vol[:, t]
        ok = (base_n >= cfg.min_baseline_days) & (base >= cfg.min_volume_baseline) & ~np.isnan(v)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(ok, v / base, np.nan)
        out["volume_base"][:, t], out["volume_base_n"][:, t], out["volume_ratio"][:, t] = base, base_n, ratio
        levels["volume"] = _grade(ratio, cfg)
        values = {}
        for name in RATE_SIGNALS:
            k, n = rate_k[name][:, t], rate_n[name][:, t]
            with np.errstate(invalid="ignore", divide="ignore"):
                values[name] = np.where(n > 0, k / n, np.nan)
            base, base_n = _median_rows(rbuf[name])
            ok = (base_n >= cfg.min_baseline_hours) & (base >= cfg.min_rate_baseline) & (n > 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"{name}_ratio"][:, t] = np.where(ok, values[name] / base, np.nan)
                judged = np.where(ok, _wilson_upper(k, n, cfg.z) / base, np.nan)
            out[f"{name}_base"][:, t], out[f"{name}_base_n"][:, t] = base, base_n
            levels[name] = _grade(judged, cfg)
        rate_level = np.zeros(n_net, dtype=np.int8)
        for name in cfg.alert_signals:
            if name != "volume":
                rate_level = np.maximum(rate_level, levels[name])
        level = rate_level
        if "volume" in cfg.alert_signals:
            vl = levels["volume"]
            level = np.where(rate_level > 0, np.maximum(rate_level, vl), np.where(vl >= alone, vl, 0)).astype(np.int8)
        level_out[:, t] = level
        for name, lv in levels.items():
            out[f"{name}_level"][:, t] = lv
        # learn from this hour unless it is critical (held out for at most hold_out_h in a row)
        streak = np.where(level >= 2, streak + 1, 0)
        learn = ~((level >= 2) & (streak <= cfg.hold_out_h))
        sel = learn & ~np.isnan(v)
        vbuf[nets[sel], hod, vptr[sel, hod] % days] = v[sel]
        vptr[sel, hod] += 1
        for name in RATE_SIGNALS:
            sel = learn & ~np.isnan(values[name])
            rbuf[name][nets[sel], rptr[name][sel] % window] = values[name][sel]
            rptr[name][sel] += 1
    rows_net, rows_t = net, t_idx
    for name in SIGNALS:
        table = table.append_column(f"{name}_base", pa.array(out[f"{name}_base"][rows_net, rows_t], pa.float64(),
                                                             from_pandas=True))
        table = table.append_column(f"{name}_base_n", pa.array(out[f"{name}_base_n"][rows_net, rows_t].astype(np.int64)))
        table = table.append_column(f"{name}_ratio", pa.array(out[f"{name}_ratio"][rows_net, rows_t], pa.float64(),
                                                              from_pandas=True))
        table = table.append_column(f"{name}_level", pa.array(out[f"{name}_level"][rows_net, rows_t].astype(np.int8)))
    return table.append_column("level", pa.array(level_out[rows_net, rows_t]))


def _grade(ratio: np.ndarray, cfg: DetectorConfig) -> np.ndarray:
    lv = np.zeros(len(ratio), dtype=np.int8)
    with np.errstate(invalid="ignore"):
        lv[ratio < cfg.warning] = 1
        lv[ratio < cfg.critical] = 2
    return lv


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
    # series keys as integer codes from each column's dictionary (no per-row Python strings)
    code = np.zeros(table.num_rows, dtype=np.int64)
    dicts = []
    for name in ("cc", "asn", "input"):
        enc = pc.dictionary_encode(table.column(name)).combine_chunks()
        dicts.append(enc.dictionary.to_pylist())
        code = code * len(dicts[-1]) + enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    codes, inverse = np.unique(code, return_inverse=True)
    del code
    n_asn, n_inp = len(dicts[1]), len(dicts[2])
    uniq = np.asarray([f"{dicts[0][c // (n_asn * n_inp)]}\x00{dicts[1][(c // n_inp) % n_asn]}\x00{dicts[2][c % n_inp]}"
                       for c in codes.tolist()], dtype=object)
    hours = ((table.column("hour").to_numpy().astype("datetime64[h]") - hour0.astype("datetime64[h]"))
             .astype(np.int64))
    counts = table.column("n").to_numpy().astype(float)
    fails = table.column("failed").to_numpy().astype(float)
    # series x hours arrays, a chunk of series at a time: a year of a thousand-URL list over
    # hundreds of networks must not need gigabytes
    order = np.argsort(inverse, kind="stable")
    inverse, hours, counts, fails = inverse[order], hours[order], counts[order], fails[order]
    chunk = max(1, _CUSUM_CELLS // max(n_hours, 1))
    changes: list[Change] = []
    for lo in range(0, len(uniq), chunk):
        hi = min(lo + chunk, len(uniq))
        a, b = np.searchsorted(inverse, [lo, hi])
        n = np.zeros((hi - lo, n_hours))
        f = np.zeros((hi - lo, n_hours))
        np.add.at(n, (inverse[a:b] - lo, hours[a:b]), counts[a:b])
        np.add.at(f, (inverse[a:b] - lo, hours[a:b]), fails[a:b])
        changes.extend(_cusum_chunk(uniq[lo:hi], n, f, cfg))
    return changes


_CUSUM_CELLS = 4_000_000  # series x hours per chunk (4 float arrays of 32 MB)


def _cusum_chunk(uniq: np.ndarray, n: np.ndarray, f: np.ndarray, cfg: DetectorConfig) -> list[Change]:
    n_hours = n.shape[1]
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
        # still in alarm at the end of the data: ended if the return test is at least half way
        # (hours of successes since the last failure), else ongoing
        ended_late = s_down[i] >= cfg.cusum_threshold / 2
        end = int(last_zero_down[i]) + 1 if ended_late else None
        changes.append(_change(uniq[i], int(start[i]), end, float(p0[i]), n[i], f[i]))
    return changes


def _change(key: str, start: int, end: int | None, p0: float, n: np.ndarray, f: np.ndarray) -> Change:
    cc, asn, inp = key.split("\x00")
    stop = len(n) if end is None else end
    return Change(cc, asn, inp, start, end, p0 if math.isfinite(p0) else 0.0,
                  int(n[start:stop].sum()), int(f[start:stop].sum()))
