"""Fuzzing the OONI import: property tests over the reader and converter, and a seeded mutation
corpus over the real OONI files in ../shared/data/ooni/ run through the whole import.

What must hold for every input: no exception escapes the import (tracebacks = 0), every value
that is not imported is reported as FILE:LINE, and every untouched line imports (good lines
lost = 0). Bounded (fixed seeds, hypothesis max_examples, no deadline) to well under a minute;
each test prints its counts (run with -s), and the assertion messages carry them too.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import random
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.ingest.ooni import import_ooni
from analysis.ingest.ooni.convert import NotAMeasurement, convert, origin_key
from analysis.ingest.ooni.fields import BodyStats
from analysis.ingest.ooni.read import iter_documents
from tests.support.paths import SHARED_DATA

OONI = SHARED_DATA / "ooni"
SEED = 20261201
MUTATION_CASES = 60  # files of LINES_PER_CASE lines: 2,400 lines, one in six mutated
LINES_PER_CASE = 40
FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])


def _corpus() -> list[str]:
    """The real measurements, one compact JSON line each (JSON-lines files line by line)."""
    lines: list[str] = []
    for path in sorted(OONI.rglob("*")):
        if path.suffix not in (".json", ".jsonl"):
            continue
        for raw in iter_documents(path):
            assert raw.error is None, (path, raw.error)
            lines.append(json.dumps(raw.doc))
    assert len(lines) >= 100, f"expected the shared OONI data in {OONI}"
    return lines


CORPUS = _corpus()


@dataclass
class Tally:
    cases: int = 0
    values: int = 0  # lines (or objects) written
    mutated: int = 0  # of which mutated
    clean_errors: int = 0  # reported as FILE:LINE: reason
    tracebacks: list[str] = field(default_factory=list)  # one per import that raised
    good_lines_lost: int = 0
    good_lost: list[str] = field(default_factory=list)  # one per case that lost some
    unaccounted: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        return (f"{name}: cases {self.cases}, values {self.values} ({self.mutated} mutated), "
                f"clean errors {self.clean_errors}, tracebacks {len(self.tracebacks)}, "
                f"good lines lost {self.good_lines_lost}, unaccounted {len(self.unaccounted)}")

    def check(self, name: str) -> None:
        summary = self.line(name)
        print("\n" + summary)
        assert not self.tracebacks, summary + "\n" + self.tracebacks[0]
        assert not self.good_lost, summary + "\n" + self.good_lost[0]
        assert not self.unaccounted, summary + "\n" + self.unaccounted[0]


def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about parsing, not durability: on a busy shared disk the store's fsyncs
    (several per case) would be most of the wall time."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def imported_keys(ds: Path) -> set[str]:
    if not (ds / "measurements").is_dir():
        return set()
    con = duckdb.connect()
    try:
        return {r[0] for r in con.sql(
            f"select origin_uid from read_parquet('{ds}/measurements/**/*.parquet') where role = 'probe'").fetchall()}
    finally:
        con.close()


def run_case(tally: Tally, src: Path, ds: Path, good: set[str], physical_lines: int | None) -> None:
    """Import src; count errors; every key in ``good`` must be in the output; with
    ``physical_lines`` every non-blank line must be imported, a duplicate, or reported."""
    tally.cases += 1
    try:
        summary = import_ooni([src], ds)
    except Exception:  # noqa: BLE001 - the point of the test: count what escapes
        tally.tracebacks.append(f"{src}:\n{traceback.format_exc()}")
        summary = None
    lost = good - imported_keys(ds)
    if lost:
        tally.good_lines_lost += len(lost)
        tally.good_lost.append(f"{src}: {len(lost)} good lines lost, e.g. {sorted(lost)[0]}")
    if summary is None:
        return
    tally.clean_errors += summary.malformed
    bad = [e for e in summary.errors if not e.startswith(f"{src}:")]
    if bad:
        tally.unaccounted.append(f"{src}: error without FILE:LINE: {bad[0]}")
    if physical_lines is not None:
        seen = summary.measurements + summary.duplicates + summary.already_present + summary.malformed
        if seen != physical_lines:
            tally.unaccounted.append(f"{src}: {physical_lines} lines, {seen} imported, duplicate or reported")


# --------------------------------------------------------------------------- (a) properties

_KEYS = ["test_name", "measurement_start_time", "test_keys", "input", "probe_cc", "probe_asn", "report_id",
         "measurement_uid", "queries", "answers", "tcp_connect", "tls_handshakes", "requests", "control",
         "control_failure", "failure", "status", "ip", "port", "asn", "as_org_name", "ipv4", "engine", "t", "t0",
         "response", "body", "headers_list", "headers", "code", "dns", "addrs", "http_request", "tags", "ttl",
         "peer_certificates", "data", "format", "targets", "network_events", "address", "ip_info", "x"]
_TEXT = st.text(st.characters(codec=None, blacklist_categories=()), max_size=12) | st.sampled_from(
    ["\ud800", "web_connectivity", "2024-02-12 20:33:47", "connection_reset", "context canceled", "1.2.3.4:443",
     "AS0", "base64", "", "depth=0", "\r", "NaN"])
_LEAF = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
         | st.floats(allow_nan=True, allow_infinity=True) | _TEXT)
_JSON = st.recursive(
    _LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS) | _TEXT, inner, max_size=5),
    max_leaves=25,
)
_MEASUREMENT = st.fixed_dictionaries(
    {"test_name": st.sampled_from(["web_connectivity", "tor", "openvpn", "vanilla_tor", "riseupvpn", "psiphon",
                                   "stunreachability", "dnscheck", "signal", "x", "", None, 3, ["tor"]]),
     "measurement_start_time": st.sampled_from(["2024-02-12 20:33:47", "2016-10-25T13:49:24Z", 1.7e9, 1e300,
                                                float("nan"), "yesterday", None, [1]]),
     "test_keys": st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=8) | _JSON},
    optional={k: _JSON for k in ("input", "probe_cc", "probe_asn", "measurement_uid", "report_id", "annotations")},
)


def _dump(value: Any) -> str:
    return json.dumps(value)  # escapes lone surrogates; writes NaN/Infinity as Python's json reads them


@pytest.mark.slow  # hypothesis examples: ~6 s
def test_converter_never_raises_anything_but_a_clean_rejection() -> None:
    """convert() either returns records or raises NotAMeasurement (no start time, no test name)."""
    tally = Tally()
    unexpected: list[str] = []

    @settings(FUZZ, max_examples=150)
    @given(_MEASUREMENT)
    def prop(doc: Any) -> None:
        tally.cases += 1
        try:
            convert(copy.deepcopy(doc), "", BodyStats())
        except NotAMeasurement:
            tally.clean_errors += 1
        except Exception as exc:  # noqa: BLE001
            unexpected.append(f"{type(exc).__name__}: {exc} for {_dump(doc)[:300]}")

    prop()
    # The import loop would catch any other error too (next test), but a converter that crashes
    # on an odd shape loses a measurement it could have imported in part.
    summary = f"converter: cases {tally.cases}, NotAMeasurement {tally.clean_errors}, other errors {len(unexpected)}"
    print("\n" + summary)
    assert not unexpected, summary + "\n" + "\n".join(unexpected[:3])
    assert 0 < tally.clean_errors < tally.cases  # both kinds of documents were generated


@pytest.mark.slow  # hypothesis examples through the import: ~10 s
def test_import_of_arbitrary_measurement_shaped_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_fsync(monkeypatch)
    tally = Tally()
    anchors = CORPUS[:3]
    anchor_keys = {origin_key(json.loads(a)) for a in anchors}

    @FUZZ
    @given(st.lists(_MEASUREMENT | _JSON, min_size=1, max_size=4))
    def prop(docs: list[Any]) -> None:
        case = tmp_path / f"p{tally.cases}"
        case.mkdir()
        lines = [anchors[0], *(_dump(d) for d in docs[:2]), anchors[1], *(_dump(d) for d in docs[2:]), anchors[2]]
        tally.values += len(lines)
        tally.mutated += len(docs)  # generated, counted with the mutated ones
        src = case / "m.jsonl"
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
        run_case(tally, src, case / "ds", anchor_keys, physical_lines=len(lines))

    prop()
    tally.check("properties over the import")


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(["x.jsonl", "x.json", "x.jsonl.gz", "x.json.gz"]))
def test_reader_takes_any_bytes(tmp_path_factory: Any, blob: bytes, name: str) -> None:
    path = tmp_path_factory.mktemp("r") / name
    path.write_bytes(blob)
    for raw in iter_documents(path):  # must not raise, whatever the bytes
        assert raw.error is not None or raw.doc is not None or raw.raw.strip() == "null"
        assert raw.line >= 1


# --------------------------------------------------------------------------- (b) mutation corpus


def _swap_type(rng: random.Random, doc: Any) -> Any:
    """Replace one value somewhere in the document by a value of another type."""
    replacements: list[Any] = [None, True, False, 0, -1, 2**64 + 1, 2**200, 1e308, float("nan"), float("inf"), "",
                               "\ud800", "x" * 300, [], {}, [None], {"a": None}, "connection_reset"]
    holders: list[tuple[Any, Any]] = []

    def walk(value: Any, depth: int) -> None:
        if depth > 12:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                holders.append((value, k))
                walk(v, depth + 1)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                holders.append((value, i))
                walk(v, depth + 1)

    walk(doc, 0)
    if holders:
        holder, key = rng.choice(holders)
        holder[key] = rng.choice(replacements)
    return doc


def _delete_key(rng: random.Random, doc: Any) -> Any:
    if isinstance(doc, dict) and doc:
        target = doc
        if isinstance(doc.get("test_keys"), dict) and doc["test_keys"] and rng.random() < 0.7:
            target = doc["test_keys"]
        del target[rng.choice(list(target))]
    return doc


def _mutate(rng: random.Random, line: str) -> list[str]:
    """One mutation of one line; returns the line(s) that replace it."""
    kind = rng.choice(["flip", "flip", "truncate", "swap", "swap", "delete", "duplicate", "nest", "cr", "surrogate"])
    if kind == "flip":
        data = bytearray(line.encode())
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return [data.decode("utf-8", "surrogateescape")]
    if kind == "truncate":
        return [line[: rng.randrange(1, len(line))]]
    if kind in ("swap", "delete"):
        fn: Callable[[random.Random, Any], Any] = _swap_type if kind == "swap" else _delete_key
        return [json.dumps(fn(rng, json.loads(line)))]
    if kind == "duplicate":
        return [line, line]
    if kind == "nest":
        depth = rng.choice([50, 900, 5000, 100_000])
        at = line.index("{", 1) if "{" in line[1:] else 1
        return [line[:at] + "[" * depth + line[at:].split(",", 1)[0] + "]" * depth + "}"]
    if kind == "cr":
        at = line.find('": "')
        return [line[: at + 4] + "\r" + line[at + 4 :]] if at > 0 else [line]
    at = line.find('": "')  # a lone surrogate, escaped as JSON allows
    return [line[: at + 4] + "\\udc80" + line[at + 4 :]] if at > 0 else [line]


def _write(path: Path, text: str) -> None:
    data = text.encode("utf-8", "surrogateescape")
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.slow  # a mutation corpus through the whole import: ~45 s
def test_mutation_corpus_through_the_whole_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_fsync(monkeypatch)
    rng = random.Random(SEED)
    tally = Tally()
    for case in range(MUTATION_CASES):
        base = rng.sample(CORPUS, LINES_PER_CASE)
        mutated = set(rng.sample(range(LINES_PER_CASE), rng.randint(3, 10)))
        lines: list[str] = []
        keys: list[str | None] = []  # the dedupe key of each untouched line, None for a mutated one
        for i, line in enumerate(base):
            out = _mutate(rng, line) if i in mutated else [line]
            lines.extend(out)
            keys.extend([None] * len(out) if i in mutated else [origin_key(json.loads(line))])
        good = {k for k in keys if k}
        tally.mutated += keys.count(None)
        tally.values += len(lines)
        layout = rng.choice(["jsonl", "jsonl", "jsonl.gz", "json", "pretty"])
        case_dir = tmp_path / f"c{case}"
        case_dir.mkdir()
        if layout == "pretty":
            # Concatenated pretty-printed objects; a broken one costs only itself.
            parts = []
            for ln in lines:
                try:
                    parts.append(json.dumps(json.loads(ln, strict=False), indent=2))
                except (ValueError, RecursionError):
                    parts.append(ln)
            src = case_dir / "m.json"
            _write(src, "\n".join(parts) + "\n")
            run_case(tally, src, case_dir / "ds", good, physical_lines=None)
            continue
        src = case_dir / f"m.{layout}"
        text = "\n".join(lines) + "\n"
        if layout == "json" and rng.random() < 0.3:
            # The whole file cut short: the lines wholly before the cut are still good.
            cut = rng.randrange(len(text) // 2, len(text))
            kept = text[:cut].count("\n")
            good = {k for k in keys[:kept] if k}
            text = text[:cut]
        _write(src, text)
        physical = sum(1 for ln in text.encode("utf-8", "surrogateescape").split(b"\n") if ln.strip())
        run_case(tally, src, case_dir / "ds", good, physical_lines=physical)
    tally.check("mutation corpus")
    assert tally.clean_errors > MUTATION_CASES  # the mutations did produce bad lines to report
