"""OONI import: readers, field mapping, web_connectivity controls, tunnels, counting, CLI errors."""

from __future__ import annotations

import base64
import copy
import gzip
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner

from analysis.ingest.ooni import OoniImportError, import_ooni
from analysis.ingest.ooni.convert import convert
from analysis.ingest.ooni.fields import BodyStats, http_chain, map_failure
from analysis.ingest.ooni.read import iter_documents
from probe.schema import is_valid_failure
from tests.support.paths import SHARED_DATA
from vantage.cli import main

OONI = SHARED_DATA / "ooni"
NETEM = OONI / "netem" / "web_connectivity_netem_simulated.jsonl"


def netem_line(n: int) -> str:
    with open(NETEM, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if i == n:
                return line.strip()
    raise AssertionError(n)


def rows(root: Path, where: str = "true") -> list[dict[str, Any]]:
    con = duckdb.connect()
    try:
        rel = con.sql(
            f"select * from read_parquet('{root}/measurements/**/*.parquet', hive_partitioning=true, "
            f"union_by_name=true) where {where} order by role desc, measurement_id"
        )
        return rel.to_arrow_table().to_pylist()
    finally:
        con.close()


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("ooni", "vantage"),
    [
        ("dns_nxdomain_error", "dns_nxdomain"),
        ("android_dns_cache_no_data", "dns_nxdomain"),
        ("dns_server_misbehaving", "dns_server_misbehaving"),
        ("dns_refused_error", "dns_refused"),
        ("dns_no_answer", "dns_no_answer"),
        ("generic_timeout_error", "generic_timeout"),
        ("connection_refused", "connection_refused"),
        ("connection_refused_error", "connection_refused"),
        ("connection_reset", "connection_reset"),
        ("eof_error", "eof"),
        ("ssl_invalid_hostname", "ssl_invalid_hostname"),
        ("ssl_unknown_authority", "ssl_unknown_authority"),
        ("ssl_invalid_certificate", "ssl_invalid_certificate"),
        ("ssl_failed_handshake", "tls_handshake_failure"),
        ("host_unreachable", "host_unreachable"),
        ("network_unreachable", "network_unreachable"),
        ("dns_name_error", "dns_nxdomain"),
        ("unknown_failure: stopped after too many redirects", "http_too_many_redirects"),
        ("quic_incompatible_version", "unknown_failure:quic_incompatible_version"),
        ("unknown_failure: weird thing", "unknown_failure:weird thing"),
        (None, None),
        ("", None),
    ],
)
def test_failure_strings_map_onto_the_closed_set(ooni: str | None, vantage: str | None) -> None:
    assert map_failure(ooni) == vantage
    assert is_valid_failure(map_failure(ooni))


# --------------------------------------------------------------------------- readers


def test_readers_stream_every_layout_and_name_bad_lines(tmp_path: Path) -> None:
    one = {"test_name": "x", "n": 1}
    (tmp_path / "array.json").write_text(json.dumps([one, {**one, "n": 2}], indent=2))
    (tmp_path / "single.json").write_text(json.dumps(one, indent=4))
    (tmp_path / "lines.json").write_text(json.dumps(one) + "\n" + json.dumps(one) + "\n")
    (tmp_path / "bad.jsonl").write_text('{"n": 1}\n\n{"n": 2,\n{"n": 3}\n')
    with gzip.open(tmp_path / "z.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write('{"n": 1}\n{"n": 2}\n')
    got = {p.name: [(d.line, d.error is None) for d in iter_documents(p)] for p in sorted(tmp_path.iterdir())}
    assert got["array.json"] == [(2, True), (6, True)]
    assert got["single.json"] == [(1, True)]
    assert got["lines.json"] == [(1, True), (2, True)]
    assert got["bad.jsonl"] == [(1, True), (3, False), (4, True)]
    assert got["z.jsonl.gz"] == [(1, True), (2, True)]


# --------------------------------------------------------------------------- web_connectivity


def test_web_connectivity_probe_and_control_rows(tmp_path: Path) -> None:
    """Scenario 10 of the netem set (dnsBlockingBOGON): a bogon from getaddrinfo, DoH honest."""
    src = tmp_path / "m.jsonl"
    src.write_text(netem_line(10) + "\n")
    summary = import_ooni([src], tmp_path / "ds")
    assert (summary.measurements, summary.controls, summary.malformed) == (1, 1, 0)
    probe, control = rows(tmp_path / "ds")
    assert probe["role"] == "probe" and control["role"] == "control"
    assert control["control_for"] == probe["measurement_id"]
    assert probe["origin"] == control["origin"] == "ooni"
    assert probe["input"] == control["input"] == "https://www.example.com/"
    assert probe["measurement_start_time"] == control["measurement_start_time"]
    assert probe["measurement_start_time"].isoformat() == "2024-02-12T20:33:47+00:00"
    assert (probe["probe_cc"], probe["probe_asn"], probe["resolver_asn"]) == ("IT", "AS137", "AS137")
    assert probe["software_version"] == "ooniprobe/3.22.0-alpha"
    system = [q for q in probe["dns"] if q["engine"] == "system"]
    assert [a["value"] for a in system[0]["answers"]] == ["10.10.34.35"]
    assert {q["engine"] for q in probe["dns"]} == {"system", "udp", "doh"}
    assert {(c["ip"], c["failure"]) for c in probe["tcp"]} == {("10.10.34.35", "generic_timeout"), ("93.184.216.34", None)}
    assert probe["http"][0]["status_code"] == 200 and probe["http"][0]["title"] == "Default Web Page"
    # the test helper's answer
    assert [a["value"] for a in control["dns"][0]["answers"]] == ["93.184.216.34"]
    assert [(c["ip"], c["port"], c["failure"]) for c in control["tcp"]] == [("93.184.216.34", 443, None)]
    assert control["tls"][0]["cert_valid"] is True
    assert (control["http"][0]["status_code"], control["http"][0]["body_length"]) == (200, 1533)
    assert control["probe_asn"] is None  # the helper is not in the probe's network
    # nothing of the probe's address, which OONI wrote as probe_ip
    assert "probe_ip" not in probe


def test_ids_are_deterministic_unique_and_reimport_adds_nothing(tmp_path: Path) -> None:
    # Every netem measurement has the same start time and an empty report_id, and several share
    # an input: ids must still be unique, and stable across imports.
    first = import_ooni([NETEM], tmp_path / "ds")
    assert (first.measurements, first.controls) == (50, 48)
    ids = [r["measurement_id"] for r in rows(tmp_path / "ds")]
    assert len(ids) == len(set(ids)) == 98
    again = import_ooni([NETEM], tmp_path / "ds")
    assert (again.measurements, again.already_present) == (0, 50)
    assert len(rows(tmp_path / "ds")) == 98
    other = import_ooni([NETEM], tmp_path / "ds2")
    assert {r["measurement_id"] for r in rows(tmp_path / "ds2")} == set(ids)
    assert other.null_controls == 2


def test_redirect_chain_is_stored_in_order() -> None:
    doc = json.loads(netem_line(21))  # yandex IDNA: three hops, OONI lists the last first
    hops = http_chain(doc["test_keys"]["requests"])
    assert [h.status_code for h in hops] == [308, 308, 200]
    assert hops[0].url.startswith("http://xn--")


def test_base64_and_odd_bodies_missing_keys_null_controls_and_bad_lines_are_counted(tmp_path: Path) -> None:
    doc = json.loads(netem_line(40))  # successWithHTTP
    blob = "<html><head><title>Caf\xe9</title></head></html>".encode("latin-1")
    b64 = copy.deepcopy(doc)
    b64["measurement_uid"] = "20240212000000.000000_IT_webconnectivity_0000000000000001"
    b64["test_keys"]["requests"][0]["response"]["body"] = {"format": "base64", "data": base64.b64encode(blob).decode()}
    no_keys = {k: v for k, v in doc.items() if k != "test_keys"}
    no_keys["measurement_uid"] = "uid-no-keys"
    null_ctrl = copy.deepcopy(doc)
    null_ctrl["measurement_uid"] = "uid-null-control"
    null_ctrl["test_keys"]["control"] = None
    lines = [json.dumps(b64), "{not json", json.dumps(no_keys), json.dumps({"hello": 1}), json.dumps(null_ctrl)]
    src = tmp_path / "mixed.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    s = import_ooni([tmp_path], tmp_path / "ds")
    assert (s.measurements, s.controls) == (3, 1)
    assert (s.base64_bodies, s.odd_encodings, s.missing_test_keys, s.null_controls, s.malformed) == (1, 1, 1, 1, 2)
    assert s.errors[0].startswith(f"{src}:2: invalid JSON")
    assert s.errors[1].startswith(f"{src}:4: ") and "test_name" in s.errors[1]
    got = {r["origin_uid"]: r for r in rows(tmp_path / "ds", "role = 'probe'")}
    body = got[b64["measurement_uid"]]["http"][0]
    assert body["body_length"] == len(blob) and body["title"] == "Caf\ufffd"
    assert got["uid-no-keys"]["failure"] == "unknown_failure:missing_test_keys"


def test_unscrubbed_probe_ip_never_reaches_the_dataset(tmp_path: Path) -> None:
    doc = json.loads(netem_line(40))
    doc["probe_ip"] = "8.8.4.4"  # a public address OONI failed to scrub
    resp = doc["test_keys"]["requests"][0]["response"]
    resp["body"] = "<html>your address is 8.8.4.4</html>"
    resp["headers_list"].append(["X-Client-IP", "8.8.4.4"])
    (tmp_path / "m.json").write_text(json.dumps(doc))
    import_ooni([tmp_path / "m.json"], tmp_path / "ds")
    blob = b"".join(p.read_bytes() for p in (tmp_path / "ds").rglob("*.parquet"))
    text = json.dumps(rows(tmp_path / "ds"), default=str)
    assert "8.8.4.4" not in text and b"8.8.4.4" not in blob
    assert "[scrubbed]" in text


# --------------------------------------------------------------------------- other tests


def test_real_fixtures_and_spec_examples_import_without_error(tmp_path: Path) -> None:
    s = import_ooni([OONI / "fixtures", OONI / "spec-examples"], tmp_path / "ds")
    assert s.malformed == 0, s.errors
    # Two fixture files (backend's vanilla_tor.json, pipeline's vanilla_tor_bad_new.json) hold
    # the same measurement, byte for byte in canonical JSON: it is written once.
    assert s.files == 52 and (s.measurements, s.duplicates) == (51, 1)
    for test in ("tor", "vanilla_tor", "openvpn", "riseupvpn", "signal", "telegram", "whatsapp", "dnscheck", "stun_reachability"):
        assert s.by_test[test] >= 1, test
    con = duckdb.connect()
    try:
        q = f"from read_parquet('{tmp_path}/ds/measurements/**/*.parquet', hive_partitioning=true, union_by_name=true)"
        vpn = dict(con.sql(f"select experiment, sum(len(vpn)) {q} group by 1").fetchall())
        assert vpn["tor"] >= 20 and vpn["vanilla_tor"] == 6 and vpn["openvpn"] == 2 and vpn["stun_reachability"] == 1
        dns = dict(con.sql(f"select experiment, sum(len(dns)) {q} group by 1").fetchall())
        assert dns["dnscheck"] >= 8 and dns["whatsapp"] > 0 and dns["dns_consistency"] == 8
        # vanilla_tor that failed to bootstrap is a failed vpn observation; a good one is ok
        rows_ = con.sql(
            f"select origin_uid, vpn[1].handshake_ok, vpn[1].failure {q} where experiment = 'vanilla_tor' and origin_uid is not null"
        ).fetchall()
        assert ("0120171007df235919e72f85cee42cc424b5461d", False, None) not in rows_
        assert any(ok for _, ok, _ in rows_) and any(not ok for _, ok, _ in rows_)
    finally:
        con.close()


def test_convert_tor_targets_become_vpn_observations() -> None:
    path = OONI / "fixtures" / "ooni__backend__fastpath__fastpath__tests__data__tor.json"
    doc = json.loads(path.read_text())
    (record,) = convert(doc, path.read_text(), BodyStats()).records
    protocols = {v.protocol for v in record.vpn}
    assert protocols <= {"tor", "obfs4", "tor_dirport"} and "tor" in protocols
    assert len(record.vpn) == len(doc["test_keys"]["targets"])
    failed = {k for k, t in doc["test_keys"]["targets"].items() if t.get("failure")}
    assert {v.endpoint for v in record.vpn if not v.handshake_ok} == {doc["test_keys"]["targets"][k]["target_address"] for k in failed}


# --------------------------------------------------------------------------- CLI


def test_cli_imports_and_prints_a_summary(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["ooni", "import", str(NETEM), "--output", str(tmp_path / "ds"), "-q"])
    assert result.exit_code == 0, result.output
    assert "measurements imported" in result.output and "web_connectivity" in result.output
    assert "null controls" in result.output


def test_cli_wrong_path_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["ooni", "import", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "ds")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {tmp_path / 'nope.jsonl'}: no such file or directory"]


def test_output_that_is_a_file_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OoniImportError, match="not a directory"):
        import_ooni([NETEM], tmp_path / "f")


def test_legacy_web_connectivity_format_2x(tmp_path: Path) -> None:
    """ooniprobe 2.x (2016): no engine, header dicts, no tags, chain listed last hop first."""
    doc = {
        "id": "5f0bd0f4-5ae3-4d1b-8d2c-7cbbf7c1b0a3",
        "report_id": "20161025T134851Z_AS30722_ZdzeSa4CMJ4yBwZZRIBm9H0sZSXq7kKfZ8gM8Zb9QvhvkBEQa9",
        "test_name": "web_connectivity",
        "test_version": "0.1.0",
        "software_name": "ooniprobe",
        "software_version": "2.0.0",
        "probe_cc": "IT",
        "probe_asn": "AS30722",
        "probe_ip": "127.0.0.1",
        "input": "http://example.com/",
        "measurement_start_time": "2016-10-25 13:49:24",
        "test_start_time": "2016-10-25 13:48:51",
        "test_keys": {
            "queries": [{"resolver_hostname": None, "resolver_port": None, "query_type": "A", "hostname": "example.com",
                         "failure": None, "answers": [{"answer_type": "A", "ipv4": "93.184.216.34"}]}],
            "tcp_connect": [{"ip": "93.184.216.34", "port": 80, "status": {"failure": None, "success": True, "blocked": False}}],
            "requests": [
                {"failure": None, "request": {"url": "http://www.example.com/", "method": "GET", "headers": {}},
                 "response": {"code": 200, "body": "<html><title>Example Domain</title></html>", "headers": {"Content-Type": "text/html"}}},
                {"failure": None, "request": {"url": "http://example.com/", "method": "GET", "headers": {}},
                 "response": {"code": 301, "body": "", "headers": {"Location": "http://www.example.com/"}}},
            ],
            "control": {"dns": {"failure": None, "addrs": ["93.184.216.34"]},
                        "tcp_connect": {"93.184.216.34:80": {"status": True, "failure": None}},
                        "http_request": {"body_length": 42, "failure": None, "title": "Example Domain",
                                         "headers": {"Content-Type": "text/html"}, "status_code": 200}},
            "blocking": False,
            "accessible": True,
        },
    }
    (record, control) = convert(doc, json.dumps(doc), BodyStats()).records
    assert record.origin_uid == doc["id"] and record.run_id == doc["report_id"]
    assert record.measurement_start_time.isoformat() == "2016-10-25T13:49:24+00:00"
    assert [(q.engine, q.resolver, q.answers[0].value) for q in record.dns] == [("system", "system", "93.184.216.34")]
    assert [h.status_code for h in record.http] == [301, 200]
    assert record.http[1].title == "Example Domain" and record.http[1].headers[0].name == "Content-Type"
    assert control.role == "control" and control.http[0].body_length == 42 and control.tls == []


@pytest.mark.parametrize(
    ("line", "failure", "url"),
    [
        (29, "connection_refused", "http://www.example.com/"),  # redirect target refuses TCP
        (32, "connection_reset", "https://www.example.com/"),  # redirect target's TLS is reset
        (35, "dns_nxdomain", "https://www.example.com/"),  # redirect target does not resolve
    ],
)
def test_unrecorded_redirect_hop_is_rebuilt(line: int, failure: str, url: str) -> None:
    """webconnectivitylte writes no request for a redirect hop whose DNS/TCP/TLS all failed."""
    raw = netem_line(line)
    (probe, _control) = convert(json.loads(raw), raw, BodyStats()).records
    assert [h.status_code for h in probe.http] == [308, None]
    assert (probe.http[-1].failure, probe.http[-1].url) == (failure, url)
    assert "ooni_unrecorded_hop" in (probe.http[-1].tag or "")


def test_complete_chains_get_no_extra_hop() -> None:
    for line in (21, 31, 40):  # a followed chain, a recorded failed hop, no redirect
        raw = netem_line(line)
        probe = convert(json.loads(raw), raw, BodyStats()).records[0]
        assert not any("ooni_unrecorded_hop" in (h.tag or "") for h in probe.http)


def test_duplicate_dns_responses_become_late_responses() -> None:
    """webconnectivity 0.5 keeps injected duplicates in x_dns_duplicate_responses."""
    raw_doc = json.loads(netem_line(40))
    udp_a = next(q for q in raw_doc["test_keys"]["queries"] if q["engine"] == "udp" and q["query_type"] == "A")
    dup = copy.deepcopy(udp_a)
    dup["answers"] = [{"answer_type": "A", "ipv4": "10.10.34.36", "ttl": None}]
    dup["t"] = 0.5
    raw_doc["test_keys"]["x_dns_duplicate_responses"] = [dup]
    probe = convert(raw_doc, json.dumps(raw_doc), BodyStats()).records[0]
    (q,) = [q for q in probe.dns if q.engine == "udp" and q.query_type == "A"]
    assert [a.value for a in q.late_responses[0].answers] == ["10.10.34.36"]
    assert q.late_responses[0].t == 0.5 and [a.value for a in q.answers] == ["93.184.216.34"]


def test_truncated_gzip_and_bad_bytes_keep_what_can_be_read(tmp_path: Path) -> None:
    good = [netem_line(40), netem_line(41)]
    blob = gzip.compress(("\n".join(good) + "\n").encode() * 50)
    (tmp_path / "cut.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    # A stray Latin-1 byte inside a JSON string: decoded with replacement, the line still imports.
    (tmp_path / "latin1.jsonl").write_bytes(good[0].replace("Default Web Page", "Caf\xe9").encode("latin-1") + b"\n")
    s = import_ooni([tmp_path], tmp_path / "ds")
    assert s.measurements > 2  # the half before the damage
    assert s.malformed == 1 and "cut.jsonl.gz" in s.errors[0] and "unreadable" in s.errors[0]


def test_directory_without_ooni_files_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = CliRunner().invoke(main, ["ooni", "import", str(tmp_path), "-o", str(tmp_path / "ds")])
    assert result.exit_code == 1 and result.output.startswith("Error: no OONI measurement files")
    assert len(result.output.strip().splitlines()) == 1
