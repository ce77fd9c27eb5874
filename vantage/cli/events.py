"""`vantage events`: shutdowns, new blocks, site outages and probe faults found in datasets."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from vantage.cli.options import (
    UsageLineError,
    analysis_options,
    check_datasets,
    echo_json,
    json_option,
    one_line_errors,
    output_options,
    verdicts_option,
)

if TYPE_CHECKING:
    from analysis.events import Event
    from analysis.pipeline import AnalysisOptions, Verdicts


@click.command("events")
@click.argument("datasets", nargs=-1, type=click.Path(path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Parquet file to write the events to (one row per event).")
@click.option("--warning", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True,
              help="Warn when a signal falls below this fraction of its baseline.")
@click.option("--critical", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Critical when a signal falls below this fraction of its baseline.")
@click.option("--baseline-days", type=click.IntRange(1, 60), default=7, show_default=True,
              help="Days of history the baselines (moving medians) look back.")
@click.option("--no-verdicts", "raw", is_flag=True,
              help="Use raw reachability only, no verdicts (faster; blockpages served with HTTP 200 go unseen).")
@verdicts_option
@analysis_options
@json_option("Print the events as one JSON object ({events: [...], output}) instead of the table.")
@output_options
def events(datasets: tuple[Path, ...], output: Path, warning: float, critical: float, baseline_days: int,
           raw: bool, verdicts_file: Path | None, options: AnalysisOptions, quiet: bool, as_json: bool) -> None:
    """Detect shutdowns and blocking events in one or more dataset directories.

    Builds per (country, network, hour) signals (measurement volume, anchor and target success,
    per-layer failures), compares each with its baseline (warning below --warning, critical below
    --critical), and a change detector per (country, network, target); then classifies every
    event as shutdown, service_blocking, site_outage or probe_fault. The change detector also
    counts verdict-blocked measurements: those of --verdicts FILE (from `vantage analyze`), or
    computed from DATASETS exactly as `vantage analyze` does. See docs/shutdowns.md.
    """
    from analysis.detector import DetectorConfig
    from analysis.pipeline import check_output
    from analysis.shutdown import render_events, write_events

    if output.suffix.lower() != ".parquet":
        raise click.ClickException(f"{output}: --output must be a .parquet file")
    if critical >= warning:
        raise click.ClickException(f"--critical ({critical}) must be below --warning ({warning})")
    if raw and verdicts_file is not None:
        raise UsageLineError("--no-verdicts and --verdicts exclude each other")
    cfg = DetectorConfig(warning=warning, critical=critical, baseline_days=baseline_days)
    with one_line_errors("cannot detect events"):
        check_output(output)
        if raw:
            check_datasets(datasets)
            if not datasets:
                raise UsageLineError("give DATASETS (or --verdicts FILE)")
            paths, table = list(datasets), None
        else:
            paths, verdicts, _ = verdicts_for_command(datasets, verdicts_file, options, "vantage events")
            table = verdicts.table if verdicts is not None else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                detection = write_events(paths, output, cfg, verdicts=table,
                                         spark_master=(options.spark_master or "local[*]") if options.engine == "spark"
                                         else None)
            except OSError as exc:
                raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
            finally:
                echo_warnings(caught)
    if as_json:  # printed even with -q, as every --json
        echo_json({"output": str(output), "count": len(detection.events),
                   "events": [event_dict(e) for e in detection.events]})
        return
    console = Console()
    if not quiet:
        console.print(render_events(detection.events, title=f"{len(detection.events)} event(s)",
                                    compact=console.width < 160))
    console.print(f"wrote {len(detection.events)} event(s) to {output}", markup=False, highlight=False)


def event_dict(e: Event) -> dict[str, object]:
    """One event as JSON: its fields (times in ISO 8601 UTC) and its duration in hours."""
    d = dataclasses.asdict(e)
    d["start"] = e.start.isoformat()
    d["end"] = e.end.isoformat() if e.end is not None else None
    d["duration_h"] = e.duration_h
    return d


def verdicts_for_command(datasets: tuple[Path, ...], verdicts_file: Path | None, options: AnalysisOptions,
                         written_by: str) -> tuple[list[Path], Verdicts | None, str | None]:
    """(datasets, verdicts, where the verdicts come from) for `report` and `events`: the
    verdicts file `vantage analyze` wrote, with the datasets it names unless given; or, from
    the datasets alone, the same verdict stage `vantage analyze` runs, with the same options."""
    from analysis.pipeline import dataset_paths, load_verdicts, run_stage

    if verdicts_file is not None:
        verdicts = load_verdicts(verdicts_file)
        paths = dataset_paths(verdicts_file, verdicts.metadata, list(datasets))
        check_datasets(paths)
        return paths, verdicts, f"read from {verdicts_file.name}"  # published: the file, not where the analyst keeps it
    if not datasets:
        raise UsageLineError("give DATASETS, or --verdicts FILE written by `vantage analyze`")
    check_datasets(datasets)
    # skipped files: the stage keeps them quiet (in its result); the command's own reading of
    # the datasets warns about each once
    verdicts = run_stage(list(datasets), options, written_by=written_by)
    return list(datasets), verdicts, "computed from the datasets by the verdict stage (as `vantage analyze`)"


def echo_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Skipped files and similar warnings as one line each on stderr, never a traceback."""
    for w in caught:
        if not issubclass(w.category, DeprecationWarning):
            click.echo(f"warning: {w.message}", err=True)
