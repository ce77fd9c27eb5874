"""Tor's link handshake as far as reachability needs it (tor-spec, "Negotiating versions"):
after TLS, the client sends a VERSIONS cell and the relay answers VERSIONS then CERTS.
Also the client side of an obfs4 bridge through ``obfs4proxy`` (pluggable-transport spec:
managed client mode, SOCKS5 with the bridge arguments in the username/password fields).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import struct
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass

from probe.errors import VantageError
from probe.experiments.tunnels.wire import WireError

CMD_VERSIONS = 7
CMD_CERTS = 129
OUR_VERSIONS = (3, 4, 5)
MAX_VAR_CELL = 65535




def versions_cell(versions: tuple[int, ...] = OUR_VERSIONS) -> bytes:
    body = b"".join(struct.pack("!H", v) for v in versions)
    # VERSIONS always uses a 2-byte circuit id, whatever is negotiated later.
    return struct.pack("!HBH", 0, CMD_VERSIONS, len(body)) + body


def parse_versions(header: bytes, body: bytes) -> list[int]:
    circ, cmd, length = struct.unpack("!HBH", header)
    if cmd != CMD_VERSIONS:
        raise WireError(f"expected a VERSIONS cell, got command {cmd}")
    if circ != 0 or length % 2 or length != len(body):
        raise WireError("malformed VERSIONS cell")
    versions = [v for (v,) in struct.iter_unpack("!H", body)]
    if not versions:
        raise WireError("empty VERSIONS cell")
    return versions


async def read_versions(reader: asyncio.StreamReader) -> tuple[list[int], bytes]:
    """The relay's VERSIONS cell: (its versions, the cell as received)."""
    header = await reader.readexactly(5)
    length = struct.unpack("!H", header[3:5])[0]
    if header[2] != CMD_VERSIONS:
        raise WireError(f"expected a VERSIONS cell, got {header.hex()}", header)
    if length > 1024:
        raise WireError(f"implausible VERSIONS length {length}", header)
    body = await reader.readexactly(length)
    try:
        return parse_versions(header, body), header + body
    except WireError as exc:
        raise WireError(str(exc), header + body) from None


async def read_var_cell(reader: asyncio.StreamReader, circ_id_len: int) -> tuple[int, bytes]:
    """A variable-length cell after negotiation (link protocol 4+ uses 4-byte circuit ids):
    (its command, the cell as received)."""
    header = await reader.readexactly(circ_id_len + 3)
    cmd = header[circ_id_len]
    if cmd < 128 and cmd != CMD_VERSIONS:
        raise WireError(f"expected a variable-length cell, got command {cmd}")
    length = struct.unpack("!H", header[circ_id_len + 1 :])[0]
    return cmd, header + await reader.readexactly(length)


def tor_tls_context() -> ssl.SSLContext:
    # Relays present self-signed, short-lived certificates; identity is proven inside the
    # link protocol (CERTS), not by a CA. Reachability needs the handshake, not trust.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# --------------------------------------------------------------------------- obfs4proxy


class PtError(VantageError):
    """obfs4proxy could not be started or would not connect; ``failure`` is the failure string."""

    def __init__(self, failure: str, detail: str):
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


def obfs4proxy_path() -> str | None:
    return shutil.which("obfs4proxy") or (os.path.exists("/usr/bin/obfs4proxy") and "/usr/bin/obfs4proxy") or None


# SOCKS5 reply codes (RFC 1928) as goptlib maps the dial error to them.
_SOCKS_REPLIES = {
    1: ("vpn_handshake_failure", "general failure (the obfs4 handshake failed or the bridge reset)"),
    2: ("connection_refused", "not allowed"),
    3: ("network_unreachable", "network unreachable"),
    4: ("host_unreachable", "host unreachable"),
    5: ("connection_refused", "connection refused"),
    6: ("generic_timeout", "TTL expired (timeout)"),
}


@dataclass
class Obfs4Client:
    """A running ``obfs4proxy`` in managed client mode and its SOCKS5 address."""

    process: asyncio.subprocess.Process
    socks: tuple[str, int]


@contextlib.asynccontextmanager
async def obfs4_client(binary: str, timeout: float) -> AsyncIterator[Obfs4Client]:
    with tempfile.TemporaryDirectory(prefix="vantage-obfs4-") as state:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TOR_PT_MANAGED_TRANSPORT_VER": "1",
            "TOR_PT_STATE_LOCATION": state,
            "TOR_PT_CLIENT_TRANSPORTS": "obfs4",
            "TOR_PT_EXIT_ON_STDIN_CLOSE": "1",
        }
        proc = await asyncio.create_subprocess_exec(
            binary, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, env=env,
        )
        try:
            socks = await asyncio.wait_for(_cmethod(proc), timeout)
            yield Obfs4Client(proc, socks)
        except TimeoutError:
            raise PtError("unknown_failure:obfs4proxy_did_not_start", "obfs4proxy did not report a SOCKS port") from None
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 3)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def _cmethod(proc: asyncio.subprocess.Process) -> tuple[str, int]:
    assert proc.stdout is not None
    while True:
        line = (await proc.stdout.readline()).decode("utf-8", "replace").strip()
        if not line:
            raise PtError("unknown_failure:obfs4proxy_exited", "obfs4proxy exited before reporting a SOCKS port")
        words = line.split()
        if words[:2] == ["CMETHOD", "obfs4"] and len(words) >= 4:
            host, _, port = words[3].rpartition(":")
            return host, int(port)
        if words and words[0] in ("CMETHOD-ERROR", "ENV-ERROR", "VERSION-ERROR"):
            raise PtError("unknown_failure:obfs4proxy_error", line[:120])


async def socks5_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         ip: str, port: int, args: str) -> None:
    """SOCKS5 CONNECT through the PT client, with the bridge arguments as credentials."""
    raw = args.encode()
    user, password = raw[:255], raw[255:] or b"\0"
    writer.write(b"\x05\x01\x02")
    await writer.drain()
    if await reader.readexactly(2) != b"\x05\x02":
        raise PtError("unknown_failure:obfs4proxy_socks", "the PT client refused username/password auth")
    writer.write(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
    await writer.drain()
    if (await reader.readexactly(2))[1] != 0:
        raise PtError("unknown_failure:obfs4proxy_socks", "the PT client rejected the bridge arguments")
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    atyp = b"\x04" if family == socket.AF_INET6 else b"\x01"
    writer.write(b"\x05\x01\x00" + atyp + socket.inet_pton(family, ip) + struct.pack("!H", port))
    await writer.drain()
    head = await reader.readexactly(4)
    if head[1] != 0:
        failure, why = _SOCKS_REPLIES.get(head[1], ("vpn_handshake_failure", f"SOCKS reply {head[1]}"))
        raise PtError(failure, f"obfs4 connect failed: {why}")
    await reader.readexactly({1: 4, 4: 16}.get(head[3], 0) + 2)
