"""throughput: how fast does a target arrive? DNS (as web_connectivity), then one bounded
download (probe.net.download) of the target or of a resource the list names, for the
analyzer's throttling rules (analysis/throughput.py).

A separate experiment, so ordinary runs never pay for downloads. Input: the target's URL, or the
target's URL with a fragment naming the resource to download:

    https://twitter.example/#download=https://cdn.twitter.example/big.js   (another URL)
    https://site.example/#download=/static/video.mp4                       (a path on the site)

The fragment never goes on the wire (it is not part of an HTTP request), and the row's ``input``
stays the site's URL, so the verdict is about the site and pairs with its control.
Caps: ``Settings.extra["download_byte_cap"]`` and ``["download_time_cap"]`` (`vantage run
--download-bytes / --download-time`), defaults in probe.net.download.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urljoin, urlsplit, urlunsplit

from probe.experiments.base import Experiment, InputError, Observation, Target
from probe.experiments.common import host_addresses, parse_web_url
from probe.experiments.context import MeasurementContext
from probe.net.download import DEFAULT_BYTE_CAP, DEFAULT_TIME_CAP
from probe.schema import Measurement

FRAGMENT_KEY = "download"


def resource_url(input_: str) -> str:
    """The URL to download for an input: the ``#download=`` resource (absolute, or a path
    joined to the input), else the input itself without its fragment. InputError when bad."""
    parse_web_url(input_)
    parts = urlsplit(input_)
    base = urlunsplit(parts._replace(fragment=""))
    if not parts.fragment:
        return base
    values = parse_qs(parts.fragment, keep_blank_values=True).get(FRAGMENT_KEY)
    if not values:
        return base
    if len(values) != 1 or not values[0].strip():
        raise InputError(f"#{FRAGMENT_KEY}= names one URL or path, got {parts.fragment!r}")
    resource = urljoin(base, values[0].strip())
    parse_web_url(resource)  # http(s) with a host, or InputError
    return urlunsplit(urlsplit(resource)._replace(fragment=""))


class Throughput(Experiment):
    name = "throughput"
    version = "0.1.0"

    def input_problem(self, input_: str) -> str | None:
        try:
            resource_url(input_)
        except InputError as exc:
            return str(exc)
        return None

    async def run(self, target: Target, net: MeasurementContext) -> list[Observation]:
        url = resource_url(target.input)
        host = urlsplit(url).hostname or ""
        extra = net.settings.extra
        byte_cap = int(extra.get("download_byte_cap") or DEFAULT_BYTE_CAP)
        time_cap = float(extra.get("download_time_cap") or DEFAULT_TIME_CAP)
        observations: list[Observation] = []
        _, addresses = await host_addresses(net, host, observations)
        if not addresses:
            return observations  # the DNS observations say why; the analyzer's DNS rules judge them
        observations.append(
            await net.download(url, address_map={host: addresses}, resolve=net.redirect_resolver([]),
                               byte_cap=byte_cap, time_cap=time_cap)
        )
        return observations

    def succeeded(self, m: Measurement) -> bool:
        """Ok when the download ran without a failure (whatever its speed: the analyzer judges that)."""
        return m.failure is None and bool(m.downloads) and all(d.failure is None for d in m.downloads)
