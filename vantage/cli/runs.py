"""`vantage runs list|show`: the history of this probe's runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import click
from rich.console import Console
from rich.table import Table

from probe.history import list_runs, run_ids, run_info
from vantage.cli.options import json_option, output_options

if TYPE_CHECKING:
    import pyarrow as pa

_OUTPUT = click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
                       help="Results directory (default: as `vantage run`: probe.output, else the user data directory's results/).")


def _output(output: Path | None) -> Path:
    if output is not None:
        return output
    from probe.config import ConfigError, value
    from vantage.cli.run import default_output

    try:
        configured = value("probe.output")
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return Path(configured).expanduser() if configured else default_output()


@click.group("runs")
def runs() -> None:
    """Past runs: what was measured, when, how it went, whether it was uploaded."""


def _covering_verdicts(out: Path, verdicts_files: tuple[Path, ...]) -> list[pa.Table]:
    """The verdict tables of the files given that were made from ``out`` (others: a warning)."""
    from vantage.cli.options import one_line_errors

    tables = []
    for path in verdicts_files:
        with one_line_errors(f"cannot read {path}"):
            from analysis.pipeline import read_verdicts

            table, metadata = read_verdicts(path)
        if out.resolve() not in {Path(d).resolve() for d in metadata.get("datasets") or []}:
            click.echo(f"warning: {path} was not made from {out}: ignored", err=True)
            continue
        tables.append(table)
    return tables


def verdicts_of_run(out: Path, run_id: str, verdicts_files: tuple[Path, ...]) -> dict[tuple[str, str], dict[str, Any]]:
    """(input, experiment) -> the verdict (status, layer, method, and the messaging apps'
    per-function list) of RUN_ID's probe measurements, from the verdicts files given."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for table in _covering_verdicts(out, verdicts_files):
        has_functions = "functions" in table.column_names
        for row in table.to_pylist():
            if row["run_id"] == run_id:
                found[(row["input"], row["experiment"])] = {
                    "status": row["status"], "layer": row["layer"], "method": row["method"],
                    "functions": row["functions"] if has_functions else None}
    return found


def blocked_by_run(out: Path, verdicts_files: tuple[Path, ...]) -> dict[str, int]:
    """Blocked verdicts per run id, from the verdicts files `vantage analyze` wrote that cover
    ``out`` (their provenance names it among their datasets). A run with no verdict in them
    (analyzed before it ran, or not at all) is absent: "-", not 0. Only the files given are
    read: the disk is never searched."""
    counts: dict[str, int] = {}
    covered: set[str] = set()
    for table in _covering_verdicts(out, verdicts_files):
        for run_id, status in zip(table.column("run_id").to_pylist(), table.column("status").to_pylist(), strict=True):
            covered.add(run_id)
            counts[run_id] = counts.get(run_id, 0) + (status == "blocked")
    return {r: counts[r] for r in covered}


@runs.command("list")
@_OUTPUT
@click.option("--verdicts", "verdicts_files", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Verdicts `vantage analyze` wrote from this results directory: show each run's blocked "
                   "count (repeatable; without it, or for a run they do not cover, '-').")
@json_option("Print a JSON array instead of the table.")
@output_options
def list_(output: Path | None, verdicts_files: tuple[Path, ...], as_json: bool, quiet: bool) -> None:
    """One line per run, oldest first: id, start, duration, inputs, ok, failed, uploaded, and
    blocked so far when analyzed (from --verdicts FILE)."""
    out = _output(output)
    infos = list_runs(out)
    blocked = blocked_by_run(out, verdicts_files)
    if as_json:
        rows = [i.as_dict() for i in infos]
        if verdicts_files:  # null: no verdict for this run in the files given
            for row, i in zip(rows, infos, strict=True):
                row["blocked"] = blocked.get(i.run_id)
        click.echo(json.dumps(rows, indent=2))
        return
    if quiet:
        return
    table = Table(title=f"runs in {out}", title_justify="left")
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("run id", "left"), ("start (UTC)", "left"), ("duration", "right"), ("inputs", "right"),
        ("ok", "right"), ("failed", "right"), ("uploaded", "left"), ("blocked", "right"))
    for col, just in columns:
        # The run id is what `runs show` and `run --resume` take: never wrapped or cut.
        table.add_column(col, justify=just, no_wrap=col == "run id", min_width=25 if col == "run id" else None,
                         overflow="fold")
    for i in infos:
        table.add_row(i.run_id, i.start or "-", f"{i.duration_s:.0f}s" if i.duration_s is not None else "-",
                      str(i.inputs), str(i.ok), str(i.failed), i.uploaded,
                      str(blocked[i.run_id]) if i.run_id in blocked else "-")
    Console().print(table)
    if not infos:
        click.echo("no runs yet (`vantage run` starts one)")


@runs.command("show")
@click.argument("run_id")
@_OUTPUT
@click.option("--verdicts", "verdicts_files", multiple=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Verdicts `vantage analyze` wrote from this results directory: show each input's verdict "
                   "and, for the messaging apps, the per-function verdicts (repeatable).")
@json_option("Print a JSON object (the run and its per-input outcomes).")
@output_options
def show(run_id: str, output: Path | None, verdicts_files: tuple[Path, ...], as_json: bool, quiet: bool) -> None:
    """Each input of RUN_ID and how its measurement went (and its verdict, with --verdicts)."""
    from analysis.messaging import functions_text

    out = _output(output)
    if run_id not in run_ids(out):
        raise click.ClickException(f"no run {run_id} in {out} (`vantage runs list` shows the runs)")
    info = run_info(out, run_id, outcomes=True)
    verdicts = verdicts_of_run(out, run_id, verdicts_files) if verdicts_files else None
    if as_json:
        doc = info.as_dict(with_outcomes=True)
        if verdicts is not None:  # null: no verdict for this input in the files given
            for row in doc.get("outcomes") or []:
                row["verdict"] = verdicts.get((row.get("input"), row.get("experiment")))
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    if quiet:
        return
    console = Console()
    console.print(f"run {run_id}: {info.inputs} input(s), {info.ok} ok, {info.failed} failed; "
                  f"started {info.start or '-'}; uploaded: {info.uploaded}", highlight=False, markup=False,
                  soft_wrap=True)
    table = Table()
    cols = ("input", "category", "experiment", "outcome") + (("verdict", "functions") if verdicts is not None else ())
    for col in cols:
        table.add_column(col, overflow="fold")
    for o in info.outcomes:
        cells = [o.input, o.category or "", o.experiment, "ok" if o.ok else (o.failure or "failed")]
        if verdicts is not None:
            v = verdicts.get((o.input, o.experiment))
            cells += [f"{v['status']} ({v['method']})" if v else "-", functions_text(v["functions"]) if v else ""]
        table.add_row(*cells)
    console.print(table)
