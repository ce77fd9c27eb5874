"""The `vantage` command: a thin click layer. Each command group lives in its own module here
and is registered below; commands parse options, call one library function and render."""

from __future__ import annotations

import logging

import click

from probe import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vantage")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Vantage: measure internet censorship and shutdowns, and analyze the results.

    Volunteers run `vantage run` inside the network they watch; control operators run the same
    probe (or `vantage control serve`) from an uncensored network; analysts run `vantage
    analyze` and `vantage report` over the Parquet datasets. `vantage demo` shows the whole
    pipeline against a small censored internet on loopback.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


# Registration: one line per command module (each defines one click command or group).
from probe.cli import lists as _lists  # noqa: E402
main.add_command(_lists.lists)
from probe.cli import ooni as _ooni  # noqa: E402
main.add_command(_ooni.ooni)
from probe.cli import control as _control  # noqa: E402
main.add_command(_control.control)
from probe.cli import demo as _demo  # noqa: E402
main.add_command(_demo.demo)
from probe.cli import run as _run  # noqa: E402
main.add_command(_run.run)
from probe.cli import events as _events  # noqa: E402
main.add_command(_events.events)
from probe.cli import report as _report  # noqa: E402
main.add_command(_report.report)
from probe.cli import analyze as _analyze  # noqa: E402
main.add_command(_analyze.analyze)
