"""Throttling verdicts from throughput measurements (analysis/throughput.py and the throughput
branch of analysis/rules.py): a target slowed against the control AND the link is `throttled`
with its factor; the traps beside it are not (a slow link, a slow server, a short file, a far
server, no other host to measure the link by). Old datasets without the downloads column and
old verdict files without throttle_factor still read."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_verdicts import verdicts, web

from probe.schema import DnsAnswer, DnsQuery, Download, Measurement, new_uuid7

T0 = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)
MBIT = 125_000  # bytes per second
Case = Callable[[], tuple[list[Measurement], Measurement]]


def dl(
    role: str = "probe",
    *,
    url: str = "https://target.example/",
    rate: float = 40 * MBIT,
    seconds: float = 2.5,
    nbytes: int | None = None,
    ttfb: float = 0.08,
    failure: str | None = None,
    at: dt.datetime = T0,
    control_for: str | None = None,
    asn: str | None = None,
) -> Measurement:
    """A throughput measurement: DNS, then one download at ``rate`` bytes/s for ``seconds``."""
    host = url.split("/")[2]
    m = Measurement(
        measurement_id=new_uuid7(), run_id=f"run-{role}", experiment="throughput", experiment_version="0.1.0",
        input=url, measurement_start_time=at, role=role, probe_cc="RU",
        probe_asn=asn or ("AS12389" if role == "probe" else "AS64500"), control_for=control_for,
    )
    m.dns = [DnsQuery(t0=0.0, t=0.02, failure=None, resolver="system", engine="system", query_type="A",
                      hostname=host, rcode="NOERROR", answers=[DnsAnswer("A", "93.184.216.34", 300)])]
    n = int(rate * seconds) if nbytes is None else nbytes
    m.downloads = [Download(t0=0.03, t=0.03 + ttfb + seconds, failure=failure, url=url, ip="93.184.216.34",
                            status_code=200, bytes=n, byte_cap=4 << 20, time_cap=8.0, ttfb=ttfb, duration=seconds,
                            stopped_by="failure" if failure else "time")]
    return m


def others(rate: float, n: int = 3, at: dt.datetime = T0) -> list[Measurement]:
    """Other hosts measured from the same network in the same hour (the link's capacity)."""
    return [dl(url=f"https://other{i}.example/", rate=rate, at=at + dt.timedelta(minutes=i + 1)) for i in range(n)]


def case(probe: Measurement, control_rate: float | None = 40 * MBIT, extra: list[Measurement] | None = None,
         **control: object) -> tuple[list[Measurement], Measurement]:
    records = [probe, *(extra or [])]
    if control_rate is not None:
        records.append(dl("control", url=probe.input, rate=control_rate, at=probe.measurement_start_time,
                          control_for=probe.measurement_id, **control))  # type: ignore[arg-type]
    return records, probe


THROUGHPUT_CASES: dict[str, Case] = {
    "no_control.throughput": lambda: case(dl(rate=4 * MBIT), control_rate=None, extra=others(40 * MBIT)),
    "http.download_failure": lambda: case(dl(rate=1 * MBIT, failure="connection_reset"), extra=others(40 * MBIT)),
    "down.throughput_both_failed": lambda: case(dl(failure="generic_timeout", nbytes=0),
                                                failure="generic_timeout", nbytes=0),
    "probe_failure.download_interrupted": lambda: case(dl(failure="interrupted")),
    # A short file: done in 0.2 s even at a tenth of the link's speed.
    "ok.throughput_too_short": lambda: case(dl(rate=4 * MBIT, seconds=0.2), extra=others(40 * MBIT)),
    # A slow server: as slow at the control.
    "ok.throughput_like_control": lambda: case(dl(rate=3 * MBIT), control_rate=3 * MBIT, extra=others(40 * MBIT)),
    "no_control.throughput_link": lambda: case(dl(rate=4 * MBIT)),
    # A slow link: every host as slow from this network.
    "ok.throughput_slow_link": lambda: case(dl(rate=4 * MBIT), control_rate=400 * MBIT, extra=others(4.5 * MBIT)),
    # A far server: its first byte takes ten times longer, as its round trips do.
    "ok.throughput_far": lambda: case(dl(rate=4 * MBIT, ttfb=0.9), extra=others(40 * MBIT)),
    "throttled.onset": lambda: case(dl(rate=4 * MBIT), extra=[
        *others(40 * MBIT), dl(rate=38 * MBIT, at=T0 - dt.timedelta(days=3))]),
    "throttled.slowdown": lambda: case(dl(rate=4 * MBIT), extra=others(40 * MBIT)),
}


@pytest.mark.parametrize("rule_id", list(THROUGHPUT_CASES))
def test_throughput_rule_fires_with_its_factor(tmp_path: Path, rule_id: str) -> None:
    records, target = THROUGHPUT_CASES[rule_id]()
    v = verdicts(tmp_path, records)[target.measurement_id]
    assert v["method"] == rule_id, v
    if rule_id.startswith("throttled."):
        assert v["status"] == "throttled" and v["layer"] is None
        assert v["throttle_factor"] == pytest.approx(10.0, rel=0.05)
    if rule_id in ("ok.throughput_slow_link", "ok.throughput_like_control"):
        assert v["throttle_factor"] < 4


def test_twitter_2021_level_throttling_is_found_on_a_volunteers_link(tmp_path: Path) -> None:
    # 130 kbit/s on a 20 Mbit/s home link, control in a data centre at 500 Mbit/s.
    probe = dl(rate=130_000 / 8, seconds=8.0)
    records, _ = case(probe, control_rate=500 * MBIT, extra=others(20 * MBIT))
    v = verdicts(tmp_path, records)[probe.measurement_id]
    assert v["status"] == "throttled" and v["throttle_factor"] == pytest.approx(20 * MBIT / (130_000 / 8), rel=0.01)


def test_a_slow_link_over_twenty_runs_is_never_throttled(tmp_path: Path) -> None:
    # The trap beside it: the same volunteer link at 2 Mbit/s, every host as slow, noisy.
    records: list[Measurement] = []
    probes = []
    for i in range(20):
        at = T0 + dt.timedelta(hours=2 * i)
        jitter = 1 + 0.3 * ((i % 5) - 2) / 2
        p = dl(rate=2 * MBIT * jitter, at=at)
        probes.append(p)
        records += case(p, control_rate=300 * MBIT)[0] + others(2 * MBIT / jitter, at=at)
    vs = verdicts(tmp_path, records)
    assert {vs[p.measurement_id]["method"] for p in probes} == {"ok.throughput_slow_link"}


def test_the_link_reference_is_the_same_network_only(tmp_path: Path) -> None:
    # Fast hosts seen from ANOTHER network say nothing about this probe's link.
    probe = dl(rate=4 * MBIT)
    elsewhere = [dl(url=f"https://other{i}.example/", rate=40 * MBIT, asn="AS3333") for i in range(3)]
    records, _ = case(probe, extra=elsewhere)
    assert verdicts(tmp_path, records)[probe.measurement_id]["method"] == "no_control.throughput_link"


def test_a_web_connectivity_verdict_has_no_factor(tmp_path: Path) -> None:
    p = web()
    c = web("control", control_for=p.measurement_id)
    v = verdicts(tmp_path, [p, c])[p.measurement_id]
    assert v["status"] == "ok" and v["throttle_factor"] is None


def test_a_dataset_written_before_downloads_existed_is_judged(tmp_path: Path) -> None:
    from analysis.db import open_datasets
    from analysis.verdicts import compute_verdicts
    from probe.schema import MEASUREMENT_SCHEMA, records_to_table

    p = web()
    c = web("control", control_for=p.measurement_id)
    table = records_to_table([p, c])
    old = table.drop_columns(["downloads"])
    assert "downloads" not in old.schema.names and "downloads" in MEASUREMENT_SCHEMA.names
    part = tmp_path / "ds" / "measurements" / "date=2026-11-22" / "probe_cc=IR"
    part.mkdir(parents=True)
    pq.write_table(old, part / "part-old-0.parquet")
    con = open_datasets([tmp_path / "ds"])
    try:
        v = {r["measurement_id"]: r for r in compute_verdicts(con).to_pylist()}
    finally:
        con.close()
    assert v[p.measurement_id]["status"] == "ok" and v[p.measurement_id]["throttle_factor"] is None


def test_a_verdicts_file_without_throttle_factor_reads(tmp_path: Path) -> None:
    from analysis.pipeline import FORMAT, Verdicts, read_verdicts, write_verdicts
    from analysis.verdicts import VERDICT_SCHEMA

    row = {n: None for n in VERDICT_SCHEMA.names} | {"measurement_id": "m1", "status": "ok"}
    full = pa.Table.from_pylist([row], schema=VERDICT_SCHEMA)
    path = tmp_path / "verdicts.parquet"
    write_verdicts(Verdicts(full.drop_columns(["throttle_factor"]), {"format": FORMAT}), path)
    table, _meta = read_verdicts(path)
    assert table.column("throttle_factor").to_pylist() == [None]
