"""path_trace rows in the analysis: never a verdict of their own (a follow-up, not a
reachability measurement), and the censor's hop shows in the evidence of the blocked verdict of
the same input and network; another network's trace does not."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from analysis.db import open_datasets
from analysis.report.evidence import AsnNames, evidence_table, load_evidence
from analysis.verdicts import compute_verdicts
from probe.dataset import write_records
from probe.schema import Measurement, PathHop, PathTrace, new_uuid7
from tests.analysis.test_verdicts_cli import T0, web


def trace(m: Measurement, **kw: object) -> Measurement:
    tr = PathTrace(t0=0.0, t=3.0, failure=None, protocol="http", ip="93.184.216.34", port=80, hostname="a.example",
                   hops=[PathHop(1, "10.0.1.1", "time_exceeded"), PathHop(2, "10.0.2.1", "rst")],
                   interference_ttl=2, interference="rst", hop_before="10.0.1.1", basis="icmp")
    return dataclasses.replace(m, measurement_id=new_uuid7(), experiment="path_trace", dns=[], tcp=[], http=[],
                               traces=[tr], measurement_start_time=T0 + dt.timedelta(minutes=10), **kw)


def test_the_censors_hop_shows_in_the_blocked_verdicts_evidence(tmp_path: Path) -> None:
    probe = web("probe", tcp_failure="connection_reset")
    control = web("control", control_for=probe.measurement_id)
    same_net = trace(probe)
    other_net = trace(probe, probe_asn="AS1")
    other_net.traces[0].interference_ttl = 7
    write_records(tmp_path / "ds", "r1", [probe, control, same_net, other_net])
    con = open_datasets([tmp_path / "ds"])
    verdicts = compute_verdicts(con)
    assert verdicts.column("measurement_id").to_pylist() == [probe.measurement_id]
    assert verdicts.column("status").to_pylist() == ["blocked"]
    ev = load_evidence(con, [probe.measurement_id])[probe.measurement_id]
    assert [t["interference_ttl"] for t in ev.probe["path_trace"]] == [2]
    html = evidence_table(ev, AsnNames(None), None)
    assert "Censor on the path" in html and "censor at hop 2 (after 10.0.1.1), rst" in html


def test_without_traces_the_evidence_has_no_such_row(tmp_path: Path) -> None:
    probe = web("probe", tcp_failure="connection_reset")
    write_records(tmp_path / "ds", "r1", [probe, web("control", control_for=probe.measurement_id)])
    con = open_datasets([tmp_path / "ds"])
    ev = load_evidence(con, [probe.measurement_id])[probe.measurement_id]
    assert "path_trace" not in ev.probe
    assert "Censor on the path" not in evidence_table(ev, AsnNames(None), None)
