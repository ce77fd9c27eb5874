"""The one error of the tunnels' wire formats (OpenVPN control packets, WireGuard's handshake,
Tor cells, IKEv2): bytes that are not what the protocol says they are."""

from __future__ import annotations

from probe.errors import VantageError


class WireError(VantageError, ValueError):
    """A packet or reply that is not what it claims to be (truncated, wrong HMAC or MAC, wrong
    opcode or command, not an answer to our request). ``data`` is what was read of it, when the
    packet log should show it. A validator turns it into a ``vpn_handshake_failure`` detail."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data
