"""`vantage schedule install|remove|status`: run the probe every N hours.

Where systemd runs (``/run/systemd/system`` exists) a systemd *user* timer and service are
written to ``$XDG_CONFIG_HOME/systemd/user/`` and enabled; elsewhere (or with ``--cron``) a line
in the user's crontab. Either runs ``vantage run --no-progress --continue-unfinished``: the
configured lists and budgets, picking up a run a budget stopped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import platformdirs

from probe.config import CONFIG_ENV, ConfigError, consent_recorded
from vantage.cli.options import UsageLineError, json_option, output_options

UNIT = "vantage-probe"
CRON_TAG = "# vantage-probe (vantage schedule)"


def unit_dir() -> Path:
    return Path(platformdirs.user_config_dir("systemd", appauthor=False)) / "user"


def parse_every(text: str) -> int:
    """``6h``, ``90m``, ``1d`` -> seconds. At least 15 minutes: a volunteer's network should not
    look like it is scanning, and a full global list takes minutes anyway."""
    m = re.fullmatch(r"\s*(\d+)\s*([mhd])\s*", text.lower())
    if not m or int(m.group(1)) == 0:
        raise UsageLineError(f"--every takes a duration like 30m, 6h or 1d (got {text!r})")
    seconds = int(m.group(1)) * {"m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if seconds < 15 * 60:
        raise UsageLineError("--every must be 15m or more")
    return seconds


def probe_command() -> list[str]:
    """The command the schedule runs: this installation's `vantage`, absolute."""
    script = Path(sys.executable).parent / "vantage"
    exe = [str(script)] if script.exists() else (
        [found] if (found := shutil.which("vantage")) else [sys.executable, "-c", "from vantage.cli import main; main()"])
    return [*exe, "run", "--no-progress", "--continue-unfinished"]


def _environment() -> dict[str, str]:
    """What the scheduled run needs from this shell: where the config is (when moved)."""
    env = {}
    for key in (CONFIG_ENV, "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def _systemd_quote(arg: str) -> str:
    # systemd's ExecStart splits like a shell with double quotes; % starts a specifier.
    arg = arg.replace("%", "%%")
    return f'"{arg}"' if re.search(r'[\s"\\;]', arg) else arg


def service_text(every_s: int) -> str:
    env_lines = "".join(f'Environment="{k}={v.replace("%", "%%")}"\n' for k, v in sorted(_environment().items()))
    return f"""[Unit]
Description=Vantage censorship measurement (one run)
# (No network-online.target: a user manager cannot order on system targets. A run started
# offline measures nothing reachable and says so; the anchors tell offline from blocked.)

[Service]
Type=oneshot
{env_lines}ExecStart={' '.join(_systemd_quote(a) for a in probe_command())}
# Gentle on the volunteer's machine; the run's own time budget (budget.max_runtime_s) stops it
# cleanly, this is the backstop: no run may overlap the next one.
Nice=10
IOSchedulingClass=idle
TimeoutStartSec={every_s}
"""


def timer_text(every_s: int) -> str:
    # OnUnitActiveSec counts from the last run, OnBootSec covers a machine just switched on; the
    # random delay keeps many volunteers' probes from measuring at the same second.
    return f"""[Unit]
Description=Run the Vantage probe every {_human(every_s)}

[Timer]
OnBootSec=10min
OnUnitActiveSec={every_s}s
RandomizedDelaySec={min(every_s // 4, 900)}s

[Install]
WantedBy=timers.target
"""


def cron_line(every_s: int) -> str:
    minutes = every_s // 60
    if minutes < 60 and 60 % minutes == 0:
        when = f"*/{minutes} * * * *"
    elif minutes % 60 == 0 and minutes < 24 * 60 and (24 * 60) % minutes == 0:
        when = f"0 */{minutes // 60} * * *"
    elif minutes == 24 * 60:
        when = "0 0 * * *"
    else:
        raise UsageLineError("cron runs at steps that divide an hour or a day: use e.g. 15m, 30m, 1h, 2h, 3h, 4h, "
                             "6h, 8h, 12h or 1d")
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(_environment().items()))
    cmd = " ".join(shlex.quote(a) for a in probe_command())
    return f"{when} {env + ' ' if env else ''}{cmd} >/dev/null 2>&1 {CRON_TAG}"


def _human(seconds: int) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % n == 0:
            return f"{seconds // n}{unit}"
    return f"{seconds}s"


def has_systemd() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True, timeout=30, check=False)


def _crontab() -> str:
    if shutil.which("crontab") is None:
        raise click.ClickException("no systemd and no crontab on this machine: run `vantage run` from your own "
                                   "scheduler (`vantage schedule install --print` shows the command)")
    got = subprocess.run(["crontab", "-l"], capture_output=True, text=True, timeout=30, check=False)
    return got.stdout if got.returncode == 0 else ""


def _write_crontab(text: str) -> None:
    done = subprocess.run(["crontab", "-"], input=text, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise click.ClickException(f"crontab: {done.stderr.strip() or 'failed'}")


@click.group("schedule")
def schedule() -> None:
    """Run the probe on a schedule (systemd user timer, or cron)."""


@schedule.command("install")
@click.option("--every", "every", default="6h", show_default=True, metavar="DURATION",
              help="How often: 30m, 6h, 1d (at least 15m).")
@click.option("--cron", "use_cron", is_flag=True, help="A crontab line even where systemd runs.")
@click.option("--no-enable", is_flag=True, help="systemd: write the unit files but do not enable the timer.")
@click.option("--print", "print_only", is_flag=True, help="Print what would be installed; change nothing.")
@output_options
def install(every: str, use_cron: bool, no_enable: bool, print_only: bool, quiet: bool) -> None:
    """Measure every DURATION with the configured lists and budgets (needs consent first)."""
    every_s = parse_every(every)
    try:
        if not consent_recorded():
            raise click.ClickException("no informed consent recorded: run `vantage consent` before scheduling runs")
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    systemd = not use_cron and has_systemd()
    if print_only:
        if systemd or not use_cron:
            click.echo(f"# {unit_dir() / (UNIT + '.service')}\n{service_text(every_s)}")
            click.echo(f"# {unit_dir() / (UNIT + '.timer')}\n{timer_text(every_s)}")
        click.echo(f"# crontab line\n{cron_line(every_s)}" if not systemd else "")
        return
    if systemd or (not use_cron and no_enable):
        d = unit_dir()
        try:
            d.mkdir(parents=True, exist_ok=True)
            from probe.dataset import atomic_write_text

            atomic_write_text(d / f"{UNIT}.service", service_text(every_s))
            atomic_write_text(d / f"{UNIT}.timer", timer_text(every_s))
        except OSError as exc:
            raise click.ClickException(f"cannot write {d}: {exc.strerror or exc}") from None
        if not quiet:
            click.echo(f"wrote {d / (UNIT + '.service')} and {d / (UNIT + '.timer')} (every {_human(every_s)})")
        if not no_enable:
            for args in (("daemon-reload",), ("enable", "--now", f"{UNIT}.timer")):
                done = _systemctl(*args)
                if done.returncode != 0:
                    raise click.ClickException(f"systemctl --user {' '.join(args)}: "
                                               f"{(done.stderr or done.stdout).strip().splitlines()[-1:] or 'failed'}")
            if not quiet:
                click.echo(f"enabled {UNIT}.timer; `vantage schedule status` shows the next run")
        return
    line = cron_line(every_s)
    kept = [ln for ln in _crontab().splitlines() if CRON_TAG not in ln]
    _write_crontab("\n".join([*kept, line]) + "\n")
    if not quiet:
        click.echo(f"crontab: {line}")


@schedule.command("remove")
@output_options
def remove(quiet: bool) -> None:
    """Stop and delete the schedule (timer and service, or the crontab line)."""
    removed = []
    d = unit_dir()
    if (d / f"{UNIT}.timer").exists() and shutil.which("systemctl") and has_systemd():
        _systemctl("disable", "--now", f"{UNIT}.timer")
    for name in (f"{UNIT}.timer", f"{UNIT}.service"):
        if (d / name).exists():
            (d / name).unlink()
            removed.append(str(d / name))
    if shutil.which("crontab"):
        current = _crontab()
        if CRON_TAG in current:
            _write_crontab("".join(ln + "\n" for ln in current.splitlines() if CRON_TAG not in ln))
            removed.append("crontab line")
    if not quiet:
        click.echo("removed: " + ", ".join(removed) if removed else "no schedule installed")


@schedule.command("status")
@json_option("Print JSON.")
@output_options
def status(as_json: bool, quiet: bool) -> None:
    """Whether a schedule is installed, how often, and (systemd) when it runs next."""
    d = unit_dir()
    timer = d / f"{UNIT}.timer"
    info: dict[str, object] = {"systemd_timer": str(timer) if timer.exists() else None, "cron": None, "every": None,
                               "next": None}
    if timer.exists():
        m = re.search(r"OnUnitActiveSec=(\d+)s", timer.read_text())
        info["every"] = _human(int(m.group(1))) if m else None
        if has_systemd():
            shown = _systemctl("list-timers", f"{UNIT}.timer", "--no-legend")
            info["next"] = shown.stdout.strip() or None
    if shutil.which("crontab"):
        lines = [ln for ln in _crontab().splitlines() if CRON_TAG in ln]
        info["cron"] = lines[0] if lines else None
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    if quiet:
        return
    if not info["systemd_timer"] and not info["cron"]:
        click.echo("no schedule installed (`vantage schedule install --every 6h`)")
        return
    if info["systemd_timer"]:
        click.echo(f"systemd user timer: {timer} (every {info['every']})")
        if info["next"]:
            click.echo(f"next: {info['next']}")
    if info["cron"]:
        click.echo(f"crontab: {info['cron']}")
