"""`vantage consent`: informed consent, asked once before a volunteer's first measurement.

`vantage run` calls :func:`ensure_consent`: on a terminal it explains and asks; without one
(cron, systemd, a pipe) and without a recorded answer it refuses with one line. The answer is
kept in the config file (`consent.given`, `consent.version`, `consent.at`).
"""

from __future__ import annotations

import sys

import click

from probe.config import ConfigError, config_path, consent_recorded, record_consent

CATEGORIES_URL = "https://github.com/citizenlab/test-lists/blob/master/lists/00-LEGEND-new_category_codes.csv"

CONSENT_TEXT = f"""\
Before Vantage measures anything, please read this.

WHAT IS MEASURED. Vantage connects, from this computer and this network, to the websites
and services on the test lists (the global list, your country's list, or the lists you
chose), and records whether each could be reached: DNS answers, connections, TLS, and the
first part of each page. Some listed sites are ones your government or network may block on
purpose: news, human rights, political opposition, religion, LGBTQ+, sex education,
circumvention tools, gambling, pornography. Categories: {CATEGORIES_URL}
(`vantage lists show --urls` prints every URL before you run).

WHO CAN SEE IT. Anyone watching your network (your ISP, your employer, a government) can see
that this computer contacted those sites, as if you had visited them. The results are written
on this computer; if you upload them they become public data. Vantage never writes your IP
address into results or logs, but the country and network are recorded.

THE RISKS. In some countries visiting, or trying to reach, blocked sites is illegal or draws
attention, and running a measurement tool may itself be seen as a political act. If you are
unsure whether this is safe for you, do not run it. You can stop at any time (Ctrl-C), limit
the lists and categories (`vantage config set probe.categories NEWS,HUMR`), and withdraw this
consent with `vantage consent --revoke`.
"""


def ensure_consent() -> None:
    """Return when consent is recorded (or just given at the terminal); else stop."""
    try:
        if consent_recorded():
            return
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise click.ClickException(
                "no informed consent recorded: run `vantage consent` once on a terminal before measuring"
            )
        click.echo(CONSENT_TEXT)
        if not click.confirm("Do you understand the risks and want Vantage to measure from this network?",
                             default=False):
            record_consent(False)
            raise click.ClickException("consent not given: nothing measured (`vantage consent` to decide again)")
        record_consent(True)
        click.echo(f"Consent recorded in {config_path()}.")
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("consent")
@click.option("--yes", "agree", is_flag=True,
              help="Record consent without the question (after reading `vantage consent --show`).")
@click.option("--revoke", is_flag=True, help="Withdraw consent: `vantage run` asks again or refuses.")
@click.option("--show", is_flag=True, help="Print the consent text and whether consent is recorded.")
def consent(agree: bool, revoke: bool, show: bool) -> None:
    """Read what Vantage measures, who can see it and the risks, and agree (or not)."""
    try:
        if show:
            click.echo(CONSENT_TEXT)
            click.echo(f"consent recorded: {'yes' if consent_recorded() else 'no'} ({config_path()})")
            return
        if revoke:
            record_consent(False)
            click.echo(f"Consent withdrawn ({config_path()}).")
            return
        if agree:
            record_consent(True)
            click.echo(f"Consent recorded in {config_path()}.")
            return
        if not sys.stdin.isatty():
            raise click.ClickException("`vantage consent` asks on a terminal; after reading `vantage consent --show`, "
                                       "`vantage consent --yes` records it")
        click.echo(CONSENT_TEXT)
        given = click.confirm("Do you understand the risks and want Vantage to measure from this network?",
                              default=False)
        record_consent(given)
        click.echo(f"{'Consent recorded' if given else 'Consent not given'} ({config_path()}).")
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
