"""`vantage config show|set|unset|path`: the volunteer's TOML configuration."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from probe import config as cfg
from vantage.cli.options import json_option, output_options


@click.group("config")
def config_group() -> None:
    """The configuration file (flags > VANTAGE_* environment > file > defaults)."""


@config_group.command("show")
@json_option("Print JSON: {key: {value, source, env}}.")
@output_options
def show(as_json: bool, quiet: bool) -> None:
    """Every setting, its value and where the value comes from."""
    try:
        eff = cfg.effective()
    except cfg.ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({k: {"value": v, "source": src, "env": cfg.SETTINGS[k].env}
                               for k, (v, src) in eff.items()}, indent=2))
        return
    if quiet:
        return
    table = Table(title=f"configuration ({cfg.config_path()})", title_justify="left")
    for col in ("key", "value", "from", "environment", "meaning"):
        table.add_column(col)
    for key, (v, src) in eff.items():
        shown = ",".join(v) if isinstance(v, list) else ("" if v is None else str(v))
        table.add_row(key, shown, src, cfg.SETTINGS[key].env or "", cfg.SETTINGS[key].help)
    Console().print(table)


@config_group.command("set")
@click.argument("key")
@click.argument("value")
@output_options
def set_(key: str, value: str, quiet: bool) -> None:
    """Set KEY to VALUE in the file (lists comma-separated; sizes may end in K, M or G)."""
    try:
        parsed = cfg.parse_value(key, value)
        if key.startswith("consent."):
            raise cfg.ConfigError("consent is recorded by `vantage consent`, not set by hand")
        path = cfg.save({key: parsed})
    except cfg.ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {cfg.config_path()}: {exc.strerror or exc}") from None
    if not quiet:
        click.echo(f"{key} = {parsed!r} ({path})")


@config_group.command("unset")
@click.argument("key")
@output_options
def unset(key: str, quiet: bool) -> None:
    """Remove KEY from the file (its default applies again)."""
    try:
        if key not in cfg.SETTINGS:
            raise cfg.ConfigError(f"unknown setting {key}")
        path = cfg.save({}, unset=(key,))
    except cfg.ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not quiet:
        click.echo(f"{key} unset ({path})")


@config_group.command("path")
@output_options
def path(quiet: bool) -> None:
    """Print where the configuration file is (VANTAGE_CONFIG overrides it)."""
    click.echo(str(cfg.config_path()))
