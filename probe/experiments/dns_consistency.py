"""dns_consistency: one name through every configured resolver (system, UDP, TCP, DoH), plus an
injection check: a query sent where no resolver runs must get no answer; one that does is injected.

The injection check runs only when ``Settings.extra["injection_target"]`` names an address
("IP" or "IP:PORT") that the operator knows runs no resolver, on the far side of the network
under test. Without one the check is skipped: the record then has no DnsQuery tagged
``injection_check``. The probe never picks such an address on its own, because it must never
send traffic anywhere the volunteer did not configure.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from probe.experiments.base import Experiment, InputError, Observation, Target
from probe.experiments.common import gather_all, ip_literal
from probe.experiments.context import MeasurementContext
from probe.schema import DnsQuery, Measurement

INJECTION_TAG = "injection_check"
# Injectors answer within a round trip; a legitimate silence need not be waited out for long.
DEFAULT_INJECTION_TIMEOUT = 2.0
OK_DNS_FAILURES = (None, "dns_no_answer")  # a name without AAAA is consistent, not a failure


def hostname_of(input_: str) -> str:
    """The name to resolve from a URL or a bare host name."""
    text = input_.strip()
    try:
        # A bare "host", "host:port" or "host/path" parses as a URL without a scheme.
        host = urlsplit(text if "://" in text else "//" + text).hostname
    except ValueError:
        host = None
    if not host:
        raise InputError(f"no host name in {input_!r}")
    if ip_literal(host) is not None:
        raise InputError(f"{input_!r} is an IP address, not a name to resolve")
    return host.rstrip(".").lower()


class DnsConsistency(Experiment):
    name = "dns_consistency"
    version = "0.1.0"

    async def run(self, target: Target, net: MeasurementContext) -> list[Observation]:
        host = hostname_of(target.input)
        settings = net.settings
        use_tcp = bool(settings.extra.get("dns_tcp", True))
        injection_target = settings.extra.get("injection_target")

        async def resolvers() -> list[DnsQuery]:
            return await net.dns_lookup(host, tcp=use_tcp)

        async def injection() -> list[DnsQuery]:
            if not injection_target:
                return []
            timeout = float(settings.extra.get("injection_timeout", DEFAULT_INJECTION_TIMEOUT))
            return [await net.dns_udp(host, str(injection_target), "A", timeout=timeout, tag=INJECTION_TAG)]

        results = await gather_all([resolvers(), injection()])
        return [*results[0], *results[1]]

    def input_problem(self, input_: str) -> str | None:
        try:
            hostname_of(input_)
        except InputError as exc:
            return str(exc)
        return None

    def host_key(self, target: Target) -> str:
        try:
            return hostname_of(target.input)
        except InputError:
            return target.input

    def succeeded(self, m: Measurement) -> bool:
        """Ok when every resolver answered and nothing answered the injection check."""
        if m.failure is not None or not m.dns:
            return False
        for q in m.dns:
            if q.tag == INJECTION_TAG:
                if injected(q):
                    return False
            elif q.failure not in OK_DNS_FAILURES:
                return False
        return True


def injected(q: DnsQuery) -> bool:
    """An injection-check query that got any reply at all (no resolver runs there)."""
    return q.rcode is not None or bool(q.answers) or bool(q.late_responses)
