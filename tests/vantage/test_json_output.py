"""Issue 16: `--json` on every command that prints a table gives one valid JSON document with
the same numbers as the table (analyze, events, fingerprints show, geo lookup, ooni import)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.analysis.test_geo import dbip_asn, dbip_country
from tests.analysis.test_verdicts_cli import dataset
from tests.support.paths import SHARED_DATA
from vantage.cli import main

NETEM = SHARED_DATA / "ooni" / "netem" / "web_connectivity_netem_simulated.jsonl"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_analyze_json_has_the_table_counts_path_and_provenance(tmp_path: Path) -> None:
    root, _ = dataset(tmp_path)
    table = invoke("analyze", str(root), "-o", str(tmp_path / "t.parquet"))
    doc = json.loads(invoke("analyze", str(root), "-o", str(tmp_path / "j.parquet"), "--json"))
    assert doc["measurements"] == 3 == sum(c["measurements"] for c in doc["counts"])
    by_status = {(c["status"], c["layer"]): c["measurements"] for c in doc["counts"]}
    assert sum(n for (s, _), n in by_status.items() if s == "blocked") == 1 and by_status[("no_control", None)] == 1
    assert sum(n for (s, _), n in by_status.items() if s == "ok") == 1
    # the same numbers as the table: each (status, layer, count) row of the table is in the JSON
    rows = re.findall(r"│\s*(\w+)\s*│\s*(\w*)\s*│\s*(\d+)\s*│", table)
    assert sorted((s, layer or None, int(n)) for s, layer, n in rows) == sorted(
        (c["status"], c["layer"], c["measurements"]) for c in doc["counts"])
    assert doc["verdicts"] == str(tmp_path / "j.parquet") and (tmp_path / "j.parquet").exists()
    assert doc["metadata"]["datasets"] and any(line.startswith("control window") for line in doc["provenance"])
    # -q does not silence a JSON that was asked for; and it stays one document
    assert json.loads(invoke("analyze", str(root), "-o", str(tmp_path / "q.parquet"), "--json", "-q"))["measurements"] == 3


def test_events_json_lists_the_events(tmp_path: Path) -> None:
    root, _ = dataset(tmp_path)
    text = invoke("events", str(root), "-o", str(tmp_path / "t.parquet"))
    written = int(re.search(r"wrote (\d+) event", text).group(1))  # type: ignore[union-attr]
    doc = json.loads(invoke("events", str(root), "-o", str(tmp_path / "e.parquet"), "--json"))
    assert doc["count"] == len(doc["events"]) == written
    assert doc["output"] == str(tmp_path / "e.parquet")


def test_fingerprints_show_json(tmp_path: Path) -> None:
    extra = tmp_path / "fp.csv"
    extra.write_text("name,scope,other_names,location_found,pattern_type,pattern,confidence_no_fp,expected_countries,"
                     "source,exp_url,notes\nx_one,nat,,body,contains,Access denied by the lab,5,ZZ,test,,\n",
                     encoding="utf-8")
    table = invoke("fingerprints", "show", "--fingerprints", str(extra))
    doc = json.loads(invoke("fingerprints", "show", "--fingerprints", str(extra), "--json"))
    names = {s["set"]: s["fingerprints"] for s in doc["sets"]}
    assert any(n == 1 and "fp" in k for k, n in names.items()), doc  # the extra file: one fingerprint
    for s in doc["sets"]:  # every set's count is the one the table prints on its row
        assert re.search(rf"{re.escape(s['set'])}.*\b{s['fingerprints']}\b", table), (s, table)


def test_geo_lookup_json(tmp_path: Path) -> None:
    asn, country = dbip_asn(tmp_path / "a.mmdb"), dbip_country(tmp_path / "c.mmdb")
    args = ["geo", "lookup", "203.0.113.9", "192.0.2.1", "--asn-db", str(asn), "--country-db", str(country)]
    lines = invoke(*args).splitlines()
    doc = json.loads(invoke(*args, "--json"))
    assert doc[0] == {"ip": "203.0.113.9", "asn": "AS64500", "country": "ID", "org": "Example Transit"}
    assert doc[1] == {"ip": "192.0.2.1", "asn": None, "country": None, "org": None}  # trap: in neither database
    assert [line.split("\t") for line in lines] == [[d["ip"], d["asn"] or "-", d["country"] or "-", d["org"] or "-"]
                                                     for d in doc]


def test_ooni_import_json_summary(tmp_path: Path) -> None:
    if not NETEM.exists():
        pytest.skip(f"{NETEM} missing (public test data in ../shared/data)")
    table = invoke("ooni", "import", str(NETEM), "-o", str(tmp_path / "a"), "-q")
    doc = json.loads(invoke("ooni", "import", str(NETEM), "-o", str(tmp_path / "b"), "--json"))
    assert doc["measurements"] == 50 and doc["files"] == 1
    assert sum(doc["by_test"].values()) == doc["measurements"]
    assert re.search(rf"measurements imported\s*│\s*{doc['measurements']}\b", table)
    assert re.search(rf"control rows \(test helper\)\s*│\s*{doc['controls']}\b", table)
    # importing again: everything already there, and the JSON says so
    again = json.loads(invoke("ooni", "import", str(NETEM), "-o", str(tmp_path / "b"), "--json"))
    assert again["measurements"] == 0 and again["already_present"] == doc["measurements"]


def test_runs_list_shows_blocked_so_far_from_the_verdicts_given(tmp_path: Path) -> None:
    from probe.dataset import write_records
    from tests.analysis.test_verdicts_cli import web

    root, _ = dataset(tmp_path)  # run r1: one tcp.reset (blocked), one ok, one without control
    invoke("analyze", str(root), "-o", str(tmp_path / "v.parquet"))
    late = web("probe", tcp_failure="connection_reset")  # run r2 comes after the analysis: not covered
    late.run_id = "r2"
    write_records(root, "r2", [late])
    other, _ = dataset(tmp_path / "other")  # a verdicts file of another directory: not this one's
    invoke("analyze", str(other), "-o", str(tmp_path / "o.parquet"))

    runs = {r["run_id"]: r for r in json.loads(invoke("runs", "list", "--output", str(root), "--json",
                                                      "--verdicts", str(tmp_path / "v.parquet")))}
    assert runs["r1"]["blocked"] == 1 and runs["r2"]["blocked"] is None
    table = invoke("runs", "list", "--output", str(root), "--verdicts", str(tmp_path / "v.parquet"))
    assert re.search(r"r1\b.*│\s*1\s*│\s*$", table, re.M) and re.search(r"r2\b.*│\s*-\s*│\s*$", table, re.M), table
    # trap: the other directory's verdicts (its own r1 has a blocked one too) are not this directory's
    result = CliRunner().invoke(main, ["runs", "list", "--output", str(root), "--json", "--verdicts",
                                       str(tmp_path / "o.parquet")])
    assert result.exit_code == 0 and "was not made from" in result.stderr
    assert all(r["blocked"] is None for r in json.loads(result.stdout))
    # without --verdicts: no count, and the JSON keeps its old shape
    assert all("blocked" not in r for r in json.loads(invoke("runs", "list", "--output", str(root), "--json")))
    # a file that is not a verdicts file: one line
    bad = CliRunner().invoke(main, ["runs", "list", "--output", str(root), "--verdicts", str(tmp_path / "nope.parquet")])
    assert bad.exit_code == 1 and "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1
