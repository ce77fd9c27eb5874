"""The collector: receives probes' measurement batches over HTTP(S), anonymously, and writes them
once each into one hive-partitioned dataset that analysts read directly (docs/collector.md).

Imports from the project only probe.schema (the contract and its `validate`) and probe.store
(atomic partitioned writes)."""

from __future__ import annotations

from collector.app import build_app
from collector.ingest import Collection, Limits, Refusal, process

__all__ = ["Collection", "Limits", "Refusal", "build_app", "process"]
