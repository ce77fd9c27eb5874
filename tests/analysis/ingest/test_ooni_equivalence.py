"""The fast OONI import (msgspec, Arrow columns built from the records, one conversion per batch)
writes exactly the rows of the plain reference path: the standard library's JSON decoder,
``convert``, ``scrub_probe_ip``, ``Measurement.to_row`` and one ``pa.Table.from_pylist`` per
measurement (issue 19). Compared as sorted tables on the netem file and every fixture."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.ingest.ooni import import_ooni
from analysis.ingest.ooni.convert import convert
from analysis.ingest.ooni.fields import BodyStats
from analysis.ingest.ooni.read import iter_documents
from probe.dataset import iter_dataset_files
from probe.schema import MEASUREMENT_SCHEMA, validate
from probe.scrub import scrub_probe_ip
from tests.support.paths import SHARED_DATA

OONI = SHARED_DATA / "ooni"
SOURCES = sorted(p for p in OONI.rglob("*") if p.is_file() and p.name.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")))


def _reference(path: Path) -> pa.Table:
    """The rows the import must write, by the slow path kept for this comparison."""
    rows, seen = [], set()
    for raw in iter_documents(path):
        if raw.error:
            continue
        doc = json.loads(raw.raw, strict=False) if raw.raw.lstrip().startswith("{") else raw.doc
        try:
            converted = convert(doc, raw.raw, BodyStats())
            scrub_probe_ip(converted.records, doc.get("probe_ip"))
            for record in converted.records:
                validate(record)
            line = [r.to_row() for r in converted.records]
            pa.Table.from_pylist(line, schema=pa.schema([*MEASUREMENT_SCHEMA, pa.field("probe_cc", pa.string())]))
        except Exception:  # noqa: BLE001 - the import skips these lines too
            continue
        key = converted.records[0].origin_uid
        if key in seen:
            continue
        seen.add(key)
        rows += line
    for row in rows:
        row.pop("probe_cc")
    return _sorted(pa.Table.from_pylist(rows, schema=MEASUREMENT_SCHEMA))


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("measurement_id", "ascending")])


def _imported(path: Path, out: Path) -> pa.Table:
    summary = import_ooni([path], out, batch_size=7)  # small batches: several per file
    tables = [pq.read_table(f, schema=MEASUREMENT_SCHEMA) for f in iter_dataset_files(out)]
    assert sum(t.num_rows for t in tables) == summary.measurements + summary.controls
    return _sorted(pa.concat_tables(tables)) if tables else MEASUREMENT_SCHEMA.empty_table()


def test_sources_found() -> None:
    assert len(SOURCES) >= 5, f"expected the shared OONI data in {OONI}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(OONI)))
def test_import_writes_the_reference_rows(path: Path, tmp_path: Path) -> None:
    expected = _reference(path)
    got = _imported(path, tmp_path / "ds")
    assert got.num_rows == expected.num_rows
    assert got.equals(expected), next(
        (name, got.column(name).to_pylist()[:3], expected.column(name).to_pylist()[:3])
        for name in got.column_names if not got.column(name).equals(expected.column(name)))


def test_columns_match_from_pylist_with_nulls_and_empties() -> None:
    """records_table gives what from_pylist gives of the same records as dicts: empty lists,
    null leaves, a null list and a null record included (the converters never write the last
    two, the builder handles them all the same)."""
    from dataclasses import dataclass

    from analysis.ingest.ooni.columns import records_table

    @dataclass
    class Inner:
        a: int | None
        tags: list[str] | None

    @dataclass
    class Outer:
        name: str | None
        inner: Inner | None
        items: list[Inner] | None

    inner_type = pa.struct([("a", pa.int64()), ("tags", pa.list_(pa.string()))])
    schema = pa.schema([("name", pa.string()), ("inner", inner_type), ("items", pa.list_(inner_type))])
    records = [
        Outer("x", Inner(1, ["p", "q"]), [Inner(2, []), Inner(None, None)]),
        Outer(None, None, None),
        Outer("y", Inner(None, []), []),
    ]

    def plain(v: object) -> object:
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, (Inner, Outer)):
            return {k: plain(x) for k, x in vars(v).items()}
        return v

    expected = pa.Table.from_pylist([plain(r) for r in records], schema=schema)  # type: ignore[misc]
    got = records_table(records, schema)
    assert got.to_pylist() == expected.to_pylist()
    assert got.equals(expected)
    assert records_table([], schema).num_rows == 0
    with pytest.raises(pa.ArrowInvalid):
        records_table([Outer("z", Inner("not a number", []), [])], schema)  # type: ignore[arg-type]
