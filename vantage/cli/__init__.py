"""The `vantage` command: a thin click layer. Each command group lives in its own module here
and is registered below; commands parse options, call one library function and render."""

from __future__ import annotations

import importlib
import logging

import click

from probe import __version__
from probe.errors import VantageError


# Each command lives in its own module and is imported only when it runs (or when help lists
# it), so `vantage run` on a Raspberry Pi does not pay for matplotlib or DuckDB.
# Registration: one line per command, "name": "module:attribute".
COMMANDS: dict[str, str] = {
    "run": "vantage.cli.run:run",
    "lists": "vantage.cli.lists:lists",
    "demo": "vantage.cli.demo:demo",
    "control": "vantage.cli.control:control",
    "analyze": "vantage.cli.analyze:analyze",
    "report": "vantage.cli.report:report",
    "events": "vantage.cli.events:events",
    "ooni": "vantage.cli.ooni:ooni",
    "fingerprints": "vantage.cli.fingerprints:fingerprints",
    "geo": "vantage.cli.geo:geo_group",
    "collector": "vantage.cli.collector:collector",
    "upload": "vantage.cli.upload:upload",
    "consent": "vantage.cli.consent:consent",
    "config": "vantage.cli.config:config_group",
    "runs": "vantage.cli.runs:runs",
    "schedule": "vantage.cli.schedule:schedule",
    "locate": "vantage.cli.locate:locate",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module, attr = spec.split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        from vantage.cli.options import add_output_conventions

        self.commands[cmd_name] = add_output_conventions(command)  # -v/-q on every command
        return command

    def invoke(self, ctx: click.Context) -> object:
        # Any error of the project (probe.errors.VantageError) is one line, never a traceback;
        # Ctrl-C is exit status 130 for every command (the shell convention, 128 + SIGINT), also
        # at a prompt, where click turns it into Abort; click's own default would be 1.
        try:
            return super().invoke(ctx)
        except VantageError as exc:
            raise click.ClickException(" ".join(str(exc).split()) or type(exc).__name__) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            raise click.exceptions.Exit(130) from None
        except click.Abort as exc:
            if isinstance(exc.__context__, KeyboardInterrupt):
                click.echo("Interrupted.", err=True)
                raise click.exceptions.Exit(130) from None
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    # Every log line leaves without the probe's addresses (httpx logs request URLs at -v and
    # raw headers at -vv); a run adds its public address to the same scrubber when learned.
    from probe.net.scrub import install_log_filter

    install_log_filter()
