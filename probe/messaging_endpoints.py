"""`vantage lists update-messaging`: download a newer messaging-app endpoints list, check every
row, and only then replace the copy in the user data directory (the experiments read it; they
never write files themselves)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from probe.dataset import atomic_write_bytes
from probe.experiments.base import InputError
from probe.experiments.messaging.endpoints import downloaded_endpoints_path, parse_endpoints

MAX_BYTES = 1 << 20  # a list of a few hundred endpoints is a few KB; a bigger body is not one
URL_ENV = "VANTAGE_MESSAGING_ENDPOINTS_URL"


class EndpointsUpdateError(InputError):
    """The download failed or was not a messaging endpoints list (nothing replaced)."""


def update_endpoints(url: str | None = None, *, dest: Path | None = None, timeout: float = 30.0) -> tuple[Path, int]:
    """Download a newer endpoints list from ``url`` (or $VANTAGE_MESSAGING_ENDPOINTS_URL) into
    the user data directory; it replaces the old copy only when every row parses."""
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise EndpointsUpdateError(f"no URL: give --url or set {URL_ENV}")
    dest = dest or downloaded_endpoints_path()
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True, trust_env=False) as client:
            resp = client.get(url)
    except httpx.HTTPError as exc:
        raise EndpointsUpdateError(f"cannot download {url}: {exc or type(exc).__name__}") from None
    if resp.status_code != 200:
        raise EndpointsUpdateError(f"cannot download {url}: HTTP {resp.status_code}")
    if len(resp.content) > MAX_BYTES:
        raise EndpointsUpdateError(f"{url}: larger than {MAX_BYTES} bytes; nothing replaced")
    text = resp.content.decode("utf-8-sig", errors="replace")
    try:
        endpoints = parse_endpoints(text, url)
    except InputError as exc:
        raise EndpointsUpdateError(f"{exc}; nothing replaced") from None
    if not endpoints:
        raise EndpointsUpdateError(f"{url}: no endpoints; nothing replaced")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, resp.content)
    except OSError as exc:
        raise EndpointsUpdateError(f"cannot write {dest}: {exc.strerror or exc}") from None
    return dest, len(endpoints)
