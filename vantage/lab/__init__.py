"""The loopback lab: a small censored internet on 127.0.0.0/8 (two resolvers, lab sites, an
on-path censor) that runs without root; it powers `vantage demo` and the test fixtures."""

from __future__ import annotations

from vantage.lab.lab import FINGERPRINTS, LabError, LabSite, LoopbackLab, start_lab
from vantage.lab.plan import LAB_CC, LAB_DOMAIN, PUBLIC_NET, SITES, Site

__all__ = [
    "FINGERPRINTS",
    "LAB_CC",
    "LAB_DOMAIN",
    "PUBLIC_NET",
    "SITES",
    "LabError",
    "LabSite",
    "LoopbackLab",
    "Site",
    "start_lab",
]
