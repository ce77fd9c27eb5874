"""`vantage analyze`: verdicts for every probe measurement of one or more datasets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from vantage.cli.options import (
    analysis_options,
    check_datasets,
    echo_json,
    echo_skipped,
    json_option,
    one_line_errors,
    output_options,
)

if TYPE_CHECKING:
    from analysis.pipeline import AnalysisOptions, AnalyzeResult


@click.command("analyze")
@click.argument("datasets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Verdicts as Parquet: one row per probe measurement, with the options used in its metadata "
                   "(with --engine spark a directory of Parquet parts).")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a DuckDB database with the views, the verdicts and the aggregates "
                   "(an existing one keeps its other tables).")
@analysis_options
@json_option("Print the counts by status and layer, the verdicts path and the provenance as one JSON object.")
@output_options
def analyze(datasets: tuple[Path, ...], output: Path, db: Path | None, options: AnalysisOptions, quiet: bool,
            as_json: bool) -> None:
    """Judge every probe measurement in DATASETS against its control.

    DATASETS are Vantage dataset directories (probe runs, control runs, OONI imports) or
    directories of Parquet files. Each probe measurement gets a status (ok, blocked, down,
    probe_failure, no_control, no_connectivity, throttled), the rule that decided, a confidence
    and, when a blockpage fingerprint matched, confirmed=true; throughput measurements also get
    throttle_factor (how many times slower than the control and the network's other hosts). Corrupt or foreign Parquet files are skipped
    with a warning naming them. `vantage report --verdicts` and `vantage events --verdicts`
    read the file this writes.
    """
    from analysis.pipeline import analyze as run_analysis

    if output.suffix.lower() != ".parquet":
        raise click.ClickException(f"{output}: --output must be a .parquet file")
    if db is not None and options.engine == "spark":
        raise click.ClickException("--db is not available with --engine spark; open the verdicts directory with "
                                   f"DuckDB: read_parquet('{output}/*.parquet')")
    if db is not None and db.suffix.lower() not in (".duckdb", ".db"):
        raise click.ClickException(f"{db}: --db must be a .duckdb file")
    check_datasets(datasets)
    with one_line_errors("cannot analyze"):
        result = run_analysis(list(datasets), output, db, options=options)
    echo_skipped(result.skipped, result.fingerprint_problems)
    if as_json:  # JSON was asked for: printed even with -q (as `vantage runs list --json`)
        echo_json(as_dict(result))
        return
    render(result, Console(), quiet=quiet)


def as_dict(result: AnalyzeResult) -> dict[str, object]:
    """What :func:`render` prints, as JSON: the same counts, the paths and the provenance
    (its summary lines and the metadata stored in the verdicts file)."""
    from analysis.messaging import function_summary
    from analysis.pipeline import describe

    return {
        "measurements": result.num_verdicts,
        "counts": [{"status": s, "layer": layer, "measurements": n} for s, layer, n in result.counts()],
        "confirmed": result.confirmed,
        "messaging_functions": function_summary(result.verdicts),
        "verdicts": str(result.output),
        "database": str(result.db) if result.db is not None else None,
        "provenance": describe(result.metadata),
        "metadata": result.metadata,
    }


def render(result: AnalyzeResult, console: Console, *, quiet: bool = False) -> None:
    from analysis.messaging import function_summary
    from analysis.pipeline import describe

    n = result.num_verdicts
    if not quiet:
        table = Table(title=f"{n:,} probe measurements")
        table.add_column("status")
        table.add_column("layer")
        table.add_column("measurements", justify="right")
        table.add_column("share", justify="right")
        for status, layer, count in result.counts():
            table.add_row(status, layer or "", f"{count:,}", f"{100 * count / n:.1f} %" if n else "")
        console.print(table)
        messaging = function_summary(result.verdicts)
        if messaging:
            # The terminal's share of function_summary (report and --json carry every column).
            apps = Table(title="messaging apps, per function")
            for col in ("where", "app", "function", "blocked", "down", "ok", "blocked at"):
                apps.add_column(col, justify="right" if col in ("blocked", "down", "ok") else "left", overflow="fold")
            for g in messaging:
                apps.add_row(f"{g['probe_cc']} {g['probe_asn'] or ''}".strip(), g["app"], g["function"],
                             f"{g['blocked']}/{g['measurements']}", str(g["down"]), str(g["ok"]), ", ".join(g["layers"]))
            console.print(apps)
        confirmed = result.confirmed
        if confirmed:
            console.print(f"{confirmed:,} confirmed by a blockpage fingerprint", highlight=False)
        for line in describe(result.metadata)[1:]:  # the sets and options used (the first line is who/when)
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"verdicts: {result.output}", markup=False, highlight=False, soft_wrap=True)
    if result.db is not None:
        console.print(f"database: {result.db} (tables/views: verdicts, aggregates, measurements, ...)",
                      markup=False, highlight=False, soft_wrap=True)
