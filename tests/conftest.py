"""Shared pytest fixtures: the loopback lab (a small censored internet on 127.0.0.0/8).

One lab serves the whole session. ``loopback_lab`` hands it out with the on-path censor on
(the probe's view) and switches it back on after each test; measure a control inside
``with loopback_lab.uncensored():``. Resolve lab names only through the lab's resolvers
(``loopback_lab.censoring_resolver`` for the probe, ``honest_resolver`` for the control).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from probe.lab import LoopbackLab


@pytest.fixture(scope="session")
def loopback_lab_session() -> Iterator[LoopbackLab]:
    with LoopbackLab() as lab:
        yield lab


@pytest.fixture
def loopback_lab(loopback_lab_session: LoopbackLab) -> Iterator[LoopbackLab]:
    """The session's lab, censor on; a test that switches it off cannot leak that state."""
    loopback_lab_session.set_censor(True)
    yield loopback_lab_session
    loopback_lab_session.set_censor(True)
