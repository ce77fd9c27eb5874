"""Past runs of a results directory, from the run manifests (``<output>/runs/``) and the records.

A run's id, start, duration, inputs measured, ok and failed (as the run's own summary counted
them: the experiment's ``succeeded``), and whether its files were uploaded (the collector's
acknowledgements beside the dataset, see probe.budget.uploaded_files). Files are read one at a
time, so memory stays that of one file.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from probe.budget import uploaded_files
from probe.dataset import MANIFEST_DIR, MEASUREMENTS_DIR, iter_dataset_files, read_manifest
from probe.schema import OBSERVATION_COLUMNS

_PART_RE = re.compile(r"^part-(?P<run_id>.+)-(?P<n>\d+)\.parquet$")


@dataclass
class InputOutcome:
    input: str
    experiment: str
    category: str | None
    ok: bool
    failure: str | None  # the measurement's failure, else the first failed step's
    started: str


@dataclass
class RunInfo:
    run_id: str
    start: str | None = None  # ISO 8601 UTC of the first measurement
    duration_s: float | None = None  # first measurement's start to the last one's end
    inputs: int = 0  # probe rows
    ok: int = 0
    failed: int = 0
    controls: int = 0
    files: int = 0
    uploaded: str = "no"  # "yes" | "partly (k/n)" | "no" | "-" (no files)
    options: dict[str, Any] = field(default_factory=dict)
    outcomes: list[InputOutcome] = field(default_factory=list)

    def as_dict(self, with_outcomes: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("outcomes", "options")}
        d["lists"] = self.options.get("lists", [])
        d["experiment"] = self.options.get("experiment")
        if with_outcomes:
            d["outcomes"] = [o.__dict__ for o in self.outcomes]
        return d


def run_ids(output: Path | str) -> list[str]:
    """Every run with a manifest or a file, oldest first (run ids sort by start time)."""
    output = Path(output)
    ids = {p.stem for p in (output / MANIFEST_DIR).glob("*.json")}
    ids |= {m["run_id"] for p in iter_dataset_files(output) if (m := _PART_RE.match(p.name))}
    return sorted(ids)


def _first_failure(row: dict[str, Any]) -> str | None:
    if row.get("failure"):
        return str(row["failure"])
    for kind in OBSERVATION_COLUMNS:
        for obs in row.get(kind) or ():
            if obs.get("failure"):
                return f"{kind}: {obs['failure']}"
    return None


def _succeeded(row: dict[str, Any], experiments: dict[str, Any]) -> bool:
    """The experiment's own judgement (what the run's summary counted), from the stored row."""
    from probe.experiments import registry
    from probe.schema import row_to_record

    name = row.get("experiment") or ""
    if name not in experiments:
        try:
            experiments[name] = registry.get(name)
        except Exception:
            experiments[name] = None
    exp = experiments[name]
    if exp is None:
        return _first_failure(row) is None
    try:
        return bool(exp.succeeded(row_to_record(row)))
    except Exception:
        return _first_failure(row) is None


def run_info(output: Path | str, run_id: str, *, outcomes: bool = False,
             acked: set[str] | None = None) -> RunInfo:
    output = Path(output)
    info = RunInfo(run_id, options=read_manifest(output, run_id) or {})
    acked = uploaded_files(output) if acked is None else acked
    files = [p for p in iter_dataset_files(output) if (m := _PART_RE.match(p.name)) and m["run_id"] == run_id]
    info.files = len(files)
    first: dt.datetime | None = None
    last: dt.datetime | None = None
    experiments: dict[str, Any] = {}
    n_acked = 0
    for path in files:
        if path.relative_to(output / MEASUREMENTS_DIR).as_posix() in acked:
            n_acked += 1
        try:
            rows = pq.read_table(path, partitioning=None).to_pylist()
        except Exception:  # an unreadable file is skipped here (`vantage analyze` names it)
            continue
        for row in rows:
            start = row["measurement_start_time"]
            if start is not None:
                start = start.astimezone(dt.UTC)
                end = start + dt.timedelta(seconds=row.get("runtime_s") or 0)
                first = start if first is None or start < first else first
                last = end if last is None or end > last else last
            if row.get("role") != "probe":
                info.controls += 1
                continue
            info.inputs += 1
            ok = _succeeded(row, experiments)
            info.ok += ok
            info.failed += not ok
            if outcomes:
                info.outcomes.append(InputOutcome(row["input"], row["experiment"], row.get("input_category"), ok,
                                                  None if ok else _first_failure(row),
                                                  start.isoformat(timespec="seconds") if start else ""))
    if first is not None and last is not None:
        info.start = first.isoformat(timespec="seconds")
        info.duration_s = round((last - first).total_seconds(), 1)
    info.uploaded = "-" if not files else "yes" if n_acked == len(files) else (
        f"partly ({n_acked}/{len(files)})" if n_acked else "no")
    info.outcomes.sort(key=lambda o: o.started)
    return info


def list_runs(output: Path | str) -> list[RunInfo]:
    acked = uploaded_files(output)
    return [run_info(output, rid, acked=acked) for rid in run_ids(output)]
