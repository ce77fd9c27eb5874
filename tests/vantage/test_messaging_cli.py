"""The messaging apps' per-function verdicts are the same in every command that shows them:
`vantage analyze` (table and --json), `vantage report` (markdown and --csv) and
`vantage runs show --verdicts` (table and --json); and the endpoints list's update command."""

from __future__ import annotations

import csv
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from analysis.messaging import functions_text
from analysis.pipeline import read_verdicts
from probe.dataset import write_records
from probe.experiments.messaging.endpoints import parse_endpoints, shipped_endpoints_path
from tests.support.messaging_records import DCS, TELEGRAM_WEB, app, dropped
from tests.support.paths import REPO
from vantage.cli import main


def invoke(*args: str) -> str:
    # A wide terminal: rich folds long cells at 80 columns, which would split what is asserted.
    result = CliRunner().invoke(main, list(args), env={"COLUMNS": "250"})
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.stdout


@pytest.fixture
def analyzed(tmp_path: Path) -> tuple[Path, Path, str]:
    root = tmp_path / "ds"
    import datetime as dt

    probe = app("telegram", [*dropped(DCS), TELEGRAM_WEB])
    control = app("telegram", [*DCS, TELEGRAM_WEB], "control", at=probe.measurement_start_time + dt.timedelta(minutes=2))
    probe.run_id = control.run_id = "r1"
    write_records(root, "r1", [probe, control])
    verdicts = tmp_path / "v.parquet"
    invoke("analyze", str(root), "-o", str(verdicts))
    table, _ = read_verdicts(verdicts)
    (functions,) = [f for f in table.column("functions").to_pylist() if f]
    return root, verdicts, functions_text(functions)


def test_analyze_report_and_runs_show_agree(analyzed: tuple[Path, Path, str], tmp_path: Path) -> None:
    root, verdicts, text = analyzed
    assert text == "messaging blocked (tcp_ip: generic_timeout, 4/4 endpoints); web ok"

    out = invoke("analyze", str(root), "-o", str(tmp_path / "again.parquet"))
    assert "messaging apps, per function" in out and "telegram" in out and "tcp_ip" in out
    summary = json.loads(invoke("analyze", str(root), "-o", str(tmp_path / "j.parquet"), "--json"))
    rows = {r["function"]: r for r in summary["messaging_functions"]}
    assert (rows["messaging"]["blocked"], rows["messaging"]["layers"], rows["web"]["ok"]) == (1, ["tcp_ip"], 1)

    report = tmp_path / "r.md"
    invoke("report", str(root), "--verdicts", str(verdicts), "-o", str(report), "--csv", str(tmp_path / "v.csv"))
    md = report.read_text(encoding="utf-8")
    assert "## Messaging apps, per function" in md
    assert "| ZZ |  | telegram | messaging | 1 | 1 | 0 | 0 | tcp_ip | blocked |" in md, md
    with open(tmp_path / "v.csv", newline="", encoding="utf-8") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["functions"] == text and row["method"] == "messaging.tcp"

    shown = invoke("runs", "show", "r1", "--output", str(root), "--verdicts", str(verdicts))
    assert "messaging.tcp" in shown and "4/4" in shown
    doc = json.loads(invoke("runs", "show", "r1", "--output", str(root), "--verdicts", str(verdicts), "--json"))
    (outcome,) = doc["outcomes"]
    assert outcome["verdict"]["method"] == "messaging.tcp"
    assert functions_text(outcome["verdict"]["functions"]) == text
    # without --verdicts the JSON keeps its old shape
    plain = json.loads(invoke("runs", "show", "r1", "--output", str(root), "--json"))
    assert "verdict" not in plain["outcomes"][0]


def test_a_verdicts_file_without_the_functions_column_still_reads(analyzed: tuple[Path, Path, str], tmp_path: Path) -> None:
    root, verdicts, _ = analyzed
    old = tmp_path / "old.parquet"
    table = pq.read_table(verdicts)
    # the provenance is in the file's key-value metadata (written after the streamed row groups)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **(pq.read_metadata(verdicts).metadata or {})})
    pq.write_table(table.drop_columns(["functions"]), old)  # as a verdicts file written before it existed
    shown = invoke("runs", "show", "r1", "--output", str(root), "--verdicts", str(old))
    assert "messaging.tcp" in shown


def test_shipped_endpoints_list_is_the_repositorys_and_parses() -> None:
    assert shipped_endpoints_path().read_bytes() == (REPO / "testlists" / "messaging.csv").read_bytes()
    eps = parse_endpoints(shipped_endpoints_path().read_text(encoding="utf-8"))
    apps = {e.app for e in eps}
    assert apps == {"signal", "telegram", "whatsapp", "facebook_messenger"}
    assert sum(1 for e in eps if e.app == "telegram" and e.function == "messaging") == 10  # 5 DCs x ports 80, 443
    assert sum(1 for e in eps if e.app == "whatsapp" and e.function == "messaging") == 32  # e1..e16 x 443, 5222


@pytest.fixture
def list_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    docroot = tmp_path / "www"
    docroot.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(docroot), **kw)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", docroot
    finally:
        server.shutdown()
        server.server_close()


def test_update_messaging_fetches_a_newer_list_and_never_replaces_with_a_bad_one(
        list_server: tuple[str, Path], tmp_path: Path) -> None:
    base, docroot = list_server
    dest = tmp_path / "lists" / "messaging.csv"
    (docroot / "good.csv").write_text("app,function,kind,host,port,path,notes\n"
                                      "telegram,messaging,http,192.0.2.1,80,/,new DC\n", encoding="utf-8")
    out = invoke("lists", "update-messaging", "--url", f"{base}/good.csv", "--dest", str(dest))
    assert "1 endpoints" in out and "192.0.2.1" in dest.read_text(encoding="utf-8")
    (docroot / "bad.csv").write_text("app,function,kind,host,port\ntelegram,chat,http,192.0.2.9,80\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["lists", "update-messaging", "--url", f"{base}/bad.csv", "--dest", str(dest)])
    assert result.exit_code == 1 and "function must be one of" in result.output and "nothing replaced" in result.output
    assert "Traceback" not in result.output
    assert "192.0.2.1" in dest.read_text(encoding="utf-8")  # the good copy is kept
    missing = CliRunner().invoke(main, ["lists", "update-messaging", "--url", f"{base}/none.csv", "--dest", str(dest)])
    assert missing.exit_code == 1 and "HTTP 404" in missing.output


def test_run_with_a_bad_endpoints_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "ep.csv"
    bad.write_text("app,function,kind,host,port\ntelegram,messaging,ftp,192.0.2.1,21\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["run", "--experiment", "telegram", "--messaging-endpoints", str(bad),
                                       "--output", str(tmp_path / "out"), "--resolver", "127.0.0.1:9"])
    assert result.exit_code == 1 and "kind must be one of" in result.output and "Traceback" not in result.output


def test_run_measures_the_app_itself_and_ignores_a_target_list(tmp_path: Path) -> None:
    import duckdb

    endpoints = tmp_path / "ep.csv"  # loopback only: a closed port refuses at once
    endpoints.write_text("app,function,kind,host,port\ntelegram,messaging,tcp,127.0.0.1,9\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["run", "--experiment", "telegram", "--list", "vantage", "--messaging-endpoints",
                                       str(endpoints), "--output", str(tmp_path / "out"), "--resolver", "127.0.0.1:9",
                                       "--timeout", "2", "--no-progress"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "telegram takes no target list" in result.stderr
    ((inp, tags),) = duckdb.sql(f"SELECT input, list_transform(tcp, lambda c: c.tag || ' ' || coalesce(c.failure, 'ok')) "
                                f"FROM read_parquet('{tmp_path}/out/measurements/**/*.parquet')").fetchall()
    assert inp == "telegram" and tags == ["messaging@127.0.0.1:9 connection_refused"]
