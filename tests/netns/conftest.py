"""Fixtures of the network-namespace lab: one lab per session (built once, torn down by the
finalizer even when a test fails or the run is interrupted), and one pipeline run over it.

Tests here need root and `ip netns`; without them they skip and say why.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from .lab import VENV_BIN, LabRun, NetnsLab, cli_options
from .topology import TopologyLab, missing_programs, netns_unusable_reason
from .vpn_lab import CHARON, VpnLab, VpnRun

SERVER_PROGRAMS = ("ip", "nft", "ss", "sysctl", "dnsmasq", "nginx")


@functools.cache
def lab_skip_reason(programs: tuple[str, ...] = SERVER_PROGRAMS) -> str | None:
    reason = netns_unusable_reason()
    if reason:
        return reason
    missing = missing_programs(programs)
    if missing:
        return f"not installed: {', '.join(missing)} (scripts/test.sh installs them as root)"
    return None


def require_lab(programs: tuple[str, ...] = SERVER_PROGRAMS) -> None:
    reason = lab_skip_reason(programs)
    if reason:
        pytest.skip(reason)


L = TypeVar("L", bound=TopologyLab)


def entered(request: pytest.FixtureRequest, lab: L) -> Iterator[L]:
    """A fixture's lab: built on entry, torn down at the fixture's end, and by a finalizer as
    well, so a failing test or an interrupted run leaves no namespace behind
    (``yield from entered(request, SomeLab())``)."""
    request.addfinalizer(lab.close)
    with lab:
        yield lab


@pytest.fixture(scope="session")
def netns_lab(request: pytest.FixtureRequest) -> Iterator[NetnsLab]:
    require_lab()
    yield from entered(request, NetnsLab())


@pytest.fixture(scope="session")
def netns_lab_run(netns_lab: NetnsLab) -> LabRun:
    """The probe and control runs and the analysis, once per session."""
    if cli_options("run") is None:
        pytest.skip("`vantage run` is not available in this build")
    assert (VENV_BIN / "vantage").exists(), f"no vantage entry point in {VENV_BIN}"
    return netns_lab.run(step=lambda msg: print(f"[netns lab] {msg}", flush=True))


VPN_PROGRAMS = ("ip", "nft", "ss", "sysctl", "openvpn", "wireguard-go", "wg", "tor", "obfs4proxy", "swanctl",
                "unshare")


@pytest.fixture(scope="session")
def netns_vpn_lab(request: pytest.FixtureRequest) -> Iterator[VpnLab]:
    require_lab(VPN_PROGRAMS)
    if not Path(CHARON).exists():
        pytest.skip(f"strongswan's charon is not installed ({CHARON})")
    yield from entered(request, VpnLab())


@pytest.fixture(scope="session")
def netns_vpn_run(netns_vpn_lab: VpnLab) -> VpnRun:
    """Every tunnel scenario measured as probe and control, servers stopped, down phase, analysis."""
    if cli_options("run") is None:
        pytest.skip("`vantage run` is not available in this build")
    return netns_vpn_lab.run(step=lambda msg: print(f"[netns vpn lab] {msg}", flush=True))
