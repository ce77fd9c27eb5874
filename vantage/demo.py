"""The demo pipeline as a library function: the whole pipeline on one machine, no root: start
the loopback lab, measure it as a censored probe and as a control, analyze, report, and compare
verdicts with the lab's ground truth (`run_demo`). It lives in `vantage/` because it is the one
place joining probe and analysis; `vantage demo` (vantage/cli/demo.py) only renders it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from vantage.cli.options import one_line_errors
from vantage.lab import LAB_CC, LoopbackLab

DEFAULT_PARENT = Path("vantage-demo")
# Shorter than a real run's limits: every lab server answers in milliseconds or never, and the
# demo must finish well inside a minute (the silent site and the dropped DNS query cost these).
DEMO_TIMEOUTS = {"dns": 2.0, "connect": 5.0, "tls": 5.0, "http": 5.0}
PROBE_ASN = "AS64500"  # RFC 5398 documentation ASNs: the lab's censored and control networks
CONTROL_ASN = "AS64501"


class DemoError(click.ClickException):
    """The demo cannot run or a run stopped: one line for the user (a click exception, so the
    command prints it as `Error: ...` and exits 1)."""


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
    now = now or dt.datetime.now(dt.UTC)
    return DEFAULT_PARENT / now.strftime("%Y%m%dT%H%M%SZ")


def check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        # Old datasets in the directory would be analyzed together with the new ones.
        raise DemoError(f"{output} exists and is not an empty directory; give a new --output")
    from analysis.pipeline import OutputError, check_output

    try:  # a read-only place fails here, in one line, before the lab starts
        check_output(output / "verdicts.parquet")
    except OutputError as exc:
        raise DemoError(f"{output}: cannot write the demo there ({str(exc).rsplit(': ', 1)[-1]})") from None


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
    from probe.dataset import StoreError
    from probe.experiments.base import Target, Vantage
    from probe.runner import run_targets

    targets = [Target(s.url, "LAB") for s in lab.sites]
    vantage = Vantage(role=role, probe_cc=LAB_CC, probe_asn=asn, probe_network=network, resolver_asn=asn)
    settings = _settings(lab, resolver)
    try:
        summary = asyncio.run(
            run_targets(targets, "web_connectivity", settings, vantage, output=output, progress=False)
        )
    except StoreError as exc:
        raise DemoError(str(exc)) from None
    if summary.stopped:
        raise DemoError(f"the {role} run stopped early ({summary.stopped})")


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

    analyze: list[str | Path] = ["vantage", "analyze", *datasets, "--output", verdicts, "--db", db,
                                 *command_args(options)]
    render: list[str | Path] = ["vantage", "report", "--verdicts", verdicts, "--output", report]
    return shell_line(analyze) + " && " + shell_line(render)


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
    check_output(output)
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
                     verdict_source=f"read from {verdicts_path.name}")

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


__all__ = [
    "DemoError",
    "DemoResult",
    "DemoRow",
    "check_output",
    "default_output",
    "reproduce_line",
    "run_demo",
]
