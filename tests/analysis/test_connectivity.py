"""Connectivity before censorship: a vantage point without a network is never reported as
censorship (analysis/connectivity.py), while a heavily censored network that is online is."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any

from test_verdicts import SITE_IP, T0, verdicts, web

from analysis.connectivity import CONNECTIVITY_SCHEMA, LOST_SHARE, MIN_INPUTS, connectivity_table
from analysis.db import open_datasets
from probe.dataset import write_records
from probe.schema import Measurement, TcpConnect, new_uuid7


def anchor(i: int, *, failure: str | None, role: str = "probe", at: dt.datetime = T0) -> Measurement:
    """A tcp:// anchor measurement (a root server's port 53, say)."""
    ip = f"198.41.0.{i + 1}"
    return Measurement(
        measurement_id=new_uuid7(), run_id=f"run-{role}", experiment="anchors", experiment_version="0.1.0",
        input=f"tcp://{ip}:53", measurement_start_time=at + dt.timedelta(seconds=i), role=role, probe_cc="IR",
        probe_asn="AS197207" if role == "probe" else "AS64500",
        tcp=[TcpConnect(t0=0.0, t=0.1, failure=failure, ip=ip, port=53)],
    )


def url(i: int) -> str:
    return f"http://site{i}.example/"


def site(i: int, role: str = "probe", **kw: Any) -> Measurement:
    kw.setdefault("ips", [f"93.184.216.{i % 250 + 1}"])
    at = T0 + dt.timedelta(seconds=i) + (dt.timedelta(minutes=5) if role == "control" else dt.timedelta(0))
    return web(role, url=url(i), at=at, **kw)


def controls(n: int, **kw: Any) -> list[Measurement]:
    """A control run beside the probe, every input fine."""
    return [site(i, "control", **kw) for i in range(n)]


def tally(out: dict[str, dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((v["status"], v["method"]) for v in out.values())


def table(tmp_path: Path, records: list[Measurement]) -> list[dict[str, Any]]:
    root = tmp_path / "conn"
    write_records(root, "run-test", records)
    con = open_datasets([root])
    try:
        t = connectivity_table(con)
    finally:
        con.close()
    assert t.schema.equals(CONNECTIVITY_SCHEMA)
    return t.to_pylist()


def dark_run(n: int = 40) -> list[Measurement]:
    # A network with no route out: anchors unreachable, the resolver never answers, connects
    # to cached addresses have no route; two names fail with NXDOMAIN (a captive resolver).
    rows = [anchor(i, failure="network_unreachable") for i in range(5)]
    for i in range(n):
        if i < 2:
            rows.append(site(i, dns_failure="dns_nxdomain"))
        elif i % 2:
            rows.append(site(i, dns_failure="generic_timeout"))
        else:
            rows.append(site(i, tcp_failure="network_unreachable"))
    return rows


def test_dark_run_is_no_connectivity_never_blocked(tmp_path: Path) -> None:
    records = dark_run() + controls(40) + [anchor(i, failure=None, role="control") for i in range(5)]
    out = verdicts(tmp_path, records)
    assert len(out) == 45
    assert tally(out) == Counter({("no_connectivity", "connectivity.lost"): 45})
    rows = {r["role"]: r for r in table(tmp_path, records)}
    p, c = rows["probe"], rows["control"]
    assert (p["anchors_n"], p["anchors_ok"], p["inputs_n"], p["network_failed_n"]) == (5, 0, 40, 38)
    assert p["connected"] is False and "anchors" in p["reason"]
    assert c["connected"] is True and (c["anchors_ok"], c["network_failed_n"]) == (5, 0)
    assert p["hour"] == T0.replace(minute=0)


def test_same_dark_run_without_controls_or_anchors_is_still_not_blocked(tmp_path: Path) -> None:
    # No anchors: the share of network-level failures alone (95 % of 40 inputs) decides.
    records = [r for r in dark_run() if r.experiment != "anchors"] + controls(40)
    assert tally(verdicts(tmp_path, records)) == Counter({("no_connectivity", "connectivity.lost"): 40})


def test_dns_failing_for_everything_while_controls_resolve(tmp_path: Path) -> None:
    # An unreachable system resolver: every lookup fails without an answer about the name.
    records = [site(i, dns_failure="dns_servfail") for i in range(20)] + controls(20)
    assert tally(verdicts(tmp_path, records)) == Counter({("no_connectivity", "connectivity.lost"): 20})
    # Trap: a censor answering NXDOMAIN for every name of a (short) list is an answer, not a dead
    # network: blocked.
    records = [site(i, dns_failure="dns_nxdomain") for i in range(20)] + controls(20)
    assert tally(verdicts(tmp_path / "nx", records)) == Counter({("blocked", "dns.nxdomain_ctrl_ok"): 20})


def test_a_measurement_that_reached_its_target_in_a_dark_hour_is_judged(tmp_path: Path) -> None:
    records = dark_run() + controls(41) + [site(40)]
    out = verdicts(tmp_path, records)
    assert tally(out)[("ok", "ok.http_matches")] == 1
    assert tally(out)[("no_connectivity", "connectivity.lost")] == 45


def test_heavily_censored_network_online_is_blocked(tmp_path: Path) -> None:
    # Trap: 60 % of the list blocked by DNS lies and resets, anchors fine: censorship.
    probe = [anchor(i, failure=None) for i in range(5)]
    for i in range(50):
        if i < 15:
            probe.append(site(i, ips=["10.10.34.35"], tcp_failure="connection_refused"))
        elif i < 30:
            probe.append(site(i, tcp_failure="connection_reset"))
        else:
            probe.append(site(i))
    out = verdicts(tmp_path, probe + controls(50))
    t = tally(out)
    assert t[("blocked", "dns.bogon")] == 15 and t[("blocked", "tcp.reset")] == 15
    assert sum(n for (s, _), n in t.items() if s == "no_connectivity") == 0
    (row,) = [r for r in table(tmp_path, probe + controls(50)) if r["role"] == "probe"]
    assert row["connected"] is True and row["reason"] == "anchors answered"


def test_censor_dropping_most_of_a_list_without_anchors_is_blocked(tmp_path: Path) -> None:
    # Trap: no anchors, 60 % of the inputs time out (a censor dropping packets): below the share
    # a dead link gives, so blocked, not no_connectivity.
    n = 50
    probe = [site(i, tcp_failure="generic_timeout") if i < 30 else site(i) for i in range(n)]
    assert 30 / n < LOST_SHARE
    t = tally(verdicts(tmp_path, probe + controls(n)))
    assert t == Counter({("blocked", "tcp.timeout"): 30, ("ok", "ok.http_matches"): 20})


def test_single_input_run_that_fails_is_judged_normally(tmp_path: Path) -> None:
    # One input, no anchors: too little evidence to call the network down (MIN_INPUTS).
    assert MIN_INPUTS > 1
    p = site(0, tcp_failure="generic_timeout")
    out = verdicts(tmp_path, [p, *controls(1)])
    assert tally(out) == Counter({("blocked", "tcp.timeout"): 1})
    (row,) = [r for r in table(tmp_path, [p, *controls(1)]) if r["role"] == "probe"]
    assert row["connected"] is True and "too little evidence" in row["reason"]


def test_one_anchor_down_is_not_the_network(tmp_path: Path) -> None:
    # A censor may block one anchor (a public resolver, say); the others answer.
    probe = [anchor(0, failure="connection_reset"), anchor(1, failure=None), anchor(2, failure=None),
             site(0, tcp_failure="connection_reset")]
    assert tally(verdicts(tmp_path, probe + controls(1)))[("blocked", "tcp.reset")] == 1


def test_control_without_connectivity_vouches_for_nothing(tmp_path: Path) -> None:
    # The probe's resets would be "blocked" against a working control; the control run was dark.
    probe = [site(i, tcp_failure="connection_reset") for i in range(12)]
    dark = controls(12, tcp_failure="network_unreachable")
    t = tally(verdicts(tmp_path, probe + dark))
    assert t == Counter({("no_control", "no_control.control_offline"): 12})


def test_hours_are_judged_apart(tmp_path: Path) -> None:
    # The network came back an hour later: the later hour is judged target by target.
    later = T0 + dt.timedelta(hours=1)
    back = [web(url=url(i), at=later + dt.timedelta(seconds=i), tcp_failure="connection_reset" if i < 3 else None,
                ips=[SITE_IP]) for i in range(12)]
    ctl = [web("control", url=url(i), at=later + dt.timedelta(minutes=5), ips=[SITE_IP]) for i in range(12)]
    out = verdicts(tmp_path, dark_run(12) + controls(12) + back + ctl)
    t = tally(out)
    assert t[("no_connectivity", "connectivity.lost")] == 17
    assert t[("blocked", "tcp.reset")] == 3 and t[("ok", "ok.http_matches")] == 9


def test_sites_down_everywhere_are_down_not_a_dead_network(tmp_path: Path) -> None:
    # Trap: every input this vantage point measured times out, and so it does from the controls:
    # the sites are down (a list of dead sites), the probe's network is not shown to be.
    probe = [site(i, tcp_failure="generic_timeout") for i in range(12)]
    t = tally(verdicts(tmp_path, probe + controls(12, tcp_failure="generic_timeout")))
    assert t == Counter({("down", "down.both_failed"): 12})


def test_timeouts_beside_a_missing_aaaa_record_are_a_silent_network(tmp_path: Path) -> None:
    """Mostly dark (the netns blackout lab): the local resolver answers (A records, and "no
    answer" for AAAA), every connect times out while the controls connect, the anchors are
    down. The AAAA query's dns_no_answer is an answer, not a failed step: no_connectivity."""
    from probe.schema import DnsQuery

    def with_aaaa(m: Measurement) -> Measurement:
        host = m.input.split("://", 1)[1].split("/", 1)[0]
        m.dns.append(DnsQuery(t0=0.0, t=0.05, failure="dns_no_answer", resolver="system", engine="system",
                              query_type="AAAA", hostname=host, rcode="NOERROR"))
        return m

    n = 20
    probe = [anchor(i, failure="generic_timeout") for i in range(3)]
    probe += [with_aaaa(site(i, tcp_failure="generic_timeout")) for i in range(n)]
    others = controls(n) + [anchor(i, failure=None, role="control") for i in range(3)]
    assert tally(verdicts(tmp_path, probe + others)) == Counter({("no_connectivity", "connectivity.lost"): n + 3})
    # Trap: the same names answered NXDOMAIN (a censor's answer, no timeout at all) are blocked,
    # not a silent network, even with every anchor down.
    probe = [anchor(i, failure="generic_timeout") for i in range(3)]
    probe += [with_aaaa(site(i, dns_failure="dns_nxdomain")) for i in range(n)]
    t = tally(verdicts(tmp_path / "nx", probe + others))
    assert t[("blocked", "dns.nxdomain_ctrl_ok")] == n, t
