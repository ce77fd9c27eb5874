"""`vantage schedule`: the generated systemd units pass `systemd-analyze verify`, the service's
command runs once (results, history, budget accounting), a time budget stops a run that the
next scheduled run resumes, and the cron fallback. Loopback only; nothing is enabled."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from probe.budget import read_ledger
from probe.config import record_consent, save
from tests.support.loopback_site import loopback_site
from vantage.cli import main
from vantage.cli.schedule import cron_line, parse_every


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with loopback_site() as url:
        yield url


@pytest.fixture
def volunteer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VANTAGE_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    for var in ("VANTAGE_CC", "VANTAGE_LISTS", "VANTAGE_OUTPUT", "VANTAGE_MAX_RUNTIME_S"):
        monkeypatch.delenv(var, raising=False)
    record_consent(True, tmp_path / "config.toml")
    return tmp_path


def units(volunteer: Path) -> tuple[Path, Path]:
    d = volunteer / "xdg-config" / "systemd" / "user"
    return d / "vantage-probe.service", d / "vantage-probe.timer"


def exec_start(service: Path) -> tuple[list[str], dict[str, str]]:
    env: dict[str, str] = {}
    cmd: list[str] = []
    for line in service.read_text().splitlines():
        if line.startswith("Environment="):
            k, _, v = shlex.split(line.removeprefix("Environment="))[0].partition("=")
            env[k] = v
        elif line.startswith("ExecStart="):
            cmd = shlex.split(line.removeprefix("ExecStart="))
    return cmd, env


def test_units_pass_systemd_analyze_verify(volunteer: Path) -> None:
    code = CliRunner().invoke(main, ["schedule", "install", "--every", "6h", "--no-enable"])
    assert code.exit_code == 0, code.output
    service, timer = units(volunteer)
    assert "OnUnitActiveSec=21600s" in timer.read_text()
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd, in scripts/test.sh)")
    done = subprocess.run(["systemd-analyze", "verify", str(service), str(timer)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
    # Trap: verify does catch a broken unit (a command that does not exist), so the pass above means something.
    broken = volunteer / "broken" / "vantage-probe.service"
    broken.parent.mkdir()
    broken.write_text(service.read_text().replace("ExecStart=", "ExecStart=/nonexistent/vantage "))
    bad = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "nonexistent" in bad.stderr, bad.stderr


def test_schedule_needs_consent(volunteer: Path) -> None:
    record_consent(False, volunteer / "config.toml")
    r = CliRunner().invoke(main, ["schedule", "install", "--no-enable"])
    assert r.exit_code == 1 and "vantage consent" in r.output
    assert not units(volunteer)[0].exists()


def test_the_service_command_runs_once_with_the_config(volunteer: Path, site: str) -> None:
    lst = volunteer / "list.csv"
    lst.write_text("url,category_code,category_description,date_added,source,notes\n"
                   f"{site}a,NEWS,News Media,2024-01-01,,\n{site}b,HUMR,Human Rights Issues,2024-01-01,,\n")
    out = volunteer / "out"
    save({"probe.lists": [str(lst)], "probe.resolvers": ["127.0.0.1:9"], "probe.output": str(out),
          "probe.cc": "IR"}, volunteer / "config.toml")
    assert CliRunner().invoke(main, ["schedule", "install", "--no-enable"]).exit_code == 0
    cmd, env = exec_start(units(volunteer)[0])
    assert env["VANTAGE_CONFIG"] == str(volunteer / "config.toml")
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    r = CliRunner().invoke(main, ["runs", "list", "--json"])
    (run,) = json.loads(r.output)
    assert (run["inputs"], run["ok"], run["failed"]) == (2, 2, 0)
    ledger = read_ledger(out)
    # Two page fetches: each at least a TCP connection, a request and the body.
    assert ledger[run["run_id"]] >= 2 * (450 + 1200)
    assert not list((out / "runs").glob("*.unfinished"))


def test_a_time_budget_stops_and_the_next_run_resumes(volunteer: Path, site: str) -> None:
    # A listener that never accepts: the kernel completes the handshake, no answer ever comes.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    try:
        slow = f"http://127.0.0.1:{hang.getsockname()[1]}/"
        out = volunteer / "out"
        save({"probe.output": str(out), "probe.resolvers": ["127.0.0.1:9"], "budget.max_runtime_s": 1.5},
             volunteer / "config.toml")
        r = CliRunner().invoke(main, ["run", "--url", site, "--url", slow, "--no-progress", "--continue-unfinished"])
        assert r.exit_code == 0, r.output
        assert "stopped early" in r.output
        (marker,) = (out / "runs").glob("*.unfinished")
        run_id = marker.name.removesuffix(".unfinished")
        # The next scheduled run picks it up (no budget now, a short timeout: the slow one fails).
        save({}, volunteer / "config.toml", unset=("budget.max_runtime_s",))
        r = CliRunner().invoke(main, ["run", "--no-progress", "--continue-unfinished", "--timeout", "1"])
        assert r.exit_code == 0, r.output
        assert f"run {run_id}" in r.output and "already measured (resume): 1" in r.output
        assert not list((out / "runs").glob("*.unfinished"))
        runs = json.loads(CliRunner().invoke(main, ["runs", "list", "--json"]).output)
        assert [(x["run_id"], x["inputs"], x["ok"], x["failed"]) for x in runs] == [(run_id, 2, 1, 1)]
        # Trap: without an unfinished run, --continue-unfinished starts a new one.
        r = CliRunner().invoke(main, ["run", "--url", site, "--no-progress", "--continue-unfinished"])
        assert r.exit_code == 0 and f"run {run_id}" not in r.output
    finally:
        hang.close()


def test_cron_fallback_with_a_stand_in_crontab(volunteer: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No systemd here: --cron edits the user's crontab through `crontab -l` / `crontab -`
    (a stand-in script keeps it in a file), keeping other lines and replacing only its own."""
    bin_dir = volunteer / "bin"
    bin_dir.mkdir()
    store = volunteer / "crontab.txt"
    store.write_text("0 3 * * * backup\n")
    fake = bin_dir / "crontab"
    fake.write_text(f'#!/bin/sh\nif [ "$1" = "-l" ]; then cat {store}; else cat > {store}; fi\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    for every in ("6h", "2h"):
        r = CliRunner().invoke(main, ["schedule", "install", "--cron", "--every", every])
        assert r.exit_code == 0, r.output
    lines = store.read_text().splitlines()
    assert lines[0] == "0 3 * * * backup"
    assert len(lines) == 2 and lines[1].startswith("0 */2 * * * ") and "--continue-unfinished" in lines[1]
    assert "cron" in json.loads(CliRunner().invoke(main, ["schedule", "status", "--json"]).output)
    r = CliRunner().invoke(main, ["schedule", "remove"])
    assert r.exit_code == 0 and store.read_text().splitlines() == ["0 3 * * * backup"]


@pytest.mark.parametrize(("every", "when"), [("15m", "*/15 * * * *"), ("1h", "0 */1 * * *"), ("1d", "0 0 * * *")])
def test_cron_steps(every: str, when: str) -> None:
    assert cron_line(parse_every(every)).startswith(when + " ")


@pytest.mark.parametrize("every", ["5m", "6", "0h", "soon"])
def test_bad_every_is_a_usage_error(every: str, volunteer: Path) -> None:
    r = CliRunner().invoke(main, ["schedule", "install", "--no-enable", "--every", every])
    assert r.exit_code == 2 and "--every" in r.output and "Traceback" not in r.output
