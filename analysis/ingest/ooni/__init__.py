"""OONI import (`vantage ooni import`): OONI measurements as a Vantage dataset.

read (files, JSON lines, gzip/bz2, tarballs) -> convert (dispatch by test name to one module per
test family, after ooni/data's transforms/nettests: common, web_connectivity, tunnels,
stun_reachability; fields holds the shared field readers) -> importer (dedupe, checks, batches
written through probe.dataset)."""

from __future__ import annotations

from analysis.ingest.ooni.importer import (
    ImportSummary,
    OoniImportError,
    convert,
    import_ooni,
    map_failure,
    one_line,
)

__all__ = ["ImportSummary", "OoniImportError", "convert", "import_ooni", "map_failure", "one_line"]
