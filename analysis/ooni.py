"""Import OONI measurements (JSON, JSON-lines, gzip; files or directories) into a Vantage dataset.

Streams every file and writes through probe.store.DatasetWriter, so memory stays flat however
much is imported. probe.store is the dataset format, not the probe's network code or its
experiments, so analysis/ may use it (docs/ooni.md). The mapping itself lives in
analysis/ooni_fields.py (shared data formats) and analysis/ooni_tests.py (per test).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from analysis.ooni_fields import BodyStats, map_failure
from analysis.ooni_read import SourceError, discover, iter_documents
from analysis.ooni_tests import NotAMeasurement, convert
from probe.schema import new_run_id, validate
from probe.scrub import scrub_probe_ip
from probe.store import DatasetWriter, StoreError, iter_dataset_files

__all__ = ["ImportSummary", "OoniImportError", "import_ooni", "map_failure", "convert"]

MAX_REPORTED_ERRORS = 50  # the summary lists the first ones; all are counted


class OoniImportError(Exception):
    """An import that cannot start (bad source path, unwritable output); one line."""


@dataclass
class ImportSummary:
    files: int = 0
    measurements: int = 0  # probe rows written
    controls: int = 0  # control rows written
    by_test: Counter[str] = field(default_factory=Counter)
    base64_bodies: int = 0
    odd_encodings: int = 0
    missing_test_keys: int = 0
    null_controls: int = 0
    already_present: int = 0  # skipped: the output already holds this measurement
    malformed: int = 0
    errors: list[str] = field(default_factory=list)  # "file:line: reason"
    output_files: list[Path] = field(default_factory=list)

    def note_error(self, where: str, reason: str) -> None:
        self.malformed += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(f"{where}: {reason}")


def _existing_ids(output: Path) -> set[str]:
    """Ids of OONI rows an earlier import already wrote, so re-importing adds nothing."""
    ids: set[str] = set()
    for path in iter_dataset_files(output):
        try:
            table = pq.read_table(path, columns=["measurement_id", "origin"])
        except Exception:  # an unreadable file is the analyzer's problem to report, not ours
            continue
        for mid, origin in zip(table.column("measurement_id").to_pylist(), table.column("origin").to_pylist(), strict=True):
            if origin == "ooni":
                ids.add(mid)
    return ids


def import_ooni(
    sources: Iterable[Path | str],
    output: Path | str,
    *,
    batch_size: int = 5000,
    on_progress: Callable[[ImportSummary], None] | None = None,
) -> ImportSummary:
    """Import every OONI measurement found in ``sources`` into the dataset at ``output``."""
    paths = [Path(s) for s in sources]
    try:
        files = discover(paths)
    except SourceError as exc:
        raise OoniImportError(str(exc)) from exc
    if not files:
        names = ", ".join(str(p) for p in paths)
        raise OoniImportError(f"no OONI measurement files (.json, .jsonl, .ndjson, optionally .gz) in {names}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OoniImportError(f"{output}: output exists and is not a directory")
    summary = ImportSummary(files=len(files))
    existing = _existing_ids(output)
    stats = BodyStats()
    writer_run = "ooni-import-" + new_run_id()
    try:
        writer = DatasetWriter(output, writer_run, batch_size=batch_size, max_age_s=1e9)
    except (OSError, StoreError) as exc:
        raise OoniImportError(f"{output}: cannot write: {exc}") from exc
    try:
        with writer:
            for path in files:
                try:
                    for raw in iter_documents(path):
                        where = f"{path}:{raw.line}" if raw.line > 0 else str(path)
                        if raw.error:
                            summary.note_error(where, raw.error)
                            continue
                        try:
                            converted = convert(raw.doc, raw.raw, stats)
                            scrub_probe_ip(converted.records, raw.doc.get("probe_ip"))
                            for record in converted.records:
                                validate(record)  # all or nothing: no probe row without its control
                        except (NotAMeasurement, ValueError, TypeError, AttributeError, KeyError) as exc:
                            summary.note_error(where, f"{type(exc).__name__}: {exc}")
                            continue
                        for record in converted.records:
                            if record.measurement_id not in existing:
                                writer.add(record)
                        if converted.records[0].measurement_id in existing:
                            summary.already_present += 1
                            continue
                        summary.measurements += 1
                        summary.controls += len(converted.records) - 1
                        summary.by_test[converted.test_name] += 1
                        summary.missing_test_keys += converted.missing_test_keys
                        summary.null_controls += converted.null_control
                        if on_progress is not None and summary.measurements % 1000 == 0:
                            on_progress(summary)
                except SourceError as exc:
                    summary.note_error(str(path), str(exc))
    except StoreError as exc:
        raise OoniImportError(str(exc)) from exc
    summary.base64_bodies = stats.base64_bodies
    summary.odd_encodings = stats.odd_encodings
    summary.output_files = list(writer.files_written)
    return summary
