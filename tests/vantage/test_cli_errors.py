"""Any VantageError that reaches the command line is one line (click's ``Error: ...``, exit 1),
never a traceback; other exceptions (bugs) are not dressed up as user errors."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from probe.dataset import StoreError
from probe.errors import VantageError
from vantage.cli import main


@pytest.fixture
def failing() -> Iterator[dict[str, BaseException]]:
    raised: dict[str, BaseException] = {}

    @click.command("raise-test")
    def raise_test() -> None:
        raise raised["exc"]

    main.add_command(raise_test)
    try:
        yield raised
    finally:
        main.commands.pop("raise-test", None)


def test_a_vantage_error_is_one_line(failing: dict[str, BaseException]) -> None:
    failing["exc"] = StoreError("cannot write /data/x.parquet:\n  disk full")
    result = CliRunner().invoke(main, ["raise-test"])
    assert result.exit_code == 1
    assert result.output == "Error: cannot write /data/x.parquet: disk full\n"
    assert isinstance(result.exception, SystemExit)


def test_a_bug_is_not_turned_into_a_user_error(failing: dict[str, BaseException]) -> None:
    # The trap: a RuntimeError is not a VantageError and stays an exception (a bug to report).
    failing["exc"] = RuntimeError("bug")
    result = CliRunner().invoke(main, ["raise-test"])
    assert isinstance(result.exception, RuntimeError) and "Error: bug" not in result.output


def test_every_error_of_the_project_is_a_vantage_error() -> None:
    from analysis.fingerprints import FingerprintError
    from analysis.geo import GeoError
    from analysis.ingest.ooni.importer import OoniImportError
    from analysis.verdicts import VerdictError
    from probe.control import ControlError
    from probe.dataset import DatasetError
    from probe.experiments.base import InputError
    from probe.experiments.tunnels.wire import WireError

    for cls in (StoreError, DatasetError, InputError, ControlError, VerdictError, FingerprintError, GeoError,
                OoniImportError, WireError):
        assert issubclass(cls, VantageError), cls
    assert issubclass(WireError, ValueError)  # the wire parsers' callers catch ValueError too
