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
    """Baselines and levels, hour by hour, over the hours that need it (sparse in time).

    The rows of ``table`` are the hours that have measurements (or any rows a caller passes,
    e.g. a dense grid); between a network's first row and the last hour of the data, an hour
    without a row is an hour with no measurement: a volume of **zero** (the network measured
    nothing), and no rate at all (nothing to divide). A zero volume alerts only against a volume
    baseline of at least ``min_volume_baseline`` (a network that measured, then fell silent), so
    a network whose every same-hour baseline is below that (or cannot reach it by learning more
    zeros: medians only fall) is *quiet*: its empty hours give level 0 and only push zeros into
    the volume baselines, which is applied in one step when its next row comes. Only networks
    that are not quiet are walked hour by hour through their empty hours. The cost follows the
    measured hours (plus the silent hours of networks that just went dark), not the time span.
    """
    n_rows = table.num_rows
    if n_rows == 0:
        for name in SIGNALS:
            for suffix, typ in (("_base", pa.float64()), ("_base_n", pa.int64()), ("_ratio", pa.float64()),
                                ("_level", pa.int8())):
                table = table.append_column(f"{name}{suffix}", pa.array([], typ))
        return table.append_column("level", pa.array([], pa.int8()))
    # networks as integer codes (rows are sorted by cc, asn, hour)
    keys = pc.binary_join_element_wise(pc.fill_null(table.column("cc"), ""), pc.fill_null(table.column("asn"), ""),
                                       "\x00")
    enc = pc.dictionary_encode(keys).combine_chunks()
    net = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n_net = len(enc.dictionary)
    rep = np.zeros(n_net, dtype=np.int64)  # a row of each network (its cc and asn for added rows)
    rep[net[::-1]] = np.arange(n_rows)[::-1]
    hour = table.column("hour").to_numpy().astype("datetime64[h]")
    h0 = hour.min()
    t_idx = (hour - h0).astype(np.int64)
    end_t = int(t_idx.max())
    hod0 = int((h0 - h0.astype("datetime64[D]")).astype(np.int64))
    first = np.full(n_net, end_t + 1, dtype=np.int64)
    np.minimum.at(first, net, t_idx)

    vol_row = _col(table, "volume")
    k_row, n_row = {}, {}
    for name, (num, den) in RATE_SIGNALS.items():
        n = _col(table, den)
        k_row[name] = _col(table, num) if num.endswith("_ok") else n - _col(table, num)
        n_row[name] = n
    days, window = cfg.baseline_days, 24 * cfg.baseline_days
    vbuf = np.full((n_net, 24, days), np.nan)
    vptr = np.zeros((n_net, 24), dtype=np.int64)
    rbuf = {s: np.full((n_net, window), np.nan) for s in RATE_SIGNALS}
    rptr = {s: np.zeros(n_net, dtype=np.int64) for s in RATE_SIGNALS}
    streak = np.zeros(n_net, dtype=np.int64)
    last = first - 1  # the last hour processed per network
    quiet = np.ones(n_net, dtype=bool)
    can_alert = np.zeros((n_net, 24), dtype=bool)  # per hour of the day: could an empty hour alert?
    alone = LEVELS.index(cfg.volume_alone)
    # the level an empty hour gets where the volume baseline can judge it (ratio 0)
    empty_vl = int(_grade(np.zeros(1), cfg)[0])
    empty_level = empty_vl if "volume" in cfg.alert_signals and empty_vl >= alone else 0

    order = np.lexsort((net, t_idx))
    t_sorted = t_idx[order]
    cols = [f"{s}_{x}" for s in SIGNALS for x in ("base", "base_n", "ratio", "level")]
    row_out = {c: np.full(n_rows, np.nan) for c in cols}
    row_level = np.zeros(n_rows, dtype=np.int8)
    extra: list[tuple[np.ndarray, int, dict[str, np.ndarray], np.ndarray]] = []  # (nets, t, values, level)
    pos = 0
    while True:
        due = ~quiet & (last < end_t)
        t_next = t_sorted[pos] if pos < n_rows else end_t + 1
        if due.any():
            t_next = min(t_next, int(last[due].min()) + 1)
        if t_next > end_t:
            break
        t = int(t_next)
        stop = int(np.searchsorted(t_sorted, t, side="right"))
        rows = order[pos:stop]
        pos = stop
        sub = np.union1d(net[rows], np.flatnonzero(due))  # due networks are exactly at last + 1 == t
        at = np.searchsorted(sub, net[rows])  # where each row's network sits in sub
        m = len(sub)
        ix = sub if m < n_net else slice(None)  # every network (dense data): views, not copies
        gap = t - last[ix] - 1
        if (gap > 0).any():
            gone = sub[gap > 0]
            _push_zeros(vbuf, vptr, gone, last[gone] + 1, gap[gap > 0], hod0, days)
            streak[gone] = 0
            if empty_level:
                can_alert[gone] = _can_alert(vbuf[gone].reshape(len(gone) * 24, days), cfg).reshape(len(gone), 24)
        hod = (hod0 + t) % 24
        v = np.zeros(m)
        v[at] = vol_row[rows]
        out: dict[str, np.ndarray] = {}
        levels: dict[str, np.ndarray] = {}
        base, base_n = _median_rows(vbuf[ix, hod, :])
        ok = (base_n >= cfg.min_baseline_days) & (base >= cfg.min_volume_baseline)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(ok, v / base, np.nan)
        out["volume_base"], out["volume_base_n"], out["volume_ratio"] = base, base_n.astype(float), ratio
        levels["volume"] = _grade(ratio, cfg)
        values = {}
        for name in RATE_SIGNALS:
            k, n = np.zeros(m), np.zeros(m)
            k[at], n[at] = k_row[name][rows], n_row[name][rows]
            with np.errstate(invalid="ignore", divide="ignore"):
                values[name] = np.where(n > 0, k / n, np.nan)
            base, base_n = _median_rows(rbuf[name][ix])
            ok = (base_n >= cfg.min_baseline_hours) & (base >= cfg.min_rate_baseline) & (n > 0)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"{name}_ratio"] = np.where(ok, values[name] / base, np.nan)
                judged = np.where(ok, _wilson_upper(k, n, cfg.z) / base, np.nan)
            out[f"{name}_base"], out[f"{name}_base_n"] = base, base_n.astype(float)
            levels[name] = _grade(judged, cfg)
        rate_level = np.zeros(m, dtype=np.int8)
        for name in cfg.alert_signals:
            if name != "volume":
                rate_level = np.maximum(rate_level, levels[name])
        level = rate_level
        if "volume" in cfg.alert_signals:
            vl = levels["volume"]
            level = np.where(rate_level > 0, np.maximum(rate_level, vl), np.where(vl >= alone, vl, 0)).astype(np.int8)
        for name, lv in levels.items():
            out[f"{name}_level"] = lv.astype(float)
        # learn from this hour unless it is critical (held out for at most hold_out_h in a row)
        st = np.where(level >= 2, streak[ix] + 1, 0)
        streak[ix] = st
        learn = ~((level >= 2) & (st <= cfg.hold_out_h))
        sel = learn
        nets = sub[sel]
        slot = vptr[nets, hod] % days
        vbuf[nets, hod, slot] = v[sel]
        vptr[nets, hod] += 1
        for name in RATE_SIGNALS:
            sel = learn & ~np.isnan(values[name])
            nets = sub[sel]
            rbuf[name][nets, rptr[name][nets] % window] = values[name][sel]
            rptr[name][nets] += 1
        last[ix] = t
        if empty_level:  # only this hour of the day's baseline changed
            can_alert[ix, hod] = _can_alert(vbuf[ix, hod, :], cfg)
            quiet[ix] = ~can_alert[ix].any(axis=1)
        # outputs: the rows of the table, and the empty hours that alert
        for c in cols:
            row_out[c][rows] = out[c][at]
        row_level[rows] = level[at]
        has_row = np.zeros(m, dtype=bool)
        has_row[at] = True
        alert = ~has_row & (level > 0)
        if alert.any():
            extra.append((sub[alert], t, {c: out[c][alert] for c in cols}, level[alert]))
    for name in SIGNALS:
        table = table.append_column(f"{name}_base", pa.array(row_out[f"{name}_base"], pa.float64(), from_pandas=True))
        table = table.append_column(f"{name}_base_n", pa.array(row_out[f"{name}_base_n"].astype(np.int64)))
        table = table.append_column(f"{name}_ratio", pa.array(row_out[f"{name}_ratio"], pa.float64(), from_pandas=True))
        table = table.append_column(f"{name}_level", pa.array(row_out[f"{name}_level"].astype(np.int8)))
    table = table.append_column("level", pa.array(row_level))
    if not extra:
        return table
    return _with_empty_alert_hours(table, extra, rep, h0)


def _push_zeros(vbuf: np.ndarray, vptr: np.ndarray, nets: np.ndarray, t_from: np.ndarray, count: np.ndarray,
                hod0: int, days: int) -> None:
    """Learn ``count`` empty hours (volume 0) from hour ``t_from`` on, per network: each hour of
    the day gets as many zeros as those hours hold it (the last ``days`` of them stay)."""
    s = (hod0 + t_from) % 24  # hour of day of each stretch's first hour
    hods = np.arange(24)
    per_hod = count[:, None] // 24 + (((hods[None, :] - s[:, None]) % 24) < (count[:, None] % 24))
    for j in range(days):
        r, h = np.nonzero(per_hod > j)
        if not len(r):
            break
        vbuf[nets[r], h, (vptr[nets[r], h] + j) % days] = 0.0
    vptr[nets] += per_hod


def _can_alert(rings: np.ndarray, cfg: DetectorConfig) -> np.ndarray:
    """Per same-hour volume ring (one per row): could an empty hour of that hour of the day
    alert, now or after learning more zeros? Only once the ring holds ``min_baseline_days``
    values, and learning zeros only lowers a median: so it is the median after padding the ring
    with zeros up to that many values that decides (below ``min_volume_baseline``: never)."""
    days = rings.shape[1]
    if cfg.min_baseline_days > days:
        return np.zeros(len(rings), dtype=bool)
    flat = rings.copy()
    have = (~np.isnan(flat)).sum(axis=1)
    pad = np.maximum(cfg.min_baseline_days - have, 0)
    # the ring fills its empty slots first: put the zeros there
    for j in range(cfg.min_baseline_days):
        r = np.flatnonzero(pad > j)
        if not len(r):
            break
        flat[r, have[r] + j] = 0.0
    med, n = _median_rows(flat)
    result: np.ndarray = (n >= cfg.min_baseline_days) & (med >= cfg.min_volume_baseline)
    return result


def _with_empty_alert_hours(table: pa.Table, extra: list[tuple[np.ndarray, int, dict[str, np.ndarray], np.ndarray]],
                            rep: np.ndarray, h0: np.datetime64) -> pa.Table:
    """The table with a row for every empty hour that alerted (a network that fell silent):
    zero counts, no rates, its baselines and levels; sorted by (cc, asn, hour) again."""
    nets = np.concatenate([e[0] for e in extra])
    hours = np.concatenate([np.full(len(e[0]), e[1], dtype=np.int64) for e in extra])
    cols: dict[str, pa.Array | pa.ChunkedArray] = {}
    for f in table.schema:
        if f.name in ("cc", "asn"):
            cols[f.name] = table.column(f.name).take(pa.array(rep[nets]))
        elif f.name == "hour":
            cols[f.name] = pa.array((h0 + hours.astype("timedelta64[h]")).astype("datetime64[us]")).cast(f.type)
        elif f.name == "level":
            cols[f.name] = pa.array(np.concatenate([e[3] for e in extra]).astype(np.int8))
        elif f.name.endswith("_level"):
            cols[f.name] = pa.array(np.concatenate([e[2][f.name] for e in extra]).astype(np.int8))
        elif f.name.endswith("_base_n"):
            cols[f.name] = pa.array(np.concatenate([e[2][f.name] for e in extra]).astype(np.int64))
        elif f.name.endswith(("_base", "_ratio")):
            cols[f.name] = pa.array(np.concatenate([e[2][f.name] for e in extra]), pa.float64(), from_pandas=True)
        elif pa.types.is_integer(f.type):
            cols[f.name] = pa.array(np.zeros(len(nets), dtype=np.int64)).cast(f.type)
        else:
            cols[f.name] = pa.nulls(len(nets), f.type)
    empty = pa.table(cols, schema=table.schema)
    return pa.concat_tables([table, empty]).sort_by([("cc", "ascending"), ("asn", "ascending"), ("hour", "ascending")])


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
    """Merge consecutive alert hours per network (rows sorted by cc, asn, hour). Rows are sparse
    in hours (an hour without a row had no measurement and did not alert), so hours are
    consecutive by their time, not by their row: up to ``max_gap_h`` hours between two alert
    hours of a network join them."""
    level = table.column("level").to_numpy()
    hour = table.column("hour").to_numpy().astype("datetime64[h]").astype(np.int64)
    cc = table.column("cc").to_pylist()
    asn = table.column("asn").to_pylist()
    runs: list[AlertRun] = []
    alert_idx = np.flatnonzero(level > 0)
    cur: AlertRun | None = None
    for i in alert_idx.tolist():
        if cur and cc[i] == cur.cc and asn[i] == cur.asn and hour[i] - hour[cur.end_idx - 1] - 1 <= max_gap_h:
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

    Sparse in time: an hour without measurements adds nothing to S (its LLR is 0); what it can
    change is whether the series is testable (measurements leave the trailing week) and the hour
    S was last zero. So the test visits only the hours that have measurements, the hour after
    each (it enters the trailing week) and the hour it leaves the week; the hours between two
    visited ones behave like the first of them, and only move "last zero" along.
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
    # series x visited-hours arrays, a chunk of series at a time: a year of a thousand-URL list
    # over hundreds of networks must not need gigabytes
    order = np.lexsort((hours, inverse))
    inverse, hours, counts, fails = inverse[order], hours[order], counts[order], fails[order]
    window = 24 * cfg.baseline_days
    changes: list[Change] = []
    chunk = max(1, _CUSUM_CELLS // max(_visited(hours, window, n_hours).size, 1))
    for lo in range(0, len(uniq), chunk):
        hi = min(lo + chunk, len(uniq))
        a, b = np.searchsorted(inverse, [lo, hi])
        visit = _visited(hours[a:b], window, n_hours)
        n = np.zeros((hi - lo, len(visit)))
        f = np.zeros((hi - lo, len(visit)))
        col = np.searchsorted(visit, hours[a:b])
        np.add.at(n, (inverse[a:b] - lo, col), counts[a:b])
        np.add.at(f, (inverse[a:b] - lo, col), fails[a:b])
        changes.extend(_cusum_chunk(uniq[lo:hi], visit, n_hours, n, f, cfg))
    return changes


_CUSUM_CELLS = 4_000_000  # series x visited hours per chunk (4 float arrays of 32 MB)


def _visited(hours: np.ndarray, window: int, n_hours: int) -> np.ndarray:
    """The hours the CUSUM must visit: each measured hour, the hour after it (it joins the
    trailing window) and the hour it leaves the window."""
    h = np.unique(hours)
    visit = np.unique(np.concatenate([h, h + 1, h + window + 1]))
    out: np.ndarray = visit[visit < n_hours]
    return out


def _cusum_chunk(uniq: np.ndarray, visit: np.ndarray, n_hours: int, n: np.ndarray, f: np.ndarray,
                 cfg: DetectorConfig) -> list[Change]:
    """The CUSUM of ``uniq``'s series over the hours ``visit`` (columns of ``n`` and ``f``)."""
    window = 24 * cfg.baseline_days
    cn = np.concatenate([np.zeros((len(uniq), 1)), np.cumsum(n, axis=1)], axis=1)
    cf = np.concatenate([np.zeros((len(uniq), 1)), np.cumsum(f, axis=1)], axis=1)
    # the column where each visited hour's trailing window [t - window, t) begins
    lo_col = np.searchsorted(visit, np.maximum(visit - window, 0))

    m = len(uniq)
    s_up = np.zeros(m)
    s_down = np.zeros(m)
    last_zero_up = np.full(m, -1)
    last_zero_down = np.full(m, -1)
    alarm = np.zeros(m, dtype=bool)
    start = np.full(m, -1)
    p0 = np.full(m, np.nan)
    changes: list[Change] = []
    prev = -1
    for j, t in enumerate(visit.tolist()):
        if t > prev + 1:
            # hours prev+1 .. t-1 had no measurements and the same trailing window as prev:
            # S stays, and where it is zero, "last zero" moves to t - 1
            last_zero_up = np.where(~alarm & (s_up == 0), t - 1, last_zero_up)
            last_zero_down = np.where(alarm & (s_down == 0), t - 1, last_zero_down)
        prev = t
        lo = lo_col[j]
        hist_n = cn[:, j] - cn[:, lo]
        trailing = np.where(hist_n > 0, (cf[:, j] - cf[:, lo]) / np.maximum(hist_n, 1), np.nan)
        live_p0 = np.clip(trailing, cfg.cusum_floor, 0.99)
        testable = (hist_n >= cfg.cusum_min_history) & (trailing <= cfg.cusum_max_baseline)
        p0 = np.where(alarm, p0, live_p0)  # frozen during a change
        p1 = np.minimum(p0 + cfg.cusum_shift, 0.99)
        with np.errstate(invalid="ignore", divide="ignore"):
            llr = f[:, j] * np.log(p1 / p0) + (n[:, j] - f[:, j]) * np.log((1 - p1) / (1 - p0))
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
            changes.append(_change(uniq[i], int(start[i]), int(last_zero_down[i]) + 1, float(p0[i]), visit, n[i], f[i]))
        alarm = alarm & ~ended
        s_up = np.where(ended, 0.0, s_up)
        last_zero_up = np.where(ended, t, last_zero_up)
    if n_hours - 1 > prev:  # the empty hours after the last visited one
        last_zero_down = np.where(alarm & (s_down == 0), n_hours - 1, last_zero_down)
    for i in np.flatnonzero(alarm).tolist():
        # still in alarm at the end of the data: ended if the return test is at least half way
        # (hours of successes since the last failure), else ongoing
        ended_late = s_down[i] >= cfg.cusum_threshold / 2
        end = int(last_zero_down[i]) + 1 if ended_late else None
        changes.append(_change(uniq[i], int(start[i]), end, float(p0[i]), visit, n[i], f[i], n_hours))
    return changes


def _change(key: str, start: int, end: int | None, p0: float, visit: np.ndarray, n: np.ndarray, f: np.ndarray,
            n_hours: int | None = None) -> Change:
    cc, asn, inp = key.split("\x00")
    stop = (n_hours or 0) if end is None else end
    a, b = np.searchsorted(visit, [start, stop])
    return Change(cc, asn, inp, start, end, p0 if math.isfinite(p0) else 0.0,
                  int(n[a:b].sum()), int(f[a:b].sum()))
