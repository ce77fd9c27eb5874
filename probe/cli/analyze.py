"""`vantage analyze`: verdicts for every probe measurement of one or more datasets."""

from __future__ import annotations

from pathlib import Path

import click
import duckdb
from rich.console import Console
from rich.table import Table

MAX_PROBLEMS_SHOWN = 10


@click.command("analyze")
@click.argument("datasets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Verdicts as Parquet: one row per probe measurement.")
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a DuckDB database with the views, the verdicts and the aggregates.")
@click.option("--public-net", "public_nets", multiple=True, metavar="CIDR",
              help="Treat this network as public for the bogon rule (labs, intranets); repeatable.")
@click.option("--fingerprints", "fingerprint_files", multiple=True, metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="Extra blockpage fingerprints (OONI blocking-fingerprints CSV); repeatable.")
@click.option("--control-window", "control_window", type=float, default=6.0, show_default=True, metavar="HOURS",
              help="How far apart in time a control run may be to pair with a probe measurement.")
@click.option("--asn-db", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="MaxMind-format ASN database: answers in the control's ASN count as consistent.")
def analyze(datasets: tuple[Path, ...], output: Path, db: Path | None, public_nets: tuple[str, ...],
            fingerprint_files: tuple[Path, ...], control_window: float, asn_db: Path | None) -> None:
    """Judge every probe measurement in DATASETS against its control.

    DATASETS are Vantage dataset directories (probe runs, control runs, OONI imports) or
    directories of Parquet files. Each probe measurement gets a status (ok, blocked, down,
    probe_failure, no_control, no_connectivity), the rule that decided, a confidence and, when a
    blockpage fingerprint matched, confirmed=true. Corrupt or foreign Parquet files are skipped
    with a warning naming them.
    """
    from analysis.db import DatasetError
    from analysis.fingerprints import FingerprintError
    from analysis.verdicts import VerdictError
    from analysis.verdicts import analyze as run_analysis

    if output.suffix.lower() != ".parquet":
        raise click.ClickException(f"{output}: --output must be a .parquet file")
    if db is not None and db.suffix.lower() not in (".duckdb", ".db"):
        raise click.ClickException(f"{db}: --db must be a .duckdb file")
    for d in datasets:
        if not d.exists():
            raise click.ClickException(f"{d}: no such dataset directory")
    try:
        result = run_analysis(list(datasets), output, db, public_nets=public_nets,
                              fingerprint_files=fingerprint_files, control_window_h=control_window, asn_db=asn_db)
    except (DatasetError, FingerprintError, VerdictError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write results: {exc.strerror or exc}") from None
    except duckdb.Error as exc:  # a dataset DuckDB cannot read after all (e.g. a file changed meanwhile)
        raise click.ClickException(f"cannot analyze: {str(exc).splitlines()[0]}") from None
    err = Console(stderr=True)
    for path, reason in result.skipped:
        err.print(f"warning: skipped {path}: {reason}", markup=False, highlight=False, soft_wrap=True)
    for problem in result.fingerprint_problems[:MAX_PROBLEMS_SHOWN]:
        err.print(f"warning: fingerprint skipped: {problem}", markup=False, highlight=False, soft_wrap=True)
    if len(result.fingerprint_problems) > MAX_PROBLEMS_SHOWN:
        err.print(f"warning: ... and {len(result.fingerprint_problems) - MAX_PROBLEMS_SHOWN} more fingerprints skipped")
    render(result, Console())


def render(result: object, console: Console) -> None:
    from analysis.verdicts import AnalyzeResult

    assert isinstance(result, AnalyzeResult)
    n = result.verdicts.num_rows
    table = Table(title=f"{n:,} probe measurements")
    table.add_column("status")
    table.add_column("layer")
    table.add_column("measurements", justify="right")
    table.add_column("share", justify="right")
    for status, layer, count in result.counts():
        table.add_row(status, layer or "", f"{count:,}", f"{100 * count / n:.1f} %" if n else "")
    console.print(table)
    confirmed = sum(1 for c in result.verdicts.column("confirmed").to_pylist() if c)
    if confirmed:
        console.print(f"{confirmed:,} confirmed by a blockpage fingerprint", highlight=False)
    console.print(f"verdicts: {result.output}", markup=False, highlight=False, soft_wrap=True)
    if result.db is not None:
        console.print(f"database: {result.db} (tables/views: verdicts, aggregates, measurements, ...)",
                      markup=False, highlight=False, soft_wrap=True)
