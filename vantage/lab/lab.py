"""`LoopbackLab`: starts the lab's resolvers and web servers on one asyncio loop in a background
thread, and always takes them down again (context manager, `close()`, and an atexit hook).

No root and no child processes: every socket is bound to a 127.x.y.z address, on ports picked
free for the whole group, so several labs (parallel test runs) coexist on one host.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import shutil
import socket
import ssl
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trustme

from probe.errors import VantageError
from vantage.lab import plan
from vantage.lab.dns_server import DnsServer, LabZone
from vantage.lab.streams import drain_tasks
from vantage.lab.web import Censor, WebListener

T = TypeVar("T")

FINGERPRINTS = Path(__file__).with_name("fingerprints.csv")  # OONI blocking-fingerprints format
_START_TIMEOUT = 30.0


class LabError(VantageError, RuntimeError):
    """The lab could not start (no free ports, addresses unavailable)."""


@dataclass(frozen=True, slots=True)
class LabSite:
    """A lab URL as the probe measures it, with its scenario and ground truth."""

    url: str
    site: plan.Site

    @property
    def status(self) -> str:
        return self.site.status

    @property
    def layer(self) -> str | None:
        return self.site.layer


def _new_socket(kind: socket.SocketKind) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    # Let a port be re-bound at once after a listener closes (the refuse toggle, TIME_WAIT);
    # on Linux this never lets two sockets listen on the same address and port.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def bind_same_port(
    specs: list[tuple[str, socket.SocketKind]], attempts: int = 100
) -> tuple[int, list[socket.socket]]:
    """Bind one socket per (address, kind), all on one port number free on every address."""
    for _ in range(attempts):
        socks: list[socket.socket] = []
        port = 0  # the first bind picks it; the others must get the same number
        try:
            for ip, kind in specs:
                sock = _new_socket(kind)
                socks.append(sock)
                sock.bind((ip, port))
                port = sock.getsockname()[1]
            return port, socks
        except OSError:
            for sock in socks:
                sock.close()
    raise LabError(f"no port free on all of {sorted({ip for ip, _ in specs})} after {attempts} tries")


class LoopbackLab:
    """A small censored internet on 127.0.0.0/8. Use as ``with LoopbackLab() as lab: ...``.

    The censoring resolver lies for some names; the on-path censor (reset, silence, SNI abort,
    redirect, closed ports) acts while ``censor`` is on, which is the probe's view. Measure the
    control with the honest resolver inside ``with lab.uncensored():``.
    """

    public_nets: tuple[str, ...] = (plan.PUBLIC_NET,)
    fingerprints: Path = FINGERPRINTS

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._workdir: Path | None = None
        self._censor = Censor(path=plan.path_actions(), sni_blocked=plan.sni_blocked())
        self._dns: list[DnsServer] = []
        self._listeners: dict[tuple[str, int], WebListener] = {}
        self._holders: dict[tuple[str, int], socket.socket] = {}  # bound, never listening
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()
        self.dns_port = self.http_port = self.https_port = 0
        self.ca_bundle = Path()

    # ------------------------------------------------------------------ public view
    @property
    def honest_resolver(self) -> str:
        return f"{plan.HONEST_RESOLVER_IP}:{self.dns_port}"

    @property
    def censoring_resolver(self) -> str:
        return f"{plan.CENSORING_RESOLVER_IP}:{self.dns_port}"

    @property
    def sites(self) -> list[LabSite]:
        return [LabSite(s.url(self.http_port, self.https_port), s) for s in plan.SITES]

    @property
    def ground_truth(self) -> dict[str, tuple[str, str | None]]:
        """URL -> (status, layer) of the correct verdict."""
        return {s.url: (s.status, s.layer) for s in self.sites}

    def url(self, hostname: str, scheme: str = "https") -> str:
        for s in self.sites:
            if s.site.hostname == hostname and s.site.scheme == scheme:
                return s.url
        raise KeyError(f"no lab site {scheme}://{hostname}")

    @property
    def censor(self) -> bool:
        return self._censor.enabled

    def set_censor(self, on: bool) -> None:
        """Switch the on-path censor on (probe view) or off (control view)."""
        self._call(self._apply_censor(on))

    @contextlib.contextmanager
    def uncensored(self) -> Iterator[LoopbackLab]:
        """The control's view: the on-path censor off inside the block, restored after it."""
        before = self.censor
        self.set_censor(False)
        try:
            yield self
        finally:
            self.set_censor(before)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LoopbackLab:
        with self._lock:
            if self._loop is not None:
                return self
            self._workdir = Path(tempfile.mkdtemp(prefix="vantage-lab-"))
            self._make_certificates()
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._run_loop, name="vantage-loopback-lab", daemon=True)
            self._thread.start()
            atexit.register(self.close)
        try:
            self._call(self._start())
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every server, close every socket, end the thread, delete the lab's files."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            if loop is not None and thread is not None:
                try:
                    asyncio.run_coroutine_threadsafe(self._stop(), loop).result(_START_TIMEOUT)
                finally:
                    loop.call_soon_threadsafe(loop.stop)
                    thread.join(_START_TIMEOUT)
            for sock in self._holders.values():
                sock.close()
            self._holders.clear()
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None
            atexit.unregister(self.close)

    def __enter__(self) -> LoopbackLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _run_loop(self) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, coro: Awaitable[T]) -> T:
        if self._loop is None:
            raise LabError("the loopback lab is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_START_TIMEOUT)  # type: ignore[arg-type]

    def _make_certificates(self) -> None:
        assert self._workdir is not None
        ca = trustme.CA(organization_name="Vantage loopback lab")
        self.ca_bundle = self._workdir / "lab-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_bundle))
        for ip, names in plan.served_addresses().items():
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert(*names).configure_cert(ctx)
            ctx.set_alpn_protocols(["http/1.1"])
            if self._censor.sni_blocked & set(names):
                ctx.sni_callback = self._censor.sni_callback
            self._contexts[ip] = ctx

    async def _start(self) -> None:
        resolvers = [plan.HONEST_RESOLVER_IP, plan.CENSORING_RESOLVER_IP]
        self.dns_port, dns_socks = bind_same_port(
            [(ip, kind) for ip in resolvers for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)]
        )
        zones = [
            LabZone(plan.LAB_DOMAIN, plan.site_names()),
            LabZone(plan.LAB_DOMAIN, plan.site_names(), plan.censored_dns()),
        ]
        for i, zone in enumerate(zones):
            server = DnsServer(zone, dns_socks[2 * i], dns_socks[2 * i + 1])
            self._dns.append(server)
            await server.start()

        served = plan.served_addresses()
        web_ips = list(served) + list(plan.closed_addresses())
        for tls in (False, True):
            port, socks = bind_same_port([(ip, socket.SOCK_STREAM) for ip in web_ips])
            if tls:
                self.https_port = port
            else:
                self.http_port = self._censor.http_port = port
            for ip, sock in zip(web_ips, socks, strict=True):
                if ip in served:
                    listener = WebListener(
                        ip,
                        sock,
                        censor=self._censor,
                        names=served[ip],
                        tls=self._contexts[ip] if tls else None,
                    )
                    self._listeners[(ip, port)] = listener
                    await listener.start()
                else:
                    self._holders[(ip, port)] = sock
        await self._apply_censor(self._censor.enabled)

    async def _apply_censor(self, on: bool) -> None:
        self._censor.enabled = on
        # "refuse": while the censor is on, the site's ports are held closed (bound, not
        # listening) so a connect is refused; off, a fresh listener serves the real site.
        for ip, action in self._censor.path.items():
            if action != "refuse":
                continue
            for port in (self.http_port, self.https_port):
                key = (ip, port)
                if on and key in self._listeners:
                    listener = self._listeners.pop(key)
                    await listener.stop()
                    holder = _new_socket(socket.SOCK_STREAM)
                    holder.bind(key)
                    self._holders[key] = holder
                elif not on and key in self._holders:
                    self._holders.pop(key).close()
                    sock = _new_socket(socket.SOCK_STREAM)
                    sock.bind(key)
                    tls = self._contexts[ip] if port == self.https_port else None
                    names = plan.served_addresses()[ip]
                    listener = WebListener(ip, sock, censor=self._censor, names=names, tls=tls)
                    self._listeners[key] = listener
                    await listener.start()

    async def _stop(self) -> None:
        stops: list[Callable[[], Awaitable[Any]]] = [s.stop for s in self._dns]
        stops += [listener.stop for listener in self._listeners.values()]
        await asyncio.gather(*(stop() for stop in stops), return_exceptions=True)
        await drain_tasks()
        self._dns.clear()
        self._listeners.clear()


def start_lab() -> LoopbackLab:
    """A started lab; call ``close()`` (or use ``with LoopbackLab() as lab``) when done."""
    return LoopbackLab().start()
