"""docs/data-model.md tracks probe/schema.py: every column and nested field, every failure
string, and every SQL example runs against a small dataset."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from probe import schema as S
from probe.dataset import write_records
from tests.support.paths import DOCS

DOC = DOCS / "data-model.md"


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def sections(text: str) -> dict[str, str]:
    """Body text under each heading that names a struct path in backticks, e.g. ### `dns.answers`."""
    out: dict[str, str] = {}
    parts = re.split(r"^(#+ .*)$", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        m = re.fullmatch(r"#+ `([a-z_.]+)`.*", heading.strip())
        if m:
            out[m.group(1)] = body
    return out


def struct_fields(t: pa.DataType, path: str, found: dict[str, list[str]]) -> None:
    if pa.types.is_list(t):
        struct_fields(t.value_type, path, found)
    elif pa.types.is_struct(t):
        found[path] = [f.name for f in t]
        for f in t:
            struct_fields(f.type, f"{path}.{f.name}", found)


def test_every_top_level_column_is_documented() -> None:
    text = doc_text()
    table = text.split("## `measurements`", 1)[1].split("\n## ", 1)[0]
    missing = [f.name for f in S.FULL_SCHEMA if f"| `{f.name}` |" not in table]
    assert not missing, f"columns missing from the measurements table of docs/data-model.md: {missing}"


def test_every_nested_field_is_documented_in_its_section() -> None:
    found: dict[str, list[str]] = {}
    for f in S.FULL_SCHEMA:
        struct_fields(f.type, f.name, found)
    assert {"dns", "dns.answers", "dns.late_responses", "tcp", "tls", "http", "http.headers", "vpn", "vpn.packets"} <= set(found)
    docs = sections(doc_text())
    missing = []
    for path, names in found.items():
        body = docs.get(path)
        if body is None:
            missing.append(f"section ### `{path}`")
            continue
        missing += [f"{path}.{n}" for n in names if f"`{n}`" not in body]
    assert not missing, f"undocumented in docs/data-model.md: {missing}"


def test_every_failure_string_is_documented() -> None:
    text = doc_text()
    missing = [f for f in sorted(S.FAILURES) if f"| `{f}` |" not in text]
    assert not missing and "`unknown_failure:<detail>`" in text, f"failure strings not in the table: {missing}"


def sample_records() -> list[S.Measurement]:
    start = dt.datetime(2026, 11, 22, 9, 30, tzinfo=dt.UTC)
    probe = S.Measurement(
        measurement_id=S.new_uuid7(), run_id="20261122T093000Z-00000001", experiment="web_connectivity",
        experiment_version="0.1.0", input="https://example.org/", input_category="NEWS",
        measurement_start_time=start, probe_cc="IR", probe_asn="AS1234", runtime_s=2.0,
        dns=[S.DnsQuery(t0=0, t=0.1, failure=None, resolver="127.0.0.53:53", engine="udp", query_type="A",
                        hostname="example.org", rcode="NOERROR", answers=[S.DnsAnswer("A", "10.10.34.35", 60)],
                        late_responses=[S.DnsLateResponse(t=0.2, rcode="NOERROR", answers=[S.DnsAnswer("A", "127.0.0.9")])])],
        tcp=[S.TcpConnect(t0=0.1, t=0.2, failure="connection_reset", ip="10.10.34.35", port=443)],
        tls=[S.TlsHandshake(t0=0.2, t=0.3, failure="tls_handshake_failure", ip="10.10.34.35", port=443, sni="example.org")],
        http=[S.HttpRequest(t0=0.3, t=0.4, failure=None, url="http://example.org/", status_code=302),
              S.HttpRequest(t0=0.4, t=0.5, failure=None, url="http://blocked.example/", status_code=200,
                            headers=[S.HttpHeader("Server", "censor")], body_length=10, title="Blocked")],
    )
    control = S.Measurement(
        measurement_id=S.new_uuid7(), run_id="20261122T093000Z-00000001", experiment="web_connectivity",
        experiment_version="0.1.0", input="https://example.org/", measurement_start_time=start,
        role="control", probe_cc="DE", control_for=probe.measurement_id,
        tcp=[S.TcpConnect(t0=0.1, t=0.2, failure=None, ip="93.184.215.14", port=443)],
    )
    tunnel = S.Measurement(
        measurement_id=S.new_uuid7(), run_id="20261122T093000Z-00000001", experiment="openvpn",
        experiment_version="0.1.0", input="openvpn://192.0.2.1:1194/?transport=udp",
        measurement_start_time=start, probe_cc="IR",
        vpn=[S.VpnHandshake(t0=0, t=1, failure=None, protocol="openvpn", endpoint="192.0.2.1:1194", ip="192.0.2.1",
                            port=1194, transport="udp", handshake_ok=True,
                            packets=[S.VpnPacket(0.0, "sent", 54), S.VpnPacket(0.5, "received", 66, "P_CONTROL_HARD_RESET_SERVER_V2")])],
    )
    return [probe, control, tunnel]


@pytest.fixture
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    write_records(tmp_path, "20261122T093000Z-00000001", sample_records())
    connection = duckdb.connect()
    return connection


def test_every_sql_example_runs(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    blocks = re.findall(r"```sql\n(.*?)```", doc_text(), flags=re.S)
    assert len(blocks) >= 7  # measurements, pairing, dns, tcp, tls, http, vpn
    results = []
    for sql in blocks:
        sql = sql.replace("'results/", f"'{tmp_path}/")
        relation = con.sql(sql)  # a block may hold several statements; the last one's rows
        results.append(relation.fetchall() if relation is not None else None)
    by_table = dict(zip(["measurements", "pair", "dns", "tcp", "tls", "http", "vpn"], results, strict=False))
    # The examples return what the sample records hold, so a wrong example fails here.
    counts = by_table["measurements"]
    assert counts is not None and sorted((r[1], r[3], r[4], r[5]) for r in counts) == [
        ("DE", "web_connectivity", "control", 1), ("IR", "openvpn", "probe", 1), ("IR", "web_connectivity", "probe", 1)]
    assert by_table["pair"] is not None and len(by_table["pair"]) == 1
    dns_rows = by_table["dns"]
    assert dns_rows is not None and dns_rows[0][8] == ["10.10.34.35"] and dns_rows[0][9] is True
    assert by_table["tcp"] is not None and [(r[3], r[5]) for r in by_table["tcp"]] == [("10.10.34.35", "connection_reset")]
    http_rows = by_table["http"]
    assert http_rows is not None and http_rows[0][3:7] == ("http://blocked.example/", 200, 10, "Blocked")
    assert http_rows[0][7] == ["censor"]
    vpn_rows = by_table["vpn"]
    assert vpn_rows is not None and vpn_rows[0][3:7] == ("openvpn", "udp", 1, 1) and vpn_rows[0][8] == 1
    con.close()
