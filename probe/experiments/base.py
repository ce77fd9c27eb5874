"""What every experiment shares: the vantage point, the run settings, a target, the Experiment
interface, and `measure()`, which turns one run of an experiment into one Measurement record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import platform as _platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from probe import __version__
from probe.errors import VantageError
from probe.schema import (
    OBSERVATION_COLUMNS,
    DnsQuery,
    Download,
    HttpRequest,
    Measurement,
    PathTrace,
    QuicHandshake,
    TcpConnect,
    TlsHandshake,
    VpnHandshake,
    is_valid_failure,
    new_uuid7,
    utcnow,
    validate,
)
from probe.scrub import scrub_record

if TYPE_CHECKING:
    from probe.experiments.context import MeasurementContext
    from probe.net.scrub import Scrubber

log = logging.getLogger(__name__)

Observation = DnsQuery | TcpConnect | TlsHandshake | HttpRequest | VpnHandshake | QuicHandshake | PathTrace | Download

# Which Measurement list each observation type goes into.
_OBSERVATION_FIELDS: dict[type, str] = {
    DnsQuery: "dns",
    TcpConnect: "tcp",
    TlsHandshake: "tls",
    HttpRequest: "http",
    VpnHandshake: "vpn",
    QuicHandshake: "quic",
    PathTrace: "traces",
    Download: "downloads",
}

def default_platform() -> str:
    """Operating system and machine, e.g. "linux-aarch64" (never a host name or address)."""
    return f"{_platform.system().lower()}-{_platform.machine().lower()}"


@dataclass
class Vantage:
    """Who measures: the vantage point's role, country and network (never its IP address)."""

    role: str = "probe"  # "probe" | "control"
    probe_cc: str = "ZZ"
    probe_asn: str | None = None  # "AS1234"
    probe_network: str | None = None
    resolver_asn: str | None = None
    platform: str | None = field(default_factory=default_platform)
    software_version: str | None = __version__


@dataclass
class Timeouts:
    """Per-step time limits in seconds."""

    dns: float = 4.0
    connect: float = 10.0
    tls: float = 10.0
    http: float = 10.0
    # QUIC handshake + HTTP/3 GET, run beside TCP/TLS/HTTP: no longer than a TLS handshake
    # may take, so a path that drops UDP costs what a path that drops the ClientHello costs.
    quic: float = 10.0

    @classmethod
    def uniform(cls, seconds: float) -> Timeouts:
        """--timeout S: S for every step, but DNS never waits longer than its own default."""
        return cls(dns=min(cls.dns, seconds), connect=seconds, tls=seconds, http=seconds, quic=seconds)


@dataclass
class Settings:
    """How a run measures; shared by every measurement of the run (read-only while running).

    ``resolvers`` are "IP", "IP:PORT", "[IPv6]:PORT" or DoH URLs ("https://..."). When
    ``use_system_resolver`` is False the probe asks only these resolvers, so a lab run sends
    nothing outside the lab. ``extra`` carries experiment-specific options (for example
    dns_consistency's ``injection_target``).
    """

    resolvers: list[str] = field(default_factory=list)
    use_system_resolver: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    ca_bundle: str | None = None
    scrubber: Scrubber | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Why an (address, port) may not be connected to, or None: the control helper's policy,
    # checked by probe.net on every address actually connected to (redirects included).
    address_guard: Callable[[str, int], str | None] | None = None
    # A safety net for a bug in a step that ignores its timeout: a measurement never runs
    # longer than this (DNS + connect + TLS + a full redirect chain fits well inside).
    measurement_timeout: float = 180.0


@dataclass(frozen=True)
class Target:
    """One input of a list: a URL (or endpoint URL) and its Citizen Lab category code."""

    input: str
    category: str | None = None


class InputError(VantageError):
    """The target cannot be measured by this experiment (bad URL, wrong scheme)."""


class Experiment:
    """One kind of test. Subclasses set ``name`` and ``version`` and implement ``run()``.

    ``run()`` performs the steps through ``net``, the measurement context (its steps never
    raise for network failures; its settings are ``net.settings``), and returns the
    observations in the order they were made. It never writes files.
    Raise InputError when the input is not something this experiment can measure.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0.1.0"

    async def run(self, target: Target, net: MeasurementContext) -> list[Observation]:
        raise NotImplementedError

    def input_problem(self, input_: str) -> str | None:
        """Why ``input_`` cannot be measured by this experiment (None when it can).

        Default: a web URL or tunnel endpoint URL, as Citizen Lab lists hold them.
        """
        from probe.testlists import input_problem

        return input_problem(input_)

    def default_targets(self) -> list[Target]:
        """What to measure when the run names no list or URL (messaging apps: the app itself)."""
        return []

    def host_key(self, target: Target) -> str:
        """What the runner's per-host politeness limit counts (the server's host name)."""
        from urllib.parse import urlsplit

        try:
            host = urlsplit(target.input).hostname
        except ValueError:
            host = None
        return (host or target.input).lower()

    def succeeded(self, m: Measurement) -> bool:
        """Whether the progress bar and summary count this measurement as ok.

        Default: it ran, and every observation succeeded. Experiments refine this (an AAAA
        query with no answer is not a failure of web_connectivity).
        """
        if m.failure is not None:
            return False
        observations: list[Any] = [o for name in OBSERVATION_COLUMNS for o in getattr(m, name)]
        return bool(observations) and all(o.failure is None for o in observations)


# --------------------------------------------------------------------------- measure()


def unknown_failure(detail: str) -> str:
    """``unknown_failure:<detail>``: one line, capped, with every IP literal removed."""
    from probe.net.errors import unknown

    return unknown(detail)


def _sanitize_failure(failure: str | None) -> str | None:
    if is_valid_failure(failure):
        return failure
    # An experiment bug must not cost the record: keep what it said, inside the closed set.
    return unknown_failure(str(failure))


def _exception_failure(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return unknown_failure(f"invalid_input: {exc}")
    return unknown_failure(f"{type(exc).__name__}: {exc}")


def sort_observations(measurement: Measurement, observations: Sequence[Any]) -> None:
    """Append observations to the Measurement list of their type, fixing stray failures."""
    for obs in observations:
        name = _OBSERVATION_FIELDS.get(type(obs))
        if name is None:
            raise TypeError(f"not an observation: {type(obs).__name__}")
        obs.failure = _sanitize_failure(obs.failure)
        getattr(measurement, name).append(obs)


async def measure(
    experiment: Experiment,
    target: Target,
    settings: Settings,
    vantage: Vantage,
    run_id: str,
    *,
    control_for: str | None = None,
    net: MeasurementContext | None = None,
    steps_done: Callable[[], None] | None = None,
) -> Measurement:
    """Run ``experiment`` on ``target`` and return the full record; a record is always returned.

    Anything unexpected from the experiment becomes ``failure = unknown_failure:<detail>``
    on the record (with no observations). Cancellation (Ctrl-C, run budget) propagates: the
    runner decides what to do with a measurement that was cut short. ``net`` is the
    measurement context (default: a fresh one over ``settings``; tests pass a fake).

    ``steps_done`` is called once the experiment's steps are over and only the late DNS
    replies' collectors are still listening (they touch no target, so the runner hands the
    measurement's slot on); the record is returned when they have ended.
    """
    from probe.experiments.context import MeasurementContext

    if net is None:
        net = MeasurementContext(settings)
    clock = net.clock
    start = utcnow()
    m = Measurement(
        measurement_id=new_uuid7(),
        run_id=run_id,
        experiment=experiment.name,
        experiment_version=experiment.version,
        input=target.input,
        input_category=target.category,
        measurement_start_time=start,
        role=vantage.role,
        probe_cc=vantage.probe_cc,
        probe_asn=vantage.probe_asn,
        probe_network=vantage.probe_network,
        resolver_asn=vantage.resolver_asn,
        platform=vantage.platform,
        software_version=vantage.software_version,
        control_for=control_for,
    )
    try:
        try:
            with net.guarded():
                async with asyncio.timeout(settings.measurement_timeout):  # no extra task, unlike wait_for
                    observations = await experiment.run(target, net)
            if steps_done is not None:
                steps_done()
            # Late DNS replies are collected in the background while the steps went on; the
            # record is finished only when every collector's window has ended.
            await net.settle_late()
        finally:
            await net.abandon_late()  # cut short (timeout, error, cancellation): no socket left open
        sort_observations(m, observations)
    except TimeoutError:
        # Only the safety net fires here (every step has its own, shorter timeout).
        _clear_observations(m)
        m.failure = "generic_timeout"
    except Exception as exc:
        _clear_observations(m)
        m.failure = _exception_failure(exc)
        if not isinstance(exc, InputError):
            # The failure string, not the exception: its text has every IP literal removed,
            # so no log line can carry the probe's address.
            log.warning("experiment %s failed on %s: %s", experiment.name, target.input, m.failure)
    m.runtime_s = round(clock.now(), 6)
    if settings.scrubber is not None:
        # The one place a record is finished: every string of it, nested ones included.
        scrub_record(m, settings.scrubber)
    try:
        validate(m)
    except ValueError as exc:
        # e.g. a bad country code in the vantage: the record could not be stored as it is.
        _clear_observations(m)
        m.failure = unknown_failure(f"invalid record: {exc}")
        validate(m)
    return m


def _clear_observations(m: Measurement) -> None:
    for f in dataclasses.fields(m):
        if f.name in _OBSERVATION_FIELDS.values():
            getattr(m, f.name).clear()
