"""OONI import: each DNS answer's network (asn, as_org_name), and the cases where OONI says
null (the test helper failed or gave nothing; the probe cancelled its own step) imported as
what they are, so the analyzer says no_control instead of blocked."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from analysis.ingest.ooni import import_ooni
from analysis.ingest.ooni.convert import convert, measurement_id
from analysis.ingest.ooni.fields import BodyStats, as_asn, dns_answers
from tests.support.paths import SHARED_DATA
from vantage.cli import main

OONI = SHARED_DATA / "ooni"
NETEM = OONI / "netem" / "web_connectivity_netem_simulated.jsonl"

# What a probe writes into `control` before the helper answers (v0.4 / Measurement Kit):
# defaults, not an answer.
DEFAULT_CONTROL = {
    "tcp_connect": {},
    "http_request": {"body_length": -1, "failure": None, "title": "", "headers": {}, "status_code": -1},
    "dns": {"failure": None, "addrs": []},
}


def netem(n: int) -> dict[str, Any]:
    with open(NETEM, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if i == n:
                return json.loads(line)  # type: ignore[no-any-return]
    raise AssertionError(n)


def verdicts(tmp_path: Path, docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Import docs with the CLI, run `vantage analyze`, return verdicts by measurement_id."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs))
    runner = CliRunner()
    result = runner.invoke(main, ["ooni", "import", str(src), "-o", str(tmp_path / "ds"), "-q"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "verdicts.parquet"
    result = runner.invoke(main, ["analyze", str(tmp_path / "ds"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    return {v["measurement_id"]: v for v in pq.read_table(out).to_pylist()}


# --------------------------------------------------------------------------- answer networks


@pytest.mark.parametrize(
    ("value", "expected"),
    [(13335, "AS13335"), ("AS13335", "AS13335"), ("13335", "AS13335"), ("as15133", "AS15133"),
     (0, None), ("AS0", None), (None, None), (True, None), (-5, None), (2**40, None), ("Cloudflare", None),
     ("", None), ({"asn": 1}, None)],
)
def test_answer_asn_is_normalised_and_zero_is_unknown(value: Any, expected: str | None) -> None:
    assert as_asn(value) == expected


def test_probe_and_control_answers_carry_their_network() -> None:
    doc = netem(40)  # successWithHTTP: answers with asn 15133 "Edgecast Inc.", helper ip_info
    probe, control = convert(doc, "", BodyStats()).records
    answers = [a for q in probe.dns for a in q.answers]
    assert answers and {(a.value, a.asn, a.as_org_name) for a in answers} == {("93.184.216.34", "AS15133", "Edgecast Inc.")}
    (ctrl,) = [a for q in control.dns for a in q.answers]
    # The helper's ip_info gives the AS; its name comes from the probe's answer in the same AS.
    assert (ctrl.value, ctrl.asn, ctrl.as_org_name) == ("93.184.216.34", "AS15133", "Edgecast Inc.")


def test_answer_networks_survive_the_dataset(tmp_path: Path) -> None:
    src = tmp_path / "m.jsonl"
    src.write_text(json.dumps(netem(40)) + "\n")
    import_ooni([src], tmp_path / "ds")
    table = pq.read_table(next((tmp_path / "ds").rglob("*.parquet"))).to_pylist()
    got = {(r["role"], a["asn"], a["as_org_name"]) for r in table for q in r["dns"] for a in q["answers"]}
    assert ("probe", "AS15133", "Edgecast Inc.") in got and ("control", "AS15133", "Edgecast Inc.") in got


def test_answers_without_a_network_stay_null() -> None:
    """Trap: an answer OONI gave no ASN for (or ASN 0, OONI's unknown) has none invented."""
    got = dns_answers([{"answer_type": "A", "ipv4": "10.10.34.35", "asn": 0, "as_org_name": ""},
                       {"answer_type": "A", "ipv4": "10.10.34.36"},
                       {"answer_type": "CNAME", "hostname": "x.example.", "asn": 0}])
    assert [(a.asn, a.as_org_name) for a in got] == [(None, None)] * 3
    doc = netem(40)
    del doc["test_keys"]["control"]["ip_info"]
    _probe, control = convert(doc, "", BodyStats()).records
    assert all(a.asn is None for q in control.dns for a in q.answers)


# --------------------------------------------------------------------------- where OONI says null


def _with_control(doc: dict[str, Any], control: Any, failure: str | None) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["test_keys"]["control"] = control
    out["test_keys"]["control_failure"] = failure
    return out


def test_failed_or_empty_helper_is_no_control_never_blocked(tmp_path: Path) -> None:
    ok_http = netem(40)  # successWithHTTP, plain HTTP: without a control nothing vouches for it
    bogon = netem(12)  # dnsHijackingToLocalhostWithHTTP
    nxdomain = netem(11)  # dnsBlockingNXDOMAIN; the probe still fetched the page over HTTPS (DoH)
    cases = {
        # the helper call failed; the probe left its defaults in `control`
        "failed_defaults": _with_control(ok_http, DEFAULT_CONTROL, "connection_reset"),
        # the helper call failed with a Go error string
        "failed_go_error": _with_control(ok_http, DEFAULT_CONTROL, "read tcp: i/o timeout"),
        "failed_null": _with_control(bogon, None, "generic_timeout_error"),
        "failed_null_https": _with_control(nxdomain, None, "connection_reset"),
        # no failure recorded, but nothing answered either
        "empty": _with_control(ok_http, {}, None),
        "defaults_only": _with_control(ok_http, DEFAULT_CONTROL, None),
        # traps: the same measurements with the helper's real answer
        "trap_ok": ok_http,
        "trap_blocked": bogon,
    }
    for name, doc in cases.items():
        doc["annotations"] = {**doc.get("annotations", {}), "case": name}  # distinct measurements
    got = verdicts(tmp_path, list(cases.values()))
    status = {name: got[measurement_id(doc)]["status"] for name, doc in cases.items()}
    for name in ("failed_defaults", "failed_go_error", "failed_null", "empty", "defaults_only"):
        assert status[name] == "no_control", (name, status)
    # A page that arrived over validated HTTPS needs no control (OONI agrees: scenario 7).
    assert status["failed_null_https"] == "ok"
    assert status["trap_ok"] == "ok"
    assert (status["trap_blocked"], got[measurement_id(cases["trap_blocked"])]["layer"]) == ("blocked", "dns")
    # No control row was written for the helper that did not answer, and each was counted.
    rows = [r for p in (tmp_path / "ds").rglob("*.parquet") for r in pq.read_table(p).to_pylist()]
    controls = {r["control_for"] for r in rows if r["role"] == "control"}
    assert controls == {measurement_id(cases["trap_ok"]), measurement_id(cases["trap_blocked"])}


def test_a_helper_that_answered_a_failure_is_still_a_control() -> None:
    """Trap for the rule above: the helper's own DNS failure (the site is down) is an answer."""
    doc = netem(48)  # websiteDownNXDOMAIN: helper says dns_name_error, no addresses
    records = convert(doc, "", BodyStats()).records
    assert [r.role for r in records] == ["probe", "control"]
    assert {q.failure for q in records[1].dns} == {"dns_nxdomain"}


def test_steps_the_probe_cancelled_itself_are_interrupted() -> None:
    doc = netem(40)
    tk = doc["test_keys"]
    tk["tcp_connect"][0]["status"] = {"failure": "context canceled", "success": False}
    tk["tcp_connect"][1]["status"] = {"failure": "interrupted", "success": False}
    tk["tls_handshakes"][0]["failure"] = "unknown_failure: context canceled"
    tk["requests"][0]["failure"] = "interrupted"
    tk["queries"][0]["failure"] = "lookup www.example.com: operation was canceled"
    probe = convert(doc, "", BodyStats()).records[0]
    assert {c.failure for c in probe.tcp} == {"interrupted"}
    assert {t.failure for t in probe.tls} == {"interrupted"}
    assert probe.http[0].failure == "interrupted"
    assert probe.dns[0].failure == "interrupted"
    # trap: a timeout the network caused stays a network failure
    tk["tcp_connect"][0]["status"] = {"failure": "generic_timeout_error", "success": False}
    assert convert(doc, "", BodyStats()).records[0].tcp[0].failure == "generic_timeout"
