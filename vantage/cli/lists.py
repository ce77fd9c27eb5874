"""`vantage lists …`: show the size of target lists by category, download upstream lists."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from probe import testlists
from vantage.cli.options import json_option

MAX_PROBLEMS_SHOWN = 20


@click.group("lists")
def lists() -> None:
    """Target lists: Citizen Lab CSV or one URL per line.

    Inputs are web URLs, tunnel endpoint URLs (openvpn://, wireguard://, tor://, obfs4://,
    ikev2://) or anchors (dns://, tcp://). A list may be given as a file path, as the name of a
    downloaded list (`global`, `ir`, ...) or of a shipped one (`vantage`, `anchors`).
    """


@lists.command("show")
@click.argument("lists_", metavar="[LIST]...", nargs=-1)
@click.option(
    "-c", "--category", "categories", multiple=True, metavar="CODE",
    help="Count only entries of this category code (repeatable), e.g. -c NEWS -c HUMR.",
)
@click.option("--urls", is_flag=True,
              help="Print every URL with its category; without LIST, the lists `vantage run` would measure.")
@json_option("JSON: with --urls one object per line (list, url, category); else one per list "
             "(list, entries, categories).")
def show(lists_: tuple[str, ...], categories: tuple[str, ...], urls: bool, as_json: bool) -> None:
    """Print each list's size by category; skipped rows are reported on stderr by line number.

    Without LIST, shows the list shipped with Vantage (with --urls: what `vantage run` would test).
    """
    if urls:
        from vantage.cli.run import planned_lists

        _show_urls(list(lists_) or list(planned_lists()), categories, as_json)
        return
    specs = list(lists_) or ["vantage"]
    out = Console()
    err = Console(stderr=True)
    for spec in specs:
        try:
            path = testlists.resolve_list(spec)
            entries, problems = testlists.load_list(path, categories=categories or None)
        except testlists.TestListError as exc:
            raise click.ClickException(str(exc)) from exc
        if as_json:
            import json

            click.echo(json.dumps({"list": str(path), "entries": len(entries), "categories": [
                {"code": c, "description": d, "entries": n} for c, d, n in testlists.count_by_category(entries)]}))
            continue
        # The path goes on its own line: a table title would wrap a long path.
        out.print(f"{path}: {len(entries)} entries", markup=False, highlight=False, soft_wrap=True)
        table = Table()
        table.add_column("category")
        table.add_column("description")
        table.add_column("entries", justify="right")
        for code, description, n in testlists.count_by_category(entries):
            table.add_row(code, description, str(n))
        out.print(table)
        for p in problems[:MAX_PROBLEMS_SHOWN]:
            err.print(f"skipped {p}", markup=False, highlight=False, soft_wrap=True)
        if len(problems) > MAX_PROBLEMS_SHOWN:
            err.print(f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more skipped rows", highlight=False)


def _show_urls(specs: list[str], categories: tuple[str, ...], as_json: bool) -> None:
    import json

    out = Console()
    for spec in specs:
        try:
            path = testlists.resolve_list(spec)
            entries, _ = testlists.load_list(path, categories=categories or None)
        except testlists.TestListError as exc:
            raise click.ClickException(str(exc)) from exc
        if as_json:
            for e in entries:
                click.echo(json.dumps({"list": str(path), "url": e.url, "category": e.category_code}))
            continue
        table = Table(title=f"{path}: {len(entries)} entries", title_justify="left")
        table.add_column("url", overflow="fold")
        table.add_column("category")
        for e in entries:
            table.add_row(e.url, e.category_code or "")
        out.print(table)


@lists.command("update")
@click.option(
    "--country", "countries", multiple=True, metavar="CC",
    help="Also download this country's list (two-letter code, repeatable).",
)
@click.option(
    "--dest", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Directory to write to (default: the user data directory, see `vantage lists path`).",
)
@click.option(
    "--base-url", envvar=testlists.BASE_URL_ENV, default=None, metavar="URL",
    help=f"Where the lists are fetched from (default: the citizenlab/test-lists repository; env {testlists.BASE_URL_ENV}).",
)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds per download.")
def update(countries: tuple[str, ...], dest: Path | None, base_url: str | None, timeout: float) -> None:
    """Download the Citizen Lab global list (and country lists) into the user data directory.

    This is the only command that contacts the list repository; files are replaced only
    after a complete, valid download.
    """
    try:
        written = testlists.update_lists(countries, dest=dest, base_url=base_url, timeout=timeout)
    except testlists.TestListError as exc:
        raise click.ClickException(str(exc)) from exc
    for path in written:
        entries, problems = testlists.load_list(path)
        click.echo(f"{path}: {len(entries)} entries" + (f", {len(problems)} skipped rows" if problems else ""))


@lists.command("update-messaging")
@click.option("--url", default=None, metavar="URL",
              help="Where the newer messaging endpoints list is (default: $VANTAGE_MESSAGING_ENDPOINTS_URL).")
@click.option("--dest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: messaging.csv in the user data directory, which runs then use).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds for the download.")
def update_messaging(url: str | None, dest: Path | None, timeout: float) -> None:
    """Download a newer messaging-app endpoints list (signal, telegram, whatsapp, facebook_messenger).

    The file replaces the old copy only when every row parses; runs then measure its endpoints
    instead of the shipped list (testlists/messaging.csv). --messaging-endpoints on `vantage run`
    overrides both.
    """
    from probe.messaging_endpoints import EndpointsUpdateError, update_endpoints

    try:
        path, n = update_endpoints(url, dest=dest, timeout=timeout)
    except EndpointsUpdateError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{path}: {n} endpoints")


@lists.command("path")
def path() -> None:
    """Print the directory where downloaded lists live, and the shipped list's path."""
    click.echo(f"downloaded: {testlists.lists_dir()}")
    click.echo(f"shipped:    {testlists.shipped_list_path()}")
