"""Property tests of the fingerprint readers (OONI CSV, Censored Planet JSON lines): whatever the
bad rows hold, no exception other than FingerprintError escapes, every good row next to them
survives, and the matcher built from the result takes any text. Bounded to about ten seconds."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.fingerprints import COLUMNS, FingerprintError, load_cp_signatures, load_file

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Text as CSV and JSON can carry it: any code point but lone surrogates (which no file holds).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
NAMES = st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True)
GOOD_ROW = st.fixed_dictionaries({
    "location_found": st.sampled_from(["body", "dns", "header.server", "header.location", " Body "]),
    "pattern_type": st.sampled_from(["contains", "prefix", "full", "FULL"]),
    "pattern": TEXT.filter(lambda s: s != ""),
    "confidence_no_fp": st.sampled_from(["", "5", "10", " 7 "]),
    "expected_countries": st.sampled_from(["", "ID", "IR,RU", "id, tr"]),
    "notes": TEXT,
})
BAD_VALUES = st.one_of(
    st.fixed_dictionaries({"location_found": st.sampled_from(["cookie", "", "header.", "dnss"])}),
    st.fixed_dictionaries({"pattern_type": st.sampled_from(["fuzzy", "", "regex"])}),
    st.fixed_dictionaries({"pattern_type": st.just("regexp"), "pattern": st.sampled_from(["(", "[a-", "a{2,1}", "(?P<x"])}),
    st.fixed_dictionaries({"pattern": st.just("")}),
    st.fixed_dictionaries({"pattern": st.integers(8193, 200_000).map(lambda n: "x" * n)}),
    st.fixed_dictionaries({"confidence_no_fp": st.sampled_from(["high", "1e3", "5.5"])}),
    st.fixed_dictionaries({"name": st.sampled_from(["", "   "])}),
)
# Raw lines that are bad whatever they hold: no comma (one column, so no location_found) and no
# quote (a quote may open a field that swallows the rows after it; CSV itself works that way).
RAW_BAD = st.binary(max_size=80).map(lambda b: b.replace(b",", b";").replace(b'"', b"'"))


def _row(values: dict[str, str], name: str) -> dict[str, str]:
    row = dict.fromkeys(COLUMNS, "")
    row.update({"name": name, "location_found": "body", "pattern_type": "contains", "pattern": "Blocked"})
    row.update(values)
    return row


@pytest.mark.slow  # hypothesis examples: ~6 s
@FUZZ
@given(
    rows=st.lists(st.one_of(GOOD_ROW.map(lambda r: ("good", r)), BAD_VALUES.map(lambda r: ("bad", r)),
                            RAW_BAD.map(lambda r: ("raw", r))), max_size=12),
    bom=st.booleans(),
    crlf=st.booleans(),
    data=st.data(),
)
def test_csv_reader_keeps_good_rows_next_to_bad_ones(tmp_path_factory, rows, bom, crlf, data) -> None:  # type: ignore[no-untyped-def]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\r\n" if crlf else "\n")
    writer.writeheader()
    out = bytearray(b"\xef\xbb\xbf" if bom else b"")
    out += buf.getvalue().encode()
    good: list[str] = []
    for i, (kind, values) in enumerate(rows):
        if kind == "raw":
            out += values + b"\n"
            continue
        name = data.draw(NAMES) + f".{i}"
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n").writerow(_row(values, name))
        out += buf.getvalue().encode()
        if kind == "good":
            good.append(name)
    path = tmp_path_factory.mktemp("csv") / "fp.csv"
    path.write_bytes(bytes(out))
    fs = load_file(path)  # only FingerprintError may escape, and never for a file with the header
    assert [f.name for f in fs.fingerprints] == good
    for p in fs.problems:
        assert re.match(rf"{re.escape(str(path))}:\d+: ", p), p
    matcher = fs.http_matcher
    matcher.match_body(data.draw(TEXT))
    matcher.match_response([("Server", data.draw(TEXT))], data.draw(TEXT))


@FUZZ
@given(blob=st.binary(max_size=400))
def test_csv_reader_on_any_bytes_raises_only_its_error(tmp_path_factory, blob: bytes) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("csv") / "any.csv"
    for content in (blob, b"name,location_found,pattern_type,pattern\n" + blob):
        path.write_bytes(content)
        try:
            load_file(path).http_matcher.match_body("x")
        except FingerprintError as exc:
            assert str(path) in str(exc)


BAD_JSON_LINE = st.one_of(
    TEXT.map(lambda s: "x" + s.replace("\n", " ")),  # not JSON (may hold CR, U+2028, NUL ...)
    st.sampled_from(["[]", "1", "null", '"text"', "{}", '{"fingerprint": 1, "pattern": "a"}',
                     '{"fingerprint": "n"}', '{"fingerprint": "n", "pattern": "("}', '{"pattern": "a"}',
                     "[" * 5000 + "]" * 5000, '{"fingerprint": "n", "pattern": "' + "a" * 9000 + '"}']),
)


@FUZZ
@given(
    lines=st.lists(st.one_of(st.tuples(st.just("good"), NAMES, TEXT.filter(bool)),
                             st.tuples(st.just("bad"), BAD_JSON_LINE, st.just(""))), max_size=12),
    bom=st.booleans(),
    data=st.data(),
)
def test_cp_reader_keeps_good_lines_next_to_bad_ones(tmp_path_factory, lines, bom, data) -> None:  # type: ignore[no-untyped-def]
    text, good = [], []
    for i, (kind, a, b) in enumerate(lines):
        if kind == "good":
            name = f"{a}.{i}"
            good.append(f"cp.{name}")
            text.append(json.dumps({"fingerprint": name, "pattern": re.escape(b)}, ensure_ascii=data.draw(st.booleans())))
        else:
            text.append(a)
    path = tmp_path_factory.mktemp("cp") / "blockpage_signatures.json"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + "\n".join(text).encode("utf-8"))
    try:
        fs = load_cp_signatures(path)
    except FingerprintError as exc:
        assert not good and str(path) in str(exc)
        return
    assert [f.name for f in fs.fingerprints] == good
    for p in fs.problems:
        assert re.match(rf"{re.escape(str(path))}:\d+: ", p), p
    fs.http_matcher.match_response([("Location", data.draw(TEXT))], data.draw(TEXT))


@FUZZ
@given(blob=st.binary(max_size=400))
def test_cp_reader_on_any_bytes_raises_only_its_error(tmp_path_factory, blob: bytes) -> None:  # type: ignore[no-untyped-def]
    path = Path(tmp_path_factory.mktemp("cp")) / "false_positive_signatures.json"
    path.write_bytes(blob)
    try:
        load_cp_signatures(path).http_matcher.match_body("x")
    except FingerprintError as exc:
        assert str(path) in str(exc)
