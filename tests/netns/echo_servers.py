"""The "what is my address" internet of the NAT privacy lab: an HTTP site and a DNS server that
echo the address they see for the client (behind a masquerading router: its public address).

    python echo_servers.py LISTEN_IP ZONE EXTRA_ADDR

HTTP on LISTEN_IP:80, for the host names of ZONE:
  /           the client's address in title, headers, cookie, body (every encoding), and a
              redirect-free 200 page
  /go         302 to /page?ip=<addr> (a query string carrying it: httpx logs request URLs)
  /page       as /
  /literal    302 to http://<addr>/
  /named      302 to http://ip-a-b-c-d.<ZONE>/
EXTRA_ADDR (the probe's interface address, which the server cannot see) is echoed as well,
as a page that learned it some other way (WebRTC, a forwarded-for header) would.
DNS on LISTEN_IP:53 (UDP and TCP): "whoami.<ZONE>" A = the client's address, TXT "client
<addr>"; "ip-a-b-c-d.<ZONE>" A = a.b.c.d; any other name of ZONE A = LISTEN_IP.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import sys
import threading
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from address_forms import forms  # type: ignore[import-not-found]  # run as a script

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: tests.support
from tests.support.loopback_site import LoopbackServer, Reply, Request  # noqa: E402

LISTEN, ZONE, EXTRA = sys.argv[1], sys.argv[2].rstrip("."), sys.argv[3]


def echo_body(addrs: list[str]) -> str:
    lines = [f"<li>{name}: {text}</li>" for a in addrs for name, text in forms(a).items()]
    return (
        f"<html><head><title>Your address is {addrs[0]}</title></head><body>"
        f"<p>you connect from {addrs[0]}, we also know {addrs[1]}</p><ul>{''.join(lines)}</ul></body></html>"
    )


def echo(request: Request) -> Reply:
    seen = request.client
    path = request.path.split("?", 1)[0]
    print(f"GET {path} from {seen}", flush=True)  # the lab's log: shows the masquerade works
    if path == "/go":
        return Reply(302, b"", [("Location", f"/page?ip={seen}&hex={forms(seen)['hex']}")])
    if path == "/literal":
        return Reply(302, b"", [("Location", f"http://{seen}/")])
    if path == "/named":
        return Reply(302, b"", [("Location", f"http://ip-{seen.replace('.', '-')}.{ZONE}/")])
    f = forms(seen)
    return Reply(200, echo_body([seen, EXTRA]).encode(), [
        ("Content-Type", "text/html; charset=utf-8"),
        ("X-Client-IP", seen),
        ("X-Forwarded-For", f"{EXTRA}, {seen}"),
        ("Set-Cookie", f"client={f['base64']}; seen={seen}; Path=/"),
        ("X-Client-Hex", f["0xhex"]),
        ("Server", f"echo/1.0 ({f['hostname']})"),
    ])


def dns_answer(wire: bytes, client: str) -> bytes:
    query = dns.message.from_wire(wire)
    reply = dns.message.make_response(query)
    q = query.question[0]
    name = q.name.to_text().rstrip(".").lower()
    if not name.endswith("." + ZONE) and name != ZONE:
        reply.set_rcode(dns.rcode.NXDOMAIN)
        return reply.to_wire()
    label = name.split(".", 1)[0]
    if q.rdtype == dns.rdatatype.A:
        if label == "whoami":
            address = client
        elif label.startswith("ip-") and label.count("-") == 4:
            address = label[3:].replace("-", ".")
        else:
            address = LISTEN
        reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", address))
    elif q.rdtype == dns.rdatatype.TXT:
        reply.answer.append(dns.rrset.from_text(q.name, 60, "IN", "TXT", f'"client {client}"'))
    return reply.to_wire()


class Udp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        try:
            sock.sendto(dns_answer(data, self.client_address[0]), self.client_address)
        except Exception as exc:  # a malformed query: no answer
            print(f"dns: {exc}", flush=True)


class Tcp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        head = self.request.recv(2)
        if len(head) < 2:
            return
        (size,) = struct.unpack("!H", head)
        data = b""
        while len(data) < size:
            chunk = self.request.recv(size - len(data))
            if not chunk:
                return
            data += chunk
        out = dns_answer(data, self.client_address[0])
        self.request.sendall(struct.pack("!H", len(out)) + out)


def main() -> None:
    socketserver.ThreadingUDPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    # HTTP: the suite's one test server (tests.support.loopback_site), on the lab's address.
    LoopbackServer(respond=echo, host=LISTEN, port=80, protocol_version="HTTP/1.1")
    servers: list[socketserver.BaseServer] = [
        socketserver.ThreadingUDPServer((LISTEN, 53), Udp),
        socketserver.ThreadingTCPServer((LISTEN, 53), Tcp),
    ]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(f"echo servers on {LISTEN} for {ZONE}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    main()
