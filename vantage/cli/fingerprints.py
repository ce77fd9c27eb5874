"""`vantage fingerprints …`: download OONI's and Censored Planet's blockpage fingerprints, and
show the set the analyzer uses by default."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from analysis import fingerprints as fp
from analysis.downloads import DownloadError
from vantage.cli.options import echo_json, json_option


@click.group("fingerprints")
def fingerprints() -> None:
    """Blockpage fingerprints: the analyzer's default set and its updates.

    The analyzer uses the project's own file (the labs' blockpages only) plus whatever
    `vantage fingerprints update` downloaded, plus files given with --fingerprints.
    """


@fingerprints.command("update")
@click.option("--url-base", envvar=fp.URL_BASE_ENV, default=None, metavar="URL",
              help=f"Fetch all four files from URL/<file name> instead of their GitHub repositories (env {fp.URL_BASE_ENV}).")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write to (default: the user data directory, see `vantage fingerprints show`).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds per download.")
def update(url_base: str | None, dest: Path | None, timeout: float) -> None:
    """Download OONI's blocking fingerprints (DNS and HTTP) and Censored Planet's blockpage and
    false-positive signatures into the user data directory.

    This is the only command that contacts those repositories. Every file is parsed before
    anything is replaced; when a download fails nothing is replaced.
    """
    try:
        result = fp.update_fingerprints(url_base=url_base, dest=dest, timeout=timeout)
    except DownloadError as exc:
        raise click.ClickException(str(exc)) from None
    for name, rows in result.files:
        click.echo(f"{result.dest / name}: {rows} fingerprints")


@fingerprints.command("show")
@click.option("--fingerprints", "extra", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Also load this file (OONI CSV or Censored Planet JSON lines); repeatable.")
@json_option("Print the sets as one JSON object ({sets: [...], directory, skipped}) instead of the table.")
def show(extra: tuple[Path, ...], as_json: bool) -> None:
    """Print the sets the analyzer would use by default: name, origin, date and count; bad rows
    are reported on stderr as FILE:LINE: reason."""
    try:
        fs = fp.load_default_fingerprints(extra)
    except fp.FingerprintError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:  # the skipped rows are in the document: nothing more on stderr
        echo_json({"sets": [{"set": s.name, "origin": s.origin, "date": s.date, "fingerprints": s.count}
                            for s in fs.sources],
                   "directory": str(fp.fingerprints_dir()), "skipped": list(fs.problems)})
        return
    out = Console()
    table = Table()
    for col in ("set", "origin", "date", "fingerprints"):
        table.add_column(col, justify="right" if col == "fingerprints" else "left")
    for s in fs.sources:
        table.add_row(s.name, s.origin, s.date or "-", str(s.count))
    out.print(table)
    out.print(f"downloaded sets live in {fp.fingerprints_dir()}", markup=False, highlight=False, soft_wrap=True)
    err = Console(stderr=True)
    for problem in fs.problems[:20]:
        err.print(f"skipped {problem}", markup=False, highlight=False, soft_wrap=True)
    if len(fs.problems) > 20:
        err.print(f"... and {len(fs.problems) - 20} more skipped rows", highlight=False)
