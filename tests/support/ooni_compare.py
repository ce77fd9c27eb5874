"""Compare Vantage verdicts with OONI's own web_connectivity verdict (`blocking`, `accessible`).

OONI's `blocking` is "dns", "tcp_ip", "http-failure", "http-diff", false or null (ooni/spec
ts-017): false with `accessible` true is an accessible site, false with `accessible` false a
site that is down (it fails from the test helper too), and null means OONI could not decide
(the control failed, or the probe failed in a way the analysis does not cover).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OONI_LAYERS = ("dns", "tcp_ip", "http-failure", "http-diff")
# Vantage statuses that mean "no verdict" the way OONI's null does.
UNDECIDED = frozenset({"no_control", "probe_failure", "down", "no_connectivity"})
# OONI has no TLS layer: a TLS handshake reset or failure is reported as http-failure.
_EQUIVALENT_LAYERS = {"http-failure": {"http-failure", "tls"}}


@dataclass(frozen=True, slots=True)
class Expectation:
    status: str  # "blocked" | "ok" | "down" | "undecided"
    layer: str | None = None

    def __str__(self) -> str:
        return f"{self.status}/{self.layer}" if self.layer else self.status


def parse_blocking(value: Any) -> str | bool | None:
    """OONI's blocking as stored in JSON (str, false, null) or in a CSV cell ('"dns"', 'false', '')."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().strip('"')
    if text in ("", "null", "None"):
        return None
    if text.lower() == "false":
        return False
    if text.lower() == "true":
        return True
    return text


def expected(blocking: Any, accessible: Any) -> Expectation:
    """What Vantage should say for a measurement OONI judged (blocking, accessible)."""
    b = parse_blocking(blocking)
    a = parse_blocking(accessible)
    if isinstance(b, str) and b in OONI_LAYERS:
        return Expectation("blocked", b)
    if b is False:
        return Expectation("ok") if a is True else Expectation("down")
    return Expectation("undecided")


def agrees(exp: Expectation, status: str | None, layer: str | None) -> bool:
    if exp.status == "undecided":
        return status in UNDECIDED
    if exp.status != status:
        return False
    if exp.status == "blocked":
        return layer in _EQUIVALENT_LAYERS.get(exp.layer or "", {exp.layer})
    return True
