"""Options every verdict-making command shares, as one decorator each, and the one place where
the analysis' errors become a one-line `Error:`.

`vantage analyze`, `report` and `events` take the same `--public-net`, `--fingerprints`,
`--asn-db` and `--control-window` (same types, same defaults) through :func:`analysis_options`,
so the same flags give the same verdicts whichever command computes them; `report` and
`events` also read a verdicts file through :func:`verdicts_option`. Exit codes: 0 ok, 1 the
work failed (bad data, unwritable output), 2 the command line is wrong (:class:`UsageLineError`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import logging
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from analysis.pipeline import AnalysisOptions

DEFAULT_CONTROL_WINDOW_H = 6.0
# The parameter names the analysis options use (click's), in the order they are printed.
ANALYSIS_PARAMS = ("public_nets", "fingerprint_files", "asn_db", "control_window")
_FLAG = {"public_nets": "--public-net", "fingerprint_files": "--fingerprints", "asn_db": "--asn-db",
         "control_window": "--control-window"}


class UsageLineError(click.ClickException):
    """A wrong value or combination on the command line: one `Error:` line, exit status 2."""

    exit_code = 2


def build_options(public_nets: Sequence[str] = (), fingerprint_files: Sequence[Path | str] = (),
                  asn_db: Path | str | None = None, control_window: float = DEFAULT_CONTROL_WINDOW_H,
                  engine: str = "duckdb", spark_master: str | None = None) -> AnalysisOptions:
    """The analysis options of a command line (checked), as every command hands them to the
    verdict stage. `vantage demo` builds its own through this function too."""
    from analysis.pipeline import AnalysisOptions

    for net in public_nets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise UsageLineError(f"--public-net {net!r} is not a CIDR network") from None
    if control_window < 0:
        raise UsageLineError(f"--control-window must be zero or more hours (got {control_window:g})")
    if spark_master is not None and engine != "spark":
        raise UsageLineError("--spark-master needs --engine spark")
    if engine == "spark":
        from analysis.spark_engine import SparkEngineError, require_pyspark

        try:
            require_pyspark()
        except SparkEngineError as exc:
            raise click.ClickException(str(exc)) from None
        if spark_master is not None and not spark_master.startswith(("spark://", "local")):
            raise UsageLineError(f"--spark-master {spark_master!r}: give spark://HOST:PORT or local[N]")
    # DEFAULTS: use_defaults=True makes the stage add the downloaded default fingerprint sets and
    # ASN database when present: the two one-line hooks are in analysis/pipeline.py
    # (load_fingerprint_set and resolve_asn_db, each marked "# DEFAULTS:").
    return AnalysisOptions(public_nets=tuple(public_nets), fingerprint_files=tuple(Path(p) for p in fingerprint_files),
                           asn_db=Path(asn_db) if asn_db is not None else None, control_window_h=control_window,
                           use_defaults=True, engine=engine, spark_master=spark_master)


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def memory_bytes(text: str) -> int:
    """``--memory`` as bytes: a number and a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB;
    none means bytes); at least 128 MiB, below which DuckDB cannot run the verdict stage."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in _UNITS:
        raise UsageLineError(f"--memory {text!r} is not a size (e.g. 512MB, 2GB)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value < 128 << 20:
        raise UsageLineError(f"--memory {text!r} is too small: the analysis needs at least 128MiB")
    return value


def command_args(options: AnalysisOptions) -> list[str]:
    """The flags that give ``options`` on a `vantage analyze|report|events` command line
    (the inverse of :func:`build_options`): what the demo prints for a reader to re-run."""
    args: list[str] = []
    for net in options.public_nets:
        args += ["--public-net", net]
    for f in options.fingerprint_files:
        args += ["--fingerprints", str(f)]
    if options.asn_db is not None:
        args += ["--asn-db", str(options.asn_db)]
    if options.control_window_h != DEFAULT_CONTROL_WINDOW_H:
        args += ["--control-window", f"{options.control_window_h:g}"]
    if options.engine != "duckdb":
        args += ["--engine", options.engine]
    if options.spark_master is not None:
        args += ["--spark-master", options.spark_master]
    return args


def shell_line(args: Sequence[str | Path]) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def analysis_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the shared analysis options; the command receives them as ``options``
    (an :class:`analysis.pipeline.AnalysisOptions`). With :func:`verdicts_option` on the same
    command, giving any of them together with ``--verdicts`` is a usage error: the verdicts file
    already carries the options it was made with."""

    @functools.wraps(f)
    def wrapper(*args: Any, public_nets: tuple[str, ...], fingerprint_files: tuple[Path, ...],
                asn_db: Path | None, control_window: float, engine: str, spark_master: str | None,
                memory: str | None,
                **kwargs: Any) -> Any:
        if kwargs.get("verdicts_file") is not None:
            ctx = click.get_current_context()
            given = [_FLAG[p] for p in ANALYSIS_PARAMS
                     if ctx.get_parameter_source(p) not in (None, click.core.ParameterSource.DEFAULT)]
            if given:
                raise UsageLineError(f"{given[0]} cannot be combined with --verdicts: the verdicts file records the "
                                     "options it was made with (`vantage report` prints them)")
        options = build_options(public_nets, fingerprint_files, asn_db, control_window, engine, spark_master)
        if memory is not None:  # how much memory, not which verdicts: not recorded with them
            options = dataclasses.replace(options, memory_limit=memory_bytes(memory))
        return f(*args, options=options, **kwargs)

    decorators = [
        click.option("--public-net", "public_nets", multiple=True, metavar="CIDR",
                     help="Treat this network as public for the bogon rule (labs, intranets); repeatable."),
        click.option("--fingerprints", "fingerprint_files", multiple=True, metavar="FILE",
                     type=click.Path(dir_okay=False, path_type=Path),
                     help="Extra blockpage fingerprints (OONI blocking-fingerprints CSV); repeatable."),
        click.option("--asn-db", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
                     help="MaxMind-format ASN database: answers in the control's ASN count as consistent."),
        click.option("--control-window", "control_window", type=float, default=DEFAULT_CONTROL_WINDOW_H,
                      show_default=True, metavar="HOURS",
                      help="How far apart in time a control run may be to pair with a probe measurement."),
        click.option("--engine", type=click.Choice(["duckdb", "spark"]), default="duckdb", show_default=True,
                     help="Where verdicts are computed: DuckDB in this process, or an Apache Spark cluster "
                          "(pip install 'vantage[spark]'; same verdicts; see docs/scale.md)."),
        click.option("--spark-master", metavar="URL",
                     help="With --engine spark: spark://HOST:PORT of a standalone cluster, or local[N] "
                          "[default: local[*]]."),
        click.option("--memory", metavar="SIZE",
                     help="Memory for the analysis' database, e.g. 512MB or 2GB (default: a quarter of the "
                          "machine's, at most 512 MB); beyond it, work spills to a temporary directory."),
    ]
    for deco in reversed(decorators):
        wrapper = deco(wrapper)
    return wrapper


def verdicts_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--verdicts FILE``: read the verdicts `vantage analyze` wrote instead of computing them
    (the command receives ``verdicts_file``)."""
    return click.option("--verdicts", "verdicts_file", type=click.Path(path_type=Path),
                        metavar="FILE",
                        help="Verdicts written by `vantage analyze` (with the options they were made with); "
                             "DATASETS then default to those the verdicts were made from.")(f)


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``-v/--verbose`` (repeatable: more log lines) and ``-q/--quiet`` (no tables, warnings
    still shown); the command receives ``quiet``."""

    @functools.wraps(f)
    def wrapper(*args: Any, verbose: int, **kwargs: Any) -> Any:
        if verbose:
            logging.getLogger().setLevel(max(logging.DEBUG, logging.WARNING - 10 * verbose))
        return f(*args, **kwargs)

    wrapper = click.option("-q", "--quiet", is_flag=True, help="Print no tables; warnings and errors still show.")(wrapper)
    wrapper = click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")(wrapper)
    return wrapper


def json_option(help: str = "Print JSON instead of the table.") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--json``, the same flag on every command that prints a table: the command receives
    ``as_json`` and prints one JSON document (valid for ``json.loads``, the table's numbers)
    on standard output instead of the table; warnings still go to standard error."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def echo_json(value: Any) -> None:
    """One JSON document on standard output (paths and dates as strings)."""
    import json

    click.echo(json.dumps(value, indent=2, default=str))


def _verbose_callback(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        logging.getLogger().setLevel(max(logging.DEBUG, logging.WARNING - 10 * value))


def _quiet_callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # What -q means everywhere: nothing on standard output (tables, summaries); warnings and
    # errors go to standard error and still show. Undone when the command's context closes.
    if value:
        import io
        import os

        sink: io.TextIOWrapper = ctx.with_resource(open(os.devnull, "w", encoding="utf-8"))  # noqa: SIM115
        ctx.with_resource(contextlib.redirect_stdout(sink))


def add_output_conventions(command: click.Command) -> click.Command:
    """Give every leaf command under ``command`` ``-v/--verbose`` and ``-q/--quiet`` when it has
    not its own (the commands that use :func:`output_options` keep theirs)."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            add_output_conventions(sub)
        return command
    names = {p.name for p in command.params}
    flags = {o for p in command.params for o in getattr(p, "opts", [])}
    if "verbose" not in names and "-v" not in flags:
        command.params.append(click.Option(["-v", "--verbose"], count=True, expose_value=False, is_eager=True,
                                           callback=_verbose_callback, help="More log output (-vv for debug)."))
    if "quiet" not in names and "-q" not in flags:
        command.params.append(click.Option(["-q", "--quiet"], is_flag=True, expose_value=False,
                                           callback=_quiet_callback,
                                           help="Print nothing on standard output; warnings and errors still show."))
    return command


def check_datasets(datasets: Sequence[Path]) -> None:
    """Every dataset directory named on the command line exists (else one line, exit 1)."""
    for d in datasets:
        if not d.exists():
            raise click.ClickException(f"{d}: no such dataset directory")


def _analysis_errors() -> tuple[type[Exception], ...]:
    from analysis.aggregates import DatabaseError
    from analysis.db import DatasetError
    from analysis.fingerprints import FingerprintError
    from analysis.pipeline import OutputError, VerdictsFileError
    from analysis.verdicts import VerdictError

    ours: tuple[type[Exception], ...] = (DatasetError, FingerprintError, VerdictError, VerdictsFileError, OutputError,
                                         DatabaseError)
    report = sys.modules.get("analysis.report")  # only a command that loaded it (matplotlib) can raise its error
    return ours + ((report.ReportError,) if report is not None else ())


@contextlib.contextmanager
def one_line_errors(what: str = "") -> Iterator[None]:
    """The analysis' own errors (bad dataset, fingerprint file, ASN database, verdicts file,
    unwritable output) become one `Error:` line; so do DuckDB's and the OS's."""
    import duckdb

    prefix = f"{what}: " if what else ""
    try:
        yield
    except click.ClickException:
        raise
    except Exception as exc:
        if isinstance(exc, _analysis_errors()):
            raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        if isinstance(exc, OSError):
            where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
            raise click.ClickException(f"{prefix}{exc.strerror or exc}{where}") from None
        if isinstance(exc, duckdb.Error):  # a dataset DuckDB cannot read after all (e.g. a file changed meanwhile)
            raise click.ClickException(f"{prefix}{str(exc).splitlines()[0]}") from None
        raise


def echo_skipped(skipped: Sequence[tuple[Path, str]], problems: Sequence[str] = (), limit: int = 10) -> None:
    """Skipped Parquet files and fingerprint rows, one `warning:` line each on stderr."""
    for path, reason in skipped:
        click.echo(f"warning: skipped {path}: {reason}", err=True)
    for problem in problems[:limit]:
        click.echo(f"warning: fingerprint skipped: {problem}", err=True)
    if len(problems) > limit:
        click.echo(f"warning: ... and {len(problems) - limit} more fingerprints skipped", err=True)


__all__ = ["UsageLineError", "add_output_conventions", "analysis_options", "build_options", "check_datasets", "command_args", "echo_json", "echo_skipped", "json_option",
           "memory_bytes",
           "one_line_errors", "output_options", "shell_line", "verdicts_option"]
