"""Run several `vantage` command lines in one interpreter, one after another (the lab's tunnel
runs: four experiments per vantage point would otherwise pay four interpreter start-ups).

    python vantage_batch.py '["run", "--experiment", "openvpn", ...]' '["run", ...]'

Exit status: the number of command lines that failed; their errors go to stderr.
"""

from __future__ import annotations

import json
import sys

import click

from vantage.cli import main


def run_batch(command_lines: list[list[str]]) -> int:
    failed = 0
    for argv in command_lines:
        try:
            main.main(args=argv, prog_name="vantage", standalone_mode=False)
        except click.ClickException as exc:
            print(f"vantage {' '.join(argv[:3])}: {exc.format_message()}", file=sys.stderr)
            failed += 1
        except SystemExit as exc:
            if exc.code not in (0, None):
                print(f"vantage {' '.join(argv[:3])}: exit status {exc.code}", file=sys.stderr)
                failed += 1
    return failed


if __name__ == "__main__":
    sys.exit(run_batch([json.loads(arg) for arg in sys.argv[1:]]))
