"""Configuration (flags > VANTAGE_* > file > defaults), the default lists (global + country),
`lists show --urls`, and the run history (`vantage runs list|show`). Loopback only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from probe.config import record_consent
from tests.support.loopback_site import closed_port_url, loopback_site
from vantage.cli import main


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with loopback_site() as url:
        yield url


@pytest.fixture
def volunteer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A volunteer with their own config file and data directory, who has consented."""
    config = tmp_path / "config.toml"
    monkeypatch.setenv("VANTAGE_CONFIG", str(config))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for var in ("VANTAGE_CC", "VANTAGE_ASN", "VANTAGE_LISTS", "VANTAGE_OUTPUT", "VANTAGE_MAX_RUNTIME_S"):
        monkeypatch.delenv(var, raising=False)
    record_consent(True, config)
    return tmp_path


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args), env=env)
    return r.exit_code, r.output


def ccs(output: Path) -> set[str]:
    con = duckdb.connect()
    try:
        rows = con.sql(f"select distinct probe_cc from read_parquet('{output}/measurements/**/*.parquet', "
                       "hive_partitioning=true)").fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


def test_precedence_flag_then_env_then_file_then_default(volunteer: Path, site: str) -> None:
    code, text = invoke("config", "set", "probe.cc", "ir")
    assert code == 0, text
    code, text = invoke("config", "show", "--json")
    shown = json.loads(text)
    assert shown["probe.cc"] == {"value": "ir", "source": "file", "env": "VANTAGE_CC"}
    assert shown["probe.asn"]["source"] == "default"
    run = ("run", "--url", site, "--resolver", "127.0.0.1:9", "--no-progress")
    # file
    assert invoke(*run, "--output", str(volunteer / "a"))[0] == 0
    assert ccs(volunteer / "a") == {"IR"}
    # env over file
    assert invoke(*run, "--output", str(volunteer / "b"), env={"VANTAGE_CC": "RU"})[0] == 0
    assert ccs(volunteer / "b") == {"RU"}
    assert json.loads(invoke("config", "show", "--json", env={"VANTAGE_CC": "RU"})[1])["probe.cc"]["source"] == "env"
    # flag over env
    assert invoke(*run, "--output", str(volunteer / "c"), "--cc", "DE", env={"VANTAGE_CC": "RU"})[0] == 0
    assert ccs(volunteer / "c") == {"DE"}
    # default once unset (ZZ: unknown)
    assert invoke("config", "unset", "probe.cc")[0] == 0
    assert invoke(*run, "--output", str(volunteer / "d"))[0] == 0
    assert ccs(volunteer / "d") == {"ZZ"}
    # output from the file
    assert invoke("config", "set", "probe.output", str(volunteer / "e"))[0] == 0
    assert invoke(*run)[0] == 0
    assert ccs(volunteer / "e") == {"ZZ"}


@pytest.mark.parametrize(("args", "env", "message"), [
    (("config", "set", "probe.nope", "x"), None, "unknown setting probe.nope"),
    (("config", "set", "budget.bytes_per_day", "lots"), None, "should be a whole number"),
    (("config", "set", "consent.given", "true"), None, "`vantage consent`"),
    (("run", "--url", "http://127.0.0.1:9/"), {"VANTAGE_CC": "IRN"}, "VANTAGE_CC: a country code is two letters"),
    (("config", "show"), {"VANTAGE_MAX_RUNTIME_S": "soon"}, "$VANTAGE_MAX_RUNTIME_S"),
])
def test_bad_settings_are_one_line(volunteer: Path, args: tuple[str, ...], env: dict[str, str] | None,
                                   message: str) -> None:
    code, text = invoke(*args, env=env)
    assert code == 1
    assert message in text, text
    assert "Traceback" not in text
    assert len([ln for ln in text.splitlines() if ln.startswith("Error")]) == 1


def test_a_broken_config_file_is_one_line(volunteer: Path) -> None:
    (volunteer / "config.toml").write_text("[probe\ncc = 'IR'\n")
    code, text = invoke("run", "--url", "http://127.0.0.1:9/")
    assert code == 1 and "not valid TOML" in text and "Traceback" not in text


def test_sizes_take_suffixes(volunteer: Path) -> None:
    assert invoke("config", "set", "budget.bytes_per_day", "50M")[0] == 0
    assert json.loads(invoke("config", "show", "--json")[1])["budget.bytes_per_day"]["value"] == 50 * 1024 * 1024
    assert "budget.bytes_per_day = 52428800" in (volunteer / "config.toml").read_text().replace("[budget]\n", "budget.")


def test_default_lists_are_global_plus_the_country(volunteer: Path, site: str) -> None:
    lists = volunteer / "data" / "vantage" / "testlists"
    lists.mkdir(parents=True)
    header = "url,category_code,category_description,date_added,source,notes\n"
    other = closed_port_url()
    (lists / "global.csv").write_text(header + f"{site}g,NEWS,News Media,2024-01-01,,\n")
    (lists / "ir.csv").write_text(header + f"{site}ir,HUMR,Human Rights Issues,2024-01-01,,\n")
    (lists / "ru.csv").write_text(header + f"{other}ru,HUMR,Human Rights Issues,2024-01-01,,\n")  # trap: not IR's
    assert invoke("config", "set", "probe.cc", "IR")[0] == 0
    code, text = invoke("lists", "show", "--urls", "--json")
    assert code == 0, text
    planned = [json.loads(ln) for ln in text.splitlines()]
    assert [(p["url"], p["category"]) for p in planned] == [(f"{site}g", "NEWS"), (f"{site}ir", "HUMR")]
    out = volunteer / "out"
    code, text = invoke("run", "--resolver", "127.0.0.1:9", "--output", str(out), "--no-progress")
    assert code == 0, text
    con = duckdb.connect()
    got = {r[0] for r in con.sql(f"select input from read_parquet('{out}/measurements/**/*.parquet')").fetchall()}
    assert got == {f"{site}g", f"{site}ir"}
    # Human-readable: every URL with its category.
    code, text = invoke("lists", "show", "--urls")
    assert code == 0 and "HUMR" in text and "NEWS" in text


def test_without_lists_downloaded_run_says_how_to_get_them(volunteer: Path) -> None:
    code, text = invoke("run", "--no-progress", "--output", str(volunteer / "out"))
    assert code == 1 and "vantage lists update" in text, text


def test_runs_list_and_show(volunteer: Path, site: str) -> None:
    out = volunteer / "out"
    dead = closed_port_url()
    code, text = invoke("run", "--url", site, "--url", dead, "--resolver", "127.0.0.1:9", "--output", str(out),
                        "--no-progress")
    assert code == 0, text
    code, text = invoke("runs", "list", "--output", str(out), "--json")
    assert code == 0, text
    (run,) = json.loads(text)
    assert (run["inputs"], run["ok"], run["failed"], run["uploaded"]) == (2, 1, 1, "no")
    assert run["start"] and run["duration_s"] is not None and run["duration_s"] >= 0
    code, text = invoke("runs", "show", run["run_id"], "--output", str(out), "--json")
    assert code == 0, text
    outcomes = {o["input"]: o for o in json.loads(text)["outcomes"]}
    assert outcomes[site]["ok"] is True and outcomes[site]["failure"] is None
    assert outcomes[dead]["ok"] is False and "refused" in (outcomes[dead]["failure"] or "")
    code, text = invoke("runs", "list", "--output", str(out))
    assert code == 0 and run["run_id"] in text
    code, text = invoke("runs", "show", "20200101T000000Z-00000000", "--output", str(out))
    assert code == 1 and "no run" in text and "Traceback" not in text


def test_country_and_network_from_the_local_geo_database(volunteer: Path, site: str, tmp_path: Path) -> None:
    """Not typed: the public address a STUN server saw, looked up in the databases `vantage geo
    update` keeps in the data directory. Trap: a flag still wins over the lookup."""
    import netaddr  # mmdb-writer's dependency (test extra)
    from mmdb_writer import MMDBWriter

    from tests.probe.test_scrub_stun import NAT_ADDR, stun_thread

    geo = volunteer / "data" / "vantage" / "geo"
    geo.mkdir(parents=True)
    net = netaddr.IPSet([f"{NAT_ADDR}/32"])
    country = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    country.insert_network(net, {"country": {"iso_code": "KZ", "names": {"en": "Kazakhstan"}}})
    country.to_db_file(str(geo / "country.mmdb"))
    asn = MMDBWriter(ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True)
    asn.insert_network(net, {"autonomous_system_number": 64511, "autonomous_system_organization": "Steppe Net"})
    asn.to_db_file(str(geo / "asn.mmdb"))
    stun = stun_thread()
    server = next(stun)
    try:
        out = volunteer / "geo-out"
        run = ("run", "--url", site, "--resolver", "127.0.0.1:9", "--stun", server, "--no-progress")
        assert invoke(*run, "--output", str(out))[0] == 0
        con = duckdb.connect()
        got = con.sql(f"select distinct probe_cc, probe_asn, probe_network from read_parquet("
                      f"'{out}/measurements/**/*.parquet', hive_partitioning=true)").fetchall()
        assert got == [("KZ", "AS64511", "Steppe Net")]
        assert invoke(*run, "--output", str(volunteer / "flag-out"), "--cc", "UZ")[0] == 0
        assert ccs(volunteer / "flag-out") == {"UZ"}
    finally:
        stun.close()


def test_url_on_the_command_line_replaces_the_configured_lists(volunteer: Path, site: str) -> None:
    lst = volunteer / "configured.txt"
    lst.write_text(f"{site}configured\n")
    assert invoke("config", "set", "probe.lists", str(lst))[0] == 0
    out = volunteer / "out"
    assert invoke("run", "--url", f"{site}given", "--resolver", "127.0.0.1:9", "--output", str(out),
                  "--no-progress")[0] == 0
    con = duckdb.connect()
    got = {r[0] for r in con.sql(f"select input from read_parquet('{out}/measurements/**/*.parquet')").fetchall()}
    assert got == {f"{site}given"}
    # Trap: without --url/--list the configured list is what runs.
    assert invoke("run", "--resolver", "127.0.0.1:9", "--output", str(volunteer / "out2"), "--no-progress")[0] == 0
    got = {r[0] for r in con.sql(f"select input from read_parquet('{volunteer}/out2/measurements/**/*.parquet')").fetchall()}
    assert got == {f"{site}configured"}
