"""The upload client (probe/upload.py): the queue of unacknowledged files, retries with backoff,
refusals, offline catch-up, the bandwidth cap, and `vantage upload` / `vantage run --upload`.
Most tests talk to a fake collector (httpx.MockTransport); the CLI ones to a real one."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import probe.upload as up
from tests.support.collector_lab import measurements, running_collector, stored_ids, write_dataset
from vantage.cli import main
from vantage.lab import LoopbackLab

URL = "https://collector.test"


def fake_collector(script: list[int | str], seen: list[httpx.Request]) -> httpx.MockTransport:
    """Answers in turn from `script`: 200 (a receipt for the rows sent), another status, or
    "down" (the connection fails)."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = script.pop(0) if len(script) > 1 else script[0]
        if step == "down":
            raise httpx.ConnectError("connection refused")
        if step == 200:
            rows = pq.read_table(pa.BufferReader(request.read())).num_rows
            return httpx.Response(200, json={"status": "ok", "rows": rows, "accepted": rows, "duplicates": 0,
                                             "rejected": 0, "rejections": []})
        headers = {"Retry-After": "3"} if step == 503 else {}
        return httpx.Response(int(step), json={"status": "refused", "error": f"said {step}"}, headers=headers)

    return httpx.MockTransport(handler)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "ds", measurements(30, "IR"), 10)
    return tmp_path / "ds"


def test_backoff_is_jittered_exponential_and_honours_retry_after() -> None:
    rng = random.Random(7)
    waits = [[up.backoff(a, rng=rng) for _ in range(200)] for a in range(4)]
    for attempt, ws in enumerate(waits):
        cap = up.BACKOFF_BASE_S * 2**attempt
        assert all(0 <= w <= cap for w in ws)
        assert max(ws) > 0.8 * cap and min(ws) < 0.2 * cap  # spread over the whole range: jitter
    assert up.backoff(10, rng=rng) <= up.BACKOFF_MAX_S
    assert up.backoff(0, retry_after=30, rng=rng) == 30


def test_rate_limit_paces_to_the_cap() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    rate = up.RateLimit(10_000, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        rate.take(5_000)
    assert now[0] == pytest.approx(5.0)  # 50,000 bytes at 10,000 bytes/s
    unlimited = up.RateLimit(None, clock=lambda: 0.0, sleep=sleep)
    unlimited.take(10**9)
    assert len(slept) == 10


def test_retries_then_acknowledges_oldest_first(dataset: Path) -> None:
    seen: list[httpx.Request] = []
    waits: list[float] = []
    result = up.upload(dataset, URL, transport=fake_collector(["down", 503, 200], seen), sleep=waits.append)
    assert (result.files, result.accepted, result.pending) == (3, 30, 0)
    assert len(waits) == 2 and waits[1] >= 3  # the 503's Retry-After
    assert all(r.url.params["probe_cc"] == "IR" for r in seen)
    acks = up.read_acks(dataset, URL)
    assert len(acks) == 3 and all(a["receipt"]["accepted"] == 10 for a in acks.values())
    files = [line and json.loads(line)["file"] for line in up.ack_path(dataset, URL).read_text().splitlines()]
    assert files == sorted(files)  # written in that order, uploaded in that order
    # Nothing left: a second run sends nothing.
    again: list[httpx.Request] = []
    assert up.upload(dataset, URL, transport=fake_collector([200], again), sleep=waits.append).files == 0 and not again


def test_offline_queues_and_catches_up_later(dataset: Path) -> None:
    seen: list[httpx.Request] = []
    waits: list[float] = []
    result = up.upload(dataset, URL, transport=fake_collector(["down"], seen), sleep=waits.append, attempts=4)
    assert (result.files, result.pending) == (0, 3) and "ConnectError" in (result.offline_reason or "")
    assert len(seen) == 4 and len(waits) == 3 and not up.ack_path(dataset, URL).exists()
    later = up.upload(dataset, URL, transport=fake_collector([200], []), sleep=waits.append)
    assert (later.files, later.accepted, later.pending) == (3, 30, 0)


def test_a_refused_file_is_recorded_with_its_reason_and_not_resent(dataset: Path) -> None:
    result = up.upload(dataset, URL, transport=fake_collector([422, 200], []), sleep=lambda s: None)
    assert result.files == 3 and result.accepted == 20
    assert len(result.refused) == 1 and result.refused[0][1] == "HTTP 422: said 422"
    seen: list[httpx.Request] = []
    assert up.upload(dataset, URL, transport=fake_collector([200], seen), sleep=lambda s: None).files == 0 and not seen


def test_a_bad_token_stops_at_once(dataset: Path) -> None:
    seen: list[httpx.Request] = []
    with pytest.raises(up.UploadError, match="refused the token"):
        up.upload(dataset, URL, token="nope", transport=fake_collector([401], seen), sleep=lambda s: None)
    assert len(seen) == 1 and seen[0].headers["authorization"] == "Bearer nope"


def test_an_ack_line_cut_by_a_kill_is_ignored(dataset: Path) -> None:
    up.upload(dataset, URL, transport=fake_collector([200], []), sleep=lambda s: None)
    path = up.ack_path(dataset, URL)
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][: len(lines[2]) // 2])  # the kill came mid-write
    assert len(up.read_acks(dataset, URL)) == 2
    result = up.upload(dataset, URL, transport=fake_collector([200], []), sleep=lambda s: None)
    assert result.files == 1
    assert len(up.read_acks(dataset, URL)) == 3


def test_a_big_file_goes_in_slices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dataset(tmp_path / "ds", measurements(25, "IR"), 25)
    monkeypatch.setattr(up, "SLICE_ROWS", 10)
    seen: list[httpx.Request] = []
    result = up.upload(tmp_path / "ds", URL, transport=fake_collector([200], seen), sleep=lambda s: None)
    assert len(seen) == 3 and (result.files, result.accepted) == (1, 25)


def test_setup_errors_are_one_line(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(up.UploadError, match="http:// or https://"):
        up.upload(dataset, "collector.test")
    with pytest.raises(up.UploadError, match="no dataset"):
        up.upload(tmp_path / "empty", URL)
    with pytest.raises(up.UploadError, match="slow-client guard"):
        up.upload(dataset, URL, max_rate=100)
    r = CliRunner().invoke(main, ["upload", "--collector", URL, "--output", str(dataset), "--proxy", "gopher://x:1"])
    assert r.exit_code == 1 and "Error: cannot use proxy" in r.output and "Traceback" not in r.output


def test_cli_upload_refusal_and_offline_lines(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(up, "BACKOFF_BASE_S", 0.01)
    with running_collector(tmp_path / "data", tmp_path, extra_args=["--max-rows", "5"]) as c:
        r = CliRunner().invoke(main, ["upload", "--collector", c.url, "--output", str(dataset), "--no-progress"])
        port = c.port
    assert r.exit_code == 0, r.output
    refusals = [line for line in r.output.splitlines() if line.startswith("collector refused")]
    assert len(refusals) == 3 and all("HTTP 413: 10 rows in one batch; the limit is 5" in line for line in refusals)
    # The collector is gone now: one line, the files stay queued.
    write_dataset(tmp_path / "ds2", measurements(5, "IR"), 5)
    r = CliRunner().invoke(main, ["upload", "--collector", f"http://127.0.0.1:{port}", "--output", str(tmp_path / "ds2"),
                                  "--no-progress"], env={})
    assert r.exit_code == 1
    assert "collector unreachable" in r.output and "1 files stay queued" in r.output and "Traceback" not in r.output


def test_run_then_upload(loopback_lab: LoopbackLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`vantage run --upload URL` measures the loopback lab and uploads what it wrote."""
    monkeypatch.setattr(up, "BACKOFF_BASE_S", 0.01)
    out = tmp_path / "out"
    urls = [loopback_lab.url("www.lab.test", "http"), loopback_lab.url("dns-blockpage.lab.test", "http")]
    with running_collector(tmp_path / "data", tmp_path) as c:
        args = ["run", *sum((["--url", u] for u in urls), []), "--resolver", loopback_lab.censoring_resolver,
                "--ca-bundle", str(loopback_lab.ca_bundle), "--cc", "IR", "--output", str(out), "--no-progress",
                "--upload", c.url]
        r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "uploaded 1 files" in r.output and "2 measurements accepted" in r.output
    assert sorted(stored_ids(tmp_path / "data")) == sorted(stored_ids(out))
