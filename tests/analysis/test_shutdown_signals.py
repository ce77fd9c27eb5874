"""Signals, baselines and the CUSUM on small hand-built inputs (no scenario generator)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from analysis import signals
from analysis.detector import DetectorConfig, alert_runs, baselined_signals, cusum_changes
from probe import schema as S

T0 = dt.datetime(2026, 11, 1, 10, 5, tzinfo=dt.UTC)


def _m(input_: str, *, experiment: str = "web_connectivity", start: dt.datetime = T0, **obs: object) -> S.Measurement:
    m = S.Measurement(measurement_id=S.new_uuid7(), run_id="r1", experiment=experiment, experiment_version="0.1.0",
                      input=input_, measurement_start_time=start, probe_cc="IR", probe_asn="AS1",
                      probe_network="Net", platform="linux", software_version="0.1.0")
    for k, v in obs.items():
        setattr(m, k, v)
    return m


def _dns(failure: str | None = None, tag: str | None = None) -> S.DnsQuery:
    return S.DnsQuery(0, 0.1, failure, "system", "system", "A", "x.example", None if failure else "NOERROR", tag=tag)


def _tcp(failure: str | None = None) -> S.TcpConnect:
    return S.TcpConnect(0.1, 0.2, failure, "192.0.2.1", 443)


def _http(failure: str | None = None, status: int | None = 200) -> S.HttpRequest:
    return S.HttpRequest(0.2, 0.3, failure, "https://x.example/", status_code=None if failure else status)


CASES = {
    "ok": (_m("https://ok.example/", dns=[_dns()], tcp=[_tcp()], http=[_http()]), True, None),
    "redirect into a block": (_m("https://redir.example/", dns=[_dns()], tcp=[_tcp()],
                                 http=[_http(status=301), _http("connection_reset")]), False, "http.connection_reset"),
    "injection check ignored": (_m("https://inj.example/", dns=[_dns(), _dns("generic_timeout", tag="injection_check")],
                                   tcp=[_tcp()], http=[_http()]), True, None),
    "nxdomain": (_m("https://nx.example/", dns=[_dns("dns_nxdomain")]), False, "dns.dns_nxdomain"),
    "one address of two fails": (_m("https://two.example/", dns=[_dns()], tcp=[_tcp("generic_timeout"), _tcp()],
                                    http=[_http()]), True, None),
    "tcp reset": (_m("https://rst.example/", dns=[_dns()], tcp=[_tcp("connection_reset")]), False, "tcp.connection_reset"),
    "vpn": (_m("wireguard://192.0.2.5:51820/", experiment="wireguard",
               vpn=[S.VpnHandshake(0, 1, "generic_timeout", "wireguard", "x", "192.0.2.5", 51820, "udp")]),
            False, "vpn.generic_timeout"),
    "could not run": (_m("https://crash.example/", failure="unknown_failure:boom"), False, "measurement.unknown_failure:boom"),
    "anchor tcp": (_m("tcp://192.0.2.53:53", experiment="anchors", tcp=[_tcp()]), True, None),
}


@pytest.fixture()
def facts() -> Iterator[duckdb.DuckDBPyRelation]:
    c = duckdb.connect()
    table = S.records_to_table([c_[0] for c_ in CASES.values()]).append_column("probe_cc", pa.array(["IR"] * len(CASES)))
    c.register("measurements", table)
    yield signals.measurement_facts(c)
    c.close()


def test_reached_and_method_per_measurement(facts: duckdb.DuckDBPyRelation) -> None:
    got = {i: (ok, method) for i, ok, method in facts.select("input, ok, method").fetchall()}
    for name, (m, ok, method) in CASES.items():
        assert got[m.input] == (ok, method), name


def test_network_hour_counts(facts: duckdb.DuckDBPyRelation) -> None:
    (row,) = signals.network_hour_signals(facts).to_pylist()
    assert row["volume"] == len(CASES) and row["anchor_n"] == 1 and row["anchor_ok"] == 1
    assert row["target_n"] == len(CASES) - 1 and row["target_ok"] == 3
    assert row["dns_n"] == 6 and row["dns_fail"] == 1  # the injection check does not count
    assert row["http_n"] == 4 and row["http_fail"] == 1


def test_signals_are_sparse_in_hours() -> None:
    # Only hours with measurements get a row: the cost follows the data, not the time span
    # (the detector reads the hours between as zero volume: tests/analysis/test_shutdown_sparse.py).
    recs = [_m("https://a.example/", start=T0 + dt.timedelta(hours=h), dns=[_dns()]) for h in (0, 3)]
    table = S.records_to_table(recs).append_column("probe_cc", pa.array(["IR", "IR"]))
    c = duckdb.connect()
    c.register("measurements", table)
    rows = signals.network_hour_signals(signals.measurement_facts(c)).to_pylist()
    assert [r["volume"] for r in rows] == [1, 1]
    assert [r["hour"] - rows[0]["hour"] for r in rows] == [dt.timedelta(0), dt.timedelta(hours=3)]
    c.close()


def _counts(volume: np.ndarray, anchor_ok_frac: np.ndarray) -> pa.Table:
    n = len(volume)
    hours = (np.datetime64("2026-11-01T00:00") + np.arange(n).astype("timedelta64[h]")).astype("datetime64[us]")
    anchor_n = np.full(n, 6)
    cols: dict[str, object] = {"cc": ["IR"] * n, "asn": ["AS1"] * n, "hour": pa.array(hours)}
    zeros = np.zeros(n, dtype=np.int64)
    for c in signals.COUNT_COLUMNS:
        cols[c] = zeros
    cols.update(volume=volume.astype(np.int64), anchor_n=anchor_n, anchor_ok=np.round(anchor_n * anchor_ok_frac).astype(np.int64),
                target_n=volume.astype(np.int64), target_ok=volume.astype(np.int64), runs=np.ones(n, dtype=np.int64))
    return pa.table(cols)


def test_volume_baseline_is_same_hour_median_and_levels_follow_thresholds() -> None:
    days = 10
    hod = np.arange(days * 24) % 24
    volume = np.where((hod >= 8) & (hod < 22), 40, 10).astype(float)  # a diurnal cycle
    volume[9 * 24 + 3] = 4  # night hour: 40 % of its baseline of 10
    volume[9 * 24 + 12] = 28  # day hour: 70 % of 40
    anchors = np.ones(days * 24)
    con = duckdb.connect()
    out = baselined_signals(con, _counts(volume, anchors), DetectorConfig())
    base = out.column("volume_base").to_numpy()
    assert base[9 * 24 + 3] == 10 and base[9 * 24 + 12] == 40  # not the all-day median
    level = out.column("volume_level").to_numpy()
    assert level[9 * 24 + 3] == 2 and level[9 * 24 + 12] == 1
    # volume alone: a warning hour is no alert; one critical hour is (events then need 3 hours)
    assert out.column("level").to_numpy()[9 * 24 + 12] == 0
    loose = baselined_signals(con, _counts(volume, anchors), DetectorConfig(warning=0.6, critical=0.3))
    assert loose.column("volume_level").to_numpy()[9 * 24 + 12] == 0
    con.close()


def test_anchor_drop_is_an_alert_run_with_exact_hours() -> None:
    n = 10 * 24
    anchors = np.ones(n)
    anchors[200:205] = 0.0
    anchors[220] = 4 / 6  # one mild dip, within what 6 samples can show by chance
    con = duckdb.connect()
    out = baselined_signals(con, _counts(np.full(n, 30.0), anchors), DetectorConfig())
    runs = alert_runs(out)
    assert [(r.start_idx, r.end_idx, r.level) for r in runs] == [(200, 205, 2)]
    con.close()


def _series(rates: dict[str, np.ndarray], n_per_hour: int = 3, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = []
    for name, rate in rates.items():
        for h, p in enumerate(rate):
            rows.append({"cc": "IR", "asn": "AS1", "input": name, "hour": dt.datetime(2026, 11, 1) + dt.timedelta(hours=h),
                         "n": n_per_hour, "failed": int(rng.binomial(n_per_hour, p))})
    return pa.Table.from_pylist(rows, schema=pa.schema([("cc", pa.string()), ("asn", pa.string()), ("input", pa.string()),
                                                        ("hour", pa.timestamp("us")), ("n", pa.int64()), ("failed", pa.int64())]))


def test_cusum_dates_start_and_end_of_a_block() -> None:
    n = 400
    new_block = np.full(n, 0.01)
    new_block[150:300] = 1.0
    ongoing = np.full(n, 0.01)
    ongoing[250:] = 0.9
    noise = np.full(n, 0.02)
    steady = np.full(n, 1.0)
    table = _series({"new": new_block, "ongoing": ongoing, "noise": noise, "steady": steady})
    changes = {c.input: c for c in cusum_changes(table, np.datetime64("2026-11-01T00:00"), n, DetectorConfig())}
    assert set(changes) == {"new", "ongoing"}
    assert (changes["new"].start_h, changes["new"].end_h) == (150, 300)
    assert changes["ongoing"].start_h == 250 and changes["ongoing"].end_h is None
    assert changes["new"].failed == changes["new"].n == 450


def test_a_long_shutdown_does_not_become_the_baseline() -> None:
    # Five dark days: a plain 168-hour median would call the outage normal after 3.5 days.
    n = 15 * 24
    anchors = np.ones(n)
    anchors[8 * 24 : 13 * 24] = 0.0
    con = duckdb.connect()
    out = baselined_signals(con, _counts(np.full(n, 30.0), anchors), DetectorConfig())
    assert [(r.start_idx, r.end_idx) for r in alert_runs(out)] == [(8 * 24, 13 * 24)]
    # ... but a permanent change is learned once the hold-out is over
    short = baselined_signals(con, _counts(np.full(n, 30.0), anchors), DetectorConfig(hold_out_h=24))
    assert alert_runs(short)[0].end_idx < 13 * 24
    con.close()


def test_cusum_in_chunks_finds_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 300
    rates = {f"in{i}": np.full(n, 0.01) for i in range(7)}
    for i, name in enumerate(rates):
        rates[name][100 + 10 * i : 200] = 1.0
    table = _series(rates)
    hour0 = np.datetime64("2026-11-01T00:00")
    whole = cusum_changes(table, hour0, n, DetectorConfig())
    monkeypatch.setattr("analysis.detector._CUSUM_CELLS", 2 * n)  # two series per chunk
    chunked = cusum_changes(table, hour0, n, DetectorConfig())
    key = sorted((c.input, c.start_h, c.end_h) for c in whole)
    assert key == sorted((c.input, c.start_h, c.end_h) for c in chunked)
    assert [i for i, _, _ in key] == [f"in{i}" for i in range(7)]
    assert all(abs(s - (100 + 10 * i)) <= 1 for i, (_, s, _) in enumerate(key))  # a noise failure may come just before
    assert all(e is not None and abs(e - 200) <= 2 for _, _, e in key)  # noise may blur the end by an hour or two


def test_real_anchor_records_on_loopback() -> None:
    # Records as the anchors experiment writes them (not hand-built): an open and a closed
    # loopback port become one reached and one failed anchor.
    import asyncio
    import socket

    from probe.experiments.base import Settings, Target, Vantage, measure
    from probe.experiments.registry import get

    async def run() -> list[S.Measurement]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        try:
            settings = Settings(use_system_resolver=False)
            vantage = Vantage(probe_cc="IR", probe_asn="AS1")
            exp = get("anchors")
            return [await measure(exp, Target(f"tcp://127.0.0.1:{p}"), settings, vantage, "r1") for p in (port, closed)]
        finally:
            server.close()
            await server.wait_closed()

    records = asyncio.run(run())
    table = S.records_to_table(records).append_column("probe_cc", pa.array(["IR", "IR"]))
    c = duckdb.connect()
    c.register("measurements", table)
    facts = signals.measurement_facts(c)
    rows = facts.order("measurement_start_time").select("is_anchor, ok, method").fetchall()
    assert rows == [(True, True, None), (True, False, "tcp.connection_refused")]
    hours = signals.network_hour_signals(facts).to_pylist()  # one hour (two if run at hh:59:59)
    assert (sum(h["anchor_n"] for h in hours), sum(h["anchor_ok"] for h in hours)) == (2, 1)
    c.close()
