"""The censor's inline DPI box: web traffic from the probe is routed through a TUN device to this
process, which reads the TLS ClientHello's SNI and the HTTP request's Host and path, and then
forwards the packet, drops the flow, or drops it and injects TCP resets both ways.

Runs inside the censor namespace: python dpi_inline.py --tun dpi0 --rules rules.json.
Inline (not a proxy), so the TCP handshake is the server's own: a site that is down looks
the same through the censor as from the control. Standalone: no project imports.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import struct
import sys

from scapy.all import IP, TCP  # type: ignore[attr-defined]

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def parse_sni(data: bytes) -> str | None:
    """The server_name of a TLS ClientHello (the first segment is enough), or None."""
    try:
        if len(data) < 5 or data[0] != 0x16:
            return None
        hs = data[5:]
        if not hs or hs[0] != 0x01:
            return None
        p = 4 + 2 + 32  # handshake header, client_version, random
        p += 1 + hs[p]  # session id
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


def parse_http(data: bytes) -> tuple[str | None, str]:
    """(Host, request target) of an HTTP/1 request head; (None, "") when it is not one."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = head.split("\r\n")
    first = lines[0].split(" ")
    if len(first) < 3 or not first[2].startswith("HTTP/"):
        return None, ""
    host = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "host":
            host = value.strip().lower().split(":")[0]
    return host, first[1]


class Dpi:
    def __init__(self, rules: dict[str, dict[str, str]]):
        self.sni = {k.lower(): v for k, v in rules.get("sni", {}).items()}
        self.host = {k.lower(): v for k, v in rules.get("host", {}).items()}
        self.keyword = rules.get("keyword", {})
        self.blackholed: set[tuple[str, int, str, int]] = set()

    def decide(self, payload: bytes) -> tuple[str, str]:
        """(action, why) for a client payload: pass | reset | drop."""
        sni = parse_sni(payload)
        if sni is not None:
            return self.sni.get(sni, "pass"), f"sni={sni}"
        host, target = parse_http(payload)
        if host is not None and host in self.host:
            return self.host[host], f"host={host}"
        for word, action in self.keyword.items():
            if word in target:
                return action, f"keyword={word}"
        return "pass", f"host={host}" if host else "other"

    def packets_for(self, packet: bytes) -> list[bytes]:
        """What to put back on the wire for one packet from the probe's side."""
        if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != 6:
            return [packet]
        ihl = (packet[0] & 0x0F) * 4
        total = struct.unpack("!H", packet[2:4])[0]
        src, dst = packet[12:16], packet[16:20]
        sport, dport, seq, ack = struct.unpack("!HHII", packet[ihl : ihl + 12])
        off = (packet[ihl + 12] >> 4) * 4
        payload = packet[ihl + off : total]
        flow = (_ip(src), sport, _ip(dst), dport)
        if flow in self.blackholed:
            return []
        if not payload:
            return [packet]
        action, why = self.decide(payload)
        if action == "pass":
            return [packet]
        print(f"{flow[0]}:{flow[1]} -> {flow[2]}:{flow[3]} {why} -> {action}", flush=True)
        self.blackholed.add(flow)
        if action == "drop":
            return []
        # Reset both ends, as an on-path censor does, with sequence numbers each side accepts.
        to_client = IP(src=flow[2], dst=flow[0]) / TCP(sport=dport, dport=sport, flags="RA", seq=ack,
                                                       ack=seq + len(payload))
        to_server = IP(src=flow[0], dst=flow[2]) / TCP(sport=sport, dport=dport, flags="R", seq=seq)
        return [bytes(to_client), bytes(to_server)]


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tun", default="dpi0")
    ap.add_argument("--rules", required=True)
    args = ap.parse_args(argv)
    with open(args.rules) as fh:
        dpi = Dpi(json.load(fh))
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", args.tun.encode(), IFF_TUN | IFF_NO_PI))
    print("dpi ready", flush=True)
    try:
        while True:
            packet = os.read(fd, 65535)
            for out in dpi.packets_for(packet):
                # Written back, the packet re-enters the censor from the TUN side, unmarked,
                # and the kernel routes it on as usual.
                os.write(fd, out)
    finally:
        os.close(fd)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
