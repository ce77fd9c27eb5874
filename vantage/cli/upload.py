"""`vantage upload`: send a dataset's measurements to a collector (docs/collector.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click
import platformdirs

_SIZE = re.compile(r"(?i)\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?(?:/s)?\s*")


def parse_rate(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> int | None:
    """200k, 1.5M, 64KiB/s -> bytes per second."""
    if value is None:
        return None
    m = _SIZE.fullmatch(value)
    if not m:
        raise click.BadParameter(f"a rate is a number of bytes per second such as 200k or 1M, got {value!r}")
    return int(float(m[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m[2].lower()])


def upload_options(f: Any) -> Any:
    """Options shared by `vantage upload` and `vantage run --upload`."""
    for option in reversed([
        click.option("--proxy", envvar="VANTAGE_UPLOAD_PROXY", default=None, metavar="URL",
                     help="Send through this proxy, e.g. socks5://127.0.0.1:9050 (Tor's SocksPort) when the "
                          "collector is blocked (env VANTAGE_UPLOAD_PROXY)."),
        click.option("--token", envvar="VANTAGE_COLLECTOR_TOKEN", default=None,
                     help="The collector's token, for private deployments (env VANTAGE_COLLECTOR_TOKEN)."),
        click.option("--collector-ca", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Trust this CA bundle (PEM) for the collector's certificate (e.g. a private one)."),
        click.option("--max-rate", callback=parse_rate, default=None, metavar="RATE",
                     help="Bandwidth cap, bytes per second (e.g. 200k, 1M); at least 4k."),
    ]):
        f = option(f)
    return f


def default_output() -> Path:  # where `vantage run` writes by default
    return Path(platformdirs.user_data_dir("vantage", appauthor=False)) / "results"


def do_upload(output: Path, collector: str, *, proxy: str | None, token: str | None, collector_ca: str | None,
              max_rate: int | None, progress: bool = True, fail_offline: bool = True) -> None:
    """Upload with a progress bar and render the result; problems are one line each."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from probe.upload import UploadError, upload

    bar = Progress("uploading", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   disable=not progress, transient=True)
    task = bar.add_task("upload", total=None)
    try:
        with bar:
            result = upload(output, collector, proxy=proxy, token=token, verify=collector_ca or True,
                            max_rate=max_rate,
                            progress=lambda done, total: bar.update(task, completed=done, total=total))
    except UploadError as exc:
        raise click.ClickException(str(exc)) from None
    for name, reason in result.refused:
        click.echo(f"collector refused {name}: {reason}", err=True)
    click.echo(f"uploaded {result.files} files to {collector}: {result.accepted} measurements accepted, "
               f"{result.duplicates} already there, {result.rejected} rejected")
    if result.rejected:
        click.echo("rejected rows: see the receipts in " + str(Path(output) / "uploads"), err=True)
    if result.offline_reason is not None:
        msg = (f"collector unreachable ({result.offline_reason}); {result.pending} files stay queued: "
               "run `vantage upload` again later")
        if fail_offline:
            raise click.ClickException(msg)
        click.echo("warning: " + msg, err=True)


@click.command("upload")
@click.option("--collector", required=True, metavar="URL", help="The collector's base URL, e.g. https://collector.example.org")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The dataset directory to upload (default: where `vantage run` writes).")
@upload_options
@click.option("--no-progress", is_flag=True, help="No progress bar (it is off anyway when not on a terminal).")
def upload(collector: str, output: Path | None, proxy: str | None, token: str | None, collector_ca: str | None,
           max_rate: int | None, no_progress: bool) -> None:
    """Send every finished measurement file not yet acknowledged by COLLECTOR, oldest first.

    Each file's receipt is recorded beside the dataset (uploads/), so running it again sends
    only the rest; being stopped at any moment loses and duplicates nothing. Network trouble
    is retried with backoff; when the collector stays unreachable the files stay queued.
    """
    do_upload(output or default_output(), collector, proxy=proxy, token=token, collector_ca=collector_ca,
              max_rate=max_rate, progress=not no_progress)
