"""Measurement clock: seconds since the measurement started, from a monotonic source.

Every observation's ``t0`` and ``t`` come from one Clock so they are comparable within a record.
"""

from __future__ import annotations

import time


class Clock:
    """Captures ``time.monotonic()`` at creation; ``now()`` is seconds elapsed since then."""

    __slots__ = ("start",)

    def __init__(self, start: float | None = None) -> None:
        self.start = time.monotonic() if start is None else start

    def now(self) -> float:
        return time.monotonic() - self.start

    def __repr__(self) -> str:
        return f"Clock(elapsed={self.now():.3f})"
