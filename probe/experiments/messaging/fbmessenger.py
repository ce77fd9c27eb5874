"""facebook_messenger: OONI ts-019: DNS and TCP 443 to each service host, plus (a Vantage addition) messenger.com as the web function (endpoints: testlists/messaging.csv)."""

from __future__ import annotations

from probe.experiments.messaging.base import MessagingExperiment


class FacebookMessenger(MessagingExperiment):
    name = "facebook_messenger"
