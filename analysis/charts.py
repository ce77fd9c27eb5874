"""Static report charts as PNG bytes (matplotlib, Agg backend: no display, no browser needed):
anomalies over time, blocking methods, tunnels and messaging apps, and a timeline per event.
Date axes fit any span (AutoDateLocator, ConciseDateFormatter); count axes are whole numbers."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports are rendered on headless analyst machines and CI

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.events import Event  # noqa: E402

_STATUS_COLORS = {"blocked": "#c0392b", "down": "#7f8c8d", "probe_failure": "#8e44ad", "no_control": "#f39c12",
                  "no_connectivity": "#34495e", "throttled": "#d35400"}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _empty(title: str, note: str) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 2))
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, note, ha="center", va="center", color="#555")
    return _png(fig)


def _date_axis(ax: Axes) -> None:
    """Date ticks that fit any span, hours to years: matplotlib picks the unit (AutoDateLocator)
    and writes each tick with only what changed (ConciseDateFormatter: the year once, then months)."""
    locator = mdates.AutoDateLocator(minticks=3, maxticks=9)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def _count_axis(axis: matplotlib.axis.Axis) -> None:
    """Counts of measurements are whole numbers: no 0.5 ticks."""
    axis.set_major_locator(MaxNLocator(integer=True))


def shade_events(ax: Axes, events: Sequence[Event], lo: dt.datetime, hi: dt.datetime) -> None:
    """IODA-style bands: network-wide events red, blocking amber, the rest grey."""
    for e in events:
        end = e.end or hi
        if end < lo or e.start > hi:
            continue
        color = {"shutdown": "#e74c3c", "connectivity_lost": "#e74c3c", "service_blocking": "#f39c12"}.get(e.kind, "#95a5a6")
        ax.axvspan(_naive(max(e.start, lo)), _naive(min(end, hi)), color=color, alpha=0.15, linewidth=0)  # type: ignore[arg-type]


def _naive(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def anomalies_over_time(series_table: pa.Table, bucket: str = "day", events: Sequence[Event] = ()) -> bytes:
    """Lines of anomalous measurements per ``bucket`` (hour or day) and country (``series_table``:
    t, probe_cc, status, n), with the events shaded."""
    title = f"Anomalies over time (measurements per {bucket}; shaded: events)"
    if series_table.num_rows == 0:
        return _empty(title, "no anomalous measurements")
    rows = series_table.to_pylist()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    series: dict[tuple[str, str], dict[dt.datetime, int]] = {}
    for r in rows:
        series.setdefault((r["probe_cc"], r["status"]), {})[_naive(r["t"])] = r["n"]
    step = dt.timedelta(hours=1) if bucket == "hour" else dt.timedelta(days=1)
    times = [_naive(r["t"]) for r in rows]
    # a bucket without anomalies is a zero, not a gap for the line to bridge
    grid = [min(times) + i * step for i in range(int((max(times) - min(times)) / step) + 1)]
    styles = ["-", "--", ":", "-."]
    ccs = sorted({k[0] for k in series})
    for (cc, status), points in sorted(series.items()):
        if len(grid) <= 5000:
            points = {t: points.get(t, 0) for t in grid}
        ts = sorted(points)
        # matplotlib's date units convert datetimes; its stubs only name floats
        ax.plot(ts, [points[t] for t in ts], styles[ccs.index(cc) % len(styles)], marker="." if len(ts) < 200 else None,  # type: ignore[arg-type]
                color=_STATUS_COLORS.get(status, "#333"), label=f"{cc} {status}")
    # one bucket of margin each side: a single day or hour stays a dot in a readable axis
    lo, hi = min(times) - step, max(times) + step
    ax.set_xlim(lo, hi)  # type: ignore[arg-type]
    shade_events(ax, events, lo.replace(tzinfo=dt.UTC), hi.replace(tzinfo=dt.UTC))
    ax.set_title(title)
    ax.set_ylabel("measurements")
    _date_axis(ax)
    _count_axis(ax.yaxis)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="upper left")
    return _png(fig)


def reachability(table: pa.Table, bucket: str = "day") -> bytes:
    """Tunnels and messaging apps, their own panel: one row per experiment, a dot per ``bucket``
    with measurements, coloured by outcome and sized by count (``table``: t, experiment, outcome,
    n). Dots, not lines: these tests run rarely, and a line would invent the days between."""
    title = f"Tunnels and messaging apps (measurements per {bucket})"
    if table.num_rows == 0:
        return _empty(title, "no tunnel or messaging measurements")
    rows = table.to_pylist()
    exps = sorted({r["experiment"] for r in rows}, reverse=True)
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(exps) + 1.6))
    biggest = max(r["n"] for r in rows)
    for label, color, dy in (("reachable", "#27ae60", 0.15), ("not reachable", "#c0392b", 0.0),
                             ("not judged", "#95a5a6", -0.15)):
        pts = [r for r in rows if r["outcome"] == label]
        if pts:
            ax.scatter([_naive(r["t"]) for r in pts], [exps.index(r["experiment"]) + dy for r in pts],  # type: ignore[arg-type]
                       s=[12 + 60 * r["n"] / biggest for r in pts], color=color, label=label, alpha=0.85)
    step = dt.timedelta(hours=1) if bucket == "hour" else dt.timedelta(days=1)
    times = [_naive(r["t"]) for r in rows]
    ax.set_xlim(min(times) - step, max(times) + step)  # type: ignore[arg-type]
    ax.set_yticks(range(len(exps)), exps, fontsize=8)
    ax.set_ylim(-0.6, len(exps) - 0.4)
    ax.set_title(title)
    _date_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="upper left", bbox_to_anchor=(0, -0.12))
    return _png(fig)


def blocking_methods(methods: pa.Table) -> bytes:
    """Horizontal bars: blocked measurements per method (``methods``: method, probe_cc, n)."""
    title = "Blocking methods (blocked measurements)"
    if methods.num_rows == 0:
        return _empty(title, "nothing blocked")
    rows = methods.to_pylist()
    names = sorted({r["method"] for r in rows}, key=lambda m: -sum(r["n"] for r in rows if r["method"] == m))[:12]
    ccs = sorted({r["probe_cc"] for r in rows})
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.2))
    left = np.zeros(len(names))
    cmap = plt.get_cmap("tab10")
    for i, cc in enumerate(ccs):
        vals = np.array([sum(r["n"] for r in rows if r["method"] == m and r["probe_cc"] == cc) for m in names])
        ax.barh(names, vals, left=left, color=cmap(i % 10), label=cc)
        left += vals
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel("measurements")
    _count_axis(ax.xaxis)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def event_timeline(hourly: pa.Table, event: Event, margin_h: int = 36) -> bytes:
    """One event's signals per network around it: anchor and target success and volume, each
    against its baseline, with the event shaded."""
    lo = event.start - dt.timedelta(hours=margin_h)
    hi = (event.end or event.start + dt.timedelta(hours=margin_h)) + dt.timedelta(hours=margin_h)
    hours = hourly.column("hour").to_numpy().astype("datetime64[us]")
    asn = np.asarray(hourly.column("asn").to_pylist(), dtype=object)
    lo64, hi64 = np.datetime64(lo.replace(tzinfo=None)), np.datetime64(hi.replace(tzinfo=None))
    nets = event.networks[:6]
    fig, axes = plt.subplots(len(nets), 1, figsize=(9, 2.3 * len(nets) + 0.6), sharex=True, squeeze=False)
    for ax, net in zip(axes[:, 0], nets, strict=True):
        mask = (asn == net) & (hours >= lo64) & (hours <= hi64)
        x = hours[mask].astype(dt.datetime)
        for name, color in (("anchor_success", "#2c7fb8"), ("target_success", "#41ab5d")):
            ax.plot(x, _arr(hourly, name)[mask], color=color, label=name.replace("_", " "))
            ax.plot(x, _arr(hourly, f"{name}_base")[mask], color=color, linestyle=":", linewidth=1)
        vol, vbase = _arr(hourly, "volume")[mask], _arr(hourly, "volume_base")[mask]
        with np.errstate(invalid="ignore", divide="ignore"):
            ax.plot(x, np.where(vbase > 0, vol / vbase, np.nan), color="#777", linewidth=1, label="volume / baseline")
        ax.axvspan(event.start.replace(tzinfo=None), (event.end or hi).replace(tzinfo=None), color="#e74c3c", alpha=0.15)
        ax.set_ylim(-0.05, 1.6)
        ax.set_ylabel(net)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=3, loc="upper left")
    axes[0, 0].set_title(f"{event.kind} in {', '.join(event.regions)} from {event.start:%Y-%m-%d %H:%M} UTC "
                         f"(dotted: baselines)")
    _date_axis(axes[-1, 0])
    return _png(fig)


def blocking_timeline(failures: pa.Table, event: Event, margin_h: int = 36) -> bytes:
    """A blocking or outage event: the hourly failed share of its targets per network, with the
    change the detector dated shaded."""
    lo = event.start - dt.timedelta(hours=margin_h)
    hi = (event.end or event.start + dt.timedelta(hours=4 * margin_h)) + dt.timedelta(hours=margin_h)
    rows = [r for r in failures.to_pylist()
            if r["asn"] in event.networks and r["input"] in event.inputs
            and lo.replace(tzinfo=None) <= r["hour"] <= hi.replace(tzinfo=None)]
    nets = event.networks[:6]
    fig, axes = plt.subplots(len(nets), 1, figsize=(9, 1.8 * len(nets) + 0.8), sharex=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, net in zip(axes[:, 0], nets, strict=True):
        for i, inp in enumerate(event.inputs[:5]):
            pts = sorted((r["hour"], r["failed"] / r["n"]) for r in rows if r["asn"] == net and r["input"] == inp and r["n"])
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], drawstyle="steps-post", color=cmap(i % 10),
                        label=inp.split("://", 1)[-1].rstrip("/"))
        ax.axvspan(event.start.replace(tzinfo=None), (event.end or hi).replace(tzinfo=None), color="#f39c12", alpha=0.15)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel(f"{net}\nfailed")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=3, loc="upper left")
    axes[0, 0].set_title(f"{event.kind} in {', '.join(event.regions)} from {event.start:%Y-%m-%d %H:%M} UTC")
    _date_axis(axes[-1, 0])
    return _png(fig)


def _arr(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=float)


# Lost connectivity and shutdowns first: they explain the other anomalies of their hours.
EVENT_ORDER = {"connectivity_lost": 0, "shutdown": 1, "probe_fault": 2, "service_blocking": 3, "site_outage": 4,
               "unclassified": 5}


def charts_for_events(hourly: pa.Table, events: Sequence[Event], failures: pa.Table | None = None,
                      limit: int = 12) -> list[tuple[Event, bytes]]:
    """A timeline per event, lost connectivity and shutdowns first: network signals for network-wide events, the
    targets' failed share for blocking and outages."""
    out: list[tuple[Event, bytes]] = []
    for e in sorted(events, key=lambda e: (EVENT_ORDER.get(e.kind, 9), e.start)):
        if len(out) >= limit or not e.networks:
            continue
        if e.inputs and failures is not None:
            out.append((e, blocking_timeline(failures, e)))
        elif not e.inputs:
            out.append((e, event_timeline(hourly, e)))
    return out
