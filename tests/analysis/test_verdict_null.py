"""OONI's null cases: where OONI says `blocking: null` Vantage never says `blocked`. The control
failed (or observed nothing): `no_control`. The probe cancelled its own step (failure
`interrupted`): not blocked. Each beside the trap that must stay blocked."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_verdicts import BLOCKPAGE, SITE_IP, control_of, expect, judge, verdicts, web

from probe.schema import TcpConnect

# The probe-side failures that would be blocking against a working control.
BLOCKING_LOOKS = {
    "tcp.reset": {"tcp_failure": "connection_reset"},
    "dns.nxdomain_ctrl_ok": {"dns_failure": "dns_nxdomain"},
    "http.failure": {"http_failure": "connection_reset"},
    "http.status_diff": {"status": 403, "body": "forbidden", "title": "Forbidden"},
    "dns.inconsistent": {"ips": ["130.192.182.17"], "tcp_failure": "connection_refused"},
}


@pytest.mark.parametrize("looks_like", sorted(BLOCKING_LOOKS))
def test_failed_control_is_no_control_never_blocked(tmp_path: Path, looks_like: str) -> None:
    p = web(**BLOCKING_LOOKS[looks_like])  # type: ignore[arg-type]
    # The trap first: against a working control this is blocking.
    assert judge(tmp_path / "ok", p, control_of(p))["method"] == looks_like
    failed = web("control", control_for=p.measurement_id, failure="unknown_failure:helper_error")
    expect(judge(tmp_path / "failed", p, failed), "no_control", None, "no_control.control_failed")


def test_control_that_observed_nothing_is_no_control(tmp_path: Path) -> None:
    # OONI's helper answered with an empty control (control_failure set, no observations).
    p = web(tcp_failure="connection_reset")
    empty = web("control", control_for=p.measurement_id)
    empty.dns, empty.tcp, empty.tls, empty.http = [], [], [], []
    expect(judge(tmp_path, p, empty), "no_control", None, "no_control.control_failed")


def test_failed_control_and_validated_https_is_ok(tmp_path: Path) -> None:
    p = web(url="https://site.example/")
    failed = web("control", url=p.input, control_for=p.measurement_id, failure="unknown_failure:helper_error")
    expect(judge(tmp_path, p, failed), "ok", None, "ok.https_no_control")


def test_failed_control_and_a_blockpage_still_confirms(tmp_path: Path) -> None:
    # A fingerprint needs no control.
    p = web(body=BLOCKPAGE, title="Blocked")
    failed = web("control", control_for=p.measurement_id, failure="unknown_failure:helper_error")
    v = judge(tmp_path, p, failed)
    assert (v["status"], v["method"], v["confirmed"]) == ("blocked", "http.blockpage:test.blockpage", True)


def test_probe_cancelled_its_fetch_is_not_blocked(tmp_path: Path) -> None:
    p = web(http_failure="interrupted")
    expect(judge(tmp_path, p, control_of(p)), "probe_failure", None, "probe_failure.interrupted")
    # Trap: a real failure of the fetch against a working control is blocking.
    p = web(http_failure="connection_reset")
    expect(judge(tmp_path / "trap", p, control_of(p)), "blocked", "http-failure", "http.failure")


def test_probe_cancelled_its_lookup_is_not_blocked(tmp_path: Path) -> None:
    p = web(dns_failure="interrupted")
    expect(judge(tmp_path, p, control_of(p)), "probe_failure", None, "probe_failure.interrupted")


def test_cancelled_connects_beside_a_fetched_page_are_no_evidence(tmp_path: Path) -> None:
    # OONI cancels the other connects once one address served the page.
    other = "93.184.216.99"
    p = web(ips=[SITE_IP, other], tcp_failure={other: "interrupted"})
    expect(judge(tmp_path, p, control_of(p, ips=[SITE_IP, other])), "ok", None, "ok.http_matches")


def test_a_real_reset_beside_a_cancelled_connect_is_still_blocking(tmp_path: Path) -> None:
    other = "93.184.216.99"
    p = web(ips=[SITE_IP, other], tcp_failure={SITE_IP: "connection_reset", other: "interrupted"})
    expect(judge(tmp_path, p, control_of(p, ips=[SITE_IP, other])), "blocked", "tcp_ip", "tcp.reset")


def test_every_connect_cancelled_is_probe_failure(tmp_path: Path) -> None:
    p = web(tcp_failure="interrupted")
    assert p.http == [] and all(isinstance(c, TcpConnect) and c.failure == "interrupted" for c in p.tcp)
    out = verdicts(tmp_path, [p, control_of(p)])
    expect(out[p.measurement_id], "probe_failure", None, "probe_failure.interrupted")
