"""`vantage locate`: where on the path the censor sits, for a target found blocked (the
path_trace experiment: the offending packet replayed with increasing IP TTL). Needs root or
CAP_NET_RAW; without it, one line saying so."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from vantage.cli.options import echo_json, json_option

# The verdict layers a TTL replay can locate, and which replay does it (tcp_ip blocking acts on
# the handshake itself, which is replayed at full TTL here: not located).
LAYER_OF_VERDICT = {"dns": "dns", "tls": "tls", "http-failure": "http", "http-diff": "http"}


def blocked_targets(verdicts_file: Path) -> list[tuple[str, str]]:
    """(input, replay layer) of each blocked verdict that a replay can locate, once each."""
    from analysis.pipeline import read_verdicts
    from vantage.cli.options import one_line_errors

    with one_line_errors(f"cannot read {verdicts_file}"):
        table, _ = read_verdicts(verdicts_file)
    out: list[tuple[str, str]] = []
    for row in table.select(["input", "status", "layer"]).to_pylist():
        layer = LAYER_OF_VERDICT.get(row["layer"] or "")
        if row["status"] == "blocked" and layer and (row["input"], layer) not in out:
            out.append((row["input"], layer))
    return out


def trace_rows(records: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for m in records:
        for tr in m.traces:
            rows.append({
                "input": m.input, "layer": tr.protocol, "ip": tr.ip, "port": tr.port, "hostname": tr.hostname,
                "failure": tr.failure or m.failure, "interference_ttl": tr.interference_ttl,
                "interference": tr.interference, "hop_before": tr.hop_before, "basis": tr.basis,
                "target_ttl": tr.target_ttl,
                "hops": [{"ttl": h.ttl, "responder": h.responder, "kind": h.kind, "detail": h.detail,
                          "answer_ttl": h.answer_ttl} for h in tr.hops],
            })
        if not m.traces:
            rows.append({"input": m.input, "layer": None, "failure": m.failure, "interference_ttl": None,
                         "interference": None, "hop_before": None, "basis": None, "target_ttl": None, "hops": []})
    return rows


@click.command("locate")
@click.argument("url", required=False)
@click.option("--layer", type=click.Choice(["dns", "tls", "http"]), default=None,
              help="What to replay: the DNS query, the TLS ClientHello, the HTTP request (default: from the URL's scheme).")
@click.option("--verdicts", "verdicts_file", type=click.Path(path_type=Path), metavar="FILE",
              help="Locate every blocked target of these verdicts (from `vantage analyze`) whose layer is dns, tls or http.")
@click.option("--resolver", metavar="IP[:PORT]", help="The resolver the DNS query goes to (needed for --layer dns).")
@click.option("--ip", "address", metavar="IP", help="The target address to trace to (default: resolve the URL's host).")
@click.option("--control-name", default="example.com", show_default=True,
              help="Benign name of the control replay (run when an answer drew no time-exceeded); '' for none.")
@click.option("--max-ttl", type=click.IntRange(1, 64), default=30, show_default=True, help="Highest TTL tried.")
@click.option("--wait", type=click.FloatRange(0.1, 10), default=1.5, show_default=True, help="Seconds to listen per TTL.")
@click.option("--tries", type=click.IntRange(1, 5), default=2, show_default=True,
              help="Sends per TTL while nothing comes back (routers rate-limit ICMP).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write the measurements (experiment path_trace) to this results directory.")
@click.option("--cc", metavar="CC", help="This vantage point's country (default: probe.cc of the config; else ZZ).")
@click.option("--asn", metavar="ASN", help="This vantage point's network, e.g. AS1234 (default: probe.asn of the config).")
@click.option("--stun", "stun_servers", multiple=True, metavar="HOST:PORT",
              help="Learn this probe's public address from a STUN server you name (in memory only), so that a "
                   "hop answering from it (a router's WAN side, carrier-grade NAT) is scrubbed. Repeatable.")
@json_option()
def locate(url: str | None, layer: str | None, verdicts_file: Path | None, resolver: str | None,
           address: str | None, control_name: str, max_ttl: int, wait: float, tries: int,
           output: Path | None, cc: str | None, asn: str | None, stun_servers: tuple[str, ...], as_json: bool) -> None:
    """Find the hop at which a censor interferes with URL (or with each blocked target of
    --verdicts FILE): the offending packet is sent with IP TTL 1, 2, ... and the first TTL that
    draws an injected answer, reset or blockpage is the censor's; the router before it is named
    from its ICMP time-exceeded. Contacts only the target (and the resolver, for dns)."""
    from probe.net.pathtrace import privilege_problem

    if (url is None) == (verdicts_file is None):
        raise click.UsageError("give a URL or --verdicts FILE (one of them)")
    problem = privilege_problem()
    if problem is not None:
        raise click.ClickException(problem)
    vantage = _vantage(cc, asn)
    jobs = blocked_targets(verdicts_file) if verdicts_file else [(str(url), layer or "")]
    if verdicts_file and not jobs:
        click.echo(f"no blocked dns, tls or http target in {verdicts_file}", err=True)
        return
    from probe.net.scrub import default_scrubber

    scrubber = default_scrubber()
    if stun_servers:
        from vantage.cli.run import _learn_public_addresses

        _learn_public_addresses(scrubber, stun_servers, bool(resolver))
    from probe.schema import new_run_id

    run_id = new_run_id()
    records = [_measure(target, job_layer or None, resolver, address, control_name, max_ttl, wait, tries,
                        vantage, scrubber, run_id) for target, job_layer in jobs]
    if output is not None:
        from probe.dataset import write_records

        write_records(output, run_id, records)
    rows = trace_rows(records)
    if as_json:
        echo_json(rows)
        return
    _render(rows)


def _vantage(cc: str | None, asn: str | None) -> Any:
    """Country and network of the rows, as `vantage run` gives them (the flag, else the config),
    so the analyzer finds the blocked verdict of the same network."""
    from probe.config import ConfigError, value
    from probe.experiments.base import Vantage

    try:
        cc = (cc or value("probe.cc") or "ZZ").upper()
        asn = asn or value("probe.asn")
        network = value("probe.network")
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not (len(cc) == 2 and cc.isalpha()):
        raise click.BadParameter(f"a country is two letters, got {cc!r}", param_hint="--cc")
    if asn:
        asn = str(asn).upper()
        asn = asn if asn.startswith("AS") else f"AS{asn}"
        if not asn[2:].isdigit():
            raise click.BadParameter(f"an ASN is AS followed by digits, got {asn!r}", param_hint="--asn")
    return Vantage(probe_cc=cc, probe_asn=asn or None, probe_network=network or None)


def _measure(url: str, layer: str | None, resolver: str | None, address: str | None, control_name: str,
             max_ttl: int, wait: float, tries: int, vantage: Any, scrubber: Any, run_id: str) -> Any:
    from probe.experiments.base import Settings, Target, measure
    from probe.experiments.registry import get

    extra: dict[str, Any] = {"path_control_name": control_name, "path_max_ttl": max_ttl, "path_wait": wait,
                             "path_tries": tries}
    if layer:
        extra["path_layer"] = layer
    if resolver:
        extra["path_resolver"] = resolver
    if address:
        extra["path_ip"] = address
    settings = Settings(resolvers=[resolver] if resolver else [], use_system_resolver=resolver is None,
                        scrubber=scrubber, extra=extra)
    return asyncio.run(measure(get("path_trace"), Target(url), settings, vantage, run_id))


def _render(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("input", "layer", "censor at TTL", "interference", "hop before", "basis", "hops / failure")
    for r in rows:
        hops = " ".join(f"{h['ttl']}:{h['responder'] or '*'}:{h['kind']}" for h in r["hops"])
        table.add_row(r["input"], r["layer"] or "-", str(r["interference_ttl"] or "-"), r["interference"] or "-",
                      r["hop_before"] or "-", r["basis"] or "-", r["failure"] or hops)
    Console().print(table)
