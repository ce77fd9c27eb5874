"""A loopback farm for the experiment and runner tests and the throughput benchmark: an honest
dnspython resolver and many small web sites on 127.0.0.0/8, some of which misbehave.

Kinds of site: ``ok`` (200 with a title), ``https`` (the same over TLS, trustme certificate,
and a DNS-over-HTTPS endpoint at /dns-query),
``blackhole`` (accepts, reads, never answers), ``refused`` (nothing listens: RST),
``redirect`` (302 to the first ok site), ``echo`` (a page that echoes the client address).
Run as a script it serves a farm until stdin closes (the benchmark does this), printing one
JSON line with the resolver and the list of URLs it wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import ssl
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import trustme

from probe.experiments.base import Settings, Timeouts

KINDS = ("ok", "https", "blackhole", "refused", "redirect", "echo")


@dataclass(frozen=True)
class Site:
    kind: str
    name: str
    ip: str
    url: str


def answer(wire: bytes, names: dict[str, str]) -> bytes | None:
    """An honest, authoritative answer for the farm's names; NXDOMAIN for anything else.
    A name's value may hold several space-separated addresses."""
    try:
        query = dns.message.from_wire(wire)
    except Exception:
        return None
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.RA
    if not query.question:
        reply.set_rcode(dns.rcode.FORMERR)
        return reply.to_wire()
    q = query.question[0]
    name = q.name.to_text(omit_final_dot=True).lower()
    ip = names.get(name)
    if ip is None:
        reply.set_rcode(dns.rcode.NXDOMAIN)
    elif q.rdtype == dns.rdatatype.A:
        # "ip1 ip2 ...": a name with several addresses (a hostile resolver can send hundreds).
        reply.answer.append(dns.rrset.from_text_list(q.name, 60, dns.rdataclass.IN, dns.rdatatype.A, ip.split()))
    return reply.to_wire()  # AAAA: NOERROR, no answer (the farm is IPv4 only)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = answer(data, self.names)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


def _page(title: str, extra: str = "") -> bytes:
    body = f"<html><head><title>{title}</title></head><body><p>{title}</p>{extra}</body></html>".encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


class Farm:
    """Sites and a resolver on loopback, served from a thread of their own. Use ``with Farm(...)``."""

    def __init__(self, kinds: Sequence[str], *, names: bool = True, workdir: Path | None = None) -> None:
        for k in kinds:
            if k not in KINDS:
                raise ValueError(f"unknown kind {k!r}")
        self.kinds = list(kinds)
        self.use_names = names
        self.workdir = workdir
        self.sites: list[Site] = []
        self.names: dict[str, str] = {}
        self.resolver = ""
        self.ca_bundle: str | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loopfarm", daemon=True)
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._udp: asyncio.DatagramTransport | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Farm:
        self._thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(60)

    # ------------------------------------------------------------------ setup
    def _bind(self, n: int) -> tuple[str, int, int, list[str], list[socket.socket], socket.socket, socket.socket]:
        """Sockets on one random 127.X.0.0/16 block: per site an http and an https listener
        on shared port numbers, and the resolver (UDP and TCP) on .0.53."""
        for _ in range(50):
            block = f"127.{random.randint(64, 250)}"
            ips = [f"{block}.{1 + i // 250}.{1 + i % 250}" for i in range(n)]
            socks: list[socket.socket] = []
            try:
                resolver_ip = f"{block}.0.53"
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(udp)
                udp.bind((resolver_ip, 0))
                dns_port = udp.getsockname()[1]
                tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(tcp)
                tcp.bind((resolver_ip, dns_port))
                ports = [0, 0]
                listeners = []
                for ip, kind in zip(ips, self.kinds, strict=True):
                    if kind == "refused":
                        continue
                    which = 1 if kind == "https" else 0
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    socks.append(s)
                    s.bind((ip, ports[which]))
                    ports[which] = s.getsockname()[1]
                    listeners.append(s)
                # A refused site needs a port where nothing listens on its address.
                if ports[0] == 0:
                    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    probe.bind((f"{block}.0.1", 0))
                    ports[0] = probe.getsockname()[1]
                    probe.close()
                self._http_port, self._https_port = ports
                return resolver_ip, dns_port, ports[0], ips, listeners, udp, tcp
            except OSError:
                for s in socks:
                    s.close()
        raise RuntimeError("no free loopback block for the farm")

    async def _start(self) -> None:
        n = len(self.kinds)
        resolver_ip, dns_port, _, ips, listeners, udp, tcp = self._bind(n)
        self.resolver = f"{resolver_ip}:{dns_port}"
        for i, (ip, kind) in enumerate(zip(ips, self.kinds, strict=True)):
            name = f"site{i:04d}-{kind}.farm.test"
            self.names[name] = ip
            host = name if self.use_names else ip
            if kind == "https":
                url = f"https://{host}:{self._https_port}/"
            else:
                url = f"http://{host}:{self._http_port}/"
            self.sites.append(Site(kind, name, ip, url))
        if "https" in self.kinds:
            ca = trustme.CA()
            cert = ca.issue_cert(*[s.name for s in self.sites if s.kind == "https"], *[s.ip for s in self.sites if s.kind == "https"])
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert.configure_cert(ctx)
            if self.workdir is not None:
                bundle = self.workdir / "farm-ca.pem"
                ca.cert_pem.write_to_path(str(bundle))
                self.ca_bundle = str(bundle)
        else:
            ctx = None
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self.names), sock=udp)
        tcp.listen(64)
        self._servers.append(await asyncio.start_server(self._dns_tcp, sock=tcp))
        by_ip = {s.ip: s for s in self.sites}
        for sock in listeners:
            site = by_ip[sock.getsockname()[0]]
            sock.listen(256)
            handler = self._handler(site)
            server = await asyncio.start_server(handler, sock=sock, ssl=ctx if site.kind == "https" else None)
            self._servers.append(server)

    async def _stop(self) -> None:
        for w in list(self._writers):
            w.transport.abort()
        for s in self._servers:
            s.close()
        for s in self._servers:
            await s.wait_closed()
        if self._udp is not None:
            self._udp.close()

    # ------------------------------------------------------------------ serving
    async def _dns_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readexactly(2)
            wire = await reader.readexactly(int.from_bytes(head, "big"))
            reply = answer(wire, self.names)
            if reply is not None:
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    def _handler(self, site: Site) -> Any:
        first_ok = next((s for s in self.sites if s.kind == "ok"), None)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.add(writer)
            try:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                    return
                if site.kind == "blackhole":
                    await reader.read()  # until the client gives up and closes
                    return
                if site.kind == "redirect" and first_ok is not None:
                    writer.write(
                        f"HTTP/1.1 302 Found\r\nLocation: {first_ok.url}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
                    )
                elif site.kind == "https" and head.startswith(b"POST /dns-query "):
                    # DNS over HTTPS (RFC 8484) with the farm's honest answers.
                    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                    wire = await reader.readexactly(int(m.group(1))) if m else b""
                    reply = answer(wire, self.names) or b""
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\n"
                        + f"Content-Length: {len(reply)}\r\nConnection: close\r\n\r\n".encode()
                        + reply
                    )
                elif site.kind == "echo":
                    client = writer.get_extra_info("peername")[0]
                    writer.write(_page("Echo", f"<p>Your address is {client}</p>"))
                else:
                    writer.write(_page(f"Site {site.name}"))
                await writer.drain()
            except OSError:
                pass
            finally:
                self._writers.discard(writer)
                writer.transport.abort()

        return handle


def lab_settings(farm: Farm, *, step: float = 2.0, **extra: object) -> Settings:
    """Only the farm's resolver (never the system's), short timeouts so black holes are quick."""
    return Settings(
        resolvers=[farm.resolver],
        use_system_resolver=False,
        timeouts=Timeouts(dns=step, connect=step, tls=step, http=step),
        ca_bundle=farm.ca_bundle,
        extra=dict(extra),
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a farm of N sites (a fraction black holes) until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--blackhole-fraction", type=float, default=0.1)
    parser.add_argument("--list", type=Path, required=True, help="where to write the URL list")
    args = parser.parse_args(argv)
    n_black = round(args.sites * args.blackhole_fraction)
    kinds = ["blackhole"] * n_black + ["ok"] * (args.sites - n_black)
    random.Random(7).shuffle(kinds)
    with Farm(kinds) as farm:
        args.list.write_text("".join(s.url + "\n" for s in farm.sites), encoding="utf-8")
        print(json.dumps({"resolver": farm.resolver, "list": str(args.list), "sites": len(farm.sites)}), flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
