"""Hostile submissions to a running collector (`vantage collector serve` in a subprocess), one
test each: each gets a clear refusal and nothing already stored is touched. Beside each, a
trap: the honest variant of the same submission is accepted."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from probe.schema import records_to_table
from tests.support.collector_lab import (
    HOST,
    CollectorProcess,
    measurements,
    running_collector,
    snapshot,
    stored_ids,
    write_dataset,
)

# Small limits so that each one can be reached quickly; the defaults are documented in
# docs/collector.md and checked by test_defaults_in_health.
READ_TIMEOUT = 1.0
MAX_CONCURRENT = 4
MAX_DECODED = 8 * 2**20
MAX_ROWS = 500


@pytest.fixture(scope="module")
def coll(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CollectorProcess]:
    tmp = tmp_path_factory.mktemp("hostile")
    data = tmp / "data"
    write_dataset(data, measurements(20, "IR"), 10, run_id="run-before")  # what must stay untouched
    args = ["--read-timeout", str(READ_TIMEOUT), "--max-concurrent", str(MAX_CONCURRENT),
            "--max-decoded", str(MAX_DECODED), "--max-rows", str(MAX_ROWS)]
    with running_collector(data, tmp, extra_args=args) as c:
        yield c


def parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def compress(chunks: list[bytes], codec: str) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, codec) as out:
        for chunk in chunks:
            out.write(chunk)
    return bytes(sink.getvalue())


def batch(n: int = 3, cc: str = "IR", **kw: Any) -> pa.Table:
    return records_to_table(measurements(n, cc, **kw))


def post(c: CollectorProcess, body: bytes, params: dict[str, str] | None = None, **headers: str) -> httpx.Response:
    return httpx.post(c.url + "/v1/measurements", content=body, params=params if params is not None else {"probe_cc": "IR"},
                      headers={"Content-Type": "application/vnd.apache.parquet", **headers}, timeout=30)


def assert_refused(c: CollectorProcess, resp: httpx.Response, status: int, words: str) -> None:
    assert resp.status_code == status, resp.text
    assert words in resp.json()["error"], resp.json()


@pytest.fixture
def untouched(coll: CollectorProcess) -> Iterator[None]:
    before = snapshot(coll.data)
    yield
    assert snapshot(coll.data) == before


def test_wrong_schema(coll: CollectorProcess, untouched: None) -> None:
    t = batch()
    i = t.schema.get_field_index("measurement_start_time")
    wrong = t.set_column(i, "measurement_start_time", pa.array([v.isoformat() for v in t.column(i).to_pylist()]))
    assert_refused(coll, post(coll, parquet(wrong)), 422, "column measurement_start_time is string")
    assert_refused(coll, post(coll, b"id,input\n1,http://x/\n"), 415, "neither a Parquet file nor an Arrow IPC stream")


def test_extra_column(coll: CollectorProcess, untouched: None) -> None:
    t = batch()
    extra = t.append_column("client_ip", pa.array(["192.0.2.1"] * t.num_rows))
    assert_refused(coll, post(coll, parquet(extra)), 422, "unexpected columns: client_ip")


def test_missing_column(coll: CollectorProcess, untouched: None) -> None:
    t = batch()
    assert_refused(coll, post(coll, parquet(t.drop_columns(["experiment"]))), 422, "missing columns: experiment")
    assert_refused(coll, post(coll, parquet(t), params={}), 422, "no probe_cc")


def test_an_older_probe_without_an_optional_column_is_accepted(coll: CollectorProcess) -> None:
    # The trap beside test_missing_column: `traces` came later; a probe from before it still uploads.
    t = batch(2)
    resp = post(coll, parquet(t.drop_columns(["traces"])))
    assert resp.status_code == 200, resp.text
    assert set(t.column("measurement_id").to_pylist()) <= set(stored_ids(coll.data))


def test_partition_value_with_a_path(coll: CollectorProcess, untouched: None) -> None:
    t = batch()
    for cc in ("../../etc", "I/", "..", "ir", "IRN"):
        assert_refused(coll, post(coll, parquet(t), params={"probe_cc": cc}), 400, "probe_cc must be two upper-case letters")
    # the same through a probe_cc column: every row is rejected with its reason, nothing stored
    with_cc = t.append_column("probe_cc", pa.array(["../"] * t.num_rows))
    resp = post(coll, parquet(with_cc), params={})
    assert resp.status_code == 200
    receipt = resp.json()
    assert (receipt["accepted"], receipt["rejected"]) == (0, t.num_rows)
    assert all("probe_cc must be two upper-case letters" in r["reason"] for r in receipt["rejections"])
    assert not list((coll.data / "measurements").glob("*/probe_cc=..*")) and not (coll.data.parent / "etc").exists()


def test_future_and_ancient_dates(coll: CollectorProcess, untouched: None) -> None:
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    ancient = dt.datetime(1970, 1, 1, 0, 0, 5, tzinfo=dt.UTC)  # a Pi without a clock, before NTP
    rows = pa.concat_tables([batch(2, at=future), batch(2, at=ancient)])
    receipt = post(coll, parquet(rows)).json()
    assert (receipt["accepted"], receipt["rejected"]) == (0, 4)
    reasons = [r["reason"] for r in receipt["rejections"]]
    assert sum("in the future" in r for r in reasons) == 2 and sum("is before 2012-01-01" in r for r in reasons) == 2


def test_dates_trap(coll: CollectorProcess) -> None:
    """A clock a few hours fast and an old measurement (2012, OONI's first year) are accepted."""
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=5)
    old = dt.datetime(2012, 6, 1, tzinfo=dt.UTC)
    receipt = post(coll, parquet(pa.concat_tables([batch(1, at=soon), batch(1, at=old)]))).json()
    assert (receipt["accepted"], receipt["rejected"]) == (2, 0)


def test_decompression_bomb(coll: CollectorProcess, untouched: None) -> None:
    # Content-Encoding: zstd, 64 MiB of zeros in ~2 KB: refused once past the limit, not after all of it
    bomb = compress([b"\0" * 2**20] * 64, "zstd")
    assert len(bomb) < 64 * 1024
    assert_refused(coll, post(coll, bomb, **{"Content-Encoding": "zstd"}), 413, "decompresses to more than")
    # A Parquet file with a column of one long value repeated: small on the wire, 12 MB decoded
    # (dictionary encoding: it declares little, so decoding goes in slices and stops at the limit)
    t = batch(200)
    big = t.set_column(t.schema.get_field_index("input"), "input", pa.array(["a" * 60_000] * t.num_rows))
    body = parquet(big)
    assert len(body) < 1 * 2**20
    assert_refused(coll, post(coll, body), 413, f"the batch decodes to more than {MAX_DECODED} bytes")
    # Without dictionary encoding the declared sizes give it away before any page is decompressed
    buf = io.BytesIO()
    pq.write_table(big, buf, compression="zstd", use_dictionary=False)
    assert_refused(coll, post(coll, buf.getvalue()), 413, "the Parquet file decompresses to")


def test_encoding_trap(coll: CollectorProcess) -> None:
    """An honest zstd- or gzip-encoded batch is decoded and accepted."""
    for enc in ("zstd", "gzip"):
        receipt = post(coll, compress([parquet(batch(2))], enc), **{"Content-Encoding": enc}).json()
        assert receipt["accepted"] == 2


def test_too_many_rows(coll: CollectorProcess, untouched: None) -> None:
    assert_refused(coll, post(coll, parquet(batch(MAX_ROWS + 1))), 413, f"the limit is {MAX_ROWS}")


def test_truncated_body(coll: CollectorProcess, untouched: None) -> None:
    body = parquet(batch(20))
    assert_refused(coll, post(coll, body[: len(body) // 2]), 400, "truncated")
    assert_refused(coll, post(coll, body[:-100] + b"PAR1"), 400, "not a readable Parquet file")
    # A body cut off by the network: the declared length never arrives, the client goes away.
    refused = coll.health()["counters"]["refused"]
    with socket.create_connection((HOST, coll.port)) as s:
        s.sendall(b"POST /v1/measurements?probe_cc=IR HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.apache.parquet\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
        time.sleep(0.2)
    deadline = time.monotonic() + 5
    while coll.health()["counters"]["refused"] == refused and time.monotonic() < deadline:
        time.sleep(0.1)
    assert coll.health()["counters"]["refused"] == refused + 1


def _slow_post(port: int, trickle: float | None, total: int = 100_000) -> tuple[bytes, float]:
    """Headers, then one byte every `trickle` seconds (None: nothing). (response, seconds to it)"""
    with socket.create_connection((HOST, port)) as s:
        s.sendall(b"POST /v1/measurements?probe_cc=IR HTTP/1.1\r\nHost: x\r\n"
                  + f"Content-Length: {total}\r\n\r\n".encode())
        s.settimeout(0.05 if trickle else 10)
        start = time.monotonic()
        answer = b""
        while time.monotonic() - start < 10:
            if trickle:
                try:
                    s.sendall(b"P")
                except OSError:
                    pass
                time.sleep(trickle)
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                break
            answer += chunk
            if b"\r\n\r\n" in answer:
                break
        return answer, time.monotonic() - start


def test_slow_client(coll: CollectorProcess, untouched: None) -> None:
    # Sends nothing after the headers: refused after the read timeout, not held forever.
    answer, took = _slow_post(coll.port, None)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert READ_TIMEOUT * 0.9 <= took < READ_TIMEOUT + 3
    # Trickles a byte every 0.2 s (never silent for the read timeout): refused for its rate.
    answer, took = _slow_post(coll.port, 0.2)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert took < READ_TIMEOUT + 3


def test_slow_but_honest_trap(coll: CollectorProcess) -> None:
    """A body that arrives in pieces with short pauses, fast enough on average, is accepted."""
    body = parquet(batch(3))

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(body), len(body) // 4 + 1):
            time.sleep(0.3)
            yield body[i:i + len(body) // 4 + 1]

    resp = httpx.post(coll.url + "/v1/measurements", content=pieces(), params={"probe_cc": "IR"}, timeout=30)
    assert resp.status_code == 200 and resp.json()["accepted"] == 3


@pytest.mark.slow  # 500 submissions through a real collector process: ~5 s
def test_500_concurrent_submissions(coll: CollectorProcess) -> None:
    """500 submissions at once: at most MAX_CONCURRENT are handled at a time, the rest are told
    to come back (503), every request ends by itself, and what was accepted is stored once."""
    bodies = [parquet(batch(1)) for _ in range(500)]
    before = len(stored_ids(coll.data))

    async def flood() -> list[httpx.Response | Exception]:
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            return await asyncio.gather(*(
                client.post(coll.url + "/v1/measurements", content=b, params={"probe_cc": "IR"}) for b in bodies
            ), return_exceptions=True)

    start = time.monotonic()
    responses = asyncio.run(flood())
    assert time.monotonic() - start < 60
    statuses = [r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in responses]
    assert set(statuses) <= {200, 503}, {s for s in statuses if s not in (200, 503)}
    ok = [r for r in responses if isinstance(r, httpx.Response) and r.status_code == 200]
    busy = [r for r in responses if isinstance(r, httpx.Response) and r.status_code == 503]
    assert ok and busy
    assert all(r.headers.get("retry-after") == "5" and "busy" in r.json()["error"] for r in busy)
    counters = coll.health()["counters"]
    assert counters["max_in_flight"] <= MAX_CONCURRENT
    assert counters["in_flight"] == 0
    ids = stored_ids(coll.data)
    assert len(ids) == len(set(ids)) == before + sum(r.json()["accepted"] for r in ok)


def test_resend_is_harmless(coll: CollectorProcess) -> None:
    body = parquet(batch(5))
    first, second = post(coll, body).json(), post(coll, body).json()
    assert (first["accepted"], first["duplicates"]) == (5, 0)
    assert (second["accepted"], second["duplicates"]) == (0, 5)
    ids = stored_ids(coll.data)
    assert len(ids) == len(set(ids))


def test_defaults_in_health(tmp_path: Path) -> None:
    with running_collector(tmp_path / "d", tmp_path) as c:
        limits = c.health()["limits"]
    assert limits["max_body"] == 16 * 2**20 and limits["max_rows"] == 20_000 and limits["max_concurrent"] == 16


def test_token(tmp_path: Path) -> None:
    with running_collector(tmp_path / "d", tmp_path, extra_args=["--token", "s3cret"]) as c:
        body = parquet(batch(2))
        assert_refused(c, post(c, body), 401, "needs a token")
        assert_refused(c, post(c, body, Authorization="Bearer wrong"), 401, "needs a token")
        assert not stored_ids(c.data)
        assert post(c, body, Authorization="Bearer s3cret").json()["accepted"] == 2
