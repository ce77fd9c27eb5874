"""`vantage demo`: the whole pipeline on one machine, no root: start the loopback lab, measure it
as a censored probe and as a control, analyze, report, and compare verdicts with the lab's
ground truth. It lives in the CLI layer because it is the one place joining probe and analysis.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.table import Table

from vantage.cli.options import one_line_errors
from vantage.lab import LAB_CC, LoopbackLab

DEFAULT_PARENT = Path("vantage-demo")
# Shorter than a real run's limits: every lab server answers in milliseconds or never, and the
# demo must finish well inside a minute (the silent site and the dropped DNS query cost these).
DEMO_TIMEOUTS = {"dns": 2.0, "connect": 5.0, "tls": 5.0, "http": 5.0}
PROBE_ASN = "AS64500"  # RFC 5398 documentation ASNs: the lab's censored and control networks
CONTROL_ASN = "AS64501"


@dataclass
class DemoRow:
    """One lab URL: the ground truth beside the analyzer's verdict."""

    url: str
    description: str
    expected_status: str
    expected_layer: str | None
    status: str | None = None
    layer: str | None = None
    method: str | None = None
    confirmed: bool | None = None

    @property
    def matches(self) -> bool:
        # Blocked: the layer must match too. Ok: no layer at all. Down: the layer only says
        # where the site failed for both vantage points, which the truth does not fix.
        if self.status != self.expected_status:
            return False
        return self.expected_status == "down" or self.layer == self.expected_layer


@dataclass
class DemoResult:
    output: Path
    probe_dataset: Path
    control_dataset: Path
    verdicts: Path
    database: Path
    report: Path
    ground_truth: Path
    rows: list[DemoRow]
    wall_s: float
    http_port: int
    https_port: int
    reproduce: str = ""  # the `vantage analyze ... && vantage report ...` line that redoes the analysis

    @property
    def matched(self) -> int:
        return sum(r.matches for r in self.rows)


def default_output(now: dt.datetime | None = None) -> Path:
    """A fresh directory per demo run: ./vantage-demo/<UTC timestamp>/."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return DEFAULT_PARENT / now.strftime("%Y%m%dT%H%M%SZ")


def _check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        # Old datasets in the directory would be analyzed together with the new ones.
        raise click.ClickException(f"{output} exists and is not an empty directory; give a new --output")
    from analysis.pipeline import OutputError, check_output

    try:  # a read-only place fails here, in one line, before the lab starts
        check_output(output / "verdicts.parquet")
    except OutputError as exc:
        raise click.ClickException(f"{output}: cannot write the demo there ({str(exc).rsplit(': ', 1)[-1]})") from None


def _settings(lab: LoopbackLab, resolver: str) -> Any:
    from probe.experiments.base import Settings, Timeouts

    # Only the lab's resolver, never the system's: lab names must not leave the lab.
    return Settings(
        resolvers=[resolver],
        use_system_resolver=False,
        timeouts=Timeouts(**DEMO_TIMEOUTS),
        ca_bundle=str(lab.ca_bundle),
    )


def _measure(lab: LoopbackLab, output: Path, role: str, resolver: str, asn: str, network: str) -> None:
    from probe.experiments.base import Target, Vantage
    from probe.runner import run_targets
    from probe.store import StoreError

    targets = [Target(s.url, "LAB") for s in lab.sites]
    vantage = Vantage(role=role, probe_cc=LAB_CC, probe_asn=asn, probe_network=network, resolver_asn=asn)
    settings = _settings(lab, resolver)
    try:
        summary = asyncio.run(
            run_targets(targets, "web_connectivity", settings, vantage, output=output, progress=False)
        )
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    if summary.stopped:
        raise click.ClickException(f"the {role} run stopped early ({summary.stopped})")


def _write_ground_truth(lab: LoopbackLab, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["input", "status", "layer", "description"])
        for s in lab.sites:
            out.writerow([s.url, s.status, s.layer or "", s.site.description])


def _read_verdicts(path: Path) -> dict[str, dict[str, Any]]:
    from analysis.pipeline import read_verdicts

    table, _ = read_verdicts(path)
    return {r["input"]: r for r in table.to_pylist()}


def reproduce_line(datasets: list[Path], verdicts: Path, db: Path, report: Path, options: Any) -> str:
    """The commands a reader runs to redo the demo's analysis by hand: the same options, so
    the same verdicts (and the report reads the verdicts file, with the options recorded in it)."""
    from vantage.cli.options import command_args, shell_line

    analyze = ["vantage", "analyze", *datasets, "--output", verdicts, "--db", db, *command_args(options)]
    report = ["vantage", "report", "--verdicts", verdicts, "--output", report]
    return shell_line(analyze) + " && " + shell_line(report)


def run_demo(
    output: Path,
    *,
    lab: LoopbackLab | None = None,
    step: Callable[[str], None] = lambda _msg: None,
) -> DemoResult:
    """Run the demo pipeline into ``output`` (a new or empty directory) and compare with the truth.

    ``lab``: an already running lab to use (tests pass their fixture); otherwise one is started
    and always stopped again. ``step`` is told what is happening, for progress output.
    """
    started = time.monotonic()
    _check_output(output)
    output.mkdir(parents=True, exist_ok=True)
    probe_dir, control_dir = output / "probe", output / "control"
    verdicts_path, ground_truth = output / "verdicts.parquet", output / "ground_truth.csv"
    db_path = output / "verdicts.duckdb"
    with contextlib.ExitStack() as stack:
        if lab is None:
            step("starting the loopback lab")
            lab = stack.enter_context(LoopbackLab())
        _write_ground_truth(lab, ground_truth)
        censor_before = lab.censor
        stack.callback(lab.set_censor, censor_before)

        step(f"measuring {len(lab.sites)} lab URLs as the probe (censoring resolver, censor on)")
        lab.set_censor(True)
        _measure(lab, probe_dir, "probe", lab.censoring_resolver, PROBE_ASN, "Vantage lab censored network")
        step("measuring them again as the control (honest resolver, censor off)")
        lab.set_censor(False)
        _measure(lab, control_dir, "control", lab.honest_resolver, CONTROL_ASN, "Vantage lab control network")
        truth_sites = lab.sites
        ports = (lab.http_port, lab.https_port)
        fingerprints = lab.fingerprints
        public_nets = lab.public_nets

    step("analyzing")
    # Imported here: the analysis half (DuckDB, matplotlib) costs nothing to other commands.
    from analysis.pipeline import analyze, load_verdicts
    from analysis.report import write_report
    from vantage.cli.options import build_options

    # The options a reader would type (`--public-net`, `--fingerprints`), built by the same
    # function the commands use: the verdicts and the printed commands cannot drift apart.
    options = build_options(public_nets, [fingerprints])
    datasets = [probe_dir, control_dir]
    report_path = output / "report.html"
    with one_line_errors("analysis of the demo datasets failed"):
        analyze(datasets, verdicts_path, db_path, options=options, written_by="vantage demo")
        step("writing the report")
        # The report reads the verdicts file analyze wrote, as `vantage report --verdicts` does.
        write_report(datasets, report_path, verdicts=load_verdicts(verdicts_path),
                     verdict_source=f"read from {verdicts_path}")

    verdicts = _read_verdicts(verdicts_path)
    rows = []
    for s in truth_sites:
        v = verdicts.get(s.url, {})
        rows.append(
            DemoRow(
                s.url,
                s.site.description,
                s.status,
                s.layer,
                v.get("status"),
                v.get("layer"),
                v.get("method"),
                v.get("confirmed"),
            )
        )
    return DemoResult(
        output=output,
        probe_dataset=probe_dir,
        control_dataset=control_dir,
        verdicts=verdicts_path,
        database=db_path,
        report=report_path,
        ground_truth=ground_truth,
        rows=rows,
        wall_s=time.monotonic() - started,
        http_port=ports[0],
        https_port=ports[1],
        reproduce=reproduce_line(datasets, verdicts_path, db_path, report_path, options),
    )


# ------------------------------------------------------------------ rendering and the command


def render(result: DemoResult, console: Console) -> None:
    # One verdict column: a match shows the verdict once, a mismatch shows "got ≠ truth", so
    # the table stays readable in an 80-column terminal.
    table = Table(
        title="Verdicts on the loopback lab beside the ground truth",
        caption=f"✓: the verdict equals the ground truth (ports: http {result.http_port}, https {result.https_port})",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("", no_wrap=True, min_width=1)
    table.add_column("lab URL", no_wrap=True, min_width=30)
    table.add_column("verdict", no_wrap=True, min_width=20)
    table.add_column("method", overflow="fold", min_width=12)
    for r in result.rows:
        expected = r.expected_status + (f":{r.expected_layer}" if r.expected_layer else "")
        got = (r.status or "(none)") + (f":{r.layer}" if r.layer else "")
        method = (r.method or "") + (" (confirmed)" if r.confirmed else "")
        url = re.sub(r":\d+/", "/", r.url, count=1)
        if r.matches:
            table.add_row("[green]✓[/]", url, got, f"[dim]{method}[/]")
        else:
            table.add_row("[bold red]✗[/]", url, f"[bold red]{got}[/] ≠ {expected}", f"[dim]{method}[/]")
    console.print(table)
    total = len(result.rows)
    style = "bold green" if result.matched == total else "bold red"
    console.print(f"[{style}]{result.matched}/{total} verdicts match the ground truth[/]")
    for r in result.rows:
        if not r.matches:
            console.print(f"[red]mismatch[/] {r.url}: {r.description}")
    paths = [
        ("probe dataset", result.probe_dataset),
        ("control dataset", result.control_dataset),
        ("verdicts", result.verdicts),
        ("DuckDB database", result.database),
        ("report", result.report),
        ("ground truth", result.ground_truth),
    ]
    for label, path in paths:  # never wrapped: these lines get copied and pasted
        console.print(f"{label + ':':17}{path}", soft_wrap=True, highlight=False)
    if result.reproduce:
        console.print("to redo the analysis by hand (same options, same verdicts):", highlight=False)
        console.print(f"  {result.reproduce}", soft_wrap=True, highlight=False, markup=False)
    console.print(f"done in {result.wall_s:.1f} s")


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C does, so the lab's sockets and files are cleaned up."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.command("demo")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="New or empty directory for the datasets, verdicts and report "
    "[default: ./vantage-demo/<UTC timestamp>/].",
)
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the lab running after the demo (until Ctrl-C), to explore it with dig and curl.",
)
def demo(output: Path | None, keep: bool) -> None:
    """Run the whole pipeline against a small censored internet on loopback (no root needed).

    Starts the loopback lab (an honest and a censoring resolver, sites on 127.64.0.0/10 and an
    on-path censor), measures every lab URL as a probe behind the censor and as a control,
    analyzes the results, writes a report, and prints each verdict beside the lab's ground
    truth. Exits 0 when every verdict matches, 1 otherwise. Nothing leaves this machine.
    """
    console = Console()
    output = output if output is not None else default_output()
    _check_output(output)  # before the lab starts: a wrong flag costs nothing
    with _sigterm_exits(), LoopbackLab() as lab:
        with console.status("starting") as status:
            with one_line_errors("demo"):
                result = run_demo(output, lab=lab, step=lambda msg: status.update(msg + " …"))
        render(result, console)
        if keep:
            _serve_until_interrupted(lab, console)
    if result.matched != len(result.rows):
        raise SystemExit(1)


def _serve_until_interrupted(lab: LoopbackLab, console: Console) -> None:
    lab.set_censor(True)
    host, port = lab.censoring_resolver.split(":")
    console.print(
        f"\nThe lab keeps running (censor on). Try:\n"
        f"  dig @{host} -p {port} dns-blockpage.lab.test\n"
        f"  curl --cacert {lab.ca_bundle} --resolve sni-open.lab.test:{lab.https_port}:127.64.1.4 "
        f"{lab.url('sni-open.lab.test')}\n"
        f"honest resolver {lab.honest_resolver}; sites use ports {lab.http_port} (http) and "
        f"{lab.https_port} (https). Ctrl-C stops it.",
        soft_wrap=True,
        highlight=False,
    )
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    console.print("lab stopped")


__all__ = ["DemoResult", "DemoRow", "default_output", "demo", "render", "reproduce_line", "run_demo"]
