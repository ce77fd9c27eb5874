"""An on-path censor for the path-location lab (scapy): it watches the router's probe-facing
interface and, for a listed name, injects toward the client while the original packet goes on
(as the national firewalls that CenTrace measured do).

    python path_censor.py --iface eth0 --client-net 10.78.1.0/24 RULE ...

RULE is ``dns:NAME=ADDR`` (forge an A answer from the queried resolver), ``sni-rst:NAME`` (reset
a flow whose ClientHello names NAME), ``host-rst:NAME`` (reset a flow whose HTTP request has
Host NAME) or ``host-page:NAME`` (answer that request with a 302 to a blockpage, then FIN).
The TCP rules are stateful: only flows whose SYN this censor saw are judged, so a replay
without a real handshake would not trigger it. Packet sockets see a frame before the router's
IP layer, so a packet whose TTL ends at this router still reaches the censor, as on a real
in-path box. Injected packets leave with TTL 64 whatever the distance (a fixed-TTL injector).
Standalone: no project imports.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import socket
import sys

from dpi_inline import parse_http, parse_sni  # type: ignore[import-not-found]  # run as a script
from scapy.all import DNS, DNSRR, IP, TCP, UDP, Raw, sniff  # type: ignore[attr-defined]

BLOCKPAGE = (b"HTTP/1.1 302 Found\r\nLocation: http://blockpage.lab.test/blocked\r\nContent-Length: 0\r\n"
             b"Connection: close\r\n\r\n")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iface", required=True)
    ap.add_argument("--client-net", required=True)
    ap.add_argument("rules", nargs="+")
    args = ap.parse_args(argv)
    client_net = ipaddress.ip_network(args.client_net)
    dns_rules: dict[str, str] = {}
    tcp_rules: dict[tuple[str, str], str] = {}  # (sni|host, name) -> rst|page
    for rule in args.rules:
        kind, _, rest = rule.partition(":")
        if kind == "dns":
            name, _, addr = rest.partition("=")
            dns_rules[name.lower().rstrip(".") + "."] = addr
        elif kind in ("sni-rst", "host-rst", "host-page"):
            field, action = kind.split("-")
            tcp_rules[(field, rest.lower())] = action
        else:
            raise SystemExit(f"unknown rule {rule!r}")
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    flows: set[tuple[str, int, str, int]] = set()

    def send(pkt: IP) -> None:
        raw.sendto(bytes(pkt), (pkt.dst, 0))

    def handle(pkt) -> None:  # type: ignore[no-untyped-def]
        if IP not in pkt or ipaddress.ip_address(pkt[IP].src) not in client_net:
            return
        ip = pkt[IP]
        if UDP in pkt and pkt[UDP].dport == 53 and DNS in pkt and pkt[DNS].qr == 0 and pkt[DNS].qd is not None:
            q = pkt[DNS].qd
            qname = q.qname.decode("ascii", "replace").lower()
            if qname in dns_rules and q.qtype == 1:
                send(IP(src=ip.dst, dst=ip.src, ttl=64) / UDP(sport=53, dport=pkt[UDP].sport)
                     / DNS(id=pkt[DNS].id, qr=1, rd=pkt[DNS].rd, ra=1, qd=q,
                           an=DNSRR(rrname=q.qname, type="A", ttl=300, rdata=dns_rules[qname])))
                print(f"forged {qname} (packet ttl {ip.ttl})", flush=True)
            return
        if TCP not in pkt:
            return
        tcp = pkt[TCP]
        flow = (ip.src, tcp.sport, ip.dst, tcp.dport)
        if tcp.flags.S and not tcp.flags.A:
            flows.add(flow)
            return
        payload = bytes(tcp[Raw].load) if Raw in tcp else b""
        if not payload or flow not in flows:
            return  # stateful: no handshake seen, no judgement
        sni = parse_sni(payload)
        host = None if sni is not None else parse_http(payload)[0]
        action = tcp_rules.get(("sni", sni)) if sni is not None else tcp_rules.get(("host", host or ""))
        if action is None:
            return
        flows.discard(flow)
        reply = IP(src=ip.dst, dst=ip.src, ttl=64)
        if action == "rst":
            send(reply / TCP(sport=tcp.dport, dport=tcp.sport, flags="RA", seq=tcp.ack, ack=tcp.seq + len(payload)))
        else:
            send(reply / TCP(sport=tcp.dport, dport=tcp.sport, flags="FPA", seq=tcp.ack, ack=tcp.seq + len(payload))
                 / Raw(BLOCKPAGE))
        print(f"{action} {sni or host} (packet ttl {ip.ttl})", flush=True)

    sniff(iface=args.iface, prn=handle, store=False, started_callback=lambda: print("censor ready", flush=True))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
