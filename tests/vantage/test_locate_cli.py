"""`vantage locate`: one clear line without privilege, one line for bad usage, the blocked rows
of a verdicts file become replays of the right layer, and the JSON rows carry the located hop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner

from probe.net import pathtrace
from probe.schema import PathHop
from vantage.cli import locate as locate_cli
from vantage.cli import main


@pytest.fixture
def fresh_scrubber(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process-wide scrubber may hold addresses other tests taught it; these tests' hop
    addresses must not depend on that."""
    import probe.net.scrub

    monkeypatch.setattr(probe.net.scrub, "default_scrubber", lambda: probe.net.scrub.Scrubber(discover=False))


def test_without_privilege_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pathtrace, "privilege_problem", lambda: pathtrace.NEED_PRIVILEGE)
    result = CliRunner().invoke(main, ["locate", "https://blocked.test/", "--ip", "192.0.2.7"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {pathtrace.NEED_PRIVILEGE}"]


@pytest.mark.parametrize("args", [[], ["https://a.test/", "--verdicts", "v.parquet"]])
def test_a_url_or_verdicts_not_both(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["locate", *args])
    assert result.exit_code == 2 and "give a URL or --verdicts FILE" in result.output
    assert "Traceback" not in result.output


def test_blocked_rows_of_a_verdicts_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    table = pa.table({
        "input": ["https://a.test/", "https://a.test/", "http://b.test/", "http://c.test/", "https://d.test/",
                  "https://e.test/"],
        "status": ["blocked", "blocked", "blocked", "ok", "blocked", "down"],
        "layer": ["tls", "tls", "http-diff", None, "tcp_ip", None],
    })
    import analysis.pipeline

    monkeypatch.setattr(analysis.pipeline, "read_verdicts", lambda path: (table, {}))
    # Duplicates once; ok and down rows never; tcp_ip blocking is not replayed with low TTL.
    assert locate_cli.blocked_targets(tmp_path / "v.parquet") == [("https://a.test/", "tls"), ("http://b.test/", "http")]


def test_json_rows_name_the_hop(monkeypatch: pytest.MonkeyPatch, fresh_scrubber: None) -> None:
    def fake_trace(protocol: str, ip: str, port: int, hostname: str, settings: Any, *, path: str = "/") -> Any:
        return [PathHop(1, "10.0.1.1", "time_exceeded"), PathHop(2, "10.0.2.1", "http", "HTTP/1.1 302 Found")], None

    monkeypatch.setattr(pathtrace, "privilege_problem", lambda: None)
    monkeypatch.setattr(pathtrace, "trace", fake_trace)
    result = CliRunner().invoke(main, ["locate", "http://blocked.test/", "--ip", "192.0.2.7", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert (row["layer"], row["interference_ttl"], row["hop_before"], row["basis"]) == ("http", 2, "10.0.1.1", "icmp")
    table = CliRunner().invoke(main, ["locate", "http://blocked.test/", "--ip", "192.0.2.7"])
    assert table.exit_code == 0 and "10.0.1.1" in table.output


def test_output_rows_carry_the_vantage_and_read_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    fresh_scrubber: None) -> None:
    def fake_trace(protocol: str, ip: str, port: int, hostname: str, settings: Any, *, path: str = "/") -> Any:
        return [PathHop(1, "10.0.1.1", "time_exceeded"), PathHop(2, "10.0.2.1", "rst")], None

    monkeypatch.setattr(pathtrace, "privilege_problem", lambda: None)
    monkeypatch.setattr(pathtrace, "trace", fake_trace)
    monkeypatch.setenv("VANTAGE_CONFIG", str(tmp_path / "none.toml"))
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["locate", "https://blocked.test/", "--ip", "192.0.2.7", "--cc", "ir",
                                       "--asn", "197207", "--output", str(out), "-q"])
    assert result.exit_code == 0, result.output
    from analysis.db import open_datasets

    con = open_datasets([out])
    assert con.sql("SELECT probe_cc, probe_asn, interference_ttl, hop_before FROM path_traces").fetchall() == [
        ("IR", "AS197207", 2, "10.0.1.1")]


@pytest.mark.parametrize(("flag", "value"), [("--cc", "IRN"), ("--asn", "ASx")])
def test_a_bad_vantage_is_one_line(monkeypatch: pytest.MonkeyPatch, flag: str, value: str) -> None:
    monkeypatch.setattr(pathtrace, "privilege_problem", lambda: None)
    result = CliRunner().invoke(main, ["locate", "https://blocked.test/", flag, value])
    assert result.exit_code == 2 and flag in result.output and "Traceback" not in result.output


def test_a_hop_at_the_probes_own_address_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The trap beside the two above: a hop answering from an address the scrubber knows as the
    # probe's (its public address behind carrier-grade NAT, learned with --stun) is never printed.
    import probe.net.scrub

    def fake_trace(protocol: str, ip: str, port: int, hostname: str, settings: Any, *, path: str = "/") -> Any:
        return [PathHop(1, "192.168.1.1", "time_exceeded"), PathHop(2, "203.0.113.77", "time_exceeded"),
                PathHop(3, "10.0.3.1", "rst")], None

    monkeypatch.setattr(pathtrace, "privilege_problem", lambda: None)
    monkeypatch.setattr(pathtrace, "trace", fake_trace)
    monkeypatch.setattr(probe.net.scrub, "default_scrubber",
                        lambda: probe.net.scrub.Scrubber(["203.0.113.77"], discover=False))
    result = CliRunner().invoke(main, ["locate", "http://blocked.test/", "--ip", "192.0.2.7", "--json"])
    assert result.exit_code == 0, result.output
    assert "203.0.113.77" not in result.output
    (row,) = json.loads(result.output)
    assert row["interference_ttl"] == 3 and row["hop_before"] == "[scrubbed]"
