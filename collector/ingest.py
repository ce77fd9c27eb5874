"""What the collector does with one submission: decode it within limits, check its schema and
every row (with the probe writer's own `validate`), drop measurements it already holds, and
write the rest into the dataset with probe.store. No HTTP here: the app maps `Refusal` to a
status code, and tests call these functions directly.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from probe.dataset import DatasetWriter, StoreError, iter_dataset_files, partition_dir, write_table_atomic
from probe.schema import MEASUREMENT_SCHEMA, OPTIONAL_COLUMNS, new_run_id, row_to_record, validate

log = logging.getLogger(__name__)

PARQUET_TYPE = "application/vnd.apache.parquet"
ARROW_STREAM_TYPE = "application/vnd.apache.arrow.stream"
ENCODINGS = ("identity", "gzip", "zstd")
_CC = re.compile(r"[A-Z]{2}")
# OONI's first published measurements are from 2012; nothing a probe (or an OONI import that a
# probe uploads) measured can be older. A Raspberry Pi without a real-time clock that has not
# reached NTP yet starts in 1970 (or at its last fake-hwclock save): such rows have a wrong
# date, so they are refused instead of landing in a partition an analyst would never look at.
EARLIEST = dt.datetime(2012, 1, 1, tzinfo=dt.UTC)
# A day of slack for clocks that run fast; a later start time is a broken clock, not a measurement.
FUTURE_SLACK = dt.timedelta(days=1)
_MAX_REASONS = 100  # per receipt: a batch of 20,000 broken rows needs no 20,000 lines to be fixed


@dataclass(frozen=True)
class Limits:
    """What one submission may cost the collector. The defaults fit a probe's batches with room:
    a probe file holds ~200 measurements (~100 KB compressed, a few MB in memory)."""

    max_body: int = 16 * 2**20  # bytes on the wire
    max_decoded: int = 256 * 2**20  # bytes after Content-Encoding and after Parquet/Arrow decoding
    max_rows: int = 20_000  # rows per batch
    max_concurrent: int = 16  # submissions in progress; more get 503 with Retry-After
    read_timeout_s: float = 30.0  # no byte of the body for this long: 408
    # Slowloris guard: after the first read_timeout_s, the body must arrive at least this fast on
    # average. 1 KiB/s is far below any working link (a 2G EDGE link does ~20 KiB/s) and far
    # below the upload client's smallest bandwidth cap (4 KiB/s).
    min_rate: int = 1024
    retry_after_s: int = 5

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Refusal(Exception):
    """The whole submission is refused: HTTP status and one line saying why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --------------------------------------------------------------------------- decoding


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo Content-Encoding, refusing (413) as soon as the output passes `limit` bytes: a zstd
    bomb of a few KB that inflates to gigabytes is stopped after `limit` bytes, not after all."""
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc not in ENCODINGS:
        raise Refusal(415, f"Content-Encoding {enc!r} is not supported (use one of {', '.join(ENCODINGS)})")
    out = io.BytesIO()
    try:
        with pa.CompressedInputStream(pa.BufferReader(body), enc) as stream:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
                if out.tell() > limit:
                    raise Refusal(413, f"the body decompresses to more than {limit} bytes")
    except Refusal:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise Refusal(400, f"the body is not valid {enc}: {exc}") from None
    return out.getvalue()


def decode_table(data: bytes, limits: Limits) -> pa.Table:
    """A Parquet file or an Arrow IPC stream/file, read only after its declared sizes pass."""
    try:
        if data[:4] == b"PAR1":
            return _read_parquet(data, limits)
        if data[:6] == b"ARROW1":
            reader: Any = ipc.open_file(pa.BufferReader(data))
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            return _checked_table(pa.Table.from_batches(batches, schema=reader.schema), limits)
        if data[:4] == b"\xff\xff\xff\xff":
            return _checked_table(ipc.open_stream(pa.BufferReader(data)).read_all(), limits)
    except Refusal:
        raise
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise Refusal(400, f"the body is not a readable Parquet file or Arrow IPC stream: {exc}") from None
    raise Refusal(415, "the body is neither a Parquet file nor an Arrow IPC stream (see docs/collector.md)")


def _read_parquet(data: bytes, limits: Limits) -> pa.Table:
    if data[-4:] != b"PAR1":
        raise Refusal(400, "the Parquet file is truncated (no footer)")
    pf = pq.ParquetFile(pa.BufferReader(data))
    meta = pf.metadata
    if meta.num_rows > limits.max_rows:
        raise Refusal(413, f"{meta.num_rows} rows in one batch; the limit is {limits.max_rows}")
    # What the file says its pages decompress to, checked before a single page is decompressed
    # (a Parquet "zip bomb" is a column of one value repeated, which zstd shrinks ~10,000 times).
    declared = sum(
        meta.row_group(g).column(c).total_uncompressed_size
        for g in range(meta.num_row_groups)
        for c in range(meta.num_columns)
    )
    if declared > limits.max_decoded:
        raise Refusal(413, f"the Parquet file decompresses to {declared} bytes; the limit is {limits.max_decoded}")
    check_schema(pf.schema_arrow)
    # Dictionary encoding lets a file declare little and decode to much (one long value, many
    # references to it): decode in slices and stop once the total passes the limit.
    batches, size = [], 0
    for b in pf.iter_batches(batch_size=256):
        size += b.nbytes
        if size > limits.max_decoded:
            raise Refusal(413, f"the batch decodes to more than {limits.max_decoded} bytes; the limit is {limits.max_decoded}")
        batches.append(b)
    return _checked_table(pa.Table.from_batches(batches, schema=pf.schema_arrow), limits)


def _checked_table(table: pa.Table, limits: Limits) -> pa.Table:
    if table.num_rows > limits.max_rows:
        raise Refusal(413, f"{table.num_rows} rows in one batch; the limit is {limits.max_rows}")
    if table.nbytes > limits.max_decoded:
        raise Refusal(413, f"the batch decodes to {table.nbytes} bytes; the limit is {limits.max_decoded}")
    check_schema(table.schema)
    return table


def check_schema(schema: pa.Schema) -> None:
    """The submission's columns must be the probe's in-file columns, with the same types;
    `probe_cc` (the partition key the probe keeps in directory names) may come along."""
    names = schema.names
    if len(set(names)) != len(names):
        raise Refusal(422, "a column name appears twice")
    expected = {f.name: f for f in MEASUREMENT_SCHEMA}
    # A column added after the first probes shipped may be absent: an older probe's queue still uploads.
    missing = [n for n in expected if n not in names and n not in OPTIONAL_COLUMNS]
    extra = [n for n in names if n not in expected and n != "probe_cc"]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing columns: " + ", ".join(missing))
        if extra:
            parts.append("unexpected columns: " + ", ".join(extra))
        raise Refusal(422, "not the measurement schema: " + "; ".join(parts))
    for f in schema:
        want = pa.string() if f.name == "probe_cc" else expected[f.name].type
        if not f.type.equals(want):
            raise Refusal(422, f"not the measurement schema: column {f.name} is {f.type}, expected {want}")


# --------------------------------------------------------------------------- rows


def check_cc(value: str | None) -> str | None:
    if value is None:
        return None
    if not _CC.fullmatch(value):
        raise Refusal(400, f"probe_cc must be two upper-case letters, got {value[:20]!r}")
    return value


def check_rows(table: pa.Table, probe_cc: str | None, now: dt.datetime | None = None
               ) -> tuple[list[Valid], list[dict[str, Any]]]:
    """(the valid rows, rejections). A row is checked with the probe writer's `validate` and
    for what makes a partition: its country and its date. Rows become Python objects a slice
    at a time, and only what the store needs of a valid row is kept (memory: four batches of
    20,000 rows with body samples at once would otherwise take gigabytes)."""
    now = now or dt.datetime.now(dt.UTC)
    has_cc = "probe_cc" in table.column_names
    if not has_cc and probe_cc is None:
        raise Refusal(422, "no probe_cc: send it as a column or as ?probe_cc=XX")
    good: list[Valid] = []
    bad: list[dict[str, Any]] = []
    for i, row in _rows(table):
        mid = row.get("measurement_id")
        try:
            cc = row.pop("probe_cc", None) if has_cc else probe_cc
            if has_cc and probe_cc is not None and cc != probe_cc:
                raise ValueError(f"probe_cc {cc!r} differs from ?probe_cc={probe_cc}")
            row["probe_cc"] = cc if cc is not None else ""
            if not isinstance(mid, str) or str(_uuid(mid)) != mid.lower():
                raise ValueError(f"measurement_id {str(mid)[:60]!r} is not a UUID")
            record = row_to_record(row)
            validate(record)  # the same check as the probe's writer: role, failures, country, time zone
            start = record.measurement_start_time
            if start < EARLIEST:
                raise ValueError(f"measurement_start_time {start.isoformat()} is before {EARLIEST.date()}")
            if start > now + FUTURE_SLACK:
                raise ValueError(f"measurement_start_time {start.isoformat()} is in the future")
            good.append(Valid(i, _uuid(record.measurement_id).bytes, record.date, record.probe_cc))
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            bad.append({"row": i, "measurement_id": mid if isinstance(mid, str) else None, "reason": str(exc)[:300]})
    return good, bad


class Valid(NamedTuple):
    row: int
    key: bytes  # the measurement_id's 16 bytes
    date: str
    probe_cc: str


def _rows(table: pa.Table, slice_rows: int = 512) -> Iterator[tuple[int, dict[str, Any]]]:
    for start in range(0, table.num_rows, slice_rows):
        yield from enumerate(table.slice(start, slice_rows).to_pylist(), start)


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValueError(f"measurement_id {value[:60]!r} is not a UUID") from None


# --------------------------------------------------------------------------- the dataset


@dataclass
class Counters:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0  # rows
    refused: int = 0  # whole submissions
    busy: int = 0  # submissions turned away with 503
    batches: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Collection:
    """The collector's dataset: the ids it holds (for dedupe) and where its files go.

    One collector per directory: the store's flock is held for the collector's life (see
    collector.server), so a second collector on the same directory stops at once instead of
    keeping its own stale id set. Ids are 16 bytes each in memory (~60 MB for a million
    measurements, with the set's overhead). Files are named like a run's parts,
    ``part-collector-<start>-<n>.parquet``, and published with probe.store's atomic writer.
    """

    root: Path
    ids: set[bytes] = field(default_factory=set)
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._lock = threading.Lock()
        self.run_id = "collector-" + new_run_id()
        self._next_n = 0
        DatasetWriter(self.root, self.run_id)  # removes the temporaries a killed collector left behind
        self.load_ids()

    def load_ids(self) -> None:
        for path in iter_dataset_files(self.root):
            self.ids.update(self._file_ids(path))

    @staticmethod
    def _file_ids(path: Path) -> list[bytes]:
        try:
            column = pq.read_table(path, columns=["measurement_id"]).column("measurement_id")
        except Exception as exc:  # an unreadable file is the analyst's to look at; keep serving
            log.warning("skipping unreadable %s: %s", path, exc)
            return []
        return [_uuid(m).bytes for m in column.to_pylist() if m]

    def ingest(self, table: pa.Table, valid: list[Valid]) -> tuple[int, int]:
        """Write the valid rows not held yet, one file per partition; (accepted, duplicates).
        Returns only once the files are on disk (fsynced and renamed): a receipt never
        acknowledges more than is stored."""
        with self._lock:
            fresh: dict[bytes, Valid] = {}
            for v in valid:
                if v.key not in self.ids and v.key not in fresh:
                    fresh[v.key] = v
            duplicates = len(valid) - len(fresh)
            groups: dict[tuple[str, str], list[Valid]] = {}
            for v in fresh.values():
                groups.setdefault((v.date, v.probe_cc), []).append(v)
            # The rows are stored as they came (already checked to be the schema's columns and
            # types), in the schema's column order and with its metadata.
            for field in MEASUREMENT_SCHEMA:  # an optional column an older probe did not send: null
                if field.name not in table.column_names:
                    table = table.append_column(field, pa.nulls(table.num_rows, field.type))
            columns = table.select(list(MEASUREMENT_SCHEMA.names))
            for (date, cc), members in sorted(groups.items()):
                part = pa.Table.from_arrays(columns.take(pa.array([v.row for v in members])).columns,
                                            schema=MEASUREMENT_SCHEMA)
                try:
                    self._publish(part, date, cc)
                except (StoreError, OSError) as exc:
                    raise Refusal(503, f"the collector cannot write right now: {exc}") from None
                self.ids.update(v.key for v in members)  # stored: a resend is a duplicate
                self.counters.accepted += len(members)
            self.counters.duplicates += duplicates
            return len(fresh), duplicates

    def _publish(self, table: pa.Table, date: str, cc: str) -> Path:
        while True:
            path = partition_dir(self.root, date, cc) / f"part-{self.run_id}-{self._next_n:05d}.parquet"
            self._next_n += 1
            try:
                write_table_atomic(table, path, overwrite=False)
            except FileExistsError:
                continue
            return path


def process(collection: Collection, body: bytes, *, encoding: str | None, probe_cc: str | None,
            limits: Limits) -> dict[str, Any]:
    """One submission from body to receipt (blocking: the app runs it in a thread)."""
    probe_cc = check_cc(probe_cc)
    table = decode_table(decompress(body, encoding, limits.max_decoded), limits)
    good, bad = check_rows(table, probe_cc)
    accepted, duplicates = collection.ingest(table, good)
    collection.counters.rejected += len(bad)
    collection.counters.batches += 1
    return {
        "status": "ok" if not bad else "partial",
        "rows": table.num_rows,
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": len(bad),
        "rejections": bad[:_MAX_REASONS],
    }
