"""`vantage report`: a publishable HTML or Markdown anomaly report over datasets."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from analysis.report import ReportError, write_report
from probe.cli.events import echo_warnings


@click.command("report")
@click.argument("datasets", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Report file: .html (charts embedded) or .md (charts as PNG files in <name>_files/).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also export the verdict table (one row per probe measurement) as CSV.")
@click.option("--public-net", "public_nets", multiple=True, metavar="CIDR",
              help="Treat this network as public addresses for the bogon rule (labs, intranets). Repeatable.")
@click.option("--fingerprints", "fingerprints", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Extra blockpage fingerprints (OONI blocking-fingerprints CSV format). Repeatable.")
@click.option("--title", help="Report title.")
@click.option("--control-window", "control_window_h", type=click.IntRange(1, 168), default=6, show_default=True,
              help="Hours within which a control measurement of the same target counts.")
def report(datasets: tuple[Path, ...], output: Path, csv_path: Path | None, public_nets: tuple[str, ...],
           fingerprints: tuple[Path, ...], title: str | None, control_window_h: int) -> None:
    """Write an anomaly report an analyst could publish.

    Per country and network: what is blocked, how (methods), since when, on how many
    measurements and vantage points; shutdowns and other events with a timeline chart each;
    charts of anomalies over time and of blocking methods. See docs/reports.md.
    """
    import ipaddress

    for net in public_nets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise click.ClickException(f"--public-net {net!r} is not a CIDR network") from None
    for d in datasets:
        if not (d / "measurements").is_dir():
            raise click.ClickException(f"{d}: not a Vantage dataset (no measurements/ directory)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = write_report(list(datasets), output, csv=csv_path, public_nets=public_nets,
                                  fingerprints=list(fingerprints) or None, title=title,
                                  control_window_h=control_window_h)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        echo_warnings(caught)
    click.echo(f"wrote {result.output}: {result.events} event(s), {result.blocked_rows} blocked target/network "
               f"row(s), {result.measurements:,} verdicts" + (f"; verdicts CSV {result.csv}" if result.csv else ""))
