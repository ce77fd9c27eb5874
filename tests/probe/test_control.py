"""The control helper: same experiment code, bounds, address policy, whoami; all on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import httpx
import pytest
from click.testing import CliRunner

from probe import control, control_server
from probe import schema as S
from probe.control_server import ControlServer, Limits, ServerConfig
from probe.dataset import write_records
from probe.experiments.base import Settings, Target, Timeouts, Vantage, measure
from probe.experiments.registry import get as get_experiment
from probe.runner import run_targets
from tests.support.loopback_site import loopback_site
from tests.support.paths import DOCS
from vantage.cli import main

T = TypeVar("T")
PAGE = b"<html><head><title>Control lab</title></head><body>hello from the lab site</body></html>"


def lab_settings(**kw: Any) -> Settings:
    # No system resolver: nothing in these tests asks a resolver outside the machine.
    return Settings(use_system_resolver=False, resolvers=[], timeouts=Timeouts(dns=1, connect=2, tls=2, http=2), **kw)


@pytest.fixture
def site() -> Iterator[str]:
    """A local HTTP site on 127.0.0.1; its URL."""
    with loopback_site(PAGE) as url:
        yield url


def with_helper(config: ServerConfig, scenario: Callable[[str], Awaitable[T]]) -> T:
    """Run ``scenario(helper_url)`` against a helper started on 127.0.0.1 for it."""

    async def main_() -> T:
        config.host, config.port = "127.0.0.1", 0
        async with ControlServer(config) as server:
            host, port = server.address
            return await scenario(f"http://{host}:{port}")

    return asyncio.run(main_())


def probe_record(url: str, answers: list[str]) -> S.Measurement:
    return S.Measurement(
        measurement_id=S.new_uuid7(), run_id="20261122T110000Z-0000abcd", experiment="web_connectivity",
        experiment_version="0.1.0", input=url, input_category="NEWS",
        measurement_start_time=S.utcnow(), probe_cc="IR", probe_asn="AS1234",
        dns=[S.DnsQuery(t0=0, t=0.1, failure=None, resolver="127.0.0.53:53", engine="udp", query_type="A",
                        hostname="127.0.0.1", rcode="NOERROR", answers=[S.DnsAnswer("A", a) for a in answers])],
    )


def query(sql: str) -> list[tuple[Any, ...]]:
    relation = duckdb.sql(sql)
    assert relation is not None
    return relation.fetchall()


async def post(url: str, payload: Any = None, *, content: Any = None) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as client:
        if content is not None:
            return await client.post(url + control.MEASURE_PATH, content=content)
        return await client.post(url + control.MEASURE_PATH, json=payload)


# --------------------------------------------------------------------------- measuring


def test_helper_measures_local_site_and_probe_addresses(site: str, tmp_path: Path) -> None:
    probe = probe_record(site, ["127.0.0.1", "127.0.0.2"])

    async def scenario(url: str) -> list[S.Measurement]:
        return await control.fetch_control(url, probe, settings=lab_settings())

    config = ServerConfig(allow_private=True, settings=lab_settings(), vantage=Vantage(role="control", probe_cc="DE"))
    controls = with_helper(config, scenario)
    assert len(controls) == 1
    c = controls[0]
    assert (c.role, c.control_for, c.run_id, c.probe_cc) == ("control", probe.measurement_id, probe.run_id, "DE")
    assert (c.experiment, c.experiment_version, c.input, c.input_category) == ("web_connectivity", "0.1.0", site, "NEWS")
    assert c.failure is None
    # the same experiment code ran at the helper: TCP, then HTTP with the page
    assert c.tcp[0].ip == "127.0.0.1" and c.tcp[0].failure is None and c.tcp[0].tag is None
    assert c.http[-1].status_code == 200 and c.http[-1].title == "Control lab"
    # and the probe's other address was tried too, tagged (nothing listens on 127.0.0.2)
    extra = [t for t in c.tcp if t.tag == control_server.PROBE_ADDRESS_TAG]
    assert [(t.ip, t.failure) for t in extra] == [("127.0.0.2", "connection_refused")]
    assert extra[0].t0 >= c.http[-1].t0  # measured after the experiment, on the same clock

    # it is an ordinary row: written with the probe row and joined back in DuckDB
    write_records(tmp_path, probe.run_id, [probe, *controls])
    rows = query(
        f"""SELECT p.input, c.role, c.probe_cc FROM read_parquet('{tmp_path}/measurements/**/*.parquet',
               hive_partitioning = true) p
            JOIN read_parquet('{tmp_path}/measurements/**/*.parquet', hive_partitioning = true) c
              ON c.control_for = p.measurement_id"""
    )
    assert rows == [(site, "control", "DE")]
    # the example query of docs/control.md runs on such a dataset (http: no TLS rows to show)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW measurements AS SELECT * FROM read_parquet('{tmp_path}/measurements/**/*.parquet',"
                " hive_partitioning = true, union_by_name = true)")
    [example] = re.findall(r"```sql\n(.*?)```", (DOCS / "control.md").read_text(encoding="utf-8"), flags=re.S)
    assert con.sql(example).fetchall() == []  # type: ignore[union-attr]
    con.close()


def test_runner_stores_control_rows(site: str, tmp_path: Path) -> None:
    async def scenario(url: str) -> Any:
        return await run_targets(
            [Target(site, "NEWS")], "web_connectivity", lab_settings(), Vantage(probe_cc="IR"),
            output=tmp_path, progress=False, control_url=url,
        )

    summary = with_helper(ServerConfig(allow_private=True, settings=lab_settings()), scenario)
    assert summary.controls == 1
    rows = query(
        f"SELECT role, control_for, measurement_id, probe_cc FROM read_parquet('{tmp_path}/measurements/**/*.parquet',"
        " hive_partitioning = true) ORDER BY role DESC"
    )
    assert [r[0] for r in rows] == ["probe", "control"]
    assert rows[1][1] == rows[0][2] and rows[1][3] == "ZZ"


def test_measurement_json_round_trip_and_rejects_bad_records(site: str) -> None:
    async def make() -> S.Measurement:
        return await measure(get_experiment("web_connectivity"), Target(site), lab_settings(), Vantage(), "run-1")

    m = asyncio.run(make())
    m.tls = [S.TlsHandshake(t0=0, t=1, failure=None, ip="127.0.0.1", port=443, sni="a.example",
                            peer_cert_names=["a.example"], cert_valid=True)]
    wire = json.loads(json.dumps(control.measurement_to_json(m)))
    assert control.measurement_from_json(wire) == m
    for broken in (
        {**wire, "measurement_start_time": "yesterday"},
        {**wire, "role": "admin"},
        {**wire, "tcp": [{"t0": "soon", "t": 1, "failure": None, "ip": "1.1.1.1", "port": 80}]},
        {**wire, "http": [{**wire["http"][0], "failure": "made_up_failure"}]},
        {k: v for k, v in wire.items() if k != "input"},
        ["not", "an", "object"],
    ):
        with pytest.raises(ValueError):
            control.measurement_from_json(broken)


# --------------------------------------------------------------------------- policy


def test_address_policy() -> None:
    refused = {
        "127.0.0.1": "loopback", "::1": "loopback", "10.0.0.1": "private", "192.168.1.1": "private",
        "172.16.5.4": "private", "169.254.169.254": "link-local", "fe80::1": "link-local",
        "224.0.0.1": "multicast", "0.0.0.0": "unspecified", "240.0.0.1": "reserved",
        "::ffff:10.1.2.3": "private", "100.64.0.1": "shared address space", "fd00::1": "private",
    }
    for address, reason in refused.items():
        assert control.address_refusal(address) == reason, address
    for public in ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "8.8.8.8"):
        assert control.address_refusal(public) is None, public


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1:8080/", "http://10.0.0.1/", "https://169.254.10.20/", "http://[::1]/", "http://localhost/",
     "tor://192.168.0.10:9001/", "http://0.0.0.0/"],
)
def test_private_targets_refused_without_flag(target: str) -> None:
    async def scenario(url: str) -> httpx.Response:
        return await post(url, {"experiment": "web_connectivity", "input": target})

    resp = with_helper(ServerConfig(settings=lab_settings()), scenario)
    assert resp.status_code == 403
    error = resp.json()["error"]
    assert error["code"] == "forbidden_target"
    assert "only public targets" in error["message"] and "\n" not in error["message"]


def test_private_probe_addresses_refused_without_flag() -> None:
    # The target is a public address literal: refused before anything is measured, so no
    # packet leaves the machine.
    async def scenario(url: str) -> httpx.Response:
        return await post(url, {"experiment": "web_connectivity", "input": "http://93.184.215.14/",
                                "addresses": ["93.184.215.14", "10.10.34.35", "169.254.1.1"]})

    resp = with_helper(ServerConfig(settings=lab_settings()), scenario)
    assert resp.status_code == 403
    error = resp.json()["error"]
    assert error["code"] == "forbidden_address" and error["addresses"] == ["10.10.34.35", "169.254.1.1"]


def test_client_drops_refused_addresses_and_retries(site: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A helper whose policy (for this test) refuses only 127.0.0.3: a lying resolver's answer
    # must not cost the probe its control.
    monkeypatch.setattr(control_server, "address_refusal", lambda a: "private" if a == "127.0.0.3" else None)

    async def allow_all(host: str, **kw: Any) -> None:
        return None

    monkeypatch.setattr(control_server, "host_refusal", allow_all)
    probe = probe_record(site, ["127.0.0.3", "127.0.0.2"])

    async def scenario(url: str) -> list[S.Measurement]:
        return await control.fetch_control(url, probe)

    [c] = with_helper(ServerConfig(settings=lab_settings()), scenario)
    assert [t.ip for t in c.tcp if t.tag == control_server.PROBE_ADDRESS_TAG] == ["127.0.0.2"]


# --------------------------------------------------------------------------- bounds


def test_bounds_and_bad_requests(site: str) -> None:
    async def scenario(url: str) -> dict[str, httpx.Response]:
        big = {"experiment": "web_connectivity", "input": site, "padding": "x" * 100_000}

        async def chunks() -> Any:
            for _ in range(40):
                yield b"x" * 4096

        return {
            "oversized": await post(url, big),
            "oversized_chunked": await post(url, content=chunks()),
            "too_many_targets": await post(url, {"experiment": "web_connectivity",
                                                 "targets": [{"input": f"{site}?n={i}"} for i in range(11)]}),
            "too_many_addresses": await post(url, {"experiment": "web_connectivity", "input": site,
                                                   "addresses": [f"127.0.1.{i}" for i in range(17)]}),
            "bad_json": await post(url, content=b"{not json"),
            "unknown_experiment": await post(url, {"experiment": "nmap", "input": site}),
            "bad_input": await post(url, {"experiment": "web_connectivity", "input": "ftp://x.example/"}),
            "bad_address": await post(url, {"experiment": "web_connectivity", "input": site, "addresses": ["me"]}),
        }

    r = with_helper(ServerConfig(allow_private=True, settings=lab_settings()), scenario)
    expected = {
        "oversized": (413, "too_large"), "oversized_chunked": (413, "too_large"),
        "too_many_targets": (400, "too_many_targets"), "too_many_addresses": (400, "too_many_addresses"),
        "bad_json": (400, "bad_json"), "unknown_experiment": (400, "unknown_experiment"),
        "bad_input": (400, "invalid_input"), "bad_address": (400, "bad_request"),
    }
    got = {k: (resp.status_code, resp.json()["error"]["code"]) for k, resp in r.items()}
    assert got == expected


def test_routes_and_raw_http(site: str) -> None:
    async def scenario(url: str) -> tuple[dict[str, httpx.Response], bytes]:
        async with httpx.AsyncClient(trust_env=False) as client:
            out = {
                "info": await client.get(url + control.INFO_PATH),
                "get_measure": await client.get(url + control.MEASURE_PATH),
                "missing": await client.get(url + "/admin"),
                "whoami_unconfigured": await client.get(url + control.WHOAMI_PATH),
            }
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        raw = await reader.read()
        writer.close()
        await writer.wait_closed()
        return out, raw

    r, raw = with_helper(ServerConfig(settings=lab_settings()), scenario)
    info = r["info"].json()
    assert r["info"].status_code == 200 and "web_connectivity" in info["experiments"]
    assert info["limits"]["max_body"] == 64 * 1024 and info["whoami"] is False
    assert r["get_measure"].status_code == 405
    assert r["missing"].status_code == 404
    # without databases whoami still tells the caller the address it saw (for its scrubber)
    assert (r["whoami_unconfigured"].status_code, r["whoami_unconfigured"].json()) == (200, {"public_address": "127.0.0.1"})
    assert raw.startswith(b"HTTP/1.1 400 ") and b"bad_http" in raw


@pytest.fixture
def silent_site() -> Iterator[str]:
    """Accepts connections and never answers: a measurement of it runs until its HTTP timeout."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        sock.close()


def test_busy_helper_answers_503_and_slow_request_504(silent_site: str) -> None:
    settings = lab_settings()
    settings.timeouts = Timeouts(dns=1, connect=1, tls=1, http=1.5)

    async def scenario(url: str) -> tuple[httpx.Response, httpx.Response]:
        first = asyncio.ensure_future(post(url, {"experiment": "web_connectivity", "input": silent_site}))
        async with httpx.AsyncClient(trust_env=False) as client:
            while (await client.get(url + control.INFO_PATH)).json()["in_progress"] == 0:
                await asyncio.sleep(0.02)  # until the first request holds the only slot
        second = await post(url, {"experiment": "web_connectivity", "input": silent_site})
        return await first, second

    first, second = with_helper(
        ServerConfig(allow_private=True, settings=settings, limits=Limits(max_concurrent=1)), scenario
    )
    assert first.status_code == 200
    assert first.json()["measurements"][0]["http"][-1]["failure"] == "generic_timeout"
    assert second.status_code == 503 and second.json()["error"]["code"] == "busy"
    assert second.headers["retry-after"] == "5"

    async def slow(url: str) -> httpx.Response:
        return await post(url, {"experiment": "web_connectivity", "input": silent_site})

    resp = with_helper(ServerConfig(allow_private=True, settings=settings, limits=Limits(request_timeout=0.5)), slow)
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"


# --------------------------------------------------------------------------- whoami


def write_mmdbs(tmp_path: Path) -> tuple[Path, Path]:
    """A country and an ASN database in MaxMind format, covering loopback."""
    netaddr = pytest.importorskip("netaddr", reason="netaddr (mmdb-writer's dependency) is not installed")
    mmdb_writer = pytest.importorskip("mmdb_writer", reason="mmdb-writer (a test extra) is not installed")
    country = mmdb_writer.MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    country.insert_network(netaddr.IPSet(["127.0.0.0/8"]), {"country": {"iso_code": "DE", "names": {"en": "Germany"}}})
    asn = mmdb_writer.MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    asn.insert_network(netaddr.IPSet(["127.0.0.0/8"]),
                       {"autonomous_system_number": 64500, "autonomous_system_organization": "Lab Net"})
    paths = tmp_path / "country.mmdb", tmp_path / "asn.mmdb"
    country.to_db_file(str(paths[0]))
    asn.to_db_file(str(paths[1]))
    return paths


def test_whoami_tells_country_asn_and_the_address_to_the_caller_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    geoip, asn = write_mmdbs(tmp_path)

    async def scenario(url: str) -> tuple[httpx.Response, dict[str, str | None]]:
        async with httpx.AsyncClient(trust_env=False) as client:
            raw = await client.get(url + control.WHOAMI_PATH)
        return raw, await control.fetch_whoami(url)

    caplog.set_level("DEBUG")
    raw, info = with_helper(ServerConfig(geoip_db=geoip, asn_db=asn, settings=lab_settings()), scenario)
    assert raw.status_code == 200
    assert raw.json() == {"public_address": "127.0.0.1", "probe_cc": "DE", "probe_asn": "AS64500", "probe_network": "Lab Net"}
    assert info == {"public_address": "127.0.0.1", "probe_cc": "DE", "probe_asn": "AS64500", "probe_network": "Lab Net"}
    helper_lines = [r.getMessage() for r in caplog.records if r.name.startswith("probe.")]
    assert any("/v1/whoami" in line for line in helper_lines)
    assert not any("127.0.0.1" in line for line in helper_lines), helper_lines  # the helper never logs it


def test_cli_serve_and_whoami(tmp_path: Path) -> None:
    geoip, asn = write_mmdbs(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from vantage.cli import main; main()", "control", "serve", "--listen", "127.0.0.1:0",
         "--geoip-db", str(geoip), "--asn-db", str(asn)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("vantage control helper listening on http://127.0.0.1:"), line
        url = line.split()[5]
        result = CliRunner().invoke(main, ["control", "whoami", url])
        assert result.exit_code == 0, result.output
        assert result.output == "country: DE\nnetwork: AS64500 Lab Net\n"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"not a database")
    result = runner.invoke(main, ["control", "serve", "--listen", "127.0.0.1:0", "--asn-db", str(bad)])
    assert result.exit_code == 1 and result.output.startswith("Error: cannot open MaxMind database")
    assert result.output.count("\n") == 1
    result = runner.invoke(main, ["control", "serve", "--listen", "nowhere"])
    assert result.exit_code == 2 and "expected HOST:PORT" in result.output
    result = runner.invoke(main, ["control", "serve", "--listen", "127.0.0.1:0", "--allow-net", "10.9.0.0/33"])
    assert result.exit_code == 2 and "not a network: '10.9.0.0/33'" in result.output
    # a helper that is not there: one line naming it
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = runner.invoke(main, ["control", "whoami", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 1 and result.output == (
        f"Error: control helper http://127.0.0.1:{port}/v1/whoami: cannot connect (connection_refused)\n"
    )




# --------------------------------------------------------------------------- in the loopback lab


def test_control_checks_probe_answers_in_the_lab(loopback_lab: Any, tmp_path: Path) -> None:
    """The probe asks the censoring resolver, the helper the honest one. The geo-DNS answer the
    probe got validates over TLS from the control (not censorship); the bogon does not connect."""
    lab = loopback_lab
    timeouts = Timeouts(dns=2, connect=3, tls=3, http=3)
    probe_settings = Settings(resolvers=[lab.censoring_resolver], use_system_resolver=False,
                              ca_bundle=str(lab.ca_bundle), timeouts=timeouts)
    helper_settings = Settings(resolvers=[lab.honest_resolver], use_system_resolver=False,
                               ca_bundle=str(lab.ca_bundle), timeouts=timeouts)
    cdn, bogon = lab.url("cdn.lab.test", "https"), lab.url("dns-bogon.lab.test", "https")

    async def scenario(url: str) -> Any:
        return await run_targets([Target(cdn), Target(bogon)], "web_connectivity", probe_settings,
                                 Vantage(probe_cc="IR"), output=tmp_path, progress=False, control_url=url)

    summary = with_helper(ServerConfig(allow_private=True, settings=helper_settings), scenario)
    assert summary.controls == 2
    rows = [S.row_to_record(r) for r in duckdb.read_parquet(
        f"{tmp_path}/measurements/**/*.parquet", hive_partitioning=True).to_arrow_table().to_pylist()]
    probes = {m.input: m for m in rows if m.role == "probe"}
    controls = {m.input: m for m in rows if m.role == "control"}
    assert {c.control_for for c in controls.values()} == {m.measurement_id for m in probes.values()}

    from vantage.lab import plan

    # geo-DNS: the probe got the other region's server; from the control it validates for the SNI
    assert plan.CDN_ALT_IP in control.probe_addresses(probes[cdn])
    checked = {t.ip: t for t in controls[cdn].tls if t.tag == control_server.PROBE_ADDRESS_TAG}
    assert checked[plan.CDN_ALT_IP].cert_valid is True and checked[plan.CDN_ALT_IP].sni == "cdn.lab.test"
    assert all(t.cert_valid for t in controls[cdn].tls if t.tag is None)  # the control's own answer
    # bogon: the probe's answer is a closed address; the control's own answer serves the site
    assert control.probe_addresses(probes[bogon]) == [plan.BOGON_IP]
    tried = [t for t in controls[bogon].tcp if t.tag == control_server.PROBE_ADDRESS_TAG]
    assert [(t.ip, t.failure) for t in tried] == [(plan.BOGON_IP, "connection_refused")]
    assert controls[bogon].http[-1].status_code == 200


def test_helper_over_https_with_a_private_ca(tmp_path: Path) -> None:
    import ssl

    import trustme

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    geoip, asn = write_mmdbs(tmp_path)

    async def scenario(url: str) -> tuple[dict[str, str | None], str]:
        https = url.replace("http://", "https://")
        info = await control.fetch_whoami(https, ca_bundle=str(ca_file))
        with pytest.raises(control.ControlError) as untrusted:
            await control.fetch_whoami(https)  # system roots only: the private CA is not trusted
        return info, str(untrusted.value)

    info, error = with_helper(ServerConfig(geoip_db=geoip, asn_db=asn, ssl_context=server_context), scenario)
    assert info["probe_asn"] == "AS64500"
    assert "\n" not in error and error.endswith("/v1/whoami: cannot connect (ssl_unknown_authority)"), error


def test_names_resolving_to_private_addresses_are_refused(loopback_lab: Any) -> None:
    # The helper resolves the name as its experiments would: here only with the lab's honest
    # resolver, which answers a 127.64.x.y address.
    helper_settings = Settings(resolvers=[loopback_lab.honest_resolver], use_system_resolver=False)
    url = loopback_lab.url("www.lab.test", "http")

    async def scenario(helper: str) -> httpx.Response:
        return await post(helper, {"experiment": "web_connectivity", "input": url})

    resp = with_helper(ServerConfig(settings=helper_settings), scenario)
    assert resp.status_code == 403
    error = resp.json()["error"]
    assert error["code"] == "forbidden_target" and error["input"] == url
    assert "www.lab.test resolves to 127.64.1.1, which is loopback" in error["message"]


def test_probe_addresses_include_late_replies() -> None:
    m = probe_record("https://x.example/", ["10.10.34.35"])
    m.dns[0].late_responses = [S.DnsLateResponse(t=0.2, rcode="NOERROR", answers=[
        S.DnsAnswer("A", "93.184.215.14"), S.DnsAnswer("CNAME", "cdn.example"), S.DnsAnswer("A", "10.10.34.35")])]
    m.dns.append(S.DnsQuery(t0=0, t=1, failure=None, resolver="192.0.2.53:53", engine="udp", query_type="A",
                            hostname="x.example", answers=[S.DnsAnswer("A", "198.51.100.7")], tag="injection_check"))
    assert control.probe_addresses(m) == ["10.10.34.35", "93.184.215.14"]


# --------------------------------------------------------------------------- default geo databases


def _serve_config(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[ServerConfig, str]:
    """`vantage control serve ARGS` up to the point it would start serving: the config and what it printed."""
    from vantage.cli import control as control_cli

    seen: list[ServerConfig] = []

    async def fake_serve(config: ServerConfig) -> None:
        seen.append(config)

    monkeypatch.setattr(control_cli, "_serve", fake_serve)
    result = CliRunner().invoke(main, ["control", "serve", *args])
    assert result.exit_code == 0, result.output
    return seen[0], result.output


def _mmdb(path: Path, database_type: str, record: dict[str, Any]) -> Path:
    import netaddr
    from mmdb_writer import MMDBWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type)
    w.insert_network(netaddr.IPSet(["203.0.113.0/24"]), record)  # RFC 5737 documentation network
    w.to_db_file(str(path))
    return path


def test_serve_uses_the_downloaded_geo_databases_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from analysis.geo import geo_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    asn = _mmdb(geo_dir() / "asn.mmdb", "DBIP-ASN-Lite (compat=GeoLite2-ASN)",
                {"autonomous_system_number": 64500, "autonomous_system_organization": "Example Transit"})
    country = _mmdb(geo_dir() / "country.mmdb", "DBIP-Country-Lite", {"country": {"iso_code": "ID"}})
    config, out = _serve_config(monkeypatch, [])
    print(out)
    assert (config.asn_db, config.geoip_db) == (asn, country)
    lines = [line for line in out.splitlines() if "geo database" in line]
    assert len(lines) == 1 and str(asn) in lines[0] and str(country) in lines[0], out
    # the helper answers whoami from them
    geo = control_server.GeoLookup(config.geoip_db, config.asn_db)
    try:
        assert geo.lookup("203.0.113.7") == {"probe_cc": "ID", "probe_asn": "AS64500",
                                             "probe_network": "Example Transit"}
    finally:
        geo.close()
    # Trap: a database given by hand wins, and the downloaded ones are not mixed in.
    mine = _mmdb(tmp_path / "mine.mmdb", "GeoLite2-ASN", {"autonomous_system_number": 64511})
    config, out = _serve_config(monkeypatch, ["--asn-db", str(mine)])
    assert (config.asn_db, config.geoip_db) == (mine, None) and "downloaded" not in out


def test_serve_without_any_geo_database_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "empty"))
    config, out = _serve_config(monkeypatch, [])
    assert (config.asn_db, config.geoip_db) == (None, None)
    assert "vantage geo update" in out and "no geo database" in out, out
