"""End to end on loopback: two probes (different countries) and a control upload to one
collector over TLS, one of them through a real SOCKS5 proxy (dante); the collector is killed
and restarted mid-upload. Afterwards the collector's dataset holds every measurement exactly
once, and `vantage analyze` on it gives the same verdicts as on the probes' own datasets.
Also: a submission with curl, and no submitter address in the collector's log at -vv."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from probe.dataset import iter_dataset_files
from probe.upload import ack_path, read_acks
from tests.analysis.test_verdicts import TEST_FINGERPRINTS
from tests.support.collector_lab import (
    HOST,
    VANTAGE,
    CollectorProcess,
    controls,
    dante,
    free_port,
    make_tls,
    measurements,
    running_collector,
    stored_ids,
    write_dataset,
)


def vantage(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VANTAGE), *args], capture_output=True, text=True, timeout=timeout)


def verdict_rows(path: Path) -> list[dict[str, object]]:
    """The verdict table sorted by measurement_id, without the provenance metadata (which
    datasets, when): that is all that may differ between the two analyses."""
    table = pq.read_table(path).replace_schema_metadata(None)
    return sorted(table.to_pylist(), key=lambda r: str(r["measurement_id"]))


@pytest.mark.slow
def test_two_probes_and_a_control_through_tls_socks_and_a_restart(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    ir, ru, ctl = tmp_path / "probe-ir", tmp_path / "probe-ru", tmp_path / "control"
    ir_rows, ru_rows = measurements(120, "IR"), measurements(80, "RU")
    write_dataset(ir, ir_rows, 8)  # 15 files
    write_dataset(ru, ru_rows, 20)
    write_dataset(ctl, controls(ir_rows + ru_rows), 50)
    measured = {m.measurement_id for m in ir_rows + ru_rows} | set(stored_ids(ctl))
    assert len(measured) == 400

    data = tmp_path / "collector-data"
    coll = CollectorProcess(data=data, port=free_port(), log=tmp_path / "collector.log", args=[], tls=tls)
    coll.start()
    try:
        with dante(tmp_path / "dante") as socks:
            # The IR probe's collector is "blocked": it uploads through the SOCKS5 proxy, slowly
            # (bandwidth cap), so the collector can be killed while files are still in flight.
            up = subprocess.Popen(
                [str(VANTAGE), "upload", "--collector", coll.url, "--output", str(ir), "--proxy", socks.url,
                 "--collector-ca", str(tls.ca_pem), "--max-rate", "32k", "--no-progress"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            acks = ack_path(ir, coll.url)
            deadline = time.monotonic() + 60
            while len(read_acks(ir, coll.url)) < 3:
                assert up.poll() is None, up.communicate()
                assert time.monotonic() < deadline, "no acknowledgement within 60 s"
                time.sleep(0.05)
            coll.kill()  # SIGKILL mid-upload: the file in flight gets no receipt
            acked_at_kill = len(read_acks(ir, coll.url))
            assert acked_at_kill < 15
            time.sleep(1.0)
            coll.start()  # same port, same data: it reloads the ids it holds
            out, err = up.communicate(timeout=240)
            assert up.returncode == 0, err
            assert "uploaded 15 files" in out
            log = socks.log.read_text()
            assert f"{HOST}.{coll.port}" in log or f"{HOST}:{coll.port}" in log, log[-2000:]  # it went through dante
        assert len(read_acks(ir, coll.url)) == 15 and acks.exists()

        for ds in (ru, ctl):
            r = vantage("upload", "--collector", coll.url, "--output", str(ds), "--collector-ca", str(tls.ca_pem), "--no-progress")
            assert r.returncode == 0, r.stderr
        # Running again uploads nothing: every file is acknowledged.
        again = vantage("upload", "--collector", coll.url, "--output", str(ir), "--collector-ca", str(tls.ca_pem), "--no-progress")
        assert again.returncode == 0 and "uploaded 0 files" in again.stdout
    finally:
        coll.stop()

    ids = stored_ids(data)
    assert len(ids) == len(set(ids)) == len(measured)
    assert set(ids) == measured
    assert {p.parent.name for p in iter_dataset_files(data)} == {"probe_cc=IR", "probe_cc=RU", "probe_cc=DE"}

    fp = tmp_path / "fingerprints.csv"
    fp.write_text(TEST_FINGERPRINTS, encoding="utf-8")
    own = vantage("analyze", str(ir), str(ru), str(ctl), "-o", str(tmp_path / "own.parquet"), "--fingerprints", str(fp), "-q")
    assert own.returncode == 0, own.stderr
    collected = vantage("analyze", str(data), "-o", str(tmp_path / "collected.parquet"), "--fingerprints", str(fp), "-q")
    assert collected.returncode == 0, collected.stderr
    a, b = verdict_rows(tmp_path / "own.parquet"), verdict_rows(tmp_path / "collected.parquet")
    assert len(a) == 200
    assert a == b
    assert {r["status"] for r in a} >= {"ok", "blocked"}  # the comparison covers different verdicts


def test_curl_submits_over_tls(tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        reason = "curl is not installed (scripts/test.sh installs it: apt-get install curl)"
        print(f"SKIP: {reason}", file=sys.stderr)
        pytest.skip(reason)
    tls = make_tls(tmp_path / "tls")
    files = write_dataset(tmp_path / "probe", measurements(30, "KZ"), 30)
    with running_collector(tmp_path / "data", tmp_path, tls=tls) as c:
        cmd = [curl, "-sS", "--cacert", str(tls.ca_pem), "-H", "Content-Type: application/vnd.apache.parquet",
               "--data-binary", f"@{files[0]}", f"{c.url}/v1/measurements?probe_cc=KZ"]
        first = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout)
        second = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout)
        health = json.loads(subprocess.run([curl, "-sS", "--cacert", str(tls.ca_pem), f"{c.url}/health"],
                                           capture_output=True, text=True, timeout=30, check=True).stdout)
    assert (first["accepted"], first["duplicates"], first["rejected"]) == (30, 0, 0)
    assert (second["accepted"], second["duplicates"]) == (0, 30)
    assert health["counters"]["accepted"] == 30 and health["counters"]["duplicates"] == 30
    assert len(stored_ids(tmp_path / "data")) == 30


def test_no_submitter_address_in_the_log_at_vv(tmp_path: Path) -> None:
    """Submissions from 127.0.0.77 (good, refused, cut off); the -vv log names none of them."""
    src = "127.0.0.77"
    files = write_dataset(tmp_path / "probe", measurements(10, "IR"), 10)
    with running_collector(tmp_path / "data", tmp_path, verbose=["-vv"]) as c:
        transport = httpx.HTTPTransport(local_address=src)
        with httpx.Client(transport=transport, timeout=10) as client:
            url = c.url + "/v1/measurements"
            assert client.post(url, content=files[0].read_bytes(), params={"probe_cc": "IR"}).json()["accepted"] == 10
            assert client.post(url, content=b"junk", params={"probe_cc": "IR"}).status_code == 415
            assert client.post(url, content=b"x", params={"probe_cc": "../"}).status_code == 400
            assert client.get(c.url + "/nowhere").status_code == 404
        log_path = c.log
    text = log_path.read_text()
    assert "DEBUG" in text and "batch: 10 accepted" in text  # the log is at debug level: the grep means something
    assert "refused a submission (415)" in text
    assert src not in text
    assert "127.0.0.1:" not in text.replace(f"{HOST}:{c.port}", "")  # no client host:port either


def test_a_second_collector_on_the_same_directory_stops(tmp_path: Path) -> None:
    with running_collector(tmp_path / "data", tmp_path):
        r = vantage("collector", "serve", "--listen", f"{HOST}:{free_port()}", "--data", str(tmp_path / "data"), timeout=30)
    assert r.returncode == 1 and "Error: another collector is serving" in r.stderr and "Traceback" not in r.stderr


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with running_collector(tmp_path / "data", tmp_path) as c:
        r = vantage("collector", "serve", "--listen", f"{HOST}:{c.port}", "--data", str(tmp_path / "other"), timeout=30)
    assert r.returncode == 1 and "Error: cannot serve on" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_sigkill_of_the_uploader_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rows = measurements(100, "MM")
    probe = tmp_path / "probe"
    write_dataset(probe, rows, 5)  # 20 files
    with running_collector(tmp_path / "data", tmp_path) as c:
        kills = 0
        for _ in range(3):
            up = subprocess.Popen([str(VANTAGE), "upload", "--collector", c.url, "--output", str(probe), "--max-rate", "32k",
                                   "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seen = len(read_acks(probe, c.url))
            deadline = time.monotonic() + 30
            while len(read_acks(probe, c.url)) < seen + 2 and up.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)  # somewhere inside the next file's body
            if up.poll() is None:
                os.kill(up.pid, signal.SIGKILL)
                kills += 1
            up.wait(10)
        assert kills >= 1
        final = vantage("upload", "--collector", c.url, "--output", str(probe), "--no-progress")
        assert final.returncode == 0, final.stderr
        counters = c.health()["counters"]
    ids = stored_ids(tmp_path / "data")
    assert len(ids) == len(set(ids)) == 100 and set(ids) == {m.measurement_id for m in rows}
    assert len(read_acks(probe, c.url)) == 20
    assert counters["accepted"] == 100
