"""Shared pytest fixtures: the loopback lab (a small censored internet on 127.0.0.0/8).

One lab serves the whole session. ``loopback_lab`` hands it out with the on-path censor on
(the probe's view) and switches it back on after each test; measure a control inside
``with loopback_lab.uncensored():``. Resolve lab names only through the lab's resolvers
(``loopback_lab.censoring_resolver`` for the probe, ``honest_resolver`` for the control).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from vantage.lab import LoopbackLab


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``-n 2 --dist loadgroup``, scripts/test.sh) a test module runs on one
    worker, so its module fixtures (a Spark cluster, report sites, seeded shutdown datasets) are
    built once, not once per worker; and every test marked netns runs on one worker, one after
    the other, as in a serial run: a session's lab is built once for all its tests (a session
    fixture is per worker), and no two labs run at once, whose servers answer against step
    timeouts and whose throttling lab measures rates (their namespace names carry the worker's
    pid, and their addresses live inside the namespaces, so it is time, not names, that they
    would share). Each worker has its own temporary and user directories (``isolated_user_dirs``)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        netns = item.get_closest_marker("netns") is not None
        item.add_marker(pytest.mark.xdist_group("netns" if netns else item.nodeid.split("::", 1)[0]))


@pytest.fixture(scope="session", autouse=True)
def isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The user's data, config and cache directories point into the session's temporary
    directory: downloaded fingerprint sets, ASN databases, lists, consent and configuration of
    the developer's own account must never change what a test sees (nor be written by one)."""
    home = tmp_path_factory.mktemp("user-dirs")
    saved = {k: os.environ.get(k) for k in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    for key in saved:
        os.environ[key] = str(home / key.lower())
    # The session's volunteer has agreed (tests/vantage/test_volunteer_consent.py asks in its own dir).
    from probe.config import record_consent

    record_consent(True)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
