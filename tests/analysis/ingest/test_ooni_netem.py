"""Vantage's verdicts on OONI's 50 simulated-censorship measurements agree with OONI's own.

Imports ../shared/data/ooni/netem/ with `vantage ooni import`, runs `vantage analyze` over it,
and compares each verdict with OONI's `blocking`/`accessible` from the index CSV (mapping in
tests/support/ooni_compare.py and docs/ooni.md). Prints the disagreement table.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from click.testing import CliRunner

from analysis.ingest.ooni.convert import measurement_id
from tests.support.ooni_compare import agrees, expected
from tests.support.paths import SHARED_DATA
from vantage.cli import main

NETEM = SHARED_DATA / "ooni" / "netem"
MIN_AGREEMENT = 0.90


def compare(tmp_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    runner = CliRunner()
    ds = tmp_path / "ds"
    result = runner.invoke(main, ["ooni", "import", str(NETEM / "web_connectivity_netem_simulated.jsonl"), "-o", str(ds), "-q"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "verdicts.parquet"
    result = runner.invoke(main, ["analyze", str(ds), "--output", str(out)])
    assert result.exit_code == 0, result.output
    verdicts = pq.read_table(out).to_pylist()
    # Verdicts join back to the index through the id the import derives from each line's text.
    by_id = {v["measurement_id"]: v for v in verdicts}
    assert len(by_id) == len(verdicts)  # one verdict per probe measurement
    rows, disagreements = [], []
    with open(NETEM / "web_connectivity_netem_simulated.jsonl", encoding="utf-8") as lines, open(
        NETEM / "web_connectivity_netem_simulated_index.csv", encoding="utf-8", newline=""
    ) as index:
        for line, entry in zip(lines, csv.DictReader(index), strict=True):
            line = line.strip()
            v = by_id[measurement_id(json.loads(line), line)]
            exp = expected(entry["blocking"], entry["accessible"])
            row = {
                "n": entry["jsonl_line"],
                "scenario": entry["scenario"],
                "ooni": f"{entry['blocking'] or 'null'}/{entry['accessible'] or 'null'}",
                "expected": str(exp),
                "vantage": f"{v['status']}/{v['layer']}" if v["layer"] else str(v["status"]),
                "method": str(v["method"]),
            }
            row["equivalent"] = exp.status == "blocked" and exp.layer != v["layer"]
            rows.append(row)
            if not agrees(exp, v["status"], v["layer"]):
                disagreements.append(row)
    return rows, disagreements


def test_vantage_agrees_with_ooni_on_the_netem_scenarios(tmp_path: Path) -> None:
    rows, disagreements = compare(tmp_path)
    assert len(rows) == 50
    rate = 1 - len(disagreements) / len(rows)
    print(f"\nagreement with OONI: {len(rows) - len(disagreements)}/{len(rows)} = {rate:.0%}")
    print(f"{'#':>3} {'scenario':<58} {'OONI blocking/accessible':<26} {'Vantage':<22} method")
    for r in disagreements:
        print(f"{r['n']:>3} {r['scenario']:<58} {r['ooni']:<26} {r['vantage']:<22} {r['method']}")
    for r in rows:
        if r["equivalent"] and r not in disagreements:
            print(f"    (agrees by layer equivalence) {r['n']} {r['scenario']}: OONI {r['ooni']}, Vantage {r['vantage']}")
    assert rate >= MIN_AGREEMENT
