"""Conventions: -v/-q on every command; -q keeps standard output empty but errors still show."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from vantage.cli import main


def leaves() -> list[tuple[str, click.Command]]:
    ctx = click.Context(main)
    out: list[tuple[str, click.Command]] = []

    def walk(cmd: click.Command, path: list[str]) -> None:
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                walk(sub, [*path, name])
        else:
            out.append((" ".join(path), cmd))

    walk(main, [])
    return out


def test_every_command_takes_v_and_q() -> None:
    found = leaves()
    assert len(found) > 20
    missing = [name for name, cmd in found
               if not {"-v", "-q"} <= {o for p in cmd.params for o in getattr(p, "opts", [])}]
    assert missing == []


def test_quiet_silences_standard_output_only() -> None:
    runner = CliRunner()
    loud = runner.invoke(main, ["lists", "path"])
    assert loud.exit_code == 0 and loud.stdout.strip()
    quiet = runner.invoke(main, ["lists", "path", "-q"])
    assert quiet.exit_code == 0 and quiet.stdout == ""
    # Trap: an error under -q is still one line on standard error.
    failed = runner.invoke(main, ["lists", "show", "-q", "no-such-list"])
    assert failed.exit_code == 1 and "Error: no such list" in failed.stderr


def test_verbose_on_a_subcommand_raises_the_log_level() -> None:
    import logging

    root = logging.getLogger()
    before = root.level
    try:
        assert CliRunner().invoke(main, ["lists", "path", "-vv"]).exit_code == 0
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(before)


def test_json_summaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from probe.config import record_consent
    from tests.support.loopback_site import loopback_site

    shown = [json.loads(ln) for ln in CliRunner().invoke(main, ["lists", "show", "--json"]).stdout.splitlines()]
    assert shown[0]["entries"] == sum(c["entries"] for c in shown[0]["categories"]) > 0
    monkeypatch.setenv("VANTAGE_CONFIG", str(tmp_path / "config.toml"))
    record_consent(True, tmp_path / "config.toml")
    with loopback_site() as site:
        r = CliRunner().invoke(main, ["run", "--url", site, "--resolver", "127.0.0.1:9", "--output",
                                      str(tmp_path / "out"), "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["counts"]["web_connectivity"] == {"measured": 1, "ok": 1, "failed": 0}
    assert summary["stopped"] is None and summary["records_written"] == 1
