"""Fixtures for the experiment, runner and `vantage run` tests: loopback farms (loopfarm.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from loopfarm import Farm

from probe.experiments.base import Vantage


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """One site of each kind, with names served by the farm's honest resolver."""
    workdir = tmp_path_factory.mktemp("farm")
    with Farm(["ok", "https", "blackhole", "refused", "redirect", "echo"], workdir=workdir) as f:
        yield f


@pytest.fixture
def vantage() -> Vantage:
    return Vantage(role="probe", probe_cc="ZZ", probe_asn="AS64496", probe_network="lab")


@pytest.fixture
def output(tmp_path: Path) -> Path:
    return tmp_path / "results"
