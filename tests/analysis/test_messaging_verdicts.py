"""Messaging-app verdicts: OONI's per-app rules per function, compared with the control, one
verdict row per probe measurement with the per-function list beside it (analysis/messaging.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_verdicts import verdicts

from analysis.messaging import functions_text, judge_functions
from probe.schema import Measurement, TcpConnect
from tests.support.messaging_records import DCS, TELEGRAM_WEB, Ep, app, dropped, pair

# The rule cases test_verdict_rules.py runs (one per messaging rule of analysis/rules.py).
RULE_CASES: dict[str, Any] = {
    "messaging.dns": lambda: pair("whatsapp", [Ep("registration", "v.whatsapp.net", fail=("dns", "dns_nxdomain"))],
                                  [Ep("registration", "v.whatsapp.net")]),
    "messaging.tls": lambda: pair("signal", [Ep("messaging", "chat.signal.org", fail=("tls", "connection_reset"))],
                                  [Ep("messaging", "chat.signal.org")]),
    "messaging.http": lambda: pair("telegram", [*DCS, Ep("web", "web.telegram.org", fail=("http", "eof"))],
                                   [*DCS, TELEGRAM_WEB]),
    "messaging.tcp": lambda: pair("telegram", [*dropped(DCS), TELEGRAM_WEB], [*DCS, TELEGRAM_WEB]),
    "probe_failure.messaging_interrupted": lambda: pair(
        "whatsapp", [Ep("web", "web.whatsapp.com", fail=("http", "interrupted"))], [Ep("web", "web.whatsapp.com")]),
    "down.messaging": lambda: pair("telegram", [*DCS, Ep("web", "web.telegram.org", fail=("tcp", "connection_refused"))],
                                   [*DCS, Ep("web", "web.telegram.org", fail=("tcp", "connection_refused"))]),
    "ok.messaging": lambda: pair("telegram", [*DCS, TELEGRAM_WEB], [*DCS, TELEGRAM_WEB]),
}


def fn(v: dict[str, Any]) -> dict[str, str]:
    return {f["function"]: f["status"] for f in v["functions"]}


def test_telegram_all_dcs_dropped_is_blocked_and_web_ok(tmp_path: Path) -> None:
    records, p = RULE_CASES["messaging.tcp"]()
    v = verdicts(tmp_path, records)[p.measurement_id]
    assert (v["status"], v["layer"], v["method"]) == ("blocked", "tcp_ip", "messaging.tcp")
    assert fn(v) == {"messaging": "blocked", "web": "ok"}
    assert "messaging blocked (tcp_ip: generic_timeout, 4/4 endpoints)" in functions_text(v["functions"])


def test_trap_one_telegram_dc_dropped_is_ok(tmp_path: Path) -> None:
    # The app moves on to the next data centre: OONI's rule needs every DC to fail.
    records, p = pair("telegram", [*dropped(DCS[:1]), *DCS[1:], TELEGRAM_WEB], [*DCS, TELEGRAM_WEB])
    v = verdicts(tmp_path, records)[p.measurement_id]
    assert (v["status"], v["method"]) == ("ok", "ok.messaging")
    assert fn(v) == {"messaging": "ok", "web": "ok"}


def test_trap_signal_backend_down_at_the_control_too_is_down(tmp_path: Path) -> None:
    failing = [Ep("messaging", "cdn.signal.org", fail=("tcp", "connection_refused"))]
    records, p = pair("signal", [Ep("messaging", "chat.signal.org"), *failing],
                      [Ep("messaging", "chat.signal.org"), *failing])
    v = verdicts(tmp_path, records)[p.measurement_id]
    assert (v["status"], v["method"]) == ("down", "down.messaging")
    assert v["functions"][0]["control"] == "failed"


def test_signal_one_backend_reset_is_blocked(tmp_path: Path) -> None:
    # Signal needs every backend (OONI: any failure is signal_backend_status blocked).
    records, p = pair("signal", [Ep("messaging", "chat.signal.org"), Ep("messaging", "cdn.signal.org", fail=("tls", "connection_reset"))],
                      [Ep("messaging", "chat.signal.org"), Ep("messaging", "cdn.signal.org")])
    v = verdicts(tmp_path, records)[p.measurement_id]
    assert (v["status"], v["layer"], v["method"]) == ("blocked", "tls", "messaging.tls")


def test_no_control_falls_back_to_oonis_rule(tmp_path: Path) -> None:
    records, p = pair("whatsapp", [Ep("registration", "v.whatsapp.net", fail=("tcp", "connection_reset"))])
    v = verdicts(tmp_path, records)[p.measurement_id]
    assert (v["status"], v["method"]) == ("blocked", "messaging.tcp")
    assert v["functions"][0]["control"] is None
    assert "no control" in functions_text(v["functions"])


def test_web_rows_have_no_functions(tmp_path: Path) -> None:
    from test_verdicts import web

    p = web()
    records, m = pair("telegram", [*DCS, TELEGRAM_WEB], [*DCS, TELEGRAM_WEB])
    out = verdicts(tmp_path, [p, *records])
    assert out[p.measurement_id]["functions"] is None
    assert out[m.measurement_id]["functions"] is not None


def _obs(m: Measurement) -> dict[str, list[dict[str, Any]]]:
    import dataclasses

    def d(o: Any) -> dict[str, Any]:
        return dataclasses.asdict(o)

    return {"dns": [d(q) for q in m.dns], "tcp": [d(c) for c in m.tcp], "tls": [d(x) for x in m.tls],
            "http": [d(h) for h in m.http]}


def test_whatsapp_all_chat_endpoints_rule_without_a_database() -> None:
    chat = [Ep("messaging", f"e{i}.whatsapp.net", port, "tcp") for i in (1, 2) for port in (443, 5222)]
    all_down = judge_functions("whatsapp", _obs(app("whatsapp", dropped(chat))), _obs(app("whatsapp", chat, "control")))
    assert [(f.function, f.status, f.failed, f.endpoints) for f in all_down] == [("messaging", "blocked", 4, 4)]
    one_up = judge_functions("whatsapp", _obs(app("whatsapp", [*dropped(chat[:3]), chat[3]])), None)
    assert [(f.function, f.status) for f in one_up] == [("messaging", "ok")]


def test_ipv6_unreachable_beside_a_working_address_is_ok() -> None:
    m = app("signal", [Ep("messaging", "chat.signal.org", kind="tcp")])
    m.tcp.append(TcpConnect(t0=0.0, t=0.0, failure="network_unreachable", ip="2001:db8::1", port=443,
                            tag="messaging@chat.signal.org:443"))
    assert [f.status for f in judge_functions("signal", _obs(m), None)] == ["ok"]


def test_facebook_answer_outside_facebooks_network_is_dns_blocking() -> None:
    m = app("facebook_messenger", [Ep("messaging", "b-api.facebook.com", kind="tcp")])
    m.dns[0].answers[0].asn = "AS64496"  # a censor's sinkhole network
    (f,) = judge_functions("facebook_messenger", _obs(m), None)
    assert (f.status, f.layer, f.failure) == ("blocked", "dns", "unknown_failure:dns_inconsistent")
    m.dns[0].answers[0].asn = "AS32934"
    assert judge_functions("facebook_messenger", _obs(m), None)[0].status == "ok"


def test_the_spark_engines_verdict_columns_include_functions() -> None:
    """--engine spark declares the verdict columns as a DDL string: the same names, in order
    (its applyInArrow returns compute_verdicts' table, functions column included)."""
    from analysis.spark_engine import _SPARK_VERDICT_DDL
    from analysis.verdicts import VERDICT_SCHEMA

    names, depth, current = [], 0, ""
    for ch in _SPARK_VERDICT_DDL + ",":
        if ch == "," and depth == 0:
            names.append(current.split()[0])
            current = ""
            continue
        depth += ch == "<"
        depth -= ch == ">"
        current += ch
    assert names == VERDICT_SCHEMA.names
    assert "array<struct<function: string" in _SPARK_VERDICT_DDL
