"""`vantage control …`: run the control helper; ask one for your country and network."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from pathlib import Path

import click

from probe.control import ControlError, fetch_whoami
from probe.control_server import ControlServer, ControlSetupError, Limits, ServerConfig
from probe.experiments.base import Settings, Vantage
from probe.net.scrub import Scrubber


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT."""
    m = re.fullmatch(r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<port>\d+)|(?P<host>[^:\[\]]+):(?P<port4>\d+)", value)
    if not m:
        raise click.BadParameter(f"expected HOST:PORT or [IPv6]:PORT, got {value!r}")
    host = m["v6"] or m["host"]
    port = int(m["port"] or m["port4"])
    if port > 65535:
        raise click.BadParameter(f"port {port} is out of range")
    return host, port


@click.group("control")
def control() -> None:
    """Control vantage points: the control helper server, and asking one who you are."""


@control.command("serve")
@click.option("--listen", default="127.0.0.1:8443", show_default=True, metavar="HOST:PORT",
              help="Address and port to listen on ([::]:PORT for IPv6; 0.0.0.0:PORT for every IPv4 address).")
@click.option("--geoip-db", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="MaxMind-format country database (e.g. GeoLite2-Country.mmdb) for /v1/whoami.")
@click.option("--asn-db", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="MaxMind-format ASN database (e.g. GeoLite2-ASN.mmdb) for /v1/whoami.")
@click.option("--allow-private", is_flag=True,
              help="Also measure loopback, private and link-local targets (labs only: lets callers reach your network).")
@click.option("--allow-net", "allow_nets", multiple=True, metavar="CIDR",
              help="Let the helper contact this one special-purpose network (e.g. a lab's 10.9.0.0/24) while "
                   "everything else non-public stays refused. Repeatable.")
@click.option("--resolver", "resolvers", multiple=True, metavar="IP[:PORT]|URL",
              help="A resolver the experiments ask (IP, IP:PORT or a DoH https:// URL). Repeatable. "
                   "When given, ONLY these resolvers are used, never the system's (as on `vantage run`).")
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False),
              help="Extra trusted root certificates (PEM) for the targets' TLS, e.g. for a lab.")
@click.option("--cc", "country", default="ZZ", show_default=True, metavar="CC",
              help="Country of this helper, stored on its control rows.")
@click.option("--asn", default=None, metavar="AS1234", help="Network (ASN) of this helper, stored on its control rows.")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False),
              help="Serve HTTPS with this certificate chain (PEM); use with --keyfile.")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), help="Private key (PEM) for --certfile.")
@click.option("--max-concurrent", type=click.IntRange(1, 256), default=Limits.max_concurrent, show_default=True,
              help="Measure requests handled at once; more are answered 503.")
@click.option("--max-targets", type=click.IntRange(1, 100), default=Limits.max_targets, show_default=True,
              help="Targets per request; more are answered 400.")
@click.option("--request-timeout", type=click.FloatRange(1, 3600), default=Limits.request_timeout, show_default=True,
              help="Seconds for all measurements of one request; longer is answered 504.")
def serve(
    listen: str, geoip_db: Path | None, asn_db: Path | None, allow_private: bool, allow_nets: tuple[str, ...],
    resolvers: tuple[str, ...],
    ca_bundle: str | None, country: str, asn: str | None, certfile: str | None,
    keyfile: str | None, max_concurrent: int, max_targets: int, request_timeout: float,
) -> None:
    """Run the control helper: measure what probes ask, from this (uncensored) network.

    Probes POST a target and the addresses they resolved to /v1/measure and get back the
    measurement made here with the same experiment code; GET /v1/whoami tells a caller its
    country and ASN (from --geoip-db/--asn-db, by default the databases `vantage geo update`
    downloaded) without sending its address back. Targets and
    addresses in the IANA special-purpose registries (loopback, private, link-local, ...) are
    refused, on every connection and redirect, unless --allow-private or --allow-net lets
    them through. See docs/control.md.
    """
    host, port = parse_listen(listen)
    for net in allow_nets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise click.BadParameter(f"not a network: {net!r} (expected e.g. 10.9.0.0/24)",
                                     param_hint="--allow-net") from None
    if not re.fullmatch(r"[A-Z]{2}", country):
        raise click.BadParameter("must be two upper-case letters", param_hint="--cc")
    if asn is not None and not re.fullmatch(r"AS\d+", asn):
        raise click.BadParameter("must look like AS1234", param_hint="--asn")
    if bool(certfile) != bool(keyfile):
        raise click.UsageError("--certfile and --keyfile go together")
    context = None
    if certfile and keyfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(certfile, keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise click.ClickException(f"cannot load {certfile} / {keyfile}: {exc}") from exc
    if geoip_db is None and asn_db is None:
        geoip_db, asn_db = _default_geo()
    config = ServerConfig(
        host=host, port=port, allow_private=allow_private, allow_nets=list(allow_nets), geoip_db=geoip_db,
        asn_db=asn_db,
        # The helper's own interface addresses are scrubbed from captured text, as on a probe.
        settings=Settings(resolvers=list(resolvers), use_system_resolver=not resolvers, ca_bundle=ca_bundle,
                          scrubber=Scrubber()),
        vantage=Vantage(role="control", probe_cc=country, probe_asn=asn),
        limits=Limits(max_concurrent=max_concurrent, max_targets=max_targets, request_timeout=request_timeout),
        ssl_context=context,
    )
    try:
        asyncio.run(_serve(config))
    except ControlSetupError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        click.echo("control helper stopped", err=True)


def _default_geo() -> tuple[Path | None, Path | None]:
    """The databases `vantage geo update` downloaded (country, ASN), used when neither
    --geoip-db nor --asn-db is given; one line says which, or how to get them."""
    from analysis.geo import default_asn_db, default_country_db

    country, asn = default_country_db(), default_asn_db()
    used = [f"{label} {path}" for label, path in (("country", country), ("ASN", asn)) if path is not None]
    if used:
        click.echo(f"whoami: using the downloaded geo database{'s' if len(used) > 1 else ''}: {'; '.join(used)} "
                   "(--geoip-db/--asn-db to use others)", err=True)
    else:
        click.echo("whoami: no geo database given or installed; run `vantage geo update` to download one "
                   "(or give --geoip-db/--asn-db)", err=True)
    return country, asn


async def _serve(config: ServerConfig) -> None:
    server = ControlServer(config)
    bound_host, bound_port = await server.start()
    scheme = "https" if config.ssl_context else "http"
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    notes = []
    if config.allow_private:
        notes.append("private targets ALLOWED (lab mode)")
    elif config.allow_nets:
        notes.append(f"also allowed: {', '.join(config.allow_nets)}")
    if not server.geo.configured:
        notes.append("no --geoip-db/--asn-db: /v1/whoami disabled")
    click.echo(f"vantage control helper listening on {scheme}://{shown}:{bound_port}"
               + (f" ({'; '.join(notes)})" if notes else ""), err=True)
    try:
        await server.serve_forever()
    finally:
        await server.close()


@control.command("whoami")
@click.argument("control_url")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for the helper.")
def whoami(control_url: str, timeout: float) -> None:
    """Ask a control helper which country and network (ASN) you are in.

    The helper does not send your address back; nothing is stored.
    """
    try:
        info = asyncio.run(fetch_whoami(control_url, timeout=timeout))
    except ControlError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"country: {info['probe_cc']}\nnetwork: {info['probe_asn'] or '-'} {info['probe_network'] or ''}".rstrip())
