"""Informed consent: the first `vantage run` on a terminal (a real pty) explains and asks; without
a terminal and without recorded consent it refuses with one line. Nothing leaves loopback: the
only target is a tiny HTTP server on 127.0.0.1 and the only resolver given is a loopback port."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from probe.config import consent_recorded, load_file
from tests.support.loopback_site import loopback_site
from vantage.cli import main
from vantage.lab import LoopbackLab


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with loopback_site() as url:
        yield url


def _run_in_pty(args: list[str], env: dict[str, str], answer: bytes, timeout: float = 60) -> tuple[int, str]:
    """Run `vantage ARGS` with a pseudo-terminal as stdin/stdout/stderr; type ``answer`` at the
    question. Returns the exit code and everything the terminal showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", "from vantage.cli import main; main()", *args],
                            stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen = b""
    answered = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
                if not answered and b"[y/N]" in seen:
                    if answer == b"\x03":  # what Ctrl-C does: SIGINT to the foreground process
                        proc.send_signal(signal.SIGINT)
                    else:
                        os.write(master, answer)
                    answered = True
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, seen.decode(errors="replace").replace("\r\n", "\n")


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["VANTAGE_CONFIG"] = str(tmp_path / "config.toml")  # a volunteer who never answered
    env.pop("VANTAGE_CC", None)
    return env


def test_first_run_on_a_terminal_explains_asks_and_remembers(site: str, tmp_path: Path) -> None:
    env = _env(tmp_path)
    args = ["run", "--url", site, "--resolver", "127.0.0.1:9", "--output", str(tmp_path / "out"), "--no-progress"]
    code, screen = _run_in_pty(args, env, b"y\n")
    assert code == 0, screen
    for words in ("WHAT IS MEASURED", "WHO CAN SEE IT", "THE RISKS", "00-LEGEND-new_category_codes.csv"):
        assert words in screen
    assert "Consent recorded" in screen
    assert list((tmp_path / "out" / "measurements").rglob("*.parquet")), screen
    assert consent_recorded(tmp_path / "config.toml")
    # Asked once: the second run on a terminal does not show the text again.
    code, screen = _run_in_pty(args, env, b"n\n")
    assert code == 0, screen
    assert "THE RISKS" not in screen


def test_saying_no_measures_nothing_and_is_remembered_as_no(site: str, tmp_path: Path) -> None:
    env = _env(tmp_path)
    out = tmp_path / "out"
    code, screen = _run_in_pty(["run", "--url", site, "--resolver", "127.0.0.1:9", "--output", str(out),
                                "--no-progress"], env, b"n\n")
    assert code == 1, screen
    assert "consent not given" in screen
    assert not (out / "measurements").exists()
    assert load_file(tmp_path / "config.toml")["consent.given"] is False
    assert not consent_recorded(tmp_path / "config.toml")


def test_without_a_terminal_and_consent_run_refuses_in_one_line(site: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VANTAGE_CONFIG", str(tmp_path / "config.toml"))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "--url", site, "--resolver", "127.0.0.1:9", "--output", str(out)])
    assert result.exit_code == 1
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
    assert len(errors) == 1 and "`vantage consent`" in errors[0], result.output
    assert "Traceback" not in result.output
    assert not (out / "measurements").exists()
    # Trap: the same run after `vantage consent --yes` measures.
    assert CliRunner().invoke(main, ["consent", "--yes"]).exit_code == 0
    result = CliRunner().invoke(main, ["run", "--url", site, "--resolver", "127.0.0.1:9", "--output", str(out),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert list((out / "measurements").rglob("*.parquet"))
    # And --revoke brings the refusal back.
    assert CliRunner().invoke(main, ["consent", "--revoke"]).exit_code == 0
    assert CliRunner().invoke(main, ["run", "--url", site, "--output", str(out)]).exit_code == 1


@pytest.mark.slow  # runs the whole demo pipeline: ~6 s
def test_the_demo_needs_no_consent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loopback_lab: LoopbackLab) -> None:
    """The demo measures only its own loopback lab: no consent asked, none recorded."""
    from vantage.demo import run_demo

    monkeypatch.setenv("VANTAGE_CONFIG", str(tmp_path / "config.toml"))
    result = run_demo(tmp_path / "demo", lab=loopback_lab)
    assert result is not None
    assert not (tmp_path / "config.toml").exists()


def test_ctrl_c_at_the_question_is_130_and_records_nothing(tmp_path: Path) -> None:
    code, screen = _run_in_pty(["consent"], _env(tmp_path), b"\x03")
    assert code == 130, screen
    assert "Traceback" not in screen
    assert not (tmp_path / "config.toml").exists()
