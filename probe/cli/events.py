"""`vantage events`: shutdowns, new blocks, site outages and probe faults found in datasets."""

from __future__ import annotations

import ipaddress
import warnings
from pathlib import Path

import click
import duckdb
from rich.console import Console

from analysis.detector import DetectorConfig
from analysis.shutdown import render_events, write_events
from analysis.signals import DatasetError


@click.command("events")
@click.argument("datasets", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Parquet file to write the events to (one row per event).")
@click.option("--warning", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="Warn when a signal falls below this fraction of its baseline.")
@click.option("--critical", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Critical when a signal falls below this fraction of its baseline.")
@click.option("--baseline-days", type=click.IntRange(1, 60), default=7, show_default=True,
              help="Days of history the baselines (moving medians) look back.")
@click.option("--verdicts/--no-verdicts", default=True, show_default=True,
              help="Also use the analyzer's verdicts, so blocks by blockpages (HTTP 200) count; "
                   "--no-verdicts uses raw reachability only (faster).")
@click.option("--public-net", "public_nets", multiple=True, metavar="CIDR",
              help="For the verdicts: treat this network as public addresses (labs, intranets). Repeatable.")
@click.option("--fingerprints", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="For the verdicts: extra blockpage fingerprints (OONI CSV format). Repeatable.")
@click.option("--quiet", "-q", is_flag=True, help="Do not print the table of events.")
def events(datasets: tuple[Path, ...], output: Path, warning: float, critical: float, baseline_days: int,
           verdicts: bool, public_nets: tuple[str, ...], fingerprints: tuple[Path, ...], quiet: bool) -> None:
    """Detect shutdowns and blocking events in one or more dataset directories.

    Builds per (country, network, hour) signals (measurement volume, anchor and target success,
    per-layer failures), compares each with its baseline (warning below --warning, critical below
    --critical), and a change detector per (country, network, target); then classifies every
    event as shutdown, service_blocking, site_outage or probe_fault. See docs/shutdowns.md.
    """
    if output.suffix.lower() != ".parquet":
        raise click.ClickException(f"{output}: --output must be a .parquet file")
    for net in public_nets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise click.ClickException(f"--public-net {net!r} is not a CIDR network") from None
    if critical >= warning:
        raise click.ClickException(f"--critical ({critical}) must be below --warning ({warning})")
    for d in datasets:
        if not (d / "measurements").is_dir():
            raise click.ClickException(f"{d}: not a Vantage dataset (no measurements/ directory)")
    cfg = DetectorConfig(warning=warning, critical=critical, baseline_days=baseline_days)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            detection = write_events(list(datasets), output, cfg, verdicts=verdicts, public_nets=public_nets,
                                     fingerprints=list(fingerprints) or None)
    except (duckdb.Error, DatasetError, OSError) as exc:
        raise click.ClickException(f"cannot detect events: {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        # the analyzer's errors for a bad --public-net or fingerprint file: the user's to fix
        if type(exc).__name__ in ("VerdictError", "FingerprintError"):
            raise click.ClickException(str(exc).splitlines()[0]) from None
        raise
    finally:
        echo_warnings(caught)
    console = Console()
    if not quiet:
        console.print(render_events(detection.events, title=f"{len(detection.events)} event(s)",
                                    compact=console.width < 160))
    console.print(f"wrote {len(detection.events)} event(s) to {output}")


def echo_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Skipped files and similar warnings as one line each on stderr, never a traceback."""
    for w in caught:
        if not issubclass(w.category, DeprecationWarning):
            click.echo(f"warning: {w.message}", err=True)
