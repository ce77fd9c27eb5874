"""OpenVPN control-channel packets: the client hard reset (P_CONTROL_HARD_RESET_CLIENT_V2),
with the tls-auth HMAC when a static key is configured, and parsing of the server's answer.

Layout on the wire (UDP; TCP adds a 2-byte length in front):
    opcode<<3|key_id (1) | session_id (8) | [HMAC (digest size) | packet_id (4) | net_time (4)]
    | ack count (1) | [acked message ids (4 each) | remote session_id (8)] | message id (4) | payload
The HMAC covers packet_id | net_time | opcode | session_id | the rest (OpenVPN's swap_hmac).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from dataclasses import dataclass

from probe.experiments.tunnels.wire import WireError as WireError  # re-exported: the parsers raise it

P_CONTROL_V1 = 4
P_ACK_V1 = 5
P_CONTROL_HARD_RESET_CLIENT_V2 = 7
P_CONTROL_HARD_RESET_SERVER_V2 = 8
P_DATA_V2 = 9
P_CONTROL_HARD_RESET_CLIENT_V3 = 10
P_CONTROL_WKC_V1 = 11
OPCODES = {
    1: "P_CONTROL_HARD_RESET_CLIENT_V1",
    2: "P_CONTROL_HARD_RESET_SERVER_V1",
    3: "P_CONTROL_SOFT_RESET_V1",
    P_CONTROL_V1: "P_CONTROL_V1",
    P_ACK_V1: "P_ACK_V1",
    6: "P_DATA_V1",
    P_CONTROL_HARD_RESET_CLIENT_V2: "P_CONTROL_HARD_RESET_CLIENT_V2",
    P_CONTROL_HARD_RESET_SERVER_V2: "P_CONTROL_HARD_RESET_SERVER_V2",
    P_DATA_V2: "P_DATA_V2",
    P_CONTROL_HARD_RESET_CLIENT_V3: "P_CONTROL_HARD_RESET_CLIENT_V3",
    P_CONTROL_WKC_V1: "P_CONTROL_WKC_V1",
}
STATIC_KEY_SIZE = 256  # 2048-bit OpenVPN static key: 2 x (64-byte cipher key, 64-byte HMAC key)
DIGESTS = {"SHA1": "sha1", "SHA256": "sha256", "SHA384": "sha384", "SHA512": "sha512"}


def parse_static_key(data: bytes) -> bytes:
    """The 256 key bytes from raw bytes or the text of an OpenVPN static key file."""
    if len(data) == STATIC_KEY_SIZE:
        return data
    text = data.decode("ascii", "replace")
    begin, end = "-----BEGIN OpenVPN Static key V1-----", "-----END OpenVPN Static key V1-----"
    if begin not in text or end not in text:
        raise WireError(f"not an OpenVPN static key ({len(data)} bytes, no BEGIN/END lines)")
    body = text.split(begin, 1)[1].split(end, 1)[0]
    hexdigits = "".join(line.strip() for line in body.splitlines() if not line.strip().startswith("#"))
    try:
        key = bytes.fromhex(hexdigits)
    except ValueError:
        raise WireError("the static key is not hex") from None
    if len(key) != STATIC_KEY_SIZE:
        raise WireError(f"the static key has {len(key)} bytes, expected {STATIC_KEY_SIZE}")
    return key


@dataclass(frozen=True)
class TlsAuth:
    """tls-auth HMAC keys for one direction (as `key-direction` picks them)."""

    send_key: bytes
    recv_key: bytes
    digest: str = "sha1"

    @classmethod
    def from_static_key(cls, blob: bytes, key_direction: int | None, digest: str = "SHA1") -> TlsAuth:
        key = parse_static_key(blob)
        name = DIGESTS.get(digest.upper())
        if name is None:
            raise WireError(f"unsupported auth digest {digest!r} (known: {', '.join(DIGESTS)})")
        size = hashlib.new(name).digest_size

        def hmac_key(index: int) -> bytes:
            start = 64 * (2 * index + 1)
            return key[start : start + size]

        # key-direction 0 sends with key 0 and receives with key 1; 1 is the inverse (clients);
        # without a direction both sides use key 0.
        send, recv = {None: (0, 0), 0: (0, 1), 1: (1, 0)}[key_direction]
        return cls(hmac_key(send), hmac_key(recv), name)

    @property
    def size(self) -> int:
        return hashlib.new(self.digest).digest_size

    def sign(self, data: bytes, *, recv: bool = False) -> bytes:
        return hmac.new(self.recv_key if recv else self.send_key, data, self.digest).digest()


@dataclass
class ControlPacket:
    opcode: int
    key_id: int
    session_id: bytes
    acks: list[int]
    remote_session_id: bytes | None
    message_id: int | None
    payload: bytes
    packet_id: int | None = None

    @property
    def name(self) -> str:
        return OPCODES.get(self.opcode, f"opcode {self.opcode}")

    def summary(self) -> str:
        parts = [self.name, f"session={self.session_id.hex()}"]
        if self.acks:
            parts.append(f"acks={self.acks}")
        if self.payload:
            parts.append(f"payload={len(self.payload)}B")
        return " ".join(parts)


def build_packet(opcode: int, session_id: bytes, tls_auth: TlsAuth | None, *, packet_id: int = 1,
                 acks: tuple[int, ...] = (), remote_session: bytes | None = None,
                 message_id: int | None = 0, payload: bytes = b"", net_time: int | None = None) -> bytes:
    """A control-channel packet (UDP framing), signed when tls-auth is configured."""
    op = bytes([opcode << 3])
    rest = bytes([len(acks)]) + b"".join(struct.pack("!I", a) for a in acks)
    if acks:
        assert remote_session is not None
        rest += remote_session
    if message_id is not None:
        rest += struct.pack("!I", message_id)
    rest += payload
    if tls_auth is None:
        return op + session_id + rest
    replay = struct.pack("!II", packet_id, int(time.time()) if net_time is None else net_time)
    mac = tls_auth.sign(replay + op + session_id + rest)
    return op + session_id + mac + replay + rest


def client_hard_reset(session_id: bytes, tls_auth: TlsAuth | None, *, packet_id: int = 1,
                      net_time: int | None = None, message_id: int = 0) -> bytes:
    """A P_CONTROL_HARD_RESET_CLIENT_V2 (UDP framing)."""
    return build_packet(P_CONTROL_HARD_RESET_CLIENT_V2, session_id, tls_auth, packet_id=packet_id,
                        message_id=message_id, net_time=net_time)


def client_hello(session_id: bytes, server: ControlPacket, tls_auth: TlsAuth | None, hello: bytes, *,
                 packet_id: int = 2) -> bytes:
    """P_CONTROL_V1 carrying a TLS ClientHello, acknowledging the server's hard reset."""
    return build_packet(P_CONTROL_V1, session_id, tls_auth, packet_id=packet_id,
                        acks=(server.message_id or 0,), remote_session=server.session_id,
                        message_id=1, payload=hello)


def check_control_reply(data: bytes, our_session: bytes, server_session: bytes,
                        tls_auth: TlsAuth | None) -> ControlPacket | None:
    """The server's answer on the control channel (P_ACK_V1 of our ClientHello, or P_CONTROL_V1
    carrying TLS); None for a retransmitted hard reset; WireError for anything else."""
    pkt = parse_packet(data, tls_auth)
    if pkt.opcode == P_CONTROL_HARD_RESET_SERVER_V2 and pkt.session_id == server_session:
        return None
    if pkt.opcode not in (P_ACK_V1, P_CONTROL_V1):
        raise WireError(f"expected P_ACK_V1 or P_CONTROL_V1, got {pkt.name}")
    if pkt.session_id != server_session:
        raise WireError("the answer comes from another server session")
    if pkt.remote_session_id is not None and pkt.remote_session_id != our_session:
        raise WireError("the answer acknowledges another session")
    if pkt.opcode == P_CONTROL_V1 and pkt.payload[:1] != b"\x16":
        raise WireError("P_CONTROL_V1 without a TLS handshake record")
    return pkt


def parse_packet(data: bytes, tls_auth: TlsAuth | None, *, recv: bool = True) -> ControlPacket:
    """Parse a control packet (UDP framing); with tls-auth, check its HMAC first."""
    if len(data) < 1 + 8:
        raise WireError(f"truncated packet ({len(data)} bytes)")
    opcode, key_id = data[0] >> 3, data[0] & 0x07
    session_id = data[1:9]
    p = 9
    packet_id = None
    if tls_auth is not None:
        n = tls_auth.size
        if len(data) < p + n + 8:
            raise WireError(f"truncated packet ({len(data)} bytes, too short for tls-auth)")
        mac, replay = data[p : p + n], data[p + n : p + n + 8]
        rest = data[p + n + 8 :]
        if not hmac.compare_digest(mac, tls_auth.sign(replay + data[:9] + rest, recv=recv)):
            raise WireError("tls-auth HMAC does not verify (wrong key or key direction?)")
        packet_id = struct.unpack("!I", replay[:4])[0]
        p += n + 8
    if len(data) < p + 1:
        raise WireError("truncated packet (no ack array)")
    count = data[p]
    p += 1
    if count > 8:
        raise WireError(f"implausible ack count {count}")
    need = 4 * count + (8 if count else 0)
    if len(data) < p + need:
        raise WireError("truncated packet (ack array)")
    acks = list(struct.unpack(f"!{count}I", data[p : p + 4 * count])) if count else []
    p += 4 * count
    remote = None
    if count:
        remote = data[p : p + 8]
        p += 8
    message_id = None
    if opcode != P_ACK_V1:
        if len(data) < p + 4:
            raise WireError("truncated packet (message id)")
        message_id = struct.unpack("!I", data[p : p + 4])[0]
        p += 4
    return ControlPacket(opcode, key_id, session_id, acks, remote, message_id, data[p:], packet_id)


def check_server_reset(data: bytes, our_session: bytes, tls_auth: TlsAuth | None) -> ControlPacket:
    """The server's hard reset answering ours, or WireError saying why the reply is not one."""
    pkt = parse_packet(data, tls_auth)
    if pkt.opcode != P_CONTROL_HARD_RESET_SERVER_V2:
        raise WireError(f"expected P_CONTROL_HARD_RESET_SERVER_V2, got {pkt.name}")
    if pkt.remote_session_id is not None and pkt.remote_session_id != our_session:
        raise WireError("the reset acknowledges another session")
    return pkt


def tcp_frame(packet: bytes) -> bytes:
    return struct.pack("!H", len(packet)) + packet
