"""scrub_record walks every string of every record (whatever fields the schema grows), at the
end of measure(); the log filter scrubs what httpx logs at -v and -vv; OONI imports lose
their probe_ip in every field."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import ipaddress
import json
import logging
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from netns.address_forms import find, forms

import probe.control
import probe.schema as S
from probe.experiments.base import Experiment, Settings, Target, Vantage, measure
from probe.experiments.context import MeasurementContext
from probe.net.scrub import LogScrubFilter
from probe.net.scrub import Scrubber as NetScrubber
from probe.scrub import REPLACEMENT, Scrubber, scrub_probe_ip, scrub_record
from tests.support.loopback_site import LoopbackServer

OWN = "198.51.100.23"
OWN_V6 = "2001:db8:aa:bb::77"
TARGET = "203.0.113.5"


def filled(cls: type, text: str) -> Any:
    """An instance of a schema dataclass with ``text`` in every string, and one element in
    every list, recursively: a field added to the schema later is covered without a change here."""
    hints = typing.get_type_hints(cls, vars(S))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        values[f.name] = _value(hints[f.name], text)
    return cls(**values)


def _value(tp: Any, text: str) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _value(args[0], text)
    if origin is list:
        return [_value(args[0], text)]
    if dataclasses.is_dataclass(tp):
        return filled(tp, text)  # type: ignore[arg-type]
    if tp is str:
        return text
    if tp is bool:
        return False
    if tp in (int, float):
        return tp(1)
    if tp is S.dt.datetime:
        return S.utcnow()
    raise AssertionError(f"no filler for {tp!r}")


def strings(obj: Any, path: str = "") -> Iterator[tuple[str, str]]:
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        items = v if isinstance(v, list) else [v]
        for i, item in enumerate(items):
            where = f"{path}{f.name}[{i}]" if isinstance(v, list) else f"{path}{f.name}"
            if isinstance(item, str):
                yield where, item
            elif dataclasses.is_dataclass(item):
                yield from strings(item, where + ".")


IDS = {"measurement_id", "run_id", "control_for", "origin_uid", "body_sha256", "peer_cert_sha256"}


@pytest.mark.parametrize("form", sorted(forms(OWN)))
def test_every_string_of_every_nested_record_is_scrubbed(form: str) -> None:
    m = filled(S.Measurement, f"seen {forms(OWN)[form]} and [{OWN_V6}]")
    scrub_record(m, Scrubber([OWN, OWN_V6]))
    checked = 0
    for where, value in strings(m):
        if where.rsplit(".", 1)[-1] in IDS:
            continue  # made by the probe, never captured: links between rows must not change
        checked += 1
        assert find(value, [OWN]) == [] and OWN_V6 not in value, (where, value)
        assert REPLACEMENT in value, where
    assert checked > 40  # http headers, dns answers and late answers, vpn packets, ...


def test_an_address_field_equal_to_ours_becomes_scrubbed() -> None:
    m = filled(S.Measurement, "x")
    m.http[0].ip = OWN  # a redirect to the probe's own address
    m.dns[0].answers[0] = S.DnsAnswer("AAAA", "2001:db8:aa:bb:1234::9", 60)  # in our /64
    m.dns[0].late_responses[0].answers[0] = S.DnsAnswer("A", OWN, 60)
    m.tls[0].peer_cert_names = ["www.example", OWN]
    m.tcp[0].ip = "192.0.2.1"  # not ours: kept
    scrub_record(m, Scrubber([OWN, OWN_V6]))
    assert m.http[0].ip == REPLACEMENT and m.dns[0].answers[0].value == REPLACEMENT
    assert m.dns[0].late_responses[0].answers[0].value == REPLACEMENT
    assert m.tls[0].peer_cert_names == ["www.example", REPLACEMENT]
    assert m.tcp[0].ip == "192.0.2.1"


def web_record(body: str) -> S.Measurement:
    m = S.Measurement(S.new_uuid7(), "run", "web_connectivity", "0.1.0", f"http://{TARGET}/x", S.utcnow())
    m.dns.append(S.DnsQuery(0, 0.1, None, "192.0.2.53:53", "udp", "A", "ip-198-51-100-77.example",
                            answers=[S.DnsAnswer("A", "198.51.100.77", 60)], tag="redirect"))
    m.tcp.append(S.TcpConnect(0, 0.1, None, TARGET, 80))
    m.http.append(S.HttpRequest(0, 0.2, None, f"http://{TARGET}/x", ip=TARGET, status_code=302,
                                headers=[S.HttpHeader("location", "http://198.51.100.77/")]))
    m.http.append(S.HttpRequest(0.2, 0.3, None, "http://198.51.100.77/", ip="198.51.100.77", status_code=200,
                                body_sample=body, title="You are 198.51.100.77",
                                headers=[S.HttpHeader("x-client-hex", "0xC633644D")]))
    return m


def test_paranoid_records_keep_their_targets_only() -> None:
    body = f"server {TARGET}, client 198.51.100.77, cookie {forms('198.51.100.77')['base64']}, v 1.2.3.4"
    m = web_record(body)
    scrub_record(m, Scrubber(paranoid=True, public_nets=["198.51.100.0/24", "203.0.113.0/24"]))
    assert m.input == f"http://{TARGET}/x" and m.tcp[0].ip == TARGET and m.http[0].ip == TARGET  # targets stay
    assert m.dns[0].resolver == "192.0.2.53:53"  # the resolver asked is configuration, not captured
    assert m.dns[0].hostname == "ip-[scrubbed].example" and m.dns[0].answers[0].value == REPLACEMENT
    assert m.http[0].headers[0].value == "http://[scrubbed]/"
    assert m.http[1].ip == REPLACEMENT and m.http[1].url == "http://[scrubbed]/"
    assert m.http[1].title == "You are [scrubbed]"
    # other encodings of an address this record showed as a literal go as well
    assert m.http[1].headers[0].value == REPLACEMENT
    sample = m.http[1].body_sample or ""
    assert sample.startswith(f"server {TARGET}, client [scrubbed], cookie [scrubbed]") and sample.endswith(", v [scrubbed]")
    assert find(sample, ["198.51.100.77"]) == []


def test_known_address_mode_keeps_other_literals() -> None:
    m = web_record("server 203.0.113.5, client 198.51.100.77, v 1.2.3.4")
    scrub_record(m, Scrubber(["198.51.100.77"]))
    assert m.http[1].body_sample == "server 203.0.113.5, client [scrubbed], v 1.2.3.4"
    assert probe.control.scrub_record is scrub_record  # control rows go through the same walker


class _Echo(Experiment):
    name = "echo_test"

    async def run(self, target: Target, net: MeasurementContext) -> list[Any]:
        return [S.HttpRequest(0, 0.1, f"unknown_failure:bind {OWN} failed", f"http://x/?me={OWN}",
                              headers=[S.HttpHeader("x-you", forms(OWN)["hex"])])]


def test_measure_scrubs_the_finished_record() -> None:
    settings = Settings(scrubber=NetScrubber([OWN], discover=False))
    m = asyncio.run(measure(_Echo(), Target("http://x/"), settings, Vantage(), "run"))
    text = json.dumps(m.to_row(), default=str)
    assert find(text, [OWN]) == [] and text.count(REPLACEMENT) == 3


# --------------------------------------------------------------------------- logs


@pytest.mark.parametrize("paranoid", [False, True])
def test_log_filter_scrubs_httpx_lines_at_vv(paranoid: bool) -> None:
    # A site that echoes the client's address in a header and a cookie.
    server = LoopbackServer(page=b"", headers=[("X-Client", OWN), ("Set-Cookie", f"ip={forms(OWN)['base64']}")],
                            protocol_version="HTTP/1.1")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    scrubber = Scrubber([] if paranoid else [OWN], paranoid=paranoid, public_nets=["198.51.100.0/24"])
    handler.addFilter(LogScrubFilter(lambda: scrubber))
    root = logging.getLogger()
    old_level, old_handlers = root.level, root.handlers[:]
    # The root logger as `vantage -vv` sets it up: one handler, one filter. (Handlers other
    # tests' CLI runs left on pytest's capture handlers would scrub the record first with
    # another scrubber: this test is about one filter.)
    root.handlers = [handler]
    root.setLevel(logging.DEBUG)
    try:
        url = f"{server.url}?ip={OWN}&hex={forms(OWN)['hex']}"
        httpx.get(url, headers={"X-Forwarded-For": OWN})
        logging.getLogger("probe.test").warning("failed %s: %r", OWN, ValueError(f"at {forms(OWN)['dashed']}"))
        try:
            raise OSError(f"bind {OWN}")
        except OSError:
            logging.getLogger("probe.test").exception("traceback")
    finally:
        root.handlers = old_handlers
        root.setLevel(old_level)
        server.close()
    text = stream.getvalue()
    assert "HTTP Request: GET" in text and "receive_response_headers.complete" in text  # -v and -vv lines
    assert "Traceback" in text
    assert find(text, [OWN]) == [], text
    assert text.count(REPLACEMENT) >= 6


# --------------------------------------------------------------------------- OONI


def test_imported_records_lose_probe_ip_everywhere() -> None:
    m = web_record("your address 8.8.4.4, as hex 08080404, reversed 4.4.8.8.in-addr.arpa")
    m.failure = "unknown_failure:connect to 8.8.4.4 failed"
    m.tcp[0].ip = "8.8.4.4"
    scrub_probe_ip([m], "8.8.4.4")
    text = json.dumps(m.to_row(), default=str)
    assert find(text, ["8.8.4.4"]) == [] and m.tcp[0].ip == REPLACEMENT
    assert "203.0.113.5" in text  # the target stays
    # what OONI writes when it scrubbed the address itself is not an address to remove
    m2 = web_record("local 127.0.0.1")
    scrub_probe_ip([m2], "127.0.0.1")
    assert m2.http[1].body_sample == "local 127.0.0.1"
    scrub_probe_ip([m2], None)


def test_ooni_import_scrubs_probe_ip_in_other_encodings(tmp_path: Path) -> None:
    from analysis.ingest.ooni import import_ooni

    doc = {
        "measurement_uid": "uid-probe-ip", "test_name": "web_connectivity", "probe_ip": "10.11.12.13",
        "probe_cc": "IT", "probe_asn": "AS30722", "input": "http://example.org/",
        "measurement_start_time": "2024-01-01 00:00:00", "test_start_time": "2024-01-01 00:00:00",
        "test_keys": {
            "queries": [{"hostname": "ip-10-11-12-13.example", "query_type": "A", "engine": "system",
                         "failure": None, "answers": [{"answer_type": "A", "ipv4": "10.11.12.13"}]}],
            "tcp_connect": [{"ip": "10.11.12.13", "port": 80, "status": {"success": False,
                             "failure": "connection_refused 10.11.12.13"}}],
            "requests": [{"request": {"url": "http://example.org/", "method": "GET"},
                          "failure": None,
                          "response": {"code": 200, "headers_list": [["X-Ip", "0a0b0c0d"]],
                                       "body": "<title>hi 10-11-12-13</title> 168496141"}}],
        },
    }
    (tmp_path / "m.json").write_text(json.dumps(doc))
    summary = import_ooni([tmp_path / "m.json"], tmp_path / "ds")
    assert summary.measurements == 1, summary.errors
    import pyarrow.parquet as pq

    rows = [r for p in (tmp_path / "ds").rglob("*.parquet") for r in pq.read_table(p).to_pylist()]
    text = json.dumps(rows, default=str)
    assert rows and find(text, ["10.11.12.13"]) == [], text
    assert REPLACEMENT in text and str(ipaddress.ip_address("10.11.12.13")) not in text


def test_paranoid_suspect_is_one_address_not_its_network() -> None:
    m = S.Measurement(S.new_uuid7(), "run", "web_connectivity", "0.1.0", "http://[2001:db8::1]/", S.utcnow())
    m.tcp.append(S.TcpConnect(0, 0.1, None, "2001:db8::1", 80))
    m.http.append(S.HttpRequest(0, 0.2, None, "http://[2001:db8::1]/", ip="2001:db8::1", status_code=200,
                                body_sample="you are 2001:db8::2, I am 2001:db8::1"))
    scrub_record(m, Scrubber(paranoid=True, public_nets=["2001:db8::/32"]))
    assert m.http[0].body_sample == "you are [scrubbed], I am 2001:db8::1"
    assert m.tcp[0].ip == "2001:db8::1" and m.http[0].ip == "2001:db8::1"


def test_paranoid_base64_only_echo_is_scrubbed_other_base64_stays() -> None:
    import base64

    cookie = base64.b64encode(b"visitor=8.8.4.4;lang=en").decode()
    session = base64.b64encode(b"session 9f2c1e77 for user 42, v1.2.3").decode()
    m = web_record("nothing here")
    m.http[1].headers = [S.HttpHeader("set-cookie", f"c={cookie}"), S.HttpHeader("x-session", session)]
    scrub_record(m, Scrubber(paranoid=True))
    assert find(m.http[1].headers[0].value, ["8.8.4.4"]) == [] and REPLACEMENT in m.http[1].headers[0].value
    assert m.http[1].headers[1].value == session


# -- issue 19: scrub_record's shortcuts (literals looked up once per short text, a text with no
# trace of an own address skipped, no derived scrubber when no suspect may be public). Each test
# scrubs through warm caches: the same strings were scrubbed before, clean or not.


@pytest.mark.parametrize("form", sorted(forms(OWN)))
def test_paranoid_every_field_loses_our_address_through_warm_caches(form: str) -> None:
    text = f"seen {forms(OWN)[form]} here"
    for _ in range(2):  # the second record meets every text in the caches
        m = filled(S.Measurement, text)
        scrub_record(m, Scrubber([OWN], paranoid=True))
        checked = 0
        for where, value in strings(m):
            if where.rsplit(".", 1)[-1] in IDS:
                continue
            checked += 1
            assert find(value, [OWN]) == [] and REPLACEMENT in value, (form, where, value)
        assert checked > 40


@pytest.mark.parametrize("paranoid", [False, True])
@pytest.mark.parametrize("form", ["hex", "decimal", "base64", "dotted"])
def test_an_address_learned_later_is_scrubbed_in_texts_seen_clean_before(paranoid: bool, form: str) -> None:
    """The per-scrubber memory of clean texts is for its addresses of the moment: a text that
    was clean before the public address was learned is read again after."""
    scrubber = Scrubber(["192.0.2.2"], paranoid=paranoid)
    text = f"you are {forms(OWN)[form]}"
    before = filled(S.Measurement, text)
    scrub_record(before, scrubber)
    if not paranoid or form != "dotted":  # a paranoid record loses any public literal anyway
        assert before.http[0].title == text  # OWN is not known yet: kept (the trap)
    scrubber.add(OWN)
    after = filled(S.Measurement, text)
    scrub_record(after, scrubber)
    for where, value in strings(after):
        if where.rsplit(".", 1)[-1] not in IDS:
            assert find(value, [OWN]) == [] and REPLACEMENT in value, (where, value)


def test_paranoid_without_public_suspects_scrubs_with_the_scrubber_itself() -> None:
    s = Scrubber([OWN], paranoid=True)
    assert s.with_suspects([ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address(OWN)]) is s
    derived = s.with_suspects([ipaddress.ip_address("8.8.4.4")])
    assert derived is not s and ipaddress.ip_address("8.8.4.4") in derived.addresses
    assert ipaddress.ip_address("8.8.4.4") not in s.addresses  # the run's scrubber is not widened
    # a private literal (read both ways) in a paranoid record is kept, a public one goes
    m = web_record("blockpage at 10.0.0.10, client 8.8.4.4")
    scrub_record(m, s)
    assert m.http[1].body_sample == "blockpage at 10.0.0.10, client [scrubbed]"
