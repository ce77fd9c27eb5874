"""whatsapp: OONI ts-018: the registration server, the chat endpoints e1..e16 (blocked only when all fail) and WhatsApp Web (endpoints: testlists/messaging.csv)."""

from __future__ import annotations

from probe.experiments.messaging.base import MessagingExperiment


class WhatsApp(MessagingExperiment):
    name = "whatsapp"
