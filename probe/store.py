"""Deprecated name of :mod:`probe.dataset` (the one module that owns a dataset on disk); kept so
code written against ``probe.store`` still imports. New code imports ``probe.dataset``."""

from __future__ import annotations

from probe.dataset import (
    MEASUREMENTS_DIR,
    DatasetWriter,
    RunLocked,
    StoreError,
    iter_dataset_files,
    measured_inputs,
    partition_dir,
    run_files,
    run_lock,
    write_records,
    write_table_atomic,
)

__all__ = [
    "MEASUREMENTS_DIR",
    "DatasetWriter",
    "RunLocked",
    "StoreError",
    "iter_dataset_files",
    "measured_inputs",
    "partition_dir",
    "run_files",
    "run_lock",
    "write_records",
    "write_table_atomic",
]
