"""Vantage's command: the CLI that joins the probe and the analyzer, the demo pipeline and the
loopback lab it runs against. `probe/` and `analysis/` never import this package."""

from __future__ import annotations

from probe import __version__

__all__ = ["__version__"]
