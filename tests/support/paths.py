"""Where things are, for tests wherever they sit in tests/: the repository, its docs, and the
public test data in ../shared/data (read in place, never copied into the project)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
SHARED_DATA = REPO.parent / "shared" / "data"
OONI_DATA = SHARED_DATA / "ooni"
