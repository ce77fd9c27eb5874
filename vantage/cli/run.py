"""`vantage run`: measure a list of targets with one experiment and write Parquet."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import sys
from pathlib import Path
from typing import Any

import click
import platformdirs
from rich.console import Console
from rich.table import Table

from probe.config import SETTINGS, ConfigError, effective
from probe.dataset import StoreError, atomic_write_text, read_manifest, run_files, run_lock, write_manifest
from probe.experiments import registry
from probe.experiments.base import Experiment, InputError, Settings, Target, Timeouts, Vantage
from probe.runner import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PER_HOST,
    STOP_INTERRUPTED,
    RunSummary,
    run_phases,
)
from vantage.cli.consent import ensure_consent
from vantage.cli.options import json_option, output_options
from vantage.cli.upload import do_upload, upload_options

# Options a resumed run takes from its manifest unless given again on the command line.
_RESUMABLE = (
    "lists", "urls", "categories", "experiment", "resolvers", "role", "cc", "asn", "network",
    "timeout", "ca_bundle", "injection_target", "control", "anchors", "anchors_file", "concurrency",
    "messaging_endpoints",
    "per_host",
    "stun_servers", "public_nets", "no_quic",
    "download_bytes", "download_time",
)
# Not remembered: --max-runtime is a budget for one invocation, --resume and --output name
# the run, --no-progress is about the terminal at hand.
_MAX_PROBLEMS_SHOWN = 20


def default_output() -> Path:
    return Path(platformdirs.user_data_dir("vantage", appauthor=False)) / "results"


# --------------------------------------------------------------------------- option checks


def _resolver(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    from probe.net.dns import parse_resolver

    for v in values:
        if v.lower().startswith("https://"):
            continue  # a DoH URL
        try:
            parse_resolver(v)
        except ValueError:
            raise click.BadParameter(f"{v!r} is not IP, IP:PORT, [IPv6]:PORT or an https:// DoH URL") from None
    return values


def _cc(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z]{2}", value):
        raise click.BadParameter(f"a country code is two letters, got {value!r}")
    return value.upper() if value else value


def _asn(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    m = re.fullmatch(r"(?i)(?:AS)?(\d{1,10})", value.strip())
    if not m or int(m.group(1)) >= 2**32:
        raise click.BadParameter(f"an AS number is N or ASN (e.g. 64496 or AS64496), got {value!r}")
    return f"AS{int(m.group(1))}"


def _run_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", value):
        raise click.BadParameter(f"a run id has only letters, digits, '.', '_' and '-', got {value!r}")
    return value


def _injection_target(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from probe.net.dns import parse_resolver

    try:
        ip, _ = parse_resolver(value)
        ipaddress.ip_address(ip)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not IP or IP:PORT") from None
    return value


def _cidr(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise click.BadParameter(f"{v!r} is not a network (CIDR)") from None
    return values


# --------------------------------------------------------------------------- the command


@click.command("run")
@click.option("--list", "lists", multiple=True, metavar="LIST",
              help="A target list: a file (Citizen Lab CSV or one URL per line), a downloaded list "
                   "name (global, ir, ...) or 'vantage'. Repeatable.")
@click.option("--url", "urls", multiple=True, metavar="URL", help="A target given directly. Repeatable.")
@click.option("--category", "categories", multiple=True, metavar="CODE",
              help="Only list entries of this Citizen Lab category code. Repeatable.")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Dataset directory (default: the user data directory's results/).")
@click.option("--experiment", type=click.Choice(sorted(registry.EXPERIMENTS)), default=None,
              help="What to measure (default: web_connectivity).")
@click.option("--resolver", "resolvers", multiple=True, metavar="IP[:PORT]", callback=_resolver,
              help="A resolver to ask (IP, IP:PORT or a DoH https:// URL). Repeatable. When given, "
                   "ONLY these resolvers are used, never the system's.")
@click.option("--role", type=click.Choice(["probe", "control"]), default=None,
              help="probe (default) or control: a control run from an uncensored network.")
@click.option("--cc", callback=_cc, default=None, help="The vantage point's country code (default ZZ: unknown).")
@click.option("--asn", callback=_asn, default=None, help="The vantage point's network, e.g. AS64496.")
@click.option("--network", default=None, help="A name for the vantage point's network (e.g. an ISP).")
@click.option("--concurrency", type=click.IntRange(min=1), default=DEFAULT_CONCURRENCY, show_default=True,
              help="Measurements at once.")
@click.option("--per-host", type=click.IntRange(min=1), default=DEFAULT_PER_HOST, show_default=True,
              help="Measurements of one host at once.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Seconds per TCP/TLS/HTTP/QUIC step (default 10; DNS waits at most 4).")
@click.option("--max-runtime", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Stop after S seconds; what is unfinished is measured by --resume.")
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Extra trusted root certificates (PEM), e.g. for a lab or an enterprise network.")
@click.option("--injection-target", callback=_injection_target, default=None, metavar="IP[:PORT]",
              help="dns_consistency: an address known to run NO resolver; any answer from it is "
                   "injected. Without it the injection check is skipped.")
@click.option("--download-bytes", type=click.IntRange(min=1024), default=None, metavar="BYTES",
              help="throughput: stop each download after this many body bytes (default 4194304, 4 MiB).")
@click.option("--download-time", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="throughput: stop each download after S seconds of transfer (default 8).")
@click.option("--anchors", is_flag=True,
              help="First measure the shipped anchors (DNS root servers, public anycast resolvers: "
                   "real internet addresses), the heartbeat that tells a shutdown from blocking.")
@click.option("--anchors-file", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="With --anchors: measure these anchors instead of the shipped ones (same CSV format: "
                   "dns://IP, tcp://IP:PORT, http(s)://; e.g. a lab's, or servers your network always reaches).")
@click.option("--messaging-endpoints", type=click.Path(exists=True, dir_okay=False), default=None, metavar="FILE",
              help="signal, telegram, whatsapp, facebook_messenger: measure the endpoints of this list "
                   "(testlists/messaging.csv format) instead of the shipped or updated one (e.g. a lab's).")
@click.option("--resume", "resume", default=None, metavar="RUN_ID", callback=_run_id,
              help="Continue a run: measure only the inputs it has no record of yet.")
@click.option("--control", default=None, metavar="URL",
              help="A control helper (`vantage control serve`) to measure each target from an "
                   "uncensored network as well.")
@click.option("--stun", "stun_servers", multiple=True, metavar="HOST:PORT",
              help="A STUN server to ask for this network's public address (kept in memory, only to "
                   "scrub it from what is written). Repeatable, e.g. one IPv4 and one IPv6 server.")
@click.option("--public-net", "public_nets", multiple=True, metavar="CIDR", callback=_cidr,
              help="Treat this network as public addresses (labs, intranets): when the public "
                   "address is unknown, its literals are scrubbed like globally routable ones. Repeatable.")
@click.option("--no-quic", is_flag=True,
              help="web_connectivity: skip the QUIC / HTTP/3 step of https targets (UDP 443 to the "
                   "resolved addresses, beside TCP/TLS/HTTP; waited for only when the site's HTTPS "
                   "answer advertises h3 in Alt-Svc, or gave no answer).")
@click.option("--no-progress", is_flag=True, help="No progress bar (it is off anyway when not on a terminal).")
@click.option("--upload", "upload_url", default=None, metavar="URL", help="Then upload to this collector (see `vantage upload`).")
@upload_options
@json_option("Print the summary as one JSON object instead of the table.")
@click.option("--continue-unfinished", is_flag=True,
              help="Resume the newest run a budget or Ctrl-C stopped, if any; else start a new run "
                   "(what `vantage schedule` runs).")
@output_options
@click.pass_context
def run(ctx: click.Context, /, quiet: bool, as_json: bool, **opts: Any) -> None:
    """Measure targets and write the results as Parquet.

    Each input of the lists (or --url) is measured once by the experiment and stored as one
    row under OUTPUT/measurements/. Ctrl-C stops cleanly: what was measured is written, and
    `vantage run --resume RUN_ID` measures the rest. Without --list or --url: the configured
    lists, else the global list plus the country's (downloaded by `vantage lists update`).
    Options not given come from VANTAGE_* variables, then the config file (`vantage config show`).
    """
    budgets = _apply_config(ctx, opts)
    output: Path = opts["output"] or default_output()
    run_id: str | None = opts["resume"]
    if run_id is None and opts["continue_unfinished"]:
        run_id = _unfinished_run(output)
    if run_id is not None:
        _apply_manifest(ctx, opts, output, run_id)
    experiment = registry.get(opts["experiment"] or "web_connectivity")
    if experiment.name == "throughput" and ctx.get_parameter_source("concurrency") in (
            None, click.core.ParameterSource.DEFAULT):
        # Downloads side by side share the link: each would measure a share of it, not the path
        # (and the analyzer compares a target's speed with the other hosts' as the link's).
        opts["concurrency"] = 1
    if not opts["lists"] and not opts["urls"] and experiment.name != "anchors" and not experiment.default_targets():
        opts["lists"] = _default_lists(opts["cc"])
    targets = _targets(opts, experiment)
    if not targets:
        raise click.ClickException("nothing to measure: the lists and --url gave no usable input")
    ensure_consent()
    from probe.budget import byte_budget_check, bytes_left_today

    left = bytes_left_today(output, budgets.get("budget.bytes_per_day"))
    if left is not None and left <= 0:
        raise click.ClickException(
            f"the daily data budget ({budgets['budget.bytes_per_day']} bytes, budget.bytes_per_day) is spent; "
            "the next run after midnight UTC measures again")

    timeouts = Timeouts.uniform(opts["timeout"]) if opts["timeout"] else Timeouts()
    extra: dict[str, Any] = {}
    if opts["injection_target"]:
        extra["injection_target"] = opts["injection_target"]
    if opts["no_quic"]:
        extra["quic"] = False  # probe.experiments.web_connectivity.QUIC_OPTION
    if opts["download_bytes"]:
        extra["download_byte_cap"] = opts["download_bytes"]
    if opts["download_time"]:
        extra["download_time_cap"] = opts["download_time"]
    if opts["messaging_endpoints"]:
        extra["messaging_endpoints"] = _checked_messaging_endpoints(opts["messaging_endpoints"], experiment)
    scrubber = _scrubber()
    settings = Settings(
        resolvers=list(opts["resolvers"]),
        use_system_resolver=not opts["resolvers"],
        timeouts=timeouts,
        ca_bundle=opts["ca_bundle"],
        scrubber=scrubber,
        extra=extra,
    )
    vantage = Vantage(
        role=opts["role"] or "probe",
        probe_cc=opts["cc"] or "ZZ",
        probe_asn=opts["asn"],
        probe_network=opts["network"],
    )
    control_url = opts["control"]
    public: str | None = None
    if control_url:
        public = _vantage_from_helper(vantage, control_url, settings.ca_bundle, opts)
        if public is not None and not ipaddress.ip_address(public).is_loopback:
            # In memory only: scrubbed from records and logs. (A helper on this machine sees
            # loopback: nothing stands between, the interface addresses are known already.)
            scrubber.add(public)
    seen = _learn_public_addresses(scrubber, opts["stun_servers"], bool(opts["resolvers"]))
    if public is not None:
        seen.append(public)
    learned = bool(seen)
    _vantage_from_geo_db(vantage, seen, opts)

    if opts["anchors_file"] and not opts["anchors"]:
        raise click.UsageError("--anchors-file goes with --anchors")
    if run_id is None:
        from probe.schema import new_run_id

        run_id = new_run_id()
    try:
        # Held until the command ends (click closes it): a second `--resume` of this run while
        # this one runs stops here with one line, before it rewrites the manifest or measures.
        ctx.with_resource(run_lock(output, run_id))
        write_manifest(output, run_id, _manifest_options(opts))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write to {output}: {exc.strerror or exc}") from None

    phases: list[tuple[str, list[Target]]] = [(experiment.name, targets)]
    if opts["anchors"] and experiment.name != "anchors":
        anchors = registry.get("anchors")
        own = (opts["anchors_file"],) if opts["anchors_file"] else ()
        phases.insert(0, (anchors.name, _targets({**opts, "lists": own, "urls": (), "categories": ()}, anchors)))
    err = Console(stderr=True)
    err.print(
        (f"Measuring {len(phases[0][1])} anchors, then " if len(phases) > 1 else "Measuring ")
        + f"{len(targets)} input(s) with {experiment.name}; "
        + (f"resolvers: {', '.join(settings.resolvers)} only" if settings.resolvers else "resolver: the system's")
        + (f"; control helper: {control_url}" if control_url else "")
        + f"; writing to {output}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    _announce_privacy(scrubber, learned=learned, public_nets=opts["public_nets"])
    try:
        summary = asyncio.run(
            run_phases(
                phases,
                settings,
                vantage,
                output=output,
                run_id=run_id,
                concurrency=opts["concurrency"],
                per_host=opts["per_host"],
                max_runtime=opts["max_runtime"],
                progress=not opts["no_progress"],
                control_url=control_url,
                stop_check=byte_budget_check(left) if left is not None else None,
            )
        )
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    _after_run(summary, output, budgets, quiet)
    if as_json:
        import json

        click.echo(json.dumps({
            "run_id": summary.run_id, "output": str(summary.output), "stopped": summary.stopped,
            "counts": {k: vars(c) for k, c in summary.counts.items()}, "skipped": summary.skipped,
            "cancelled": summary.cancelled, "not_started": summary.not_started, "controls": summary.controls,
            "files": [str(f) for f in summary.files], "records_written": summary.records_written,
            "wall_s": round(summary.wall_s, 3)}, indent=2))
    elif not quiet:
        _render(summary)
    if opts["upload_url"]:  # what was measured stays queued if the collector is out of reach
        do_upload(output, opts["upload_url"], proxy=opts["proxy"], token=opts["token"], collector_ca=opts["collector_ca"],
                  max_rate=opts["max_rate"], progress=not opts["no_progress"], fail_offline=False)
    if summary.stopped == STOP_INTERRUPTED:
        sys.exit(130)


# Config keys -> `vantage run` parameters (flags win; then VANTAGE_*, then the file).
_CONFIG_PARAMS = {
    "probe.cc": ("cc", _cc), "probe.asn": ("asn", _asn), "probe.network": ("network", None),
    "probe.lists": ("lists", None), "probe.categories": ("categories", None),
    "probe.resolvers": ("resolvers", _resolver), "probe.control": ("control", None),
    "probe.output": ("output", None), "budget.max_runtime_s": ("max_runtime", None),
}


def _apply_config(ctx: click.Context, opts: dict[str, Any]) -> dict[str, Any]:
    """Fill options not given on the command line from the environment and the config file;
    returns the budget settings."""
    try:
        eff = effective()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    given = {name for name in ("lists", "urls")
             if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)}
    for key, (param, check) in _CONFIG_PARAMS.items():
        value, source = eff[key]
        if source == "default" or ctx.get_parameter_source(param) not in (None, click.core.ParameterSource.DEFAULT):
            continue
        if param == "lists" and given:
            continue  # --url or --list on the command line: exactly those, not the configured lists too
        if isinstance(value, list):
            value = tuple(value)
        if check is not None:
            try:
                value = check(ctx, None, value)  # type: ignore[arg-type]
            except click.BadParameter as exc:
                where = SETTINGS[key].env if source == "env" else f"{key} in the config file"
                raise click.ClickException(f"{where}: {exc.message}") from None
        if param == "output":
            value = Path(value).expanduser()
        opts[param] = value
    return {k: v for k, (v, _) in eff.items() if k.startswith("budget.")}


def planned_lists() -> tuple[str, ...]:
    """The lists a `vantage run` without --list would measure (config, else global + country)."""
    try:
        eff = effective()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if eff["probe.lists"][0]:
        return tuple(eff["probe.lists"][0])
    return _default_lists(eff["probe.cc"][0])


def _default_lists(cc: str | None) -> tuple[str, ...]:
    """As OONI Probe does: the global list plus the country's, when `lists update` fetched them."""
    from probe.testlists import lists_dir

    d = lists_dir()
    if not (d / "global.csv").exists():
        raise click.ClickException(
            "nothing to measure: no --list given and no downloaded lists; run `vantage lists update --country CC` "
            "(or give --list vantage, the shipped list, or --url URL)")
    chosen = ["global"]
    if cc and (d / f"{cc.lower()}.csv").exists():
        chosen.append(cc.lower())
    return tuple(chosen)


def _after_run(summary: RunSummary, output: Path, budgets: dict[str, Any], quiet: bool) -> None:
    """Budget accounting: the bytes this run used (estimated from its records), then the disk quota."""
    from probe.budget import enforce_disk_quota, record_run_bytes

    err = Console(stderr=True)
    marker = output / "runs" / f"{summary.run_id}.unfinished"
    try:
        if summary.stopped:
            atomic_write_text(marker, summary.stopped)
        else:
            marker.unlink(missing_ok=True)
        used = record_run_bytes(output, summary.run_id, summary.files)
        quota = budgets.get("budget.disk_quota_mb")
        if quota is not None:
            report = enforce_disk_quota(output, int(quota * 1024 * 1024))
            if report.deleted:
                err.print(f"disk quota: deleted {len(report.deleted)} uploaded file(s) "
                          f"({report.freed} bytes)", highlight=False, markup=False)
            if report.over_by > 0:
                err.print(f"disk quota: still {report.over_by} bytes over {quota:g} MB: the rest is not uploaded yet "
                          "and is never deleted", highlight=False, markup=False)
    except OSError as exc:
        raise click.ClickException(f"budget accounting in {output}: {exc.strerror or exc}") from None
    if not quiet:
        err.print(f"data used (estimated from the records): {used} bytes", highlight=False, markup=False)


def _unfinished_run(output: Path) -> str | None:
    """The newest run a budget or an interruption stopped (run ids sort by start time)."""
    markers = sorted((output / "runs").glob("*.unfinished"))
    return markers[-1].name.removesuffix(".unfinished") if markers else None


def _apply_manifest(ctx: click.Context, opts: dict[str, Any], output: Path, run_id: str) -> None:
    """Resume: options not given again come from how the run was started."""
    manifest = read_manifest(output, run_id)
    if manifest is None:
        if not run_files(output, run_id):
            raise click.ClickException(f"no run {run_id} in {output} (see the run ids in the file names under measurements/)")
        if not opts["lists"] and not opts["urls"]:
            raise click.ClickException(f"run {run_id} has no manifest in {output}/runs/: give its --list/--url again")
        return
    for name in _RESUMABLE:
        if ctx.get_parameter_source(name) in (None, click.core.ParameterSource.DEFAULT) and name in manifest:
            value = manifest[name]
            opts[name] = tuple(value) if isinstance(value, list) else value


def _manifest_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The resumable options, with file paths made absolute (a resume may run elsewhere)."""
    out: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items() if k in _RESUMABLE}
    out["lists"] = [str(Path(s).resolve()) if Path(s).exists() else s for s in out["lists"]]
    for key in ("ca_bundle", "anchors_file", "messaging_endpoints"):
        if out.get(key):
            out[key] = str(Path(out[key]).resolve())
    return out


def _targets(opts: dict[str, Any], experiment: Experiment) -> list[Target]:
    """Targets from --list and --url, deduplicated, in order; skipped rows reported on stderr."""
    from probe.experiments.anchors import load_anchors, shipped_anchors_path
    from probe.testlists import TestListError, load_lists, resolve_list

    targets: list[Target] = []
    problems: list[str] = []
    lists = list(opts["lists"])
    if experiment.name == "anchors":
        if not lists and not opts["urls"]:
            lists = [str(shipped_anchors_path())]
        for spec in lists:
            try:
                got, anchor_problems = load_anchors(Path(spec))
            except InputError as exc:
                raise click.ClickException(str(exc)) from None
            targets += got
            problems += anchor_problems
    elif experiment.default_targets() and not opts["urls"]:
        # The messaging apps measure their endpoints list, never a target list.
        if lists:
            Console(stderr=True).print(f"{experiment.name} takes no target list: --list / probe.lists ignored "
                                       "(its endpoints come from the messaging endpoints list)", highlight=False)
        targets += experiment.default_targets()
    elif lists:
        try:
            entries, probs = load_lists([resolve_list(s) for s in lists], categories=opts["categories"] or None)
        except TestListError as exc:
            raise click.ClickException(str(exc)) from None
        problems += [str(p) for p in probs]
        for e in entries:
            problem = experiment.input_problem(e.url)
            if problem:
                problems.append(f"{e.url}: {problem}")
            else:
                targets.append(Target(e.url, e.category_code))
    for url in opts["urls"]:
        problem = experiment.input_problem(url)
        if problem:
            raise click.BadParameter(problem, param_hint="--url")
        targets.append(Target(url))
    if opts["categories"] and experiment.name == "anchors":
        wanted = {c.upper() for c in opts["categories"]}
        targets = [t for t in targets if t.category in wanted]
    if problems:
        err = Console(stderr=True)
        for p in problems[:_MAX_PROBLEMS_SHOWN]:
            err.print(f"skipped {p}", highlight=False, markup=False, soft_wrap=True)
        if len(problems) > _MAX_PROBLEMS_SHOWN:
            err.print(f"... and {len(problems) - _MAX_PROBLEMS_SHOWN} more skipped rows", highlight=False, soft_wrap=True)
    seen: set[str] = set()
    unique = []
    for t in targets:
        if t.input not in seen:
            seen.add(t.input)
            unique.append(t)
    return unique


def _checked_messaging_endpoints(path: str, experiment: Experiment) -> str:
    """--messaging-endpoints: the file, checked now (one line for a bad row, before measuring)."""
    from probe.experiments.messaging.endpoints import load_endpoints

    if experiment.default_targets():
        try:
            load_endpoints(path, experiment.name)
        except InputError as exc:
            raise click.ClickException(str(exc)) from None
    return str(Path(path).resolve())


def _scrubber() -> Any:
    from probe.net.scrub import default_scrubber

    return default_scrubber()  # the one the log filter uses


def _learn_public_addresses(scrubber: Any, servers: tuple[str, ...], only_configured_resolvers: bool) -> list[str]:
    """Ask each --stun server; the addresses they saw (in memory only: the scrubber and the
    local geo lookup, never written)."""
    from probe.net.stun import StunError, parse_server, public_address

    learned: list[str] = []
    for server in servers:
        try:
            host, _ = parse_server(server)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--stun") from None
        if only_configured_resolvers and _ip_or_none(host) is None:
            # a name would be looked up by the system's resolver, which --resolver promises not to use
            raise click.BadParameter("with --resolver, give the STUN server as IP:PORT", param_hint="--stun")
        try:
            seen = asyncio.run(public_address(server))
        except StunError as exc:
            Console(stderr=True).print(str(exc), highlight=False, markup=False, soft_wrap=True)
            continue
        scrubber.add(seen)
        learned.append(seen)
    return learned


def _vantage_from_geo_db(vantage: Vantage, addresses: list[str], opts: dict[str, Any]) -> None:
    """Country and network not given (nor told by the control helper): look the public address
    up in the local databases `vantage geo update` downloaded, when there are any. The address
    itself is not kept."""
    if not addresses or (vantage.probe_cc not in (None, "ZZ") and vantage.probe_asn):
        return
    from analysis.geo import GeoError, GeoLookup

    try:
        geo = GeoLookup.default()
        if geo is None:
            return
        with geo:
            info = geo.lookup(addresses[0])
    except GeoError as exc:
        Console(stderr=True).print(f"geo database: {exc}", highlight=False, markup=False, soft_wrap=True)
        return
    if not opts["cc"] and vantage.probe_cc in (None, "ZZ") and info.country:
        vantage.probe_cc = info.country
    if not opts["asn"] and not vantage.probe_asn and info.asn:
        vantage.probe_asn = info.asn
    if not opts["network"] and not vantage.probe_network and info.org:
        vantage.probe_network = info.org


def _ip_or_none(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _announce_privacy(scrubber: Any, *, learned: bool, public_nets: tuple[str, ...] = ()) -> None:
    """One line at the start: whether the public address is known, and what that means."""
    scrubber.paranoid = not learned
    scrubber.public_nets = tuple(ipaddress.ip_network(n, strict=False) for n in public_nets)
    line = (
        "privacy: this network's public address (as the control helper or STUN server saw it) is "
        "scrubbed from every record and log line (kept in memory only)"
        if learned
        else "privacy: public address unknown (no control helper or STUN server told it): scrubbing every public "
        "IP address in captured text that is not one of a measurement's own targets"
    )
    Console(stderr=True).print(line, highlight=False, markup=False, soft_wrap=True)


def _vantage_from_helper(vantage: Vantage, control_url: str, ca_bundle: str | None, opts: dict[str, Any]) -> str | None:
    """Country and network as the control helper sees us; returns the public address it saw
    (for the scrubber only: never store or print it). None when it could not tell."""
    from probe.control import ControlError, fetch_whoami

    try:
        seen = asyncio.run(fetch_whoami(control_url, ca_bundle=ca_bundle))
    except ControlError as exc:
        Console(stderr=True).print(f"control helper: {exc}; country and network stay unknown", highlight=False, soft_wrap=True)
        return None
    if not opts["cc"] and seen.get("probe_cc"):
        vantage.probe_cc = str(seen["probe_cc"])
    if not opts["asn"] and seen.get("probe_asn"):
        vantage.probe_asn = seen["probe_asn"]
    if not opts["network"] and seen.get("probe_network"):
        vantage.probe_network = seen["probe_network"]
    return seen.get("public_address")


def _render(summary: RunSummary) -> None:
    console = Console()
    table = Table(title=f"run {summary.run_id}", title_justify="left")
    table.add_column("experiment")
    table.add_column("measured", justify="right")
    table.add_column("ok", justify="right", style="green")
    table.add_column("failed", justify="right", style="red")
    for name, c in summary.counts.items():
        table.add_row(name, str(c.measured), str(c.ok), str(c.failed))
    console.print(table)
    lines = [f"files written: {len(summary.files)} ({summary.records_written} records) in {summary.wall_s:.1f}s"]
    if summary.skipped:
        lines.append(f"already measured (resume): {summary.skipped}")
    if summary.controls:
        lines.append(f"control measurements: {summary.controls}")
    if summary.stopped:
        why = {"max_runtime": "the --max-runtime budget ran out", "interrupted": "interrupted",
               "bytes_per_day": "the daily data budget (budget.bytes_per_day) is spent"}.get(
            summary.stopped, summary.stopped
        )
        left = summary.cancelled + (summary.not_started or 0)
        lines.append(
            f"stopped early ({why}): {left} input(s) not measured; continue with "
            f"`vantage run --resume {summary.run_id} --output {summary.output}`"
        )
    lines.append(f"run id: {summary.run_id}")
    lines.append(f"output: {summary.output}")
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
