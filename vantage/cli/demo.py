"""`vantage demo`: a thin command over `vantage.demo.run_demo` (the pipeline as a library
function): parse options, run the demo, render the table beside the lab's ground truth."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.table import Table

from vantage.cli.options import one_line_errors
from vantage.demo import DemoResult, DemoRow, check_output, default_output, reproduce_line, run_demo
from vantage.lab import LoopbackLab


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
    check_output(output)  # before the lab starts: a wrong flag costs nothing
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
