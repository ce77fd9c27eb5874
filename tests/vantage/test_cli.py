"""The CLI is its own reference: every command has help text and a section in docs/cli.md."""

from __future__ import annotations

import re

import click
from click.testing import CliRunner

from tests.support.paths import DOCS
from vantage.cli import main


def walk(command: click.Command, path: tuple[str, ...] = ("vantage",)) -> list[tuple[str, click.Command]]:
    """Every command and subcommand under ``command``, with its full path."""
    found = [(" ".join(path), command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            found.extend(walk(sub, (*path, name)))
    return found


def test_walk_finds_the_lists_commands() -> None:
    names = [name for name, _ in walk(main)]
    assert {"vantage", "vantage lists", "vantage lists show", "vantage lists update"} <= set(names)


def test_every_command_has_help_text() -> None:
    missing = [name for name, cmd in walk(main) if not (cmd.help or cmd.short_help or "").strip()]
    assert not missing, f"commands without help text (add a docstring): {', '.join(missing)}"


def test_every_command_is_documented_in_docs_cli_md() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    # A command counts as documented when a heading names its full path, e.g. "## vantage lists show".
    headings = {m.group(1).strip().strip("`").strip() for m in re.finditer(r"^#+\s+(.+)$", text, re.M)}
    undocumented = [name for name, _ in walk(main) if name not in headings]
    assert not undocumented, (
        "commands with no section in docs/cli.md (add a heading '## <command>' "
        f"with a description and an example): {', '.join(undocumented)}"
    )


def test_every_command_help_runs() -> None:
    runner = CliRunner()
    for name, _ in walk(main):
        args = name.split()[1:] + ["--help"]
        result = runner.invoke(main, args)
        assert result.exit_code == 0, f"`{name} --help` failed: {result.output}"
        assert "Usage:" in result.output


def test_unknown_option_is_one_clear_error() -> None:
    result = CliRunner().invoke(main, ["lists", "show", "--no-such-flag"])
    assert result.exit_code == 2
    assert "No such option '--no-such-flag'" in result.output
    assert "Traceback" not in result.output


def test_shared_analysis_options_and_exit_codes_are_documented() -> None:
    """The options analyze, report and events share, --verdicts and the exit codes have their
    place in docs/cli.md, and every flag the shared decorator adds is named there."""
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    headings = {m.group(1).strip() for m in re.finditer(r"^#+\s+(.+)$", text, re.M)}
    assert "Analysis options, shared by analyze, report and events" in headings
    assert "Exit status" in headings
    analyze = main.get_command(click.Context(main), "analyze")
    assert analyze is not None
    shared = {o for p in analyze.params if isinstance(p, click.Option) for o in p.opts
              if o not in ("-o", "--output", "--db", "-h", "--help")}
    assert shared >= {"--public-net", "--fingerprints", "--asn-db", "--control-window", "-v", "-q"}
    section = text.split("## Analysis options, shared by analyze, report and events", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{o}" in section or f"/{o}`" in section for o in shared), shared
    assert "--verdicts FILE" in text
    exits = text.split("## Exit status", 1)[1]
    assert all(f"- `{code}`" in exits for code in (0, 1, 2))
