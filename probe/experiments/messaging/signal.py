"""signal: OONI ts-029: the Signal backend (service, storage, CDNs, calls) over HTTPS with Signal's own CA trusted beside the public roots (endpoints: testlists/messaging.csv)."""

from __future__ import annotations

from probe.experiments.messaging.base import MessagingExperiment


class Signal(MessagingExperiment):
    name = "signal"
    extra_ca = "signal-ca.pem"
