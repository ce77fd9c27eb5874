"""Censor location by TTL in the path lab: `vantage locate` in the probe namespace must name the
censor's hop (its TTL and the address of the router before it) for censors two and three hops
away, at the DNS, TLS and HTTP layers, and locate nothing for uncensored names and down targets.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .conftest import entered, require_lab
from .pathloc_lab import SCENARIOS, Located, PathLab

pytestmark = [pytest.mark.netns, pytest.mark.slow]


@pytest.fixture(scope="module")
def path_lab(request: pytest.FixtureRequest) -> Iterator[PathLab]:
    require_lab(("ip", "ss", "sysctl", "dnsmasq"))
    yield from entered(request, PathLab())


def _score(results: list[Located]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives): a located hop is a true positive only
    when it is the censor's TTL and names the right router before it; a wrong hop counts as a
    false positive and a false negative."""
    tp = sum(1 for r in results if r.scenario.censor_hop and r.correct)
    fp = sum(1 for r in results if r.interference_ttl is not None and not r.correct)
    fn = sum(1 for r in results if r.scenario.censor_hop and not r.correct)
    return tp, fp, fn


def test_locate_names_the_censors_hop(path_lab: PathLab) -> None:
    results = [path_lab.locate(sc) for sc in SCENARIOS]
    print()
    print(f"{'scenario':22} {'layer':5} {'truth ttl':>9} {'truth before':>13} {'located':>7} "
          f"{'hop before':>11} {'basis':>17} {'failure':18} ok  hops")
    for r in results:
        sc = r.scenario
        hops = " ".join(f"{h['ttl']}:{h['responder'] or '*'}:{h['kind']}" for h in r.hops)
        print(f"{sc.name:22} {sc.layer:5} {sc.censor_hop or '-'!s:>9} {sc.hop_before or '-':>13} "
              f"{r.interference_ttl or '-'!s:>7} {r.hop_before or '-':>11} {r.basis or '-':>17} "
              f"{r.failure or '-':18} {'yes' if r.correct else 'NO ':3} {hops}")
    tp, fp, fn = _score(results)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    print(f"located {tp} of {tp + fn} censors; precision {precision:.2f} recall {recall:.2f}")
    assert fp == 0 and fn == 0, [r.scenario.name for r in results if not r.correct]
    assert precision == 1.0 and recall == 1.0
    # The down traps failed at the handshake or drew the target host's unreachable: no trace
    # of them may look like a censor.
    down = {r.scenario.name: r for r in results if r.scenario.name.endswith("-down")}
    assert down["tls-down"].failure == "connection_refused"
    assert any(h["kind"] == "unreachable" for h in down["dns-down"].hops)
