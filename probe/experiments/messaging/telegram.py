"""telegram: OONI ts-020: TCP and HTTP to every data centre (blocked only when all fail) and Telegram Web (endpoints: testlists/messaging.csv)."""

from __future__ import annotations

from probe.experiments.messaging.base import MessagingExperiment


class Telegram(MessagingExperiment):
    name = "telegram"
