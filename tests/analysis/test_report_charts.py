"""Report charts people read: date ticks fit the span (hours to years), counts are whole numbers."""

from __future__ import annotations

import datetime as dt
import io

import matplotlib.pyplot as plt
import pyarrow as pa
import pytest
from PIL import Image

from analysis import charts

T0 = dt.datetime(2024, 1, 1)


def _labels(times: list[dt.datetime], counts: list[int]) -> tuple[list[str], list[float]]:
    fig, ax = plt.subplots()
    ax.plot(times, counts)
    charts._date_axis(ax)
    charts._count_axis(ax.yaxis)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels()] + [ax.xaxis.get_offset_text().get_text()]
    yticks = list(ax.get_yticks())
    plt.close(fig)
    return labels, yticks


def test_hours_show_hours_and_years_show_years() -> None:
    hours, _ = _labels([T0 + dt.timedelta(hours=h) for h in range(6)], [1, 2, 1, 3, 2, 1])
    assert any(":" in s for s in hours)  # 01:00, 02:00 ...
    years, _ = _labels([T0 + dt.timedelta(days=d) for d in range(0, 3 * 365, 30)], [1] * 37)
    assert {"2024", "2025", "2026"} <= set(years)
    # trap: a span of a few days is not labelled by year alone
    days, _ = _labels([T0 + dt.timedelta(days=d) for d in range(5)], [1] * 5)
    assert not ({"2024"} >= set(s for s in days if s))


def test_count_axis_has_no_fractional_ticks() -> None:
    _, ticks = _labels([T0, T0 + dt.timedelta(hours=1)], [1, 2])
    assert ticks and all(float(t).is_integer() for t in ticks)


@pytest.mark.parametrize("hours", [1, 24 * 900])
def test_anomalies_chart_for_one_point_and_for_years(hours: int) -> None:
    times = [T0, T0 + dt.timedelta(hours=hours)] if hours > 1 else [T0]
    table = pa.table({"t": times, "probe_cc": ["IR"] * len(times), "status": ["blocked"] * len(times),
                      "n": [3] * len(times)})
    png = charts.anomalies_over_time(table, "hour" if hours <= 72 else "day")
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.width > 300


def test_reachability_panel() -> None:
    table = pa.table({"t": [T0, T0 + dt.timedelta(days=400)], "experiment": ["signal", "tor"],
                      "outcome": ["reachable", "not reachable"], "n": [1, 4]})
    img = Image.open(io.BytesIO(charts.reachability(table, "day")))
    assert img.format == "PNG" and img.height > 100
