"""`vantage report`: a publishable HTML or Markdown anomaly report over datasets."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click

from vantage.cli.events import echo_warnings, verdicts_for_command
from vantage.cli.options import analysis_options, one_line_errors, output_options, verdicts_option

if TYPE_CHECKING:
    from analysis.pipeline import AnalysisOptions


@click.command("report")
@click.argument("datasets", nargs=-1, type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Summary report file: .html (charts embedded) or .md (charts as PNG files in <name>_files/).")
@click.option("--site", "site_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also (or instead) write a static site into this directory: an index, a page per country, "
                   "network and anomalous measurement with its evidence beside the control's, a methodology "
                   "page, CSV and JSON exports; it opens from disk, nothing is fetched.")
@click.option("--max-pages", type=click.IntRange(min=0), default=2000, show_default=True,
              help="With --site: pages for at most this many anomalous measurements (the newest).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also export the verdict table (one row per probe measurement) as CSV.")
@click.option("--title", help="Report title.")
@verdicts_option
@analysis_options
@output_options
def report(datasets: tuple[Path, ...], output: Path | None, site_dir: Path | None, max_pages: int,
           csv_path: Path | None, title: str | None, verdicts_file: Path | None, options: AnalysisOptions,
           quiet: bool) -> None:
    """Write an anomaly report an analyst could publish.

    Per country and network: what is blocked, how (methods), since when, on how many
    measurements and vantage points; shutdowns and other events with a timeline chart each;
    charts of anomalies over time and of blocking methods; and, in its method section, the
    options and fingerprint sets the verdicts were made with. With --verdicts the report reads
    the verdicts `vantage analyze` wrote; otherwise it computes them from DATASETS exactly as
    `vantage analyze` does with the same options. With --site, a static site with a page per
    country, network and anomalous measurement (evidence beside the control's). See docs/reports.md.
    """
    from analysis.report import write_report

    if output is None and site_dir is None:
        raise click.UsageError("give --output FILE, --site DIR, or both")
    with one_line_errors("cannot write the report"):
        paths, verdicts, source = verdicts_for_command(datasets, verdicts_file, options, "vantage report")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = write_report(paths, output, verdicts=verdicts, options=options, verdict_source=source,
                                      csv=csv_path, title=title, site=site_dir, max_pages=max_pages)
            finally:
                echo_warnings(caught)
    if not quiet:
        wrote = ", ".join(str(p) for p in (result.output, result.site) if p is not None)
        click.echo(f"wrote {wrote}: {result.events} event(s), {result.blocked_rows} blocked target/network "
                   f"row(s), {result.measurements:,} verdicts" + (f", {len(result.pages):,} pages" if result.site else "")
                   + (f"; verdicts CSV {result.csv}" if result.csv else ""))
