"""The throughput experiment: which URL it downloads for an input (the #download= fragment), the
caps it takes from the run's settings, and one record with one Download through measure()."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import Iterator

import pytest

from probe.experiments.base import InputError, Settings, Target, Vantage, measure
from probe.experiments.throughput import Throughput, resource_url


@pytest.mark.parametrize(("input_", "url"), [
    ("https://site.example/", "https://site.example/"),
    ("https://site.example/page#top", "https://site.example/page"),
    ("https://site.example/a/#download=/static/big.js", "https://site.example/static/big.js"),
    ("https://site.example/#download=big.bin", "https://site.example/big.bin"),
    ("https://site.example/#download=https://cdn.example/v.mp4", "https://cdn.example/v.mp4"),
])
def test_the_resource_an_input_names(input_: str, url: str) -> None:
    assert resource_url(input_) == url


@pytest.mark.parametrize("bad", ["ftp://site.example/", "https://site.example/#download=",
                                 "https://site.example/#download=ftp://x.example/f",
                                 "https://site.example/#download=/a&download=/b"])
def test_a_bad_input_is_an_input_error(bad: str) -> None:
    with pytest.raises(InputError):
        resource_url(bad)
    assert Throughput().input_problem(bad)


class _Big(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        size = 300_000 if self.path == "/big.bin" else 1000
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        self.wfile.write(b"y" * size)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Big)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_one_download_of_the_named_resource_within_the_byte_cap(server: int) -> None:
    settings = Settings(use_system_resolver=False, extra={"download_byte_cap": 100_000, "download_time_cap": 3.0})
    target = Target(f"http://127.0.0.1:{server}/#download=/big.bin")
    m = asyncio.run(measure(Throughput(), target, settings, Vantage(), "run-1"))
    assert m.failure is None and m.input == target.input and not m.http
    (d,) = m.downloads
    assert d.url == f"http://127.0.0.1:{server}/big.bin" and d.stopped_by == "bytes"
    assert 100_000 <= d.bytes < 300_000 and (d.byte_cap, d.time_cap) == (100_000, 3.0)
    assert Throughput().succeeded(m)


def test_a_download_round_trips_through_parquet_and_duckdb(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt

    import duckdb
    import pyarrow.parquet as pq

    from probe.dataset import write_records
    from probe.schema import Download, Measurement, new_uuid7, row_to_record

    d = Download(t0=0.1, t=2.7, failure=None, url="https://site.example/big.bin", ip="192.0.2.7", status_code=200,
                 bytes=1_234_567, byte_cap=4 << 20, time_cap=8.0, ttfb=0.12, duration=2.48, stopped_by="time")
    m = Measurement(measurement_id=new_uuid7(), run_id="run-1", experiment="throughput", experiment_version="0.1.0",
                    input="https://site.example/", measurement_start_time=dt.datetime(2026, 11, 22, tzinfo=dt.UTC),
                    probe_cc="RU", downloads=[d])
    write_records(tmp_path, "run-1", [m])
    (path,) = tmp_path.glob("measurements/**/*.parquet")
    back = row_to_record(pq.read_table(path).to_pylist()[0] | {"probe_cc": "RU"})
    assert back.downloads == [d]
    rate = duckdb.sql(f"SELECT d.bytes / d.duration FROM (SELECT unnest(downloads) AS d FROM read_parquet('{path}'))")
    assert rate.fetchall()[0][0] == pytest.approx(1_234_567 / 2.48)


def test_a_download_is_scrubbed_like_the_other_records() -> None:
    import datetime as dt

    from probe.schema import Download, Measurement, new_uuid7
    from probe.scrub import REPLACEMENT, Scrubber, scrub_record

    own = "203.0.113.77"  # the probe's public address, learned in memory
    d = Download(t0=0.0, t=1.0, failure=f"unknown_failure:odd reply from {own}",
                 url=f"https://site.example/dl?client={own}", ip="192.0.2.7", stopped_by="failure")
    m = Measurement(measurement_id=new_uuid7(), run_id="r", experiment="throughput", experiment_version="0.1.0",
                    input="https://site.example/", measurement_start_time=dt.datetime.now(dt.UTC), downloads=[d])
    scrub_record(m, Scrubber([own]))
    assert own not in m.downloads[0].url and own not in (m.downloads[0].failure or "")
    assert REPLACEMENT in m.downloads[0].url and m.downloads[0].ip == "192.0.2.7"
