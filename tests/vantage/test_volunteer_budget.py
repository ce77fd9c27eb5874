"""Disk quota: over quota, only files a collector acknowledged are deleted, oldest first, and
only as many as needed; a file not yet uploaded is never deleted. Data budget: the day's
ledger stops the next run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from probe.budget import enforce_disk_quota, ledger_path, uploaded_files
from probe.config import record_consent
from vantage.cli import main

KB = 1024


def make_file(root: Path, name: str, size: int, age_h: float) -> Path:
    """A result file of ``size`` bytes written ``age_h`` hours ago (the quota looks at names,
    sizes and ages only)."""
    p = root / "measurements" / "date=2026-11-30" / "probe_cc=IR" / f"part-{name}-0001.parquet"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x" * size)
    t = 1_800_000_000 - age_h * 3600
    os.utime(p, (t, t))
    return p


def ack(root: Path, *lines: dict | str) -> None:
    """Acknowledgements as `vantage upload` appends them (one JSON line per file)."""
    path = root / "uploads" / "0123456789abcdef.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        for line in lines:
            fh.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def receipt(p: Path, **extra: object) -> dict:
    rel = p.relative_to(p.parents[2]).as_posix()
    return {"file": rel, "size": p.stat().st_size, "collector": "https://c.test", "receipt": {"accepted": 1}, **extra}


def test_over_quota_loses_only_uploaded_files_oldest_first(tmp_path: Path) -> None:
    oldest_pending = make_file(tmp_path, "r1", 100 * KB, age_h=50)  # oldest of all, never uploaded
    up_old = make_file(tmp_path, "r2", 100 * KB, age_h=40)
    up_mid = make_file(tmp_path, "r3", 100 * KB, age_h=30)
    up_new = make_file(tmp_path, "r4", 100 * KB, age_h=20)
    pending_new = make_file(tmp_path, "r5", 100 * KB, age_h=10)
    ack(tmp_path, receipt(up_new), receipt(up_old), receipt(up_mid))
    # 500 KB on disk, quota 320 KB: 180 KB must go -> the two oldest uploaded files (200 KB).
    report = enforce_disk_quota(tmp_path, 320 * KB)
    assert report.deleted == [up_old, up_mid]
    assert report.freed == 200 * KB and report.over_by == 0
    assert oldest_pending.exists() and pending_new.exists() and up_new.exists()


def test_never_deletes_what_is_not_uploaded_even_over_quota(tmp_path: Path) -> None:
    pending = [make_file(tmp_path, f"p{i}", 100 * KB, age_h=50 - i) for i in range(3)]
    uploaded = make_file(tmp_path, "u", 100 * KB, age_h=1)
    ack(tmp_path, receipt(uploaded))
    report = enforce_disk_quota(tmp_path, 50 * KB)
    assert report.deleted == [uploaded]
    assert report.over_by == 250 * KB
    assert all(p.exists() for p in pending)


def test_what_does_not_count_as_uploaded(tmp_path: Path) -> None:
    """Traps: a refused file, a file changed since its receipt, an ack cut short by a kill, and an
    ack without a receipt are not uploaded; only the clean receipt is."""
    refused = make_file(tmp_path, "a", 10 * KB, age_h=5)
    changed = make_file(tmp_path, "b", 10 * KB, age_h=4)
    cut = make_file(tmp_path, "c", 10 * KB, age_h=3)
    no_receipt = make_file(tmp_path, "d", 10 * KB, age_h=2)
    good = make_file(tmp_path, "e", 10 * KB, age_h=1)
    stale = receipt(changed)
    stale["size"] = 5 * KB
    partial = json.dumps(receipt(cut))[:-10]
    bare = receipt(no_receipt)
    del bare["receipt"]
    ack(tmp_path, receipt(refused, refused="schema mismatch"), stale, partial, bare, receipt(good))
    assert uploaded_files(tmp_path) == {good.relative_to(tmp_path / "measurements").as_posix()}
    report = enforce_disk_quota(tmp_path, 0)
    assert report.deleted == [good]
    assert all(p.exists() for p in (refused, changed, cut, no_receipt))


def test_under_quota_deletes_nothing(tmp_path: Path) -> None:
    f = make_file(tmp_path, "a", 10 * KB, age_h=5)
    ack(tmp_path, receipt(f))
    assert enforce_disk_quota(tmp_path, 10 * KB).deleted == []
    assert f.exists()


def test_a_spent_daily_data_budget_refuses_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VANTAGE_CONFIG", str(tmp_path / "config.toml"))
    record_consent(True, tmp_path / "config.toml")
    out = tmp_path / "out"
    ledger_path(out).parent.mkdir(parents=True)
    ledger_path(out).write_text(json.dumps({"20261201T000000Z-00000000": 2000}))
    run = ["run", "--url", "http://127.0.0.1:9/", "--resolver", "127.0.0.1:9", "--output", str(out), "--no-progress"]
    r = CliRunner().invoke(main, run, env={"VANTAGE_BYTES_PER_DAY": "2000"})
    assert r.exit_code == 1 and "daily data budget" in r.output
    assert not (out / "measurements").exists()
    # Trap: with budget left the same run goes ahead (and its bytes join the day's ledger).
    r = CliRunner().invoke(main, run, env={"VANTAGE_BYTES_PER_DAY": "1M"})
    assert r.exit_code == 0, r.output
    assert len(json.loads(ledger_path(out).read_text())) == 2


def test_the_data_budget_stops_a_run_cleanly_and_the_next_run_resumes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.loopback_site import loopback_site

    monkeypatch.setenv("VANTAGE_CONFIG", str(tmp_path / "config.toml"))
    record_consent(True, tmp_path / "config.toml")
    out = tmp_path / "out"
    with loopback_site() as site:
        urls = [f"{site}{i}" for i in range(3)]
        args = ["--resolver", "127.0.0.1:9", "--output", str(out), "--no-progress", "--concurrency", "1"]
        # One page on loopback is estimated at a TCP connection + an HTTP exchange + its body
        # (about 1.7 KB): a 2,000-byte budget is met by the second measurement.
        r = CliRunner().invoke(main, ["run", *[a for u in urls for a in ("--url", u)], *args,
                                      "--continue-unfinished"], env={"VANTAGE_BYTES_PER_DAY": "2000"})
        assert r.exit_code == 0, r.output
        assert "daily data budget" in r.output and "stopped early" in r.output
        (marker,) = (out / "runs").glob("*.unfinished")
        run_id = marker.name.removesuffix(".unfinished")
        runs = json.loads(CliRunner().invoke(main, ["runs", "list", "--output", str(out), "--json"]).output)
        assert [x["inputs"] for x in runs] == [2]
        # The next day's (here: a larger) budget lets the scheduled run finish the same run.
        r = CliRunner().invoke(main, ["run", *args, "--continue-unfinished"], env={"VANTAGE_BYTES_PER_DAY": "1M"})
        assert r.exit_code == 0, r.output
        assert f"run {run_id}" in r.output and "already measured (resume): 2" in r.output
        runs = json.loads(CliRunner().invoke(main, ["runs", "list", "--output", str(out), "--json"]).output)
        assert [(x["run_id"], x["inputs"], x["ok"]) for x in runs] == [(run_id, 3, 3)]
        assert not list((out / "runs").glob("*.unfinished"))
        # The ledger holds both invocations' bytes under the one run id.
        assert list(json.loads(ledger_path(out).read_text())) == [run_id]


def test_a_run_enforces_the_disk_quota_and_history_shows_uploads(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.loopback_site import loopback_site

    monkeypatch.setenv("VANTAGE_CONFIG", str(tmp_path / "config.toml"))
    record_consent(True, tmp_path / "config.toml")
    out = tmp_path / "out"
    args = ["--resolver", "127.0.0.1:9", "--output", str(out), "--no-progress"]
    with loopback_site() as site:
        assert CliRunner().invoke(main, ["run", "--url", site, *args]).exit_code == 0
        (first,) = list((out / "measurements").rglob("*.parquet"))
        t = first.stat().st_mtime - 3600
        os.utime(first, (t, t))
        ack(out, receipt(first))
        runs = json.loads(CliRunner().invoke(main, ["runs", "list", "--output", str(out), "--json"]).output)
        assert [x["uploaded"] for x in runs] == ["yes"]
        # A quota smaller than two files: the run's own new file (not uploaded) stays, the
        # uploaded older one goes.
        quota_mb = first.stat().st_size * 1.5 / (1024 * 1024)
        r = CliRunner().invoke(main, ["run", "--url", site, *args], env={"VANTAGE_DISK_QUOTA_MB": f"{quota_mb:.6f}"})
        assert r.exit_code == 0, r.output
        assert "disk quota: deleted 1 uploaded file(s)" in r.output
        left = list((out / "measurements").rglob("*.parquet"))
        assert len(left) == 1 and left[0] != first and not first.exists()
