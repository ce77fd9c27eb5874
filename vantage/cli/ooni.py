"""`vantage ooni import`: turn OONI measurement files into a Vantage dataset."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from analysis.ingest.ooni import ImportSummary, OoniImportError, import_ooni, one_line
from vantage.cli.options import echo_json, json_option


@click.group("ooni")
def ooni() -> None:
    """Interoperability with OONI: import OONI measurements to analyze them like Vantage's own."""


@ooni.command("import")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="SRC...")
@click.option(
    "-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Dataset directory to write (created if missing; existing data is kept).",
)
@click.option(
    "-j", "--workers", type=click.IntRange(min=0), default=0, show_default=True,
    help="Processes converting JSON-lines files (0: one per core for inputs of 16 MiB or more, "
    "else 1; 1: all in this process). The output is the same for any number.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only the summary, no progress line.")
@json_option("Print the summary as one JSON object instead of the table (no progress line).")
def import_(sources: tuple[Path, ...], output: Path, workers: int, quiet: bool, as_json: bool) -> None:
    """Import OONI measurements (.json, .jsonl, .jsonl.gz files or directories of them).

    Files are streamed; a JSON file may hold one measurement, an array of them or one per
    line. web_connectivity's test-helper answer becomes a `role = control` row. A malformed
    line is reported on stderr as FILE:LINE: reason and skipped; the rest imports. Each
    measurement is written once: one given twice, or already in the output dataset, is
    skipped and counted (docs/ooni.md says how measurements are told apart).
    """
    err = Console(stderr=True)
    out = Console()

    def progress(summary: ImportSummary) -> None:
        if not (quiet or as_json):
            err.print(f"  {summary.measurements} measurements…", end="\r", highlight=False)

    def skipped(line: str) -> None:
        err.print(f"skipped {line}", markup=False, highlight=False, soft_wrap=True)

    try:
        summary = import_ooni(sources, output, workers=workers or None, on_progress=progress, on_error=skipped)
    except OoniImportError as exc:
        raise click.ClickException(one_line(str(exc))) from exc
    if as_json:
        echo_json(summary_dict(summary, output))
        return
    # The path goes on its own line: a table title would wrap a long path.
    out.print(one_line(f"OONI import into {output}"), markup=False, highlight=False, soft_wrap=True)
    out.print(render_summary(summary))


def summary_dict(summary: ImportSummary, output: Path) -> dict[str, object]:
    """The numbers of :func:`render_summary`, as JSON."""
    return {
        "output": str(output), "files": summary.files, "measurements": summary.measurements,
        "by_test": dict(sorted(summary.by_test.items(), key=lambda kv: (-kv[1], kv[0]))),
        "controls": summary.controls, "null_controls": summary.null_controls,
        "base64_bodies": summary.base64_bodies, "odd_encodings": summary.odd_encodings,
        "missing_test_keys": summary.missing_test_keys, "already_present": summary.already_present,
        "duplicates": summary.duplicates, "repeated_files": summary.repeated_files, "malformed": summary.malformed,
        "parquet_files": [str(p) for p in summary.output_files],
    }


def render_summary(summary: ImportSummary) -> Table:
    table = Table()
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("files read", str(summary.files))
    table.add_row("measurements imported", str(summary.measurements))
    for name, n in sorted(summary.by_test.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(f"  {name}", str(n))
    table.add_row("control rows (test helper)", str(summary.controls))
    table.add_row("null controls", str(summary.null_controls))
    table.add_row("base64 bodies", str(summary.base64_bodies))
    table.add_row("bodies with odd encodings", str(summary.odd_encodings))
    table.add_row("missing test_keys", str(summary.missing_test_keys))
    table.add_row("already in the dataset (skipped)", str(summary.already_present))
    table.add_row("duplicates in the input (skipped)", str(summary.duplicates))
    if summary.repeated_files:
        table.add_row("files given more than once (read once)", str(summary.repeated_files))
    table.add_row("malformed (skipped)", str(summary.malformed))
    table.add_row("Parquet files written", str(len(summary.output_files)))
    return table
