"""IP-to-ASN and IP-to-country databases: lookups in DB-IP lite, MaxMind GeoLite2 and IPinfo
layouts, one clear error for a corrupt or foreign file, and `vantage geo update` from a loopback
server (small MMDB files built here with mmdb-writer, served gzipped)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import netaddr
import pytest
from click.testing import CliRunner
from mmdb_writer import MMDBWriter

from analysis.downloads import DownloadError
from analysis.geo import (
    GeoError,
    GeoLookup,
    default_asn_db,
    default_country_db,
    update_geo,
)
from analysis.verdicts import maxmind_asn_lookup
from tests.support.loopback_site import LoopbackServer
from vantage.cli import main

# Documentation networks (RFC 5737 / RFC 3849) stand in for real ones.
NET_A, NET_B, NET_V6 = "203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32"


def build(path: Path, database_type: str, records: dict[str, dict]) -> Path:
    w = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type)
    for net, rec in records.items():
        w.insert_network(netaddr.IPSet([net]), rec)
    w.to_db_file(str(path))
    return path


def dbip_asn(path: Path) -> Path:
    return build(path, "DBIP-ASN-Lite (compat=GeoLite2-ASN)", {
        NET_A: {"autonomous_system_number": 64500, "autonomous_system_organization": "Example Transit"},
        NET_V6: {"autonomous_system_number": 64501, "autonomous_system_organization": "Example Six"},
    })


def dbip_country(path: Path) -> Path:
    return build(path, "DBIP-Country-Lite", {
        NET_A: {"continent": {"code": "AS"}, "country": {"iso_code": "ID", "names": {"en": "Indonesia"}}},
        NET_B: {"country": {"iso_code": "IR"}},
    })


def test_dbip_layout(tmp_path: Path) -> None:
    with GeoLookup(dbip_asn(tmp_path / "a.mmdb"), dbip_country(tmp_path / "c.mmdb")) as g:
        info = g.lookup("203.0.113.9")
        assert (info.asn, info.org, info.country) == ("AS64500", "Example Transit", "ID")
        assert g.lookup("2001:db8::1").asn == "AS64501"
        assert g.lookup("198.51.100.1") == type(info)(None, None, "IR")  # country only
        assert g.lookup("192.0.2.1") == type(info)(None, None, None)  # in neither
        assert g.lookup("not an address").asn is None


def test_geolite2_and_ipinfo_layouts(tmp_path: Path) -> None:
    asn = build(tmp_path / "GeoLite2-ASN.mmdb", "GeoLite2-ASN", {
        NET_A: {"autonomous_system_number": 13335, "autonomous_system_organization": "CLOUDFLARENET"}})
    country = build(tmp_path / "GeoLite2-Country.mmdb", "GeoLite2-Country", {
        NET_A: {"registered_country": {"iso_code": "US"}},  # no "country": the registration's
        NET_B: {"country": {"iso_code": "de"}, "registered_country": {"iso_code": "NL"}}})
    with GeoLookup(asn, country) as g:
        assert g.lookup("203.0.113.1") == type(g.lookup("1.1.1.1"))("AS13335", "CLOUDFLARENET", "US")
        assert g.lookup("198.51.100.1").country == "DE"
    # IPinfo's free database: one flat file with "asn" as a string, name and country together.
    flat = build(tmp_path / "ipinfo.mmdb", "ipinfo country_asn.mmdb", {
        NET_A: {"asn": "AS64511", "as_name": "Flat Net", "country_code": "KZ"}})
    with GeoLookup(flat) as g:
        info = g.lookup("203.0.113.7")
        assert (info.asn, info.org, info.country) == ("AS64511", "Flat Net", "KZ")


def test_corrupt_or_foreign_file_is_one_error_naming_it(tmp_path: Path) -> None:
    rnd = tmp_path / "random.mmdb"
    rnd.write_bytes(os.urandom(4096))
    with pytest.raises(GeoError, match=rf"^{rnd}: not a MaxMind-format \(MMDB\) database"):
        GeoLookup(rnd)
    country = dbip_country(tmp_path / "country.mmdb")
    with pytest.raises(GeoError, match=rf"^{country}: an IP-to-country database, not an IP-to-ASN one"):
        GeoLookup(asn_db=country)
    asn = dbip_asn(tmp_path / "asn.mmdb")
    with pytest.raises(GeoError, match=rf"^{asn}: an IP-to-ASN database, not an IP-to-country one"):
        GeoLookup(country_db=asn)
    # The kind is read from the records when the type name says nothing.
    unnamed = build(tmp_path / "unnamed.mmdb", "Test", {NET_A: {"country": {"iso_code": "ID"}}})
    with pytest.raises(GeoError, match="an IP-to-country database"):
        GeoLookup(asn_db=unnamed)
    # Intact metadata, garbage search tree: the lookup names the file too.
    good = asn.read_bytes()
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(bytes(len(good) - 400) + good[-400:])
    with pytest.raises(GeoError, match=rf"^{broken}: corrupt MMDB database"):
        with GeoLookup(asn_db=broken) as g:
            g.lookup("203.0.113.9")
    with pytest.raises(GeoError, match="no such file"):
        GeoLookup(tmp_path / "missing.mmdb")


# --------------------------------------------------------------------------- update, from loopback



THIS_MONTH = dt.datetime.now(dt.UTC).date().strftime("%Y-%m")


@pytest.fixture
def mmdb(tmp_path: Path) -> dict[str, bytes]:
    return {"asn": gzip.compress(dbip_asn(tmp_path / "src-asn.mmdb").read_bytes()),
            "country": gzip.compress(dbip_country(tmp_path / "src-country.mmdb").read_bytes())}


@pytest.fixture
def upstream(mmdb: dict[str, bytes]) -> Iterator[LoopbackServer]:
    server = LoopbackServer(prefix="/free", files={f"dbip-asn-lite-{THIS_MONTH}.mmdb.gz": mmdb["asn"],
                      f"dbip-country-lite-{THIS_MONTH}.mmdb.gz": mmdb["country"]})
    yield server
    server.close()


@pytest.fixture
def geo_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("VANTAGE_GEO_URL_BASE", raising=False)
    return tmp_path / "xdg" / "vantage" / "geo"


def test_update_then_defaults(upstream: LoopbackServer, geo_home: Path) -> None:
    assert default_asn_db() is None and default_country_db() is None and GeoLookup.default() is None
    result = update_geo(url_base=upstream.url)
    assert result.dest == geo_home
    assert default_asn_db() == geo_home / "asn.mmdb" and default_country_db() == geo_home / "country.mmdb"
    g = GeoLookup.default()
    assert g is not None
    with g:
        assert (g.lookup("203.0.113.5").asn, g.lookup("203.0.113.5").country) == ("AS64500", "ID")
    # The analyzer's ASN rule reads the same file.
    assert maxmind_asn_lookup(geo_home / "asn.mmdb")("203.0.113.5") == "AS64500"
    manifest = {e["file"]: e for e in json.loads((geo_home / "manifest.json").read_text())["files"]}
    assert manifest["asn.mmdb"]["url"] == f"{upstream.url}/dbip-asn-lite-{THIS_MONTH}.mmdb.gz"
    assert manifest["country.mmdb"]["rows"] > 0 and len(manifest["asn.mmdb"]["sha256"]) == 64
    assert not list(geo_home.glob(".*.tmp"))


def test_last_month_when_this_month_is_not_out(mmdb: dict[str, bytes], geo_home: Path) -> None:
    server = LoopbackServer(prefix="/free", files={"dbip-asn-lite-2026-02.mmdb.gz": mmdb["asn"], "dbip-country-lite-2026-02.mmdb.gz": mmdb["country"]})
    try:
        result = update_geo(url_base=server.url, today=dt.date(2026, 3, 1))
        assert [url.rsplit("/", 1)[1] for _, url, _ in result.files] == [
            "dbip-asn-lite-2026-02.mmdb.gz", "dbip-country-lite-2026-02.mmdb.gz"]
        # Two months back is not tried: a 404 for both is an error.
        with pytest.raises(DownloadError, match="HTTP 404"):
            update_geo(url_base=server.url, today=dt.date(2026, 5, 1))
    finally:
        server.close()


def test_offline_update_is_one_line_and_keeps_the_old_copy(upstream: LoopbackServer, geo_home: Path) -> None:
    update_geo(url_base=upstream.url)
    before = {p.name: p.read_bytes() for p in geo_home.iterdir()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = CliRunner().invoke(main, ["geo", "update", "--url-base", f"http://127.0.0.1:{port}/free", "--timeout", "5"])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "offline" in lines[0] and "nothing replaced" in lines[0], res.output
    assert {p.name: p.read_bytes() for p in geo_home.iterdir()} == before


@pytest.mark.parametrize("asn_body, expect", [
    (b"<html>captive portal</html>", "not a gzip file"),
    (gzip.compress(os.urandom(3000)), "not a MaxMind-format (MMDB) database"),
    ("country", "an IP-to-country database, not an IP-to-ASN one"),
    (500, "HTTP 500"),
])
def test_bad_download_replaces_nothing(upstream: LoopbackServer, geo_home: Path, mmdb: dict[str, bytes],
                                       asn_body: bytes | int | str, expect: str) -> None:
    update_geo(url_base=upstream.url)
    before = {p.name: p.read_bytes() for p in geo_home.iterdir()}
    upstream.files[f"dbip-asn-lite-{THIS_MONTH}.mmdb.gz"] = mmdb["country"] if asn_body == "country" else asn_body  # type: ignore[assignment]
    with pytest.raises(DownloadError) as err:
        update_geo(url_base=upstream.url)
    msg = str(err.value)
    assert expect in msg and "nothing replaced" in msg and "dbip-asn-lite" in msg and "\n" not in msg
    assert {p.name: p.read_bytes() for p in geo_home.iterdir()} == before


def test_cli_update_and_lookup(upstream: LoopbackServer, geo_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["geo", "lookup", "203.0.113.5"])
    assert res.exit_code == 1 and "vantage geo update" in res.output
    monkeypatch.setenv("VANTAGE_GEO_URL_BASE", upstream.url)
    res = CliRunner().invoke(main, ["geo", "update"])
    assert res.exit_code == 0, res.output
    assert "CC BY 4.0" in res.output and "DB-IP" in res.output
    res = CliRunner().invoke(main, ["geo", "lookup", "203.0.113.5", "192.0.2.1"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["203.0.113.5\tAS64500\tID\tExample Transit", "192.0.2.1\t-\t-\t-"]
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(os.urandom(100))
    res = CliRunner().invoke(main, ["geo", "lookup", "203.0.113.5", "--asn-db", str(bad)])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and str(bad) in res.output
