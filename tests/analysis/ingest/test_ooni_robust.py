"""OONI import: each measurement written once (within one command and across imports), and bad
input that costs only its own line (FILE:LINE: reason, never a traceback)."""

from __future__ import annotations

import copy
import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import duckdb
from click.testing import CliRunner, Result

from analysis.ingest.ooni import import_ooni
from analysis.ingest.ooni.convert import origin_key
from tests.support.paths import SHARED_DATA
from vantage.cli import main

OONI = SHARED_DATA / "ooni"
NETEM = OONI / "netem" / "web_connectivity_netem_simulated.jsonl"
LINES = NETEM.read_text(encoding="utf-8").splitlines()


def ooni_import(*args: str | Path) -> Result:
    result = CliRunner().invoke(main, ["ooni", "import", *map(str, args), "-q"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def counts(ds: Path) -> tuple[int, int, int]:
    """(probe rows, distinct origin_uid of probe rows, distinct measurement_id of all rows - all rows)."""
    con = duckdb.connect()
    try:
        q = f"from read_parquet('{ds}/measurements/**/*.parquet', hive_partitioning=true)"
        probes, uids = con.sql(f"select count(*), count(distinct origin_uid) {q} where role = 'probe'").fetchall()[0]
        rows, ids = con.sql(f"select count(*), count(distinct measurement_id) {q}").fetchall()[0]
        return probes, uids, ids - rows
    finally:
        con.close()


def summary_row(output: str, label: str) -> int:
    line = next(ln for ln in output.splitlines() if label in ln)
    return int(line.replace("│", " ").split()[-1])


# --------------------------------------------------------------------------- each measurement once


def test_same_file_twice_is_read_once(tmp_path: Path) -> None:
    result = ooni_import(NETEM, NETEM, "-o", tmp_path / "ds")
    assert result.exit_code == 0, result.output
    assert counts(tmp_path / "ds") == (50, 50, 0)
    assert summary_row(result.output, "files given more than once") == 1


def test_directory_and_a_file_inside_it(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_text("\n".join(LINES[:30]) + "\n")
    (src / "b.jsonl").write_text("\n".join(LINES[20:]) + "\n")  # overlaps a.jsonl on 10 lines
    result = ooni_import(src, src / "b.jsonl", "-o", tmp_path / "ds")
    assert result.exit_code == 0, result.output
    assert counts(tmp_path / "ds") == (50, 50, 0)
    assert summary_row(result.output, "duplicates in the input") == 10
    assert summary_row(result.output, "measurements imported") == 50


def test_repeated_lines_and_the_same_measurement_in_other_layouts(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (src / "rep.jsonl").write_text("\n".join([LINES[0], LINES[1], LINES[0], LINES[0], LINES[2]]) + "\n")
    # The same measurement pretty-printed, and with its keys in another order: one measurement.
    doc = json.loads(LINES[1])
    (src / "pretty.json").write_text(json.dumps(doc, indent=2))
    (src / "reordered.json").write_text(json.dumps(dict(reversed(list(doc.items())))))
    s = import_ooni([src], tmp_path / "ds")
    assert (s.measurements, s.duplicates, s.malformed) == (3, 4, 0)
    assert counts(tmp_path / "ds") == (3, 3, 0)


def test_measurement_uid_decides_and_distinct_measurements_stay(tmp_path: Path) -> None:
    a = json.loads(LINES[39])
    a["measurement_uid"] = "20240212T203347Z_webconnectivity_IT_137_n1_aaaa"
    resubmitted = copy.deepcopy(a)
    resubmitted["test_runtime"] = 9.9  # same OONI measurement, text differs: still one
    # Trap: the netem set's 50 measurements share a start time and an empty report_id, and
    # several share an input; report_id + input + start time would merge them.
    shared = [json.loads(ln) for ln in LINES if json.loads(ln)["input"] == a["input"]]
    assert len(shared) >= 2
    src = tmp_path / "m.jsonl"
    src.write_text("\n".join(json.dumps(d) for d in [a, resubmitted, *shared]) + "\n")
    s = import_ooni([src], tmp_path / "ds")
    assert (s.measurements, s.duplicates) == (1 + len(shared), 1)
    assert len({origin_key(d) for d in shared}) == len(shared)
    assert counts(tmp_path / "ds")[:2] == (1 + len(shared), 1 + len(shared))


def test_second_import_into_the_same_dataset_adds_nothing(tmp_path: Path) -> None:
    first = ooni_import(NETEM, "-o", tmp_path / "ds")
    assert first.exit_code == 0
    part = tmp_path / "part.jsonl"
    part.write_text("\n".join(LINES[:10]) + "\n")
    again = ooni_import(part, NETEM, "-o", tmp_path / "ds")
    assert again.exit_code == 0, again.output
    assert summary_row(again.output, "already in the dataset") == 60  # part.jsonl's 10, then the 50
    assert summary_row(again.output, "measurements imported") == 0
    assert counts(tmp_path / "ds") == (50, 50, 0)


# --------------------------------------------------------------------------- bad lines


def _variant(n: int, **changes: Any) -> str:
    doc = json.loads(LINES[n])
    doc["annotations"] = {"variant": str(len(changes)) + ",".join(sorted(changes))}
    for path, value in changes.items():
        target = doc
        *parents, last = path.split("__")
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        target[last] = value
    return json.dumps(doc)


def test_a_bad_line_costs_only_itself(tmp_path: Path) -> None:
    good = [LINES[i] for i in range(8)]
    cr_inside = LINES[39].replace("Default Web Page", "Default\rWeb Page", 1)  # bare CR in a string
    assert "\r" in cr_inside
    bad = {
        "deep nesting": "[" * 100_000 + "]" * 100_000,
        "deep nesting in a measurement": good[1][:-1] + ', "x": ' + "[" * 50_000 + "]" * 50_000 + "}",
        "int32 overflow (Arrow)": _variant(2, test_keys__tcp_connect__0__port=2**40),
        "int64 overflow (Arrow)": _variant(2, test_keys__queries__0__answers__0__ttl=2**70),
        "lone surrogate": good[3][:-1] + ', "input": "http://x/\\ud800"}',
        "integer literal too long for Python": good[4][:-1] + ', "x": ' + "9" * 5000 + "}",
        "top-level list": "[1, 2, 3]",
        "top-level string": '"web_connectivity"',
        "top-level number": "42",
        "top-level null": "null",
        "wrong shape": json.dumps({"test_name": "web_connectivity", "measurement_start_time": "x", "test_keys": []}),
        "not JSON": '{"test_name": ',
    }
    # Values that are odd but importable: they must import, not be lost.
    odd_good = [
        _variant(5, test_keys__queries__0__t=float("nan"), test_runtime=float("inf")),
        _variant(6, test_keys__control=[1, 2], test_keys__requests=5, test_keys__queries="x"),
        _variant(7, test_keys__queries__0__answers__0__asn=2**80),
        cr_inside,
    ]
    lines = []
    for i, line in enumerate(good[1:] + odd_good):
        lines.append(line)
        if i < len(bad):
            lines.append(list(bad.values())[i])
    lines += list(bad.values())[len(good) - 1 + len(odd_good):]
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
    result = CliRunner().invoke(main, ["ooni", "import", str(src), "-o", str(tmp_path / "ds"), "-q"])
    assert result.exit_code == 0 and result.exception is None, result.output
    skipped = [ln for ln in result.output.splitlines() if ln.startswith("skipped ")]
    bad_lines = sorted(i for i, ln in enumerate(lines, 1) if ln in bad.values())
    assert sorted(int(ln.split(":")[1]) for ln in skipped) == bad_lines, skipped
    assert all(ln.startswith(f"skipped {src}:") for ln in skipped)
    expected = {origin_key(json.loads(ln, strict=False)) for ln in good[1:] + odd_good}
    con = duckdb.connect()
    try:
        got = {r[0] for r in con.sql(
            f"select origin_uid from read_parquet('{tmp_path}/ds/measurements/**/*.parquet') where role = 'probe'").fetchall()}
    finally:
        con.close()
    assert got == expected
    assert summary_row(result.output, "malformed") == len(bad)


def test_bare_cr_does_not_split_a_line(tmp_path: Path) -> None:
    line = LINES[39].replace("Default Web Page", "Default\rWeb Page", 1)
    src = tmp_path / "cr.jsonl"
    src.write_text(line + "\n" + LINES[40] + "\r\n", newline="")
    s = import_ooni([src], tmp_path / "ds")
    assert (s.measurements, s.malformed) == (2, 0), s.errors
    con = duckdb.connect()
    try:
        titles = con.sql(f"select http[1].title from read_parquet('{tmp_path}/ds/measurements/**/*.parquet') "
                         "where role = 'probe'").fetchall()
    finally:
        con.close()
    assert ("Default Web Page",) in titles  # the title collapses whitespace, CR included


def test_truncated_gzip_keeps_every_complete_line(tmp_path: Path) -> None:
    data = ("\n".join(LINES) + "\n").encode()
    blob = gzip.compress(data)
    for cut in (len(blob) // 3, len(blob) // 2, len(blob) - 20):
        src = tmp_path / f"cut{cut}.jsonl.gz"
        src.write_bytes(blob[:cut])
        # The lines a decompressor can recover from the bytes that are there.
        readable = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob[:cut])
        complete = readable.count(b"\n")
        s = import_ooni([src], tmp_path / f"ds{cut}")
        assert s.measurements == complete, (cut, s.measurements, complete)
        assert s.malformed == 1 and f"{src}:{complete + 1}: unreadable" in s.errors[0], s.errors


def test_a_broken_object_in_a_file_of_pretty_printed_objects_costs_only_itself(tmp_path: Path) -> None:
    docs = [json.loads(LINES[i]) for i in range(3)]
    texts = [json.dumps(d, indent=2) for d in docs]
    broken = texts[1][: len(texts[1]) // 2]  # cut in the middle
    src = tmp_path / "pretty.json"
    src.write_text("\n".join([texts[0], broken, texts[2]]) + "\n")
    s = import_ooni([src], tmp_path / "ds")
    assert (s.measurements, s.malformed) == (2, 1), s.errors
    assert s.errors[0].startswith(f"{src}:{texts[0].count(chr(10)) + 2}: invalid JSON")


def test_a_broken_first_line_of_a_json_lines_file_named_json(tmp_path: Path) -> None:
    src = tmp_path / "lines.json"
    src.write_text(LINES[0][:100] + "\n" + "\n".join(LINES[1:5]) + "\n")
    s = import_ooni([src], tmp_path / "ds")
    assert (s.measurements, s.malformed) == (4, 1), s.errors
    assert s.errors[0].startswith(f"{src}:1: invalid JSON")


def test_a_fifo_is_one_error_line_not_a_hang(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    result = CliRunner().invoke(main, ["ooni", "import", str(fifo), "-o", str(tmp_path / "ds")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {fifo}: not a regular file or directory"]


def test_every_skipped_line_is_printed_once_beyond_the_first_fifty(tmp_path: Path) -> None:
    src = tmp_path / "many.jsonl"
    src.write_text("\n".join(["{broken"] * 60 + [LINES[0]]) + "\n")
    result = ooni_import(src, "-o", tmp_path / "ds")
    assert result.exit_code == 0, result.output
    skipped = [ln for ln in result.output.splitlines() if ln.startswith("skipped ")]
    assert [int(ln.split(":")[1]) for ln in skipped] == list(range(1, 61))
    assert summary_row(result.output, "malformed") == 60
    assert summary_row(result.output, "measurements imported") == 1
