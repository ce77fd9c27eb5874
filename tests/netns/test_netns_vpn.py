"""Tunnel reachability against real servers in the netns lab: openvpn (UDP and TCP, tls-auth),
wireguard-go, a tor relay and an obfs4 bridge (obfs4proxy), strongswan. Each works with no
censor; the censor's drop, reset and handshake-signature DPI are called blocked with the right
method; with the servers stopped, down.
"""

from __future__ import annotations

import pytest

from .scoring import Truth, render, score
from .vpn_lab import VPN_SCENARIOS, VpnLab, VpnRun

pytestmark = pytest.mark.netns


def test_every_tunnel_scenario_gets_the_right_verdict_and_method(netns_vpn_lab: VpnLab, netns_vpn_run: VpnRun) -> None:
    by_input = netns_vpn_lab.by_input()
    truths = [Truth(sc.name, url, sc.status, sc.layer) for url, sc in by_input.items()]
    result = score(truths, netns_vpn_run.verdicts)
    print()
    print(render(result))
    print("runtime: " + ", ".join(f"{k} {v:.1f}s" for k, v in netns_vpn_run.seconds.items()))
    assert len(result.rows) == len(VPN_SCENARIOS)
    wrong = [
        (sc.name, v.get("status"), v.get("method"), sc.status, sc.method)
        for v in netns_vpn_run.verdicts
        if (sc := by_input.get(str(v["input"]))) is not None
        and (v.get("status") != sc.status or v.get("method") != sc.method
             or (sc.status == "blocked" and v.get("layer") != "vpn"))
    ]
    assert not wrong, wrong
    assert result.precision == 1.0 and result.recall == 1.0
    # Wrong credentials: a failure string for both vantage points, never a crash.
    badkey = {url for url, sc in by_input.items() if sc.mode == "badkey"}
    assert badkey and all(v["status"] == "down" for v in netns_vpn_run.verdicts if v["input"] in badkey)


def test_every_protocol_handshake_works_without_a_censor(netns_vpn_lab: VpnLab, netns_vpn_run: VpnRun) -> None:
    """The probe's own records (not only the verdict): a real handshake with every server."""
    import glob

    import pyarrow.parquet as pq

    from probe.schema import row_to_record

    ok_inputs = {netns_vpn_lab.servers.url(sc): sc for sc in VPN_SCENARIOS if sc.mode == "ok"}  # type: ignore[union-attr]
    seen = {}
    for ds in netns_vpn_run.datasets:
        for path in glob.glob(f"{ds}/measurements/**/*.parquet", recursive=True):
            for row in pq.read_table(path).to_pylist():
                m = row_to_record(row)
                if m.input in ok_inputs:
                    seen[(m.role, ok_inputs[m.input].protocol)] = m.vpn[-1]
    for sc in ok_inputs.values():
        for role in ("probe", "control"):
            rec = seen[(role, sc.protocol)]
            assert rec.handshake_ok and rec.failure is None, (role, sc.name, rec)
            assert any(p.direction == "received" and p.size > 0 for p in rec.packets), (role, sc.name, rec.packets)
    details = {p: seen[("probe", p)].detail or "" for p in ("openvpn-udp", "wireguard", "tor", "obfs4", "ikev2")}
    assert "P_CONTROL_HARD_RESET_SERVER_V2" in details["openvpn-udp"]
    assert "handshake response" in details["wireguard"]
    assert "link protocol" in details["tor"] and "link protocol" in details["obfs4"]
    assert "SA, KE" in details["ikev2"]
