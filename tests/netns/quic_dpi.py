"""The censor's inline QUIC filter: UDP to port 443 from the probe's side is routed through a
TUN device to this process, which decrypts each QUIC Initial with the keys anyone can derive
from its Destination Connection ID (RFC 9001 5.2: the Initial secret is HKDF of a published salt
and the DCID), reassembles its CRYPTO frames into the TLS ClientHello, reads the SNI, and drops
the packet (and the rest of that flow) when the SNI is on its list, as real censors do with
QUIC. Everything else is written back and routed on.

Runs inside the censor namespace: python quic_dpi.py --tun qdpi0 --rules rules.json, rules
{"sni": ["blocked.example", ...]}. aioquic derives the keys and removes the header protection;
the frame and ClientHello parsing is here. Standalone: no project imports.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import struct
import sys

from aioquic.buffer import Buffer, BufferReadError
from aioquic.quic.crypto import CryptoError, CryptoPair
from aioquic.quic.packet import QuicPacketType, pull_quic_header

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
QUIC_PORT = 443


def _varint(data: bytes, p: int) -> tuple[int, int]:
    """A QUIC variable-length integer at ``p``: (value, next position)."""
    first = data[p]
    size = 1 << (first >> 6)
    value = first & 0x3F
    for b in data[p + 1 : p + size]:
        value = (value << 8) | b
    if p + size > len(data):
        raise IndexError("truncated varint")
    return value, p + size


def crypto_stream(payload: bytes) -> bytes:
    """The CRYPTO frames of a decrypted Initial payload, in offset order (PADDING, PING and ACK
    frames skipped; parsing stops at any other frame, which an Initial does not carry)."""
    chunks: dict[int, bytes] = {}
    p = 0
    while p < len(payload):
        ftype = payload[p]
        if ftype == 0x00 or ftype == 0x01:  # PADDING, PING
            p += 1
        elif ftype == 0x06:  # CRYPTO: offset, length, data
            offset, p = _varint(payload, p + 1)
            length, p = _varint(payload, p)
            chunks[offset] = payload[p : p + length]
            p += length
        elif ftype in (0x02, 0x03):  # ACK: largest, delay, range count, first range, ranges (+ ECN)
            _, p = _varint(payload, p + 1)
            _, p = _varint(payload, p)
            count, p = _varint(payload, p)
            _, p = _varint(payload, p)
            for _ in range(2 * count + (3 if ftype == 0x03 else 0)):
                _, p = _varint(payload, p)
        else:
            break
    out = b""
    for offset in sorted(chunks):
        if offset != len(out):
            break  # a gap: the rest of the ClientHello is in another packet
        out += chunks[offset]
    return out


def client_hello_sni(handshake: bytes) -> str | None:
    """The server_name of a TLS ClientHello handshake message (no record header), or None."""
    try:
        if not handshake or handshake[0] != 0x01:
            return None
        hs = handshake
        p = 4 + 2 + 32  # handshake header, legacy_version, random
        p += 1 + hs[p]  # legacy session id
        p += 2 + struct.unpack("!H", hs[p : p + 2])[0]  # cipher suites
        p += 1 + hs[p]  # compression methods
        end = p + 2 + struct.unpack("!H", hs[p : p + 2])[0]
        p += 2
        while p + 4 <= min(end, len(hs)):
            ext_type, ext_len = struct.unpack("!HH", hs[p : p + 4])
            body = hs[p + 4 : p + 4 + ext_len]
            if ext_type == 0 and len(body) >= 5 and body[2] == 0:
                name_len = struct.unpack("!H", body[3:5])[0]
                return body[5 : 5 + name_len].decode("ascii", "replace").lower()
            p += 4 + ext_len
    except (IndexError, struct.error):
        return None
    return None


def initial_sni(datagram: bytes) -> str | None:
    """The SNI of the ClientHello in a client's QUIC Initial (first packet of the datagram), or
    None when the datagram is not a decryptable Initial with one."""
    try:
        buf = Buffer(data=datagram)
        header = pull_quic_header(buf, host_cid_length=8)
        if header.packet_type != QuicPacketType.INITIAL or header.version is None:
            return None
        crypto = CryptoPair()
        # The server's view: it decrypts what the client sent with the "client in" keys.
        crypto.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
        end = header.packet_length
        _plain, payload, _pn = crypto.decrypt_packet(datagram[:end], buf.tell(), 0)
    except (BufferReadError, CryptoError, ValueError, IndexError):
        return None
    return client_hello_sni(crypto_stream(payload))


class QuicFilter:
    def __init__(self, blocked_sni: list[str]) -> None:
        self.blocked = {s.lower() for s in blocked_sni}
        self.blackholed: set[tuple[str, int, str, int]] = set()

    def packets_for(self, packet: bytes) -> list[bytes]:
        """What to put back on the wire for one IPv4 packet from the probe's side."""
        if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 17:
            return [packet]
        ihl = (packet[0] & 0x0F) * 4
        total = struct.unpack("!H", packet[2:4])[0]
        sport, dport = struct.unpack("!HH", packet[ihl : ihl + 4])
        if dport != QUIC_PORT:
            return [packet]
        flow = (_ip(packet[12:16]), sport, _ip(packet[16:20]), dport)
        if flow in self.blackholed:
            return []
        sni = initial_sni(packet[ihl + 8 : total])
        if sni is None or sni not in self.blocked:
            return [packet]
        print(f"{flow[0]}:{flow[1]} -> {flow[2]}:{flow[3]} quic initial sni={sni} -> drop", flush=True)
        self.blackholed.add(flow)
        return []


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tun", default="qdpi0")
    ap.add_argument("--rules", required=True)
    args = ap.parse_args(argv)
    with open(args.rules) as fh:
        qf = QuicFilter(json.load(fh).get("sni", []))
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", args.tun.encode(), IFF_TUN | IFF_NO_PI))
    print("quic dpi ready", flush=True)
    try:
        while True:
            packet = os.read(fd, 65535)
            for out in qf.packets_for(packet):
                # Written back, the packet re-enters the censor from the TUN side, unmarked,
                # and the kernel routes it on as usual.
                os.write(fd, out)
    finally:
        os.close(fd)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
