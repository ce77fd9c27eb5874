"""`vantage collector serve`: receive probes' uploads into one dataset (docs/collector.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


@click.group("collector")
def collector() -> None:
    """The collector: where probes upload their measurements and analysts read them."""


@collector.command("serve")
@click.option("--listen", default="127.0.0.1:8443", show_default=True, metavar="HOST:PORT",
              help="Address and port to listen on ([::]:PORT for IPv6; 0.0.0.0:PORT for every IPv4 address).")
@click.option("--data", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The dataset directory the measurements go into (analysts read it with `vantage analyze`).")
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Serve HTTPS with this certificate chain (PEM); use with --key.")
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Private key (PEM) for --cert.")
@click.option("--token", envvar="VANTAGE_COLLECTOR_TOKEN", default=None,
              help="Accept only submissions with `Authorization: Bearer TOKEN` (private deployments; "
                   "env VANTAGE_COLLECTOR_TOKEN). Without it submissions are anonymous.")
@click.option("--max-body", type=click.IntRange(min=1024), default=None, metavar="BYTES",
              help="Largest request body (default 16 MiB).")
@click.option("--max-decoded", type=click.IntRange(min=1024), default=None, metavar="BYTES",
              help="Largest batch once decompressed and decoded (default 256 MiB): a compression bomb stops here.")
@click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Most rows in one batch (default 20,000).")
@click.option("--max-concurrent", type=click.IntRange(min=1, max=1024), default=None,
              help="Submissions handled at once; more are answered 503 with Retry-After (default 16).")
@click.option("--read-timeout", type=click.FloatRange(min=0.1), default=None, metavar="S",
              help="Seconds a submitter may send nothing (default 30); slower than 1 KiB/s after that is refused too.")
def serve(listen: str, data: Path, cert: Path | None, key: Path | None, token: str | None,
          max_body: int | None, max_decoded: int | None, max_rows: int | None, max_concurrent: int | None, read_timeout: float | None) -> None:
    """Accept measurement batches over HTTP(S) and write each measurement once into DATA.

    Probes send with `vantage upload` (or `vantage run --upload`); other tools POST Parquet to
    /v1/measurements (see docs/collector.md). No submitter's address is logged or stored.
    """
    import dataclasses

    from collector.ingest import Limits
    from collector.server import parse_listen
    from collector.server import serve as run_server
    from probe.store import RunLocked, StoreError

    if (cert is None) != (key is None):
        raise click.ClickException("--cert and --key go together")
    try:
        parse_listen(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    given: dict[str, Any] = {"max_body": max_body, "max_decoded": max_decoded, "max_rows": max_rows, "max_concurrent": max_concurrent,
             "read_timeout_s": read_timeout}
    limits = dataclasses.replace(Limits(), **{k: v for k, v in given.items() if v is not None})
    try:
        run_server(listen, data, cert=cert, key=key, token=token, limits=limits)
    except RunLocked:
        raise click.ClickException(f"another collector is serving {data} right now (one collector per directory)") from None
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {listen} from {data}: {exc.strerror or exc}") from None
