"""`vantage geo …`: download the IP-to-ASN and IP-to-country databases (DB-IP lite, CC BY 4.0)
the analyzer uses by default, and look addresses up in them."""

from __future__ import annotations

from pathlib import Path

import click

from analysis import geo
from analysis.downloads import DownloadError
from vantage.cli.options import echo_json, json_option


@click.group("geo")
def geo_group() -> None:
    """IP-to-ASN and IP-to-country databases (MMDB format).

    `vantage geo update` downloads DB-IP's free lite databases (CC BY 4.0: reports that use
    them credit "IP Geolocation by DB-IP"); the analyzer uses them when present.
    """


@geo_group.command("update")
@click.option("--url-base", envvar=geo.URL_BASE_ENV, default=None, metavar="URL",
              help=f"Fetch dbip-*-lite-YYYY-MM.mmdb.gz from URL instead of DB-IP (env {geo.URL_BASE_ENV}).")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write to (default: the user data directory).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds per download.")
def update(url_base: str | None, dest: Path | None, timeout: float) -> None:
    """Download DB-IP's "IP to ASN Lite" and "IP to Country Lite" databases (this month's, or
    last month's early in a month) into the user data directory.

    Both are checked with maxminddb before either replaces the old copy.
    """
    try:
        result = geo.update_geo(url_base=url_base, dest=dest, timeout=timeout)
    except DownloadError as exc:
        raise click.ClickException(str(exc)) from None
    for name, url, nodes in result.files:
        click.echo(f"{result.dest / name}: from {url} ({nodes} nodes)")
    click.echo("Data: IP Geolocation by DB-IP (https://db-ip.com), CC BY 4.0")


@geo_group.command("lookup")
@click.argument("ips", metavar="IP...", nargs=-1, required=True)
@click.option("--asn-db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ASN database (MMDB; default: the one `vantage geo update` downloaded).")
@click.option("--country-db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Country database (MMDB; default: the one `vantage geo update` downloaded).")
@json_option("Print a JSON array of {ip, asn, country, org} (null when unknown) instead of the lines.")
def lookup(ips: tuple[str, ...], asn_db: Path | None, country_db: Path | None, as_json: bool) -> None:
    """Print the ASN, organisation and country of each address."""
    asn_db = asn_db or geo.default_asn_db()
    country_db = country_db or geo.default_country_db()
    if asn_db is None and country_db is None:
        raise click.ClickException("no geo database: run `vantage geo update` or give --asn-db/--country-db")
    try:
        with geo.GeoLookup(asn_db, country_db) as g:
            found = [(ip, g.lookup(ip)) for ip in ips]
    except geo.GeoError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        echo_json([{"ip": ip, "asn": info.asn or None, "country": info.country or None, "org": info.org or None}
                   for ip, info in found])
        return
    for ip, info in found:
        click.echo(f"{ip}\t{info.asn or '-'}\t{info.country or '-'}\t{info.org or '-'}")
