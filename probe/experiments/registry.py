"""The experiments the probe knows, by name. Registering a new one is one line below."""

from __future__ import annotations

from probe.experiments.anchors import Anchors
from probe.experiments.base import Experiment
from probe.experiments.dns_consistency import DnsConsistency
from probe.experiments.ikev2 import Ikev2
from probe.experiments.messaging.fbmessenger import FacebookMessenger
from probe.experiments.messaging.signal import Signal
from probe.experiments.messaging.telegram import Telegram
from probe.experiments.messaging.whatsapp import WhatsApp
from probe.experiments.openvpn import OpenVpn
from probe.experiments.path_trace import PathTraceExperiment
from probe.experiments.throughput import Throughput
from probe.experiments.tor import Tor
from probe.experiments.web_connectivity import WebConnectivity
from probe.experiments.wireguard import WireGuard

EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    if not experiment.name or experiment.name in EXPERIMENTS:
        raise ValueError(f"experiment name {experiment.name!r} is empty or taken")
    EXPERIMENTS[experiment.name] = experiment
    return experiment


def get(name: str) -> Experiment:
    """The experiment called ``name``; KeyError names the known ones."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}") from None


# One line per experiment.
register(WebConnectivity())
register(DnsConsistency())
register(Anchors())
register(OpenVpn())
register(WireGuard())
register(Tor())
register(Ikev2())
register(PathTraceExperiment())
register(Throughput())
register(Signal())
register(Telegram())
register(WhatsApp())
register(FacebookMessenger())
