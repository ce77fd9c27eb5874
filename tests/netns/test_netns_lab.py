"""The network-namespace lab itself: isolation, teardown, and that every scenario's censor and
server behave as the ground truth says (checked with the lab's own small client, not the
probe); then the end-to-end accuracy of `vantage run` + `vantage analyze` over the lab.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import require_lab
from .lab import LabRun, NetnsLab, cli_options
from .scenarios import (
    DNS_INJECT,
    DNS_LIE,
    HOST_RESET,
    HTTP_BLOCKPAGE,
    KEYWORD_RESET,
    SCENARIOS,
    SNI_DROP,
    SNI_RESET,
    TCP_DROP,
    TCP_RESET,
    addresses,
)
from .scoring import Truth, render, score
from .servers import BLOCKPAGE_TITLE
from .topology import (
    CDN_NODE_CONTROL_SIDE,
    CDN_NODE_PROBE_SIDE,
    CONTROL_RESOLVER,
    IP,
    LAB_NET,
    PUBLIC_RESOLVER,
    ROLES,
    Topology,
    pid_alive,
    reap_stale_labs,
    stale_labs,
)

pytestmark = pytest.mark.netns
CLIENT = Path(__file__).resolve().parent / "lab_client.py"


def _client(lab: NetnsLab, role: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(lab.topo.argv(role, [sys.executable, str(CLIENT), *args]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out)  # type: ignore[no-any-return]


def test_lab_is_isolated(netns_lab: NetnsLab) -> None:
    lab_net = ipaddress.ip_network(LAB_NET)
    for role in ROLES:
        routes = netns_lab.topo.exec(role, [IP, "-4", "route", "show", "table", "all"]).stdout
        assert "default" not in routes, f"{role} has a default route:\n{routes}"
        out = netns_lab.topo.exec(role, [IP, "-j", "-4", "addr", "show"]).stdout
        for link in json.loads(out):
            for a in link.get("addr_info", []):
                addr = ipaddress.ip_address(a["local"])
                assert addr in lab_net or addr.is_loopback, f"{role} has {addr} outside the lab"
    # The control's path does not cross the censor: the internet host does not forward.
    assert netns_lab.topo.exec("internet", ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"


def test_dns_as_the_probe_and_the_control_see_it(netns_lab: NetnsLab) -> None:
    names = [sc.host for sc in SCENARIOS]
    probe = _client(netns_lab, "probe", "dns", PUBLIC_RESOLVER, "0.5", *names)
    control = _client(netns_lab, "control", "dns", CONTROL_RESOLVER, "0.5", *names)
    seen_probe = {r["name"]: r["replies"] for r in _result(probe)}
    seen_control = {r["name"]: r["replies"] for r in _result(control)}
    addr = addresses()
    for sc in SCENARIOS:
        p, c = seen_probe[sc.host], seen_control[sc.host]
        if not sc.in_dns:
            assert [r["rcode"] for r in p] == ["NXDOMAIN"] and [r["rcode"] for r in c] == ["NXDOMAIN"], sc.name
            continue
        honest = addr[sc.name]
        if sc.geo:
            assert p == [{"rcode": "NOERROR", "answers": [CDN_NODE_PROBE_SIDE]}], p
            assert c == [{"rcode": "NOERROR", "answers": [CDN_NODE_CONTROL_SIDE]}], c
            continue
        assert c == [{"rcode": "NOERROR", "answers": honest}], (sc.name, c)
        if sc.technique == DNS_LIE and sc.value == "NXDOMAIN":
            assert p == [{"rcode": "NXDOMAIN", "answers": []}], (sc.name, p)
        elif sc.technique == DNS_LIE:
            assert p == [{"rcode": "NOERROR", "answers": [sc.value]}], (sc.name, p)
        elif sc.technique == DNS_INJECT:
            # The forgery first, then the real answer: both reach the probe.
            assert p == [{"rcode": "NOERROR", "answers": [sc.value]}, {"rcode": "NOERROR", "answers": honest}], p
        else:
            assert p == [{"rcode": "NOERROR", "answers": honest}], (sc.name, p)


def _expected_probe_outcome(sc) -> tuple[int | None, str | None]:  # type: ignore[no-untyped-def]
    """(HTTP status, error kind) the probe gets when it connects to the site's real address."""
    if not sc.served or sc.server_drops:
        return None, "timeout" if sc.server_drops else "refused"
    return {
        TCP_DROP: (None, "timeout"),
        TCP_RESET: (None, "refused"),  # a RST answering the SYN is what `connection refused` is
        SNI_RESET: (None, "reset"),
        SNI_DROP: (None, "timeout"),
        HOST_RESET: (None, "reset"),
        KEYWORD_RESET: (None, "reset"),
    }.get(sc.technique, (200, None))


def test_web_as_the_probe_and_the_control_see_it(netns_lab: NetnsLab) -> None:
    addr = addresses()
    sites = [sc for sc in SCENARIOS if sc.in_dns]
    pairs = [f"{sc.url}={addr[sc.name][0]}" for sc in sites]
    control_pairs = [f"{sc.url}={addr[sc.name][-1]}" for sc in sites]
    ca = str(netns_lab.ca_bundle)
    probe = _client(netns_lab, "probe", "web", ca, "2", *pairs)
    control = _client(netns_lab, "control", "web", ca, "2", *control_pairs)
    got_probe = {r["url"]: r for r in _result(probe)}
    got_control = {r["url"]: r for r in _result(control)}
    for sc in sites:
        p, c = got_probe[sc.url], got_control[sc.url]
        status, error = _expected_probe_outcome(sc)
        assert (p["status"], p["error"]) == (status, error), (sc.name, p)
        if sc.technique == HTTP_BLOCKPAGE:
            assert p["title"] == BLOCKPAGE_TITLE, p
        elif status == 200:
            assert p["title"] == f"{sc.name} — lab site", p
        if sc.served and not sc.server_drops:
            assert c["status"] == 200 and c["title"] == f"{sc.name} — lab site", (sc.name, c)
        else:
            assert c["error"] == error, (sc.name, c)
        if sc.slow:
            assert float(p["seconds"]) >= 2.0 and c["status"] == 200, p


def test_teardown_after_an_error_kills_processes_and_deletes_namespaces() -> None:
    require_lab(("ip", "sysctl"))
    topo = Topology(prefix=f"vt{os.getpid()}x")
    with pytest.raises(RuntimeError, match="boom"):
        with topo:
            proc = topo.spawn("internet", "sleeper", ["sleep", "300"])
            assert proc.alive()
            assert Path("/etc/netns", topo.ns["probe"], "resolv.conf").exists()
            raise RuntimeError("boom")
    listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in topo.ns.values()), listed
    deadline = time.monotonic() + 5
    while pid_alive(proc.popen.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.popen.poll() is not None and not pid_alive(proc.popen.pid)
    assert not Path("/etc/netns", topo.ns["probe"]).exists()
    assert not topo.workdir.exists()


def test_end_to_end_accuracy(netns_lab_run: LabRun) -> None:
    result = netns_lab_run.score
    print()
    print(render(result))
    print("runtime: " + ", ".join(f"{k} {v:.1f}s" for k, v in netns_lab_run.seconds.items()))
    assert len(result.rows) == len(SCENARIOS)
    assert result.recall >= 0.95, render(result)
    assert result.precision >= 0.95, render(result)
    assert not result.wrong_layer, [(r.truth.name, r.status, r.layer, r.method) for r in result.wrong_layer]
    assert not result.false_blocks, [(r.truth.name, r.method) for r in result.false_blocks]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_run_lab_tears_down_when_interrupted(sig: int) -> None:
    require_lab()
    script = Path(__file__).resolve().parent / "run_lab.py"
    proc = subprocess.Popen([sys.executable, str(script), "--no-run", "--hold"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("lab up"), first
        names = first.split("namespaces ")[1].split(";")[0].split(", ")
        listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
        assert all(n in listed for n in names)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "lab torn down" in rest, rest
    listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names), listed
    assert not any(Path("/etc/netns", n).exists() for n in names)


def test_dns_consistency_with_the_injection_check(netns_lab: NetnsLab) -> None:
    """DNS alone: the lies and the injection are blocked/dns; everything the censor does past
    DNS is invisible here (ok); the geo-DNS site is consistent through the lab's ASN data."""
    if cli_options("run") is None:
        pytest.skip("`vantage run` is not available in this build")
    verdicts = netns_lab.run_dns_consistency(step=lambda m: print(f"[netns lab] {m}", flush=True))
    truths = [
        Truth(sc.name, sc.url, *(("blocked", "dns") if sc.technique in (DNS_LIE, DNS_INJECT)
                                 else ("down", None) if not sc.in_dns else ("ok", None)))
        for sc in SCENARIOS
    ]
    result = score(truths, verdicts)
    print()
    print(render(result))
    by_input = {v["input"]: v for v in verdicts}
    assert by_input[next(sc.url for sc in SCENARIOS if sc.technique == DNS_INJECT)]["method"] == "dns.injected"
    assert result.recall == 1.0 and result.precision == 1.0 and not result.wrong_layer, render(result)
    assert result.status_agreement == len(SCENARIOS), render(result)


def test_stale_labs_of_dead_processes_are_reaped_and_live_ones_kept() -> None:
    require_lab(("ip",))
    dead = subprocess.Popen(["true"])  # its pid is free once it exits: a "killed" lab process
    dead.wait()
    stale, live = f"vt{dead.pid}z-probe", f"vt{os.getpid()}z-probe"
    for name in (stale, live):
        subprocess.run([IP, "netns", "add", name], check=True)
    try:
        assert stale in stale_labs() and live not in stale_labs()
        assert reap_stale_labs(only=[stale, live]) == [stale]
        listed = subprocess.run([IP, "netns", "list"], capture_output=True, text=True).stdout
        assert stale not in listed and live in listed
    finally:
        for name in (stale, live):
            subprocess.run([IP, "netns", "del", name], capture_output=True)
