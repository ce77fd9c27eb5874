"""The quic layer: QUIC blocked while TCP/TLS/HTTP work (per failure family), the reverse (TCP/TLS
blocked while QUIC passes: the TCP/TLS verdict, a rule saying QUIC passed), and the traps that
must not be called blocked (no QUIC server, no QUIC at the control, a site that is down, an
HTTP/3 GET that failed after the handshake). Old datasets without the ``quic`` column read and
give the verdicts they gave before it existed."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_verdicts import control_of, expect, judge, verdicts, web

from analysis.db import open_datasets
from probe.dataset import write_records
from probe.net.quic import HTTP3_TAG
from probe.schema import HttpRequest, Measurement, QuicHandshake, row_to_record

URL = "https://site.example/"


def with_quic(m: Measurement, failure: str | None = None, *, h3_failure: str | None = None,
              h3_body_length: int = 5) -> Measurement:
    """Add the QUIC step as web_connectivity records it: a handshake per resolved address and,
    when it completed, the HTTP/3 GET (last in ``http``, tag "http3")."""
    ips = [a.value for q in m.dns for a in q.answers]
    for ip in ips:
        m.quic.append(QuicHandshake(t0=0.1, t=0.3, failure=failure, ip=ip, port=443, sni="site.example",
                                    alpn=None if failure else "h3", quic_version=None if failure else "1",
                                    cert_valid=None if failure else True))
        if failure is None:
            m.http.append(HttpRequest(t0=0.3, t=0.4, failure=h3_failure, url=m.input, ip=ip, http_version="HTTP/3",
                                      tag=HTTP3_TAG, status_code=None if h3_failure else 200,
                                      body_length=None if h3_failure else h3_body_length))
    return m


def quic_pair(probe_quic: str | None, control_quic: str | None = None, *, control_has_quic: bool = True,
              **probe_kw: object) -> tuple[list[Measurement], Measurement]:
    p = with_quic(web(url=URL, **probe_kw), probe_quic)  # type: ignore[arg-type]
    c = control_of(p)
    if control_has_quic:
        with_quic(c, control_quic)
    return [p, c], p


# --------------------------------------------------------------------------- blocked: layer quic


@pytest.mark.parametrize(("failure", "method"), [
    ("generic_timeout", "quic.timeout"),  # UDP 443 or the QUIC Initial dropped
    ("connection_refused", "quic.refused"),  # a REJECT rule: ICMP port unreachable
    ("host_unreachable", "quic.unreachable"),
    ("connection_reset", "quic.reset"),
    ("quic_version_negotiation_failure", "quic.handshake_failure"),
    ("tls_handshake_failure", "quic.handshake_failure"),
    ("ssl_invalid_hostname", "quic.invalid_cert"),
    ("unknown_failure:weird", "quic.failure"),
])
def test_quic_fails_at_the_probe_only_while_https_works(tmp_path: Path, failure: str, method: str) -> None:
    records, p = quic_pair(failure)
    expect(verdicts(tmp_path, records)[p.measurement_id], "blocked", "quic", method)


def test_an_ipv6_address_the_probe_cannot_reach_does_not_name_the_failure(tmp_path: Path) -> None:
    p = web(url=URL)
    p.quic = [QuicHandshake(t0=0.1, t=0.1, failure="network_unreachable", ip="2001:db8::1", port=443, sni="site.example"),
              QuicHandshake(t0=0.1, t=3.0, failure="generic_timeout", ip=p.tcp[0].ip, port=443, sni="site.example")]
    c = with_quic(control_of(p), None)
    expect(judge(tmp_path, p, c), "blocked", "quic", "quic.timeout")


# --------------------------------------------------------------------------- the reverse


def test_tcp_blocked_while_quic_passes_keeps_the_tcp_verdict_and_says_quic_passed(tmp_path: Path) -> None:
    records, p = quic_pair(None, tcp_failure="generic_timeout")
    expect(verdicts(tmp_path, records)[p.measurement_id], "blocked", "tcp_ip", "tcp.blocked_quic_ok")


def test_tls_blocked_while_quic_passes_keeps_the_tls_verdict_and_says_quic_passed(tmp_path: Path) -> None:
    records, p = quic_pair(None, tls_failure="connection_reset")
    expect(verdicts(tmp_path, records)[p.measurement_id], "blocked", "tls", "tls.blocked_quic_ok")


def test_tcp_and_quic_both_blocked_is_the_tcp_family(tmp_path: Path) -> None:
    # Trap beside the reverse: QUIC did not pass, so the rule must not say it did.
    records, p = quic_pair("generic_timeout", tcp_failure="connection_reset")
    expect(verdicts(tmp_path, records)[p.measurement_id], "blocked", "tcp_ip", "tcp.reset")


# --------------------------------------------------------------------------- traps


def test_a_server_without_quic_fails_at_both_sides_and_is_ok(tmp_path: Path) -> None:
    records, p = quic_pair("connection_refused", "connection_refused")
    expect(verdicts(tmp_path, records)[p.measurement_id], "ok", None, "ok.https_validated")
    records, p = quic_pair("generic_timeout", "generic_timeout")  # or nothing answers UDP at all
    expect(verdicts(tmp_path / "silent", records)[p.measurement_id], "ok", None, "ok.https_validated")


def test_no_quic_at_the_control_is_no_evidence(tmp_path: Path) -> None:
    records, p = quic_pair("generic_timeout", control_has_quic=False)
    expect(verdicts(tmp_path, records)[p.measurement_id], "ok", None, "ok.https_validated")


def test_a_site_down_at_both_sides_is_down_not_quic(tmp_path: Path) -> None:
    p = with_quic(web(url=URL, tcp_failure="generic_timeout"), "generic_timeout")
    c = with_quic(control_of(p, tcp_failure="generic_timeout"), "generic_timeout")
    expect(judge(tmp_path, p, c), "down", None, "down.both_failed")


def test_the_http3_get_is_not_a_hop_of_the_tcp_chain(tmp_path: Path) -> None:
    # QUIC worked everywhere; the HTTP/3 GET failed after the handshake (or answered a page of
    # another size). The TCP page decides: no http.failure, no http-diff from the HTTP/3 record.
    p = with_quic(web(url=URL), None, h3_failure="eof")
    c = with_quic(control_of(p), None, h3_body_length=90000)
    expect(judge(tmp_path, p, c), "ok", None, "ok.https_validated")
    p = with_quic(web(), None, h3_body_length=1)  # plain http URL with a stray HTTP/3 record
    c = with_quic(control_of(p), None, h3_body_length=90000)
    expect(judge(tmp_path / "http", p, c), "ok", None, "ok.http_matches")


def test_both_quic_ok_is_ok(tmp_path: Path) -> None:
    records, p = quic_pair(None, None)
    expect(verdicts(tmp_path, records)[p.measurement_id], "ok", None, "ok.https_validated")


# --------------------------------------------------------------------------- old datasets


def _drop_quic_column(root: Path) -> int:
    n = 0
    for path in root.rglob("*.parquet"):
        table = pq.read_table(path, partitioning=None)
        assert "quic" in table.column_names
        pq.write_table(table.drop_columns(["quic"]), path)
        n += 1
    return n


def test_a_dataset_without_the_quic_column_reads_and_gives_the_same_verdicts(tmp_path: Path) -> None:
    from test_verdict_rules import CASES

    records: list[Measurement] = []
    for rule_id, case in CASES.items():
        if rule_id.startswith(("quic.", "connectivity.", "no_control.control_offline")) or "quic" in rule_id:
            continue  # connectivity cases need their own many rows; QUIC cases need the column
        records += case()[0]
    with_column = verdicts(tmp_path / "new", records)
    root = tmp_path / "old" / "ds"
    write_records(root, "run-old", records)
    assert _drop_quic_column(root) > 0
    con = open_datasets([root])  # no SkippedFileWarning (warnings are errors)
    try:
        from test_verdicts import TEST_FINGERPRINTS

        from analysis.verdicts import compute_verdicts

        fp = tmp_path / "fp.csv"
        fp.write_text(TEST_FINGERPRINTS, encoding="utf-8")
        table = compute_verdicts(con, fingerprints=[fp])
        assert con.execute("SELECT count(*) FROM quic_handshakes").fetchall() == [(0,)]
        rows = [row_to_record(r) for r in con.sql("SELECT * FROM measurements LIMIT 3").to_arrow_table().to_pylist()]
    finally:
        con.close()
    without = {r["measurement_id"]: (r["status"], r["layer"], r["method"]) for r in table.to_pylist()}
    assert without == {k: (v["status"], v["layer"], v["method"]) for k, v in with_column.items()}
    assert len(without) > 40
    assert rows and all(r.quic == [] for r in rows)


def test_a_row_without_quic_rebuilds_a_record() -> None:
    row = web(url=URL).to_row()
    del row["quic"]
    assert row_to_record(row).quic == []


def test_the_evidence_of_the_reverse_shows_quic_passed(tmp_path: Path) -> None:
    from analysis.report.evidence import AsnNames, evidence_table, load_evidence

    records, p = quic_pair(None, tls_failure="connection_reset")
    root = tmp_path / "ds"
    write_records(root, "run-ev", records)
    con = open_datasets([root])
    try:
        ev = load_evidence(con, [p.measurement_id])[p.measurement_id]
    finally:
        con.close()
    html = evidence_table(ev, AsnNames(None), None)
    assert "QUIC handshake" in html and "handshake completed</span> (h3)" in html
    assert "HTTP/3 over QUIC" in html


def test_scrubbing_reaches_quic_records_and_keeps_their_target() -> None:
    from probe.net.scrub import Scrubber
    from probe.scrub import scrub_record

    m = web(url=URL, ips=("203.0.113.9",))
    with_quic(m, None)
    m.quic[0].peer_cert_names = ["site.example", "198.51.100.77"]
    m.http[-1].title = "You are 198.51.100.77"
    scrub_record(m, Scrubber(paranoid=True, public_nets=["198.51.100.0/24", "203.0.113.0/24"]))
    assert m.quic[0].ip == "203.0.113.9" and m.http[-1].ip == "203.0.113.9"  # the target stays
    assert m.quic[0].peer_cert_names == ["site.example", "[scrubbed]"]
    assert m.http[-1].title == "You are [scrubbed]"


# -- quic: a QUIC attempt the probe cancelled itself (`interrupted`: the HTTPS answer did not
# advertise h3, so web_connectivity stopped waiting) is not measured, at the probe or the control.


def _alt_svc(m: Measurement, value: str) -> Measurement:
    from probe.schema import HttpHeader

    for hop in m.http:
        if hop.tag is None and hop.status_code is not None:
            hop.headers.append(HttpHeader("alt-svc", value))
    return m


def test_a_server_without_h3_cancelled_at_both_sides_is_the_ordinary_verdict(tmp_path: Path) -> None:
    records, p = quic_pair("interrupted", "interrupted")
    expect(verdicts(tmp_path, records)[p.measurement_id], "ok", None, "ok.https_validated")
    # and the ordinary blocked verdict of the TCP path is not changed by it
    p = with_quic(web(url=URL, http_failure="connection_reset"), "interrupted")
    c = with_quic(control_of(p), "interrupted")
    assert judge(tmp_path / "http", p, c)["layer"] != "quic"


def test_cancelled_at_the_probe_while_the_control_completed_is_not_quic_blocking(tmp_path: Path) -> None:
    # The probe's answer did not offer h3 (another edge of a CDN), the control's did and its QUIC
    # completed: the probe never measured QUIC, so nothing says QUIC is blocked there.
    records, p = quic_pair("interrupted", None)
    expect(verdicts(tmp_path, records)[p.measurement_id], "ok", None, "ok.https_validated")


def test_cancelled_at_the_control_is_no_control_evidence(tmp_path: Path) -> None:
    records, p = quic_pair("generic_timeout", "interrupted")
    expect(verdicts(tmp_path, records)[p.measurement_id], "ok", None, "ok.https_validated")


def test_h3_advertised_and_quic_dropped_at_the_probe_is_still_blocked(tmp_path: Path) -> None:
    # Beside the traps above: the answer advertises h3, so QUIC ran to its end and timed out.
    p = _alt_svc(with_quic(web(url=URL), "generic_timeout"), 'h3=":443"; ma=86400')
    c = _alt_svc(with_quic(control_of(p), None), 'h3=":443"; ma=86400')
    expect(judge(tmp_path, p, c), "blocked", "quic", "quic.timeout")


def test_tcp_blocked_keeps_quic_measured(tmp_path: Path) -> None:
    # No answer over TCP: QUIC was not cancelled; it passed at the probe, the control's answer
    # advertised h3 (its QUIC was measured too).
    p = with_quic(web(url=URL, tcp_failure="generic_timeout"), None)
    c = _alt_svc(with_quic(control_of(p), None), 'h3=":443"')
    expect(judge(tmp_path, p, c), "blocked", "tcp_ip", "tcp.blocked_quic_ok")
