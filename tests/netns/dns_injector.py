"""The censor's on-path DNS injector (scapy): for a listed name it forges an A answer from the
queried resolver's address, then lets the query go on, so the real answer arrives second.

Runs inside the censor namespace: python dns_injector.py --iface eth0 name=forged-ip ...
nftables drops the listed queries at prerouting; this process has already sniffed them
(packet sockets see frames before netfilter) and re-sends them itself after the forgery.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys

from scapy.all import DNS, DNSRR, IP, UDP, Ether, conf, sniff  # type: ignore[attr-defined]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iface", required=True)
    ap.add_argument("rules", nargs="+", help="name=forged-address")
    args = ap.parse_args(argv)
    forged = {}
    for rule in args.rules:
        name, _, addr = rule.partition("=")
        forged[name.lower().rstrip(".") + "."] = addr
    l2 = conf.L2socket(iface=args.iface)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def wanted(pkt) -> bool:  # type: ignore[no-untyped-def]
        return (
            pkt.haslayer(DNS) and pkt.haslayer(UDP) and pkt[UDP].dport == 53 and pkt[DNS].qr == 0
            and pkt[DNS].qd is not None and pkt[DNS].qd.qname.decode("ascii", "replace").lower() in forged
        )

    def inject(pkt) -> None:  # type: ignore[no-untyped-def]
        q = pkt[DNS].qd
        qname = q.qname.decode("ascii", "replace").lower()
        if q.qtype == 1:  # A: forge; other types only get the real answer
            reply = (
                Ether(src=pkt[Ether].dst, dst=pkt[Ether].src)
                / IP(src=pkt[IP].dst, dst=pkt[IP].src, ttl=64)
                / UDP(sport=53, dport=pkt[UDP].sport)
                / DNS(id=pkt[DNS].id, qr=1, aa=0, rd=pkt[DNS].rd, ra=1, qd=q,
                      an=DNSRR(rrname=q.qname, type="A", ttl=300, rdata=forged[qname]))
            )
            l2.send(reply)
        # The sniffed copy may carry a partial checksum (veth offload): recompute before re-sending.
        query = pkt[IP].copy()
        del query[IP].chksum
        del query[UDP].chksum
        raw.sendto(bytes(query), (pkt[IP].dst, 0))
        print(f"forged {qname} type={q.qtype} for {pkt[IP].src}:{pkt[UDP].sport}", flush=True)

    sniff(
        iface=args.iface,
        lfilter=wanted,
        prn=inject,
        store=False,
        started_callback=lambda: print("injector ready", flush=True),
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])
